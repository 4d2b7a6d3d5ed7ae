"""The synthetic visual cortex: determinism, layout, ground truth recovered from the betas."""

import numpy as np
import pytest
from PIL import Image

from brainattn.cli import main
from brainattn.data import open_algonauts, synth
from brainattn.data.synth_images import CATEGORIES, contrast_energy, render_image
from brainattn.errors import ConfigError, OutputExistsError

TINY = dict(subjects=2, images=12, image_size=48, test_images=4, n_ev_roi=12, n_category_roi=8,
            n_unlabelled=20)


def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_byte_identical_files(tmp_path):
    a = synth.generate(tmp_path / "a", seed=5, **TINY)
    b = synth.generate(tmp_path / "b", seed=5, n_jobs=1, **TINY)
    fa, fb = _files(a), _files(b)
    assert fa.keys() == fb.keys() and len(fa) > 40
    assert all(fa[k] == fb[k] for k in fa), [str(k) for k in fa if fa[k] != fb[k]]
    c = synth.generate(tmp_path / "c", seed=6, **{**TINY, "subjects": 1})
    betas = "subj01/training_split/training_fmri/lh_training_fmri.npy"
    assert (c / betas).read_bytes() != (a / betas).read_bytes()


def test_generate_refuses_nonempty_and_bad_args(tmp_path):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "x").write_text("keep me")
    with pytest.raises(OutputExistsError):
        synth.generate(tmp_path / "o", **TINY)
    assert (tmp_path / "o" / "x").read_text() == "keep me"
    with pytest.raises(ConfigError, match="images: expected an integer >= 8"):
        synth.generate(tmp_path / "p", subjects=1, images=3)
    assert not (tmp_path / "p").exists()


def test_layout_and_ground_truth_consistent(synth_small):
    ds = open_algonauts(synth_small, "subj01")
    gt = synth.load_ground_truth(synth_small, "subj01")
    assert ds.attrs["roi_families"] == sorted(synth.ROI_FAMILIES)
    np.testing.assert_array_equal(ds["image_id"].values, gt["image_id"].values)
    np.testing.assert_array_equal(ds["fsaverage_index"].values, gt["fsaverage_index"].values)
    assert ds.attrs["fsaverage_mesh"] == "fsaverage5"
    assert len(ds.attrs["test_image_paths"]) == gt.sizes["test_image"] == 4
    # every ROI of the Algonauts families is present in both hemispheres
    for fam, rois in synth.ROI_FAMILIES.items():
        for h in ("lh", "rh"):
            names = set(ds[f"roi_{fam}"].values[ds["hemisphere"].values == h])
            assert set(rois) <= names, (fam, h)
    # roi coords agree with the ground truth's roi per vertex
    roi_gt = gt["roi"].values
    for fam in synth.ROI_FAMILIES:
        lab = ds[f"roi_{fam}"].values
        np.testing.assert_array_equal(lab[lab != "Unknown"], roi_gt[lab != "Unknown"])
    # retinotopy: lh sees the right half, ventral ROIs the upper field, V1 pRFs smaller than hV4
    kind = gt["vertex_kind"].values
    hemi = gt["hemisphere"].values
    x, y, s = gt["prf_x"].values, gt["prf_y"].values, gt["prf_size"].values
    ev = kind == "prf"
    assert np.all(x[ev & (hemi == "lh")] >= 0.49) and np.all(x[ev & (hemi == "rh")] <= 0.51)
    assert np.mean(y[np.isin(roi_gt, ["V1v", "V2v", "V3v"])] < 0.5) > 0.9
    assert np.mean(y[np.isin(roi_gt, ["V1d", "V2d", "V3d"])] > 0.5) > 0.9
    assert np.median(s[roi_gt == "V1v"]) < np.median(s[roi_gt == "hV4"])
    assert np.isnan(x[~ev]).all() and not np.isnan(x[ev]).any()
    # objects: boxes inside the image and around the centres; counts agree
    box = gt["object_box"].values
    filled = gt["object_category"].values != "none"
    assert (filled.sum(axis=1) == gt["n_objects"].values).all()
    assert np.all((box[filled] >= 0) & (box[filled] <= 1))
    cx, cy = gt["object_x"].values[filled], gt["object_y"].values[filled]
    assert np.all((box[filled][:, 0] <= cx) & (cx <= box[filled][:, 2]))
    assert np.all((box[filled][:, 1] <= cy) & (cy <= box[filled][:, 3]))
    assert (gt["category_count"].values.sum(axis=1) == gt["n_objects"].values).all()
    masks = synth.object_masks(gt, grid=8)
    present = gt["category_count"].values > 0
    assert np.all(masks.values.sum(axis=(2, 3))[present] > 0)
    assert np.all(masks.values.sum(axis=(2, 3))[~present] == 0)


def test_ev_vertices_follow_prf_contrast_energy(synth_small):
    ds = open_algonauts(synth_small, "subj01")
    gt = synth.load_ground_truth(synth_small, "subj01")
    energy = np.stack([contrast_energy(np.asarray(Image.open(p).convert("RGB")))
                       for p in ds["image_path"].values])  # (n, g, g)
    g = energy.shape[1]
    c = (np.arange(g) + 0.5) / g
    ev = np.flatnonzero(gt["vertex_kind"].values == "prf")
    betas = ds["betas"].values[:, ev]

    def prf_energy(px, py, ps):
        w = np.exp(-((c[None, :] - py) ** 2) / (2 * ps**2))[:, :, None] * np.exp(
            -((c[None, :] - px) ** 2) / (2 * ps**2))[:, None, :]
        return np.sqrt(np.einsum("nyx,yx->n", energy, w[0] / w[0].sum()))

    r_own, r_far = [], []
    for j, v in enumerate(ev):
        px, py, ps = (float(gt[k].values[v]) for k in ("prf_x", "prf_y", "prf_size"))
        r_own.append(np.corrcoef(prf_energy(px, py, ps), betas[:, j])[0, 1])
        r_far.append(np.corrcoef(prf_energy(1 - px, 1 - py, ps), betas[:, j])[0, 1])
    # NC ~ 45-80 % -> r up to ~0.7-0.9 for the true pRF; the mirrored pRF explains much less
    assert np.median(r_own) > 0.5
    assert np.median(r_own) > np.median(r_far) + 0.2


def test_category_rois_respond_to_their_category(synth_small):
    ds = open_algonauts(synth_small, "subj02")
    gt = synth.load_ground_truth(synth_small, "subj02")
    betas = ds["betas"].values
    count = gt["category_count"].values
    for fam, cat in synth.FAMILY_CATEGORY.items():
        m = ds[f"roi_{fam}"].values != "Unknown"
        r = betas[:, m].mean(axis=1)
        k = CATEGORIES.index(cat)
        has = count[:, k] > 0
        others = (count.sum(axis=1) > 0) & ~has  # images with objects, none of this category
        # position-tolerant: its category anywhere drives it, others barely
        assert r[has].mean() - r[others].mean() > 0.8, fam
    # noise ceiling from the repeats: realistic, and tracks the true one
    nc, nc_true = ds["noise_ceiling"].values, gt["noise_ceiling"].values
    lab = gt["vertex_kind"].values != "unlabelled"
    assert 40 <= np.median(nc[lab]) <= 80
    assert np.median(nc[~lab]) < np.median(nc[lab])
    assert np.all(nc <= 100) and np.corrcoef(nc, nc_true)[0, 1] > 0.5


def test_images_are_procedural_and_categories_distinct():
    img, objs = render_image(np.random.SeedSequence([1, 2]), 224)
    assert img.shape == (224, 224, 3) and img.dtype == np.uint8
    # each category drawn alone on the same background differs from the background where drawn
    for cat in CATEGORIES:
        for seed in range(200):
            _, o = render_image(seed, 64)
            if [x.category for x in o] == [cat]:
                break
        else:
            pytest.fail(f"no single-{cat} image in 200 seeds")
    assert all(o.category in CATEGORIES for o in objs)


def test_cli_synth_and_info(tmp_path, capsys):
    out = tmp_path / "cli"
    rc = main(["data", "synth", "--out", str(out), "--subjects", "1", "--images", "8",
               "--image-size", "32"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "subj01" in text and "FFA-1" in text and "NC median" in text
    assert main(["data", "info", str(out / "subj01")]) == 0
    row = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("subj01")][0].split()
    assert row[1:3] == ["8", "4"]  # 8 training, 4 test images
    rc = main(["data", "synth", "--out", str(out), "--images", "8"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--overwrite" in err[0]


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(synth, "_write_subject", boom)
    with pytest.raises(KeyboardInterrupt):
        synth.generate(tmp_path / "out", **TINY)
    assert list(tmp_path.iterdir()) == []  # neither the folder nor its temporary sibling


def test_subject_folder_as_root(synth_small):
    a = open_algonauts(synth_small / "subj02", "subj02")
    assert a.sizes["image"] == 120 and a.attrs["subject"] == "subj02"
