"""fMRI data sets: the Algonauts-2023 / NSD layout, generic readers, noise ceilings and the
embedded synthetic visual cortex.

Public API::

    open_algonauts(root, subject="subj01", *, drop_nonfinite=False) -> xr.Dataset
    write_algonauts(ds_or_arrays, root, subject=None, *, overwrite=False) -> Path
    make_dataset(lh_betas, rh_betas, image_paths, *, rois=None, noise_ceiling=None, ...)
    list_subjects(root) -> list[str]
    load_betas(path, mask=None) -> (n_images, n_features) float32
    load_labels(path, mask=None) -> (n_features,) int64
    ncsnr(repeats), noise_ceiling(ncsnr, n=1), split_half_reliability(repeats, n=None)
    synth.generate(out, subjects=2, images=2000, seed=0, image_size=224, overwrite=False)
    summarize(root) -> dict (what ``brainattn data info`` prints)
    roi_labels(ds, families=None) -> {family: (n_vertices,) str}, roi_families(ds), vertex_coords(ds)
"""

from __future__ import annotations

from brainattn.data.noise_ceiling import (
    ncsnr,
    noise_ceiling,
    noise_ceiling_from_repeats,
    spearman_brown,
    split_half_reliability,
)
from brainattn.data.readers import load_betas, load_labels
from brainattn.data.rois import roi_families, roi_labels, vertex_coords

# The Algonauts names are imported on first use (as in brainattn.encoders), so that
# ``brainattn --help`` and argument errors do not pay for xarray and pandas.
_LAZY = {
    "open_algonauts": "brainattn.data.algonauts",
    "write_algonauts": "brainattn.data.algonauts",
    "list_subjects": "brainattn.data.algonauts",
    "make_dataset": "brainattn.data.algonauts",
}

__all__ = [
    *sorted(_LAZY),
    "load_betas",
    "load_labels",
    "ncsnr",
    "noise_ceiling",
    "noise_ceiling_from_repeats",
    "split_half_reliability",
    "spearman_brown",
    "roi_labels",
    "roi_families",
    "vertex_coords",
]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'brainattn.data' has no attribute {name!r}")
