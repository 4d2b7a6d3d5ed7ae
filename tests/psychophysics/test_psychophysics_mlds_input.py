"""MLDS input and options from the command line: unused columns, --by, malformed tables, formulas
as text (parsed, never evaluated), --diagnostics, --firth TYPE, --method optim variants."""

import numpy as np
import pytest

from brainattn.cli import main
from brainattn.errors import ConfigError, DataError
from brainattn.io import load_netcdf
from brainattn.psychophysics.design import make_design, read_mlds_csv
from brainattn.psychophysics.formula import PARAMETRIC_SCALES, parse_formula, safe_pow
from brainattn.psychophysics.mlds import fit_mlds
from brainattn.psychophysics.observer import SimulatedObserver


def _err(capsys):
    return capsys.readouterr().err


def _two_observers(path, p=7):
    rows = ["resp,S1,S2,S3,S4,observer"]
    for obs_id, gamma in ((1, 1.0), (2, 2.5)):
        obs = SimulatedObserver(np.linspace(0, 1, p) ** gamma, sigma=0.1)
        d = make_design(p, "quadruple", repeats=4, seed=obs_id)
        for r, q in zip(obs.respond(d, obs_id + 10), d, strict=True):
            rows.append(f"{r},{q[0]},{q[1]},{q[2]},{q[3]},{obs_id}")
    path.write_text("\n".join(rows) + "\n")
    return path


def test_unused_column_is_named_and_by_fits_each_value(tmp_path, capsys):
    csv = _two_observers(tmp_path / "two.csv")
    assert main(["scale", "fit", str(csv), "--out", str(tmp_path / "pooled")]) == 0
    err = _err(capsys)
    assert "'observer' (2 distinct values) not used" in err and "--by" in err
    assert main(["scale", "fit", str(csv), "--by", "observer", "--out", str(tmp_path / "each")]) == 0
    assert "not used" not in _err(capsys)
    a = load_netcdf(tmp_path / "each" / "observer-1" / "scale.nc")
    b = load_netcdf(tmp_path / "each" / "observer-2" / "scale.nc")
    assert a.attrs["n_trials"] == b.attrs["n_trials"] == 35 * 4
    # each folder is that observer's own fit: the same as fitting its rows alone
    import pandas as pd

    df = pd.read_csv(csv)
    df[df.observer == 2].drop(columns="observer").to_csv(tmp_path / "o2.csv", index=False)
    alone = fit_mlds(read_mlds_csv(tmp_path / "o2.csv"))
    np.testing.assert_allclose(b["scale"].sel(stat="estimate").values, alone.psi, atol=1e-10)
    assert main(["scale", "fit", str(csv), "--by", "subject", "--out", str(tmp_path / "x")]) == 2
    assert "'subject' not found" in _err(capsys)


def test_header_row_length_mismatch_and_single_trial(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("resp,S1,S2,S3\n1,1,2,3,4\n0,2,3,4,5\n")
    assert main(["scale", "fit", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "line 2 has 5 values but the header names 4 columns" in _err(capsys)
    one = tmp_path / "one.csv"
    one.write_text("resp,S1,S2,S3\n1,1,2,3\n")
    with pytest.raises(DataError, match="a single trial"):
        read_mlds_csv(one)
    # R's write.csv: an unnamed index column in the header too, which is fine
    ok = tmp_path / "r.csv"
    d = make_design(5, "triad", repeats=3, seed=0)
    resp = SimulatedObserver(np.linspace(0, 1, 5), sigma=0.2).respond(d, 1)
    ok.write_text('"","resp","S1","S2","S3"\n' + "".join(
        f'"{i + 1}",{r},{a},{b},{c}\n' for i, (r, (a, b, c)) in enumerate(zip(resp, d, strict=True))))
    assert read_mlds_csv(ok).n_trials == len(d)


def test_formula_text_is_parsed_not_evaluated():
    fn, names = parse_formula("~ (sx / max(sx))^p[1]")
    s = np.array([0.0, 0.5, 1.0])
    assert names == ["p[1]"]
    np.testing.assert_allclose(fn(s, 2.0), PARAMETRIC_SCALES["power"][0](s, 2.0))
    fn, names = parse_formula("a * log1p(s / c) + 1")
    assert names == ["a", "c"]
    np.testing.assert_allclose(fn(s, 2.0, 0.5), 2.0 * np.log1p(s / 0.5) + 1)
    for evil in ("__import__('os').system('true')", "s.__class__", "(lambda: 1)()", "s if s else 1",
                 "open('x')", "[s]", "s; s", "exp"):
        with pytest.raises(ConfigError):
            parse_formula(evil)
    with pytest.raises(ConfigError, match="does not use the stimulus"):
        parse_formula("a + 1")


def test_safe_pow_has_finite_derivatives_at_zero():
    import torch

    g = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    s = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    (grad,) = torch.autograd.grad(safe_pow(s, g).sum(), g)
    assert torch.isfinite(grad) and float(grad) == pytest.approx(0.25 * np.log(0.5))
    assert safe_pow(np.array([0.0]), -1.0)[0] == np.inf and safe_pow(np.array([0.0]), 0.0)[0] == 1.0


def test_cli_formula_expression_optim_firth_and_diagnostics(tmp_path, capsys):
    csv = tmp_path / "t.csv"
    assert main(["scale", "simulate", "--out", str(csv), "--levels", "8", "--repeats", "2",
                 "--scale", "power:2", "--range", "0,1", "--seed", "2"]) == 0
    stim = ",".join(f"{v:g}" for v in np.linspace(0, 1, 8))
    out = tmp_path / "f"
    assert main(["scale", "fit", str(csv), "--stimulus", stim, "--method", "formula", "--formula",
                 "(s / max(s))^gamma", "--p0", "1.5", "--out", str(out)]) == 0
    ds = load_netcdf(out / "scale.nc")
    assert "gamma" in ds.attrs["formula_params"] and ds.attrs["converged"]
    for method in ("optim", "optim-unconstrained"):
        assert main(["scale", "fit", str(csv), "--method", method, "--out", str(tmp_path / method)]) == 0
        assert load_netcdf(tmp_path / method / "scale.nc").attrs["method"] == method
    assert main(["scale", "fit", str(csv), "--firth", "AS_mean", "--diagnostics", "30",
                 "--diagnostics-refit", "probit", "--out", str(tmp_path / "a")]) == 0
    text = (tmp_path / "a" / "summary.txt").read_text()
    n_sim = load_netcdf(tmp_path / "a" / "scale.nc").attrs["diagnostics_n"]  # separated simulations dropped
    assert 20 <= n_sim <= 30 and f"{n_sim} simulations" in text
    assert "AS_mean" in text and "R's binom.diagnostics as shipped" in text
    assert main(["scale", "fit", str(csv), "--firth", "brglm", "--out", str(tmp_path / "b")]) == 2
    assert "AS_mean" in _err(capsys)
    assert main(["scale", "fit", str(csv), "--method", "formula", "--formula", "os.system('x')",
                 "--out", str(tmp_path / "c")]) == 2
    assert "not allowed" in _err(capsys)
    capsys.readouterr()
    assert main(["scale", "fit", "--help"]) == 0
    flat = "".join(capsys.readouterr().out.replace("│", "").split())  # rich wraps the help in a box
    assert "optim(R'soptim:psi_1=0,psi_p=1,interiorvaluesin[0,1])" in flat
    assert "optim-unconstrained(theglmfitdividedbypsi_p)" in flat
