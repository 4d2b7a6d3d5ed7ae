"""Figures are checked for content: the drawn numbers are the numbers in the result files."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest

from brainattn.report import encoders, psychophysics
from brainattn.report.figures import render


def _by_gid(fig, prefix):
    out = {}
    for ax in fig.axes:
        for art in [*ax.patches, *ax.lines, *ax.images, *ax.collections]:
            gid = art.get_gid()
            if gid and gid.startswith(prefix):
                out[gid] = art
    return out


def test_roi_bars_are_the_roi_medians(fakes):
    scores = {"transformer": fakes.make_scores(2, 0.1), "ridge": fakes.make_scores(1, 0.0)}
    fig = encoders.plot_roi_accuracy(scores, "pearson_r")
    bars = _by_gid(fig, "roi-bar:")
    assert len(bars) == 2 * 3  # two models x three ROIs (Unknown left out)
    for model, ds in scores.items():
        for roi, value in zip(ds["roi"].values, ds["roi_median"].sel(metric="pearson_r").values, strict=False):
            assert bars[f"roi-bar:{model}:{roi}"].get_height() == pytest.approx(value)


def test_roi_table_recomputes_medians_without_roi_median(fakes):
    ds = fakes.make_scores(3, 0.0)
    ref = encoders.roi_table(ds, "noise_normalized").set_index("roi")["value"]
    got = encoders.roi_table(ds.drop_vars(["roi_median", "roi", "roi_family", "roi_name",
                                           "roi_n_vertices"]), "noise_normalized")
    got = got.set_index("roi")["value"]
    assert "Unknown" not in got.index
    np.testing.assert_allclose(got.loc[ref.index].to_numpy(), ref.to_numpy())


def test_surface_values_place_each_score_on_its_fsaverage_vertex(fakes):
    ds = fakes.make_scores(4, 0.0)
    vals, note = encoders.surface_values(ds, "noise_normalized")
    assert note == "" and set(vals) == {"lh", "rh"}
    nn = ds["score"].sel(metric="noise_normalized").values
    for h in ("lh", "rh"):
        sel = ds["hemisphere"].values == h
        np.testing.assert_array_equal(vals[h][ds["fsaverage_index"].values[sel]], nn[sel])
        assert np.isfinite(vals[h]).sum() == np.isfinite(nn[sel]).sum()  # the rest is NaN


def test_surface_values_without_index_say_why(fakes):
    ds = fakes.make_scores(4, 0.0).drop_vars("fsaverage_index")
    vals, note = encoders.surface_values(ds)
    assert vals == {} and "fsaverage_index" in note


def test_surface_values_from_a_finer_mesh_use_its_fsaverage5_vertices(fakes):
    ds = fakes.make_scores(4, 0.0)
    ds = ds.assign_coords(fsaverage_index=ds["fsaverage_index"] * 16)  # as if on fsaverage7
    ds.attrs["fsaverage_mesh"] = "fsaverage"
    vals, _ = encoders.surface_values(ds)
    idx, nn = ds["fsaverage_index"].values, ds["score"].sel(metric="noise_normalized").values
    keep = (ds["hemisphere"].values == "lh") & (idx < 10242)
    np.testing.assert_array_equal(vals["lh"][idx[keep]], nn[keep])


def test_surface_colour_range_matches_the_scores(fakes):
    ds = fakes.make_scores(5, 0.0)
    vals, _ = encoders.surface_values(ds, "noise_normalized")
    fig = encoders.plot_surface(vals, views=("lateral", "ventral"))
    bars = [ax for ax in fig.axes if ax.get_gid() == "surface-colorbar"]
    assert len(bars) == 1  # one colour bar for all panels
    nn = ds["score"].sel(metric="noise_normalized").values
    for ax in bars:
        (mesh,) = [c for c in ax.collections if c.norm is not None and c.norm.vmax is not None]
        assert mesh.norm.vmin == pytest.approx(np.nanmin(nn))
        assert mesh.norm.vmax == pytest.approx(np.nanmax(nn))
    # the surface polygons are coloured (not all background grey): scattered vertices show up
    surf = _by_gid(fig, "surface:lh:lateral")
    (coll,) = surf.values()
    fc = coll.get_facecolor()
    assert (np.ptp(fc[:, :3], axis=1) > 0.05).sum() > 50  # coloured (non-grey) faces


def test_attention_maps_are_the_stored_maps(fakes):
    att, peaks = fakes.make_attention()
    fig = encoders.plot_attention(att)
    maps = _by_gid(fig, "attention:")
    qnames = list(att["query"].values)
    assert len(maps) == 3 * 4
    for (i, q), (y, x) in peaks.items():
        im = maps[f"attention:{qnames[q]}:img{i:03d}"]
        arr = np.asarray(im.get_array())
        assert arr.shape == (fakes.GRID, fakes.GRID)
        np.testing.assert_allclose(arr, att["attention"].values[i, q])
        assert np.unravel_index(np.argmax(arr), arr.shape) == (y, x)


def test_attention_flat_tokens_with_cls_are_reshaped(fakes):
    att, peaks = fakes.make_attention()
    a = att["attention"].values.reshape(3, 4, fakes.GRID * fakes.GRID)
    a = np.concatenate([np.zeros((3, 4, 1)), a], axis=2)  # a CLS token first
    flat = att.drop_vars("attention").assign(attention=(("image", "query", "token"), a))
    arr = encoders._attention_array(flat)
    np.testing.assert_allclose(arr, att["attention"].values)


def test_choose_queries_prefers_named_left_hemisphere_rois():
    names = ["rh:FFA-1", "lh:FFA-1", "lh:V1v", "lh:x"]
    picked = encoders.choose_queries(names, k=3)
    assert picked[:2] == [2, 1] and len(picked) == 3


def test_training_curves_are_the_history():
    import pandas as pd

    h = pd.DataFrame({"epoch": [0, 1, 2], "train_loss": [1.0, 0.5, 0.25],
                      "val_mean_r": [0.1, 0.2, 0.3]})
    fig = encoders.plot_training({"transformer": h})
    lines = _by_gid(fig, "curve:")
    assert set(lines) == {"curve:transformer:train_loss", "curve:transformer:val_mean_r"}
    np.testing.assert_allclose(lines["curve:transformer:val_mean_r"].get_ydata(), [0.1, 0.2, 0.3])


def test_scale_plot_has_one_point_per_level_and_the_prediction(fakes):
    ds = fakes.make_scale()
    fig = psychophysics.plot_scale(ds)
    pts = _by_gid(fig, "scale-estimate")["scale-estimate"]
    assert len(pts.get_xdata()) == fakes.N_LEVELS
    np.testing.assert_allclose(pts.get_xdata(), ds["stimulus"].values)
    est = ds["scale"].sel(stat="estimate").values
    np.testing.assert_allclose(pts.get_ydata(), est / est[-1])  # normalised: psi_1 = 0, psi_p = 1
    pred = _by_gid(fig, "scale-predicted")["scale-predicted"].get_ydata()
    assert pred[0] == pytest.approx(0) and pred[-1] == pytest.approx(1)
    # the SVG written for papers holds the same points
    svg = render(fig, "scale", "").svg.decode()
    group = re.search(r'<g id="scale-estimate">(.*?)</g>', svg, re.S).group(1)
    assert len(re.findall(r"<use ", group)) == fakes.N_LEVELS


def test_scale_arrays_read_separate_variables(fakes):
    ds = fakes.make_scale(7)
    sc = ds["scale"]
    flat = ds.drop_vars(["scale", "scale_normalized", "sigma", "stat"]).assign(
        estimate=sc.sel(stat="estimate", drop=True), lower=sc.sel(stat="lower", drop=True),
        upper=sc.sel(stat="upper", drop=True))
    a = psychophysics.scale_arrays(flat)
    np.testing.assert_allclose(a["upper"], sc.sel(stat="upper").values)
    assert len(a["estimate"]) == 7


def test_diagnostics_show_runs_test_and_design_counts(fakes):
    ds = fakes.make_scale()
    fig = psychophysics.plot_diagnostics(ds)
    texts = " ".join(t.get_text() for ax in fig.axes for t in ax.texts)
    assert "p = 0.42" in texts and "runs observed: 120" in texts and "area_match: 0.93" in texts
    counts = np.asarray(_by_gid(fig, "design-counts")["design-counts"].get_array())
    assert counts.sum() == ds.sizes["trial"]
    S = ds["S"].values
    g1, g2 = S[:, 1] - S[:, 0], S[:, 2] - S[:, 1]
    assert counts[1, 2] == np.sum((g1 == 2) & (g2 == 1))
    res = _by_gid(fig, "envelope-residuals")["envelope-residuals"]
    np.testing.assert_allclose(res.get_xdata(), np.sort(ds["deviance_residual"].values))
    band = [c for c in fig.axes[0].collections if c.get_label() == "simulated 95% envelope"]
    assert len(band) == 1


def test_render_gives_png_and_svg():
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 1))
    ax.plot([0, 1])
    r = render(fig, "My Fig/1", "cap")
    assert r.name == "my-fig-1" and r.png[:4] == b"\x89PNG" and r.svg.lstrip().startswith(b"<?xml")
    from PIL import Image

    assert Image.open(io.BytesIO(r.png)).size == r.size_px


def test_real_scale_fit_is_drawn(tmp_path):
    """A scale.nc written by ``brainattn scale fit`` itself (bootstrap, diagnostics, prediction)."""
    import xarray as xr

    from brainattn.cli import main
    from brainattn.report.discovery import discover

    csv = tmp_path / "trials.csv"
    assert main(["scale", "simulate", "--out", str(csv), "--levels", "9", "--design", "triad",
                 "--repeats", "2", "--max-gap", "3", "--scale", "log", "--seed", "1"]) == 0
    run = tmp_path / "psy"
    assert main(["scale", "fit", str(csv), "--out", str(run), "--bootstrap", "40", "--diagnostics", "40",
                 "--predict", "mode-frequency", "--stimulus", "1,1.5,2,2.5,3,3.5,4,4.5,5"]) == 0
    sec = psychophysics.build_section(discover(run).runs, svg=False)
    assert [f.name for f in sec.figures] == ["psychophysics-scale", "psychophysics-fit"]
    with xr.open_dataset(run / "scale.nc", engine="h5netcdf") as ds:
        ds = ds.load()
    fig = psychophysics.plot_scale(ds)
    pts = _by_gid(fig, "scale-estimate")["scale-estimate"]
    np.testing.assert_allclose(pts.get_xdata(), [1, 1.5, 2, 2.5, 3, 3.5, 4, 4.5, 5])
    np.testing.assert_allclose(pts.get_ydata(), ds["scale_normalized"].sel(stat="estimate"))
    np.testing.assert_allclose(_by_gid(fig, "scale-predicted")["scale-predicted"].get_ydata(),
                               ds["predicted_scale"].values, atol=1e-12)
    fig = psychophysics.plot_diagnostics(ds)
    texts = " ".join(t.get_text() for ax in fig.axes for t in ax.texts)
    assert f"p = {ds.attrs['runs_p']:.3g}" in texts
    counts = np.asarray(_by_gid(fig, "design-counts")["design-counts"].get_array())
    assert counts.sum() == ds.sizes["trial"]
