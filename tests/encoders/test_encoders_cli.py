"""End to end through the CLI on a tiny synthetic cortex: fit (3 models), evaluate, predict,
resume, and the bad-input messages."""

import json

import numpy as np
import pytest

from brainattn.cli import main
from brainattn.io import load_netcdf


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from brainattn.data.synth import generate

    root = tmp_path_factory.mktemp("synth") / "data"
    generate(root, subjects=1, images=64, seed=0, image_size=64, n_ev_roi=8,
             n_category_roi=6, n_unlabelled=20, n_jobs=1)
    return root


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


TINY = ["--image-size", "64", "--width", "16", "--heads", "2", "--ffn", "32", "--epochs", "2",
        "--val-fraction", "0.15", "--test-fraction", "0.2", "--device", "cpu"]


def _fit(synth, cache, out, *extra):
    return main(["fit", str(synth), "--out", str(out), "--cache", str(cache), *TINY, *extra])


def test_fit_evaluate_predict_transformer(synth, cache, tmp_path, capsys):
    run = tmp_path / "tbe"
    assert _fit(synth, cache, run, "--model", "transformer", "--prf-bias") == 0
    for f in ("config.json", "model.safetensors", "model.json", "scores.nc", "attention.nc",
              "history.csv", "split.json", "fit.log"):
        assert (run / f).is_file(), f
    assert not (run / "checkpoint").exists()
    sc = load_netcdf(run / "scores.nc")
    assert sc["score"].dims == ("vertex", "metric") and "hemisphere" in sc.coords
    assert "roi_floc-faces" in sc.coords and sc.sizes["roi"] > 0
    att = load_netcdf(run / "attention.nc")
    assert att["attention"].dims == ("image", "query", "row", "col")
    np.testing.assert_allclose(att["attention"].sum(("row", "col")).values, 1.0, atol=1e-4)
    assert "lh:FFA-1" in att["query"].values.tolist()
    assert main(["evaluate", str(run), "--device", "cpu", "--cache", str(cache)]) == 0
    again = load_netcdf(run / "scores.nc")
    np.testing.assert_allclose(again["score"].values, sc["score"].values, atol=1e-6)
    imgs = sorted((synth / "subj01" / "test_split" / "test_images").glob("*.png"))[:2]
    assert main(["predict", str(run), *map(str, imgs), "--device", "cpu"]) == 0
    pred = load_netcdf(run / "predictions.nc")
    assert pred["prediction"].shape == (2, sc.sizes["vertex"])
    assert main(["predict", str(run), *map(str, imgs)]) == 2  # exists, no --overwrite
    assert "exists" in capsys.readouterr().err


@pytest.mark.parametrize("model", ["ridge", "factorized"])
def test_fit_baselines(synth, cache, tmp_path, model):
    run = tmp_path / model
    assert _fit(synth, cache, run, "--model", model) == 0
    sc = load_netcdf(run / "scores.nc")
    assert sc.attrs["model"] == model and np.isfinite(sc.attrs["mean_r"])
    assert not (run / "attention.nc").exists()


def test_resume_after_a_kill_matches(synth, cache, tmp_path):
    from brainattn.encoders.run import fit_run

    opts = dict(model="transformer", image_size=64, width=16, heads=2, ffn=32, epochs=3,
                val_fraction=0.15, test_fraction=0.2, device="cpu", patience=None)
    fit_run(synth, tmp_path / "full", cache_dir=cache, echo=False, **opts)
    fit_run(synth, tmp_path / "part", cache_dir=cache, echo=False, stop_after=1, **opts)
    assert (tmp_path / "part" / "checkpoint" / "state.json").is_file()
    assert not (tmp_path / "part" / "scores.nc").exists()
    fit_run(synth, tmp_path / "part", cache_dir=cache, echo=False, resume=True, **opts)
    a = load_netcdf(tmp_path / "full" / "scores.nc")["score"].values
    b = load_netcdf(tmp_path / "part" / "scores.nc")["score"].values
    np.testing.assert_array_equal(a, b)


def test_bad_inputs(synth, cache, tmp_path, capsys):
    run = tmp_path / "r"
    assert _fit(synth, cache, run, "--model", "ridge", "--roi-families", "floc-cars") == 2
    assert "family 'floc-cars' is not in the data set" in capsys.readouterr().err
    assert not (run / "scores.nc").exists()
    assert _fit(synth, cache, run, "--model", "nope") == 2
    assert "--model 'nope'" in capsys.readouterr().err
    # resume with different options names the keys
    from brainattn.encoders.run import fit_run

    fit_run(synth, tmp_path / "p", cache_dir=cache, echo=False, stop_after=1, model="transformer",
            image_size=64, width=16, heads=2, ffn=32, epochs=3, device="cpu")
    assert _fit(synth, cache, tmp_path / "p", "--model", "transformer", "--resume",
                "--lr", "0.01") == 2
    err = capsys.readouterr().err
    assert "different options" in err and "epochs" in err and "lr" in err
    # non-empty output without --overwrite
    assert _fit(synth, cache, tmp_path / "p", "--model", "ridge") == 2
    assert "not empty" in capsys.readouterr().err
    # weights for the embedded backbone, and a ViT without weights
    assert _fit(synth, cache, tmp_path / "w", "--weights", str(tmp_path / "x.pth")) == 2
    assert _fit(synth, cache, tmp_path / "w", "--backbone", "vit_small_patch14_dinov2") == 2
    assert "never downloads" in capsys.readouterr().err


def test_nan_vertices_are_refused(synth, cache, tmp_path, capsys):
    from brainattn.data import open_algonauts
    from brainattn.encoders.run import fit_run
    from brainattn.errors import DataError

    ds = open_algonauts(synth, "subj01").load()
    betas = ds["betas"].values.copy()
    betas[3, 5] = np.nan
    ds["betas"] = (("image", "vertex"), betas)
    with pytest.raises(DataError, match=r"1 vertices hold NaN/Inf \(first: \[5\]\)"):
        fit_run(ds, tmp_path / "nan", cache_dir=cache, echo=False, model="ridge", image_size=64)
    assert json.loads(json.dumps({"ok": 1}))  # nothing else to check: no folder was written
    assert not (tmp_path / "nan" / "scores.nc").exists()
