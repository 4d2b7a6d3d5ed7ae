"""Backward, key side: dk, dv and the key factor's gradient dk_bias, optionally with dq (and
dq_bias) added in.

One program per (batch, key block, head) loops over the query blocks in the transposed form of
the Triton tutorial (S^T = K Q^T, so P^T and dS^T feed the next dots from registers with no
layout shuffle). The last programs use one or two narrow tiles (962 keys in 128-key programs:
7 + 64 + 16, see ``_tiling.tails``).

``bwd_kv_dq`` is the same kernel with dq fused in (``_plan.fused_dq`` says when: many queries
broadcast over the batch, no dense bias, head dim 64, sm_90+). Each query step also forms
dq^T += K^T dS^T and adds it, transposed back, to an fp32 (H, Lq, D) buffer with a TMA
reduction (a descriptor made in the kernel), so the separate dq pass, which recomputes q k^T and
dO v^T for every batch, is not needed: 7 matmul units per step instead of 9. With a low-rank
bias whose query factor is shared by the batch (the pRF prior) it also adds dq_bias = dS k_bias
to an (H, Lq, R) buffer the same way: an fp16 dot of dS times a power of two per (head, query)
(the pre-pass's smallest over the batch, so fp16's range holds any gradient scale; the host
divides the sum by it) with the key factor split into fp16 high and low parts, its two column
halves folded in registers. The batches' query sweeps start at different offsets so the
programs that run together reduce into different rows. The order of the fp32 additions varies,
so dq is not bitwise repeatable;
``torch.use_deterministic_algorithms(True)`` keeps the separate dq pass.
"""

import triton
import triton.language as tl

from brainattn.kernels._tile import LOG2E, factor_tile_h, fold, logits_t, lr_grad
from brainattn.kernels._tiling import ConfigSet, tails

# (queries per step, keys per program): the tutorial's dk/dv shape (32, 128) first; interpreted,
# 64-key programs, so the two-tile tail runs in the tests
CONFIGS = ConfigSet(
    [(32, 128, 4, 3), (32, 128, 4, 5), (64, 128, 8, 3), (16, 64, 4, 3), (32, 64, 4, 3),
     (32, 64, 4, 4)],
    (64, 64, 4, 3), (16, 64, 4, 1))
# the pass that also adds dq: 64-query tiles, 4 warps (its dq dot has M = D and N = BLOCK_M;
# other tiles were slower, docs/kernels.md)
CONFIGS_DQ = ConfigSet([(64, 64, 4, 3), (64, 64, 4, 4), (64, 64, 4, 5)], (64, 64, 4, 4),
                       (64, 64, 4, 1))

@triton.jit
def _kv_step(dk, dv, dkb, start_m, k, v, ka, q_base, do_base, LSE, DELTA, row_base, Bias,
             bias_off, QB, qb_off, KB, kb_off, QA, qa_off, offs_n, mask_n, offs_d,
             mask_d, s_qm, s_dm, s_bm, s_qbm, s_qbr, s_kbn, s_kbr, Lq, scale,
             HAS_BIAS: tl.constexpr, RANK: tl.constexpr, PREC: tl.constexpr,
             LR_DOT: tl.constexpr, KAUG: tl.constexpr, LR_GRAD: tl.constexpr, GW: tl.constexpr,
             MASK_M: tl.constexpr, BLOCK_M: tl.constexpr, dqd=None, h32=0, kT=None,
             DQ_FUSED: tl.constexpr = False, dqbd=None, kbf=None, kbg=None, CS=None,
             DQB_FUSED: tl.constexpr = False, TAIL: tl.constexpr = False):
    """One query block of the dk/dv pass: dv += P^T dO, dk += dS^T Q (and dk_bias). A full
    block (not MASK_M) loads q, dO, lse and delta without a query mask. With DQ_FUSED also
    dq^T += K^T dS^T, added to the (H, Lq, D) fp32 accumulator by a TMA reduction (dqd); with
    DQB_FUSED also c dq_bias += c dS k_bias into (H, Lq, R) (dqbd): an fp16 dot of dS times
    each query's power of two c (CS, this head's row of the pre-pass's (H, Lq) scales) and the
    fp16-split key factor kbf, the halves folded and kbg (per column) undone before the
    reduction; the host divides the sum by c."""
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
    lse2 = lse2 * LOG2E
    sT = logits_t(k, qT, ka, Bias, bias_off, QB, qb_off, KB, kb_off, QA, qa_off, offs_m,
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
        # scale and cast (faster than an (H, D, Lq) accumulator; docs/kernels.md)
        dqd.atomic_add([h32, start_m, 0], tl.reshape(tl.trans(dqT), [1, BLOCK_M, dqT.shape[0]]))
    if DQB_FUSED:  # (BLOCK_M, GW/2): the box's columns past R fall outside the buffer (clipped)
        if MASK_M:
            cs = tl.load(CS + offs_m, mask=mask_m, other=1.0)
        else:
            cs = tl.load(CS + offs_m)
        dsh = dsT * cs[None, :]
        if TAIL:  # keys past Lk (logit 0, maybe far above the row's): huge p, past fp16
            dsh = tl.where(mask_n[:, None], dsh, 0.0)
        dsh = dsh.to(tl.float16)
        # reduced times c (the host divides the sum by it): a per-row 1/c here would be a
        # second, unpipelined load of CS in the result's layout every step
        dqb = fold(tl.dot(tl.trans(dsh), kbf), GW) * kbg[None, :]
        dqbd.atomic_add([h32, start_m, 0], tl.reshape(dqb, [1, BLOCK_M, GW // 2]))
    if LR_GRAD:
        dkb = lr_grad(dkb, dsT, QB, qb_off, offs_m, mask_m, s_qbm, s_qbr, RANK, PREC, GW)
    return dk, dv, dkb


@triton.jit
def _kv_block(Q, K, V, Bias, QB, KB, QA, KA, DO, LSE, DELTA, DK, DV, DKB, DQA, DQBA, CS,
              s_qb, s_qh, s_qm, s_kb, s_kh, s_kn, s_vb, s_vh, s_vn, s_bh, s_bm,
              s_qbb, s_qbh, s_qbm, s_qbr, s_kbb, s_kbh, s_kbn, s_kbr, s_qab, s_qah, s_kab, s_kah,
              s_db, s_dh, s_dm,
              b, h, start_n, H, Lq, Lk, scale, s_dqa, s_dqb,
              HEAD_D: tl.constexpr, HAS_BIAS: tl.constexpr, RANK: tl.constexpr,
              PREC: tl.constexpr, LR_DOT: tl.constexpr, KAUG: tl.constexpr,
              LR_GRAD: tl.constexpr, GW: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
              BLOCK_N: tl.constexpr, DQ_FUSED: tl.constexpr, DQB_FUSED: tl.constexpr,
              TAIL: tl.constexpr):
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
    # full query blocks load without a query mask (no per-step compares); then the rest
    m_full = (Lq // BLOCK_M) * BLOCK_M
    dqd = DQA
    kT = k
    h32 = 0
    rot = 0
    if DQ_FUSED:
        # broadcast queries: every (batch, key block) program adds to the same dq rows, so
        # each batch starts its query sweep at its own offset (the programs that run together
        # then add to different rows; docs/kernels.md); the TMA clips the last block's rows
        # at Lq
        dqd = tl.make_tensor_descriptor(DQA, shape=[H, Lq, HEAD_D],
                                        strides=[Lq * s_dqa, s_dqa, 1],
                                        block_shape=[1, BLOCK_M, BLOCK_D])
        kT = tl.trans(k)
        h32 = h.to(tl.int32)
        rot = ((b.to(tl.int32) * (Lq // BLOCK_M)) // tl.num_programs(0)) * BLOCK_M
    dqbd = DQBA
    kbf = dkb
    kbg = 0.0
    if DQB_FUSED:
        # (H, Lq, R) rows of s_dqb >= R columns (16 bytes); the key factor split into its
        # fp16 high part and remainder (``factor_tile_h``), whose two column halves each step folds
        # before the reduction (R columns reduced, not 2R)
        dqbd = tl.make_tensor_descriptor(DQBA, shape=[H, Lq, RANK],
                                         strides=[Lq * s_dqb, s_dqb, 1],
                                         block_shape=[1, BLOCK_M, GW // 2])
        kbf, kbg = factor_tile_h(KB, kb_off, offs_n, mask_n, s_kbn, s_kbr, RANK, GW)
        CS += h * Lq
    for i in range(0, m_full, BLOCK_M):
        start_m = i + rot
        if DQ_FUSED:
            start_m = tl.where(start_m >= m_full, start_m - m_full, start_m)
        dk, dv, dkb = _kv_step(dk, dv, dkb, start_m, k, v, ka, q_base, do_base, LSE, DELTA,
                               row_base, Bias, bias_off, QB, qb_off, KB, kb_off, QA, qa_off,
                               offs_n, mask_n, offs_d, mask_d, s_qm, s_dm, s_bm, s_qbm,
                               s_qbr, s_kbn, s_kbr, Lq, scale, HAS_BIAS, RANK, PREC,
                               LR_DOT, KAUG, LR_GRAD, GW, False, BLOCK_M, dqd, h32, kT,
                               DQ_FUSED, dqbd, kbf, kbg, CS, DQB_FUSED, TAIL)
    if m_full < Lq:
        dk, dv, dkb = _kv_step(dk, dv, dkb, m_full, k, v, ka, q_base, do_base, LSE, DELTA,
                               row_base, Bias, bias_off, QB, qb_off, KB, kb_off, QA, qa_off,
                               offs_n, mask_n, offs_d, mask_d, s_qm, s_dm, s_bm, s_qbm,
                               s_qbr, s_kbn, s_kbr, Lq, scale, HAS_BIAS, RANK, PREC,
                               LR_DOT, KAUG, LR_GRAD, GW, True, BLOCK_M, dqd, h32, kT,
                               DQ_FUSED, dqbd, kbf, kbg, CS, DQB_FUSED, TAIL)
    dk = dk * scale
    nd = (bh * Lk + offs_n[:, None]) * HEAD_D + offs_d[None, :]
    tl.store(DK + nd, dk.to(DK.dtype.element_ty), mask=mask_nd)
    tl.store(DV + nd, dv.to(DV.dtype.element_ty), mask=mask_nd)
    if LR_GRAD:
        offs_g = tl.arange(0, GW // 2)
        tl.store(DKB + (bh * Lk + offs_n[:, None]) * RANK + offs_g[None, :], fold(dkb, GW),
                 mask=mask_n[:, None] & (offs_g < RANK)[None, :])


@triton.jit
def _bwd_kv_kernel(Q, K, V, Bias, QB, KB, QA, KA, DO, LSE, DELTA, DK, DV, DKB, DQA, DQBA, CS,
                s_qb, s_qh, s_qm, s_kb, s_kh, s_kn, s_vb, s_vh, s_vn, s_bh, s_bm,
                s_qbb, s_qbh, s_qbm, s_qbr, s_kbb, s_kbh, s_kbn, s_kbr, s_qab, s_qah, s_kab, s_kah,
                s_db, s_dh, s_dm,
                H, Lq, Lk, scale, s_dqa, s_dqb,
                HEAD_D: tl.constexpr, HAS_BIAS: tl.constexpr, RANK: tl.constexpr,
                PREC: tl.constexpr, LR_DOT: tl.constexpr, KAUG: tl.constexpr,
                LR_GRAD: tl.constexpr, GW: tl.constexpr,
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
        _kv_block(Q, K, V, Bias, QB, KB, QA, KA, DO, LSE, DELTA, DK, DV, DKB, DQA, DQBA, CS, s_qb,
                  s_qh, s_qm, s_kb, s_kh, s_kn, s_vb, s_vh, s_vn, s_bh, s_bm, s_qbb, s_qbh,
                  s_qbm, s_qbr, s_kbb, s_kbh, s_kbn, s_kbr, s_qab, s_qah, s_kab, s_kah, s_db,
                  s_dh, s_dm, b, h, start_n, H, Lq, Lk, scale, s_dqa, s_dqb, HEAD_D,
                  HAS_BIAS, RANK, PREC, LR_DOT, KAUG, LR_GRAD, GW, BLOCK_D,
                  BLOCK_M, BLOCK_N, DQ_FUSED, DQB_FUSED, False)
    elif pid_n == n_full:
        _kv_block(Q, K, V, Bias, QB, KB, QA, KA, DO, LSE, DELTA, DK, DV, DKB, DQA, DQBA, CS, s_qb,
                  s_qh, s_qm, s_kb, s_kh, s_kn, s_vb, s_vh, s_vn, s_bh, s_bm, s_qbb, s_qbh,
                  s_qbm, s_qbr, s_kbb, s_kbh, s_kbn, s_kbr, s_qab, s_qah, s_kab, s_kah, s_db,
                  s_dh, s_dm, b, h, start_n, H, Lq, Lk, scale, s_dqa, s_dqb, HEAD_D,
                  HAS_BIAS, RANK, PREC, LR_DOT, KAUG, LR_GRAD, GW, BLOCK_D,
                  BLOCK_M, TAIL_N, DQ_FUSED, DQB_FUSED, True)
    elif TAIL2_N > 0:
        start_2 = n_full * BLOCK_N + TAIL_N
        _kv_block(Q, K, V, Bias, QB, KB, QA, KA, DO, LSE, DELTA, DK, DV, DKB, DQA, DQBA, CS, s_qb,
                  s_qh, s_qm, s_kb, s_kh, s_kn, s_vb, s_vh, s_vn, s_bh, s_bm, s_qbb, s_qbh,
                  s_qbm, s_qbr, s_kbb, s_kbh, s_kbn, s_kbr, s_qab, s_qah, s_kab, s_kah, s_db,
                  s_dh, s_dm, b, h, start_2, H, Lq, Lk, scale, s_dqa, s_dqb, HEAD_D,
                  HAS_BIAS, RANK, PREC, LR_DOT, KAUG, LR_GRAD, GW, BLOCK_D,
                  BLOCK_M, TAIL2_N, DQ_FUSED, DQB_FUSED, True)


_HEUR = {"TAIL_N": lambda a: tails(a["Lk"], a["BLOCK_N"])[0],
         "TAIL2_N": lambda a: tails(a["Lk"], a["BLOCK_N"])[1]}
_KEY = ["Lq", "Lk", "BLOCK_D", "HAS_BIAS", "RANK", "PREC", "LR_DOT", "LR_GRAD", "DQ_FUSED",
        "DQB_FUSED"]
bwd_kv = CONFIGS.bind(CONFIGS.autotune(_KEY)(triton.heuristics(_HEUR)(_bwd_kv_kernel)))
# the same kernel with dq fused in (its own tuning: other tiles win there); the tuner's trial
# runs must not leave their sums in the accumulators
bwd_kv_dq = CONFIGS_DQ.bind(CONFIGS_DQ.autotune(_KEY, reset_to_zero=["DQA", "DQBA"])(
    triton.heuristics(_HEUR)(_bwd_kv_kernel)))
