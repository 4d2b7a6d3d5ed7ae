"""The analyses through the CLI on a tiny synthetic cortex: a layer sweep in one backbone pass,
significance in scores.nc, an ensemble, an Algonauts submission, variance partitioning."""

import json

import numpy as np
import pytest

from brainattn.cli import main
from brainattn.io import load_netcdf


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from brainattn.data.synth import generate

    root = tmp_path_factory.mktemp("synth") / "data"
    generate(root, subjects=1, images=80, seed=0, image_size=64, test_images=5, n_ev_roi=8,
             n_category_roi=6, n_unlabelled=20, n_jobs=1)
    return root


@pytest.fixture(scope="module")
def sweep(synth, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "sweep"
    cache = out.parent / "cache"
    assert main(["fit", str(synth), "--model", "ridge", "--layer", "0,1,3", "--out", str(out),
                 "--cache", str(cache), "--image-size", "64", "--device", "cpu",
                 "--permutations", "200", "--bootstrap", "50", "--test-fraction", "0.2"]) == 0
    return out, cache


def test_layer_sweep_summary_and_significance(sweep, capsys):
    out, cache = sweep
    runs = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert runs == [f"subj01__gabor__layer{x}" for x in (0, 1, 3)]
    # one backbone pass filled all three cache folders
    assert len([p for p in cache.iterdir() if p.is_dir()]) == 3
    summary = load_netcdf(out / "layer_sweep.nc")
    assert list(summary["layer"].values) == [0, 1, 3]
    assert summary["roi_score"].dims == ("layer", "roi")
    assert set(np.unique(summary["best_layer"].values)) <= {-1, 0, 1, 3}
    sc = load_netcdf(out / "subj01__gabor__layer1" / "scores.nc")
    for k in ("p_value", "q_value", "significant", "roi_median_ci"):
        assert k in sc, k
    p = sc["p_value"].values[np.isfinite(sc["p_value"].values)]
    assert p.min() >= 1 / 201 and p.max() <= 1
    lo, hi = sc["roi_median_ci"].values.T
    med = sc["roi_median"].sel(metric="pearson_r").values
    ok = np.isfinite(lo)
    assert ok.any() and np.all(lo[ok] <= med[ok] + 1e-9) and np.all(med[ok] <= hi[ok] + 1e-9)
    assert np.isfinite(sc.attrs["challenge_score"])  # the synthetic cortex has a noise ceiling
    assert sc.attrs["n_permutations"] == 200


def test_ensemble_of_the_sweep(sweep, tmp_path, capsys):
    out, cache = sweep
    runs = [str(out / f"subj01__gabor__layer{x}") for x in (1, 3)]
    ens = tmp_path / "ens"
    assert main(["ensemble", *runs, "--out", str(ens), "--cache", str(cache), "--device", "cpu",
                 "--weights", "1,1"]) == 0
    sc = load_netcdf(ens / "scores.nc")
    assert sc.attrs["model"] == "ensemble" and sc.sizes["member"] == 2
    assert json.loads((ens / "config.json").read_text())["model"] == "ensemble"
    assert "significant" in sc
    assert main(["ensemble", runs[0], "--out", str(tmp_path / "e2")]) == 2
    assert "at least 2" in capsys.readouterr().err
    assert main(["ensemble", *runs, "--out", str(tmp_path / "e3"), "--weights", "1"]) == 2


def test_algonauts_submission(sweep, synth, tmp_path, capsys):
    from brainattn.data import open_algonauts

    out, cache = sweep
    run = out / "subj01__gabor__layer1"
    sub = tmp_path / "submission"
    assert main(["predict", str(run), "--algonauts-submission", str(sub), "--cache", str(cache),
                 "--device", "cpu"]) == 0
    ds = open_algonauts(synth, "subj01")
    for h in ("lh", "rh"):
        a = np.load(sub / "subj01" / f"{h}_pred_test.npy")
        assert a.dtype == np.float32
        assert a.shape == (5, int((ds["hemisphere"].values == h).sum()))
        assert np.isfinite(a).all()
    assert main(["predict", str(run), str(ds["image_path"].values[0]),
                 "--algonauts-submission", str(sub)]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(["predict", str(run), "--algonauts-submission", str(sub), "--cache",
                 str(cache), "--device", "cpu"]) == 2  # exists
    assert "exists" in capsys.readouterr().err


def test_partition_verb(synth, sweep, tmp_path, capsys):
    _, cache = sweep
    out = tmp_path / "part"
    assert main(["partition", str(synth), "--layer", "0,1", "--out", str(out), "--cache",
                 str(cache), "--device", "cpu", "--n-iter", "5", "--permutations", "100"]) == 0
    part = load_netcdf(out / "partition.nc")
    assert list(part["part"].values) == ["unique:layer0", "unique:layer1", "shared:layer0+layer1"]
    np.testing.assert_allclose(part["partition"].sum("part"), part["r2"], atol=1e-9)
    assert part["split_r2"].dims == ("space", "vertex") and "roi_prf-visualrois" in part.coords
    sc = load_netcdf(out / "scores.nc")
    assert sc.attrs["model"] == "banded-ridge" and "p_value" in sc
    assert "variance partitioning" in capsys.readouterr().out
    assert main(["partition", str(synth), "--layer", "1", "--out", str(tmp_path / "p2")]) == 2
    assert "at least 2 feature spaces" in capsys.readouterr().err


def test_report_draws_the_sweep_the_partition_and_significant_vertices(synth, sweep, tmp_path):
    from brainattn.report.build import figures_dir

    out, cache = sweep
    part = tmp_path / "part"
    assert main(["partition", str(synth), "--layer", "0,1", "--out", str(part), "--cache",
                 str(cache), "--device", "cpu", "--n-iter", "3", "--permutations", "50"]) == 0
    html = tmp_path / "report.html"
    assert main(["report", str(out), str(part), "--out", str(html), "--no-svg"]) == 0
    names = sorted(p.stem for p in figures_dir(html).glob("*.png"))
    assert "analyses-layer-sweep" in names
    assert "analyses-partition-part" in names
    text = html.read_text()
    assert "significant (permutation test, Benjamini-Hochberg" in text
