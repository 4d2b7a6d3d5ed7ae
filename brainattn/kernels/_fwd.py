"""Forward pass: one program per (batch, query block, head) streams the key blocks with an online
softmax (FlashAttention-2 style, base-2 logits) and writes out and the natural-log lse.

The grid puts the batch on its fastest axis, so the programs that run together share a (head,
query block) and read the same dense-bias tile and, for broadcast queries, the same query tile
from L2. Full key blocks skip the key mask; the ragged rest runs in one ``TAIL_N``-wide step.
Without a dense bias and with a positive scale (``RAWMAX``) the row max is taken of the raw
q k^T (plus the folded low-rank term) times the scale: one FMA per logit for the exponent.
"""

import triton
import triton.language as tl

from brainattn.kernels._tile import LOG2E, load_qa, logits
from brainattn.kernels._tiling import ConfigSet, tail

# tuned list: past winners on an H200 and their neighbours (benchmarks/RESULTS.md)
CONFIGS = ConfigSet(
    [(128, 64, 8, 3), (64, 64, 4, 3), (128, 64, 4, 3), (128, 128, 8, 3), (64, 32, 4, 2)],
    (128, 64, 4, 3))

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
        c = scale * LOG2E
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
        s = logits(q, kT, qa, Bias, bias_off, QB, qb_off, KB, kb_off, KA, ka_off, offs_m,
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


@triton.jit
def _fwd_kernel(Q, K, V, Bias, QB, KB, QA, KA, O, LSE,
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
    qa = load_qa(QA, b * s_qab + h * s_qah, offs_m, mask_m, LR_DOT, KAUG)
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



fwd = CONFIGS.bind(CONFIGS.autotune(["Lq", "Lk", "BLOCK_D", "HAS_BIAS", "RANK", "PREC", "LR_DOT"])(
    triton.heuristics({"TAIL_N": lambda a: tail(a["Lk"], a["BLOCK_N"])})(_fwd_kernel)))
