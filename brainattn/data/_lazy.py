"""Lazy, memory-mapped betas: two hemisphere arrays seen as one (image, vertex) array.

``open_algonauts`` must open 9,841 x 39,548 float32 betas in well under a second, so nothing
here reads data until xarray asks for a selection. :class:`ConcatBetasArray` is an xarray
``BackendArray`` over the lh and rh ``np.load(mmap_mode="r")`` arrays; wrapped in xarray's
``LazilyIndexedArray`` it supports ``isel``/``sel`` without reading, and a read only touches the
rows and columns selected. Every read checks that the values are finite, so NaN/Inf in a file
can never leak silently into a fit (``open_algonauts(..., drop_nonfinite=True)`` drops them).
"""

from __future__ import annotations

import numpy as np
from xarray.backends import BackendArray
from xarray.core import indexing

from brainattn.errors import DataError


def _normalise_key(k, n: int) -> tuple[np.ndarray | slice, bool]:
    """Return (index usable on an axis of length n, whether the axis is dropped)."""
    if isinstance(k, (int, np.integer)):
        i = int(k)
        if i < 0:
            i += n
        return slice(i, i + 1), True
    if isinstance(k, slice):
        return k, False
    return np.asarray(k, dtype=np.intp), False


class ConcatBetasArray(BackendArray):
    """(image, vertex) view of ``parts`` (each (image, vertex_part)) concatenated on vertices.

    Parameters
    ----------
    parts : list of array-like (n_images, n_vertices_part), typically read-only memmaps.
    names : file names of the parts, used in error messages.
    """

    def __init__(self, parts: list[np.ndarray], names: list[str]):
        n_img = {int(p.shape[0]) for p in parts}
        if len(n_img) != 1:
            raise DataError(f"{', '.join(names)}: hemispheres have different image counts {sorted(n_img)}")
        self.parts = parts
        self.names = names
        self.offsets = np.cumsum([0] + [int(p.shape[1]) for p in parts])
        self.shape = (n_img.pop(), int(self.offsets[-1]))
        self.dtype = np.dtype(parts[0].dtype)

    def __getstate__(self):
        # pickle (e.g. to DataLoader workers) by file name, never by copying the memory maps
        state = dict(self.__dict__)
        state["parts"] = [
            ("mmap", p.filename) if isinstance(p, np.memmap) and p.filename else ("array", p)
            for p in self.parts
        ]
        return state

    def __setstate__(self, state):
        state["parts"] = [
            np.load(v, mmap_mode="r", allow_pickle=False) if k == "mmap" else v
            for k, v in state["parts"]
        ]
        self.__dict__.update(state)

    def __getitem__(self, key):
        return indexing.explicit_indexing_adapter(
            key, self.shape, indexing.IndexingSupport.OUTER, self._raw_getitem
        )

    def _raw_getitem(self, key: tuple) -> np.ndarray:
        rows, drop_r = _normalise_key(key[0], self.shape[0])
        cols, drop_c = _normalise_key(key[1], self.shape[1])
        cols = np.arange(self.shape[1])[cols]
        n_rows = len(range(self.shape[0])[rows]) if isinstance(rows, slice) else len(rows)
        out = np.empty((n_rows, len(cols)), dtype=self.dtype)
        part_of = np.searchsorted(self.offsets, cols, side="right") - 1
        for p, (arr, name) in enumerate(zip(self.parts, self.names, strict=True)):
            sel = np.flatnonzero(part_of == p)
            if sel.size == 0:
                continue
            local = cols[sel] - self.offsets[p]
            block = arr[rows]
            if local.size == arr.shape[1] and np.array_equal(local, np.arange(arr.shape[1])):
                block = np.asarray(block)
            else:
                block = np.asarray(block[:, local])
            _check_finite(block, name, rows, local)
            out[:, sel] = block
        if drop_c:
            out = out[:, 0]
        if drop_r:
            out = out[0]
        return out


def _check_finite(block: np.ndarray, name: str, rows, cols) -> None:
    ok = np.isfinite(block)
    if ok.all():
        return
    bad = ~ok
    n_bad = int(bad.sum())
    bad_cols = np.asarray(cols)[bad.any(axis=0)]
    raise DataError(
        f"{name}: {n_bad} NaN/Inf values in {bad_cols.size} vertices of the part read "
        f"(first hemisphere vertices {bad_cols[:5].tolist()}); open with drop_nonfinite=True "
        "(CLI: --drop-nonfinite) to drop those vertices, or fix the file"
    )


def lazy_betas(parts: list[np.ndarray], names: list[str]) -> indexing.LazilyIndexedArray:
    """Wrap hemisphere arrays as one lazily indexed (image, vertex) array for ``xr.Variable``."""
    return indexing.LazilyIndexedArray(ConcatBetasArray(parts, names))


def count_nonfinite(arr: np.ndarray, *, chunk_bytes: int = 1 << 27) -> np.ndarray:
    """Count NaN/Inf per column of a (possibly memory-mapped) 2-D array, reading in row chunks.

    Returns (n_columns,) int64. A float32 column sum is used as a fast screen (NaN/Inf
    propagate); only columns whose sum is not finite are counted exactly.
    """
    n_rows, n_cols = arr.shape
    step = max(1, int(chunk_bytes // max(1, n_cols * arr.dtype.itemsize)))
    counts = np.zeros(n_cols, dtype=np.int64)
    for start in range(0, n_rows, step):
        block = np.asarray(arr[start : start + step])
        with np.errstate(all="ignore"):
            s = block.sum(axis=0, dtype=np.float64)
        suspect = np.flatnonzero(~np.isfinite(s))
        if suspect.size:
            counts[suspect] += (~np.isfinite(block[:, suspect])).sum(axis=0)
    return counts
