"""The public attention function: validation, dispatch (Triton on CUDA, torch elsewhere)."""

from __future__ import annotations

import os

import torch

from brainattn.errors import ConfigError
from brainattn.kernels._torch import attention_torch, scores_torch
from brainattn.kernels._validate import check_inputs

#: head dims the Triton kernels take (48 and 96 are padded to 64 / 128 inside the kernel)
TRITON_HEAD_DIMS = (16, 32, 48, 64, 96, 128)
TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def triton_available() -> bool:
    """True when ``triton`` imports (it does on Linux with the CUDA build of torch)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


_TRITON_FN = []


def _triton_fn():
    """The Triton path's entry point, imported once (importing triton costs ~1 s)."""
    if not _TRITON_FN:
        from brainattn.kernels._ops import attention_triton

        _TRITON_FN.append(attention_triton)
    return _TRITON_FN[0]


def _backend(q: torch.Tensor, D: int) -> str:
    """``"triton"`` or ``"torch"`` for this call; ``BRAINATTN_ATTENTION`` forces one."""
    forced = os.environ.get("BRAINATTN_ATTENTION", "auto").strip().lower() or "auto"
    if forced not in ("auto", "triton", "torch"):
        raise ConfigError(
            f"BRAINATTN_ATTENTION: expected 'triton', 'torch' or 'auto', got {forced!r}"
        )
    if forced == "torch":
        return "torch"
    ok_dtype = q.dtype in TRITON_DTYPES
    ok_dim = D in TRITON_HEAD_DIMS
    if forced == "triton":
        if not triton_available():
            raise ConfigError("BRAINATTN_ATTENTION=triton: triton is not installed")
        if not q.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
            raise ConfigError(
                "BRAINATTN_ATTENTION=triton: tensors are on the CPU; move them to CUDA or set "
                "TRITON_INTERPRET=1 (before triton is imported) to run the kernels interpreted"
            )
        if not ok_dtype:
            raise ConfigError(f"q: the Triton kernels take float16/bfloat16/float32, got {q.dtype}")
        if not ok_dim:
            raise ConfigError(f"q: the Triton kernels take head dims {TRITON_HEAD_DIMS}, got {D}")
        return "triton"
    if q.is_cuda and ok_dtype and ok_dim and triton_available():
        return "triton"
    return "torch"


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    q_bias: torch.Tensor | None = None,
    k_bias: torch.Tensor | None = None,
    scale: float | None = None,
    return_lse: bool = False,
):
    """Softmax attention with an optional dense and/or low-rank additive bias.

    ``out = softmax(q k^T * scale + bias + q_bias k_bias^T) v`` over the key axis.

    Parameters
    ----------
    q : (B or 1, H, Lq, D) queries; batch 1 broadcasts over the batch without a copy (its
        gradient is summed over the batch).
    k, v : (B, H, Lk, D) keys and values, same dtype and device as q.
    bias : (H or 1, Lq, Lk) dense additive bias in logits (nats), shared over the batch; its
        gradient is summed over the batch (and heads when its first dim is 1).
    q_bias, k_bias : (B or 1, H or 1, Lq, R) and (B or 1, H or 1, Lk, R), a rank-R bias
        ``q_bias @ k_bias^T``; the Triton path never forms it (see :func:`prf_bias_factors`).
        Keep them float32 for accuracy; the kernels compute this term in float32.
    scale : logit scale, default ``D ** -0.5``; must be finite.
    return_lse : also return the log-sum-exp of the logits per query.

    Returns
    -------
    out : (B, H, Lq, D) in q's dtype; with ``return_lse`` also lse : (B, H, Lq) float32.

    Differentiable in every tensor argument (lse too). Dtypes float16, bfloat16, float32
    (float64 on the torch path). CUDA tensors use the Triton kernels when triton is installed
    and D is one of 16, 32, 48, 64, 96, 128; otherwise the torch path, which materialises the
    (B, H, Lq, Lk) scores. ``BRAINATTN_ATTENTION=triton|torch`` forces a path.
    ``torch.compile(..., fullgraph=True)`` compiles through either path without a graph break:
    the Triton path is the custom operator ``torch.ops.brainattn.attention_fwd`` (with its
    backward ``attention_bwd`` and fake implementations, so fake tensors get shapes too).
    """
    dims, scale = check_inputs(q, k, v, bias, q_bias, k_bias, scale)
    if _backend(q, dims.D) == "triton":
        out, lse = _triton_fn()(q, k, v, bias, q_bias, k_bias, scale)
    else:
        out, lse = attention_torch(q, k, v, bias, q_bias, k_bias, scale)
    return (out, lse) if return_lse else out


def attention_weights(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    q_bias: torch.Tensor | None = None,
    k_bias: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Softmax attention weights, (B, H, Lq, Lk) float32 (float64 for float64 inputs).

    Materialises every weight: meant for small inputs (maps, figures). Same arguments and
    checks as :func:`attention` (k's shape (B, H, Lk, D)); differentiable.
    """
    _, scale = check_inputs(q, k, k, bias, q_bias, k_bias, scale)
    return torch.softmax(scores_torch(q, k, bias, q_bias, k_bias, scale), dim=-1)
