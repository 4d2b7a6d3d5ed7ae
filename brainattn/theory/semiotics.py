"""Semiotic "perceptualized" networks (Kupeev & Nitzany, arXiv 2310.05212).

An agent *observes* an image by encoding it (``E``) and *sees* it by decoding the code (``D``).
Perception iterates ``x <- D(E(x))`` towards an attractor of the autoencoder trained on the
agent's (small) experience. The *perceptualized* classifier is an ordinary classifier trained
and tested on perceived images instead of raw ones; the paper reports that, with a stochastic
loop, it beats the same classifier on raw images when few images per class are available.

Pieces, usable on their own:

- data: :func:`load_digits_pool` (scikit-learn's 8x8 digits, shipped), :func:`read_idx` /
  :func:`write_idx` / :func:`load_mnist` (MNIST IDX files the user already has; never
  downloads), :func:`restricted_split` (R images per class for training, the rest for testing);
- model: :class:`CosMinusX` (the published activation ``cos(x) - x``), :class:`StridedConv`,
  :class:`ConvEncoder`, :class:`ConvDecoder`, :func:`build_autoencoder`,
  :func:`train_autoencoder` / :func:`train_autoencoders` (many agents at once through
  :func:`fit_stacked`, ``torch.func.vmap`` over stacked parameters: same optimisation, fewer
  small operations);
- loops: :func:`vanilla_loop` (deterministic iteration to an attractor, with convergence
  statistics), :func:`augment` and :func:`stochastic_loop` (augmentation of strength
  ``decay**-n`` at step ``n``, many copies averaged: the *perceived* image),
  :func:`two_agent_loop` (agent A's "seen" is agent B's "observed");
- classifier: :class:`MLP`, :func:`train_mlp` / :func:`train_mlps`, :func:`classifier_accuracy`
  (same architecture, same initialisation and schedule for raw and perceived inputs);
- statistics: :func:`paired_comparison` (paired differences over seeds, paired t-test, Wilcoxon
  signed-rank test, percentile-bootstrap interval);
- driver: :data:`QUICK`, :data:`FULL`, :func:`validate_config`, :func:`run_R`,
  :func:`simulate`, :func:`summary`, :func:`plot`.

On 8x8 images the convolutions run as one matrix product with a dense operator gathered from
the kernel (:class:`StridedConv`), much faster on a CPU than PyTorch's convolutions at this
size; tests check it against ``torch.nn.functional.conv2d`` / ``conv_transpose2d``.

Architecture scaled to small images. The published autoencoder has 5 stride-2 3x3 convolutions
of 256 channels on 28x28 MNIST (28 -> 14 -> 7 -> 4 -> 2 -> 1) and a mirrored decoder. Here the
number of stride-2 layers is ``ceil(log2(size))`` so the code is always 1x1 spatially: 3 layers
for the 8x8 digits (8 -> 4 -> 2 -> 1), 5 layers for 28x28 MNIST (the published net). Every
layer is followed by ``cos(x) - x`` except the decoder's last, followed by a sigmoid so that
images stay in [0, 1]. The width is the ``channels`` config key (256 published and in
:data:`FULL`; 32 in :data:`QUICK` to fit a 2-core CPU). The classifier is scaled from the
published 784-500-100-10 MLP to ``n_pixels``-``mlp_hidden``-10 (64-128-64-10 for digits).
"""

from __future__ import annotations

import copy
import gzip
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from brainattn.errors import ConfigError, DataError, ShapeError

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "QUICK",
    "FULL",
    "AugmentParams",
    "CosMinusX",
    "ConvEncoder",
    "ConvDecoder",
    "LoopResult",
    "MLP",
    "StridedConv",
    "augment",
    "build_autoencoder",
    "classifier_accuracy",
    "load_dataset",
    "load_digits_pool",
    "load_mnist",
    "paired_comparison",
    "run_R",
    "plot",
    "read_idx",
    "restricted_split",
    "simulate",
    "stochastic_loop",
    "summary",
    "train_autoencoder",
    "train_autoencoders",
    "fit_stacked",
    "train_mlp",
    "train_mlps",
    "two_agent_loop",
    "vanilla_loop",
    "validate_config",
    "write_idx",
]

METHODS = ("baseline", "vanilla", "stochastic")
CONTRASTS = ("vanilla-baseline", "stochastic-baseline")

# --------------------------------------------------------------------------------------------
# configs: the keys of QUICK are the schema

QUICK: dict[str, Any] = {
    "dataset": "digits",  # "digits" (sklearn 8x8, shipped) or "mnist" (IDX files in mnist_dir)
    "mnist_dir": None,  # folder holding train-images-idx3-ubyte[.gz] etc.; needed for "mnist"
    "R": [1, 2, 3, 5, 10, 20],  # training images per class
    "n_seeds": 3,  # independent repetitions (restricted sample, nets, augmentations)
    "seed": 0,  # base seed; repetition i uses seed + i
    "n_test": 150,  # test images per repetition (stratified random subset); 0 or None: all
    "channels": 32,  # autoencoder width (published: 256)
    "ae_steps": 250,  # full-batch Adam steps of autoencoder training (cosine-annealed lr)
    "ae_lr": 5e-3,
    "vanilla_steps": 200,  # at most this many x <- D(E(x)) (published 30; stops at the attractor)
    "tol": 1e-3,  # convergence: RMS per pixel of D(E(x)) - x, pixels in [0, 1]
    "stochastic_steps": 30,
    "n_copies": 8,  # augmented copies averaged per image (published: 500)
    "decay": 2.6,  # augmentation strength alpha_n = decay ** -n at step n = 0, 1, ...
    "aug_noise": 0.2,  # Gaussian noise sd at alpha = 1 (pixel units)
    "aug_shift": 1.0,  # max translation at alpha = 1 (pixels)
    "aug_rotate": 15.0,  # max rotation at alpha = 1 (degrees)
    "aug_scale": 0.1,  # max relative zoom at alpha = 1
    "aug_contrast": 0.3,  # max relative contrast change at alpha = 1
    "aug_blur": 0.5,  # max blend weight with a Gaussian-blurred copy (sd 1 px) at alpha = 1
    "mlp_hidden": [128, 64],  # published 500, 100 for 784 inputs
    "mlp_steps": 120,  # full-batch Adam steps
    "mlp_lr": 1e-2,
    "mlp_weight_decay": 1e-4,
    "agents": True,  # run the two-agent loop (agent B trained on a disjoint restricted set)
    "agent_steps": 60,  # at most this many steps of the two-agent loop (stops at the attractor)
    "n_boot": 2000,  # bootstrap resamples for the interval of the mean paired difference
    "ci": 0.95,
    "batch_size": 4096,  # images per forward pass in the loops (memory knob)
    "cpu_threads": 1,  # torch threads on CPU during the run (tiny ops: 1 avoids oversubscription)
}

FULL: dict[str, Any] = {
    **QUICK,
    "n_seeds": 20,
    "n_test": 500,  # stratified test subset per repetition (all ~1,700 digits: 3.4x the time)
    "channels": 256,
    "ae_steps": 2000,
    "ae_lr": 3e-4,  # 256 channels collapse to a constant image at 1e-3 (measured on CPU)
    "n_copies": 500,
    "mlp_steps": 300,
    "agent_steps": 200,
    "n_boot": 10000,
    "batch_size": 65536,
    "cpu_threads": None,  # leave torch's default
}

_INT_KEYS = {
    "n_seeds": 1,
    "seed": 0,
    "channels": 1,
    "ae_steps": 1,
    "vanilla_steps": 1,
    "stochastic_steps": 1,
    "n_copies": 1,
    "mlp_steps": 1,
    "agent_steps": 1,
    "n_boot": 1,
    "batch_size": 1,
}
_POS_FLOAT_KEYS = ("ae_lr", "tol", "mlp_lr")
_NONNEG_FLOAT_KEYS = (
    "aug_noise",
    "aug_shift",
    "aug_rotate",
    "aug_scale",
    "aug_contrast",
    "aug_blur",
    "mlp_weight_decay",
)


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def validate_config(config: dict | None, *, check_data: bool = True) -> dict:
    """Return a complete config (missing keys from :data:`QUICK`) or raise ``ConfigError``.

    Unknown keys and impossible values (non-positive steps, ``R`` larger than the smallest
    class of the training pool, ``decay <= 1``, ...) raise with a message naming the key.
    ``check_data`` also loads the data set to compare ``R`` with the class sizes.
    """
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise ConfigError(f"config: expected a mapping of keys to values, got {type(config).__name__}")
    unknown = sorted(set(config) - set(QUICK))
    if unknown:
        raise ConfigError(
            f"config key {unknown[0]!r}: unknown for semiotics; known keys: {', '.join(QUICK)}"
        )
    cfg = {**copy.deepcopy(QUICK), **copy.deepcopy(config)}
    if cfg["dataset"] not in ("digits", "mnist"):
        raise ConfigError(f"config key 'dataset': expected 'digits' or 'mnist', got {cfg['dataset']!r}")
    if cfg["dataset"] == "mnist" and not cfg["mnist_dir"]:
        raise ConfigError("config key 'mnist_dir': dataset 'mnist' needs the folder of the IDX files")
    if cfg["mnist_dir"] is not None and not isinstance(cfg["mnist_dir"], (str, os.PathLike)):
        raise ConfigError(f"config key 'mnist_dir': expected a folder path, got {cfg['mnist_dir']!r}")
    for key, lo in _INT_KEYS.items():
        v = cfg[key]
        if not _is_int(v) or v < lo:
            raise ConfigError(f"config key {key!r}: expected an integer >= {lo}, got {v!r}")
    for key in _POS_FLOAT_KEYS:
        v = cfg[key]
        if not _is_num(v) or not math.isfinite(v) or v <= 0:
            raise ConfigError(f"config key {key!r}: expected a positive number, got {v!r}")
    for key in _NONNEG_FLOAT_KEYS:
        v = cfg[key]
        if not _is_num(v) or not math.isfinite(v) or v < 0:
            raise ConfigError(f"config key {key!r}: expected a number >= 0, got {v!r}")
    if not _is_num(cfg["decay"]) or not math.isfinite(cfg["decay"]) or cfg["decay"] <= 1:
        raise ConfigError(f"config key 'decay': expected a number > 1, got {cfg['decay']!r}")
    if not _is_num(cfg["ci"]) or not 0 < cfg["ci"] < 1:
        raise ConfigError(f"config key 'ci': expected a number in (0, 1), got {cfg['ci']!r}")
    if cfg["cpu_threads"] is not None and (not _is_int(cfg["cpu_threads"]) or cfg["cpu_threads"] < 1):
        raise ConfigError(
            f"config key 'cpu_threads': expected a positive integer or null, got {cfg['cpu_threads']!r}"
        )
    if not isinstance(cfg["agents"], bool):
        raise ConfigError(f"config key 'agents': expected true or false, got {cfg['agents']!r}")
    if cfg["n_test"] is not None and (not _is_int(cfg["n_test"]) or 0 < cfg["n_test"] < 10
                                      or cfg["n_test"] < 0):
        raise ConfigError(
            f"config key 'n_test': expected an integer >= 10, or 0 / null for all, got {cfg['n_test']!r}"
        )
    if cfg["n_test"] == 0:
        cfg["n_test"] = None
    hidden = cfg["mlp_hidden"]
    if not isinstance(hidden, (list, tuple)) or not all(_is_int(h) and h >= 1 for h in hidden):
        raise ConfigError(f"config key 'mlp_hidden': expected a list of positive integers, got {hidden!r}")
    cfg["mlp_hidden"] = [int(h) for h in hidden]
    rs = cfg["R"]
    if _is_int(rs):
        rs = [rs]
    if not isinstance(rs, (list, tuple)) or not rs or not all(_is_int(r) and r >= 1 for r in rs):
        raise ConfigError(f"config key 'R': expected a list of positive integers, got {cfg['R']!r}")
    if len(set(rs)) != len(rs):
        raise ConfigError(f"config key 'R': values must be distinct, got {list(rs)!r}")
    cfg["R"] = sorted(int(r) for r in rs)
    if check_data:
        _, labels = _train_pool(cfg)
        smallest = int(np.bincount(labels).min())
        # Digits: the rest of the class must leave test images, and agent B needs a disjoint set.
        need = 2 if cfg["agents"] else 1
        limit = (smallest - 1) // need if cfg["dataset"] == "digits" else smallest // need
        if cfg["R"][-1] > limit:
            raise ConfigError(
                f"config key 'R': {cfg['R'][-1]} images per class is more than the data allow "
                f"(smallest class has {smallest} training images; at most {limit} per class"
                + (" with agents on)" if cfg["agents"] else ")")
            )
    return cfg


# --------------------------------------------------------------------------------------------
# data

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


def _train_pool(cfg: dict) -> tuple[np.ndarray, np.ndarray]:
    if cfg["dataset"] == "digits":
        return load_digits_pool()
    return load_mnist(cfg["mnist_dir"], "train")


def load_dataset(cfg: dict) -> dict[str, np.ndarray]:
    """The pool restricted training sets are drawn from and, for MNIST, the separate test split.

    Returns ``{"x": (n, h, w), "y": (n,)}`` plus ``"x_test"``, ``"y_test"`` for MNIST (for the
    digits the test images are the pool images not drawn for training).
    """
    x, y = _train_pool(cfg)
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


# --------------------------------------------------------------------------------------------
# autoencoder


class CosMinusX(nn.Module):
    """The activation ``cos(x) - x`` of the published autoencoder (elementwise, any shape)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cos(x) - x


def _layer_sizes(size: int) -> list[int]:
    """Spatial sizes through stride-2, padding-1, 3x3 convolutions down to 1: 8 -> [8, 4, 2, 1]."""
    sizes = [int(size)]
    while sizes[-1] > 1:
        sizes.append((sizes[-1] + 1) // 2)
    return sizes


def _dense_index(transposed: bool, c_in: int, h_in: int, c_out: int, h_out: int):
    """Where each 3x3 stride-2 padding-1 kernel weight sits in the dense operator matrix.

    Returns ``table`` ``(c_out*h_out**2 * c_in*h_in**2,)``: with ``w0`` the flattened weight
    followed by one 0, ``w0[table]`` is the matrix ``M`` ``(c_out*h_out**2, c_in*h_in**2)`` with
    ``out.flatten(1) = in.flatten(1) @ M.T`` (one gather: cheap, and batched by ``vmap``).
    The convolution weight is ``(c_out, c_in, 3, 3)``, the transposed one ``(c_in, c_out, 3, 3)``
    (PyTorch layouts). Each (output, input) pair meets at most one kernel tap (stride 2 > 3 // 2),
    so no entry gets two taps.
    """
    ky, kx = np.meshgrid(np.arange(3), np.arange(3), indexing="ij")
    ky, kx = ky.ravel(), kx.ravel()
    if transposed:  # input (ci, iy, ix) -> output (co, 2*iy - 1 + ky, 2*ix - 1 + kx)
        ci, co, iy, ix, k = np.meshgrid(np.arange(c_in), np.arange(c_out), np.arange(h_in),
                                        np.arange(h_in), np.arange(9), indexing="ij")
        oy, ox = 2 * iy - 1 + ky[k], 2 * ix - 1 + kx[k]
        ok = (oy >= 0) & (oy < h_out) & (ox >= 0) & (ox < h_out)
        widx = (ci * c_out + co) * 9 + k
    else:  # output (co, oy, ox) <- input (ci, 2*oy - 1 + ky, 2*ox - 1 + kx)
        co, ci, oy, ox, k = np.meshgrid(np.arange(c_out), np.arange(c_in), np.arange(h_out),
                                        np.arange(h_out), np.arange(9), indexing="ij")
        iy, ix = 2 * oy - 1 + ky[k], 2 * ox - 1 + kx[k]
        ok = (iy >= 0) & (iy < h_in) & (ix >= 0) & (ix < h_in)
        widx = (co * c_in + ci) * 9 + k
    row = (co * h_out + oy) * h_out + ox
    col = (ci * h_in + iy) * h_in + ix
    flat = row[ok] * (c_in * h_in * h_in) + col[ok]
    # gather table: entry e of the operator is weight[table[e]], or the appended 0 when no tap
    n_w = c_in * c_out * 9
    table = np.full(c_out * h_out * h_out * c_in * h_in * h_in, n_w, dtype=np.int64)
    table[flat] = widx[ok]
    return torch.as_tensor(table)


# Above this many operator entries the dense path would cost more memory than it saves time.
_DENSE_MAX = 1 << 22


class StridedConv(nn.Module):
    """A 3x3 stride-2 padding-1 convolution (or transposed convolution) between fixed sizes.

    ``(B, c_in, h_in, h_in) -> (B, c_out, h_out, h_out)``. Parameters are those of
    ``nn.Conv2d`` / ``nn.ConvTranspose2d`` (``self.conv``). For small images the layer is
    applied as one matrix product with the dense operator built from the kernel (``dense``;
    the same function, much faster than PyTorch's CPU convolutions on 8x8 inputs); ``dense=None``
    picks it when the operator has at most 2**22 entries.
    """

    def __init__(self, c_in: int, c_out: int, h_in: int, h_out: int, *, transposed: bool,
                 dense: bool | None = None):
        super().__init__()
        self.c_in, self.c_out, self.h_in, self.h_out = c_in, c_out, h_in, h_out
        self.transposed = transposed
        cls = nn.ConvTranspose2d if transposed else nn.Conv2d
        self.conv = cls(c_in, c_out, 3, stride=2, padding=1)
        size = c_in * h_in * h_in * c_out * h_out * h_out
        self.dense = size <= _DENSE_MAX if dense is None else bool(dense)
        if self.dense:
            table = _dense_index(transposed, c_in, h_in, c_out, h_out)
            self.register_buffer("_table", table, persistent=False)

    def operator(self) -> torch.Tensor:
        """The dense matrix ``(c_out*h_out**2, c_in*h_in**2)`` of the layer (without bias)."""
        n_out, n_in = self.c_out * self.h_out**2, self.c_in * self.h_in**2
        if not self.dense:
            raise ShapeError("StridedConv.operator: layer too large for a dense operator")
        w = self.conv.weight.reshape(-1)
        w0 = torch.cat([w, w.new_zeros(1)])
        return w0.index_select(0, self._table).view(n_out, n_in)

    def _cached_operator(self) -> torch.Tensor:
        # Without autograd (the perception loops) the operator is reused while the weight is
        # unchanged; ``_version`` moves on every in-place update (optimizer steps, loading).
        w = self.conv.weight
        key = (w._version, w.data_ptr(), w.device)
        if getattr(self, "_op_key", None) != key:
            with torch.no_grad():
                self._op = self.operator()
            self._op_key = key
        return self._op

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dense:
            op = self.operator() if torch.is_grad_enabled() else self._cached_operator()
            y = torch.addmm(self.conv.bias.repeat_interleave(self.h_out**2), x.flatten(1), op.t())
            return y.view(len(x), self.c_out, self.h_out, self.h_out)
        if self.transposed:
            return self.conv(x, output_size=(self.h_out, self.h_out))
        return self.conv(x)


class ConvEncoder(nn.Module):
    """The "observed" map E: images ``(B, 1, s, s)`` -> codes ``(B, channels, 1, 1)``.

    ``ceil(log2(s))`` stride-2 3x3 convolutions, each followed by ``cos(x) - x``.
    """

    def __init__(self, image_size: int, channels: int = 256, *, dense: bool | None = None):
        super().__init__()
        self.image_size = int(image_size)
        self.sizes = _layer_sizes(image_size)
        layers: list[nn.Module] = []
        c_in = 1
        for h_in, h_out in zip(self.sizes[:-1], self.sizes[1:], strict=True):
            layers += [StridedConv(c_in, channels, h_in, h_out, transposed=False, dense=dense),
                       CosMinusX()]
            c_in = channels
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ConvDecoder(nn.Module):
    """The "seen" map D: codes ``(B, channels, 1, 1)`` -> images ``(B, 1, s, s)`` in [0, 1].

    Mirrors :class:`ConvEncoder` with stride-2 3x3 transposed convolutions (output sizes
    pinned to the encoder's); ``cos(x) - x`` between layers, a sigmoid at the end.
    """

    def __init__(self, image_size: int, channels: int = 256, *, dense: bool | None = None):
        super().__init__()
        self.image_size = int(image_size)
        self.sizes = _layer_sizes(image_size)[::-1]
        n = len(self.sizes) - 1
        self.convs = nn.ModuleList(
            StridedConv(channels, 1 if i == n - 1 else channels, self.sizes[i], self.sizes[i + 1],
                        transposed=True, dense=dense)
            for i in range(n)
        )
        self.act = CosMinusX()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        for i, conv in enumerate(self.convs):
            z = conv(z)
            z = self.act(z) if i < len(self.convs) - 1 else torch.sigmoid(z)
        return z


def build_autoencoder(
    image_size: int,
    channels: int,
    *,
    seed: int = 0,
    device: str | torch.device = "cpu",
    dense: bool | None = None,
) -> tuple[ConvEncoder, ConvDecoder]:
    """A fresh encoder/decoder pair, initialised from ``seed`` (global RNG state untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        E = ConvEncoder(image_size, channels, dense=dense)
        D = ConvDecoder(image_size, channels, dense=dense)
    return E.to(device), D.to(device)


def fit_stacked(
    models: Sequence[nn.Module],
    x: torch.Tensor,
    target: torch.Tensor,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    steps: int,
    lr: float,
    weight_decay: float = 0.0,
    cosine: bool = False,
) -> np.ndarray:
    """Train ``G`` models of one architecture at once, model ``g`` on ``(x[g], target[g])``.

    ``x``: ``(G, n, ...)``; ``loss(out, target)`` returns one loss per model ``(G,)`` from the
    stacked outputs ``(G, n, ...)``. Full-batch Adam (cosine-annealed learning rate if
    ``cosine``) on the parameters stacked with ``torch.func``: the gradient of the summed loss
    for model ``g`` is the gradient of its own loss and Adam is elementwise, so this is the
    same optimisation as training each model alone, in ``1/G`` as many (small) operations.
    The trained parameters are copied back into ``models``. Returns losses ``(steps, G)``.
    """
    from torch.func import functional_call, stack_module_state

    models = list(models)
    params, _ = stack_module_state(models)
    buffers = dict(models[0].named_buffers())  # index tables: identical in every model
    base = models[0]

    def call(p, xg):
        return functional_call(base, (p, buffers), (xg,))

    forward = torch.vmap(call)
    opt = torch.optim.Adam(list(params.values()), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps) if cosine else None
    losses = np.zeros((steps, len(models)))
    for t in range(steps):
        opt.zero_grad(set_to_none=True)
        per = loss(forward(params, x), target)
        per.sum().backward()
        opt.step()
        if sched is not None:
            sched.step()
        losses[t] = per.detach().cpu().numpy()
    with torch.no_grad():
        for g, m in enumerate(models):
            for name, p in m.named_parameters():
                p.copy_(params[name][g])
            m.eval()
    return losses


def _mse_per_model(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (out - target).pow(2).flatten(1).mean(1)


def train_autoencoders(
    agents: Sequence[tuple[nn.Module, nn.Module]],
    x: torch.Tensor,
    *,
    steps: int = 400,
    lr: float = 3e-3,
) -> np.ndarray:
    """Fit ``G`` autoencoders at once, ``D_g(E_g(x[g])) ~ x[g]``, ``x`` ``(G, n, 1, s, s)``.

    Full-batch Adam on the MSE per pixel, cosine-annealed learning rate (see
    :func:`fit_stacked`). Returns the losses ``(steps, G)`` (MSE per pixel).
    """
    pairs = [nn.Sequential(E, D) for E, D in agents]
    return fit_stacked(pairs, x, x, _mse_per_model, steps=steps, lr=lr, cosine=True)


def train_autoencoder(
    E: nn.Module,
    D: nn.Module,
    x: torch.Tensor,
    *,
    steps: int = 400,
    lr: float = 3e-3,
) -> list[float]:
    """Fit ``D(E(x)) ~ x`` by full-batch Adam on MSE; ``x`` is ``(n, 1, s, s)`` in [0, 1].

    Returns the loss per step (mean squared error per pixel).
    """
    return train_autoencoders([(E, D)], x[None], steps=steps, lr=lr)[:, 0].tolist()


# --------------------------------------------------------------------------------------------
# perception loops


def _rms(a: torch.Tensor) -> torch.Tensor:
    """Root mean square per sample over all but the first axis."""
    return a.flatten(1).pow(2).mean(1).sqrt()


@dataclass
class LoopResult:
    """Outcome of an iterated map ``x <- f(x)`` on a batch.

    x: ``(n, 1, s, s)`` the final images; residual: ``(n,)`` RMS per pixel of ``f(x) - x`` at
    the final images (the attractor test); converged: ``(n,)`` ``residual < tol``; n_steps:
    ``(n,)`` first step after which the step size fell below ``tol`` (-1 if never);
    trace: ``(steps,)`` mean step size (RMS per pixel of ``x_{t+1} - x_t``) per iteration, NaN
    after the loop stopped early (every image at its attractor).
    """

    x: torch.Tensor
    residual: torch.Tensor
    converged: torch.Tensor
    n_steps: torch.Tensor
    trace: torch.Tensor

    @property
    def converged_fraction(self) -> float:
        return float(self.converged.float().mean())


@torch.no_grad()
def _iterate(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, steps: int, tol: float,
             batch_size: int, stop_early: bool = True) -> LoopResult:
    outs, res, nst, traces = [], [], [], []
    for start in range(0, len(x), batch_size):
        xb = x[start : start + batch_size]
        first = torch.full((len(xb),), -1, dtype=torch.long, device=xb.device)
        trace = torch.full((steps,), math.nan, dtype=torch.float64, device=xb.device)
        for t in range(steps):
            nxt = f(xb)
            step = _rms(nxt - xb)
            trace[t] = step.double().mean()
            newly = (step < tol) & (first < 0)
            first[newly] = t + 1
            xb = nxt
            # all at the attractor: further steps move no image by more than tol
            if stop_early and bool((step < tol).all()) and bool((_rms(f(xb) - xb) < tol).all()):
                break
        outs.append(xb)
        res.append(_rms(f(xb) - xb))
        nst.append(first)
        traces.append(trace)
    residual = torch.cat(res)
    return LoopResult(
        x=torch.cat(outs),
        residual=residual,
        converged=residual < tol,
        n_steps=torch.cat(nst),
        trace=torch.stack(traces).nanmean(0).float(),
    )


def vanilla_loop(
    E: nn.Module,
    D: nn.Module,
    x: torch.Tensor,
    steps: int = 30,
    *,
    tol: float = 1e-3,
    batch_size: int = 4096,
) -> LoopResult:
    """Iterate ``x <- D(E(x))`` at most ``steps`` times (the vanilla perception loop).

    ``x``: ``(n, 1, s, s)``. Convergence: the attractor residual ``RMS(D(E(x*)) - x*)`` per
    pixel below ``tol`` at the final images ``x*``. A chunk of ``batch_size`` images stops
    early once every image in it has converged. See :class:`LoopResult`.
    """
    if steps < 1:
        raise ConfigError(f"steps: expected a positive integer, got {steps!r}")
    return _iterate(lambda z: D(E(z)), x, steps, tol, batch_size)


def two_agent_loop(
    agent_a: tuple[nn.Module, nn.Module],
    agent_b: tuple[nn.Module, nn.Module],
    x: torch.Tensor,
    steps: int = 30,
    *,
    tol: float = 1e-3,
    batch_size: int = 4096,
) -> tuple[LoopResult, torch.Tensor]:
    """Two agents looking at each other's images: A's "seen" is B's "observed" and back.

    One step is ``x <- D_B(E_B(D_A(E_A(x))))``. Returns the :class:`LoopResult` of that map
    and the disagreement ``(n,)``: RMS per pixel between A's seen image ``D_A(E_A(x*))`` and
    B's ``x*`` at the end (0 when the two agents share the attractor).
    """
    (Ea, Da), (Eb, Db) = agent_a, agent_b
    if steps < 1:
        raise ConfigError(f"steps: expected a positive integer, got {steps!r}")
    res = _iterate(lambda z: Db(Eb(Da(Ea(z)))), x, steps, tol, batch_size)
    with torch.no_grad():
        seen_a = torch.cat([Da(Ea(res.x[i : i + batch_size])) for i in range(0, len(x), batch_size)])
    return res, _rms(seen_a - res.x)


@dataclass(frozen=True)
class AugmentParams:
    """Augmentation magnitudes at strength ``alpha = 1`` (see :func:`augment`)."""

    noise: float = 0.2  # Gaussian noise sd, pixel units
    shift: float = 1.0  # max translation, pixels
    rotate: float = 15.0  # max rotation, degrees
    scale: float = 0.1  # max relative zoom
    contrast: float = 0.3  # max relative contrast change
    blur: float = 0.5  # max blend weight with the blurred image

    @classmethod
    def from_config(cls, cfg: dict) -> AugmentParams:
        return cls(**{k: float(cfg[f"aug_{k}"]) for k in cls.__dataclass_fields__})


def _blur(x: torch.Tensor) -> torch.Tensor:
    g = torch.tensor([0.27406862, 0.45186276, 0.27406862], dtype=x.dtype, device=x.device)  # sd 1
    k = (g[:, None] * g[None, :]).view(1, 1, 3, 3)
    return F.conv2d(x, k, padding=1)


def augment(
    x: torch.Tensor, alpha: float, params: AugmentParams, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Random augmentation of strength ``alpha`` on images ``(B, 1, s, s)`` in [0, 1].

    Per image: affine (rotation ``alpha*rotate`` deg, zoom ``1 + alpha*scale``, shift
    ``alpha*shift`` px; each uniformly in +-), blend with a blurred copy (weight up to
    ``alpha*blur``), contrast about the mean (factor ``1 +- alpha*contrast``), additive Gaussian
    noise (sd ``alpha*noise``); clamped to [0, 1]. ``alpha = 0`` returns ``x`` unchanged.
    """
    if alpha == 0:
        return x
    B, _, h, w = x.shape

    def u(*shape):  # uniform in [-1, 1]
        return torch.rand(*shape, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1

    ang = u(B) * math.radians(params.rotate) * alpha
    zoom = 1 + u(B) * params.scale * alpha
    tx, ty = u(B) * params.shift * alpha * 2 / w, u(B) * params.shift * alpha * 2 / h
    cos, sin = torch.cos(ang) / zoom, torch.sin(ang) / zoom
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    y = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    wb = (u(B) + 1) / 2 * params.blur * alpha
    y = y + wb.view(B, 1, 1, 1) * (_blur(y) - y)
    mean = y.mean(dim=(1, 2, 3), keepdim=True)
    y = mean + (y - mean) * (1 + u(B) * params.contrast * alpha).view(B, 1, 1, 1)
    noise = torch.randn(y.shape, generator=generator, device=x.device, dtype=x.dtype)
    y = y + noise * params.noise * alpha
    return y.clamp(0, 1)


@torch.no_grad()
def stochastic_loop(
    E: nn.Module,
    D: nn.Module,
    x: torch.Tensor,
    steps: int = 30,
    *,
    n_copies: int = 500,
    decay: float = 2.6,
    params: AugmentParams | None = None,
    generator: torch.Generator | None = None,
    batch_size: int = 4096,
) -> torch.Tensor:
    """The perceived images ``(n, 1, s, s)``: mean over ``n_copies`` stochastic trajectories.

    Each copy starts at ``x`` and at step ``n = 0 .. steps-1`` is augmented with strength
    ``alpha_n = decay ** -n`` and mapped by ``D(E(.))``; the copies' images after ``steps``
    steps are averaged. ``batch_size`` bounds images x copies per forward pass.
    """
    if steps < 1 or n_copies < 1:
        raise ConfigError(f"steps, n_copies: expected positive integers, got {steps!r}, {n_copies!r}")
    if decay <= 1:
        raise ConfigError(f"decay: expected a number > 1, got {decay!r}")
    params = params or AugmentParams()
    per = max(1, batch_size // n_copies)
    out = []
    for start in range(0, len(x), per):
        xb = x[start : start + per]
        z = xb.repeat_interleave(n_copies, dim=0)
        for n in range(steps):
            z = D(E(augment(z, decay ** (-n), params, generator)))
        out.append(z.view(len(xb), n_copies, *xb.shape[1:]).mean(1))
    return torch.cat(out)


# --------------------------------------------------------------------------------------------
# classifier


class MLP(nn.Module):
    """Classifier ``(B, n_in) -> (B, n_classes)`` logits: Linear-ReLU blocks, then Linear."""

    def __init__(self, n_in: int, hidden: Sequence[int] = (128, 64), n_classes: int = 10):
        super().__init__()
        dims = [n_in, *hidden]
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:], strict=True):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(dims[-1], n_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))


def _ce_per_model(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.transpose(1, 2), y, reduction="none").mean(1)


def train_mlps(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    hidden: Sequence[int] = (128, 64),
    n_classes: int = 10,
    steps: int = 300,
    lr: float = 1e-2,
    weight_decay: float = 1e-4,
    seeds: Sequence[int] = (0,),
) -> list[MLP]:
    """Train ``G = len(seeds)`` MLPs at once, model ``g`` on ``x[g]`` ``(n, ...)``, ``y[g]``.

    Model ``g`` is initialised from ``seeds[g]`` alone (the global RNG is left as it was), so
    the same seed on raw and on perceived inputs means the same network and schedule.
    Full-batch Adam with L2 ``weight_decay`` (see :func:`fit_stacked`).
    """
    models = []
    for s in seeds:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(s))
            models.append(MLP(int(np.prod(x.shape[2:])), hidden, n_classes).to(x.device))
    if steps > 0:
        fit_stacked(models, x, y, _ce_per_model, steps=steps, lr=lr, weight_decay=weight_decay)
    for m in models:
        m.eval()
    return models


def train_mlp(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    hidden: Sequence[int] = (128, 64),
    n_classes: int = 10,
    steps: int = 300,
    lr: float = 1e-2,
    weight_decay: float = 1e-4,
    seed: int = 0,
) -> MLP:
    """Train one :class:`MLP` on ``x`` ``(n, ...)``, labels ``y`` ``(n,)`` (see :func:`train_mlps`)."""
    return train_mlps(x[None], y[None], hidden=hidden, n_classes=n_classes, steps=steps, lr=lr,
                      weight_decay=weight_decay, seeds=[seed])[0]


def classifier_accuracy(
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    **mlp_kwargs,
) -> tuple[float, torch.Tensor, MLP]:
    """Train :func:`train_mlp` on the training images, return (test accuracy, predictions, model)."""
    model = train_mlp(x_train, y_train, **mlp_kwargs)
    with torch.no_grad():
        pred = model(x_test).argmax(1)
    return float((pred == y_test).double().mean()), pred, model


# --------------------------------------------------------------------------------------------
# paired statistics


def paired_comparison(
    a: Sequence[float], b: Sequence[float], *, n_boot: int = 2000, ci: float = 0.95, seed: int = 0
) -> dict[str, float]:
    """Paired comparison of ``a`` against ``b`` (same seeds): differences ``d = a - b``.

    Returns ``mean_diff``, ``sd_diff`` (ddof 1), ``ci_low``/``ci_high`` (percentile bootstrap of
    the mean difference, ``n_boot`` resamples, level ``ci``), ``t_stat``/``t_pvalue`` (paired
    t-test, two-sided), ``w_stat``/``w_pvalue`` (Wilcoxon signed-rank, two-sided) and ``n``.
    Statistics that are undefined (one pair, all differences zero) are NaN.
    """
    from scipy import stats

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ConfigError(f"paired_comparison: expected two 1-d arrays of equal length, got {a.shape}, {b.shape}")
    d = a - b
    n = len(d)
    out = {"n": float(n), "mean_diff": float(d.mean()) if n else math.nan}
    out["sd_diff"] = float(d.std(ddof=1)) if n > 1 else math.nan
    nan = math.nan
    out.update(t_stat=nan, t_pvalue=nan, w_stat=nan, w_pvalue=nan)
    if n > 1 and out["sd_diff"] > 0:
        t = stats.ttest_rel(a, b)
        out["t_stat"], out["t_pvalue"] = float(t.statistic), float(t.pvalue)
    if n > 1 and np.any(d != 0):
        w = stats.wilcoxon(a, b)
        out["w_stat"], out["w_pvalue"] = float(w.statistic), float(w.pvalue)
    if n:
        rng = np.random.default_rng(seed)
        means = d[rng.integers(0, n, size=(n_boot, n))].mean(1)
        lo, hi = np.quantile(means, [(1 - ci) / 2, (1 + ci) / 2])
        out["ci_low"], out["ci_high"] = float(lo), float(hi)
    else:
        out["ci_low"] = out["ci_high"] = nan
    return out


# --------------------------------------------------------------------------------------------
# driver


def _to_tensor(a: np.ndarray, device) -> torch.Tensor:
    return torch.as_tensor(a, dtype=torch.float32, device=device).unsqueeze(1)


def _stratified_subset(labels: np.ndarray, idx: np.ndarray, n: int, rng) -> np.ndarray:
    """``n // n_classes`` random indices of each class among ``idx`` (fewer if a class is short)."""
    classes = np.unique(labels[idx])
    per = max(1, n // len(classes))
    pick = []
    for c in classes:
        cand = idx[labels[idx] == c]
        pick.append(rng.choice(cand, size=min(per, len(cand)), replace=False))
    return np.sort(np.concatenate(pick))


def _one_example_per_class(y: np.ndarray, n_classes: int = 10) -> np.ndarray:
    """Index of the first image of each class (-1 where a class is absent)."""
    return np.array([int(np.flatnonzero(y == c)[0]) if np.any(y == c) else -1
                     for c in range(n_classes)])


def _draw(cfg: dict, data: dict, R: int, seed: int) -> dict[str, np.ndarray]:
    """Indices of one repetition: agent A's training set, agent B's, the test images.

    Digits: A's and (with ``agents``) B's training images are drawn first, disjoint; the test
    images come from the rest (seen by neither agent). MNIST: the test images come from the
    test split. ``n_test`` caps the test images (stratified: ``n_test // 10`` per class).
    """
    rng = np.random.default_rng([seed, R])
    y_all = data["y"]
    tr, rest = restricted_split(y_all, R, rng)
    tr_b = None
    if cfg["agents"]:
        tr_b, rest = restricted_split(y_all, R, rng, exclude=tr)
    y_te_pool = data["y_test"] if "y_test" in data else y_all
    te = np.arange(len(y_te_pool)) if "y_test" in data else rest
    if cfg["n_test"] is not None and len(te) > cfg["n_test"]:
        te = _stratified_subset(y_te_pool, te, cfg["n_test"], rng)
    return {"tr": tr, "tr_b": tr_b, "te": te}


def run_R(cfg: dict, data: dict, R: int, seeds: Sequence[int], device: torch.device) -> list[dict]:
    """All repetitions at one ``R``: train the agents, perceive, classify; numbers per seed.

    The autoencoders of all repetitions (agents A and B) are trained together, and so are the
    MLPs (see :func:`fit_stacked`: the same optimisation as one at a time). Model seeds:
    agent A ``1000*seed + R``, agent B ``1000*seed + R + 500``, MLP ``1000*seed + R + 7`` (the
    same MLP initialisation on raw, vanilla and stochastic images of a repetition).
    """
    x_all, y_all = data["x"], data["y"]
    x_te_pool = data.get("x_test", x_all)
    y_te_pool = data.get("y_test", y_all)
    size = x_all.shape[-1]
    draws = [_draw(cfg, data, R, s) for s in seeds]

    agents_a = [build_autoencoder(size, cfg["channels"], seed=1000 * s + R, device=device)
                for s in seeds]
    agents = list(agents_a)
    x_fit = [x_all[d["tr"]] for d in draws]
    if cfg["agents"]:
        agents += [build_autoencoder(size, cfg["channels"], seed=1000 * s + R + 500, device=device)
                   for s in seeds]
        x_fit += [x_all[d["tr_b"]] for d in draws]
    x_fit_t = torch.as_tensor(np.stack(x_fit), dtype=torch.float32, device=device)[:, :, None]
    losses = train_autoencoders(agents, x_fit_t, steps=cfg["ae_steps"], lr=cfg["ae_lr"])

    outs, mlp_x, mlp_test = [], [], []
    for i, (seed, d) in enumerate(zip(seeds, draws, strict=True)):
        E, D = agents_a[i]
        x_tr = _to_tensor(x_all[d["tr"]], device)
        x_te = _to_tensor(x_te_pool[d["te"]], device)
        y_te = torch.as_tensor(y_te_pool[d["te"]], device=device)
        x_both = torch.cat([x_tr, x_te])
        n_tr = len(x_tr)
        van = vanilla_loop(E, D, x_both, cfg["vanilla_steps"], tol=cfg["tol"],
                           batch_size=cfg["batch_size"])
        gen = torch.Generator(device=device)
        gen.manual_seed(1000 * seed + R)
        sto = stochastic_loop(
            E, D, x_both, cfg["stochastic_steps"], n_copies=cfg["n_copies"], decay=cfg["decay"],
            params=AugmentParams.from_config(cfg), generator=gen, batch_size=cfg["batch_size"],
        )
        mlp_x += [x_tr, van.x[:n_tr], sto[:n_tr]]
        mlp_test.append((x_te, van.x[n_tr:], sto[n_tr:], y_te))
        n_conv = van.n_steps[n_tr:]
        out: dict[str, Any] = {
            "ae_loss": float(losses[-1, i]),
            "van_converged": float(van.converged[n_tr:].float().mean()),
            "van_steps": float(n_conv[n_conv > 0].float().mean()) if bool((n_conv > 0).any())
            else math.nan,
            "van_residual": float(van.residual[n_tr:].median()),
            "van_train_drift": float(_rms(van.x[:n_tr] - x_tr).median()),
            "van_trace": van.trace.cpu().numpy(),
        }
        ex = _one_example_per_class(y_te.cpu().numpy())
        views = [x_te[:, 0], van.x[n_tr:, 0], sto[n_tr:, 0]]
        out["examples"] = np.stack([v[np.maximum(ex, 0)].cpu().numpy() for v in views])
        out["examples"][:, ex < 0] = np.nan
        nan = math.nan
        out.update(agents_converged=nan, agents_steps=nan, agents_residual=nan,
                   agents_disagreement=nan, agents_label_kept=nan)
        if cfg["agents"]:
            res, dis = two_agent_loop(agents_a[i], agents[len(seeds) + i], x_te, cfg["agent_steps"],
                                      tol=cfg["tol"], batch_size=cfg["batch_size"])
            ok = res.n_steps > 0
            out.update(
                agents_converged=res.converged_fraction,
                agents_steps=float(res.n_steps[ok].float().mean()) if bool(ok.any()) else nan,
                agents_residual=float(res.residual.median()),
                agents_disagreement=float(dis.median()),
                agents_final=res.x,
            )
        outs.append(out)

    y_fit = torch.as_tensor(np.stack([y_all[d["tr"]] for d in draws for _ in METHODS]),
                            device=device)
    models = train_mlps(
        torch.stack(mlp_x), y_fit, hidden=cfg["mlp_hidden"], steps=cfg["mlp_steps"],
        lr=cfg["mlp_lr"], weight_decay=cfg["mlp_weight_decay"],
        seeds=[1000 * s + R + 7 for s in seeds for _ in METHODS],
    )
    with torch.no_grad():
        for i, out in enumerate(outs):
            *views, y_te = mlp_test[i]
            out["accuracy"] = [
                float((models[3 * i + k](v).argmax(1) == y_te).double().mean())
                for k, v in enumerate(views)
            ]
            if "agents_final" in out:  # does the raw-image classifier still name the digit?
                final = out.pop("agents_final")
                out["agents_label_kept"] = float((models[3 * i](final).argmax(1) == y_te).double().mean())
    return outs


def simulate(config: dict | None = None, *, device: str | torch.device | None = None):
    """Run the perceptualized-classifier experiment; return the figure's data as a Dataset.

    ``config``: keys of :data:`QUICK` (missing keys take QUICK's values). For each ``R`` and
    each of ``n_seeds`` repetitions: draw R training images per class, train the autoencoder
    (agent A) on them, perceive training and test images with the vanilla and the stochastic
    loop, train the same MLP on raw / vanilla / stochastic images and test it on the matching
    test images; with ``agents`` also train agent B on a disjoint restricted set and run the
    two-agent loop on the test images. Paired statistics over repetitions per R.

    Returns an ``xarray.Dataset`` with dims ``seed``, ``R``, ``perception`` (baseline = raw
    images, vanilla, stochastic), ``contrast`` (vanilla-baseline, stochastic-baseline),
    ``step``, and for the example images ``digit``/``row``/``col``. Accuracies are fractions in [0, 1]; residuals
    are RMS per pixel (pixels in [0, 1]).
    """
    from brainattn.utils import resolve_device

    cfg = validate_config(config)
    dev = resolve_device("auto" if device is None else device)
    threads = torch.get_num_threads()
    if dev.type == "cpu" and cfg["cpu_threads"] is not None:
        torch.set_num_threads(cfg["cpu_threads"])
    try:
        return _simulate(cfg, dev)
    finally:
        torch.set_num_threads(threads)


def _simulate(cfg: dict, dev: torch.device):
    import xarray as xr

    from brainattn.utils import progress

    data = load_dataset(cfg)
    Rs, seeds = cfg["R"], [cfg["seed"] + i for i in range(cfg["n_seeds"])]
    nS, nR = len(seeds), len(Rs)
    acc = np.full((nS, nR, len(METHODS)), np.nan)
    scal_names = ("ae_loss", "van_converged", "van_steps", "van_residual", "van_train_drift",
                  "agents_converged",
                  "agents_steps", "agents_residual", "agents_disagreement", "agents_label_kept")
    scal = {k: np.full((nS, nR), np.nan) for k in scal_names}
    trace = np.full((nS, nR, cfg["vanilla_steps"]), np.nan)
    size = data["x"].shape[-1]
    examples = np.zeros((nR, len(METHODS), 10, size, size), dtype=np.float32)
    for j in progress(range(nR), desc="semiotics R", total=nR):
        for i, r in enumerate(run_R(cfg, data, Rs[j], seeds, dev)):
            acc[i, j] = r["accuracy"]
            for k in scal_names:
                scal[k][i, j] = r[k]
            trace[i, j] = r["van_trace"]
            if i == 0:
                examples[j] = r["examples"]

    stat_names = ("mean_diff", "sd_diff", "ci_low", "ci_high", "t_stat", "t_pvalue", "w_stat", "w_pvalue")
    stats_arr = {k: np.full((nR, len(CONTRASTS)), np.nan) for k in stat_names}
    for j in range(nR):
        for c, name in enumerate(CONTRASTS):
            m = METHODS.index(name.split("-")[0])
            res = paired_comparison(acc[:, j, m], acc[:, j, 0], n_boot=cfg["n_boot"], ci=cfg["ci"],
                                    seed=cfg["seed"] + j)
            for k in stat_names:
                stats_arr[k][j, c] = res[k]
    diff = np.stack([acc[:, :, 1] - acc[:, :, 0], acc[:, :, 2] - acc[:, :, 0]], axis=-1)

    ds = xr.Dataset(
        {
            "accuracy": (("seed", "R", "perception"), acc, {"units": "fraction correct",
                                                        "long_name": "test accuracy of the MLP"}),
            "diff": (("seed", "R", "contrast"), diff, {"units": "fraction correct",
                                                        "long_name": "paired accuracy difference"}),
            **{k: (("R", "contrast"), v) for k, v in stats_arr.items()},
            "ae_loss": (("seed", "R"), scal["ae_loss"], {"units": "MSE per pixel"}),
            "vanilla_converged": (("seed", "R"), scal["van_converged"],
                                  {"long_name": "fraction of test images at an attractor"}),
            "vanilla_steps": (("seed", "R"), scal["van_steps"],
                              {"long_name": "mean steps to convergence (converged images)"}),
            "vanilla_residual": (("seed", "R"), scal["van_residual"],
                                 {"units": "RMS per pixel", "long_name": "median ||D(E(x*)) - x*||"}),
            "vanilla_train_drift": (("seed", "R"), scal["van_train_drift"],
                                    {"units": "RMS per pixel",
                                     "long_name": "median distance of a training image from its "
                                                  "attractor (0: training images are attractors)"}),
            "vanilla_trace": (("seed", "R", "step"), trace, {"units": "RMS per pixel",
                                                             "long_name": "mean step size"}),
            "agents_converged": (("seed", "R"), scal["agents_converged"]),
            "agents_steps": (("seed", "R"), scal["agents_steps"]),
            "agents_residual": (("seed", "R"), scal["agents_residual"], {"units": "RMS per pixel"}),
            "agents_disagreement": (("seed", "R"), scal["agents_disagreement"],
                                    {"units": "RMS per pixel",
                                     "long_name": "median RMS between A's and B's seen images"}),
            "agents_label_kept": (("seed", "R"), scal["agents_label_kept"],
                                  {"long_name": "baseline MLP still names the true digit"}),
            "examples": (("R", "perception", "digit", "row", "col"), examples,
                         {"long_name": "test images of repetition 0: raw, vanilla, stochastic"}),
        },
        coords={
            "seed": seeds, "R": Rs, "perception": list(METHODS), "contrast": list(CONTRASTS),
            "step": np.arange(1, cfg["vanilla_steps"] + 1),
            "digit": np.arange(10), "row": np.arange(size), "col": np.arange(size),
        },
        attrs={
            "simulation": "semiotics",
            "reference": "Kupeev & Nitzany, arXiv 2310.05212",
            "paper_claim": "stochastic-loop perceptualized MLP beats the raw baseline at few "
                           "images per class; the vanilla loop does not",
            "config": {k: (str(v) if isinstance(v, os.PathLike) else v) for k, v in cfg.items()},
        },
    )
    return ds


def summary(ds) -> pd.DataFrame:
    """One row per R: mean accuracies, paired differences with intervals and p-values, loops.

    ``claim_reproduced`` is True where the stochastic-minus-baseline interval lies above 0
    and the vanilla-minus-baseline mean difference is not positive.
    """
    import pandas as pd

    rows = []
    for R in ds["R"].values:
        d = ds.sel(R=R)
        row = {"R": int(R), "n_seeds": int(d.sizes["seed"])}
        for m in METHODS:
            row[f"acc_{m}"] = float(d["accuracy"].sel(perception=m).mean())
        for c, short in zip(CONTRASTS, ("vanilla", "stochastic"), strict=True):
            e = d.sel(contrast=c)
            row[f"{short}_minus_base"] = float(e["mean_diff"])
            row[f"{short}_ci_low"] = float(e["ci_low"])
            row[f"{short}_ci_high"] = float(e["ci_high"])
            row[f"{short}_t_p"] = float(e["t_pvalue"])
            row[f"{short}_wilcoxon_p"] = float(e["w_pvalue"])
        row["vanilla_converged"] = float(d["vanilla_converged"].mean())
        row["vanilla_train_drift"] = float(d["vanilla_train_drift"].mean())
        row["agents_converged"] = float(d["agents_converged"].mean())
        row["agents_label_kept"] = float(d["agents_label_kept"].mean())
        row["claim_reproduced"] = bool(row["stochastic_ci_low"] > 0 and row["vanilla_minus_base"] <= 0)
        rows.append(row)
    return pd.DataFrame(rows)


def plot(ds):
    """Figure: accuracy vs R per method, paired differences with intervals, example images."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    acc = ds["accuracy"].to_dataframe().reset_index()
    diff = ds["diff"].to_dataframe().reset_index()
    Rs = [int(r) for r in ds["R"].values]
    fig = plt.figure(figsize=(13, 7.5), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[1.1, 1])
    ax1, ax2, ax3 = top.subplots(1, 3)
    sns.pointplot(data=acc, x="R", y="accuracy", hue="perception", hue_order=list(METHODS),
                  errorbar=("ci", 95), dodge=0.3, ax=ax1)
    ax1.set(xlabel="training images per class (R)", ylabel="test accuracy", title="MLP accuracy")
    sns.stripplot(data=diff, x="R", y="diff", hue="contrast", hue_order=list(CONTRASTS),
                  palette=sns.color_palette()[1:3], dodge=True, alpha=0.4, ax=ax2, legend=False)
    pos = np.arange(len(Rs))
    for c, (name, color) in enumerate(zip(CONTRASTS, sns.color_palette()[1:3], strict=True)):
        e = ds.sel(contrast=name)
        off = -0.2 if c == 0 else 0.2
        ax2.errorbar(pos + off, e["mean_diff"], yerr=[e["mean_diff"] - e["ci_low"], e["ci_high"] - e["mean_diff"]],
                     fmt="o", color=color, capsize=3, label=name)
    ax2.axhline(0, color="k", lw=0.8)
    ax2.set(xlabel="R", ylabel="accuracy difference (paired)", title="vs baseline (bootstrap CI)")
    ax2.legend(fontsize=8)
    conv = ds[["vanilla_converged", "agents_converged"]].to_dataframe().reset_index().melt(
        id_vars=["seed", "R"], var_name="loop", value_name="fraction converged")
    sns.pointplot(data=conv, x="R", y="fraction converged", hue="loop", dodge=0.3, ax=ax3)
    ax3.set(ylim=(0, 1.05), title="attractor reached (test images)")
    # example images for the smallest and largest R: raw / vanilla / stochastic
    pick = sorted({0, len(Rs) - 1})
    axes = bottom.subplots(3 * len(pick), 10, squeeze=False)
    for p, j in enumerate(pick):
        for v, view in enumerate(METHODS):
            for k in range(10):
                ax = axes[3 * p + v, k]
                ax.imshow(ds["examples"].values[j, v, k], cmap="gray", vmin=0, vmax=1)
                ax.set_xticks([])
                ax.set_yticks([])
                if k == 0:
                    ax.set_ylabel(f"R={Rs[j]}\n{'raw' if view == 'baseline' else view}", fontsize=7)
    fig.suptitle("Semiotic perceptualized classifier (Kupeev & Nitzany)")
    return fig
