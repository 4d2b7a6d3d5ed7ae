"""build_report end to end: discovery, the page, the figures folder, bad input."""

from __future__ import annotations

import base64
import re
import shutil
from html import unescape

import numpy as np
import pytest

from brainattn.errors import DataError, OutputExistsError
from brainattn.io import save_netcdf
from brainattn.report import build_report, discover


def test_demo_discovery(tmp_path, fakes):
    fakes.make_demo(tmp_path)
    found = discover(tmp_path)
    kinds = sorted((r.kind, r.label) for r in found.runs)
    assert kinds == [("encoders", "ridge"), ("encoders", "transformer"),
                     ("psychophysics", "psychophysics"), ("theory", "fakesim")]
    tr = next(r for r in found.runs if r.label == "transformer")
    assert set(tr.files) == {"scores.nc", "attention.nc", "history.csv", "config.json"}
    assert "data" in found.missing and "did not reach this stage" in found.missing["data"][0]


def test_single_run_folder_is_recognised(tmp_path, fakes):
    fakes.make_demo(tmp_path, parts=("psychophysics",))
    found = discover(tmp_path / "psychophysics")
    assert [r.kind for r in found.runs] == ["psychophysics"] and not found.missing


def test_page_is_self_contained_with_every_section(demo_report, fakes):
    root, out, html = demo_report
    assert out == root / "report.html"
    for h in ("Provenance", "Encoders", "Psychophysics", "Theory"):
        assert re.search(rf"<h2>{h}</h2>", html)
    # no external assets: every src is a data URI, no stylesheet/script files, no URLs
    srcs = re.findall(r'src="([^"]*)"', html)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "<link" not in html and "http://" not in html and "https://" not in html
    assert all(h.startswith("#") for h in re.findall(r'href="([^"]*)"', html))
    # the embedded PNG files are the ones saved beside the page, for every figure
    figs = root / "figures"
    names = re.findall(r'<figure id="fig-([^"]+)">', html)
    assert set(names) == {"encoders-roi-accuracy", "encoders-roi-noise-normalised",
                          "encoders-surface-transformer", "encoders-attention-transformer",
                          "encoders-training", "psychophysics-scale", "psychophysics-fit",
                          "theory-fakesim"}
    for src, name in zip(srcs, names, strict=True):
        png = (figs / f"{name}.png").read_bytes()
        assert base64.b64decode(src.split(",", 1)[1]) == png
        assert (figs / f"{name}.svg").read_bytes().lstrip().startswith(b"<?xml")
    # provenance from the NetCDF attrs, and the missing data stage is marked
    assert html.count(">7</td>") >= 4  # seed of each result
    assert "brainattn_version" in html and ">0.1.0<" in html
    assert 'class="missing"' in html and "data" in html
    # the summary table of the encoders holds the mean r of each model
    ds = fakes.make_scores(2, 0.1)
    mean_r = float(np.nanmean(ds["score"].sel(metric="pearson_r").values))
    assert f"{mean_r:.4g}" in html


def test_existing_report_is_not_overwritten(demo_report):
    root, out, html = demo_report
    with pytest.raises(OutputExistsError, match="--overwrite"):
        build_report(root)
    assert out.read_text(encoding="utf-8") == html


def test_not_a_run_names_the_missing_files(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match=r"scores\.nc.*scale\.nc.*results\.nc"):
        build_report(tmp_path)
    assert not (tmp_path / "report.html").exists() and not (tmp_path / "figures").exists()
    with pytest.raises(DataError, match="no such folder"):
        build_report(tmp_path / "nope", out=tmp_path / "r.html")


def test_incompatible_version_is_refused(tmp_path, fakes):
    d = tmp_path / "psy"
    d.mkdir()
    ds = fakes.make_scale()
    ds.attrs["brainattn_version"] = "3.2.0"
    save_netcdf(ds, d / "scale.nc")
    with pytest.raises(DataError, match=r"scale\.nc: written by brainattn 3\.2\.0.*incompatible"):
        build_report(d)
    assert not (d / "report.html").exists()


def test_interrupted_demo_draws_what_exists(tmp_path, fakes):
    fakes.make_demo(tmp_path, parts=("encoders",))
    (tmp_path / "encoders" / "ridge" / "scores.nc").unlink()  # ridge was still running
    tr = tmp_path / "encoders" / "transformer" / "scores.nc"
    save_netcdf(fakes.make_scores(2, 0.1).drop_vars("fsaverage_index"), tr)
    (tmp_path / "encoders" / "transformer" / "attention.nc").write_bytes(b"truncated")
    out = build_report(tmp_path, out=tmp_path / "partial.html", svg=False)
    html = out.read_text(encoding="utf-8")
    notes = [unescape(n) for n in re.findall(r'<div class="missing"><b>missing:</b> (.*?)</div>',
                                            html)]
    assert any("ridge/scores.nc is missing" in n for n in notes)
    assert any("attention.nc is unreadable" in n for n in notes)
    for stage in ("psychophysics", "theory", "data"):
        assert any(f"{stage} is missing" in n for n in notes)
    assert any("no 'fsaverage_index' coordinate" in n for n in notes)
    assert (tmp_path / "partial_figures" / "encoders-roi-accuracy.png").is_file()
    # ridge has history but no scores: its training curve is still drawn
    assert "encoders-training" in html and "encoders-roi-accuracy" in html


def test_overwrite_replaces_report_and_figures(tmp_path, fakes):
    fakes.make_demo(tmp_path, parts=("theory",))
    run = tmp_path / "theory" / "fakesim"
    build_report(run, svg=False)
    (run / "figures" / "stale.png").write_bytes(b"x")
    build_report(run, overwrite=True, svg=False)
    assert sorted(p.name for p in (run / "figures").iterdir()) == ["theory-fakesim.png"]


def test_theory_registered_figure_and_summary_are_used(tmp_path, fakes):
    import matplotlib.pyplot as plt

    fakes.make_demo(tmp_path, parts=("theory",))
    before = plt.rcParams["axes.facecolor"]
    html = build_report(tmp_path / "theory", svg=False).read_text(encoding="utf-8")
    assert "fakesim: summary" in html and "theory-fakesim" in html
    assert plt.rcParams["axes.facecolor"] == before  # the module's style did not leak
    summary = re.search(r"fakesim: summary</div>(.*?)</table>", html, re.S).group(1)
    assert summary.count("<tr") == 1 + 8  # header + one row per n


def test_theory_without_registered_figure_falls_back_to_its_figure_png(tmp_path, fakes):
    fakes.make_demo(tmp_path, parts=("theory",))
    src = tmp_path / "theory" / "fakesim"
    dst = tmp_path / "theory" / "unknownsim"
    shutil.copytree(src, dst)
    (src / "results.nc").unlink()
    ds = fakes.make_theory()
    ds.attrs["simulation"] = "unknownsim"
    (dst / "results.nc").unlink()
    save_netcdf(ds, dst / "results.nc")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 2))
    fig.savefig(dst / "figure.png")
    plt.close(fig)
    (dst / "summary.csv").write_text("quantity,simulation\ncapacity,12.5\n")
    html = build_report(dst, svg=False).read_text(encoding="utf-8")
    assert "the run&#x27;s own figure.png" in html
    assert "unknownsim: summary.csv" in html and "<td>12.5</td>" in html
    assert base64.b64encode((dst / "figure.png").read_bytes()).decode() in html


def test_cli_report_and_errors(tmp_path, fakes, capsys):
    from brainattn.cli import main

    fakes.make_demo(tmp_path, parts=("psychophysics",))
    run = tmp_path / "psychophysics"
    assert main(["report", str(run), "--no-svg"]) == 0
    assert (run / "report.html").is_file() and (run / "figures" / "psychophysics-scale.png").is_file()
    assert not list((run / "figures").glob("*.svg"))
    assert main(["report", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith("error: ") and "--overwrite" in err
    assert main(["report", str(tmp_path / "missing-dir")]) == 2
    assert main(["report", str(run), "--out", str(tmp_path / "x.txt")]) == 2
    assert "expected a file name ending in .html" in capsys.readouterr().err


def test_long_tables_are_folded():
    import pandas as pd

    from brainattn.report.html import table_block

    short = table_block("short", pd.DataFrame({"a": range(3)}))
    long = table_block("long", pd.DataFrame({"a": np.arange(40) / 3}))
    assert short.startswith('<div class="tablecap">short</div>') and "<details>" not in short
    assert long.startswith("<details>") and "long (40 rows)" in long
    assert "<td>13</td>" in long and "<td>0.3333</td>" in long  # 4 significant digits
