"""Tests of brainattn.theory.semiotics: attractors, IDX files, determinism, classifier, stats."""

from __future__ import annotations

import gzip
import math

import numpy as np
import pytest
import torch
from scipy import stats

from brainattn.errors import ConfigError, DataError
from brainattn.theory import semiotics as S
from brainattn.theory.semiotics.experiment import _draw

# A config small enough for a test (seconds), every stage still exercised.
TINY = {
    "R": [1, 3],
    "n_seeds": 2,
    "n_test": 30,
    "channels": 8,
    "ae_steps": 30,
    "vanilla_steps": 20,
    "stochastic_steps": 6,
    "n_copies": 3,
    "mlp_hidden": [16],
    "mlp_steps": 20,
    "agent_steps": 10,
    "n_boot": 200,
}


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def trained_ae():
    """Agent A of the quick run's first repetition at R=3, its training and test digits."""
    torch.set_num_threads(1)
    cfg = S.validate_config(S.QUICK)
    data = S.load_dataset(cfg)
    d = _draw(cfg, data, 3, cfg["seed"])
    x_tr = torch.as_tensor(data["x"][d["tr"]]).unsqueeze(1)
    x_te = torch.as_tensor(data["x"][d["te"]]).unsqueeze(1)
    E, D = S.build_autoencoder(8, cfg["channels"], seed=1000 * cfg["seed"] + 3)
    losses = S.train_autoencoder(E, D, x_tr, steps=S.QUICK["ae_steps"], lr=S.QUICK["ae_lr"])
    return E, D, x_tr, x_te, losses


class Identity(torch.nn.Module):
    def forward(self, x):
        return x


# ------------------------------------------------------------------------------------------
# model pieces


def test_cos_minus_x_and_shapes():
    x = torch.linspace(-3, 3, 13)
    assert torch.allclose(S.CosMinusX()(x), torch.cos(x) - x)
    for size, n_layers in ((8, 3), (28, 5), (5, 3)):
        E, D = S.build_autoencoder(size, 4)
        assert len(E.net) == 2 * n_layers
        z = E(torch.rand(2, 1, size, size))
        assert z.shape == (2, 4, 1, 1)
        out = D(z).detach()
        assert out.shape == (2, 1, size, size)
        assert float(out.min()) >= 0 and float(out.max()) <= 1


@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("c_in,c_out,big,small", [(1, 6, 8, 4), (5, 3, 4, 2), (4, 4, 2, 1),
                                                   (3, 2, 7, 4), (2, 3, 28, 14)])
def test_dense_operator_equals_torch_convolution(transposed, c_in, c_out, big, small):
    h_in, h_out = (small, big) if transposed else (big, small)
    torch.manual_seed(1)
    dense = S.StridedConv(c_in, c_out, h_in, h_out, transposed=transposed, dense=True).double()
    ref = S.StridedConv(c_in, c_out, h_in, h_out, transposed=transposed, dense=False).double()
    ref.load_state_dict(dense.state_dict())
    x = torch.randn(3, c_in, h_in, h_in, dtype=torch.float64, requires_grad=True)
    y_d, y_r = dense(x), ref(x)
    assert y_d.shape == (3, c_out, h_out, h_out)
    torch.testing.assert_close(y_d, y_r, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(y_d)
    gd = torch.autograd.grad(y_d, [x, dense.conv.weight, dense.conv.bias], g)
    gr = torch.autograd.grad(y_r, [x, ref.conv.weight, ref.conv.bias], g)
    for a, b in zip(gd, gr, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_cached_operator_follows_weight_updates():
    layer = S.StridedConv(1, 2, 8, 4, transposed=False, dense=True)
    x = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        before = layer(x).clone()
        layer.conv.weight.add_(1.0)
        after = layer(x)
    ref = torch.nn.functional.conv2d(x, layer.conv.weight, layer.conv.bias, stride=2, padding=1)
    torch.testing.assert_close(after, ref, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(before, after)


# ------------------------------------------------------------------------------------------
# loops


def test_attractor_property_after_vanilla_loop(trained_ae):
    E, D, x_tr, x_te, losses = trained_ae
    assert losses[-1] < 0.25 * losses[0]
    tol = S.QUICK["tol"]
    res = S.vanilla_loop(E, D, torch.cat([x_tr, x_te]), S.QUICK["vanilla_steps"], tol=tol)
    # >= 95% of inputs reach an attractor
    assert res.converged_fraction >= 0.95
    # recompute the attractor test independently of the loop's bookkeeping
    with torch.no_grad():
        r = (D(E(res.x)) - res.x).flatten(1).pow(2).mean(1).sqrt()
    torch.testing.assert_close(r, res.residual)
    assert bool((r[res.converged] < tol).all())
    assert bool((res.n_steps[res.converged] >= 1).all())
    # the training images are (near) fixed points of a well-trained autoencoder already
    assert float(res.trace[0]) > float(np.nanmin(res.trace.numpy()))


def test_vanilla_loop_identity_and_contraction():
    x = torch.rand(7, 1, 8, 8)
    ident = S.vanilla_loop(Identity(), Identity(), x, 5, tol=1e-6)
    assert torch.equal(ident.x, x)
    assert bool(ident.converged.all()) and ident.n_steps.tolist() == [1] * 7
    # f(x) = x / 2 contracts to 0: after t steps RMS(x_t) = RMS(x) / 2**t, step = RMS(x) / 2**t
    half = S.vanilla_loop(Identity(), lambda z: z / 2, x, 40, tol=1e-3)
    rms0 = x.flatten(1).pow(2).mean(1).sqrt()
    expected = torch.ceil(torch.log2(rms0 / 1e-3))  # first t with rms0 / 2**t < tol
    assert half.n_steps.tolist() == expected.long().tolist()
    assert bool(half.converged.all())


def test_augment_strength_and_identity_stochastic_loop():
    x = torch.rand(64, 1, 8, 8)
    p = S.AugmentParams()
    g = torch.Generator().manual_seed(0)
    assert torch.equal(S.augment(x, 0.0, p, g), x)
    moved = [float((S.augment(x, a, p, g) - x).abs().mean()) for a in (1.0, 2.6**-2, 2.6**-5)]
    assert moved[0] > moved[1] > moved[2]
    y = S.augment(x, 1.0, p, g)
    assert float(y.min()) >= 0 and float(y.max()) <= 1
    # no augmentation at all and identity E, D: the perceived image is the image
    zero = S.AugmentParams(0, 0, 0, 0, 0, 0)
    out = S.stochastic_loop(Identity(), Identity(), x, 5, n_copies=4, params=zero, generator=g)
    torch.testing.assert_close(out, x, rtol=0, atol=1e-6)


def test_stochastic_loop_is_seeded(trained_ae):
    E, D, _, x_te, _ = trained_ae
    outs = []
    for _ in range(2):
        g = torch.Generator().manual_seed(3)
        outs.append(S.stochastic_loop(E, D, x_te[:10], 8, n_copies=5, generator=g, batch_size=16))
    assert torch.equal(outs[0], outs[1])
    assert outs[0].shape == (10, 1, 8, 8)
    assert float(outs[0].min()) >= 0 and float(outs[0].max()) <= 1


def test_two_agent_loop(trained_ae):
    E, D, _, x_te, _ = trained_ae
    # identical agents: the composed map is (D E)^2, its attractors are D E's attractors
    res, dis = S.two_agent_loop((E, D), (E, D), x_te, 60, tol=1e-3)
    assert res.converged_fraction >= 0.95
    ok = res.converged
    assert float(dis[ok].max()) < 5e-3
    # identity agents: nothing moves, nothing disagrees
    res, dis = S.two_agent_loop((Identity(), Identity()), (Identity(), Identity()), x_te, 3)
    assert torch.equal(res.x, x_te) and float(dis.max()) == 0.0


# ------------------------------------------------------------------------------------------
# classifier


def test_identity_perception_gives_the_baseline_exactly():
    x, y = S.load_digits_pool()
    tr, rest = S.restricted_split(y, 5, np.random.default_rng(1))
    x_tr, x_te = torch.as_tensor(x[tr]).unsqueeze(1), torch.as_tensor(x[rest[:200]]).unsqueeze(1)
    y_tr, y_te = torch.as_tensor(y[tr]), torch.as_tensor(y[rest[:200]])
    kw = dict(hidden=(32,), steps=60, lr=1e-2, seed=4)
    acc, pred, _ = S.classifier_accuracy(x_tr, y_tr, x_te, y_te, **kw)
    van = S.vanilla_loop(Identity(), Identity(), torch.cat([x_tr, x_te]), 10)
    acc_p, pred_p, _ = S.classifier_accuracy(van.x[:50], y_tr, van.x[50:], y_te, **kw)
    assert acc_p == acc and torch.equal(pred_p, pred)
    assert acc > 0.6  # 5 digits per class already give a usable classifier
    assert acc == pytest.approx(float((pred == y_te).double().mean()))


def test_mlp_learns_a_planted_rule_and_seed_fixes_init():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 10)) * 4
    lab = np.repeat(np.arange(3), 40)
    pts = centers[lab] + rng.normal(size=(120, 10))
    X, Y = torch.as_tensor(pts, dtype=torch.float32), torch.as_tensor(lab)
    acc, _, model = S.classifier_accuracy(X[::2], Y[::2], X[1::2], Y[1::2], hidden=(16,),
                                         n_classes=3, steps=100, seed=0)
    assert acc == 1.0
    m1 = S.train_mlp(X, Y, hidden=(8,), n_classes=3, steps=0, seed=5)
    m2 = S.train_mlp(X, Y, hidden=(8,), n_classes=3, steps=0, seed=5)
    m3 = S.train_mlp(X, Y, hidden=(8,), n_classes=3, steps=0, seed=6)
    w1, w2, w3 = (m.net[0].weight for m in (m1, m2, m3))
    assert torch.equal(w1, w2) and not torch.equal(w1, w3)


# ------------------------------------------------------------------------------------------
# paired statistics


def test_paired_comparison_against_scipy_and_known_numbers():
    a = np.array([0.61, 0.70, 0.55, 0.80, 0.66, 0.73])
    b = np.array([0.60, 0.64, 0.57, 0.71, 0.60, 0.69])
    r = S.paired_comparison(a, b, n_boot=4000, ci=0.9, seed=1)
    d = a - b
    assert r["mean_diff"] == pytest.approx(d.mean())
    assert r["t_stat"] == pytest.approx(d.mean() / (d.std(ddof=1) / math.sqrt(6)))
    t = stats.ttest_rel(a, b)
    w = stats.wilcoxon(a, b)
    assert r["t_pvalue"] == pytest.approx(t.pvalue)
    assert (r["w_stat"], r["w_pvalue"]) == pytest.approx((w.statistic, w.pvalue))
    assert d.min() <= r["ci_low"] < d.mean() < r["ci_high"] <= d.max()
    # known answer: d = 1..5 -> mean 3, t = 3 / (sqrt(2.5) / sqrt 5), exact Wilcoxon p = 2/32
    k = S.paired_comparison(np.arange(1.0, 6.0), np.zeros(5))
    assert k["t_stat"] == pytest.approx(3 / (math.sqrt(2.5) / math.sqrt(5)))
    assert (k["w_stat"], k["w_pvalue"]) == pytest.approx((0.0, 0.0625))
    # constant differences: interval collapses, t undefined; zero differences: Wilcoxon undefined
    c = S.paired_comparison(np.full(4, 0.3), np.full(4, 0.1))
    assert c["ci_low"] == pytest.approx(0.2) and c["ci_high"] == pytest.approx(0.2)
    assert math.isnan(c["t_stat"])
    z = S.paired_comparison(np.ones(4), np.ones(4))
    assert math.isnan(z["w_pvalue"]) and z["mean_diff"] == 0.0


# ------------------------------------------------------------------------------------------
# IDX files


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_idx_round_trip(tmp_path, suffix, dtype):
    rng = np.random.default_rng(0)
    arr = (rng.normal(size=(4, 3, 5)) * 50).astype(dtype)
    path = S.write_idx(tmp_path / f"a.idx{suffix}", arr)
    back = S.read_idx(path)
    assert back.dtype == np.dtype(dtype) and back.shape == arr.shape
    np.testing.assert_array_equal(back, arr)


def test_idx_header_bytes_and_errors(tmp_path):
    path = S.write_idx(tmp_path / "lab", np.array([7, 2, 1], dtype=np.uint8))
    assert path.read_bytes() == bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 2, 1])
    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01\x00\x00\x00\x01\x05")
    with pytest.raises(DataError, match="not an IDX"):
        S.read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 5, 1, 2]))
    with pytest.raises(DataError, match="expected 5"):
        S.read_idx(tmp_path / "short")
    with pytest.raises(DataError, match="no such"):
        S.read_idx(tmp_path / "missing")


def _fake_mnist(folder, n_train=60, n_test=40, seed=0):
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("t10k", n_test)):
        lab = np.arange(n) % 10
        img = np.zeros((n, 28, 28), dtype=np.uint8)
        for i, c in enumerate(lab):  # a bar whose row encodes the class, plus noise
            img[i, 2 + 2 * c : 4 + 2 * c, 4:24] = 255
            img[i] = np.maximum(img[i], rng.integers(0, 40, size=(28, 28)).astype(np.uint8))
        S.write_idx(folder / f"{split}-images-idx3-ubyte.gz", img)
        S.write_idx(folder / f"{split}-labels-idx1-ubyte", lab.astype(np.uint8))
    return folder


def test_load_mnist_and_simulate_on_idx_files(tmp_path):
    folder = _fake_mnist(tmp_path)
    x, y = S.load_mnist(folder, "train")
    assert x.shape == (60, 28, 28) and x.dtype == np.float32 and y.tolist() == list(np.arange(60) % 10)
    assert float(x.max()) == 1.0
    with gzip.open(folder / "t10k-images-idx3-ubyte.gz") as fh:
        assert fh.read(4) == bytes([0, 0, 8, 3])
    cfg = {**TINY, "dataset": "mnist", "mnist_dir": str(folder), "R": [2], "channels": 4,
           "n_seeds": 2, "n_test": 20, "agents": False}
    ds = S.simulate(cfg, device="cpu")
    assert ds["accuracy"].shape == (2, 1, 3)
    assert ds["examples"].shape[-2:] == (28, 28)
    assert bool(np.isnan(ds["agents_converged"]).all())
    with pytest.raises(ConfigError, match="'R'"):
        S.validate_config({**cfg, "R": [7]})  # 6 training images per class


# ------------------------------------------------------------------------------------------
# driver


def test_simulate_is_deterministic_and_complete():
    ds1 = S.simulate(TINY, device="cpu")
    ds2 = S.simulate(TINY, device="cpu")
    for name in ("accuracy", "vanilla_residual", "agents_disagreement", "examples", "ci_low"):
        np.testing.assert_array_equal(ds1[name].values, ds2[name].values)
    assert dict(ds1["accuracy"].sizes) == {"seed": 2, "R": 2, "perception": 3}
    assert list(ds1["perception"].values) == ["baseline", "vanilla", "stochastic"]
    acc = ds1["accuracy"].values
    assert np.all((acc >= 0) & (acc <= 1))
    diff = ds1["diff"].sel(contrast="stochastic-baseline").values
    np.testing.assert_allclose(diff, acc[:, :, 2] - acc[:, :, 0])
    np.testing.assert_allclose(ds1["mean_diff"].sel(contrast="stochastic-baseline"), diff.mean(0))
    ds3 = S.simulate({**TINY, "seed": 11}, device="cpu")
    assert not np.array_equal(ds3["accuracy"].values, acc)
    table = S.summary(ds1)
    assert list(table["R"]) == [1, 3]
    assert table["acc_baseline"].tolist() == pytest.approx(acc[:, :, 0].mean(0).tolist())
    assert {"stochastic_ci_low", "vanilla_t_p", "claim_reproduced"} <= set(table.columns)
    fig = S.plot(ds1)
    assert len(fig.axes) >= 3


def test_saved_results_round_trip(tmp_path):
    from brainattn.io import load_netcdf, save_netcdf

    ds = S.simulate({**TINY, "R": [2], "agents": False}, device="cpu")
    back = load_netcdf(save_netcdf(ds, tmp_path / "results.nc", seed=0))
    np.testing.assert_array_equal(back["accuracy"].values, ds["accuracy"].values)


@pytest.mark.parametrize(
    "bad,key",
    [
        ({"bogus": 1}, "bogus"),
        ({"R": [1, 200]}, "'R'"),
        ({"R": [0]}, "'R'"),
        ({"R": [90]}, "'R'"),  # agent B needs a second disjoint set of 90 per class
        ({"ae_steps": 0}, "'ae_steps'"),
        ({"vanilla_steps": -1}, "'vanilla_steps'"),
        ({"n_copies": 2.5}, "'n_copies'"),
        ({"decay": 1.0}, "'decay'"),
        ({"tol": 0}, "'tol'"),
        ({"aug_noise": -0.1}, "'aug_noise'"),
        ({"ci": 1.5}, "'ci'"),
        ({"n_test": 3}, "'n_test'"),
        ({"mlp_hidden": [0]}, "'mlp_hidden'"),
        ({"dataset": "cifar"}, "'dataset'"),
        ({"dataset": "mnist"}, "'mnist_dir'"),
        ({"agents": "yes"}, "'agents'"),
        ({"cpu_threads": 0}, "'cpu_threads'"),
        ({"cuda_bf16": 1}, "'cuda_bf16'"),
    ],
)
def test_bad_config(bad, key):
    with pytest.raises(ConfigError, match=key):
        S.simulate(bad)


def test_configs_are_complete_and_valid():
    assert set(S.FULL) == set(S.QUICK)
    assert S.validate_config(S.QUICK) == {**S.QUICK}
    full = S.validate_config(S.FULL)
    assert full["channels"] == 256 and full["n_copies"] == 500 and full["decay"] == 2.6
    assert S.validate_config({"R": 5})["R"] == [5]
    assert S.validate_config({"n_test": 0})["n_test"] is None
    with pytest.raises(DataError, match="mnist_dir"):
        S.validate_config({"dataset": "mnist", "mnist_dir": "/nonexistent/mnist"})


def test_stacked_training_equals_one_at_a_time():
    x, _ = S.load_digits_pool()
    xs = torch.as_tensor(x[:36]).view(3, 12, 1, 8, 8)
    together = [S.build_autoencoder(8, 6, seed=s) for s in range(3)]
    losses = S.train_autoencoders(together, xs, steps=15, lr=5e-3)
    assert losses.shape == (15, 3)
    for g in range(3):
        E, D = S.build_autoencoder(8, 6, seed=g)
        alone = S.train_autoencoder(E, D, xs[g], steps=15, lr=5e-3)
        assert alone == pytest.approx(losses[:, g].tolist(), rel=1e-5)
        for p, q in zip(E.parameters(), together[g][0].parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_draws_keep_agents_and_test_images_apart():
    cfg = S.validate_config({"R": [5], "n_test": 100})
    data = S.load_dataset(cfg)
    d = _draw(cfg, data, 5, 3)
    assert len(d["tr"]) == len(d["tr_b"]) == 50 and len(d["te"]) == 100
    assert np.bincount(data["y"][d["te"]]).tolist() == [10] * 10
    sets = [set(d[k].tolist()) for k in ("tr", "tr_b", "te")]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    again = _draw(cfg, data, 5, 3)
    assert all(np.array_equal(d[k], again[k]) for k in d)


def test_stacked_training_through_torch_convolutions():
    # large images use PyTorch's convolutions instead of dense operators; vmap must batch them
    x, _ = S.load_digits_pool()
    xs = torch.as_tensor(x[:24]).view(2, 12, 1, 8, 8).double()
    dense = [tuple(m.double() for m in S.build_autoencoder(8, 4, seed=s, dense=True)) for s in (0, 1)]
    conv = [tuple(m.double() for m in S.build_autoencoder(8, 4, seed=s, dense=False)) for s in (0, 1)]
    assert not conv[0][0].net[0].dense
    l_dense = S.train_autoencoders(dense, xs, steps=5, lr=1e-3)
    l_conv = S.train_autoencoders(conv, xs, steps=5, lr=1e-3)
    np.testing.assert_allclose(l_conv, l_dense, rtol=1e-9)


# ------------------------------------------------------------------------------------------
# the GPU path's pieces (bfloat16), checked on CPU where they run there too


def test_bf16_autocast_training_tracks_float32():
    x = torch.as_tensor(S.load_digits_pool()[0][:48]).view(2, 24, 1, 8, 8)
    l32 = S.train_autoencoders([S.build_autoencoder(8, 8, seed=s) for s in (0, 1)], x, steps=30)
    l16 = S.train_autoencoders([S.build_autoencoder(8, 8, seed=s) for s in (0, 1)], x, steps=30,
                               bf16=True)
    assert l16.dtype == np.float64 and l16.shape == (30, 2)
    np.testing.assert_allclose(l16[0], l32[0], rtol=2e-2)  # same start, bf16 rounding only
    assert l16[-1].max() < 0.8 * l16[0].min()
    np.testing.assert_allclose(l16[-1], l32[-1], rtol=0.1)


def test_bf16_stochastic_loop_tracks_float32(trained_ae):
    E, D, _, x_te, _ = trained_ae
    outs = []
    for bf16 in (False, True):
        g = torch.Generator()
        g.manual_seed(3)
        outs.append(S.stochastic_loop(E, D, x_te[:12], 6, n_copies=8, generator=g, bf16=bf16))
    assert outs[1].dtype == torch.float32 and outs[1].shape == outs[0].shape
    # the same augmentations (float32, same generator); bfloat16 passes differ by rounding only
    rms = float((outs[1] - outs[0]).pow(2).mean().sqrt())
    assert 0 < rms < 0.02
    assert E.net[0].conv.weight.dtype == torch.float32  # the networks themselves untouched


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the fused kernel runs on CUDA")
def test_fused_cos_minus_x_rounds_once_from_float32():
    from brainattn.theory.semiotics.networks import fused_cos_minus_x

    x = (torch.randn(64, 32, 14, 14, device="cuda") * 3).to(torch.bfloat16)
    x = x.contiguous(memory_format=torch.channels_last)
    y = fused_cos_minus_x(x)
    assert y.stride() == x.stride()
    ref = (torch.cos(x.float()) - x.float()).to(torch.bfloat16)
    assert float((y == ref).float().mean()) > 0.999  # H200: 100 % of 822M values
    m = S.CosMinusX()
    m.fused = True
    with torch.no_grad():
        torch.testing.assert_close(m(x), y, rtol=0, atol=0)
    with pytest.raises(Exception, match="contiguous"):
        fused_cos_minus_x(x[..., ::2])
