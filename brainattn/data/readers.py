"""Generic readers for betas and ROI labels: NIfTI, GIfTI, MGH/MGZ and ``.npy``.

Betas come back as ``(n_images, n_features)`` float32 (features = vertices or in-mask voxels),
labels as ``(n_features,)`` int64, in the same feature order, so that ``betas[:, labels == k]``
selects ROI ``k``:

- NIfTI (``.nii``, ``.nii.gz``): a 4-D betas image (x, y, z, image) is masked with nilearn's
  ``NiftiMasker`` and a 3-D mask image (required); a 3-D label image is read through the same
  mask.
- GIfTI (``.gii``): one data array per image, or one 2-D array (vertices, images).
- MGH/MGZ (``.mgh``, ``.mgz``): FreeSurfer surface overlays (vertices, 1, 1, images).
- ``.npy``: (images, vertices) betas, (vertices,) labels; never unpickled; betas memory-mapped.

For surface formats ``mask`` (path or array over vertices) keeps the vertices where it is
non-zero.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from brainattn.errors import ConfigError, DataError, ShapeError
from brainattn.io import load_npy


def _kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        return "nifti"
    if name.endswith(".gii") or name.endswith(".gii.gz"):
        return "gifti"
    if name.endswith((".mgh", ".mgz")):
        return "mgh"
    if name.endswith(".npy"):
        return "npy"
    raise DataError(
        f"{path}: unknown file type; expected .nii/.nii.gz, .gii, .mgh/.mgz or .npy"
    )


def _exists(path) -> Path:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: no such file")
    return p


def _load_nib(path: Path):
    import nibabel as nib

    try:
        return nib.load(str(path))
    except Exception as exc:  # nibabel raises many types for corrupt files
        raise DataError(f"{path}: not a readable {_kind(path)} file ({exc})") from exc


def _surface_array(path: Path) -> np.ndarray:
    """Raw array of a GIfTI / MGH file as (n_vertices, n_maps)."""
    img = _load_nib(path)
    if _kind(path) == "gifti":
        arrays = [np.asarray(d.data) for d in img.darrays]
        if not arrays:
            raise DataError(f"{path}: GIfTI file holds no data arrays")
        if len(arrays) == 1:
            a = arrays[0]
            return a[:, None] if a.ndim == 1 else a.reshape(a.shape[0], -1)
        if any(a.ndim != 1 or a.shape != arrays[0].shape for a in arrays):
            raise ShapeError(f"{path}: GIfTI data arrays must all be 1-D of the same length")
        return np.stack(arrays, axis=1)
    data = np.asarray(img.dataobj)
    return data.reshape(data.shape[0], -1)


def _surface_mask(mask, n: int) -> np.ndarray:
    if mask is None:
        return np.ones(n, dtype=bool)
    m = load_labels(mask) if isinstance(mask, (str, os.PathLike)) else np.asarray(mask)
    m = m.reshape(-1) != 0
    if m.shape[0] != n:
        raise ShapeError(f"mask: has {m.shape[0]} vertices but the data have {n}")
    if not m.any():
        raise DataError("mask: selects no vertex")
    return m


def _nifti_masker(mask):
    from nilearn.maskers import NiftiMasker

    if mask is None:
        raise ConfigError("mask: NIfTI volumes need a 3-D mask image (mask=...) naming the voxels")
    if isinstance(mask, (str, os.PathLike)):
        mask = str(_exists(mask))
    masker = NiftiMasker(mask_img=mask, standardize=None, detrend=False)
    try:
        masker.fit()
    except Exception as exc:
        raise DataError(f"mask: not a usable 3-D mask image ({exc})") from exc
    return masker


def load_betas(path: str | os.PathLike, mask=None) -> np.ndarray:
    """Read betas as ``(n_images, n_features)`` float32.

    Parameters
    ----------
    path : a NIfTI 4-D image, GIfTI, MGH/MGZ or ``.npy`` file.
    mask : NIfTI: a 3-D mask image (path or nibabel image, required); surfaces/``.npy``: path or
        array over vertices, non-zero = keep (optional).
    """
    p = _exists(path)
    kind = _kind(p)
    if kind == "npy":
        a = load_npy(p, mmap=True)
        if a.ndim != 2:
            raise ShapeError(f"{p}: betas must be 2-D (images, vertices), got shape {a.shape}")
        if mask is not None:
            a = a[:, _surface_mask(mask, a.shape[1])]
        return np.asarray(a, dtype=np.float32)
    if kind == "nifti":
        img = _load_nib(p)
        if len(img.shape) != 4:
            raise ShapeError(f"{p}: NIfTI betas must be 4-D (x, y, z, image), got shape {img.shape}")
        masker = _nifti_masker(mask)
        if masker.mask_img_.shape[:3] != img.shape[:3]:
            raise ShapeError(
                f"{p}: volume shape {img.shape[:3]} differs from the mask's {masker.mask_img_.shape[:3]}"
            )
        return np.asarray(masker.transform(img), dtype=np.float32)
    a = _surface_array(p)  # (n_vertices, n_images)
    a = a[_surface_mask(mask, a.shape[0])]
    return np.ascontiguousarray(a.T, dtype=np.float32)


def load_labels(path: str | os.PathLike, mask=None) -> np.ndarray:
    """Read an integer label per vertex/voxel as ``(n_features,)`` int64.

    NIfTI label volumes need the betas' ``mask`` so that voxels come in the same order;
    for surfaces/``.npy`` an optional ``mask`` keeps the same vertices as :func:`load_betas`.
    """
    p = _exists(path)
    kind = _kind(p)
    if kind == "npy":
        a = load_npy(p)
        if a.ndim != 1:
            raise ShapeError(f"{p}: labels must be 1-D (one per vertex), got shape {a.shape}")
    elif kind == "nifti":
        img = _load_nib(p)
        data = np.asarray(img.dataobj)
        if data.ndim == 4 and data.shape[3] == 1:
            data = data[..., 0]
        if data.ndim != 3:
            raise ShapeError(f"{p}: a NIfTI label image must be 3-D, got shape {data.shape}")
        if mask is None:
            a = data.reshape(-1)
        else:
            masker = _nifti_masker(mask)
            mdata = np.asarray(masker.mask_img_.dataobj) != 0
            if mdata.shape != data.shape:
                raise ShapeError(f"{p}: volume shape {data.shape} differs from the mask's {mdata.shape}")
            a = data[mdata]  # C order, as nilearn's masker
    else:
        a = _surface_array(p)
        if a.shape[1] != 1:
            raise ShapeError(f"{p}: a label file must hold one map, found {a.shape[1]}")
        a = a[:, 0]
    if kind != "nifti" and mask is not None:
        a = a[_surface_mask(mask, a.shape[0])]
    a = np.asarray(a)
    if a.dtype.kind == "f":
        if not np.all(np.isfinite(a)) or np.any(a != np.round(a)):
            raise DataError(f"{p}: labels must be integers")
    elif a.dtype.kind not in "iub":
        raise DataError(f"{p}: labels must be integers, got {a.dtype}")
    return a.astype(np.int64)
