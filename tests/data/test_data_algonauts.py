"""Algonauts-layout reader/writer: exact round trip, lazy memory-mapped betas, bad input."""

import os
import pickle
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from brainattn.cli import main
from brainattn.data import open_algonauts, write_algonauts
from brainattn.data._lazy import ConcatBetasArray, count_nonfinite, lazy_betas
from brainattn.errors import DataError, OutputExistsError, ShapeError, UnsafeFileError


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _strip(ds: xr.Dataset) -> xr.Dataset:
    """Drop what legitimately differs between two copies: where the files lie."""
    ds = ds.drop_vars("image_path").load()
    ds.attrs = {k: v for k, v in ds.attrs.items() if k not in ("root", "test_image_paths")}
    return ds


def test_roundtrip_exact(synth_small, tmp_path):
    a = open_algonauts(synth_small, "subj02")
    write_algonauts(a, tmp_path / "copy")
    b = open_algonauts(tmp_path / "copy", "subj02")
    xr.testing.assert_identical(_strip(a), _strip(b))
    assert a["betas"].dtype == np.float32 and b["betas"].dtype == np.float32
    assert np.array_equal(a["betas"].values, b["betas"].values)
    assert [Path(p).name for p in a.attrs["test_image_paths"]] == [
        Path(p).name for p in b.attrs["test_image_paths"]
    ]
    for fam in a.attrs["roi_families"]:
        assert a[f"roi_{fam}"].attrs["mapping"] == b[f"roi_{fam}"].attrs["mapping"]
    # files: betas, labels, images byte-identical to the generator's
    src, dst = synth_small / "subj02", tmp_path / "copy" / "subj02"
    for rel in ["training_split/training_fmri/lh_training_fmri.npy",
                "training_split/training_fmri/rh_repeats_fmri.npy",
                "roi_masks/rh.floc-faces_challenge_space.npy",
                "roi_masks/lh.all-vertices_fsaverage_space.npy"]:
        assert (src / rel).read_bytes() == (dst / rel).read_bytes(), rel
    for p in (src / "training_split" / "training_images").iterdir():
        assert p.read_bytes() == (dst / "training_split" / "training_images" / p.name).read_bytes()
    # the written noise ceiling is the one computed from the repeats
    assert np.array_equal(np.load(dst / "training_split/training_fmri/lh_noise_ceiling.npy"),
                          a["noise_ceiling"].values[a["hemisphere"].values == "lh"])


def test_open_is_lazy_and_fast_at_nsd_size(tmp_path):
    """9,841 images x 39,548 vertices float32 (sparse files) open in < 1 s without reading."""
    sub = tmp_path / "subj01"
    fmri = sub / "training_split" / "training_fmri"
    imgs = sub / "training_split" / "training_images"
    fmri.mkdir(parents=True)
    imgs.mkdir(parents=True)
    n = 9841
    for h, nv in (("lh", 19004), ("rh", 20544)):
        m = np.lib.format.open_memmap(fmri / f"{h}_training_fmri.npy", mode="w+",
                                      dtype=np.float32, shape=(n, nv))
        if h == "rh":
            m[5, 7] = 2.5
            m[n - 1, nv - 1] = -1.0
        m.flush()
        del m
    for i in range(n):
        (imgs / f"train-{i + 1:04d}_nsd-{i:05d}.png").touch()
    t0 = time.perf_counter()
    ds = open_algonauts(tmp_path, "subj01")
    dt = time.perf_counter() - t0
    assert dt < 1.0, f"open took {dt:.2f} s"
    assert ds["betas"].shape == (9841, 39548) and ds["betas"].dtype == np.float32
    assert isinstance(ds["betas"].variable._data, xr.core.indexing.LazilyIndexedArray)
    # a lazy selection reads only what it needs, across the lh/rh border
    sel = ds["betas"].isel(image=[5, n - 1], vertex=[19004 + 7, 3, 39547])
    assert isinstance(sel.variable._data, xr.core.indexing.LazilyIndexedArray)
    np.testing.assert_array_equal(sel.values, [[2.5, 0, 0], [0, 0, -1.0]])
    assert (ds["hemisphere"].values == "lh").sum() == 19004
    assert ds["hemi_vertex"].values[19004] == 0


@pytest.mark.parametrize(
    "key",
    [
        (slice(None), slice(None)),
        (2, slice(None)),
        (slice(1, 5), 7),
        ([4, 0, 2], [9, 1, 8, 3]),
        (slice(None, None, 2), slice(3, 11)),
        (np.array([1, 1, 3]), np.array([10, 0, 5, 5])),
    ],
)
def test_lazy_concat_indexing_matches_numpy(key):
    rng = np.random.default_rng(0)
    lh = rng.standard_normal((6, 5)).astype(np.float32)
    rh = rng.standard_normal((6, 7)).astype(np.float32)
    ref = np.concatenate([lh, rh], axis=1)
    var = xr.Variable(("image", "vertex"), lazy_betas([lh, rh], ["lh", "rh"]))
    np.testing.assert_array_equal(var[key].values, ref[np.ix_(*[np.arange(n)[k] if not
                                  isinstance(k, (int, np.integer)) else [k] for k, n in
                                  zip(key, ref.shape, strict=True)])].reshape(var[key].shape))


def test_count_nonfinite_chunks():
    a = np.zeros((50, 6), dtype=np.float32)
    a[3, 1] = np.nan
    a[40, 1] = np.inf
    a[10, 5] = -np.inf
    a[11, 2] = 3e38  # large but finite: the float64 screen must not flag it
    a[12, 2] = 3e38
    np.testing.assert_array_equal(count_nonfinite(a, chunk_bytes=64), [0, 2, 0, 0, 0, 1])


def test_concat_array_rejects_different_image_counts():
    with pytest.raises(DataError, match="different image counts"):
        ConcatBetasArray([np.zeros((3, 2)), np.zeros((4, 2))], ["a.npy", "b.npy"])


# ---------------------------------------------------------------------------------------------
# bad input


def test_missing_things(synth_small, tmp_path):
    with pytest.raises(DataError, match="no such folder"):
        open_algonauts(tmp_path / "nope")
    with pytest.raises(DataError, match="no such subject folder.*subj01, subj02"):
        open_algonauts(synth_small, "subj09")
    root = _copy(synth_small, tmp_path / "c")
    (root / "subj01/training_split/training_fmri/rh_training_fmri.npy").unlink()
    with pytest.raises(DataError, match=r"rh_training_fmri\.npy: missing betas file"):
        open_algonauts(root)
    shutil.rmtree(root / "subj02/training_split/training_images")
    with pytest.raises(DataError, match="training_images: missing training images folder"):
        open_algonauts(root, "subj02")


def test_image_count_disagrees(synth_small, tmp_path):
    root = _copy(synth_small, tmp_path / "c")
    first = sorted((root / "subj01/training_split/training_images").iterdir())[0]
    first.unlink()
    with pytest.raises(ShapeError, match="betas have 120 images .* holds 119 images"):
        open_algonauts(root)


def test_nonfinite_reported_and_dropped(synth_small, tmp_path):
    root = _copy(synth_small, tmp_path / "c")
    p = root / "subj01/training_split/training_fmri/lh_training_fmri.npy"
    a = np.load(p)
    a[3, 5] = np.nan
    a[7, 5] = np.inf
    a[1, 9] = -np.inf
    np.save(p, a)
    ds = open_algonauts(root)  # opening reads nothing ...
    with pytest.raises(DataError, match=r"lh_training_fmri\.npy: 3 NaN/Inf values in 2 vertices"):
        _ = ds["betas"].values  # ... reading does, and refuses
    assert np.isfinite(ds["betas"].isel(vertex=slice(10, None)).values).all()  # others read fine
    clean = open_algonauts(root, drop_nonfinite=True)
    assert clean.sizes["vertex"] == ds.sizes["vertex"] - 2
    assert clean.attrs["n_dropped_nonfinite"] == 2 and clean.attrs["n_nonfinite_values"] == 3
    assert np.isfinite(clean["betas"].values).all()
    assert 5 not in clean["hemi_vertex"].values[clean["hemisphere"].values == "lh"]


def test_nonfinite_cli_info(synth_small, tmp_path, capsys):
    root = _copy(synth_small, tmp_path / "c")
    p = root / "subj02/training_split/training_fmri/rh_training_fmri.npy"
    a = np.load(p)
    a[0, :4] = np.nan
    np.save(p, a)
    assert main(["data", "info", str(root), "--check-finite"]) == 0
    out = capsys.readouterr().out
    row = [ln for ln in out.splitlines() if ln.startswith("subj02")][0]
    assert row.split()[-1] == "4"


def test_roi_mask_length_disagrees(synth_small, tmp_path):
    root = _copy(synth_small, tmp_path / "c")
    p = root / "subj01/roi_masks/rh.floc-faces_challenge_space.npy"
    np.save(p, np.load(p)[:-3])
    with pytest.raises(ShapeError, match=r"rh\.floc-faces_challenge_space\.npy: ROI mask has \d+ "
                       r"vertices but the betas of this hemisphere have \d+"):
        open_algonauts(root)


def test_empty_roi(synth_small, tmp_path, capsys):
    root = _copy(synth_small, tmp_path / "c")
    rd = root / "subj01/roi_masks"
    for h in ("lh", "rh"):
        p = rd / f"{h}.floc-places_challenge_space.npy"
        lab = np.load(p)
        lab[lab == 3] = 0  # RSC
        np.save(p, lab)
    with pytest.raises(DataError, match="ROI floc-places/RSC has no vertex in either hemisphere"):
        open_algonauts(root)
    ds = open_algonauts(root, allow_empty_rois=True)
    assert ds.attrs["empty_rois"] == ["floc-places/RSC"]
    assert main(["data", "info", str(root)]) == 0
    assert "subj01: empty ROIs (no vertex): floc-places/RSC" in capsys.readouterr().out
    for h in ("lh", "rh"):
        np.save(rd / f"{h}.floc-words_challenge_space.npy",
                np.zeros_like(np.load(rd / f"{h}.floc-words_challenge_space.npy")))
    with pytest.raises(DataError, match="family 'floc-words' labels no vertex"):
        open_algonauts(root, allow_empty_rois=True)


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/brainattn_pwned_by_test",))


def test_mapping_refuses_code_and_non_dicts(synth_small, tmp_path):
    root = _copy(synth_small, tmp_path / "c")
    mp = root / "subj01/roi_masks/mapping_floc-faces.npy"
    marker = Path("/tmp/brainattn_pwned_by_test")
    marker.unlink(missing_ok=True)
    mp.write_bytes(pickle.dumps({0: "Unknown", 1: _Evil()}))
    with pytest.raises(UnsafeFileError, match=r"mapping_floc-faces\.npy: refuses to load 'posix\.system'"):
        open_algonauts(root)
    assert not marker.exists()
    np.save(mp, np.array([1, 2, 3], dtype=object), allow_pickle=True)  # a list, not a dict
    with pytest.raises(UnsafeFileError, match="mapping_floc-faces.npy"):
        open_algonauts(root)
    np.save(mp, {0: "Unknown", "x": "OFA"}, allow_pickle=True)
    with pytest.raises(DataError, match="mapping keys must be integer labels"):
        open_algonauts(root)


def test_labels_not_in_mapping(synth_small, tmp_path):
    root = _copy(synth_small, tmp_path / "c")
    p = root / "subj01/roi_masks/lh.floc-bodies_challenge_space.npy"
    lab = np.load(p)
    lab[0] = 17
    np.save(p, lab)
    with pytest.raises(DataError, match=r"labels \[17\] are not in mapping_floc-bodies\.npy"):
        open_algonauts(root)


def test_writer_refuses_existing_and_leaves_nothing(synth_small, tmp_path):
    ds = open_algonauts(synth_small, "subj01")
    with pytest.raises(OutputExistsError, match="exists and is not empty.*--overwrite"):
        write_algonauts(ds, synth_small)  # subj01 is there
    # a failure midway (an image file vanished) leaves neither the subject nor temp folders
    bad = ds.copy()
    paths = bad["image_path"].values.copy()
    paths[-1] = str(tmp_path / "missing.png")
    bad = bad.assign_coords(image_path=("image", paths))
    with pytest.raises(DataError, match="missing.png: image file missing"):
        write_algonauts(bad, tmp_path / "w")
    assert not (tmp_path / "w" / "subj01").exists()
    ok = write_algonauts(ds, tmp_path / "w2")
    (ok / "junk").write_text("x")
    write_algonauts(ds, tmp_path / "w2", overwrite=True)
    assert not (ok / "junk").exists()
    assert [p.name for p in (tmp_path / "w2").iterdir()] == ["subj01"]


def test_cli_error_is_one_line(tmp_path, capsys):
    rc = main(["data", "info", str(tmp_path / "absent")])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "absent" in err[0]


def test_dataset_pickles_by_file_name(synth_small):
    ds = open_algonauts(synth_small, "subj01")
    back = pickle.loads(pickle.dumps(ds))
    parts = back["betas"].variable._data.array.parts  # reopened memory maps, not copies
    assert all(isinstance(p, np.memmap) for p in parts)
    np.testing.assert_array_equal(back["betas"].values, ds["betas"].values)


def test_write_from_arrays_roundtrip(tmp_path):
    rng = np.random.default_rng(3)
    imgs = []
    for i in range(5):
        p = tmp_path / "src" / f"img-{i:02d}.png"
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(bytes([i]) * 10)
        imgs.append(p)
    lh = rng.standard_normal((5, 4)).astype(np.float32)
    rh = rng.standard_normal((5, 3)).astype(np.float32)
    rois = {"floc-faces": (np.array([0, 1, 1, 2]), np.array([2, 0, 1]),
                           {0: "Unknown", 1: "OFA", 2: "FFA-1", 3: "unused"})}
    nc = np.linspace(10, 70, 7)
    write_algonauts(dict(lh_betas=lh, rh_betas=rh, image_paths=imgs, rois=rois, noise_ceiling=nc),
                    tmp_path / "out", "subj03")
    ds = open_algonauts(tmp_path / "out", "subj03", allow_empty_rois=True)  # "unused" is empty
    np.testing.assert_array_equal(ds["betas"].values, np.concatenate([lh, rh], axis=1))
    assert list(ds["roi_floc-faces"].values) == ["Unknown", "OFA", "OFA", "FFA-1", "FFA-1",
                                                 "Unknown", "OFA"]
    assert ds["roi_floc-faces"].attrs["mapping"][3] == "unused"
    np.testing.assert_allclose(ds["noise_ceiling"].values, nc.astype(np.float32))
    assert list(ds["image_id"].values) == [f"img-{i:02d}" for i in range(5)]
    raw = np.load(tmp_path / "out/subj03/roi_masks/rh.floc-faces_challenge_space.npy")
    np.testing.assert_array_equal(raw, [2, 0, 1])
    with pytest.raises(ShapeError, match="image_paths: 4 paths for 5 betas rows"):
        write_algonauts(dict(lh_betas=lh, rh_betas=rh, image_paths=imgs[:4]), tmp_path / "x")
