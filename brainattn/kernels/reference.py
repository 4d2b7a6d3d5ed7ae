"""Float64 reference attention, written as plainly as possible. Used by tests only."""

from __future__ import annotations

import torch


def reference_attention(q, k, v, *, bias=None, q_bias=None, k_bias=None, scale=None):
    """Biased softmax attention in float64.

    Shapes as in :func:`brainattn.kernels.attention`. Returns ``(out, lse)``: out (B, H, Lq, D)
    and lse (B, H, Lq), both float64 (differentiable if the inputs require grad).
    """
    d = torch.float64
    if scale is None:
        scale = q.shape[-1] ** -0.5
    B, H, Lk, D = k.shape
    Lq = q.shape[2]
    qq = q.to(d).expand(B, H, Lq, D)
    s = torch.einsum("bhid,bhjd->bhij", qq, k.to(d)) * scale
    if bias is not None:
        s = s + bias.to(d).expand(H, Lq, Lk).unsqueeze(0)
    if q_bias is not None:
        R = q_bias.shape[-1]
        qb = q_bias.to(d).expand(B, H, Lq, R)
        kb = k_bias.to(d).expand(B, H, Lk, R)
        s = s + torch.einsum("bhir,bhjr->bhij", qb, kb)
    m = s.max(dim=-1, keepdim=True).values
    e = torch.exp(s - m)
    z = e.sum(dim=-1, keepdim=True)
    p = e / z
    out = torch.einsum("bhij,bhjd->bhid", p, v.to(d))
    lse = (m + torch.log(z)).squeeze(-1)
    return out, lse
