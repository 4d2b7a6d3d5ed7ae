"""In-kernel pieces shared by the Triton passes: biased logits (row and transposed forms), the
low-rank split-factor tile, and the low-rank gradient dot.

Logits are in base 2 (scaled by log2 e), so the passes use ``exp2``. The low-rank term
``q_bias k_bias^T``: for float16/bfloat16 inputs one fp16 tensor-core dot of split factors
(hi/lo, error ~2^-21 of |q_bias||k_bias|, see ``_plan.split_pair``); for float32 inputs R
exact fp32 outer products. Without a dense bias the query factor's split carries 1/scale, so
q k^T and the low-rank term are scaled once.
"""

import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def logits(q, kT, qa, Bias, bias_off, QB, qb_off, KB, kb_off, KA, ka_off, offs_m, offs_n,
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
        s = tl.dot(qa, kaT, s) * (scale * LOG2E)
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
        s = s * LOG2E
    else:
        s = s * (scale * LOG2E)
    if MASK_N:
        s = tl.where(mask_n[None, :], s, float("-inf"))
    return s


@triton.jit
def load_qa(QA, qa_off, offs_m, mask_m, LR_DOT: tl.constexpr, KAUG: tl.constexpr):
    """The query-side split factor tile (BLOCK_M, KAUG) in fp16, or a dummy scalar."""
    if LR_DOT:
        offs_a = tl.arange(0, KAUG)
        return tl.load(QA + qa_off + offs_m[:, None] * KAUG + offs_a[None, :],
                       mask=mask_m[:, None], other=0.0)
    else:
        return 0.0



@triton.jit
def logits_t(k, qT, ka, Bias, bias_off, QB, qb_off, KB, kb_off, QA, qa_off, offs_m, offs_n,
              mask_m, mask_n, s_bm, s_qbm, s_qbr, s_kbn, s_kbr, scale,
              HAS_BIAS: tl.constexpr, RANK: tl.constexpr, PREC: tl.constexpr,
              LR_DOT: tl.constexpr, KAUG: tl.constexpr):
    """Transposed base-2 logits (BLOCK_N, BLOCK_M), no key masking (the dk/dv pass stores only
    valid keys' rows, and a row depends only on its own key). Folded 1/scale as in
    ``logits``."""
    s = tl.dot(k, qT, input_precision=PREC)
    if RANK > 0 and LR_DOT and not HAS_BIAS:
        offs_a = tl.arange(0, KAUG)
        qaT = tl.load(QA + qa_off + offs_m[None, :] * KAUG + offs_a[:, None],
                      mask=mask_m[None, :], other=0.0)
        s = tl.dot(ka, qaT, s) * (scale * LOG2E)
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
        s = s * LOG2E
    else:
        s = s * (scale * LOG2E)
    return s



@triton.jit
def _factor_halves(F, f_off, offs_r, mask_r, s_r, s_c, RANK: tl.constexpr, GW: tl.constexpr):
    """The factor's rows ``offs_r`` twice side by side, (rows, GW) fp32: column c and
    c + GW/2 both hold factor column c (zeros past R), and the mask of the first half."""
    offs_c = tl.arange(0, GW)
    col = tl.where(offs_c < GW // 2, offs_c, offs_c - GW // 2)
    f = tl.load(F + f_off + offs_r[:, None] * s_r + col[None, :] * s_c,
                mask=mask_r[:, None] & (col < RANK)[None, :], other=0.0).to(tl.float32)
    return f, (offs_c < GW // 2)[None, :]


@triton.jit
def split_f16(x):
    """fp32 x as fp16 high part and remainder: hi = fp16(x), lo = fp16(x - hi), so hi + lo
    holds x to ~2^-22 of |x| (for |x| inside fp16's normal range)."""
    hi = x.to(tl.float16)
    return hi, (x - hi.to(tl.float32)).to(tl.float16)


@triton.jit
def factor_tile(F, f_off, offs_r, mask_r, s_r, s_c, RANK: tl.constexpr, GW: tl.constexpr):
    """A low-rank factor's rows ``offs_r`` as the (rows, GW) fp32 right operand of its
    gradient dot: columns [0, R) the factor rounded down to tf32 (10 mantissa bits), columns
    [GW/2, GW/2 + R) the remainder, zeros elsewhere (GW >= 2R).

    The gradient dot runs in tf32, which rounds its operands to 10 bits. For the pRF factors
    that loses the cancellation the gradient relies on: [x, y, |x|^2, 1] combined with
    (2 mu / 2 sigma^2, -1 / 2 sigma^2, -|mu|^2 / 2 sigma^2) is -|x - mu|^2 / 2 sigma^2, small
    where the weight is, while each column is O(1); 2^-11 of O(1) per key was 2.5x SDPA's error
    in d sigma. With the remainder in its own columns the factor enters the dot to ~2^-22 at the
    cost of no extra dot (GW is 16 either way for R <= 8); ``fold`` adds the two column halves
    of the result in registers, so what is stored or reduced is R columns wide."""
    f, first = _factor_halves(F, f_off, offs_r, mask_r, s_r, s_c, RANK, GW)
    hi = (f.to(tl.int32, bitcast=True) & -8192).to(tl.float32, bitcast=True)
    return tl.where(first, hi, f - hi)


@triton.jit
def factor_tile_h(F, f_off, offs_r, mask_r, s_r, s_c, RANK: tl.constexpr, GW: tl.constexpr):
    """``factor_tile`` in fp16 for a half-precision gradient dot: the factor's rows ``offs_r``
    times a power of two per column (g = 2^-ceil(log2 max|column|) over these rows, so every
    entry fits fp16), columns [0, R) rounded to fp16 (11 bits), [GW/2, GW/2 + R) the
    remainder in fp16, so the factor enters the dot to ~2^-22 of its column's largest entry.
    Returns (tile (rows, GW) fp16, 1/g (GW/2,) fp32 for the folded result's columns)."""
    f, first = _factor_halves(F, f_off, offs_r, mask_r, s_r, s_c, RANK, GW)
    m = tl.max(tl.abs(f), 0)  # (GW,): column c and c + GW/2 hold the same maximum
    e = tl.ceil(tl.log2(tl.where(m > 0, m, 1.0)))  # an empty column: g = 1
    hi, lo = split_f16(f * tl.exp2(-e)[None, :])
    ginv = tl.max(tl.reshape(tl.exp2(e), [2, GW // 2]), 0)
    return tl.where(first, hi, lo), ginv


@triton.jit
def fold(g, GW: tl.constexpr):
    """(X, GW) -> (X, GW/2): a low-rank gradient's high-part and remainder column halves
    (``factor_tile``) added. In the accumulator layout of a dot the two halves of a row sit in
    the same thread, so the reshape, permute and split move no data between threads."""
    a, b = tl.reshape(g, [g.shape[0], 2, GW // 2]).permute(0, 2, 1).split()
    return a + b


@triton.jit
def lr_grad(acc, ds, F, f_off, offs_r, mask_r, s_r, s_c, RANK: tl.constexpr,
            PREC: tl.constexpr, GW: tl.constexpr):
    """acc (X, GW) += ds @ [factor_hi | factor_lo] for a low-rank gradient: ds (X, Y) fp32, the
    factor's rows offs_r (of F, strides s_r, s_c) split by ``factor_tile``; ``fold`` the result
    before it is stored."""
    f = factor_tile(F, f_off, offs_r, mask_r, s_r, s_c, RANK, GW)
    return tl.dot(ds, f, acc, input_precision=PREC)
