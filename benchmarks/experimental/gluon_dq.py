"""Prototype (issue 3, next step): the broadcast-query dq pass written in Gluon with explicit
asynchronous wgmma, so a warpgroup's exponentials overlap its own matmuls.

Triton 3.6 waits for every ``tl.dot`` whose result feeds elementwise work right after issuing it
(SASS of ``_bwd_q``: q k^T group, wait, dO v^T group, wait, softmax work), so within a warpgroup
the tensor cores idle during the exponentials (ncu: tensor pipe 52 % busy, 2 warps per
scheduler). Here each key block issues S = q k^T and dP = dO v^T back to back, waits for S only
(``warpgroup_mma_wait(1)``), computes P while dP is in flight, then issues dq += dS K
asynchronously and lets it run into the next block's loads.

Scope: no dense or low-rank bias, head dim 64, bf16, queries broadcast over the batch (the
vertices case), delta and lse from brainattn's own passes. Run on a Hopper GPU:

    PYTHONPATH=. python3 benchmarks/experimental/gluon_dq.py

It checks dq against brainattn's Triton dq pass and times both. Status (2026-11-27): compiles
for sm_90 with triton 3.6 (``--compile-only`` on a CPU-only machine: 198 registers, no spills);
not yet run on a GPU. The SASS issues the q k^T and dO v^T groups back to back with one drain
(Triton's pass drains after each) and leaves dq += dS K in flight into the next block, but
ptxas hoists the dP wait above 28 of the 32 exponentials (the PTX has all 32 between the two
waits), so the exponential/matmul overlap is partial. Next: measure; then pipeline across
blocks (issue the next block's q k^T before this block's softmax, two k/v buffers).
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
    fence_async_shared,
    warpgroup_mma,
    warpgroup_mma_init,
    warpgroup_mma_wait,
)

LOG2E = 1.4426950408889634


@gluon.jit
def _dq_gluon(Q, K, V, DO, LSE, DELTA, DQ,
              s_kb, s_kh, s_kn, s_db, s_dh, s_dm,
              B, H, Lq, Lk, c, scale,
              BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, D: gl.constexpr,
              num_warps: gl.constexpr):
    pid_m = gl.program_id(0)
    h = gl.program_id(1)
    m0 = pid_m * BLOCK_M
    # register layouts: wgmma accumulators (one warpgroup, 16-row atoms) and 16-byte loads
    mma_s: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                    instr_shape=[16, BLOCK_N, 16])
    mma_d: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                    instr_shape=[16, D, 16])
    ds_op: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma_d, k_width=2)
    ld: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [num_warps, 1], [1, 0])
    smem: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2)
    q_s = gl.allocate_shared_memory(gl.bfloat16, [BLOCK_M, D], smem)
    do_s = gl.allocate_shared_memory(gl.bfloat16, [BLOCK_M, D], smem)
    k_s = gl.allocate_shared_memory(gl.bfloat16, [BLOCK_N, D], smem)
    v_s = gl.allocate_shared_memory(gl.bfloat16, [BLOCK_N, D], smem)

    rows_m = m0 + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, ld))
    rows_n = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, ld))
    cols = gl.arange(0, D, layout=gl.SliceLayout(0, ld))
    m_vec = m0 + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, mma_s))
    n_vec = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, mma_s))
    q = gl.load(Q + (h * Lq + rows_m[:, None]) * D + cols[None, :], mask=rows_m[:, None] < Lq,
                other=0.0)
    q_s.store(q)
    # dq lives as an asynchronous wgmma accumulator across both loops
    dq = warpgroup_mma_init(gl.zeros([BLOCK_M, D], gl.float32, layout=mma_d))
    zero_s = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, layout=mma_s)
    for b in range(0, B):
        bh = b * H + h
        do = gl.load(DO + b * s_db + h * s_dh + rows_m[:, None] * s_dm + cols[None, :],
                     mask=rows_m[:, None] < Lq, other=0.0)
        lse2 = gl.load(LSE + bh * Lq + m_vec, mask=m_vec < Lq, other=0.0) * 1.4426950408889634
        delta = gl.load(DELTA + bh * Lq + m_vec, mask=m_vec < Lq, other=0.0)
        k_base = K + b * s_kb + h * s_kh
        v_base = V + b * s_kb + h * s_kh
        k_r = gl.load(k_base + rows_n[:, None] * s_kn + cols[None, :], mask=rows_n[:, None] < Lk,
                      other=0.0)
        v_r = gl.load(v_base + rows_n[:, None] * s_kn + cols[None, :], mask=rows_n[:, None] < Lk,
                      other=0.0)
        # the last block's dq wgmma still reads k_s; dP of the last block read do_s
        dq = warpgroup_mma_init(warpgroup_mma_wait(num_outstanding=0, deps=(dq,)))
        do_s.store(do)
        for n0 in range(0, Lk, BLOCK_N):
            acc = warpgroup_mma_wait(num_outstanding=0, deps=(dq,))  # k_s, v_s free again
            k_s.store(k_r)
            v_s.store(v_r)
            fence_async_shared()
            gl.thread_barrier()
            s = warpgroup_mma(q_s, k_s.permute((1, 0)), zero_s, use_acc=False, is_async=True)
            dp = warpgroup_mma(do_s, v_s.permute((1, 0)), zero_s, use_acc=False, is_async=True)
            # the next block's tiles load while the two wgmmas run
            nx = n0 + BLOCK_N + rows_n
            k_r = gl.load(k_base + nx[:, None] * s_kn + cols[None, :], mask=nx[:, None] < Lk,
                          other=0.0)
            v_r = gl.load(v_base + nx[:, None] * s_kn + cols[None, :], mask=nx[:, None] < Lk,
                          other=0.0)
            s = warpgroup_mma_wait(num_outstanding=1, deps=(s,))
            s = gl.where((n0 + n_vec)[None, :] < Lk, s, float("-inf"))
            p = gl.exp2(s * c - lse2[:, None])
            dp = warpgroup_mma_wait(num_outstanding=0, deps=(dp,))
            ds = p * (dp - delta[:, None])
            ds16 = gl.convert_layout(ds.to(gl.bfloat16), ds_op)
            dq = warpgroup_mma(ds16, k_s, acc, is_async=True)
    dq = warpgroup_mma_wait(num_outstanding=0, deps=(dq,))
    out_m = m0 + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, mma_d))
    out_d = gl.arange(0, D, layout=gl.SliceLayout(0, mma_d))
    gl.store(DQ + (h * Lq + out_m[:, None]) * D + out_d[None, :], (dq * scale).to(gl.bfloat16),
             mask=out_m[:, None] < Lq)


def compile_only():
    """Compile for sm_90 without a GPU and print registers, spills and the inner loop's wgmma
    waits (a CPU-only machine: the SASS shows whether the waits are where they should be)."""
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource

    fn = _dq_gluon
    sig = {n: ("constexpr" if n in ("BLOCK_M", "BLOCK_N", "D", "num_warps") else
               "*bf16" if n in ("Q", "K", "V", "DO", "DQ") else
               "*fp32" if n in ("LSE", "DELTA") else
               "fp32" if n in ("c", "scale") else "i32") for n in fn.arg_names}
    consts = {"BLOCK_M": 64, "BLOCK_N": 64, "D": 64, "num_warps": 4}
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

    def gluon_dq():
        _dq_gluon[(triton.cdiv(Lq, 64), H)](
            q, k, v, dout, lse, delta, dq, k.stride(0), k.stride(1), k.stride(2),
            dout.stride(0), dout.stride(1), dout.stride(2), B, H, Lq, Lk, scale * LOG2E, scale,
            BLOCK_M=64, BLOCK_N=64, D=D, num_warps=4)

    gluon_dq()
    torch.cuda.synchronize()
    err = ((dq.float() - ref.float()).norm() / ref.float().norm()).item()
    print(f"relative difference to the Triton dq pass: {err:.2e}")
    t_g = triton.testing.do_bench(gluon_dq, warmup=50, rep=300)
    t_t = triton.testing.do_bench(
        lambda: T._backward(q, k, v, None, None, None, out, lse, dout, None, scale,
                            (1, 0, 0, 0, 0, 0)), warmup=50, rep=300)
    flops = 3 * 2 * B * H * Lq * Lk * D
    print(f"gluon dq {t_g:.3f} ms ({flops / t_g / 1e9:.0f} TFLOP/s); triton dq pass (with delta) "
          f"{t_t:.3f} ms ({flops / t_t / 1e9:.0f} TFLOP/s)")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--compile-only", action="store_true")
    if ap.parse_args().compile_only:
        compile_only()
    else:
        run()
