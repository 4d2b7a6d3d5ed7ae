"""The report on the real synthetic cortex: data section, and encoder files matched to it."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from brainattn.report import dataset, encoders
from brainattn.report.discovery import Run


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from brainattn.data import open_algonauts
    from brainattn.data.synth import generate

    root = tmp_path_factory.mktemp("demo") / "data"
    generate(root, subjects=1, images=24, image_size=32, test_images=4, n_jobs=1)
    return root, open_algonauts(root, "subj01")


def test_data_section_tables_and_noise_ceiling_map(synth):
    root, ds = synth
    sec = dataset.build_section([Run("data", root, "data")], svg=False)
    assert sec.missing == []
    (cap0, subjects), (cap1, rois) = sec.tables
    row = subjects.iloc[0]
    hemi = ds["hemisphere"].values
    assert row["images (train)"] == ds.sizes["image"] == 24
    assert row["vertices lh"] == (hemi == "lh").sum() and row["vertices rh"] == (hemi == "rh").sum()
    assert row["noise ceiling median (%)"] == pytest.approx(float(np.nanmedian(ds["noise_ceiling"].values)))
    ffa = rois[(rois.family == "floc-faces") & (rois.roi == "FFA-1")]["vertices"].item()
    assert ffa == (ds["roi_floc-faces"].values == "FFA-1").sum() > 0
    assert [f.name for f in sec.figures] == ["data-images-subj01", "data-noise-ceiling-subj01"]
    assert all(f.size_px[0] > 100 for f in sec.figures)


def test_scores_without_fsaverage_index_take_it_from_the_data(synth):
    root, ds = synth
    keep = np.arange(0, ds.sizes["vertex"], 3)  # scores may cover a subset, in another order
    keep = keep[::-1]
    scores = xr.Dataset(
        {"score": (("vertex", "metric"), np.random.default_rng(0).uniform(0, 1, (keep.size, 3)))},
        coords={"vertex": np.arange(keep.size), "metric": ["pearson_r", "r2", "noise_normalized"],
                "hemisphere": ("vertex", ds["hemisphere"].values[keep]),
                "hemi_vertex": ("vertex", ds["hemi_vertex"].values[keep])})
    got = encoders.add_fsaverage_index(scores, ds)
    np.testing.assert_array_equal(got["fsaverage_index"].values, ds["fsaverage_index"].values[keep])
    vals, note = encoders.surface_values(got, "pearson_r")
    assert note == ""
    lh = ds["hemisphere"].values[keep] == "lh"
    np.testing.assert_array_equal(vals["lh"][ds["fsaverage_index"].values[keep][lh]],
                                  got["score"].sel(metric="pearson_r").values[lh])


def test_attention_images_come_from_the_data(synth, fakes, tmp_path):
    root, ds = synth
    att, _ = fakes.make_attention()
    att = att.drop_vars("pixels")
    ids = ds["image_id"].values[[5, 2, 9]]
    att = att.assign_coords(image_id=("image", ids), image=("image", [5, 2, 9]))
    run = root.parent / "encoders" / "transformer"  # the demo layout: OUT/data beside it
    run.mkdir(parents=True, exist_ok=True)
    data = encoders.run_dataset(run)
    assert data is not None and data.sizes["image"] == 24
    got = encoders.attach_images(att, data)
    assert list(got["image_path"].values) == list(ds["image_path"].values[[5, 2, 9]])
    imgs = encoders._images_of(got, run)
    assert all(im is not None and im.shape == (32, 32, 3) for im in imgs)


def test_attention_check_against_the_synthetic_ground_truth(synth):
    from brainattn.data.synth import load_ground_truth

    root, ds = synth
    gt = load_ground_truth(root, "subj01")
    cats = gt["object_category"].values.astype(str)
    boxes = gt["object_box"].values
    with_face = [i for i in range(ds.sizes["image"]) if (cats[i] == "faces").any()][:4]
    assert with_face, "the synthetic set should hold faces"
    grid = 8
    att = np.full((len(with_face), 2, grid, grid), 1e-3)
    for k, i in enumerate(with_face):
        x0, y0, x1, y1 = boxes[i][cats[i] == "faces"][0]
        att[k, 0, int((y0 + y1) / 2 * grid), int((x0 + x1) / 2 * grid)] = 1.0  # inside the face
        att[k, 1, 0, 0] = 1.0  # the EBA query looks at the corner
    att = xr.Dataset({"attention": (("image", "query", "row", "col"), att)},
                     coords={"image": with_face, "query": ["lh:FFA-1", "lh:EBA"],
                             "query_roi": ("query", ["FFA-1", "EBA"])})
    scores = xr.Dataset(coords={"vertex": np.arange(ds.sizes["vertex"]),
                                **{k: ("vertex", ds[k].values) for k in ds.coords
                                   if k.startswith("roi_")}})
    table = encoders.attention_check(att, scores, ds).set_index("category")
    assert table.loc["faces", "attention peak inside the object"] == 1.0
    assert table.loc["faces", "pairs"] == len(with_face)
    assert encoders.attention_check(att, scores, None) is None  # no data set: no check
