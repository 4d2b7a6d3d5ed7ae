import json

import numpy as np
import pytest
import torch

from brainattn.encoders.factorized import SpatialFeatureEncoder
from brainattn.encoders.loader import ArrayLoader
from brainattn.encoders.training import lr_factor
from brainattn.encoders.transformer import TransformerBrainEncoder
from brainattn.errors import ConfigError, DataError, ShapeError


def _data(n=96, L=9, c=5, v=4, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, L, c)).astype(np.float32)
    Y = X[:, 4, :v] * 2 + 0.3 * rng.standard_normal((n, v))
    return X, Y.astype(np.float32)


def _tbe(**kw):
    return TransformerBrainEncoder(width=16, heads=2, ffn=32, epochs=4, batch_size=16,
                                   patience=None, device="cpu", **kw)


def test_loader_is_reproducible_and_shards_cover_the_epoch():
    X, Y = _data()
    a = ArrayLoader(X, Y, np.arange(40), batch_size=8, shuffle=True, seed=3)
    a.set_epoch(2)
    ya = torch.cat([y for _, y in a])
    a.set_epoch(2)
    assert torch.equal(ya, torch.cat([y for _, y in a]))
    a.set_epoch(3)
    assert not torch.equal(ya, torch.cat([y for _, y in a]))
    shards = [ArrayLoader(X, Y, np.arange(40), batch_size=8, shuffle=True, seed=3, rank=r,
                          world_size=2) for r in range(2)]
    for s in shards:
        s.set_epoch(2)
    got = torch.cat([torch.cat([y for _, y in s]) for s in shards])
    assert sorted(got[:, 0].tolist()) == sorted(ya[:, 0].tolist())


@pytest.mark.parametrize("make", [_tbe, lambda: SpatialFeatureEncoder(method="sgd", epochs=4, patience=None,
                                                                     device="cpu")])
def test_resume_reaches_the_uninterrupted_result(tmp_path, make):
    X, Y = _data()
    full = make().fit(X, Y, ckpt_dir=tmp_path / "a")
    part = make().fit(X, Y, ckpt_dir=tmp_path / "b", stop_after=2)
    assert not part.finished_
    state = json.loads((tmp_path / "b" / "state.json").read_text())
    assert state["epoch"] == 1 and len(list((tmp_path / "b").glob("ckpt-*.safetensors"))) == 1
    torch.manual_seed(123)  # a different global RNG state must not matter after resume
    res = make().fit(X, Y, ckpt_dir=tmp_path / "b", resume=True)
    assert res.finished_
    for (k, a), (_, b) in zip(full.module_.state_dict().items(), res.module_.state_dict().items(),
                              strict=True):
        assert torch.equal(a, b), k
    assert [h["val_mean_r"] for h in full.history_] == [h["val_mean_r"] for h in res.history_]


def test_resume_with_a_different_config_is_refused(tmp_path):
    X, Y = _data()
    _tbe().fit(X, Y, ckpt_dir=tmp_path, stop_after=1)
    with pytest.raises(ConfigError, match="keys differ: lr, width"):
        TransformerBrainEncoder(width=32, heads=2, ffn=32, epochs=4, batch_size=16, lr=1e-3,
                                patience=None, device="cpu").fit(X, Y, ckpt_dir=tmp_path,
                                                                 resume=True)


def test_ctrl_c_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    import brainattn.encoders.training as T

    X, Y = _data()
    orig = T.train_epoch
    calls = {"n": 0}

    def interrupted(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return orig(*a, **k)

    monkeypatch.setattr(T, "train_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _tbe().fit(X, Y, ckpt_dir=tmp_path)
    assert json.loads((tmp_path / "state.json").read_text())["epoch"] == 1
    monkeypatch.setattr(T, "train_epoch", orig)
    full = _tbe().fit(X, Y, ckpt_dir=tmp_path / "ref")
    res = _tbe().fit(X, Y, ckpt_dir=tmp_path, resume=True)
    np.testing.assert_array_equal(full.predict(X[:5]), res.predict(X[:5]))


def test_early_stopping_keeps_the_best_epoch():
    X, Y = _data()
    rng = np.random.default_rng(5)
    Yn = rng.standard_normal(Y.shape).astype(np.float32)  # nothing to learn: val r wanders
    est = TransformerBrainEncoder(width=16, heads=2, ffn=32, epochs=30, batch_size=16, lr=1e-2,
                                  patience=2, device="cpu").fit(X, Yn)
    assert len(est.history_) < 30
    rs = [h["val_mean_r"] for h in est.history_]
    assert est.best_epoch_ == int(np.argmax(rs))
    assert len(rs) - 1 - est.best_epoch_ == 2


def test_bad_targets_are_refused():
    X, Y = _data()
    Y[:, 2] = 1.0
    with pytest.raises(DataError, match=r"1 vertices have zero variance .*first: \[2\]"):
        _tbe().fit(X, Y)
    Y[3, 1] = np.nan
    with pytest.raises(DataError, match="NaN/Inf"):
        _tbe().fit(X, Y)
    with pytest.raises(ShapeError, match="betas hold 95 images but the features hold 96"):
        _tbe().fit(X, Y[:95])


def test_lr_schedules():
    assert lr_factor(0, schedule="step", epochs=10, step_size=2, gamma=0.5) == 1.0
    assert lr_factor(5, schedule="step", epochs=10, step_size=2, gamma=0.5) == 0.25
    assert lr_factor(0, schedule="cosine", epochs=10) == pytest.approx(1.0)
    assert lr_factor(10, schedule="cosine", epochs=10) == pytest.approx(0.05)


def test_staging_reads_the_same_rows_from_arrays_memmaps_and_row_views(tmp_path):
    from brainattn.encoders.cache import Rows
    from brainattn.encoders.loader import stage_on_device

    rng = np.random.default_rng(3)
    X = rng.standard_normal((70, 5, 3)).astype(np.float16)
    np.save(tmp_path / "x.npy", X)
    mm = np.load(tmp_path / "x.npy", mmap_mode="r")
    idx = rng.permutation(70)[:45]
    for rows in (idx, np.sort(idx), np.arange(10, 50)):
        want = torch.from_numpy(X[rows])
        for src in (X, mm, X.astype(np.float32)):
            assert torch.equal(stage_on_device(src, rows, "cpu", chunk=8, workers=3), want)
        view = Rows(mm, np.arange(69, -1, -1))  # reversed: view row i is X[69 - i]
        assert torch.equal(stage_on_device(view, rows, "cpu", chunk=8),
                           torch.from_numpy(X[69 - rows]))
