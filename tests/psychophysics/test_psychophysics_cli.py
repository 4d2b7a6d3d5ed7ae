"""CLI: brainattn scale fit|simulate|predict, brainattn stimuli ...; bad input leaves nothing."""

import json

import numpy as np
import pytest

from brainattn.cli import main
from brainattn.io import load_netcdf


def _err(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.fixture
def trials_csv(tmp_path):
    p = tmp_path / "trials.csv"
    rc = main(["scale", "simulate", "--out", str(p), "--levels", "7", "--repeats", "4",
               "--range", "1,4", "--sigma", "0.1", "--seed", "3"])
    assert rc == 0 and p.is_file()
    return p


def test_simulate_writes_presentation_order(trials_csv):
    import pandas as pd

    df = pd.read_csv(trials_csv)
    assert list(df.columns) == ["resp", "S1", "S2", "S3", "S4"] and len(df) == 35 * 4
    assert (df.S1 > df.S4).any()  # some trials presented in descending order


def test_fit_writes_scale_nc_summary_and_figure(trials_csv, tmp_path, capsys):
    out = tmp_path / "fit"
    rc = main(["scale", "fit", str(trials_csv), "--stimulus", "1,1.5,2,2.5,3,3.5,4", "--bootstrap", "200",
               "--predict", "mode-frequency", "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "Maximum likelihood difference scaling" in text and "prediction: mode-frequency" in text
    assert sorted(p.name for p in out.iterdir()) == ["scale.nc", "scale.png", "summary.txt"]
    ds = load_netcdf(out / "scale.nc")
    np.testing.assert_allclose(ds["stimulus"], [1, 1.5, 2, 2.5, 3, 3.5, 4])
    np.testing.assert_allclose(ds["predicted_scale"], np.log(ds["stimulus"]) / np.log(4), atol=1e-6)
    dropped = ds.attrs["n_bootstrap_failed"] + ds.attrs["n_bootstrap_separated"]
    assert ds["bootstrap_scale"].shape == (200 - dropped, 7) == (ds.attrs["n_bootstrap"], 7)
    assert ds.attrs["method"] == "glm" and "area_match_lower" in ds.attrs
    # --overwrite protection, then the optim method with a fitted lapse rate
    rc = main(["scale", "fit", str(trials_csv), "--out", str(out)])
    assert rc == 2 and "not empty" in _err(capsys)
    rc = main(["scale", "fit", str(trials_csv), "--out", str(out), "--overwrite", "--method", "optim",
               "--lapse", "fit", "--link", "logit"])
    assert rc == 0
    ds = load_netcdf(out / "scale.nc")
    assert ds.attrs["method"] == "optim" and ds.attrs["lapse_fitted"] == 1
    np.testing.assert_allclose(ds["scale"].sel(stat="estimate")[[0, -1]], [0, 1])


def test_fit_formula_and_long_format(tmp_path, capsys):
    p = tmp_path / "long.csv"
    rng = np.random.default_rng(0)
    vals = np.array([0.5, 1, 2, 4, 8])
    rows = ["resp,s1,s2,s3"]
    for _ in range(40):
        a, b, c = sorted(rng.choice(5, 3, replace=False))
        psi = np.log(vals)
        r = int((psi[c] - psi[b]) - (psi[b] - psi[a]) + 0.3 * rng.standard_normal() > 0)
        rows.append(f"{r},{vals[a]},{vals[b]},{vals[c]}")
    p.write_text("\n".join(rows) + "\n")
    out = tmp_path / "f"
    rc = main(["scale", "fit", str(p), "--format", "long", "--method", "formula", "--formula", "log",
               "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    ds = load_netcdf(out / "scale.nc")
    assert ds.attrs["formula"] == "log" and 0 <= ds.attrs["lr_p"] <= 1
    assert "c" in json.loads(ds.attrs["formula_params"])


@pytest.mark.parametrize(
    "content, extra, match",
    [
        ("resp,S1,S2,S3\n1,1,2,3\nmaybe,2,3,4\n1,1,3,4\n", [], "column 'resp' row 2"),
        ("resp,S1,S2,S3\n1,1,2,3\n0,2,3,9\n1,1,3,4\n", ["--stimulus", "1,2,3,4"],
         "column 'S3' row 2 is 9; expected a level index in 1..4"),
        ("resp,S1,S2,S3\n1,1,2,3\n0,2,3,9\n1,1,3,4\n", [], "level 5 never appears"),
        ("resp,S1,S2,S3\n1,1,2,3\n0,2,3,\n1,1,3,4\n", [], "column 'S3' row 2 is missing"),
        ("resp,S1,S2,S3\n1,1,2,3\n0,1,2,3\n1,1,2,3\n0,1,2,3\n", [], "rank deficient|separable"),
    ],
)
def test_fit_bad_input_one_line_error_nothing_written(tmp_path, capsys, content, extra, match):
    import re

    p = tmp_path / "bad.csv"
    p.write_text(content)
    out = tmp_path / "out"
    rc = main(["scale", "fit", str(p), "--out", str(out), *extra])
    assert rc == 2
    msg = _err(capsys)
    assert re.search(match, msg), msg
    assert not out.exists()
    assert sorted(x.name for x in tmp_path.iterdir()) == ["bad.csv"]


def test_fit_separated_suggests_firth_then_firth_works(tmp_path, capsys):
    from brainattn.psychophysics.design import make_design
    from brainattn.psychophysics.observer import SimulatedObserver

    d = make_design(5, "triad", repeats=2, shuffle=False)
    y = (SimulatedObserver(np.arange(5.0) ** 1.5, sigma=1e-3).probability(d) > 0.5).astype(int)
    p = tmp_path / "sep.csv"
    p.write_text("resp,S1,S2,S3\n" + "\n".join(f"{r},{a},{b},{c}" for r, (a, b, c) in zip(y, d, strict=True)))
    rc = main(["scale", "fit", str(p), "--out", str(tmp_path / "o")])
    assert rc == 2 and "--firth" in _err(capsys) and not (tmp_path / "o").exists()
    assert main(["scale", "fit", str(p), "--firth", "MPL_Jeffreys", "--out", str(tmp_path / "o")]) == 0
    assert load_netcdf(tmp_path / "o" / "scale.nc").attrs["separated"] == 1


def test_bad_options(tmp_path, trials_csv, capsys):
    assert main(["scale", "fit", str(trials_csv), "--link", "nope", "--out", str(tmp_path / "x")]) == 2
    assert "unknown link" in _err(capsys)
    assert main(["scale", "fit", str(trials_csv), "--lapse", "lots", "--out", str(tmp_path / "x")]) == 2
    assert "--lapse" in _err(capsys)
    assert main(["scale", "fit", str(tmp_path / "none.csv"), "--out", str(tmp_path / "x")]) == 2
    assert "no such file" in _err(capsys)
    assert main(["scale", "simulate", "--scale", "cubic", "--out", str(tmp_path / "s.csv")]) == 2
    assert "--scale" in _err(capsys)
    assert not (tmp_path / "x").exists() and not (tmp_path / "s.csv").exists()


def test_predict(tmp_path, capsys):
    out = tmp_path / "pred"
    rc = main(["scale", "predict", "--model", "frequency-bandwidth", "--range", "0.25,3.25", "--levels", "13",
               "--out", str(out)])
    assert rc == 0
    ds = load_netcdf(out / "predicted.nc")
    assert ds["predicted_scale"].values[0] == 0 and ds["predicted_scale"].values[-1] == pytest.approx(1)
    assert (out / "predicted.csv").is_file()
    assert main(["scale", "predict", "--model", "colour", "--stimulus", "1,2,3"]) == 2
    assert "unknown Fisher model" in _err(capsys)


def test_stimuli_verbs(tmp_path):
    from PIL import Image

    assert main(["stimuli", "texture", "--size", "32", "--sf-mode", "3,6", "--out", str(tmp_path / "t")]) == 0
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == [
        "stimuli.json", "stimuli.npy", "texture_01.png", "texture_02.png"]
    assert Image.open(tmp_path / "t" / "texture_01.png").size == (32, 32)
    arr = np.load(tmp_path / "t" / "stimuli.npy")
    assert arr.shape == (2, 32, 32)
    assert main(["stimuli", "grating", "--size", "32", "--frequency", "2,4", "--out", str(tmp_path / "g")]) == 0
    assert main(["stimuli", "interpolate", "--size", "32", "--levels", "3", "--sf-mode", "3,6",
                 "--out", str(tmp_path / "i")]) == 0
    meta = json.loads((tmp_path / "i" / "stimuli.json").read_text())
    assert meta["t"] == [0.0, 0.5, 1.0]
    assert main(["stimuli", "texture", "--size", "32", "--sf-mode", "40", "--out", str(tmp_path / "n")]) == 2
    assert not (tmp_path / "n").exists()
