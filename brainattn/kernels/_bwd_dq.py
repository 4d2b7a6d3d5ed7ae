"""Backward, query side: the dq pass (dq and the query factor's gradient dq_bias) and the delta
pre-pass for backwards that run no dq pass.

``bwd_q``: one program per (batch split, query block, head); it loops over the split's batches
and over key blocks. It first forms delta = rowsum(dO * O) - dlse for its rows and stores it for
the dk/dv pass (so no separate pre-pass). Queries shared by the batch (q of batch 1) are loaded
once and their gradient is summed over the batch in registers, so no atomics and no per-batch
copy of dq; when there are few query blocks the batch is split, and the last split to finish a
tile sums the splits' fp32 partials in split order (deterministic) and resets its counter. With
a batch-shared low-rank key factor (the pRF prior) the loops swap (key blocks outer, batches
inner) so dS is summed over the batch before the factor's dot.

``bwd_pre``: delta alone, when dq is not needed or is added inside the dk/dv pass (and, for
the fused dq_bias, each row's fp16 scale).
"""

import triton
import triton.language as tl

from brainattn.kernels._tile import LOG2E, fold, load_qa, logits, lr_grad
from brainattn.kernels._tiling import ConfigSet, tail

CONFIGS = ConfigSet([(64, 64, 4, 3), (64, 64, 4, 4), (128, 64, 8, 3), (64, 32, 4, 3)],
                    (64, 64, 4, 3))


@triton.jit
def bwd_pre(O, DO, DLSE, DELTA, VMAX, CS, s_db, s_dh, s_dm, H, Lq,
            HEAD_D: tl.constexpr, HAS_DLSE: tl.constexpr, ROW_SCALE: tl.constexpr,
            BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """delta = rowsum(dO * O) - dlse, for a backward that does not run the dq pass.

    With ROW_SCALE also each row's power of two c = 2^(15 - ceil(log2 b)) for the fused
    pass's fp16 dq_bias dot, b = 2 ||dO_i||_1 max|v| + |dlse_i| bounding |dS_ij| (|dP_ij| and
    |rowsum(dO O)| are at most ||dO_i||_1 max|v|, as O is an average of v's rows; VMAX holds
    max|v|), so |c dS| <= 2^15 stays inside fp16's range while the row's large entries keep
    fp16's full 11 bits whatever the scale of the upstream gradient. The batches' rows of one
    (head, query) add into one dq_bias row, so CS (H, Lq; the host fills it with 2^126) keeps
    the smallest c over the batch (an atomic min): the fused pass's sums then share one c,
    which the host divides out once. A batch whose bound is far below the largest loses only
    digits below the largest one's rounding error; a row without gradient (b = 0, dS = 0)
    takes no part."""
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
    dlse = 0.0
    if HAS_DLSE:
        dlse = tl.load(DLSE + row, mask=offs_m < Lq, other=0.0)
        delta -= dlse
    tl.store(DELTA + row, delta, mask=offs_m < Lq)
    if ROW_SCALE:
        bound = 2.0 * tl.sum(tl.abs(do), 1) * tl.load(VMAX).to(tl.float32) + tl.abs(dlse)
        # the clamp keeps c a finite, normal fp32 number
        e = tl.where(bound > 0, 15.0 - tl.ceil(tl.log2(bound)), 126.0)
        tl.atomic_min(CS + h * Lq + offs_m, tl.exp2(tl.minimum(tl.maximum(e, -126.0), 126.0)),
                      mask=offs_m < Lq)


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
    s = logits(q, tl.trans(k), qa, Bias, bias_off, QB, qb_off, KB, kb_off, KA, ka_off, offs_m,
               offs_n, mask_m, mask_n, s_bm, s_qbm, s_qbr, s_kbn, s_kbr, scale,
               HAS_BIAS, RANK, PREC, LR_DOT, KAUG, MASK_N)
    p = tl.exp2(s - lse2[:, None])
    dp = tl.dot(do, tl.trans(v), input_precision=PREC)
    ds = p * (dp - delta[:, None])
    dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=PREC)
    return dq, ds


@triton.jit
def _dq_step(dq, dqb, q, qa, do, lse2, delta, start_n, k_base, v_base, Bias, bias_off, QB,
             qb_off, KB, kb_off, KA, ka_off, offs_m, offs_d, mask_m, mask_d, s_kn,
             s_vn, s_bm, s_qbm, s_qbr, s_kbn, s_kbr, Lk, scale,
             HAS_BIAS: tl.constexpr, RANK: tl.constexpr, PREC: tl.constexpr,
             LR_DOT: tl.constexpr, KAUG: tl.constexpr, LR_GRAD: tl.constexpr,
             GW: tl.constexpr, MASK_N: tl.constexpr, BLOCK_N: tl.constexpr):
    """One key block of the dq pass: dq += dS K, dq_bias += dS k_bias."""
    offs_n = start_n + tl.arange(0, BLOCK_N)
    mask_n = offs_n < Lk
    dq, ds = _dq_tile(dq, q, qa, do, lse2, delta, offs_n, mask_n, k_base, v_base, Bias,
                      bias_off, QB, qb_off, KB, kb_off, KA, ka_off, offs_m, offs_d, mask_m,
                      mask_d, s_kn, s_vn, s_bm, s_qbm, s_qbr, s_kbn, s_kbr, scale,
                      HAS_BIAS, RANK, PREC, LR_DOT, KAUG, MASK_N)
    if LR_GRAD:
        dqb = lr_grad(dqb, ds, KB, kb_off, offs_n, mask_n, s_kbn, s_kbr, RANK, PREC, GW)
    return dq, dqb


@triton.jit
def _dq_keys(dq, dqb, q, qa, b_lo, nb, start_n, K, V, DO, LSE, DELTA, Bias, bias_off, QB, KB,
             KA, h, offs_m, offs_d, mask_m, mask_d, s_kb, s_kh, s_kn, s_vb, s_vh, s_vn, s_bm,
             s_qbb, s_qbh, s_qbm, s_qbr, s_kbb, s_kbh, s_kbn, s_kbr, s_kab, s_kah, s_db, s_dh,
             s_dm, H, Lq, Lk, scale,
             HAS_BIAS: tl.constexpr, RANK: tl.constexpr, PREC: tl.constexpr,
             LR_DOT: tl.constexpr, KAUG: tl.constexpr, GW: tl.constexpr, MASK_N: tl.constexpr,
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
        lse2 = tl.load(LSE + row, mask=mask_m, other=0.0) * LOG2E
        dq, ds = _dq_tile(dq, q, qa, do, lse2, delta, offs_n, mask_n, K + b * s_kb + h * s_kh,
                          V + b * s_vb + h * s_vh, Bias, bias_off, QB, b * s_qbb + h * s_qbh,
                          KB, b * s_kbb + h * s_kbh, KA, b * s_kab + h * s_kah, offs_m, offs_d,
                          mask_m, mask_d, s_kn, s_vn, s_bm, s_qbm, s_qbr, s_kbn, s_kbr, scale,
                          HAS_BIAS, RANK, PREC, LR_DOT, KAUG, MASK_N)
        dss += ds
    dqb = lr_grad(dqb, dss, KB, b_lo * s_kbb + h * s_kbh, offs_n, mask_n, s_kbn, s_kbr, RANK,
                  PREC, GW)
    return dq, dqb


@triton.jit
def _bwd_q_kernel(Q, K, V, Bias, QB, KB, QA, KA, DO, O, DLSE, LSE, DELTA, DQP, DQBP, DQ, CNT,
                  s_qb, s_qh, s_qm, s_kb, s_kh, s_kn, s_vb, s_vh, s_vn, s_bh, s_bm,
                  s_qbb, s_qbh, s_qbm, s_qbr, s_kbb, s_kbh, s_kbn, s_kbr, s_qab, s_qah, s_kab,
                  s_kah, s_db, s_dh, s_dm,
                  B, H, Lq, Lk, scale, batch_per_split,
                  HEAD_D: tl.constexpr, HAS_BIAS: tl.constexpr, RANK: tl.constexpr,
                  PREC: tl.constexpr, LR_DOT: tl.constexpr, KAUG: tl.constexpr,
                  LR_GRAD: tl.constexpr, GW: tl.constexpr, HAS_DLSE: tl.constexpr,
                  REDUCE: tl.constexpr, LR_SWAP: tl.constexpr,
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
    qa = load_qa(QA, b_lo.to(tl.int64) * s_qab + h * s_qah, offs_m, mask_m, LR_DOT, KAUG)
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
                               bias_off, QB, KB, KA, h, offs_m, offs_d, mask_m, mask_d,
                               s_kb, s_kh, s_kn, s_vb, s_vh, s_vn, s_bm, s_qbb, s_qbh, s_qbm,
                               s_qbr, s_kbb, s_kbh, s_kbn, s_kbr, s_kab, s_kah, s_db, s_dh,
                               s_dm, H, Lq, Lk, scale, HAS_BIAS, RANK, PREC, LR_DOT, KAUG, GW,
                               False, BLOCK_M, BLOCK_N)
        if n_full < Lk:
            dq, dqb = _dq_keys(dq, dqb, q, qa, b0, nb, n_full, K, V, DO, LSE, DELTA, Bias,
                               bias_off, QB, KB, KA, h, offs_m, offs_d, mask_m, mask_d,
                               s_kb, s_kh, s_kn, s_vb, s_vh, s_vn, s_bm, s_qbb, s_qbh, s_qbm,
                               s_qbr, s_kbb, s_kbh, s_kbn, s_kbr, s_kab, s_kah, s_db, s_dh,
                               s_dm, H, Lq, Lk, scale, HAS_BIAS, RANK, PREC, LR_DOT, KAUG, GW,
                               True, BLOCK_M, TAIL_N)
    else:
        for bi in range(0, b_hi - b_lo):
            b = b_lo.to(tl.int64) + bi
            do = tl.load(DO + b * s_db + h * s_dh + offs_m[:, None] * s_dm + offs_d[None, :],
                         mask=mask_md, other=0.0)
            row = (b * H + h) * Lq + offs_m
            delta = _form_delta(O, DLSE, DELTA, row, do, offs_d, mask_m, mask_md, HEAD_D,
                                HAS_DLSE)
            lse2 = tl.load(LSE + row, mask=mask_m, other=0.0) * LOG2E
            k_base = K + b * s_kb + h * s_kh
            v_base = V + b * s_vb + h * s_vh
            qb_off = b * s_qbb + h * s_qbh
            kb_off = b * s_kbb + h * s_kbh
            ka_off = b * s_kab + h * s_kah
            for start_n in range(0, n_full, BLOCK_N):
                dq, dqb = _dq_step(dq, dqb, q, qa, do, lse2, delta, start_n, k_base, v_base,
                                   Bias, bias_off, QB, qb_off, KB, kb_off, KA, ka_off, offs_m,
                                   offs_d, mask_m, mask_d, s_kn, s_vn, s_bm, s_qbm, s_qbr,
                                   s_kbn, s_kbr, Lk, scale, HAS_BIAS, RANK, PREC, LR_DOT, KAUG,
                                   LR_GRAD, GW, False, BLOCK_N)
            if n_full < Lk:
                dq, dqb = _dq_step(dq, dqb, q, qa, do, lse2, delta, n_full, k_base, v_base,
                                   Bias, bias_off, QB, qb_off, KB, kb_off, KA, ka_off, offs_m,
                                   offs_d, mask_m, mask_d, s_kn, s_vn, s_bm, s_qbm, s_qbr,
                                   s_kbn, s_kbr, Lk, scale, HAS_BIAS, RANK, PREC, LR_DOT, KAUG,
                                   LR_GRAD, GW, True, TAIL_N)
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
    if LR_GRAD:  # the factor's high-part and remainder column halves (``factor_tile``) added
        offs_g = tl.arange(0, GW // 2)
        tl.store(DQBP + (part * Lq + offs_m[:, None]) * RANK + offs_g[None, :], fold(dqb, GW),
                 mask=mask_m[:, None] & (offs_g < RANK)[None, :])


bwd_q = CONFIGS.bind(CONFIGS.autotune(
    ["Lq", "Lk", "BLOCK_D", "HAS_BIAS", "RANK", "PREC", "LR_DOT", "LR_GRAD"])(
    triton.heuristics({"TAIL_N": lambda a: tail(a["Lk"], a["BLOCK_N"])})(_bwd_q_kernel)))
