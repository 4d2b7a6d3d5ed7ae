"""Generic readers on small NIfTI / GIfTI / MGH / .npy files written here with nibabel."""

import nibabel as nib
import numpy as np
import pytest

from brainattn.data import load_betas, load_labels
from brainattn.errors import ConfigError, DataError, ShapeError

RNG = np.random.default_rng(0)


@pytest.fixture
def volume(tmp_path):
    data = RNG.standard_normal((5, 4, 3, 6)).astype(np.float32)  # x, y, z, image
    mask = np.zeros((5, 4, 3), dtype=np.uint8)
    mask[1:4, 1:3, :2] = 1
    mask[0, 0, 2] = 1
    labels = np.zeros((5, 4, 3), dtype=np.int16)
    labels[1:4, 1:3, 0] = 2
    labels[0, 0, 2] = 5
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    paths = {}
    for name, arr in (("betas", data), ("mask", mask), ("labels", labels)):
        paths[name] = tmp_path / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(arr, aff), paths[name])
    return data, mask.astype(bool), labels, paths


def test_nifti_betas_and_labels(volume):
    data, mask, labels, p = volume
    b = load_betas(p["betas"], mask=p["mask"])
    assert b.shape == (6, mask.sum()) and b.dtype == np.float32
    np.testing.assert_allclose(b, data[mask].T, rtol=1e-6)  # voxel order: C order of the mask
    lab = load_labels(p["labels"], mask=p["mask"])
    np.testing.assert_array_equal(lab, labels[mask])
    np.testing.assert_allclose(b[:, lab == 5][:, 0], data[0, 0, 2], rtol=1e-6)
    assert load_labels(p["labels"]).shape == (60,)


def test_nifti_needs_a_matching_mask(volume, tmp_path):
    _, _, _, p = volume
    with pytest.raises(ConfigError, match="NIfTI volumes need a 3-D mask"):
        load_betas(p["betas"])
    other = tmp_path / "m2.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((4, 4, 3), np.uint8), np.diag([2.0, 2, 2, 1])), other)
    with pytest.raises(ShapeError, match=r"volume shape \(5, 4, 3\) differs from the mask's"):
        load_betas(p["betas"], mask=other)
    with pytest.raises(ShapeError, match="must be 4-D"):
        load_betas(p["mask"], mask=p["mask"])


def test_gifti_one_array_per_image(tmp_path):
    data = RNG.standard_normal((7, 40)).astype(np.float32)  # images, vertices
    img = nib.gifti.GiftiImage(darrays=[nib.gifti.GiftiDataArray(d) for d in data])
    path = tmp_path / "lh.betas.func.gii"
    nib.save(img, path)
    np.testing.assert_array_equal(load_betas(path), data)
    keep = np.arange(40) % 3 == 0
    np.testing.assert_array_equal(load_betas(path, mask=keep), data[:, keep])
    lab = (np.arange(40) % 4).astype(np.int32)
    lpath = tmp_path / "lh.rois.label.gii"
    nib.save(nib.gifti.GiftiImage(darrays=[nib.gifti.GiftiDataArray(lab)]), lpath)
    np.testing.assert_array_equal(load_labels(lpath), lab)
    np.testing.assert_array_equal(load_betas(path, mask=lpath), data[:, lab != 0])
    with pytest.raises(ShapeError, match="one map"):
        load_labels(path)


def test_gifti_single_2d_array(tmp_path):
    data = RNG.standard_normal((30, 5)).astype(np.float32)  # vertices, images
    path = tmp_path / "b.gii"
    nib.save(nib.gifti.GiftiImage(darrays=[nib.gifti.GiftiDataArray(data)]), path)
    np.testing.assert_array_equal(load_betas(path), data.T)


@pytest.mark.parametrize("suffix", [".mgh", ".mgz"])
def test_mgh(tmp_path, suffix):
    data = RNG.standard_normal((50, 1, 1, 4)).astype(np.float32)
    path = tmp_path / f"betas{suffix}"
    nib.save(nib.MGHImage(data, np.eye(4)), path)
    np.testing.assert_array_equal(load_betas(path), data[:, 0, 0, :].T)
    lab = np.repeat(np.arange(5), 10).astype(np.int32).reshape(50, 1, 1)
    lpath = tmp_path / f"labels{suffix}"
    nib.save(nib.MGHImage(lab, np.eye(4)), lpath)
    np.testing.assert_array_equal(load_labels(lpath), lab.ravel())
    with pytest.raises(ShapeError, match="mask: has 49 vertices but the data have 50"):
        load_betas(path, mask=np.ones(49))


def test_npy_and_bad_files(tmp_path):
    a = RNG.standard_normal((3, 8)).astype(np.float32)
    np.save(tmp_path / "b.npy", a)
    np.testing.assert_array_equal(load_betas(tmp_path / "b.npy"), a)
    np.save(tmp_path / "l.npy", np.array([0, 1, 1, 2.0, 0, 0, 0, 3]))
    np.testing.assert_array_equal(load_labels(tmp_path / "l.npy"), [0, 1, 1, 2, 0, 0, 0, 3])
    np.save(tmp_path / "lf.npy", np.array([0, 1.5]))
    with pytest.raises(DataError, match="labels must be integers"):
        load_labels(tmp_path / "lf.npy")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="obj.npy"):  # refused, never unpickled
        load_betas(tmp_path / "obj.npy")
    with pytest.raises(DataError, match="no such file"):
        load_betas(tmp_path / "absent.npy")
    (tmp_path / "x.txt").write_text("1 2 3")
    with pytest.raises(DataError, match="unknown file type"):
        load_betas(tmp_path / "x.txt")
    (tmp_path / "broken.nii.gz").write_bytes(b"not a nifti")
    with pytest.raises(DataError, match="not a readable nifti file"):
        load_labels(tmp_path / "broken.nii.gz")
