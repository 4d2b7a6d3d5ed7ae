"""Triton kernels: fused attention with dense and low-rank additive bias, forward and backward.

Layout of the work (FlashAttention-2 style, logits in base 2 inside the kernels):

- ``_fwd``: one program per (query block, b*h); streams key blocks, online softmax; writes out
  and the natural-log lse.
- ``_bwd_pre``: delta = rowsum(dO * O) - dlse per query (dlse: gradient of the returned lse).
- ``_bwd_kv``: one program per (key block, b*h); loops over query blocks; dk, dv and the key
  factor's gradient dk_bias = dS^T q_bias.
- ``_bwd_q``: one program per (query block, h, batch split); loops over the split's batches and
  over key blocks. Queries shared by the batch (q of batch 1) are loaded once and their gradient
  is summed over the batch in registers, so no atomics and no per-batch copy of dq; when there
  are few query blocks the batch is split and the splits' fp32 partials are summed afterwards.
- ``_bwd_bias``: dense-bias gradient, one program per (query block, key block, h) looping over
  the batch, so the batch sum needs no atomics and nothing of size B*H*Lq*Lk is ever formed.

The low-rank term q_bias k_bias^T enters the logits as R exact fp32 outer products (R is small;
a tensor-core dot in tf32 would lose ~1e-3 of a logit of size ~50). Head dims 48 and 96 are
padded to 64 and 128 with masked loads. Strides of broadcast dims are passed as 0.
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


def _cfgs(gpu: list[tuple[int, int, int, int]], one: tuple[int, int, int, int]):
    """Autotune configs (BLOCK_M, BLOCK_N, num_warps, num_stages). Without tuning: the default
    and a small fallback, of which ``_prune`` keeps the first that fits in shared memory."""
    chosen = gpu if _AUTOTUNE else [one, (64, 32, 4, 2), (32, 32, 4, 1)]
    if _INTERPRET:
        chosen = [(32, 32, 4, 1)]
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
_FWD_CONFIGS = _cfgs(
    [(128, 64, 4, 3), (128, 128, 8, 3), (64, 64, 4, 3), (128, 64, 8, 3), (64, 128, 4, 3),
     (128, 32, 4, 3), (64, 32, 4, 2)],
    (128, 64, 4, 3),
)
_KV_CONFIGS = _cfgs(
    [(32, 128, 4, 3), (64, 128, 8, 3), (64, 64, 4, 3), (32, 64, 4, 3), (64, 128, 4, 2),
     (16, 64, 4, 3), (128, 128, 8, 2)],
    (64, 64, 4, 3),
)
_Q_CONFIGS = _cfgs(
    [(128, 32, 4, 3), (128, 64, 8, 3), (64, 64, 4, 3), (64, 32, 4, 3), (128, 64, 4, 2),
     (32, 64, 4, 3), (128, 128, 8, 2)],
    (64, 64, 4, 3),
)
_BIAS_CONFIGS = _cfgs([(64, 64, 4, 3), (128, 64, 8, 3), (64, 128, 8, 3), (32, 64, 4, 3)],
                      (64, 64, 4, 3))


@triton.jit
def _logits2(q, kT, qa, Bias, bias_off, QB, qb_off, KB, kb_off, KA, ka_off, offs_m, offs_n,
             mask_m, mask_n, s_bm, s_bn, s_qbm, s_qbr, s_kbn, s_kbr, scale,
             HAS_BIAS: tl.constexpr, RANK: tl.constexpr, PREC: tl.constexpr,
             LR_DOT: tl.constexpr, KAUG: tl.constexpr, MASK_N: tl.constexpr = True):
    """Base-2 logits (BLOCK_M, BLOCK_N) in fp32; key columns past Lk are -inf.

    Low-rank term: with LR_DOT, one fp16 tensor-core dot of the split factors
    qa = [q_hi, q_hi, q_lo] and ka = [k_hi, k_lo, k_hi] (error ~2^-21 of |q_bias||k_bias|);
    otherwise R exact fp32 outer products (the float32 path)."""
    s = tl.dot(q, kT, input_precision=PREC)
    if HAS_BIAS or RANK > 0:
        s = s * scale
        if HAS_BIAS:
            bt = tl.load(Bias + bias_off + offs_m[:, None] * s_bm + offs_n[None, :] * s_bn,
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
              kb_off, KA, ka_off, offs_m, offs_d, mask_m, mask_d, s_kn, s_kd, s_vn, s_vd, s_bm,
              s_bn, s_qbm, s_qbr, s_kbn, s_kbr, Lk, scale,
              HAS_BIAS: tl.constexpr, RANK: tl.constexpr, PREC: tl.constexpr,
              LR_DOT: tl.constexpr, KAUG: tl.constexpr, MASK_N: tl.constexpr,
              BLOCK_N: tl.constexpr):
    """One key block of the online softmax."""
    offs_n = start_n + tl.arange(0, BLOCK_N)
    mask_n = offs_n < Lk
    kT = tl.load(k_base + offs_n[None, :] * s_kn + offs_d[:, None] * s_kd,
                 mask=mask_n[None, :] & mask_d[:, None], other=0.0)
    s = _logits2(q, kT, qa, Bias, bias_off, QB, qb_off, KB, kb_off, KA, ka_off, offs_m, offs_n,
                 mask_m, mask_n, s_bm, s_bn, s_qbm, s_qbr, s_kbn, s_kbr, scale,
                 HAS_BIAS, RANK, PREC, LR_DOT, KAUG, MASK_N)
    m_new = tl.maximum(m_i, tl.max(s, 1))
    # rows whose logits so far are all -inf: keep exp2 arguments finite
    m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m_i - m_use)
    p = tl.exp2(s - m_use[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    v = tl.load(v_base + offs_n[:, None] * s_vn + offs_d[None, :] * s_vd,
                mask=mask_n[:, None] & mask_d[None, :], other=0.0)
    acc = acc * alpha[:, None]
    acc = tl.dot(p.to(v.dtype), v, acc, input_precision=PREC)
    return acc, l_i, m_new


@triton.autotune(configs=_FWD_CONFIGS, prune_configs_by=_PRUNE,
                 key=["Lq", "Lk", "BLOCK_D", "HAS_BIAS", "RANK", "PREC", "LR_DOT"])
@triton.jit
def _fwd(Q, K, V, Bias, QB, KB, QA, KA, O, LSE,
         s_qb, s_qh, s_qm, s_qd, s_kb, s_kh, s_kn, s_kd, s_vb, s_vh, s_vn, s_vd,
         s_bh, s_bm, s_bn, s_qbb, s_qbh, s_qbm, s_qbr, s_kbb, s_kbh, s_kbn, s_kbr,
         s_qab, s_qah, s_kab, s_kah,
         s_ob, s_oh, s_om, s_od,
         H, Lq, Lk, D, scale,
         HAS_BIAS: tl.constexpr, RANK: tl.constexpr, PREC: tl.constexpr,
         LR_DOT: tl.constexpr, KAUG: tl.constexpr,
         BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask_m = offs_m < Lq
    mask_d = offs_d < D
    q = tl.load(Q + b * s_qb + h * s_qh + offs_m[:, None] * s_qm + offs_d[None, :] * s_qd,
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
    # full key blocks skip the -inf masking of the logits; the ragged last block applies it
    n_full = (Lk // BLOCK_N) * BLOCK_N
    for start_n in range(0, n_full, BLOCK_N):
        acc, l_i, m_i = _fwd_step(acc, l_i, m_i, q, qa, start_n, k_base, v_base, Bias, bias_off,
                                  QB, qb_off, KB, kb_off, KA, ka_off, offs_m, offs_d, mask_m,
                                  mask_d, s_kn, s_kd, s_vn, s_vd, s_bm, s_bn, s_qbm, s_qbr,
                                  s_kbn, s_kbr, Lk, scale, HAS_BIAS, RANK, PREC, LR_DOT, KAUG,
                                  False, BLOCK_N)
    if n_full < Lk:
        acc, l_i, m_i = _fwd_step(acc, l_i, m_i, q, qa, n_full, k_base, v_base, Bias, bias_off,
                                  QB, qb_off, KB, kb_off, KA, ka_off, offs_m, offs_d, mask_m,
                                  mask_d, s_kn, s_kd, s_vn, s_vd, s_bm, s_bn, s_qbm, s_qbr,
                                  s_kbn, s_kbr, Lk, scale, HAS_BIAS, RANK, PREC, LR_DOT, KAUG,
                                  True, BLOCK_N)
    out = acc / l_i[:, None]
    tl.store(O + b * s_ob + h * s_oh + offs_m[:, None] * s_om + offs_d[None, :] * s_od,
             out.to(O.dtype.element_ty), mask=mask_m[:, None] & mask_d[None, :])
    lse = (m_i + tl.log2(l_i)) * 0.6931471805599453
    tl.store(LSE + pid_bh.to(tl.int64) * Lq + offs_m, lse, mask=mask_m)


@triton.jit
def _bwd_pre(O, DO, DLSE, DELTA,
             s_ob, s_oh, s_om, s_od, s_db, s_dh, s_dm, s_dd,
             H, Lq, D,
             HAS_DLSE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_m < Lq)[:, None] & (offs_d < D)[None, :]
    o = tl.load(O + b * s_ob + h * s_oh + offs_m[:, None] * s_om + offs_d[None, :] * s_od,
                mask=mask, other=0.0).to(tl.float32)
    do = tl.load(DO + b * s_db + h * s_dh + offs_m[:, None] * s_dm + offs_d[None, :] * s_dd,
                 mask=mask, other=0.0).to(tl.float32)
    delta = tl.sum(o * do, 1)
    row = pid_bh.to(tl.int64) * Lq + offs_m
    if HAS_DLSE:
        delta -= tl.load(DLSE + row, mask=offs_m < Lq, other=0.0)
    tl.store(DELTA + row, delta, mask=offs_m < Lq)


@triton.autotune(configs=_KV_CONFIGS, prune_configs_by=_PRUNE,
                 key=["Lq", "Lk", "BLOCK_D", "HAS_BIAS", "RANK", "PREC", "R_PAD", "LR_DOT"])
@triton.jit
def _bwd_kv(Q, K, V, Bias, QB, KB, QA, KA, DO, LSE, DELTA, DK, DV, DKB,
            s_qb, s_qh, s_qm, s_qd, s_kb, s_kh, s_kn, s_kd, s_vb, s_vh, s_vn, s_vd,
            s_bh, s_bm, s_bn, s_qbb, s_qbh, s_qbm, s_qbr, s_kbb, s_kbh, s_kbn, s_kbr,
         s_qab, s_qah, s_kab, s_kah,
            s_db, s_dh, s_dm, s_dd,
            H, Lq, Lk, D, scale,
            HAS_BIAS: tl.constexpr, RANK: tl.constexpr, R_PAD: tl.constexpr,
            PREC: tl.constexpr, BPREC: tl.constexpr,
            LR_DOT: tl.constexpr, KAUG: tl.constexpr,
            BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mask_n = offs_n < Lk
    mask_d = offs_d < D
    mask_nd = mask_n[:, None] & mask_d[None, :]
    k = tl.load(K + b * s_kb + h * s_kh + offs_n[:, None] * s_kn + offs_d[None, :] * s_kd,
                mask=mask_nd, other=0.0)
    v = tl.load(V + b * s_vb + h * s_vh + offs_n[:, None] * s_vn + offs_d[None, :] * s_vd,
                mask=mask_nd, other=0.0)
    kT = tl.trans(k)
    vT = tl.trans(v)
    q_base = Q + b * s_qb + h * s_qh
    do_base = DO + b * s_db + h * s_dh
    row_base = pid_bh.to(tl.int64) * Lq
    bias_off = h * s_bh
    qb_off = b * s_qbb + h * s_qbh
    kb_off = b * s_kbb + h * s_kbh
    qa_off = b * s_qab + h * s_qah
    ka_off = b * s_kab + h * s_kah
    offs_r = tl.arange(0, R_PAD)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dkb = tl.zeros([BLOCK_N, R_PAD], tl.float32)
    for start_m in range(0, Lq, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        mask_m = offs_m < Lq
        mask_md = mask_m[:, None] & mask_d[None, :]
        q = tl.load(q_base + offs_m[:, None] * s_qm + offs_d[None, :] * s_qd,
                    mask=mask_md, other=0.0)
        do = tl.load(do_base + offs_m[:, None] * s_dm + offs_d[None, :] * s_dd,
                     mask=mask_md, other=0.0)
        lse2 = tl.load(LSE + row_base + offs_m, mask=mask_m, other=0.0) * 1.4426950408889634
        delta = tl.load(DELTA + row_base + offs_m, mask=mask_m, other=0.0)
        qa = _load_qa(QA, qa_off, offs_m, mask_m, LR_DOT, KAUG)
        s = _logits2(q, kT, qa, Bias, bias_off, QB, qb_off, KB, kb_off, KA, ka_off, offs_m,
                     offs_n, mask_m, mask_n, s_bm, s_bn, s_qbm, s_qbr, s_kbn, s_kbr, scale,
                     HAS_BIAS, RANK, PREC, LR_DOT, KAUG)
        p = tl.where(mask_m[:, None], tl.exp2(s - lse2[:, None]), 0.0)
        dv = tl.dot(tl.trans(p.to(do.dtype)), do, dv, input_precision=PREC)
        dp = tl.dot(do, vT, input_precision=PREC)
        ds = p * (dp - delta[:, None])
        dk = tl.dot(tl.trans(ds.to(q.dtype)), q, dk, input_precision=PREC)
        if RANK > 0:
            qb = tl.load(QB + qb_off + offs_m[:, None] * s_qbm + offs_r[None, :] * s_qbr,
                         mask=mask_m[:, None] & (offs_r < RANK)[None, :], other=0.0)
            dkb = tl.dot(tl.trans(ds), qb.to(tl.float32), dkb, input_precision=BPREC)
    dk = dk * scale
    out_off = pid_bh.to(tl.int64) * Lk * D
    nd = offs_n[:, None] * D + offs_d[None, :]
    tl.store(DK + out_off + nd, dk.to(DK.dtype.element_ty), mask=mask_nd)
    tl.store(DV + out_off + nd, dv.to(DV.dtype.element_ty), mask=mask_nd)
    if RANK > 0:
        tl.store(DKB + pid_bh.to(tl.int64) * Lk * RANK + offs_n[:, None] * RANK
                 + offs_r[None, :], dkb, mask=mask_n[:, None] & (offs_r < RANK)[None, :])


@triton.autotune(configs=_Q_CONFIGS, prune_configs_by=_PRUNE,
                 key=["Lq", "Lk", "BLOCK_D", "HAS_BIAS", "RANK", "PREC", "R_PAD", "LR_DOT"])
@triton.jit
def _bwd_q(Q, K, V, Bias, QB, KB, QA, KA, DO, LSE, DELTA, DQP, DQBP,
           s_qb, s_qh, s_qm, s_qd, s_kb, s_kh, s_kn, s_kd, s_vb, s_vh, s_vn, s_vd,
           s_bh, s_bm, s_bn, s_qbb, s_qbh, s_qbm, s_qbr, s_kbb, s_kbh, s_kbn, s_kbr,
         s_qab, s_qah, s_kab, s_kah,
           s_db, s_dh, s_dm, s_dd,
           B, H, Lq, Lk, D, scale, batch_per_split,
           HAS_BIAS: tl.constexpr, RANK: tl.constexpr, R_PAD: tl.constexpr,
           PREC: tl.constexpr, BPREC: tl.constexpr,
            LR_DOT: tl.constexpr, KAUG: tl.constexpr,
           BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_m = tl.program_id(0)
    h = tl.program_id(1).to(tl.int64)
    split = tl.program_id(2)
    b_lo = split * batch_per_split
    b_hi = tl.minimum(b_lo + batch_per_split, B)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_r = tl.arange(0, R_PAD)
    mask_m = offs_m < Lq
    mask_d = offs_d < D
    mask_md = mask_m[:, None] & mask_d[None, :]
    # q (and q_bias) are the same for every batch of the split: broadcast, or one batch per split
    q = tl.load(Q + b_lo.to(tl.int64) * s_qb + h * s_qh + offs_m[:, None] * s_qm
                + offs_d[None, :] * s_qd, mask=mask_md, other=0.0)
    qa = _load_qa(QA, b_lo.to(tl.int64) * s_qab + h * s_qah, offs_m, mask_m, LR_DOT, KAUG)
    bias_off = h * s_bh
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    dqb = tl.zeros([BLOCK_M, R_PAD], tl.float32)
    for bi in range(0, b_hi - b_lo):
        b = b_lo.to(tl.int64) + bi
        do = tl.load(DO + b * s_db + h * s_dh + offs_m[:, None] * s_dm + offs_d[None, :] * s_dd,
                     mask=mask_md, other=0.0)
        row = (b * H + h) * Lq + offs_m
        lse2 = tl.load(LSE + row, mask=mask_m, other=0.0) * 1.4426950408889634
        delta = tl.load(DELTA + row, mask=mask_m, other=0.0)
        k_base = K + b * s_kb + h * s_kh
        v_base = V + b * s_vb + h * s_vh
        qb_off = b * s_qbb + h * s_qbh
        kb_off = b * s_kbb + h * s_kbh
        ka_off = b * s_kab + h * s_kah
        for start_n in range(0, Lk, BLOCK_N):
            offs_n = start_n + tl.arange(0, BLOCK_N)
            mask_n = offs_n < Lk
            mask_nd = mask_n[:, None] & mask_d[None, :]
            k = tl.load(k_base + offs_n[:, None] * s_kn + offs_d[None, :] * s_kd,
                        mask=mask_nd, other=0.0)
            v = tl.load(v_base + offs_n[:, None] * s_vn + offs_d[None, :] * s_vd,
                        mask=mask_nd, other=0.0)
            s = _logits2(q, tl.trans(k), qa, Bias, bias_off, QB, qb_off, KB, kb_off, KA, ka_off,
                         offs_m, offs_n, mask_m, mask_n, s_bm, s_bn, s_qbm, s_qbr, s_kbn, s_kbr,
                         scale, HAS_BIAS, RANK, PREC, LR_DOT, KAUG)
            p = tl.exp2(s - lse2[:, None])
            dp = tl.dot(do, tl.trans(v), input_precision=PREC)
            ds = p * (dp - delta[:, None])
            dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=PREC)
            if RANK > 0:
                kb = tl.load(KB + kb_off + offs_n[:, None] * s_kbn + offs_r[None, :] * s_kbr,
                             mask=mask_n[:, None] & (offs_r < RANK)[None, :], other=0.0)
                dqb = tl.dot(ds, kb.to(tl.float32), dqb, input_precision=BPREC)
    dq = dq * scale
    part = split.to(tl.int64) * H + h
    tl.store(DQP + (part * Lq + offs_m[:, None]) * D + offs_d[None, :], dq, mask=mask_md)
    if RANK > 0:
        tl.store(DQBP + (part * Lq + offs_m[:, None]) * RANK + offs_r[None, :], dqb,
                 mask=mask_m[:, None] & (offs_r < RANK)[None, :])


@triton.autotune(configs=_BIAS_CONFIGS, prune_configs_by=_PRUNE,
                 key=["Lq", "Lk", "BLOCK_D", "RANK", "PREC", "LR_DOT"])
@triton.jit
def _bwd_bias(Q, K, V, Bias, QB, KB, QA, KA, DO, LSE, DELTA, DBP,
              s_qb, s_qh, s_qm, s_qd, s_kb, s_kh, s_kn, s_kd, s_vb, s_vh, s_vn, s_vd,
              s_bh, s_bm, s_bn, s_qbb, s_qbh, s_qbm, s_qbr, s_kbb, s_kbh, s_kbn, s_kbr,
         s_qab, s_qah, s_kab, s_kah,
              s_db, s_dh, s_dm, s_dd,
              B, H, Lq, Lk, D, scale,
              RANK: tl.constexpr, PREC: tl.constexpr,
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
    mask_d = offs_d < D
    mask_md = mask_m[:, None] & mask_d[None, :]
    mask_nd = mask_n[:, None] & mask_d[None, :]
    bias_off = h * s_bh
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for bi in range(0, B):
        b = h * 0 + bi  # int64 tensor in compiled and interpreted mode alike
        q = tl.load(Q + b * s_qb + h * s_qh + offs_m[:, None] * s_qm + offs_d[None, :] * s_qd,
                    mask=mask_md, other=0.0)
        do = tl.load(DO + b * s_db + h * s_dh + offs_m[:, None] * s_dm + offs_d[None, :] * s_dd,
                     mask=mask_md, other=0.0)
        k = tl.load(K + b * s_kb + h * s_kh + offs_n[:, None] * s_kn + offs_d[None, :] * s_kd,
                    mask=mask_nd, other=0.0)
        v = tl.load(V + b * s_vb + h * s_vh + offs_n[:, None] * s_vn + offs_d[None, :] * s_vd,
                    mask=mask_nd, other=0.0)
        row = (b * H + h) * Lq + offs_m
        lse2 = tl.load(LSE + row, mask=mask_m, other=0.0) * 1.4426950408889634
        delta = tl.load(DELTA + row, mask=mask_m, other=0.0)
        qa = _load_qa(QA, b * s_qab + h * s_qah, offs_m, mask_m, LR_DOT, KAUG)
        s = _logits2(q, tl.trans(k), qa, Bias, bias_off, QB, b * s_qbb + h * s_qbh, KB,
                     b * s_kbb + h * s_kbh, KA, b * s_kab + h * s_kah, offs_m, offs_n, mask_m,
                     mask_n, s_bm, s_bn, s_qbm, s_qbr, s_kbn, s_kbr, scale, True, RANK, PREC,
                     LR_DOT, KAUG)
        p = tl.exp2(s - lse2[:, None])
        dp = tl.dot(do, tl.trans(v), input_precision=PREC)
        acc += p * (dp - delta[:, None])
    tl.store(DBP + (h * Lq + offs_m[:, None]) * Lk + offs_n[None, :], acc,
             mask=mask_m[:, None] & mask_n[None, :])


# ----------------------------------------------------------------------------------------------
# launch geometry


def _s(t: torch.Tensor | None, n: int) -> list[int]:
    """Strides of ``t`` with broadcast (size-1) dims as 0; n zeros when ``t`` is None."""
    if t is None:
        return [0] * n
    return [0 if t.shape[i] == 1 else t.stride(i) for i in range(t.ndim)]


def _prec(dtype: torch.dtype) -> tuple[str, str]:
    """Dot precision for the main products and for the fp32 low-rank-gradient products."""
    if dtype == torch.float32:
        p = "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee"
        return p, p
    return "tf32", "tf32"  # half inputs: the precision flag only matters for the fp32 dots


def _last_contig(t):
    return t if t is None or t.stride(-1) == 1 or t.shape[-1] == 1 else t.contiguous()


def _bias_args(bias, q_bias, k_bias, dtype, dev):
    """Kernel pointers for the biases plus, for half-precision inputs, the split fp16 factors
    qa = [q_hi, q_hi, q_lo], ka = [k_hi, k_lo, k_hi] (KAUG columns, zero padded) and their
    batch/head strides. Returns (args, strides, LR_DOT, KAUG)."""
    dummy = torch.empty(1, device=dev, dtype=torch.float32)
    lr_dot = q_bias is not None and dtype != torch.float32
    kaug = 16
    qa = ka = dummy
    strides = [0, 0, 0, 0]
    if lr_dot:
        R = q_bias.shape[3]
        kaug = max(16, triton.next_power_of_2(3 * R))
        qa, ka = _split_pair(q_bias, k_bias, kaug)
        strides = _s(qa, 4)[:2] + _s(ka, 4)[:2]
    args = (bias if bias is not None else dummy, q_bias if q_bias is not None else dummy,
            k_bias if k_bias is not None else dummy, qa, ka)
    return args, strides, lr_dot, kaug


def _split_pair(q_bias: torch.Tensor, k_bias: torch.Tensor, kaug: int):
    """fp16 hi/lo split of the low-rank factors: one fp16 dot of
    qa = [q_hi, q_hi, q_lo] and ka = [k_hi, k_lo, k_hi] gives q_bias k_bias^T to ~2^-21.

    Column r of both factors is first rescaled by a_r = sqrt(max|q_r| / max|k_r|) (the product
    is unchanged) so both sides stay well inside fp16's range."""
    qf, kf = q_bias.detach().float(), k_bias.detach().float()
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


def _n_sms(dev: torch.device) -> int:
    if dev.type == "cuda":
        return torch.cuda.get_device_properties(dev).multi_processor_count
    return 4


def _forward(q, k, v, bias, q_bias, k_bias, scale):
    B, H, Lk, D = k.shape
    Lq = q.shape[2]
    R = 0 if q_bias is None else q_bias.shape[3]
    out = torch.empty((B, H, Lq, D), device=q.device, dtype=q.dtype)
    lse = torch.empty((B, H, Lq), device=q.device, dtype=torch.float32)
    prec, _ = _prec(q.dtype)
    bargs, lr_strides, lr_dot, kaug = _bias_args(bias, q_bias, k_bias, q.dtype, q.device)
    grid = lambda meta: (triton.cdiv(Lq, meta["BLOCK_M"]), B * H)  # noqa: E731
    _fwd[grid](q, k, v, *bargs, out, lse,
               *_s(q, 4), *_s(k, 4), *_s(v, 4), *_s(bias, 3), *_s(q_bias, 4), *_s(k_bias, 4),
               *lr_strides, *out.stride(), H, Lq, Lk, D, scale,
               HAS_BIAS=bias is not None, RANK=R, PREC=prec, LR_DOT=lr_dot, KAUG=kaug,
               BLOCK_D=max(16, triton.next_power_of_2(D)))
    return out, lse


def _backward(q, k, v, bias, q_bias, k_bias, out, lse, dout, dlse, scale, needs):
    B, H, Lk, D = k.shape
    Lq = q.shape[2]
    dev = q.device
    R = 0 if q_bias is None else q_bias.shape[3]
    R_PAD = max(16, triton.next_power_of_2(max(R, 1)))
    BLOCK_D = max(16, triton.next_power_of_2(D))
    prec, bprec = _prec(q.dtype)
    bargs, lr_strides, lr_dot, kaug = _bias_args(bias, q_bias, k_bias, q.dtype, dev)
    delta = torch.empty((B, H, Lq), device=dev, dtype=torch.float32)
    _bwd_pre[(triton.cdiv(Lq, 64), B * H)](
        out, dout, dlse if dlse is not None else delta, delta,
        *out.stride(), *_s(dout, 4), H, Lq, D,
        HAS_DLSE=dlse is not None, BLOCK_M=64, BLOCK_D=BLOCK_D)
    common = (*_s(q, 4), *_s(k, 4), *_s(v, 4), *_s(bias, 3), *_s(q_bias, 4), *_s(k_bias, 4),
              *lr_strides, *_s(dout, 4))
    nq, nk, nv, nb, nqb, nkb = needs
    dq = dk = dv = dbias = dqb = dkb = None
    if nk or nv or nkb:
        dk = torch.empty((B, H, Lk, D), device=dev, dtype=k.dtype)
        dv = torch.empty((B, H, Lk, D), device=dev, dtype=v.dtype)
        dkb_p = torch.empty((B, H, Lk, R) if R else (1,), device=dev, dtype=torch.float32)
        grid = lambda meta: (triton.cdiv(Lk, meta["BLOCK_N"]), B * H)  # noqa: E731
        _bwd_kv[grid](q, k, v, *bargs, dout, lse, delta, dk, dv, dkb_p, *common,
                      H, Lq, Lk, D, scale, HAS_BIAS=bias is not None, RANK=R, R_PAD=R_PAD,
                      PREC=prec, BPREC=bprec, LR_DOT=lr_dot, KAUG=kaug,
                      BLOCK_D=BLOCK_D)
        if R and nkb:
            dkb = _reduce_to(dkb_p, k_bias.shape)
    if nq or nqb:
        per_batch = q.shape[0] != 1 or (q_bias is not None and q_bias.shape[0] != 1)
        if per_batch:
            bps = 1
        else:  # split the batch only as far as needed to fill the card
            programs = triton.cdiv(Lq, 64) * H
            n_split = max(1, min(B, (4 * _n_sms(dev)) // max(programs, 1)))
            bps = triton.cdiv(B, n_split)
        n_split = triton.cdiv(B, bps)
        dq_p = torch.empty((n_split, H, Lq, D), device=dev, dtype=torch.float32)
        dqb_p = torch.empty((n_split, H, Lq, R) if R else (1,), device=dev, dtype=torch.float32)
        grid = lambda meta: (triton.cdiv(Lq, meta["BLOCK_M"]), H, n_split)  # noqa: E731
        _bwd_q[grid](q, k, v, *bargs, dout, lse, delta, dq_p, dqb_p, *common,
                     B, H, Lq, Lk, D, scale, bps, HAS_BIAS=bias is not None, RANK=R,
                     R_PAD=R_PAD, PREC=prec, BPREC=bprec, LR_DOT=lr_dot, KAUG=kaug,
                      BLOCK_D=BLOCK_D)
        if nq:
            dq = _reduce_to(dq_p, q.shape).to(q.dtype)
        if R and nqb:
            dqb = _reduce_to(dqb_p, q_bias.shape)
    if bias is not None and nb:
        db_p = torch.empty((H, Lq, Lk), device=dev, dtype=torch.float32)
        grid = lambda meta: (triton.cdiv(Lq, meta["BLOCK_M"]),  # noqa: E731
                             triton.cdiv(Lk, meta["BLOCK_N"]), H)
        _bwd_bias[grid](q, k, v, *bargs, dout, lse, delta, db_p, *common,
                        B, H, Lq, Lk, D, scale, RANK=R, PREC=prec, LR_DOT=lr_dot,
                        KAUG=kaug, BLOCK_D=BLOCK_D)
        dbias = _reduce_to(db_p, bias.shape).to(bias.dtype)
    if dqb is not None:
        dqb = dqb.to(q_bias.dtype)
    if dkb is not None:
        dkb = dkb.to(k_bias.dtype)
    return dq, dk, dv, dbias, dqb, dkb


def _reduce_to(t: torch.Tensor, shape) -> torch.Tensor:
    """Sum ``t`` over the dims where ``shape`` has size 1 (broadcast dims)."""
    dims = [i for i, n in enumerate(shape) if n == 1 and t.shape[i] != 1]
    return t.sum(dim=dims, keepdim=True) if dims else t


class _Attention(torch.autograd.Function):
    """Owns launch geometry: forward saves (out, lse); backward recomputes the probabilities."""

    @staticmethod
    def forward(ctx, q, k, v, bias, q_bias, k_bias, scale):
        q, k, v, bias, q_bias, k_bias = (_last_contig(t) for t in (q, k, v, bias, q_bias, k_bias))
        out, lse = _forward(q, k, v, bias, q_bias, k_bias, scale)
        ctx.save_for_backward(q, k, v, bias, q_bias, k_bias, out, lse)
        ctx.scale = scale
        ctx.set_materialize_grads(False)
        return out, lse

    @staticmethod
    def backward(ctx, dout, dlse):
        q, k, v, bias, q_bias, k_bias, out, lse = ctx.saved_tensors
        if dout is None:
            dout = torch.zeros_like(out)
        dout = _last_contig(dout)
        if dlse is not None:
            dlse = dlse.float().contiguous()
        needs = ctx.needs_input_grad[:6]
        grads = _backward(q, k, v, bias, q_bias, k_bias, out, lse, dout, dlse, ctx.scale, needs)
        return (*grads, None)


def attention_triton(q, k, v, bias, q_bias, k_bias, scale: float):
    """Triton path of :func:`brainattn.kernels.attention`; returns ``(out, lse)``."""
    return _Attention.apply(q, k, v, bias, q_bias, k_bias, scale)
