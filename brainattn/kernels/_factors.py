"""Elementwise Triton kernels of the low-rank factors, one pass each where torch needs many: the
fp16 hi/lo split of a factor (``_plan.split_pair``) and the pRF query factor with its gradient
(``prf.prf_bias_factors`` on CUDA).

As torch ops, building, splitting and differentiating these factors took some 60 small kernels
a pRF step (a torch.profiler trace in benchmarks/RESULTS.md); each is one launch here.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from brainattn.kernels._tile import split_f16
from brainattn.kernels._tiling import cdiv

_ROWS = 256  # rows of a factor per program


@triton.jit
def _split_kernel(F, S, OUT, n, R: tl.constexpr, KAUG: tl.constexpr, QUERY: tl.constexpr,
                  ROWS: tl.constexpr):
    """OUT (n, KAUG) fp16 = [hi, hi, lo, 0] (QUERY) or [hi, lo, hi, 0] of x = F (n, R) * S (R,)
    (``_tile.split_f16``)."""
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, KAUG)
    part = cols // R  # 0, 1, 2: the three copies; 3+: padding
    src = cols - part * R
    m = (rows < n)[:, None] & (part < 3)[None, :]
    x = tl.load(F + rows[:, None] * R + src[None, :], mask=m, other=0.0)
    x = x * tl.load(S + src, mask=part < 3, other=0.0)[None, :]
    hi, lo = split_f16(x)
    lo_part = 2 if QUERY else 1
    y = tl.where((part == lo_part)[None, :], lo, hi)
    tl.store(OUT + rows[:, None] * KAUG + cols[None, :], y, mask=(rows < n)[:, None])


def split_rows(f: torch.Tensor, s: torch.Tensor, kaug: int, query: bool) -> torch.Tensor:
    """The split of fp32 factor ``f`` (..., R) times column scales ``s`` (R,), (..., kaug)
    fp16: [hi, hi, lo] for the query side, [hi, lo, hi] for the key side, zero padded."""
    R = f.shape[-1]
    flat = f.reshape(-1, R).contiguous()
    out = torch.empty((flat.shape[0], kaug), device=f.device, dtype=torch.float16)
    n = flat.shape[0]
    if n:
        _split_kernel[(cdiv(n, _ROWS),)](flat, s.contiguous(), out, n, R=R, KAUG=kaug,
                                         QUERY=query, ROWS=_ROWS)
    return out.reshape(*f.shape[:-1], kaug)


@triton.jit
def _prf_fwd_kernel(MU, SIG, QB, n, BLOCK: tl.constexpr):
    """QB (n, 4) = [mu_x, mu_y, -1/2, -|mu|^2/2] / sigma^2, x2 on the first two (``prf``)."""
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = i < n
    mx = tl.load(MU + 2 * i, mask=m, other=0.0)
    my = tl.load(MU + 2 * i + 1, mask=m, other=0.0)
    s = tl.load(SIG + i, mask=m, other=1.0)
    inv = 1.0 / (2.0 * s * s)
    tl.store(QB + 4 * i, 2.0 * inv * mx, mask=m)
    tl.store(QB + 4 * i + 1, 2.0 * inv * my, mask=m)
    tl.store(QB + 4 * i + 2, -inv, mask=m)
    tl.store(QB + 4 * i + 3, -inv * (mx * mx + my * my), mask=m)


@triton.jit
def _prf_bwd_kernel(MU, SIG, G, s_g, DMU, DSIG, n, BLOCK: tl.constexpr):
    """dmu, dsigma from dq_bias G (n, 4; row stride s_g): with inv = 1 / (2 sigma^2),
    dinv = 2 mu.g[:2] - g2 - |mu|^2 g3, dmu = 2 inv (g[:2] - mu g3), dsigma = -2 inv dinv / sigma.
    """
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = i < n
    mx = tl.load(MU + 2 * i, mask=m, other=0.0)
    my = tl.load(MU + 2 * i + 1, mask=m, other=0.0)
    s = tl.load(SIG + i, mask=m, other=1.0)
    g0 = tl.load(G + s_g * i, mask=m, other=0.0)
    g1 = tl.load(G + s_g * i + 1, mask=m, other=0.0)
    g2 = tl.load(G + s_g * i + 2, mask=m, other=0.0)
    g3 = tl.load(G + s_g * i + 3, mask=m, other=0.0)
    inv = 1.0 / (2.0 * s * s)
    dinv = 2.0 * (mx * g0 + my * g1) - g2 - (mx * mx + my * my) * g3
    tl.store(DMU + 2 * i, 2.0 * inv * (g0 - mx * g3), mask=m)
    tl.store(DMU + 2 * i + 1, 2.0 * inv * (g1 - my * g3), mask=m)
    tl.store(DSIG + i, -2.0 * inv * dinv / s, mask=m)


class PrfQueryFactor(torch.autograd.Function):
    """The pRF query factor (H, Lq, 4) from mu (H, Lq, 2) and sigma (H, Lq), float32 on
    CUDA: one kernel forward, one backward (what ``prf_bias_factors`` computes with torch ops
    elsewhere)."""

    @staticmethod
    def forward(ctx, mu, sigma):
        mu, sigma = mu.contiguous(), sigma.contiguous()
        n = sigma.numel()
        qb = torch.empty((*sigma.shape, 4), device=mu.device, dtype=torch.float32)
        if n:
            _prf_fwd_kernel[(cdiv(n, 1024),)](mu, sigma, qb, n, BLOCK=1024)
        ctx.save_for_backward(mu, sigma)
        return qb

    @staticmethod
    def backward(ctx, g):
        mu, sigma = ctx.saved_tensors
        n = sigma.numel()
        g = g.reshape(n, 4)  # a view with a row stride where the rows are padded
        if g.stride(-1) != 1:
            g = g.contiguous()
        dmu, dsig = torch.empty_like(mu), torch.empty_like(sigma)
        if n:
            _prf_bwd_kernel[(cdiv(n, 1024),)](mu, sigma, g, g.stride(0), dmu, dsig, n,
                                              BLOCK=1024)
        return dmu, dsig
