"""Host side of the Triton path: which passes a forward or backward runs, their buffers, grids
and launch keys. Validates nothing (``brainattn.kernels.api`` did).

Forward: ``_fwd.fwd``. Backward, by what is needed: the dq pass (``_bwd_dq.bwd_q``, which also
forms delta) or the delta pre-pass; the dk/dv pass (``_bwd_kv.bwd_kv``), or instead of both
the dk/dv pass with dq fused in (``_bwd_kv.bwd_kv_dq``, see ``_plan.fused_dq``); the
dense-bias pass (``_bwd_bias.bwd_bias``). Broadcast dq partials over batch splits are summed
inside the dq pass by the last split of each tile, so the backward has no host-side sum.
"""

from __future__ import annotations

import torch

from brainattn.kernels import _plan
from brainattn.kernels._bwd_bias import bwd_bias
from brainattn.kernels._bwd_dq import bwd_pre, bwd_q
from brainattn.kernels._bwd_kv import bwd_kv, bwd_kv_dq
from brainattn.kernels._fwd import fwd
from brainattn.kernels._launch import TUNED, launch
from brainattn.kernels._plan import Plan, reduce_to
from brainattn.kernels._tiling import cdiv, kv_programs


def _torch_scratch(size: int, alignment: int, stream):
    return torch.empty(size, device="cuda", dtype=torch.int8)


def _ensure_scratch_allocator():
    """Tensor descriptors made in a kernel live in Triton's global scratch; give Triton an
    allocator backed by torch's caching allocator where none is set. Triton keeps it per
    context, i.e. per thread (the autograd engine runs CUDA backwards on its own thread), and
    one set by the user is left alone."""
    import triton
    from triton.runtime import _allocation

    if isinstance(_allocation._allocator.get(), _allocation.NullAllocator):
        triton.set_allocator(_torch_scratch)


def last_contiguous(t):
    """``t`` with a unit stride in its last dim (what the kernels index), copied only if not."""
    return t if t is None or t.stride(-1) == 1 or t.shape[-1] == 1 else t.contiguous()


def forward(q, k, v, bias, q_bias, k_bias, scale, plan=None):
    """Returns (out (B, H, Lq, D) in q's dtype, lse (B, H, Lq) fp32, plan)."""
    if plan is None:
        plan = Plan(q, k, v, bias, q_bias, k_bias, scale)
    B, H, Lq, D = plan.B, plan.H, plan.Lq, plan.D
    out = torch.empty((B, H, Lq, D), device=q.device, dtype=q.dtype)
    lse = torch.empty((B, H, Lq), device=q.device, dtype=torch.float32)
    grid = lambda meta: (B, cdiv(Lq, meta["BLOCK_M"]), H)  # noqa: E731
    rawmax = bias is None and (plan.R == 0 or plan.lr_dot) and scale > 0
    launch(fwd, grid, ("fwd", rawmax) + plan.key,
           (q, k, v, *plan.ptrs, out, lse), (*plan.strides, H, Lq, plan.Lk, scale),
           dict(HEAD_D=D, HAS_BIAS=plan.key[3], RANK=plan.R, PREC=plan.prec,
                LR_DOT=plan.lr_dot, KAUG=plan.kaug, RAWMAX=rawmax, BLOCK_D=plan.BLOCK_D))
    return out, lse, plan


def backward(q, k, v, bias, q_bias, k_bias, out, lse, dout, dlse, scale, needs, plan=None):
    """Gradients (dq, dk, dv, dbias, dq_bias, dk_bias), None where ``needs`` (six bools in that
    order) says not needed; ``dlse`` may be None."""
    if plan is None:
        plan = Plan(q, k, v, bias, q_bias, k_bias, scale)
    B, H, Lq, Lk, D, R = plan.B, plan.H, plan.Lq, plan.Lk, plan.D, plan.R
    dev = q.device
    nq, nk, nv, nb, nqb, nkb = needs
    nqb = nqb and R > 0
    nkb = nkb and R > 0
    has_bias = bias is not None
    dstr = _plan.strides(dout, 3)
    common = (*plan.strides, *dstr)
    consts = dict(HEAD_D=D, HAS_BIAS=has_bias, RANK=R, PREC=plan.prec, LR_DOT=plan.lr_dot,
                  KAUG=plan.kaug, GW=plan.gw, BLOCK_D=plan.BLOCK_D)
    delta = torch.empty((B, H, Lq), device=dev, dtype=torch.float32)
    dq = dk = dv = dbias = dqb = dkb = None
    fused = _plan.fused_dq(q, q_bias, plan, (nq, nk, nv, nb, nqb, nkb), has_bias, TUNED)
    dqa = dqba = cs = vmax = plan.ptrs[1]
    r_pad = R
    nqb_fused = False
    if fused:  # dq (and dq_bias) accumulate in fp32 (dq_bias rows padded to 16 bytes)
        _ensure_scratch_allocator()
        dqa = torch.zeros((H, Lq, D), device=dev, dtype=torch.float32)
        if nqb:
            r_pad = cdiv(R, 4) * 4
            dqba = torch.zeros((H, Lq, r_pad), device=dev, dtype=torch.float32)
            # each (head, query)'s fp16 scale for the dq_bias dot: the pre-pass's smallest
            # over the batch (from max|v| and dO); 2^126 where no batch has a gradient
            cs = torch.full((H, Lq), 2.0**126, device=dev, dtype=torch.float32)
            vmax = torch.linalg.vector_norm(v.detach(), float("inf"))
        nq = False
        nqb_fused, nqb = nqb, False
    if nq or nqb:  # the dq pass also forms delta for the passes after it
        per_batch = q.shape[0] != 1 or (q_bias is not None and q_bias.shape[0] != 1)
        if per_batch:
            bps = 1
        else:  # split the batch only as far as needed to fill the card
            programs = cdiv(Lq, 64) * H
            n_split = max(1, min(B, (4 * _plan.n_sms(dev)) // max(programs, 1)))
            bps = cdiv(B, n_split)
        n_split = cdiv(B, bps)
        direct = n_split == q.shape[0]  # each partial is a final dq: store it in q's dtype
        dq_p = torch.empty((n_split, H, Lq, D), device=dev,
                           dtype=q.dtype if direct else torch.float32)
        dqb_p = (torch.empty((n_split, H, Lq, R), device=dev, dtype=torch.float32)
                 if nqb else plan.ptrs[1])
        # broadcast queries over several splits: the kernel's last split per tile reduces
        reduce = nq and not direct
        # a batch-shared key factor: sum dS over the batch before the factor's dot
        swap = nqb and k_bias.shape[0] == 1 and not per_batch and bps > 1
        dq_red, cnt = dq_p, dq_p
        if reduce:
            dq_red = torch.empty((1, H, Lq, D), device=dev, dtype=q.dtype)
            cnt = _plan.counters(dev, H * cdiv(Lq, 16))
        grid = lambda meta: (n_split, cdiv(Lq, meta["BLOCK_M"]), H)  # noqa: E731
        launch(bwd_q, grid, ("q", n_split, dlse is not None, nqb, reduce, swap) + plan.key,
               (q, k, v, *plan.ptrs, dout, out, dlse if dlse is not None else delta, lse,
                delta, dq_p, dqb_p, dq_red, cnt), (*common, B, H, Lq, Lk, scale, bps),
               dict(consts, LR_GRAD=nqb, HAS_DLSE=dlse is not None, REDUCE=reduce,
                    LR_SWAP=swap))
        if nq:
            dq = dq_p if direct else dq_red
        if nqb:
            dqb = reduce_to(dqb_p, q_bias.shape).to(q_bias.dtype)
    else:
        bwd_pre[(cdiv(Lq, 64), B * H)](
            out, dout, dlse if dlse is not None else delta, delta, vmax, cs, *dstr, H, Lq,
            HEAD_D=D, HAS_DLSE=dlse is not None, ROW_SCALE=nqb_fused, BLOCK_M=64,
            BLOCK_D=plan.BLOCK_D)
    if nk or nv or nkb:
        dk = torch.empty((B, H, Lk, D), device=dev, dtype=k.dtype)
        dv = torch.empty((B, H, Lk, D), device=dev, dtype=v.dtype)
        dkb_p = (torch.empty((B, H, Lk, R), device=dev, dtype=torch.float32)
                 if nkb else plan.ptrs[2])
        grid = lambda meta: (B, kv_programs(Lk, meta["BLOCK_N"]), H)  # noqa: E731
        launch(bwd_kv_dq if fused else bwd_kv, grid, _plan.kv_key(plan, nkb, fused, nqb_fused),
               (q, k, v, *plan.ptrs, dout, lse, delta, dk, dv, dkb_p, dqa, dqba, cs),
               (*common, H, Lq, Lk, scale, D, r_pad),
               dict(consts, LR_GRAD=nkb, DQ_FUSED=fused, DQB_FUSED=nqb_fused),
               direct=not fused)
        if fused:  # one kernel: scale, cast
            dq = torch.empty((1, H, Lq, D), device=dev, dtype=q.dtype)
            torch.mul(dqa, scale, out=dq[0])
            if nqb_fused:  # the sums carry each row's scale c
                dqb = torch.div(dqba[:, :, :R], cs[:, :, None])[None]
                dqb = reduce_to(dqb, q_bias.shape).to(q_bias.dtype)
        if nkb:
            dkb = reduce_to(dkb_p, k_bias.shape).to(k_bias.dtype)
        if not nk:
            dk = None
        if not nv:
            dv = None
    if has_bias and nb:
        direct = bias.shape[0] == H
        db = torch.empty((H, Lq, Lk), device=dev, dtype=bias.dtype if direct else torch.float32)
        grid = lambda meta: (cdiv(Lq, meta["BLOCK_M"]),  # noqa: E731
                             cdiv(Lk, meta["BLOCK_N"]), H)
        launch(bwd_bias, grid, ("bias",) + plan.key,
               (q, k, v, *plan.ptrs, dout, lse, delta, db), (*common, B, H, Lq, Lk, scale),
               dict(HEAD_D=D, RANK=R, PREC=plan.prec, LR_DOT=plan.lr_dot, KAUG=plan.kaug,
                    BLOCK_D=plan.BLOCK_D))
        dbias = db if direct else reduce_to(db, bias.shape).to(bias.dtype)
    return dq, dk, dv, dbias, dqb, dkb
