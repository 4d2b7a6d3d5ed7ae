"""The Algonauts-2023 challenge: submission files and the challenge score.

The challenge takes, per subject, ``lh_pred_test.npy`` and ``rh_pred_test.npy``: float32
``(n_test_images, n_vertices_h)`` predictions of the test images (``test_split/test_images`` in
sorted file-name order, as :func:`brainattn.data.open_algonauts` lists them in
``attrs["test_image_paths"]``) for every vertex of the hemisphere in the challenge's order
(the order of ``{lh,rh}_training_fmri.npy``'s columns, ``hemi_vertex`` in brainattn). The
submission folder holds one ``subjXX`` folder per subject.

The score (Algonauts 2023, Gifford et al. 2023) is the mean over vertices of the
noise-normalised accuracy ``100 * r**2 / NC`` with ``r < 0 -> 0`` and capped at 100 (NC in
percent of variance, see :func:`brainattn.encoders.metrics.noise_normalized`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from brainattn.errors import DataError, OutputExistsError, ShapeError

HEMIS = ("lh", "rh")
FILE = "{hemi}_pred_test.npy"


def split_hemispheres(pred, hemisphere, hemi_vertex, *, n_vertices: dict[str, int] | None = None
                      ) -> dict[str, np.ndarray]:
    """``{hemi: float32 (n_images, n_vertices_h)}`` with columns in challenge (``hemi_vertex``)
    order.

    ``n_vertices`` gives each hemisphere's full vertex count (default: ``max(hemi_vertex) + 1``);
    a vertex missing from the predictions (dropped as non-finite, say) is an error, since the
    challenge scores every vertex.
    """
    pred = np.asarray(pred)
    hemisphere = np.asarray(hemisphere).astype(str)
    hemi_vertex = np.asarray(hemi_vertex)
    if pred.ndim != 2:
        raise ShapeError(f"predictions: expected (n_test_images, n_vertices), got shape {pred.shape}")
    if hemisphere.shape != (pred.shape[1],) or hemi_vertex.shape != (pred.shape[1],):
        raise ShapeError(f"hemisphere / hemi_vertex: expected ({pred.shape[1]},) like the "
                         f"predictions' vertices, got {hemisphere.shape} / {hemi_vertex.shape}")
    if not np.isfinite(pred).all():
        raise DataError(f"predictions hold {int((~np.isfinite(pred)).sum())} NaN/Inf values; the "
                        "challenge needs finite predictions")
    out = {}
    for h in HEMIS:
        sel = np.flatnonzero(hemisphere == h)
        if not sel.size:
            raise DataError(f"no vertex of hemisphere {h!r}: a submission needs both lh and rh")
        hv = hemi_vertex[sel].astype(np.int64)
        n_h = int(hv.max()) + 1 if n_vertices is None else int(n_vertices[h])
        if hv.min() < 0 or hv.max() >= n_h or np.unique(hv).size != hv.size:
            raise DataError(f"{h}: hemi_vertex must be distinct indices in 0..{n_h - 1}")
        if hv.size != n_h:
            raise DataError(f"{h}: predictions cover {hv.size} of the hemisphere's {n_h} vertices; "
                            "the challenge scores every vertex (open the data set without "
                            "drop_nonfinite)")
        arr = np.empty((pred.shape[0], n_h), dtype=np.float32)
        arr[:, hv] = pred[:, sel]
        out[h] = arr
    return out


def write_submission(pred, hemisphere, hemi_vertex, out: str | os.PathLike, subject: str, *,
                     n_vertices: dict[str, int] | None = None, n_test_images: int | None = None,
                     overwrite: bool = False) -> list[Path]:
    """Write ``out/<subject>/{lh,rh}_pred_test.npy`` (float32, test images x vertices).

    ``pred`` (n_test_images, n_vertices) in brainattn's vertex order (lh then rh); rows in the
    sorted order of the test images. ``n_test_images`` (when known) is checked. Returns the
    written paths; existing files are refused unless ``overwrite``.
    """
    from brainattn.io import atomic_save_npy

    if n_test_images is not None and np.asarray(pred).shape[0] != int(n_test_images):
        raise ShapeError(f"predictions hold {np.asarray(pred).shape[0]} images but the subject has "
                         f"{n_test_images} test images")
    parts = split_hemispheres(pred, hemisphere, hemi_vertex, n_vertices=n_vertices)
    folder = Path(out) / subject
    paths = [folder / FILE.format(hemi=h) for h in HEMIS]
    for p in paths:
        if p.exists() and not overwrite:
            raise OutputExistsError(f"{p} exists; pass --overwrite or choose another folder")
    folder.mkdir(parents=True, exist_ok=True)
    for h, p in zip(HEMIS, paths, strict=True):
        atomic_save_npy(p, parts[h])
    return paths


def read_submission(folder: str | os.PathLike, subject: str) -> dict[str, np.ndarray]:
    """Read back ``folder/<subject>/{lh,rh}_pred_test.npy`` (checks what the challenge checks:
    2-D float32, the same number of images in both hemispheres)."""
    from brainattn.io import load_npy

    out = {}
    for h in HEMIS:
        p = Path(folder) / subject / FILE.format(hemi=h)
        if not p.is_file():
            raise DataError(f"{p}: no such file (not an Algonauts submission folder)")
        a = load_npy(p)
        if a.ndim != 2 or a.dtype != np.float32:
            raise DataError(f"{p}: expected a 2-D float32 array, got {a.dtype} {a.shape}")
        out[h] = a
    if out["lh"].shape[0] != out["rh"].shape[0]:
        raise DataError(f"{folder}/{subject}: lh and rh predict different numbers of images")
    return out


def challenge_score(r, noise_ceiling) -> float:
    """Algonauts-2023 score: mean over vertices with a known noise ceiling (NC > 0) of
    ``min(100, 100 * max(r, 0)**2 / (NC / 100))``, NC in percent. NaN r counts as 0 (an
    unpredicted vertex scores nothing); NaN when no vertex has a noise ceiling."""
    from brainattn.encoders.metrics import noise_normalized

    r = np.asarray(r, dtype=np.float64)
    nc = np.asarray(noise_ceiling, dtype=np.float64)
    if r.shape != nc.shape:
        raise ShapeError(f"r has shape {r.shape} but noise_ceiling has {nc.shape}; expected equal")
    known = nc > 0
    if not known.any():
        return float("nan")
    s = noise_normalized(np.nan_to_num(r, nan=0.0), nc)
    return float(np.mean(s[known]))
