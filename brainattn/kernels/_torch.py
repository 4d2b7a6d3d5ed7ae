"""Torch implementation of biased attention: the CPU path and the fallback wherever Triton is not.

It materialises the (B, H, Lq, Lk) scores, so it is meant for CPU work and modest sizes; autograd
gives every gradient. Arithmetic runs in float32 (float64 for float64 inputs).
"""

from __future__ import annotations

import torch


def scores_torch(q, k, bias, q_bias, k_bias, scale: float) -> torch.Tensor:
    """Logits ``q k^T * scale + bias + q_bias k_bias^T``, shape (B, H, Lq, Lk), float32/64."""
    ct = torch.float64 if q.dtype == torch.float64 else torch.float32
    s = torch.matmul(q.to(ct), k.to(ct).transpose(-1, -2)) * scale
    if bias is not None:
        s = s + bias.to(ct)
    if q_bias is not None:
        s = s + torch.matmul(q_bias.to(ct), k_bias.to(ct).transpose(-1, -2))
    return s


def attention_torch(q, k, v, bias, q_bias, k_bias, scale: float):
    """Return ``(out, lse)``: out (B, H, Lq, D) in q's dtype, lse (B, H, Lq) float32 (float64
    for float64 inputs)."""
    s = scores_torch(q, k, bias, q_bias, k_bias, scale)
    lse = torch.logsumexp(s, dim=-1)
    p = torch.exp(s - lse.unsqueeze(-1))
    out = torch.matmul(p, v.to(s.dtype))
    return out.to(q.dtype), lse
