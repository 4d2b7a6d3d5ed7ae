"""Backward, dense bias: dbias = sum over the batch of dS, one program per (query block, key block,
head) looping over the batch, so the batch sum needs no atomics and nothing of size
B * H * Lq * Lk is ever formed.
"""

import triton
import triton.language as tl

from brainattn.kernels._tile import LOG2E, load_qa, logits
from brainattn.kernels._tiling import ConfigSet

CONFIGS = ConfigSet([(64, 64, 4, 3), (128, 64, 8, 3), (64, 128, 8, 3)], (64, 64, 4, 3))


@triton.jit
def _bwd_bias_kernel(Q, K, V, Bias, QB, KB, QA, KA, DO, LSE, DELTA, DBP,
                     s_qb, s_qh, s_qm, s_kb, s_kh, s_kn, s_vb, s_vh, s_vn, s_bh, s_bm,
                     s_qbb, s_qbh, s_qbm, s_qbr, s_kbb, s_kbh, s_kbn, s_kbr, s_qab, s_qah, s_kab,
                     s_kah,
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
        lse2 = tl.load(LSE + row, mask=mask_m, other=0.0) * LOG2E
        delta = tl.load(DELTA + row, mask=mask_m, other=0.0)
        qa = load_qa(QA, b * s_qab + h * s_qah, offs_m, mask_m, LR_DOT, KAUG)
        s = logits(q, tl.trans(k), qa, Bias, bias_off, QB, b * s_qbb + h * s_qbh, KB,
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


bwd_bias = CONFIGS.bind(CONFIGS.autotune(["Lq", "Lk", "BLOCK_D", "RANK", "PREC", "LR_DOT"])(
    _bwd_bias_kernel))
