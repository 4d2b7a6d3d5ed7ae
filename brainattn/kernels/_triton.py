"""Triton kernels: fused attention with dense and low-rank additive bias, forward and backward.

Layout of the work (FlashAttention-2 style, logits in base 2 inside the kernels). Every main grid
puts the batch on its fastest axis, so the programs that run together share a (head, tile) and
read the same dense-bias tile and, for broadcast queries, the same query tile from L2:

- ``_fwd``: one program per (batch, query block, head); streams key blocks, online softmax;
  writes out and the natural-log lse.
- ``_bwd_q``: one program per (batch split, query block, head); loops over the split's batches
  and over key blocks. It first forms delta = rowsum(dO * O) - dlse for its rows (no separate
  pre-pass) and stores it for ``_bwd_kv``. Queries shared by the batch (q of batch 1) are loaded
  once and their gradient is summed over the batch in registers, so no atomics and no per-batch
  copy of dq; when there are few query blocks the batch is split and the last split to finish a
  tile sums the splits' fp32 partials. With a batch-shared low-rank key factor (the pRF prior)
  the loops swap (key blocks outer) so dS is summed over the batch before the factor's dot.
- ``_bwd_kv``: one program per (batch, key block, head); loops over query blocks in the
  transposed form of the Triton tutorial (S^T = K Q^T, so P^T and dS^T feed the next dots from
  registers with no layout shuffle); dk, dv and the key factor's gradient dk_bias = dS^T q_bias.
- ``_bwd_kv_dq``: the same kernel with dq added in (``_fused_dq`` says when: many queries
  broadcast over the batch, no dense bias, head dim 64, sm_90+). Each query step also forms
  dq^T += K^T dS^T and adds it, transposed back, to an fp32 (H, Lq, D) buffer with a TMA
  reduction (a descriptor made in the kernel), so the separate dq pass, which recomputes
  q k^T and dO v^T for every batch, is not needed: 7 matmul units per step instead of 9. With
  a low-rank bias whose query factor is shared by the batch (the pRF prior) it also adds
  dq_bias = dS k_bias (a tf32 dot of fp32 dS) to an (H, Lq, R) buffer the same way. The
  batches' query sweeps start at different offsets so the programs that run together reduce
  into different rows. The order of the fp32 additions varies, so dq is not bitwise
  repeatable; ``torch.use_deterministic_algorithms(True)`` or ``BRAINATTN_DQ_FUSED=0`` keep
  the separate pass.
- ``_bwd_pre``: the delta pre-pass, used when dq is not needed or is fused.
- ``_bwd_bias``: dense-bias gradient, one program per (query block, key block, h) looping over
  the batch, so the batch sum needs no atomics and nothing of size B*H*Lq*Lk is ever formed.

Low-rank term q_bias k_bias^T: for float16/bfloat16 inputs the logits take it as one fp16
tensor-core dot of split factors (hi/lo, error ~2^-21 of |q_bias||k_bias|); for float32 inputs R
exact fp32 outer products. Without a dense bias the query factor's split carries 1/scale, so
q k^T and the low-rank term are scaled once, and the forward (scale > 0) takes the row max of
the unscaled sum: one FMA per logit for the exponent's argument. Its gradients dS k_bias and
dS^T q_bias are fp32 (tf32 for half inputs) dots on the fp32 dS; an opt-in bf16 hi/lo split of
dS (``BRAINATTN_LR_GRAD_SPLIT=1``) is correct under the interpreter but failed on the GPU (see
``_LR_SPLIT``). Head dims 48 and 96 are padded to 64 and 128 with masked loads. Strides of
broadcast dims are passed as 0; the last dim of q, k, v, dO and of the biases is contiguous (the
wrapper makes it so), and out, lse, delta and the gradient buffers are allocated contiguous.

Ragged ends: the key loops end in a TAIL_N-wide step (the smallest power of two >= 16 holding
the rest: a ViT's 962 = 15 * 64 + 2 tokens would otherwise pad 2 keys to 64), and the dk/dv
pass's last programs use one or two narrow tiles (962 keys in 128-key programs: 7 + 64 + 16).

Host path: the wrapper validates nothing (``brainattn.kernels.api`` did), caches the tuned
config per shape key and, after recording one launch per specialisation, calls the compiled
kernel's launcher directly (``_launch``: no autotuner key, no Triton binding or cache-key work;
``BRAINATTN_DIRECT_LAUNCH=0`` turns that off). Broadcast dq partials over batch splits are summed
inside the dq pass by the last split of each tile (per-tile counters that the kernel resets), so
the backward has no host-side sum. The split factors of the forward are kept for the backward.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
_AUTOTUNE = os.environ.get("BRAINATTN_AUTOTUNE", "1") != "0" and not _INTERPRET

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453


def _tail(L: int, block: int) -> int:
    """Width of the step over the last ``L % block`` keys: the smallest power of two >= 16
    holding them (``block`` when L is a multiple of it)."""
    r = L % block
    return block if r == 0 else min(block, max(16, 1 << (r - 1).bit_length()))


def _tails(L: int, block: int) -> tuple[int, int]:
    """The dk/dv pass's programs for the last ``L % block`` keys: one tile of ``_tail`` width,
    or two narrower ones when they cover less (66 keys of 128: 64 + 16 instead of 128; each
    program's work grows with its width, since it streams every query). (width, 0) for one."""
    one = _tail(L, block)
    r = L % block
    if r == 0:
        return one, 0
    t1 = max(16, 1 << (r.bit_length() - 1))
    if t1 >= r:
        return one, 0
    t2 = max(16, 1 << (r - t1 - 1).bit_length())
    return (t1, t2) if t1 + t2 < one else (one, 0)


def _kv_programs(L: int, block: int) -> int:
    """Programs along the keys in the dk/dv pass: full blocks, then one or two tail tiles."""
    t1, t2 = _tails(L, block)
    return L // block + (L % block > 0) + (t2 > 0)


def _cfgs(gpu: list[tuple[int, int, int, int]], one: tuple[int, int, int, int],
          interp: tuple[int, int, int, int] = (32, 32, 4, 1)):
    """Autotune configs (BLOCK_M, BLOCK_N, num_warps, num_stages). Without tuning: the default
    and a small fallback, of which ``_prune`` keeps the first that fits in shared memory."""
    chosen = gpu if _AUTOTUNE else [one, (64, 32, 4, 2), (32, 32, 4, 1)]
    if _INTERPRET:
        chosen = [interp]
    return [
        triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s)
        for m, n, w, s in chosen
    ]


def _prune(configs, named_args, **kwargs):
    """Drop configs whose pipelined tiles would not fit in shared memory (fp32, D=128)."""
    d = kwargs.get("BLOCK_D", named_args.get("BLOCK_D", 64))
    elt = named_args["Q"].element_size()

    def smem(c):
        m, n = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]
        return (m + n) * 2 * max(c.num_stages, 1) * d * elt

    ok = [c for c in configs if smem(c) <= 224 * 1024] or [min(configs, key=smem)]
    return ok if _AUTOTUNE else ok[:1]


_PRUNE = {"early_config_prune": _prune}
# Lists trimmed to the winners of an H200 run (2026-11-27) and their neighbours, to keep the
# tuning time of a fresh process short: fwd (128, 64, 8, 3) on vertices, (64, 64, 4, 3) on rois;
# dq (64, 64, 4, 3) everywhere; dk/dv (32, 128, 4, 3|5) on vertices, (16, 64, 4, 3) on rois.
_FWD_CONFIGS = _cfgs(
    [(128, 64, 8, 3), (64, 64, 4, 3), (128, 64, 4, 3), (128, 128, 8, 3), (64, 32, 4, 2)],
    (128, 64, 4, 3),
)
# (queries per step, keys per program): the tutorial's dk/dv shape (32, 128) first
_KV_CONFIGS = _cfgs(
    [(32, 128, 4, 3), (32, 128, 4, 5), (64, 128, 8, 3), (16, 64, 4, 3), (32, 64, 4, 3),
     (32, 64, 4, 4)],
    (64, 64, 4, 3),
    (16, 64, 4, 1),  # interpreted: 64-key programs, so the two-tile tail runs in the tests
)
# the dk/dv pass that also adds dq: 64-query tiles, 4 warps (its dq dot has M = D and
# N = BLOCK_M). On an H100 (2026-11-27, vertices backward) 32-query tiles were 7-10 % slower
# (32 x 64, 4 warps) and 50 % slower (32 x 128, 8 warps); 8 warps on 64 x 128 15-20 % slower;
# stage 2, or 3 CTAs an SM (maxnreg 168), 8-12 % slower; all correct.
_KVF_CONFIGS = _cfgs([(64, 64, 4, 3), (64, 64, 4, 4), (64, 64, 4, 5)], (64, 64, 4, 4),
                     (64, 64, 4, 1))
_Q_CONFIGS = _cfgs(
    [(64, 64, 4, 3), (64, 64, 4, 4), (128, 64, 8, 3), (64, 32, 4, 3)],
    (64, 64, 4, 3),
)
_BIAS_CONFIGS = _cfgs([(64, 64, 4, 3), (128, 64, 8, 3), (64, 128, 8, 3)], (64, 64, 4, 3))


@triton.jit
def _logits2(q, kT, qa, Bias, bias_off, QB, qb_off, KB, kb_off, KA, ka_off, offs_m, offs_n,
             mask_m, mask_n, s_bm, s_qbm, s_qbr, s_kbn, s_kbr, scale,
             HAS_BIAS: tl.constexpr, RANK: tl.constexpr, PREC: tl.constexpr,
             LR_DOT: tl.constexpr, KAUG: tl.constexpr, MASK_N: tl.constexpr):
    """Base-2 logits (BLOCK_M, BLOCK_N) in fp32; with MASK_N, key columns past Lk are -inf.

    Low-rank term: with LR_DOT, one fp16 tensor-core dot of the split factors
    qa = [q_hi, q_hi, q_lo] and ka = [k_hi, k_lo, k_hi] (error ~2^-21 of |q_bias||k_bias|);
    otherwise R exact fp32 outer products (the float32 path). Without a dense bias the host
    folds 1/scale into qa, so the scale multiplies the sum of both dots once."""
    s = tl.dot(q, kT, input_precision=PREC)
    if RANK > 0 and LR_DOT and not HAS_BIAS:
        offs_a = tl.arange(0, KAUG)
        kaT = tl.load(KA + ka_off + offs_n[None, :] * KAUG + offs_a[:, None],
                      mask=mask_n[None, :], other=0.0)
        s = tl.dot(qa, kaT, s) * (scale * 1.4426950408889634)
    elif HAS_BIAS or RANK > 0:
        s = s * scale
        if HAS_BIAS:
            bt = tl.load(Bias + bias_off + offs_m[:, None] * s_bm + offs_n[None, :],
                         mask=mask_m[:, None] & mask_n[None, :], other=0.0)
            s += bt.to(tl.float32)
        if RANK > 0:
            if LR_DOT:
                offs_a = tl.arange(0, KAUG)
                kaT = tl.load(KA + ka_off + offs_n[None, :] * KAUG + offs_a[:, None],
                              mask=mask_n[None, :], other=0.0)
                s = tl.dot(qa, kaT, s)
            else:
                for r in tl.static_range(RANK):
                    qc = tl.load(QB + qb_off + offs_m * s_qbm + r * s_qbr, mask=mask_m, other=0.0)
                    kc = tl.load(KB + kb_off + offs_n * s_kbn + r * s_kbr, mask=mask_n, other=0.0)
                    s += qc.to(tl.float32)[:, None] * kc.to(tl.float32)[None, :]
        s = s * 1.4426950408889634
    else:
        s = s * (scale * 1.4426950408889634)
    if MASK_N:
        s = tl.where(mask_n[None, :], s, float("-inf"))
    return s


@triton.jit
def _load_qa(QA, qa_off, offs_m, mask_m, LR_DOT: tl.constexpr, KAUG: tl.constexpr):
    """The query-side split factor tile (BLOCK_M, KAUG) in fp16, or a dummy scalar."""
    if LR_DOT:
        offs_a = tl.arange(0, KAUG)
        return tl.load(QA + qa_off + offs_m[:, None] * KAUG + offs_a[None, :],
                       mask=mask_m[:, None], other=0.0)
    else:
        return 0.0


@triton.jit
def _fwd_step(acc, l_i, m_i, q, qa, start_n, k_base, v_base, Bias, bias_off, QB, qb_off, KB,
              kb_off, KA, ka_off, offs_m, offs_d, mask_m, mask_d, s_kn, s_vn, s_bm,
              s_qbm, s_qbr, s_kbn, s_kbr, Lk, scale,
              HAS_BIAS: tl.constexpr, RANK: tl.constexpr, PREC: tl.constexpr,
              LR_DOT: tl.constexpr, KAUG: tl.constexpr, MASK_N: tl.constexpr,
              RAWMAX: tl.constexpr, BLOCK_N: tl.constexpr):
    """One key block of the online softmax."""
    offs_n = start_n + tl.arange(0, BLOCK_N)
    mask_n = offs_n < Lk
    # full key blocks load without a key mask (no per-step compares)
    kT_ptr = k_base + offs_n[None, :] * s_kn + offs_d[:, None]
    if MASK_N:
        kT = tl.load(kT_ptr, mask=mask_n[None, :] & mask_d[:, None], other=0.0)
    else:
        kT = tl.load(kT_ptr, mask=mask_d[:, None], other=0.0)
    if RAWMAX:
        # no dense bias and a positive scale: the row max of the raw q k^T (plus the folded
        # low-rank term) times the scale, so each logit costs one FMA (scale, minus the max)
        c = scale * 1.4426950408889634
        s = tl.dot(q, kT, input_precision=PREC)
        if RANK > 0:  # split factors, 1/scale folded into qa on the host
            offs_a = tl.arange(0, KAUG)
            kaT = tl.load(KA + ka_off + offs_n[None, :] * KAUG + offs_a[:, None],
                          mask=mask_n[None, :], other=0.0)
            s = tl.dot(qa, kaT, s)
        if MASK_N:
            s = tl.where(mask_n[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1) * c)
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(s * c - m_use[:, None])
    else:
        s = _logits2(q, kT, qa, Bias, bias_off, QB, qb_off, KB, kb_off, KA, ka_off, offs_m,
                     offs_n, mask_m, mask_n, s_bm, s_qbm, s_qbr, s_kbn, s_kbr, scale,
                     HAS_BIAS, RANK, PREC, LR_DOT, KAUG, MASK_N)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        # rows whose logits so far are all -inf: keep exp2 arguments finite
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(s - m_use[:, None])
    alpha = tl.exp2(m_i - m_use)
    l_i = l_i * alpha + tl.sum(p, 1)
    v_ptr = v_base + offs_n[:, None] * s_vn + offs_d[None, :]
    if MASK_N:
        v = tl.load(v_ptr, mask=mask_n[:, None] & mask_d[None, :], other=0.0)
    else:
        v = tl.load(v_ptr, mask=mask_d[None, :], other=0.0)
    acc = acc * alpha[:, None]
    acc = tl.dot(p.to(v.dtype), v, acc, input_precision=PREC)
    return acc, l_i, m_new


@triton.autotune(configs=_FWD_CONFIGS, prune_configs_by=_PRUNE,
                 key=["Lq", "Lk", "BLOCK_D", "HAS_BIAS", "RANK", "PREC", "LR_DOT"])
@triton.heuristics({"TAIL_N": lambda a: _tail(a["Lk"], a["BLOCK_N"])})
@triton.jit
def _fwd(Q, K, V, Bias, QB, KB, QA, KA, O, LSE,
         s_qb, s_qh, s_qm, s_kb, s_kh, s_kn, s_vb, s_vh, s_vn, s_bh, s_bm,
         s_qbb, s_qbh, s_qbm, s_qbr, s_kbb, s_kbh, s_kbn, s_kbr, s_qab, s_qah, s_kab, s_kah,
         H, Lq, Lk, scale,
         HEAD_D: tl.constexpr, HAS_BIAS: tl.constexpr, RANK: tl.constexpr, PREC: tl.constexpr,
         LR_DOT: tl.constexpr, KAUG: tl.constexpr, RAWMAX: tl.constexpr,
         BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
         TAIL_N: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    pid_m = tl.program_id(1)
    h = tl.program_id(2).to(tl.int64)
    bh = b * H + h
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask_m = offs_m < Lq
    mask_d = offs_d < HEAD_D
    q = tl.load(Q + b * s_qb + h * s_qh + offs_m[:, None] * s_qm + offs_d[None, :],
                mask=mask_m[:, None] & mask_d[None, :], other=0.0)
    k_base = K + b * s_kb + h * s_kh
    v_base = V + b * s_vb + h * s_vh
    bias_off = h * s_bh
    qb_off = b * s_qbb + h * s_qbh
    kb_off = b * s_kbb + h * s_kbh
    qa = _load_qa(QA, b * s_qab + h * s_qah, offs_m, mask_m, LR_DOT, KAUG)
    ka_off = b * s_kab + h * s_kah
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    # full key blocks skip the -inf masking of the logits; the ragged rest (TAIL_N wide, the
    # smallest power of two >= 16 holding it: a ViT's 1 + 31^2 = 962 tokens leave 2 keys, which
    # a BLOCK_N-wide step would pad to 64) applies it
    n_full = (Lk // BLOCK_N) * BLOCK_N
    for start_n in range(0, n_full, BLOCK_N):
        acc, l_i, m_i = _fwd_step(acc, l_i, m_i, q, qa, start_n, k_base, v_base, Bias, bias_off,
                                  QB, qb_off, KB, kb_off, KA, ka_off, offs_m, offs_d, mask_m,
                                  mask_d, s_kn, s_vn, s_bm, s_qbm, s_qbr, s_kbn, s_kbr, Lk,
                                  scale, HAS_BIAS, RANK, PREC, LR_DOT, KAUG, False, RAWMAX,
                                  BLOCK_N)
    if n_full < Lk:
        acc, l_i, m_i = _fwd_step(acc, l_i, m_i, q, qa, n_full, k_base, v_base, Bias, bias_off,
                                  QB, qb_off, KB, kb_off, KA, ka_off, offs_m, offs_d, mask_m,
                                  mask_d, s_kn, s_vn, s_bm, s_qbm, s_qbr, s_kbn, s_kbr, Lk,
                                  scale, HAS_BIAS, RANK, PREC, LR_DOT, KAUG, True, RAWMAX,
                                  TAIL_N)
    out = acc / l_i[:, None]
    tl.store(O + (bh * Lq + offs_m[:, None]) * HEAD_D + offs_d[None, :],
             out.to(O.dtype.element_ty), mask=mask_m[:, None] & mask_d[None, :])
    lse = (m_i + tl.log2(l_i)) * 0.6931471805599453
    tl.store(LSE + bh * Lq + offs_m, lse, mask=mask_m)


@triton.jit
def _bwd_pre(O, DO, DLSE, DELTA, s_db, s_dh, s_dm, H, Lq,
             HEAD_D: tl.constexpr, HAS_DLSE: tl.constexpr, BLOCK_M: tl.constexpr,
             BLOCK_D: tl.constexpr):
    """delta = rowsum(dO * O) - dlse, for a backward that does not run the dq pass."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    b = bh // H
    h = bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_m < Lq)[:, None] & (offs_d < HEAD_D)[None, :]
    o = tl.load(O + (bh * Lq + offs_m[:, None]) * HEAD_D + offs_d[None, :],
                mask=mask, other=0.0).to(tl.float32)
    do = tl.load(DO + b * s_db + h * s_dh + offs_m[:, None] * s_dm + offs_d[None, :],
                 mask=mask, other=0.0).to(tl.float32)
    delta = tl.sum(o * do, 1)
    row = bh * Lq + offs_m
    if HAS_DLSE:
        delta -= tl.load(DLSE + row, mask=offs_m < Lq, other=0.0)
    tl.store(DELTA + row, delta, mask=offs_m < Lq)


@triton.jit
def _lr_grad(acc, ds, G, g_off, F, f_off, offs_r, mask_r, s_r, s_c, RANK: tl.constexpr,
             BPREC: tl.constexpr, LR_GDOT: tl.constexpr, GW: tl.constexpr):
    """acc (X, GW) += ds @ factor for a low-rank gradient; ds (X, Y) fp32, factor rows offs_r.

    With LR_GDOT the factor is G, rows [f_hi | f_lo] in bf16 (GW columns each, zero padded),
    and ds is split the same way: acc += ds_hi f_hi + ds_hi f_lo + ds_lo f_hi, three bf16
    tensor-core dots (relative error ~2^-16, vs 2^-8 for the bf16 inputs themselves).
    Otherwise one fp32 (tf32 for half inputs) dot with F, the (Y, R) factor with strides
    s_r, s_c."""
    offs_c = tl.arange(0, GW)
    if LR_GDOT:
        ptr = G + g_off + offs_r[:, None] * (2 * GW) + offs_c[None, :]
        g_hi = tl.load(ptr, mask=mask_r[:, None], other=0.0)
        g_lo = tl.load(ptr + GW, mask=mask_r[:, None], other=0.0)
        ds_hi = ds.to(G.dtype.element_ty)
        ds_lo = (ds - ds_hi.to(tl.float32)).to(G.dtype.element_ty)
        acc = tl.dot(ds_hi, g_hi, acc)
        acc = tl.dot(ds_hi, g_lo, acc)
        acc = tl.dot(ds_lo, g_hi, acc)
    else:
        f = tl.load(F + f_off + offs_r[:, None] * s_r + offs_c[None, :] * s_c,
                    mask=mask_r[:, None] & (offs_c < RANK)[None, :], other=0.0)
        acc = tl.dot(ds, f.to(tl.float32), acc, input_precision=BPREC)
    return acc


@triton.jit
def _form_delta(O, DLSE, DELTA, row, do, offs_d, mask_m, mask_md, HEAD_D: tl.constexpr,
                HAS_DLSE: tl.constexpr):
    """delta = rowsum(dO * O) - dlse for the rows ``row``; stored for the dk/dv pass."""
    o = tl.load(O + row[:, None] * HEAD_D + offs_d[None, :], mask=mask_md, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    if HAS_DLSE:
        delta -= tl.load(DLSE + row, mask=mask_m, other=0.0)
    tl.store(DELTA + row, delta, mask=mask_m)
    return delta


@triton.jit
def _dq_tile(dq, q, qa, do, lse2, delta, offs_n, mask_n, k_base, v_base, Bias, bias_off, QB,
             qb_off, KB, kb_off, KA, ka_off, offs_m, offs_d, mask_m, mask_d, s_kn, s_vn, s_bm,
             s_qbm, s_qbr, s_kbn, s_kbr, scale,
             HAS_BIAS: tl.constexpr, RANK: tl.constexpr, PREC: tl.constexpr,
             LR_DOT: tl.constexpr, KAUG: tl.constexpr, MASK_N: tl.constexpr):
    """dq += dS K for one (query block, key block) of one batch; returns (dq, dS fp32). A full
    key block (not MASK_N) loads k and v without a key mask (no per-step compares)."""
    k_ptr = k_base + offs_n[:, None] * s_kn + offs_d[None, :]
    v_ptr = v_base + offs_n[:, None] * s_vn + offs_d[None, :]
    if MASK_N:
        mask_nd = mask_n[:, None] & mask_d[None, :]
        k = tl.load(k_ptr, mask=mask_nd, other=0.0)
        v = tl.load(v_ptr, mask=mask_nd, other=0.0)
    else:
        k = tl.load(k_ptr, mask=mask_d[None, :], other=0.0)
        v = tl.load(v_ptr, mask=mask_d[None, :], other=0.0)
    s = _logits2(q, tl.trans(k), qa, Bias, bias_off, QB, qb_off, KB, kb_off, KA, ka_off, offs_m,
                 offs_n, mask_m, mask_n, s_bm, s_qbm, s_qbr, s_kbn, s_kbr, scale,
                 HAS_BIAS, RANK, PREC, LR_DOT, KAUG, MASK_N)
    p = tl.exp2(s - lse2[:, None])
    dp = tl.dot(do, tl.trans(v), input_precision=PREC)
    ds = p * (dp - delta[:, None])
    dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=PREC)
    return dq, ds


@triton.jit
def _dq_step(dq, dqb, q, qa, do, lse2, delta, start_n, k_base, v_base, Bias, bias_off, QB,
             qb_off, KB, kb_off, KA, ka_off, KG, kg_off, offs_m, offs_d, mask_m, mask_d, s_kn,
             s_vn, s_bm, s_qbm, s_qbr, s_kbn, s_kbr, Lk, scale,
             HAS_BIAS: tl.constexpr, RANK: tl.constexpr, PREC: tl.constexpr,
             BPREC: tl.constexpr, LR_DOT: tl.constexpr, KAUG: tl.constexpr,
             LR_GRAD: tl.constexpr, LR_GDOT: tl.constexpr, GW: tl.constexpr,
             MASK_N: tl.constexpr, BLOCK_N: tl.constexpr):
    """One key block of the dq pass: dq += dS K, dq_bias += dS k_bias."""
    offs_n = start_n + tl.arange(0, BLOCK_N)
    mask_n = offs_n < Lk
    dq, ds = _dq_tile(dq, q, qa, do, lse2, delta, offs_n, mask_n, k_base, v_base, Bias,
                      bias_off, QB, qb_off, KB, kb_off, KA, ka_off, offs_m, offs_d, mask_m,
                      mask_d, s_kn, s_vn, s_bm, s_qbm, s_qbr, s_kbn, s_kbr, scale,
                      HAS_BIAS, RANK, PREC, LR_DOT, KAUG, MASK_N)
    if LR_GRAD:
        dqb = _lr_grad(dqb, ds, KG, kg_off, KB, kb_off, offs_n, mask_n, s_kbn, s_kbr, RANK,
                       BPREC, LR_GDOT, GW)
    return dq, dqb


@triton.jit
def _dq_keys(dq, dqb, q, qa, b_lo, nb, start_n, K, V, DO, LSE, DELTA, Bias, bias_off, QB, KB,
             KA, KG, h, offs_m, offs_d, mask_m, mask_d, s_kb, s_kh, s_kn, s_vb, s_vh, s_vn, s_bm,
             s_qbb, s_qbh, s_qbm, s_qbr, s_kbb, s_kbh, s_kbn, s_kbr, s_kab, s_kah, s_db, s_dh,
             s_dm, s_gb, s_gh, H, Lq, Lk, scale,
             HAS_BIAS: tl.constexpr, RANK: tl.constexpr, PREC: tl.constexpr,
             BPREC: tl.constexpr, LR_DOT: tl.constexpr, KAUG: tl.constexpr,
             LR_GDOT: tl.constexpr, GW: tl.constexpr, MASK_N: tl.constexpr,
             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """One key block of the dq pass for every batch of the split (batches inner): dq += dS K
    per batch, and the low-rank gradient dq_bias += (sum over the batch of dS) k_bias once,
    since k_bias is the same for every batch (one factor dot per key block, not per batch)."""
    offs_n = start_n + tl.arange(0, BLOCK_N)
    mask_n = offs_n < Lk
    mask_md = mask_m[:, None] & mask_d[None, :]
    dss = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for bi in range(0, nb):
        b = b_lo + bi
        row = (b * H + h) * Lq + offs_m
        do = tl.load(DO + b * s_db + h * s_dh + offs_m[:, None] * s_dm + offs_d[None, :],
                     mask=mask_md, other=0.0)
        delta = tl.load(DELTA + row, mask=mask_m, other=0.0)
        lse2 = tl.load(LSE + row, mask=mask_m, other=0.0) * 1.4426950408889634
        dq, ds = _dq_tile(dq, q, qa, do, lse2, delta, offs_n, mask_n, K + b * s_kb + h * s_kh,
                          V + b * s_vb + h * s_vh, Bias, bias_off, QB, b * s_qbb + h * s_qbh,
                          KB, b * s_kbb + h * s_kbh, KA, b * s_kab + h * s_kah, offs_m, offs_d,
                          mask_m, mask_d, s_kn, s_vn, s_bm, s_qbm, s_qbr, s_kbn, s_kbr, scale,
                          HAS_BIAS, RANK, PREC, LR_DOT, KAUG, MASK_N)
        dss += ds
    dqb = _lr_grad(dqb, dss, KG, b_lo * s_gb + h * s_gh, KB, b_lo * s_kbb + h * s_kbh, offs_n,
                   mask_n, s_kbn, s_kbr, RANK, BPREC, LR_GDOT, GW)
    return dq, dqb


@triton.autotune(configs=_Q_CONFIGS, prune_configs_by=_PRUNE,
                 key=["Lq", "Lk", "BLOCK_D", "HAS_BIAS", "RANK", "PREC", "LR_DOT", "LR_GRAD"])
@triton.heuristics({"TAIL_N": lambda a: _tail(a["Lk"], a["BLOCK_N"])})
@triton.jit
def _bwd_q(Q, K, V, Bias, QB, KB, QA, KA, KG, DO, O, DLSE, LSE, DELTA, DQP, DQBP, DQ, CNT,
           s_qb, s_qh, s_qm, s_kb, s_kh, s_kn, s_vb, s_vh, s_vn, s_bh, s_bm,
           s_qbb, s_qbh, s_qbm, s_qbr, s_kbb, s_kbh, s_kbn, s_kbr, s_qab, s_qah, s_kab, s_kah,
           s_db, s_dh, s_dm, s_gb, s_gh,
           B, H, Lq, Lk, scale, batch_per_split,
           HEAD_D: tl.constexpr, HAS_BIAS: tl.constexpr, RANK: tl.constexpr,
           PREC: tl.constexpr, BPREC: tl.constexpr, LR_DOT: tl.constexpr, KAUG: tl.constexpr,
           LR_GRAD: tl.constexpr, LR_GDOT: tl.constexpr, GW: tl.constexpr,
           FUSE_DELTA: tl.constexpr, HAS_DLSE: tl.constexpr, REDUCE: tl.constexpr,
           LR_SWAP: tl.constexpr,
           BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
           TAIL_N: tl.constexpr):
    split = tl.program_id(0)
    pid_m = tl.program_id(1)
    h = tl.program_id(2).to(tl.int64)
    b_lo = split * batch_per_split
    b_hi = tl.minimum(b_lo + batch_per_split, B)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask_m = offs_m < Lq
    mask_d = offs_d < HEAD_D
    mask_md = mask_m[:, None] & mask_d[None, :]
    # q (and q_bias) are the same for every batch of the split: broadcast, or one batch per split
    q = tl.load(Q + b_lo.to(tl.int64) * s_qb + h * s_qh + offs_m[:, None] * s_qm
                + offs_d[None, :], mask=mask_md, other=0.0)
    qa = _load_qa(QA, b_lo.to(tl.int64) * s_qab + h * s_qah, offs_m, mask_m, LR_DOT, KAUG)
    bias_off = h * s_bh
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    dqb = tl.zeros([BLOCK_M, GW], tl.float32)
    n_full = (Lk // BLOCK_N) * BLOCK_N
    if LR_SWAP:
        # low-rank gradient with a batch-shared key factor: delta first, then key blocks outer
        # and batches inner, so dS is summed over the batch before its one factor dot
        for bi in range(0, b_hi - b_lo):
            b = b_lo.to(tl.int64) + bi
            row = (b * H + h) * Lq + offs_m
            do = tl.load(DO + b * s_db + h * s_dh + offs_m[:, None] * s_dm + offs_d[None, :],
                         mask=mask_md, other=0.0)
            _form_delta(O, DLSE, DELTA, row, do, offs_d, mask_m, mask_md, HEAD_D, HAS_DLSE)
        tl.debug_barrier()  # this program's delta stores before its own loads below
        b0 = b_lo.to(tl.int64)
        nb = b_hi - b_lo
        for start_n in range(0, n_full, BLOCK_N):
            dq, dqb = _dq_keys(dq, dqb, q, qa, b0, nb, start_n, K, V, DO, LSE, DELTA, Bias,
                               bias_off, QB, KB, KA, KG, h, offs_m, offs_d, mask_m, mask_d,
                               s_kb, s_kh, s_kn, s_vb, s_vh, s_vn, s_bm, s_qbb, s_qbh, s_qbm,
                               s_qbr, s_kbb, s_kbh, s_kbn, s_kbr, s_kab, s_kah, s_db, s_dh,
                               s_dm, s_gb, s_gh, H, Lq, Lk, scale, HAS_BIAS, RANK, PREC, BPREC,
                               LR_DOT, KAUG, LR_GDOT, GW, False, BLOCK_M, BLOCK_N)
        if n_full < Lk:
            dq, dqb = _dq_keys(dq, dqb, q, qa, b0, nb, n_full, K, V, DO, LSE, DELTA, Bias,
                               bias_off, QB, KB, KA, KG, h, offs_m, offs_d, mask_m, mask_d,
                               s_kb, s_kh, s_kn, s_vb, s_vh, s_vn, s_bm, s_qbb, s_qbh, s_qbm,
                               s_qbr, s_kbb, s_kbh, s_kbn, s_kbr, s_kab, s_kah, s_db, s_dh,
                               s_dm, s_gb, s_gh, H, Lq, Lk, scale, HAS_BIAS, RANK, PREC, BPREC,
                               LR_DOT, KAUG, LR_GDOT, GW, True, BLOCK_M, TAIL_N)
    else:
        for bi in range(0, b_hi - b_lo):
            b = b_lo.to(tl.int64) + bi
            do = tl.load(DO + b * s_db + h * s_dh + offs_m[:, None] * s_dm + offs_d[None, :],
                         mask=mask_md, other=0.0)
            row = (b * H + h) * Lq + offs_m
            if FUSE_DELTA:
                delta = _form_delta(O, DLSE, DELTA, row, do, offs_d, mask_m, mask_md, HEAD_D,
                                    HAS_DLSE)
            else:
                delta = tl.load(DELTA + row, mask=mask_m, other=0.0)
            lse2 = tl.load(LSE + row, mask=mask_m, other=0.0) * 1.4426950408889634
            k_base = K + b * s_kb + h * s_kh
            v_base = V + b * s_vb + h * s_vh
            qb_off = b * s_qbb + h * s_qbh
            kb_off = b * s_kbb + h * s_kbh
            ka_off = b * s_kab + h * s_kah
            kg_off = b * s_gb + h * s_gh
            for start_n in range(0, n_full, BLOCK_N):
                dq, dqb = _dq_step(dq, dqb, q, qa, do, lse2, delta, start_n, k_base, v_base,
                                   Bias, bias_off, QB, qb_off, KB, kb_off, KA, ka_off, KG,
                                   kg_off, offs_m, offs_d, mask_m, mask_d, s_kn, s_vn, s_bm,
                                   s_qbm, s_qbr, s_kbn, s_kbr, Lk, scale, HAS_BIAS, RANK, PREC,
                                   BPREC, LR_DOT, KAUG, LR_GRAD, LR_GDOT, GW, False, BLOCK_N)
            if n_full < Lk:
                dq, dqb = _dq_step(dq, dqb, q, qa, do, lse2, delta, n_full, k_base, v_base,
                                   Bias, bias_off, QB, qb_off, KB, kb_off, KA, ka_off, KG,
                                   kg_off, offs_m, offs_d, mask_m, mask_d, s_kn, s_vn, s_bm,
                                   s_qbm, s_qbr, s_kbn, s_kbr, Lk, scale, HAS_BIAS, RANK, PREC,
                                   BPREC, LR_DOT, KAUG, LR_GRAD, LR_GDOT, GW, True, TAIL_N)
    dq = dq * scale
    part = split.to(tl.int64) * H + h
    tl.store(DQP + (part * Lq + offs_m[:, None]) * HEAD_D + offs_d[None, :],
             dq.to(DQP.dtype.element_ty), mask=mask_md)
    if REDUCE:
        # the last of the batch splits to finish this (head, query block) sums the fp32
        # partials in split order (deterministic) and stores dq in q's dtype; then it resets
        # the counter for the next call. The barrier and the acq_rel atomic publish this
        # program's partial before it is counted.
        n_split = tl.num_programs(0)
        cnt = CNT + h * tl.num_programs(1) + pid_m
        tl.debug_barrier()
        done = tl.atomic_add(cnt, 1, sem="acq_rel")
        if done == n_split - 1:
            tot = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
            for sp in range(0, n_split):
                tot += tl.load(DQP + ((sp * H + h) * Lq + offs_m[:, None]) * HEAD_D
                               + offs_d[None, :], mask=mask_md, other=0.0, cache_modifier=".cg")
            tl.store(DQ + (h * Lq + offs_m[:, None]) * HEAD_D + offs_d[None, :],
                     tot.to(DQ.dtype.element_ty), mask=mask_md)
            tl.atomic_xchg(cnt, 0, sem="relaxed")
    if LR_GRAD:
        offs_g = tl.arange(0, GW)
        tl.store(DQBP + (part * Lq + offs_m[:, None]) * RANK + offs_g[None, :], dqb,
                 mask=mask_m[:, None] & (offs_g < RANK)[None, :])


@triton.jit
def _logits2T(k, qT, ka, Bias, bias_off, QB, qb_off, KB, kb_off, QA, qa_off, offs_m, offs_n,
              mask_m, mask_n, s_bm, s_qbm, s_qbr, s_kbn, s_kbr, scale,
              HAS_BIAS: tl.constexpr, RANK: tl.constexpr, PREC: tl.constexpr,
              LR_DOT: tl.constexpr, KAUG: tl.constexpr):
    """Transposed base-2 logits (BLOCK_N, BLOCK_M), no key masking (the dk/dv pass stores only
    valid keys' rows, and a row depends only on its own key). Folded 1/scale as in
    ``_logits2``."""
    s = tl.dot(k, qT, input_precision=PREC)
    if RANK > 0 and LR_DOT and not HAS_BIAS:
        offs_a = tl.arange(0, KAUG)
        qaT = tl.load(QA + qa_off + offs_m[None, :] * KAUG + offs_a[:, None],
                      mask=mask_m[None, :], other=0.0)
        s = tl.dot(ka, qaT, s) * (scale * 1.4426950408889634)
    elif HAS_BIAS or RANK > 0:
        s = s * scale
        if HAS_BIAS:
            bt = tl.load(Bias + bias_off + offs_m[None, :] * s_bm + offs_n[:, None],
                         mask=mask_m[None, :] & mask_n[:, None], other=0.0)
            s += bt.to(tl.float32)
        if RANK > 0:
            if LR_DOT:
                offs_a = tl.arange(0, KAUG)
                qaT = tl.load(QA + qa_off + offs_m[None, :] * KAUG + offs_a[:, None],
                              mask=mask_m[None, :], other=0.0)
                s = tl.dot(ka, qaT, s)
            else:
                for r in tl.static_range(RANK):
                    qc = tl.load(QB + qb_off + offs_m * s_qbm + r * s_qbr, mask=mask_m, other=0.0)
                    kc = tl.load(KB + kb_off + offs_n * s_kbn + r * s_kbr, mask=mask_n, other=0.0)
                    s += kc.to(tl.float32)[:, None] * qc.to(tl.float32)[None, :]
        s = s * 1.4426950408889634
    else:
        s = s * (scale * 1.4426950408889634)
    return s


@triton.jit
def _kv_step(dk, dv, dkb, start_m, k, v, ka, q_base, do_base, LSE, DELTA, row_base, Bias,
             bias_off, QB, qb_off, KB, kb_off, QA, qa_off, QG, qg_off, offs_n, mask_n, offs_d,
             mask_d, s_qm, s_dm, s_bm, s_qbm, s_qbr, s_kbn, s_kbr, Lq, scale,
             HAS_BIAS: tl.constexpr, RANK: tl.constexpr, PREC: tl.constexpr,
             BPREC: tl.constexpr, LR_DOT: tl.constexpr, KAUG: tl.constexpr,
             LR_GRAD: tl.constexpr, LR_GDOT: tl.constexpr, GW: tl.constexpr,
             MASK_M: tl.constexpr, BLOCK_M: tl.constexpr, dqd=None, h32=0, kT=None,
             DQ_FUSED: tl.constexpr = False, dqbd=None, kbf=None,
             DQB_FUSED: tl.constexpr = False):
    """One query block of the dk/dv pass: dv += P^T dO, dk += dS^T Q (and dk_bias). A full
    block (not MASK_M) loads q, dO, lse and delta without a query mask. With DQ_FUSED also
    dq^T += K^T dS^T, added to the (H, Lq, D) fp32 accumulator by a TMA reduction (dqd); with
    DQB_FUSED also dq_bias += dS k_bias (fp32 dS, the key factor kbf) into (H, Lq, R) (dqbd)."""
    offs_m = start_m + tl.arange(0, BLOCK_M)
    mask_m = offs_m < Lq
    qT_ptr = q_base + offs_m[None, :] * s_qm + offs_d[:, None]
    do_ptr = do_base + offs_m[:, None] * s_dm + offs_d[None, :]
    if MASK_M:
        qT = tl.load(qT_ptr, mask=mask_m[None, :] & mask_d[:, None], other=0.0)
        do = tl.load(do_ptr, mask=mask_m[:, None] & mask_d[None, :], other=0.0)
        # past-the-end queries: lse = +inf gives them p = 0 with no extra select
        lse2 = tl.load(LSE + row_base + offs_m, mask=mask_m, other=float("inf"))
        delta = tl.load(DELTA + row_base + offs_m, mask=mask_m, other=0.0)
    else:
        qT = tl.load(qT_ptr, mask=mask_d[:, None], other=0.0)
        do = tl.load(do_ptr, mask=mask_d[None, :], other=0.0)
        lse2 = tl.load(LSE + row_base + offs_m)
        delta = tl.load(DELTA + row_base + offs_m)
    lse2 = lse2 * 1.4426950408889634
    sT = _logits2T(k, qT, ka, Bias, bias_off, QB, qb_off, KB, kb_off, QA, qa_off, offs_m,
                   offs_n, mask_m, mask_n, s_bm, s_qbm, s_qbr, s_kbn, s_kbr, scale,
                   HAS_BIAS, RANK, PREC, LR_DOT, KAUG)
    pT = tl.exp2(sT - lse2[None, :])
    dv = tl.dot(pT.to(do.dtype), do, dv, input_precision=PREC)
    dpT = tl.dot(v, tl.trans(do), input_precision=PREC)
    dsT = pT * (dpT - delta[None, :])
    dk = tl.dot(dsT.to(qT.dtype), tl.trans(qT), dk, input_precision=PREC)
    if DQ_FUSED:  # transposed, so the dot's M is D (a wgmma) and dS^T is its B operand as is
        dqT = tl.dot(kT, dsT.to(k.dtype), input_precision=PREC)
        # transposed back on its way to the TMA: (H, Lq, D) rows, so the epilogue is a plain
        # scale and cast (the (H, D, Lq) layout took 2-5 % longer per step, H100)
        dqd.atomic_add([h32, start_m, 0], tl.reshape(tl.trans(dqT), [1, BLOCK_M, dqT.shape[0]]))
    if DQB_FUSED:  # (BLOCK_M, GW): the box's columns past R fall outside the buffer (clipped)
        dqb = tl.dot(tl.trans(dsT), kbf, input_precision=BPREC)
        dqbd.atomic_add([h32, start_m, 0], tl.reshape(dqb, [1, BLOCK_M, GW]))
    if LR_GRAD:
        dkb = _lr_grad(dkb, dsT, QG, qg_off, QB, qb_off, offs_m, mask_m, s_qbm, s_qbr, RANK,
                       BPREC, LR_GDOT, GW)
    return dk, dv, dkb


@triton.jit
def _kv_block(Q, K, V, Bias, QB, KB, QA, KA, QG, DO, LSE, DELTA, DK, DV, DKB, DQA, DQBA,
              s_qb, s_qh, s_qm, s_kb, s_kh, s_kn, s_vb, s_vh, s_vn, s_bh, s_bm,
              s_qbb, s_qbh, s_qbm, s_qbr, s_kbb, s_kbh, s_kbn, s_kbr, s_qab, s_qah, s_kab, s_kah,
              s_db, s_dh, s_dm, s_gb, s_gh,
              b, h, start_n, H, Lq, Lk, scale, s_dqa, s_dqb,
              HEAD_D: tl.constexpr, HAS_BIAS: tl.constexpr, RANK: tl.constexpr,
              PREC: tl.constexpr, BPREC: tl.constexpr, LR_DOT: tl.constexpr,
              KAUG: tl.constexpr, LR_GRAD: tl.constexpr, LR_GDOT: tl.constexpr,
              GW: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
              BLOCK_N: tl.constexpr, DQ_FUSED: tl.constexpr, DQB_FUSED: tl.constexpr):
    """dk, dv (and dk_bias) of the BLOCK_N keys from start_n of one (batch, head); with
    DQ_FUSED (DQB_FUSED) also their share of dq (dq_bias), see ``_kv_step``."""
    bh = b * H + h
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mask_n = offs_n < Lk
    mask_d = offs_d < HEAD_D
    mask_nd = mask_n[:, None] & mask_d[None, :]
    k = tl.load(K + b * s_kb + h * s_kh + offs_n[:, None] * s_kn + offs_d[None, :],
                mask=mask_nd, other=0.0)
    v = tl.load(V + b * s_vb + h * s_vh + offs_n[:, None] * s_vn + offs_d[None, :],
                mask=mask_nd, other=0.0)
    q_base = Q + b * s_qb + h * s_qh
    do_base = DO + b * s_db + h * s_dh
    row_base = bh * Lq
    bias_off = h * s_bh
    qb_off = b * s_qbb + h * s_qbh
    kb_off = b * s_kbb + h * s_kbh
    qa_off = b * s_qab + h * s_qah
    ka = tl.zeros([BLOCK_N, KAUG], tl.float16)
    if LR_DOT:  # the key-side split factor is the same for every query block
        ka = tl.load(KA + b * s_kab + h * s_kah + offs_n[:, None] * KAUG
                     + tl.arange(0, KAUG)[None, :], mask=mask_n[:, None], other=0.0)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dkb = tl.zeros([BLOCK_N, GW], tl.float32)
    qg_off = b * s_gb + h * s_gh
    # full query blocks load without a query mask (no per-step compares); then the rest
    m_full = (Lq // BLOCK_M) * BLOCK_M
    dqd = DQA
    kT = k
    h32 = 0
    rot = 0
    if DQ_FUSED:
        # broadcast queries: every (batch, key block) program adds to the same dq rows, so
        # each batch starts its query sweep at its own offset (the programs that run together
        # then add to different rows: 10.3 -> 9.9 ms on vertices, H100); the TMA clips the
        # last block's rows at Lq
        dqd = tl.make_tensor_descriptor(DQA, shape=[H, Lq, HEAD_D],
                                        strides=[Lq * s_dqa, s_dqa, 1],
                                        block_shape=[1, BLOCK_M, BLOCK_D])
        kT = tl.trans(k)
        h32 = h.to(tl.int32)
        rot = ((b.to(tl.int32) * (Lq // BLOCK_M)) // tl.num_programs(0)) * BLOCK_M
    dqbd = DQBA
    kbf = dkb
    if DQB_FUSED:  # (H, Lq, R) rows of s_dqb >= R columns (16 bytes); the key factor in fp32
        dqbd = tl.make_tensor_descriptor(DQBA, shape=[H, Lq, RANK], strides=[Lq * s_dqb, s_dqb, 1],
                                         block_shape=[1, BLOCK_M, GW])
        offs_g = tl.arange(0, GW)
        kbf = tl.load(KB + kb_off + offs_n[:, None] * s_kbn + offs_g[None, :] * s_kbr,
                      mask=mask_n[:, None] & (offs_g < RANK)[None, :], other=0.0).to(tl.float32)
    for i in range(0, m_full, BLOCK_M):
        start_m = i + rot
        if DQ_FUSED:
            start_m = tl.where(start_m >= m_full, start_m - m_full, start_m)
        dk, dv, dkb = _kv_step(dk, dv, dkb, start_m, k, v, ka, q_base, do_base, LSE, DELTA,
                               row_base, Bias, bias_off, QB, qb_off, KB, kb_off, QA, qa_off, QG,
                               qg_off, offs_n, mask_n, offs_d, mask_d, s_qm, s_dm, s_bm, s_qbm,
                               s_qbr, s_kbn, s_kbr, Lq, scale, HAS_BIAS, RANK, PREC, BPREC,
                               LR_DOT, KAUG, LR_GRAD, LR_GDOT, GW, False, BLOCK_M, dqd, h32, kT,
                               DQ_FUSED, dqbd, kbf, DQB_FUSED)
    if m_full < Lq:
        dk, dv, dkb = _kv_step(dk, dv, dkb, m_full, k, v, ka, q_base, do_base, LSE, DELTA,
                               row_base, Bias, bias_off, QB, qb_off, KB, kb_off, QA, qa_off, QG,
                               qg_off, offs_n, mask_n, offs_d, mask_d, s_qm, s_dm, s_bm, s_qbm,
                               s_qbr, s_kbn, s_kbr, Lq, scale, HAS_BIAS, RANK, PREC, BPREC,
                               LR_DOT, KAUG, LR_GRAD, LR_GDOT, GW, True, BLOCK_M, dqd, h32, kT,
                               DQ_FUSED, dqbd, kbf, DQB_FUSED)
    dk = dk * scale
    nd = (bh * Lk + offs_n[:, None]) * HEAD_D + offs_d[None, :]
    tl.store(DK + nd, dk.to(DK.dtype.element_ty), mask=mask_nd)
    tl.store(DV + nd, dv.to(DV.dtype.element_ty), mask=mask_nd)
    if LR_GRAD:
        offs_g = tl.arange(0, GW)
        tl.store(DKB + (bh * Lk + offs_n[:, None]) * RANK + offs_g[None, :], dkb,
                 mask=mask_n[:, None] & (offs_g < RANK)[None, :])


@triton.jit
def _bwd_kv_fn(Q, K, V, Bias, QB, KB, QA, KA, QG, DO, LSE, DELTA, DK, DV, DKB, DQA, DQBA,
            s_qb, s_qh, s_qm, s_kb, s_kh, s_kn, s_vb, s_vh, s_vn, s_bh, s_bm,
            s_qbb, s_qbh, s_qbm, s_qbr, s_kbb, s_kbh, s_kbn, s_kbr, s_qab, s_qah, s_kab, s_kah,
            s_db, s_dh, s_dm, s_gb, s_gh,
            H, Lq, Lk, scale, s_dqa, s_dqb,
            HEAD_D: tl.constexpr, HAS_BIAS: tl.constexpr, RANK: tl.constexpr,
            PREC: tl.constexpr, BPREC: tl.constexpr, LR_DOT: tl.constexpr, KAUG: tl.constexpr,
            LR_GRAD: tl.constexpr, LR_GDOT: tl.constexpr, GW: tl.constexpr,
            BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
            TAIL_N: tl.constexpr, TAIL2_N: tl.constexpr, DQ_FUSED: tl.constexpr,
            DQB_FUSED: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    pid_n = tl.program_id(1)
    h = tl.program_id(2).to(tl.int64)
    start_n = pid_n * BLOCK_N
    n_full = Lk // BLOCK_N
    # full programs, then the last keys in one TAIL_N-wide tile (BLOCK_N when the rest needs
    # it), then, with TAIL2_N, a second narrow one (never a mostly empty BLOCK_N-wide tile)
    if pid_n < n_full:
        _kv_block(Q, K, V, Bias, QB, KB, QA, KA, QG, DO, LSE, DELTA, DK, DV, DKB, DQA, DQBA, s_qb,
                  s_qh, s_qm, s_kb, s_kh, s_kn, s_vb, s_vh, s_vn, s_bh, s_bm, s_qbb, s_qbh,
                  s_qbm, s_qbr, s_kbb, s_kbh, s_kbn, s_kbr, s_qab, s_qah, s_kab, s_kah, s_db,
                  s_dh, s_dm, s_gb, s_gh, b, h, start_n, H, Lq, Lk, scale, s_dqa, s_dqb, HEAD_D,
                  HAS_BIAS, RANK, PREC, BPREC, LR_DOT, KAUG, LR_GRAD, LR_GDOT, GW, BLOCK_D,
                  BLOCK_M, BLOCK_N, DQ_FUSED, DQB_FUSED)
    elif pid_n == n_full:
        _kv_block(Q, K, V, Bias, QB, KB, QA, KA, QG, DO, LSE, DELTA, DK, DV, DKB, DQA, DQBA, s_qb,
                  s_qh, s_qm, s_kb, s_kh, s_kn, s_vb, s_vh, s_vn, s_bh, s_bm, s_qbb, s_qbh,
                  s_qbm, s_qbr, s_kbb, s_kbh, s_kbn, s_kbr, s_qab, s_qah, s_kab, s_kah, s_db,
                  s_dh, s_dm, s_gb, s_gh, b, h, start_n, H, Lq, Lk, scale, s_dqa, s_dqb, HEAD_D,
                  HAS_BIAS, RANK, PREC, BPREC, LR_DOT, KAUG, LR_GRAD, LR_GDOT, GW, BLOCK_D,
                  BLOCK_M, TAIL_N, DQ_FUSED, DQB_FUSED)
    elif TAIL2_N > 0:
        start_2 = n_full * BLOCK_N + TAIL_N
        _kv_block(Q, K, V, Bias, QB, KB, QA, KA, QG, DO, LSE, DELTA, DK, DV, DKB, DQA, DQBA, s_qb,
                  s_qh, s_qm, s_kb, s_kh, s_kn, s_vb, s_vh, s_vn, s_bh, s_bm, s_qbb, s_qbh,
                  s_qbm, s_qbr, s_kbb, s_kbh, s_kbn, s_kbr, s_qab, s_qah, s_kab, s_kah, s_db,
                  s_dh, s_dm, s_gb, s_gh, b, h, start_2, H, Lq, Lk, scale, s_dqa, s_dqb, HEAD_D,
                  HAS_BIAS, RANK, PREC, BPREC, LR_DOT, KAUG, LR_GRAD, LR_GDOT, GW, BLOCK_D,
                  BLOCK_M, TAIL2_N, DQ_FUSED, DQB_FUSED)


_KV_HEUR = {"TAIL_N": lambda a: _tails(a["Lk"], a["BLOCK_N"])[0],
            "TAIL2_N": lambda a: _tails(a["Lk"], a["BLOCK_N"])[1]}
_KV_KEY = ["Lq", "Lk", "BLOCK_D", "HAS_BIAS", "RANK", "PREC", "LR_DOT", "LR_GRAD", "DQ_FUSED",
           "DQB_FUSED"]
_bwd_kv = triton.autotune(configs=_KV_CONFIGS, prune_configs_by=_PRUNE, key=_KV_KEY)(
    triton.heuristics(_KV_HEUR)(_bwd_kv_fn))
# the same kernel with dq fused in (its own tuning: other tiles win there)
_bwd_kv_dq = triton.autotune(configs=_KVF_CONFIGS, prune_configs_by=_PRUNE, key=_KV_KEY,
                             reset_to_zero=["DQA", "DQBA"])(triton.heuristics(_KV_HEUR)(_bwd_kv_fn))


@triton.autotune(configs=_BIAS_CONFIGS, prune_configs_by=_PRUNE,
                 key=["Lq", "Lk", "BLOCK_D", "RANK", "PREC", "LR_DOT"])
@triton.jit
def _bwd_bias(Q, K, V, Bias, QB, KB, QA, KA, DO, LSE, DELTA, DBP,
              s_qb, s_qh, s_qm, s_kb, s_kh, s_kn, s_vb, s_vh, s_vn, s_bh, s_bm,
              s_qbb, s_qbh, s_qbm, s_qbr, s_kbb, s_kbh, s_kbn, s_kbr, s_qab, s_qah, s_kab, s_kah,
              s_db, s_dh, s_dm,
              B, H, Lq, Lk, scale,
              HEAD_D: tl.constexpr, RANK: tl.constexpr, PREC: tl.constexpr,
              LR_DOT: tl.constexpr, KAUG: tl.constexpr,
              BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    h = tl.program_id(2).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mask_m = offs_m < Lq
    mask_n = offs_n < Lk
    mask_d = offs_d < HEAD_D
    mask_md = mask_m[:, None] & mask_d[None, :]
    mask_nd = mask_n[:, None] & mask_d[None, :]
    bias_off = h * s_bh
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for bi in range(0, B):
        b = h * 0 + bi  # int64 tensor in compiled and interpreted mode alike
        q = tl.load(Q + b * s_qb + h * s_qh + offs_m[:, None] * s_qm + offs_d[None, :],
                    mask=mask_md, other=0.0)
        do = tl.load(DO + b * s_db + h * s_dh + offs_m[:, None] * s_dm + offs_d[None, :],
                     mask=mask_md, other=0.0)
        k = tl.load(K + b * s_kb + h * s_kh + offs_n[:, None] * s_kn + offs_d[None, :],
                    mask=mask_nd, other=0.0)
        v = tl.load(V + b * s_vb + h * s_vh + offs_n[:, None] * s_vn + offs_d[None, :],
                    mask=mask_nd, other=0.0)
        row = (b * H + h) * Lq + offs_m
        lse2 = tl.load(LSE + row, mask=mask_m, other=0.0) * 1.4426950408889634
        delta = tl.load(DELTA + row, mask=mask_m, other=0.0)
        qa = _load_qa(QA, b * s_qab + h * s_qah, offs_m, mask_m, LR_DOT, KAUG)
        s = _logits2(q, tl.trans(k), qa, Bias, bias_off, QB, b * s_qbb + h * s_qbh, KB,
                     b * s_kbb + h * s_kbh, KA, b * s_kab + h * s_kah, offs_m, offs_n, mask_m,
                     mask_n, s_bm, s_qbm, s_qbr, s_kbn, s_kbr, scale, True, RANK, PREC,
                     LR_DOT, KAUG, True)
        p = tl.exp2(s - lse2[:, None])
        dp = tl.dot(do, tl.trans(v), input_precision=PREC)
        acc += p * (dp - delta[:, None])
    tl.store(DBP + (h * Lq + offs_m[:, None]) * Lk + offs_n[None, :],
             acc.to(DBP.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


# ----------------------------------------------------------------------------------------------
# host side: launch geometry, cached per shape


# bf16 keeps fp32's range (dS and dO can be tiny); the interpreter's bf16 dot is broken, so the
# CPU tests run the same split in fp16
_GRAD_DT = torch.float16 if _INTERPRET else torch.bfloat16
# BRAINATTN_LR_GRAD_SPLIT=1 (opt-in, experimental): low-rank gradients of half inputs as bf16
# dots on split dS instead of tf32 dots on fp32 dS. Correct under the interpreter, but on an
# H200 with triton 3.6 it gave wrong dq_bias and illegal addresses (2026-11-27), so it is off.
_LR_SPLIT = os.environ.get("BRAINATTN_LR_GRAD_SPLIT", "0") == "1"
_TUNED: dict = {}  # launch key -> the tuned config's launch kwargs (num_warps, BLOCK_M, ...)
_DUMMY: dict = {}  # device -> a small fp32 tensor standing in for absent pointers
_CNT: dict = {}  # (device, stream) -> int32 counters of the dq pass, zero between launches
_CNT_CAPTURED: list = []  # counters allocated inside CUDA-graph captures (graphs keep pointers)
_SMS: dict = {}  # device -> number of SMs


# dq of broadcast queries added inside the dk/dv pass by TMA reductions (see _fused_dq);
# BRAINATTN_DQ_FUSED=0 keeps the separate dq pass everywhere
_DQ_FUSED = os.environ.get("BRAINATTN_DQ_FUSED", "1").strip() != "0"
_FUSED_MIN_LQ = 2048
_CAP: dict = {}


def _tma_reduce_available() -> bool:
    """This Triton makes tensor descriptors in the kernel and reduces into them (3.4+)."""
    try:
        from triton.runtime import _allocation
    except ImportError:
        return False
    return (hasattr(tl, "make_tensor_descriptor") and hasattr(_allocation, "_allocator")
            and hasattr(getattr(tl, "tensor_descriptor", None), "atomic_add"))


_TMA_REDUCE = not _INTERPRET and _tma_reduce_available()


def _fused_dq(q, q_bias, plan, nq: bool, nk: bool, nv: bool, nqb: bool, nkb: bool,
              has_bias: bool) -> bool:
    """Whether the backward adds dq (and dq_bias) inside the dk/dv pass (fp32 TMA reductions
    into (H, Lq, D) and (H, Lq, R) buffers) instead of a separate dq pass that recomputes
    q k^T and dO v^T for every batch: queries (and a low-rank query factor) broadcast over a
    batch, many of them, no dense bias, head dim 64, half precision, an NVIDIA card with TMA
    (sm_90+), and deterministic algorithms not requested (the order of the reductions varies
    from run to run). Head dim 64 only: on an H100 (vertices shapes, backward) the fused pass
    was slower than the separate one at 48 (9.9-10.1 vs 9.7 ms; with the pRF prior 13.1-13.2
    vs 12.6) and at 128 (9.7 vs 7.5; 19.1 vs 10.6, where it spills), and at 32 and below its
    dq dot is an mma.sync."""
    if not (_DQ_FUSED and _TMA_REDUCE and nq and (nk or nv) and not has_bias
            and q.shape[0] == 1 and plan.B > 1 and plan.Lq >= _FUSED_MIN_LQ
            and plan.D == 64 and q.dtype in (torch.float16, torch.bfloat16)
            and q.is_cuda and torch.version.hip is None):
        return False
    if plan.R > 0 and not (plan.lr_dot and (not nqb or q_bias.shape[0] == 1)):
        return False
    if torch.are_deterministic_algorithms_enabled():
        return False
    if torch.cuda.is_current_stream_capturing():
        # a capture runs what the eager steps before it ran and tuned (no tuning can run
        # inside a capture): the fused pass only if it was tuned for this shape
        return _kv_key(plan, nkb, True, nqb) in _TUNED
    cap = _CAP.get(q.device)
    if cap is None:
        cap = _CAP[q.device] = torch.cuda.get_device_capability(q.device)
    return cap[0] >= 9


def _kv_key(plan, nkb: bool, fused: bool, nqb_fused: bool) -> tuple:
    """The dk/dv pass's launch key: dk_bias wanted, dq fused, dq_bias fused, the plan's key."""
    return ("kv", nkb, fused, nqb_fused) + plan.key


def _torch_scratch(size: int, alignment: int, stream):
    return torch.empty(size, device="cuda", dtype=torch.int8)


def _ensure_scratch_allocator():
    """Tensor descriptors made in a kernel live in Triton's global scratch; give Triton an
    allocator backed by torch's caching allocator where none is set. Triton keeps it per
    context, i.e. per thread (the autograd engine runs CUDA backwards on its own thread), and
    one set by the user is left alone."""
    from triton.runtime import _allocation

    if isinstance(_allocation._allocator.get(), _allocation.NullAllocator):
        triton.set_allocator(_torch_scratch)


def _launch(kernel, grid, key, tensors, scalars, consts, direct: bool = True):
    """Launch an autotuned kernel. The first call of a shape key runs the autotuner; the next
    one launches the tuned config through the jitted function while recording what it passes
    to the compiled kernel's launcher (``_capture``); later calls with the same specialisation
    go straight to that launcher (``_FAST``), skipping Triton's per-call binding, specialisation
    and cache-key work (~50 us a launch, which is what small cases like ``rois`` wait on).

    ``tensors`` are the kernel's pointer arguments and ``scalars`` the rest (every kernel takes
    them in that order); ``grid`` maps the config's kwargs (BLOCK_M, ...) to the launch grid.
    The direct launch's key holds what Triton specialises a launch on, conservatively: every
    scalar's value and every pointer's 16-byte alignment (dtypes follow from ``key``).
    ``direct=False`` always goes through Triton (kernels that take global scratch, which
    Triton allocates per launch)."""
    args = (*tensors, *scalars)
    fkey = None
    if direct and _FAST_ON and (_DRV or _init_driver()):
        fkey = (key, scalars, tuple([t.data_ptr() & 15 for t in tensors]), _DRV[0]())
        ent = _FAST.get(fkey)
        if ent is not None and _hooks_off():
            launcher, function, meta, tail, cfg = ent
            g = grid(cfg)
            launcher(g[0], g[1], g[2], _DRV[1](fkey[3]), function, meta, None, None, None,
                     *args, *tail)
            return
    cfg = _TUNED.get(key)
    if cfg is None:
        kernel[grid](*args, **consts)
        _TUNED[key] = kernel.best_config.all_kwargs()
        return
    if fkey is not None and fkey not in _FAST and _hooks_off():  # (fkey is None: not direct)
        _FAST[fkey] = _capture(kernel.fn, grid, args, consts, cfg)  # launches it once
        return
    kernel.fn.run(*args, grid=grid, warmup=False, **consts, **cfg)


def _hooks_off() -> bool:
    """No launch hooks (profilers such as proton install them): the direct launch passes none.
    Triton 3.4+ keeps them as a ``HookChain`` that is empty unless a hook was added."""
    rt = getattr(getattr(triton, "knobs", None), "runtime", None)
    if rt is None:
        return True
    for hook in (rt.launch_enter_hook, rt.launch_exit_hook):
        if hook is not None and getattr(hook, "calls", True):
            return False
    return True


def _capture(fn, grid, args, consts, cfg):
    """Launch through ``fn.run`` (always exactly once), recording the arguments it hands the
    compiled kernel's launcher; return (launcher, function, packed metadata, the trailing
    constexpr arguments, cfg) for direct launches, or None where this Triton lays the call out
    differently (then the launch always goes through ``fn.run``)."""
    compiled = fn.run(*args, grid=grid, warmup=True, **consts, **cfg)
    prop = getattr(type(compiled), "run", None)
    if not isinstance(prop, property) or not hasattr(compiled, "_run"):
        return None
    real = compiled.run  # initialises the launcher
    seen = []

    def record(*a):
        seen.append(a)
        return real(*a)

    compiled._run = record
    try:
        again = fn.run(*args, grid=grid, warmup=False, **consts, **cfg)
    finally:
        compiled._run = real
    n = len(args)
    if again is not compiled or len(seen) != 1:
        return None
    a = seen[0]
    # (grid x3, stream, function, packed metadata, launch metadata, enter hook, exit hook,
    # the kernel's arguments in signature order, constexprs included)
    ok = (len(a) >= 9 + n and a[4] is compiled.function and a[5] is compiled.packed_metadata
          and all(x is y for x, y in zip(a[9:9 + n], args, strict=True)))
    if not ok:
        return None
    return (real, compiled.function, compiled.packed_metadata, tuple(a[9 + n:]), cfg)


def _init_driver() -> bool:
    """Fill ``_DRV`` with Triton's own current-device and current-stream getters (what
    ``JITFunction.run`` uses); on failure turn the direct launch off."""
    global _FAST_ON
    try:
        from triton.runtime import driver

        _DRV[:] = [driver.active.get_current_device, driver.active.get_current_stream]
    except Exception:  # noqa: BLE001 -- any failure only disables the direct launch
        _FAST_ON = False
    return _FAST_ON


# direct launches on by default; BRAINATTN_DIRECT_LAUNCH=0 sends every launch through Triton
_FAST_ON = not _INTERPRET and os.environ.get("BRAINATTN_DIRECT_LAUNCH", "1") != "0"
_DRV: list = []
_FAST: dict = {}  # (launch key, specialisation, device) -> (launcher, function, meta, tail, cfg)


def _cdiv(a: int, b: int) -> int:
    """Ceiling division on host ints (``triton.cdiv`` is a constexpr function, ~5 us a call)."""
    return -(-a // b)


def _p2(n: int) -> int:
    """The smallest power of two >= n (host ints)."""
    return 1 << max(n - 1, 0).bit_length()


def _counters(dev: torch.device, n: int) -> torch.Tensor:
    """Zeroed int32 counters (at least n) for the dq pass's last-split reduction, one buffer
    per (device, stream): the kernel leaves them zero, so they are allocated once, and calls on
    other streams (which may run at the same time) get their own. Inside a CUDA-graph capture
    each call gets its own buffer, kept alive with the graph's lifetime in mind (graphs captured
    on one stream may later be replayed side by side)."""
    if dev.type == "cuda":
        if torch.cuda.is_current_stream_capturing():
            t = torch.zeros(max(n, 16), device=dev, dtype=torch.int32)
            _CNT_CAPTURED.append(t)
            return t
        stream = torch.cuda.current_stream(dev).cuda_stream
    else:
        stream = 0
    t = _CNT.get((dev, stream))
    if t is None or t.numel() < n:
        t = _CNT[(dev, stream)] = torch.zeros(max(n, 4096), device=dev, dtype=torch.int32)
    return t


def _dummy(dev) -> torch.Tensor:
    t = _DUMMY.get(dev)
    if t is None:
        t = _DUMMY[dev] = torch.empty(16, device=dev, dtype=torch.float32)
    return t


def _n_sms(dev: torch.device) -> int:
    n = _SMS.get(dev)
    if n is None:
        n = 4
        if dev.type == "cuda":
            n = torch.cuda.get_device_properties(dev).multi_processor_count
        _SMS[dev] = n
    return n


def _s(t: torch.Tensor | None, n: int) -> tuple[int, ...]:
    """Strides of ``t``'s first n dims with broadcast (size-1) dims as 0; zeros when None."""
    if t is None:
        return (0,) * n
    shape, stride = t.shape, t.stride()
    return tuple(0 if shape[i] == 1 else stride[i] for i in range(n))


def _last_contig(t):
    return t if t is None or t.stride(-1) == 1 or t.shape[-1] == 1 else t.contiguous()


def _split_pair(q_bias: torch.Tensor, k_bias: torch.Tensor, kaug: int, qscale: float = 1.0):
    """fp16 hi/lo split of the low-rank factors: one fp16 dot of
    qa = [q_hi, q_hi, q_lo] and ka = [k_hi, k_lo, k_hi] gives qscale * q_bias k_bias^T to
    ~2^-21 (qscale = 1/scale lets the kernels scale q k^T and the low-rank term together).

    Column r of both factors is first rescaled by a_r = sqrt(max|q_r| / max|k_r|) (the product
    is unchanged) so both sides stay well inside fp16's range."""
    qf, kf = q_bias.detach().float(), k_bias.detach().float()
    if qscale != 1.0:
        qf = qf * qscale
    qm = qf.abs().amax(dim=(0, 1, 2))
    km = kf.abs().amax(dim=(0, 1, 2))
    a = torch.sqrt(qm / km)
    a = torch.where(torch.isfinite(a) & (a > 0), a, torch.ones_like(a))
    out = []
    for x, query in ((qf / a, True), (kf * a, False)):
        hi = x.to(torch.float16)
        lo = (x - hi.float()).to(torch.float16)
        parts = [hi, hi, lo] if query else [hi, lo, hi]
        pad = kaug - 3 * x.shape[-1]
        if pad:
            parts.append(hi.new_zeros(*x.shape[:-1], pad))
        out.append(torch.cat(parts, dim=-1).contiguous())
    return out


def _grad_factor(f: torch.Tensor, gw: int) -> torch.Tensor:
    """bf16 (fp16 when interpreted) split of a low-rank factor (..., R) into rows
    [f_hi, 0 | f_lo, 0] of 2 * gw columns: the right operand of the low-rank gradient dots."""
    x = f.detach().float()
    hi = x.to(_GRAD_DT)
    lo = (x - hi.float()).to(_GRAD_DT)
    out = x.new_zeros(*x.shape[:-1], 2 * gw, dtype=_GRAD_DT)
    R = x.shape[-1]
    out[..., :R] = hi
    out[..., gw:gw + R] = lo
    return out


class _Plan:
    """Everything about one call that the forward computes and the backward reuses: sizes,
    precisions, strides, the split factors and the pointer stand-ins."""

    __slots__ = ("B", "H", "Lq", "Lk", "D", "R", "BLOCK_D", "prec", "bprec", "lr_dot", "kaug",
                 "lr_gdot", "gw", "ptrs", "strides", "dev", "key", "q_bias", "k_bias")

    def __init__(self, q, k, v, bias, q_bias, k_bias, scale):
        B, H, Lk, D = k.shape
        self.B, self.H, self.Lk, self.D = B, H, Lk, D
        self.Lq = q.shape[2]
        self.R = R = 0 if q_bias is None else q_bias.shape[3]
        self.dev = dev = q.device
        self.BLOCK_D = max(16, _p2(D))
        if q.dtype == torch.float32:
            self.prec = "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee"
        else:  # half inputs: the precision flag only matters for the fp32 dots
            self.prec = "tf32"
        self.bprec = self.prec
        # (a zero scale cannot be folded into the split factors: exact fp32 products then)
        self.lr_dot = R > 0 and q.dtype != torch.float32 and scale != 0
        self.kaug = max(16, _p2(3 * max(R, 1)))
        self.lr_gdot = self.lr_dot and _LR_SPLIT
        self.gw = max(16, _p2(max(R, 1)))
        self.q_bias, self.k_bias = q_bias, k_bias
        dummy = _dummy(dev)
        qa = ka = dummy
        lr = (0, 0, 0, 0)
        if self.lr_dot:
            # without a dense bias the kernels apply the scale after the low-rank dot
            qa, ka = _split_pair(q_bias, k_bias, self.kaug, 1.0 / scale if bias is None else 1.0)
            lr = _s(qa, 2) + _s(ka, 2)
        self.ptrs = (bias if bias is not None else dummy,
                     q_bias if q_bias is not None else dummy,
                     k_bias if k_bias is not None else dummy, qa, ka)
        bs = (0, 0) if bias is None else _s(bias, 2)
        self.strides = (*_s(q, 3), *_s(k, 3), *_s(v, 3), *bs, *_s(q_bias, 4), *_s(k_bias, 4),
                        *lr)
        self.key = (self.Lq, self.Lk, D, bias is not None, R, self.prec, self.lr_dot, q.dtype,
                    None if bias is None else bias.dtype,
                    None if q_bias is None else (q_bias.dtype, k_bias.dtype))

    def grad_factors(self, need_qg: bool, need_kg: bool):
        """The bf16 split factors of the low-rank gradients and their (batch, head) strides;
        dummies for those not needed and off the LR_GDOT path. dk_bias needs qg, dq_bias kg."""
        d = _dummy(self.dev)
        qg = _grad_factor(self.q_bias, self.gw) if self.lr_gdot and need_qg else d
        kg = _grad_factor(self.k_bias, self.gw) if self.lr_gdot and need_kg else d
        return qg, kg, _s(qg, 2) if qg is not d else (0, 0), _s(kg, 2) if kg is not d else (0, 0)


def _forward(q, k, v, bias, q_bias, k_bias, scale, plan=None):
    """Returns (out (B, H, Lq, D) in q's dtype, lse (B, H, Lq) fp32, plan)."""
    if plan is None:
        plan = _Plan(q, k, v, bias, q_bias, k_bias, scale)
    B, H, Lq, D = plan.B, plan.H, plan.Lq, plan.D
    out = torch.empty((B, H, Lq, D), device=q.device, dtype=q.dtype)
    lse = torch.empty((B, H, Lq), device=q.device, dtype=torch.float32)
    grid = lambda meta: (B, _cdiv(Lq, meta["BLOCK_M"]), H)  # noqa: E731
    rawmax = bias is None and (plan.R == 0 or plan.lr_dot) and scale > 0
    _launch(_fwd, grid, ("fwd", rawmax) + plan.key,
            (q, k, v, *plan.ptrs, out, lse), (*plan.strides, H, Lq, plan.Lk, scale),
            dict(HEAD_D=D, HAS_BIAS=plan.key[3], RANK=plan.R, PREC=plan.prec,
                 LR_DOT=plan.lr_dot, KAUG=plan.kaug, RAWMAX=rawmax, BLOCK_D=plan.BLOCK_D))
    return out, lse, plan


def _reduce_to(t: torch.Tensor, shape) -> torch.Tensor:
    """Sum ``t`` over the dims where ``shape`` has size 1 (broadcast dims)."""
    dims = [i for i, n in enumerate(shape) if n == 1 and t.shape[i] != 1]
    return t.sum(dim=dims, keepdim=True) if dims else t


def _backward(q, k, v, bias, q_bias, k_bias, out, lse, dout, dlse, scale, needs, plan=None):
    if plan is None:
        plan = _Plan(q, k, v, bias, q_bias, k_bias, scale)
    B, H, Lq, Lk, D, R = plan.B, plan.H, plan.Lq, plan.Lk, plan.D, plan.R
    dev = q.device
    nq, nk, nv, nb, nqb, nkb = needs
    nqb = nqb and R > 0
    nkb = nkb and R > 0
    has_bias = bias is not None
    qg, kg, qg_s, kg_s = plan.grad_factors(nkb, nqb)
    dstr = _s(dout, 3)
    common = (*plan.strides, *dstr)
    consts = dict(HEAD_D=D, HAS_BIAS=has_bias, RANK=R, PREC=plan.prec, LR_DOT=plan.lr_dot,
                  KAUG=plan.kaug, LR_GDOT=plan.lr_gdot, GW=plan.gw, BLOCK_D=plan.BLOCK_D)
    delta = torch.empty((B, H, Lq), device=dev, dtype=torch.float32)
    dq = dk = dv = dbias = dqb = dkb = None
    fused = _fused_dq(q, q_bias, plan, nq, nk, nv, nqb, nkb, has_bias)
    dqa = dqba = plan.ptrs[1]
    r_pad = R
    nqb_fused = False
    if fused:  # dq (and dq_bias) accumulate in fp32 (dq_bias rows padded to 16 bytes)
        _ensure_scratch_allocator()
        dqa = torch.zeros((H, Lq, D), device=dev, dtype=torch.float32)
        if nqb:
            r_pad = _cdiv(R, 4) * 4
            dqba = torch.zeros((H, Lq, r_pad), device=dev, dtype=torch.float32)
        nq = False
        nqb_fused, nqb = nqb, False
    if nq or nqb:  # the dq pass also forms delta for the passes after it
        per_batch = q.shape[0] != 1 or (q_bias is not None and q_bias.shape[0] != 1)
        if per_batch:
            bps = 1
        else:  # split the batch only as far as needed to fill the card
            programs = _cdiv(Lq, 64) * H
            n_split = max(1, min(B, (4 * _n_sms(dev)) // max(programs, 1)))
            bps = _cdiv(B, n_split)
        n_split = _cdiv(B, bps)
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
            cnt = _counters(dev, H * _cdiv(Lq, 16))
        grid = lambda meta: (n_split, _cdiv(Lq, meta["BLOCK_M"]), H)  # noqa: E731
        _launch(_bwd_q, grid, ("q", n_split, dlse is not None, nqb, reduce, swap) + plan.key,
                (q, k, v, *plan.ptrs, kg, dout, out, dlse if dlse is not None else delta, lse,
                 delta, dq_p, dqb_p, dq_red, cnt), (*common, *kg_s, B, H, Lq, Lk, scale, bps),
                dict(consts, LR_GRAD=nqb, BPREC=plan.bprec, FUSE_DELTA=True,
                     HAS_DLSE=dlse is not None, REDUCE=reduce, LR_SWAP=swap))
        if nq:
            dq = dq_p if direct else dq_red
        if nqb:
            dqb = _reduce_to(dqb_p, q_bias.shape).to(q_bias.dtype)
    else:
        _bwd_pre[(_cdiv(Lq, 64), B * H)](
            out, dout, dlse if dlse is not None else delta, delta, *dstr, H, Lq,
            HEAD_D=D, HAS_DLSE=dlse is not None, BLOCK_M=64, BLOCK_D=plan.BLOCK_D)
    if nk or nv or nkb:
        dk = torch.empty((B, H, Lk, D), device=dev, dtype=k.dtype)
        dv = torch.empty((B, H, Lk, D), device=dev, dtype=v.dtype)
        dkb_p = (torch.empty((B, H, Lk, R), device=dev, dtype=torch.float32)
                 if nkb else plan.ptrs[2])
        grid = lambda meta: (B, _kv_programs(Lk, meta["BLOCK_N"]), H)  # noqa: E731
        _launch(_bwd_kv_dq if fused else _bwd_kv, grid, _kv_key(plan, nkb, fused, nqb_fused),
                (q, k, v, *plan.ptrs, qg, dout, lse, delta, dk, dv, dkb_p, dqa, dqba),
                (*common, *qg_s, H, Lq, Lk, scale, D, r_pad),
                dict(consts, LR_GRAD=nkb, BPREC=plan.bprec, DQ_FUSED=fused,
                     DQB_FUSED=nqb_fused), direct=not fused)
        if fused:  # one kernel: scale, cast
            dq = torch.empty((1, H, Lq, D), device=dev, dtype=q.dtype)
            torch.mul(dqa, scale, out=dq[0])
            if nqb_fused:
                dqb = _reduce_to(dqba[None, :, :, :R], q_bias.shape).to(q_bias.dtype)
        if nkb:
            dkb = _reduce_to(dkb_p, k_bias.shape).to(k_bias.dtype)
        if not nk:
            dk = None
        if not nv:
            dv = None
    if has_bias and nb:
        direct = bias.shape[0] == H
        db = torch.empty((H, Lq, Lk), device=dev, dtype=bias.dtype if direct else torch.float32)
        grid = lambda meta: (_cdiv(Lq, meta["BLOCK_M"]),  # noqa: E731
                             _cdiv(Lk, meta["BLOCK_N"]), H)
        _launch(_bwd_bias, grid, ("bias",) + plan.key,
                (q, k, v, *plan.ptrs, dout, lse, delta, db), (*common, B, H, Lq, Lk, scale),
                dict(HEAD_D=D, RANK=R, PREC=plan.prec, LR_DOT=plan.lr_dot, KAUG=plan.kaug,
                     BLOCK_D=plan.BLOCK_D))
        dbias = db if direct else _reduce_to(db, bias.shape).to(bias.dtype)
    return dq, dk, dv, dbias, dqb, dkb


class _Attention(torch.autograd.Function):
    """Owns launch geometry: forward saves (out, lse); backward recomputes the probabilities."""

    @staticmethod
    def forward(ctx, q, k, v, bias, q_bias, k_bias, scale):
        if q.stride(-1) != 1:
            q = q.contiguous()
        if k.stride(-1) != 1:
            k = k.contiguous()
        if v.stride(-1) != 1:
            v = v.contiguous()
        if bias is not None or q_bias is not None:
            bias, q_bias, k_bias = (_last_contig(t) for t in (bias, q_bias, k_bias))
        out, lse, plan = _forward(q, k, v, bias, q_bias, k_bias, scale)
        ctx.save_for_backward(q, k, v, bias, q_bias, k_bias, out, lse)
        ctx.scale = scale
        ctx.plan = plan
        ctx.set_materialize_grads(False)
        return out, lse

    @staticmethod
    def backward(ctx, dout, dlse):
        q, k, v, bias, q_bias, k_bias, out, lse = ctx.saved_tensors
        if dout is None:
            dout = torch.zeros_like(out)
        elif dout.stride(-1) != 1:
            dout = dout.contiguous()
        if dlse is not None:
            dlse = dlse.float().contiguous()
        grads = _backward(q, k, v, bias, q_bias, k_bias, out, lse, dout, dlse, ctx.scale,
                          ctx.needs_input_grad[:6], ctx.plan)
        ctx.plan = None
        return (*grads, None)


def attention_triton(q, k, v, bias, q_bias, k_bias, scale: float):
    """Triton path of :func:`brainattn.kernels.attention`; returns ``(out, lse)``."""
    return _Attention.apply(q, k, v, bias, q_bias, k_bias, scale)
