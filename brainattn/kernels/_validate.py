"""Input checks for :func:`brainattn.kernels.attention`, run once at the door, before any launch."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from brainattn.errors import ConfigError, ShapeError

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclass(frozen=True)
class Dims:
    """Sizes of one attention call: batch, heads, query/key lengths, head dim, low rank (0: none)."""

    B: int
    H: int
    Lq: int
    Lk: int
    D: int
    R: int


def _check_tensor(name: str, t, ndim: int, layout: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise ShapeError(f"{name}: expected a torch.Tensor of shape {layout}, got {type(t).__name__}")
    if t.ndim != ndim:
        raise ShapeError(f"{name}: expected {ndim} dims {layout}, got shape {tuple(t.shape)}")
    if t.dtype not in FLOAT_DTYPES:
        raise ConfigError(
            f"{name}: expected dtype float16, bfloat16, float32 or float64, got {t.dtype}"
        )


def check_inputs(q, k, v, bias, q_bias, k_bias, scale) -> tuple[Dims, float]:
    """Validate shapes, dtypes and devices; return the sizes and the resolved softmax scale.

    Raises :class:`ShapeError` for shapes that do not fit together and :class:`ConfigError` for
    dtypes, devices and scales; the message names the argument.
    """
    _check_tensor("q", q, 4, "(B or 1, H, Lq, D)")
    _check_tensor("k", k, 4, "(B, H, Lk, D)")
    _check_tensor("v", v, 4, "(B, H, Lk, D)")
    B, H, Lk, D = k.shape
    if v.shape != k.shape:
        raise ShapeError(f"v: expected the shape of k {tuple(k.shape)}, got {tuple(v.shape)}")
    if q.shape[0] not in (1, B) or q.shape[1] != H or q.shape[3] != D:
        raise ShapeError(
            f"q: expected shape ({B} or 1, {H}, Lq, {D}) to match k {tuple(k.shape)}, "
            f"got {tuple(q.shape)}"
        )
    Lq = q.shape[2]
    if min(B, H, Lq, Lk, D) < 1:
        raise ShapeError(
            f"q/k: every size must be at least 1, got q {tuple(q.shape)} and k {tuple(k.shape)}"
        )
    for name, t in (("k", k), ("v", v)):
        if t.dtype != q.dtype:
            raise ConfigError(f"{name}: expected dtype {q.dtype} like q, got {t.dtype}")
        if t.device != q.device:
            raise ConfigError(f"{name}: expected device {q.device} like q, got {t.device}")
    if bias is not None:
        _check_tensor("bias", bias, 3, "(H or 1, Lq, Lk)")
        if bias.shape[0] not in (1, H) or tuple(bias.shape[1:]) != (Lq, Lk):
            raise ShapeError(
                f"bias: expected shape ({H} or 1, {Lq}, {Lk}), got {tuple(bias.shape)}"
            )
        if bias.device != q.device:
            raise ConfigError(f"bias: expected device {q.device} like q, got {bias.device}")
    if (q_bias is None) != (k_bias is None):
        missing = "k_bias" if k_bias is None else "q_bias"
        raise ShapeError(f"{missing}: q_bias and k_bias must be given together (low-rank bias)")
    R = 0
    if q_bias is not None:
        _check_tensor("q_bias", q_bias, 4, "(B or 1, H or 1, Lq, R)")
        _check_tensor("k_bias", k_bias, 4, "(B or 1, H or 1, Lk, R)")
        R = q_bias.shape[3]
        if R < 1 or k_bias.shape[3] < 1:
            raise ShapeError(
                f"q_bias/k_bias: rank must be at least 1, got shapes {tuple(q_bias.shape)} "
                f"and {tuple(k_bias.shape)}"
            )
        for name, t, L in (("q_bias", q_bias, Lq), ("k_bias", k_bias, Lk)):
            if t.shape[0] not in (1, B) or t.shape[1] not in (1, H) or t.shape[2] != L:
                raise ShapeError(
                    f"{name}: expected shape ({B} or 1, {H} or 1, {L}, R), got {tuple(t.shape)}"
                )
            if t.device != q.device:
                raise ConfigError(f"{name}: expected device {q.device} like q, got {t.device}")
        if k_bias.shape[3] != R:
            raise ShapeError(
                f"k_bias: expected rank {R} like q_bias (last dim), got shape {tuple(k_bias.shape)}"
            )
    if scale is None:
        scale = D**-0.5
    else:
        try:
            scale = float(scale)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"scale: expected a finite number, got {scale!r}") from exc
        if not math.isfinite(scale):
            raise ConfigError(f"scale: expected a finite number, got {scale!r}")
    return Dims(B, H, Lq, Lk, D, R), scale
