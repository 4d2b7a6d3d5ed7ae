"""Prototype (issue 3): the broadcast-query dq pass written in Gluon with explicit
asynchronous wgmma, to test whether Triton's wgmma scheduling is what limits the backward.

Triton 3.6 waits for every ``tl.dot`` whose result feeds elementwise work right after issuing it
(SASS of ``_bwd_q``: q k^T group, wait, dO v^T group, wait, softmax work), so within a warpgroup
the tensor cores idle during the exponentials (ncu: tensor pipe 52 % busy, 2 warps per
scheduler). The kernels here schedule the wgmmas by hand:

- ``_dq_gluon``: one warpgroup, 64 queries; q k^T and dO v^T issued back to back, the
  exponentials under dO v^T, dq += dS K left in flight into the next block; K/V (and dO at each
  batch start) copied by cp.async into NS-slot rings, the (batch, key block) pairs one flat loop.
- ``_dq_gluon_2t``: 128 queries as two 64-row halves per warpgroup; half A's softmax under half
  B's two matmuls, half B's under A's dq wgmma.
- ``_dq_gluon_pp``: software-pipelined across key blocks (the next block's q k^T and dO v^T
  before this block's softmax, FA3's intra-warpgroup overlap). ptxas serialises every wgmma in
  it (C7514: a non-wgmma instruction reads an in-flight accumulator; the moves it flagged were
  removed one by one, the message stayed), so it measures the serialised form.

Scope: no bias, head dim 64, bf16, queries broadcast over the batch, delta and lse from
brainattn's passes; no narrow tail step (962 keys = 16 blocks of 64, the last 97 % padding).

Measured (2026-11-27, vertices, each against brainattn's Triton dq pass in the same process;
the Triton pass also forms delta and has the narrow tail step):

| kernel | H200 | H100 |
|---|---|---|
| Triton dq pass (with delta) | 3.088 ms | 3.075 / 3.069 ms |
| first version (register-staged K/V, full wait per block) | - | 4.230 ms |
| ``_dq_gluon`` NS=3 (3 CTAs/SM) | 3.162 ms | 3.132 ms |
| ``_dq_gluon`` NS=4 / NS=5 (2 CTAs/SM) | 3.574 / 3.567 ms | - |
| ``_dq_gluon`` BLOCK_N=128, NS=3 / 4 | 4.225 / 4.211 ms | - |
| ``_dq_gluon_2t`` NS=3 / NS=4 | - | 3.189 / 3.163 ms |
| ``_dq_gluon_pp`` NS=5 (serialised by ptxas) | - | 3.904 ms |

All agree with the Triton pass to 2e-5. Every overlapping schedule lands at the Triton pass's
rate (~450 TFLOP/s counting 3 matmul units); without the tail step's 6 % the best is at most
~5 % ahead. So the wgmma waits are not what holds the backward below cuDNN on vertices; the
extra recomputed matmul units of the broadcast-query dq pass are.

    PYTHONPATH=. python3 benchmarks/experimental/gluon_dq.py          # on a Hopper GPU
    GLUON_K=2t GLUON_BM=128 GLUON_NS=3 python3 benchmarks/experimental/gluon_dq.py --compile-only

``--compile-only`` compiles for sm_90 without a GPU (triton 3.6) and prints registers, spills
and the wgmma/exp2 SASS of the chosen kernel (GLUON_K = v2 | 2t | pp).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    async_copy,
    fence_async_shared,
    warpgroup_mma,
    warpgroup_mma_init,
    warpgroup_mma_wait,
)

LOG2E = 1.4426950408889634


@gluon.jit
def _issue_copies(it, slot, k_s, v_s, do_s, K, V, DO, kv_off, do_a, do_b, rows_a, rows_b,
                  rows_n, s_kb, s_kn, s_db, nkb, total, Lq, Lk, BLOCK_N: gl.constexpr,
                  HALVES: gl.constexpr):
    """The cp.async copies of iteration ``it`` (batch it // nkb, key block it % nkb) as one
    commit group: K and V into ring slot ``slot`` and, at a batch's first key block, its dO
    (HALVES tiles of query rows) into the two-batch dO ring. Past the end: zero-filled."""
    bn = it // nkb
    jn = it - bn * nkb
    live = it < total
    nmask = ((jn * BLOCK_N + rows_n)[:, None] < Lk) & live
    async_copy.async_copy_global_to_shared(k_s.index(slot), K + bn * s_kb + jn * BLOCK_N * s_kn
                                           + kv_off, mask=nmask)
    async_copy.async_copy_global_to_shared(v_s.index(slot), V + bn * s_kb + jn * BLOCK_N * s_kn
                                           + kv_off, mask=nmask)
    if jn == 0:
        async_copy.async_copy_global_to_shared(do_s.index((bn % 2) * HALVES),
                                               DO + bn * s_db + do_a,
                                               mask=(rows_a[:, None] < Lq) & live)
        if HALVES == 2:
            async_copy.async_copy_global_to_shared(do_s.index((bn % 2) * 2 + 1),
                                                   DO + bn * s_db + do_b,
                                                   mask=(rows_b[:, None] < Lq) & live)
    async_copy.commit_group()


@gluon.jit
def _dq_gluon(Q, K, V, DO, LSE, DELTA, DQ,
              s_kb, s_kh, s_kn, s_db, s_dh, s_dm,
              B, H, Lq, Lk, c, scale,
              BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, D: gl.constexpr, NS: gl.constexpr,
              num_warps: gl.constexpr):
    """One program: BLOCK_M broadcast queries of head h, all batches and key blocks as one flat
    loop (it = b * nkb + j), K/V (and dO at each batch start) copied by cp.async into NS-slot
    rings NS - 2 iterations ahead, so no load sits between the matmuls."""
    pid_m = gl.program_id(0)
    h = gl.program_id(1)
    m0 = pid_m * BLOCK_M
    mma_s: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                    instr_shape=[16, BLOCK_N, 16])
    mma_d: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                    instr_shape=[16, D, 16])
    ds_op: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma_d, k_width=2)
    ld: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [num_warps, 1], [1, 0])
    smem2: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2)
    q_s = gl.allocate_shared_memory(gl.bfloat16, [BLOCK_M, D], smem2)
    do_s = gl.allocate_shared_memory(gl.bfloat16, [2, BLOCK_M, D], smem2)
    k_s = gl.allocate_shared_memory(gl.bfloat16, [NS, BLOCK_N, D], smem2)
    v_s = gl.allocate_shared_memory(gl.bfloat16, [NS, BLOCK_N, D], smem2)

    rows_m = m0 + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, ld))
    rows_n = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, ld))
    cols = gl.arange(0, D, layout=gl.SliceLayout(0, ld))
    m_vec = m0 + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, mma_s))
    n_vec = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, mma_s))
    q = gl.load(Q + (h * Lq + rows_m[:, None]) * D + cols[None, :], mask=rows_m[:, None] < Lq,
                other=0.0)
    q_s.store(q)
    nkb = gl.cdiv(Lk, BLOCK_N)
    total = B * nkb
    do_off = h * s_dh + rows_m[:, None] * s_dm + cols[None, :]
    kv_off = h * s_kh + rows_n[:, None] * s_kn + cols[None, :]
    # prologue: iterations 0 .. NS - 3
    for it in gl.static_range(NS - 2):
        _issue_copies(it, it, k_s, v_s, do_s, K, V, DO, kv_off, do_off, do_off, rows_m, rows_m,
                      rows_n, s_kb, s_kn, s_db, nkb, total, Lq, Lk, BLOCK_N, 1)
    dq = warpgroup_mma_init(gl.zeros([BLOCK_M, D], gl.float32, layout=mma_d))
    zero_s = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, layout=mma_s)
    lse2 = gl.zeros([BLOCK_M], gl.float32, layout=gl.SliceLayout(1, mma_s))
    delta = gl.zeros([BLOCK_M], gl.float32, layout=gl.SliceLayout(1, mma_s))
    for it in range(0, total):
        b = it // nkb
        j = it - b * nkb
        if j == 0:
            bh = b * H + h
            lse2 = gl.load(LSE + bh * Lq + m_vec, mask=m_vec < Lq, other=0.0) * 1.4426950408889634
            delta = gl.load(DELTA + bh * Lq + m_vec, mask=m_vec < Lq, other=0.0)
        async_copy.wait_group(NS - 3)
        fence_async_shared()
        gl.thread_barrier()
        # refill the slot of iteration it - 2 (its dq wgmma finished before it - 1's S wait)
        _issue_copies(it + NS - 2, (it + NS - 2) % NS, k_s, v_s, do_s, K, V, DO, kv_off, do_off,
                      do_off, rows_m, rows_m, rows_n, s_kb, s_kn, s_db, nkb, total, Lq, Lk,
                      BLOCK_N, 1)
        cur = it % NS
        kc = k_s.index(cur)
        s = warpgroup_mma(q_s, kc.permute((1, 0)), zero_s, use_acc=False, is_async=True)
        dp = warpgroup_mma(do_s.index(b % 2), v_s.index(cur).permute((1, 0)), zero_s,
                           use_acc=False, is_async=True)
        s = warpgroup_mma_wait(num_outstanding=1, deps=(s,))
        s = gl.where((j * BLOCK_N + n_vec)[None, :] < Lk, s, float("-inf"))
        p = gl.exp2(s * c - lse2[:, None])
        dp = warpgroup_mma_wait(num_outstanding=0, deps=(dp,))
        ds = p * (dp - delta[:, None])
        ds16 = gl.convert_layout(ds.to(gl.bfloat16), ds_op)
        dq = warpgroup_mma(ds16, kc, dq, is_async=True)
    async_copy.wait_group(0)
    dq = warpgroup_mma_wait(num_outstanding=0, deps=(dq,))
    out_m = m0 + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, mma_d))
    out_d = gl.arange(0, D, layout=gl.SliceLayout(0, mma_d))
    gl.store(DQ + (h * Lq + out_m[:, None]) * D + out_d[None, :], (dq * scale).to(gl.bfloat16),
             mask=out_m[:, None] < Lq)


@gluon.jit
def _pp_step(it, s_c, dp_c, dq, lse2, delta, q_s, do_s, k_s, v_s, K, V, DO, LSE, DELTA,
             kv_off, do_off, rows_m, rows_n, m_vec, n_vec, zero_s, s_kb, s_kn, s_db,
             H, h, Lq, Lk, nkb, total, c, BLOCK_N: gl.constexpr, NS: gl.constexpr,
             ds_op: gl.constexpr, FIRST: gl.constexpr = False):
    b = it // nkb
    j = it - b * nkb
    if j == 0:
        bh = b * H + h
        lse2 = gl.load(LSE + bh * Lq + m_vec, mask=m_vec < Lq, other=0.0) * 1.4426950408889634
        delta = gl.load(DELTA + bh * Lq + m_vec, mask=m_vec < Lq, other=0.0)
    async_copy.wait_group(NS - 5)  # group it + 1
    fence_async_shared()
    gl.thread_barrier()
    # refill the slot of iteration it - 3 (every warp waited on its dq wgmma in it - 1)
    _issue_copies(it + NS - 3, (it + NS - 3) % NS, k_s, v_s, do_s, K, V, DO, kv_off, do_off,
                  do_off, rows_m, rows_m, rows_n, s_kb, s_kn, s_db, nkb, total, Lq, Lk, BLOCK_N,
                  1)
    # the next block's two matmuls go in before this block's softmax (a zero block past the end)
    n1 = (it + 1) % NS
    b1 = (it + 1) // nkb
    s_n = warpgroup_mma(q_s, k_s.index(n1).permute((1, 0)), zero_s, use_acc=False, is_async=True)
    dp_n = warpgroup_mma(do_s.index(b1 % 2), v_s.index(n1).permute((1, 0)), zero_s,
                         use_acc=False, is_async=True)
    # in flight, oldest first: S(it), dP(it), dq(it - 1), S(it + 1), dP(it + 1); dq(it - 1) is
    # retired too, since its register operand dS must not be redefined under it (ptxas C7513)
    s_c, dp_c = warpgroup_mma_wait(num_outstanding=2, deps=(s_c, dp_c))
    s_c = gl.where((j * BLOCK_N + n_vec)[None, :] < Lk, s_c, float("-inf"))
    p = gl.exp2(s_c * c - lse2[:, None])
    ds = p * (dp_c - delta[:, None])
    ds16 = gl.convert_layout(ds.to(gl.bfloat16), ds_op)
    # the first step starts dq from the product itself: no moves define its registers
    dq = warpgroup_mma(ds16, k_s.index(it % NS), dq, use_acc=not FIRST, is_async=True)
    return s_n, dp_n, dq, lse2, delta


@gluon.jit
def _dq_gluon_pp(Q, K, V, DO, LSE, DELTA, DQ,
                 s_kb, s_kh, s_kn, s_db, s_dh, s_dm,
                 B, H, Lq, Lk, c, scale,
                 BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, D: gl.constexpr, NS: gl.constexpr,
                 num_warps: gl.constexpr):
    """As _dq_gluon, software-pipelined across key blocks: the next block's q k^T and dO v^T
    are issued before this block's exponentials, so one warpgroup's softmax runs under its own
    matmuls (FA3's intra-warpgroup overlap). Slot of iteration it - 3 is refilled at the start
    of iteration it (after a barrier that follows every warp's wait on its dq wgmma): NS >= 5."""
    pid_m = gl.program_id(0)
    h = gl.program_id(1)
    m0 = pid_m * BLOCK_M
    mma_s: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                    instr_shape=[16, BLOCK_N, 16])
    mma_d: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                    instr_shape=[16, D, 16])
    ds_op: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma_d, k_width=2)
    ld: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [num_warps, 1], [1, 0])
    smem2: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2)
    q_s = gl.allocate_shared_memory(gl.bfloat16, [BLOCK_M, D], smem2)
    do_s = gl.allocate_shared_memory(gl.bfloat16, [2, BLOCK_M, D], smem2)
    k_s = gl.allocate_shared_memory(gl.bfloat16, [NS, BLOCK_N, D], smem2)
    v_s = gl.allocate_shared_memory(gl.bfloat16, [NS, BLOCK_N, D], smem2)

    rows_m = m0 + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, ld))
    rows_n = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, ld))
    cols = gl.arange(0, D, layout=gl.SliceLayout(0, ld))
    m_vec = m0 + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, mma_s))
    n_vec = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, mma_s))
    q = gl.load(Q + (h * Lq + rows_m[:, None]) * D + cols[None, :], mask=rows_m[:, None] < Lq,
                other=0.0)
    q_s.store(q)
    nkb = gl.cdiv(Lk, BLOCK_N)
    total = B * nkb
    do_off = h * s_dh + rows_m[:, None] * s_dm + cols[None, :]
    kv_off = h * s_kh + rows_n[:, None] * s_kn + cols[None, :]
    for it in gl.static_range(NS - 3):  # groups 0 .. NS - 4
        _issue_copies(it, it, k_s, v_s, do_s, K, V, DO, kv_off, do_off, do_off, rows_m, rows_m,
                      rows_n, s_kb, s_kn, s_db, nkb, total, Lq, Lk, BLOCK_N, 1)
    async_copy.wait_group(NS - 4)  # group 0
    fence_async_shared()
    gl.thread_barrier()
    zero_s = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, layout=mma_s)
    lse2 = gl.zeros([BLOCK_M], gl.float32, layout=gl.SliceLayout(1, mma_s))
    delta = gl.zeros([BLOCK_M], gl.float32, layout=gl.SliceLayout(1, mma_s))
    s_c = warpgroup_mma(q_s, k_s.index(0).permute((1, 0)), zero_s, use_acc=False, is_async=True)
    dp_c = warpgroup_mma(do_s.index(0), v_s.index(0).permute((1, 0)), zero_s, use_acc=False,
                         is_async=True)
    # no register of an in-flight wgmma is defined or read by other instructions (ptxas
    # C7513-C7515 would serialise every wgmma): step 0 and the last step are peeled, the loop
    # takes two steps per trip so no in-flight accumulator is copied; B * nkb must be even
    dq = gl.zeros([BLOCK_M, D], gl.float32, layout=mma_d)
    s_c, dp_c, dq, lse2, delta = _pp_step(
        0, s_c, dp_c, dq, lse2, delta, q_s, do_s, k_s, v_s, K, V, DO, LSE, DELTA,
        kv_off, do_off, rows_m, rows_n, m_vec, n_vec, zero_s, s_kb, s_kn, s_db,
        H, h, Lq, Lk, nkb, total, c, BLOCK_N, NS, ds_op, True)
    for it2 in range(1, total - 1, 2):
        s_n, dp_n, dq, lse2, delta = _pp_step(
            it2, s_c, dp_c, dq, lse2, delta, q_s, do_s, k_s, v_s, K, V, DO, LSE, DELTA,
            kv_off, do_off, rows_m, rows_n, m_vec, n_vec, zero_s, s_kb, s_kn, s_db,
            H, h, Lq, Lk, nkb, total, c, BLOCK_N, NS, ds_op)
        s_c, dp_c, dq, lse2, delta = _pp_step(
            it2 + 1, s_n, dp_n, dq, lse2, delta, q_s, do_s, k_s, v_s, K, V, DO, LSE, DELTA,
            kv_off, do_off, rows_m, rows_n, m_vec, n_vec, zero_s, s_kb, s_kn, s_db,
            H, h, Lq, Lk, nkb, total, c, BLOCK_N, NS, ds_op)
    s_c, dp_c, dq, lse2, delta = _pp_step(
        total - 1, s_c, dp_c, dq, lse2, delta, q_s, do_s, k_s, v_s, K, V, DO, LSE, DELTA,
        kv_off, do_off, rows_m, rows_n, m_vec, n_vec, zero_s, s_kb, s_kn, s_db,
        H, h, Lq, Lk, nkb, total, c, BLOCK_N, NS, ds_op)
    async_copy.wait_group(0)
    dq = warpgroup_mma_wait(num_outstanding=0, deps=(dq,))
    out_m = m0 + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, mma_d))
    out_d = gl.arange(0, D, layout=gl.SliceLayout(0, mma_d))
    gl.store(DQ + (h * Lq + out_m[:, None]) * D + out_d[None, :], (dq * scale).to(gl.bfloat16),
             mask=out_m[:, None] < Lq)


@gluon.jit
def _dq_gluon_2t(Q, K, V, DO, LSE, DELTA, DQ,
                 s_kb, s_kh, s_kn, s_db, s_dh, s_dm,
                 B, H, Lq, Lk, c, scale,
                 BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, D: gl.constexpr, NS: gl.constexpr,
                 num_warps: gl.constexpr):
    """As _dq_gluon with two 64-row query halves per warpgroup (BLOCK_M = 128, 4 warps): the
    four matmuls of a key block go in together, half A's softmax runs under half B's q k^T and
    dO v^T, half B's under A's dq wgmma. No wgmma result is carried in flight across the loop
    edge except the two dq accumulators (ptxas keeps wgmmas asynchronous only then)."""
    pid_m = gl.program_id(0)
    h = gl.program_id(1)
    HALF: gl.constexpr = BLOCK_M // 2
    m0 = pid_m * BLOCK_M
    mma_s: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                    instr_shape=[16, BLOCK_N, 16])
    mma_d: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                    instr_shape=[16, D, 16])
    ds_op: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma_d, k_width=2)
    ld: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [num_warps, 1], [1, 0])
    smem2: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2)
    q_s = gl.allocate_shared_memory(gl.bfloat16, [2, HALF, D], smem2)
    do_s = gl.allocate_shared_memory(gl.bfloat16, [4, HALF, D], smem2)  # (batch % 2) * 2 + half
    k_s = gl.allocate_shared_memory(gl.bfloat16, [NS, BLOCK_N, D], smem2)
    v_s = gl.allocate_shared_memory(gl.bfloat16, [NS, BLOCK_N, D], smem2)

    rows_a = m0 + gl.arange(0, HALF, layout=gl.SliceLayout(1, ld))
    rows_b = rows_a + HALF
    rows_n = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, ld))
    cols = gl.arange(0, D, layout=gl.SliceLayout(0, ld))
    ma = m0 + gl.arange(0, HALF, layout=gl.SliceLayout(1, mma_s))
    mb = ma + HALF
    n_vec = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, mma_s))
    q_s.index(0).store(gl.load(Q + (h * Lq + rows_a[:, None]) * D + cols[None, :],
                               mask=rows_a[:, None] < Lq, other=0.0))
    q_s.index(1).store(gl.load(Q + (h * Lq + rows_b[:, None]) * D + cols[None, :],
                               mask=rows_b[:, None] < Lq, other=0.0))
    nkb = gl.cdiv(Lk, BLOCK_N)
    total = B * nkb
    do_a = h * s_dh + rows_a[:, None] * s_dm + cols[None, :]
    do_b = h * s_dh + rows_b[:, None] * s_dm + cols[None, :]
    kv_off = h * s_kh + rows_n[:, None] * s_kn + cols[None, :]
    for it in gl.static_range(NS - 2):
        _issue_copies(it, it, k_s, v_s, do_s, K, V, DO, kv_off, do_a, do_b, rows_a, rows_b,
                      rows_n, s_kb, s_kn, s_db, nkb, total, Lq, Lk, BLOCK_N, 2)
    dqa = warpgroup_mma_init(gl.zeros([HALF, D], gl.float32, layout=mma_d))
    dqb = warpgroup_mma_init(gl.zeros([HALF, D], gl.float32, layout=mma_d))
    zero_s = gl.zeros([HALF, BLOCK_N], gl.float32, layout=mma_s)
    la = gl.zeros([HALF], gl.float32, layout=gl.SliceLayout(1, mma_s))
    lb = gl.zeros([HALF], gl.float32, layout=gl.SliceLayout(1, mma_s))
    da = gl.zeros([HALF], gl.float32, layout=gl.SliceLayout(1, mma_s))
    db = gl.zeros([HALF], gl.float32, layout=gl.SliceLayout(1, mma_s))
    for it in range(0, total):
        b = it // nkb
        j = it - b * nkb
        if j == 0:
            bh = b * H + h
            la = gl.load(LSE + bh * Lq + ma, mask=ma < Lq, other=0.0) * 1.4426950408889634
            lb = gl.load(LSE + bh * Lq + mb, mask=mb < Lq, other=0.0) * 1.4426950408889634
            da = gl.load(DELTA + bh * Lq + ma, mask=ma < Lq, other=0.0)
            db = gl.load(DELTA + bh * Lq + mb, mask=mb < Lq, other=0.0)
        async_copy.wait_group(NS - 3)
        fence_async_shared()
        gl.thread_barrier()
        _issue_copies(it + NS - 2, (it + NS - 2) % NS, k_s, v_s, do_s, K, V, DO, kv_off, do_a,
                      do_b, rows_a, rows_b, rows_n, s_kb, s_kn, s_db, nkb, total, Lq, Lk,
                      BLOCK_N, 2)
        cur = it % NS
        kc = k_s.index(cur)
        vt = v_s.index(cur).permute((1, 0))
        sa = warpgroup_mma(q_s.index(0), kc.permute((1, 0)), zero_s, use_acc=False, is_async=True)
        pa = warpgroup_mma(do_s.index((b % 2) * 2), vt, zero_s, use_acc=False, is_async=True)
        sb = warpgroup_mma(q_s.index(1), kc.permute((1, 0)), zero_s, use_acc=False, is_async=True)
        pb = warpgroup_mma(do_s.index((b % 2) * 2 + 1), vt, zero_s, use_acc=False, is_async=True)
        keep = (j * BLOCK_N + n_vec)[None, :] < Lk
        # in flight: dqa(it-1), dqb(it-1), sa, pa, sb, pb -> retire up to pa
        sa, pa = warpgroup_mma_wait(num_outstanding=2, deps=(sa, pa))
        dsa = gl.exp2(gl.where(keep, sa, float("-inf")) * c - la[:, None]) * (pa - da[:, None])
        dsa16 = gl.convert_layout(dsa.to(gl.bfloat16), ds_op)
        dqa = warpgroup_mma(dsa16, kc, dqa, is_async=True)
        sb, pb = warpgroup_mma_wait(num_outstanding=1, deps=(sb, pb))
        dsb = gl.exp2(gl.where(keep, sb, float("-inf")) * c - lb[:, None]) * (pb - db[:, None])
        dsb16 = gl.convert_layout(dsb.to(gl.bfloat16), ds_op)
        dqb = warpgroup_mma(dsb16, kc, dqb, is_async=True)
    async_copy.wait_group(0)
    dqa, dqb = warpgroup_mma_wait(num_outstanding=0, deps=(dqa, dqb))
    oa = m0 + gl.arange(0, HALF, layout=gl.SliceLayout(1, mma_d))
    ob = oa + HALF
    od = gl.arange(0, D, layout=gl.SliceLayout(0, mma_d))
    gl.store(DQ + (h * Lq + oa[:, None]) * D + od[None, :], (dqa * scale).to(gl.bfloat16),
             mask=oa[:, None] < Lq)
    gl.store(DQ + (h * Lq + ob[:, None]) * D + od[None, :], (dqb * scale).to(gl.bfloat16),
             mask=ob[:, None] < Lq)


def compile_only():
    """Compile for sm_90 without a GPU and print registers, spills and the inner loop's wgmma
    waits (a CPU-only machine: the SASS shows whether the waits are where they should be)."""
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource

    fn = {"pp": _dq_gluon_pp, "2t": _dq_gluon_2t}.get(os.environ.get("GLUON_K"), _dq_gluon)
    sig = {n: ("constexpr" if n in ("BLOCK_M", "BLOCK_N", "D", "NS", "num_warps") else
               "*bf16" if n in ("Q", "K", "V", "DO", "DQ") else
               "*fp32" if n in ("LSE", "DELTA") else
               "fp32" if n in ("c", "scale") else "i32") for n in fn.arg_names}
    consts = {"BLOCK_M": int(os.environ.get("GLUON_BM", 64)), "BLOCK_N": 64, "D": 64, "NS": int(os.environ.get("GLUON_NS", 4)), "num_warps": 4}
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(fn.arg_names)
             if sig[n].startswith("*") or n in ("s_kb", "s_kh", "s_kn", "s_db", "s_dh", "s_dm",
                                                "Lq")}
    src = GluonASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs)
    ck = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
    bindir = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    path = "/tmp/gluon_dq.cubin"
    open("/tmp/gluon_dq.ptx", "w").write(ck.asm["ptx"])
    with open(path, "wb") as f:
        f.write(ck.asm["cubin"])
    res = subprocess.run([os.path.join(bindir, "cuobjdump"), "-res-usage", path],
                         capture_output=True, text=True).stdout
    print([line.strip() for line in res.splitlines() if "REG" in line])
    sass = subprocess.run([os.path.join(bindir, "nvdisasm"), "-c", path], capture_output=True,
                          text=True).stdout
    for line in sass.splitlines():
        if any(t in line for t in ("HGMMA", "WARPGROUP", "MUFU.EX2", "BRA")):
            print(line.split("*/", 1)[-1].strip()[:90])


def run():
    import torch

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
    import attention as A  # noqa: E402

    from brainattn.kernels import _triton as T

    dims, q, k, v, _ = A.make_case("vertices")
    B, H, Lq, Lk, D = dims
    scale = D ** -0.5
    out, lse, _ = T._forward(q, k, v, None, None, None, scale)
    dout = torch.randn_like(out)
    ref = T._backward(q, k, v, None, None, None, out, lse, dout, None, scale,
                      (1, 0, 0, 0, 0, 0))[0]
    delta = (out.float() * dout.float()).sum(-1).contiguous()
    dq = torch.empty((1, H, Lq, D), device="cuda", dtype=torch.bfloat16)

    kernels = {"v2": (_dq_gluon, 64), "2t": (_dq_gluon_2t, 128), "pp": (_dq_gluon_pp, 64)}

    def gluon_dq(name, bn=64, ns=4):
        fn, bm = kernels[name]
        fn[(triton.cdiv(Lq, bm), H)](
            q, k, v, dout, lse, delta, dq, k.stride(0), k.stride(1), k.stride(2),
            dout.stride(0), dout.stride(1), dout.stride(2), B, H, Lq, Lk, scale * LOG2E, scale,
            BLOCK_M=bm, BLOCK_N=bn, D=D, NS=ns, num_warps=4)

    flops = 3 * 2 * B * H * Lq * Lk * D
    t_t = triton.testing.do_bench(
        lambda: T._backward(q, k, v, None, None, None, out, lse, dout, None, scale,
                            (1, 0, 0, 0, 0, 0)), warmup=50, rep=300)
    print(f"triton dq pass (with delta) {t_t:.3f} ms ({flops / t_t / 1e9:.0f} TFLOP/s)")
    variants = os.environ.get("GLUON_VARIANTS", "v2:64:3,2t:64:3,2t:64:4")
    for spec in variants.split(","):
        name, bn, ns = spec.split(":")
        bn, ns = int(bn), int(ns)
        if name == "pp" and B * triton.cdiv(Lk, bn) % 2:
            print(f"gluon dq {spec}: skipped (the pipelined kernel needs B * key blocks even)")
            continue
        try:
            dq.zero_()
            gluon_dq(name, bn, ns)
            torch.cuda.synchronize()
            err = ((dq.float() - ref.float()).norm() / ref.float().norm()).item()
            t_g = triton.testing.do_bench(lambda n=name, b=bn, s=ns: gluon_dq(n, b, s),
                                          warmup=50, rep=300)
            print(f"gluon dq {spec}: {t_g:.3f} ms ({flops / t_g / 1e9:.0f} TFLOP/s), relative "
                  f"difference to the Triton pass {err:.2e}", flush=True)
        except Exception as e:  # noqa: BLE001 - a prototype: report and go on
            print(f"gluon dq {spec}: failed: {str(e)[:300]}", flush=True)
    t_t = triton.testing.do_bench(
        lambda: T._backward(q, k, v, None, None, None, out, lse, dout, None, scale,
                            (1, 0, 0, 0, 0, 0)), warmup=50, rep=300)
    print(f"triton dq pass (with delta), again {t_t:.3f} ms ({flops / t_t / 1e9:.0f} TFLOP/s)")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--compile-only", action="store_true")
    if ap.parse_args().compile_only:
        compile_only()
    else:
        run()
