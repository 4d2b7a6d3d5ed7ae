"""``brainattn demo``: every stage in order at a tiny size, each output in its command's format,
then the report; refusal to overwrite; the progress lines and the summary table."""

from __future__ import annotations

import re

import pytest

import brainattn.demo as demo
from brainattn.cli import main
from brainattn.data import open_algonauts

TINY = {"images": 24, "image_size": 32, "epochs": 1, "bootstrap": 20,
        "models": ("transformer", "ridge"), "theory_scale": "quick", "simulations": (),
        "estimate_scale": 0.01}


@pytest.mark.slow
def test_demo_quick_runs_every_stage(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(demo, "QUICK", TINY)
    monkeypatch.setenv("BRAINATTN_PROGRESS", "0")
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--quick"]) == 0
    text = capsys.readouterr().out
    names = [n for n, _, _ in demo.stages(TINY)]
    assert names == ["synthetic data", "encoder: transformer", "encoder: ridge",
                     "encoder analyses", "difference scaling", "report"]
    for i, name in enumerate(names, start=1):
        assert re.search(rf"\[{i}/{len(names)}\] {re.escape(name)}  \(elapsed \d+:\d\d, about "
                         r"\d+:\d\d left\)", text)
    # the summary table: one row per stage with its time, then the total and the report path
    for name in names:
        assert re.search(rf"^{re.escape(name)}\s+\d+:\d\d\s+\S", text, re.M)
    assert re.search(r"^total\s+\d+:\d\d", text, re.M)
    assert f"report: {out / 'report.html'}" in text
    # each stage in its command's format
    assert open_algonauts(out / "data", "subj01").sizes["image"] == 24
    for model in ("transformer", "ridge"):
        assert (out / "encoders" / model / "scores.nc").is_file()
    assert (out / "encoders" / "transformer" / "attention.nc").is_file()
    assert (out / "encoders" / "sweep" / "layer_sweep.nc").is_file()
    for analysis in ("ensemble", "banded-ridge"):
        assert (out / "encoders" / analysis / "scores.nc").is_file()
    assert (out / "encoders" / "banded-ridge" / "partition.nc").is_file()
    assert {p.name for p in (out / "psychophysics").iterdir()} >= {"scale.nc", "summary.txt",
                                                                   "trials.csv"}
    html = (out / "report.html").read_text(encoding="utf-8")
    for h in ("Data", "Encoders", "Psychophysics", "Theory"):
        assert f"<h2>{h}</h2>" in html
    assert "theory is missing" in html  # no simulation was run at this size
    # a second run refuses to overwrite, unless asked to
    assert main(["demo", "--out", str(out), "--quick"]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_overwrite_clears_only_the_demo_outputs(tmp_path):
    out = tmp_path / "demo"
    (out / "theory" / "old").mkdir(parents=True)
    (out / "report.html").write_text("old")
    (out / "notes.txt").write_text("mine")
    demo._clear_earlier_run(out)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_stage_list_names_every_capability():
    names = [n for n, _, _ in demo.stages()]
    assert names[0] == "synthetic data" and names[-1] == "report"
    assert {"encoder: transformer", "encoder: ridge", "encoder: factorized",
            "difference scaling"} <= set(names)
    assert "encoder analyses" in names
    assert all(n.startswith("theory: ") for n in names[6:-1]) and len(names) >= 8


def test_encoder_options_merge_preset_size_and_epochs(monkeypatch):
    from brainattn.encoders import run

    monkeypatch.setattr(run, "DEMO_OPTIONS", {"transformer": {"epochs": 4, "width": 128}},
                        raising=False)
    size = {"epochs": None, "encoder_options": {"transformer": {"width": 64, "lr": 1e-3}}}
    assert demo.encoder_options("transformer", size) == {"model": "transformer", "epochs": 4,
                                                         "width": 128, "lr": 1e-3}
    assert demo.encoder_options("ridge", {"epochs": 2}) == {"model": "ridge"}
    assert demo.encoder_options("factorized", {"epochs": 2})["epochs"] == 2


def test_theory_headlines_read_the_summary_tables(monkeypatch):
    import pandas as pd

    from brainattn.theory import consciousness, pavlovian

    monkeypatch.setattr(pavlovian, "summary", lambda ds: pd.DataFrame({
        "quantity": ["SNR", "exponent: capacity ~ d_k^a", "exponent: capacity ~ d_k^a"],
        "setting": ["d_k=32", "average case", "error-free"],
        "simulation": [1.0, 0.96, 0.47], "theory": [1.0, 0.97, 0.46]}))
    assert demo.theory_headline("pavlovian", None) == (
        "capacity ~ d_k^a: a = 0.96 average case (theory 0.97), 0.47 error-free (theory 0.46)")
    monkeypatch.setattr(consciousness, "summary", lambda ds: pd.DataFrame({
        "k": [0, 1, 2], "error_ood": [0.05, 0.4, 0.004], "selection_exact": [1.0, 0.0, 0.95]}))
    assert demo.theory_headline("consciousness", None) == (
        "top-2: true parents selected in 95% of cases, OOD error 0.0040 vs dense 0.0500")
