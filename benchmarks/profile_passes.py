"""Run brainattn's fwd+bwd on a benchmark case three times with the tuned configs fixed (no
autotuning launches), for Nsight Compute:

    PYTHONPATH=. ncu -k regex:"_bwd_q|_bwd_kv|_fwd" --launch-skip 3 --launch-count 3 \\
        --section SpeedOfLight --section Occupancy --section WarpStateStats \\
        python3 benchmarks/profile_passes.py          # CASE=vertices+prf, DQCFG=128,64,8,3
"""

import os
import sys

import torch
import triton

sys.path.insert(0, os.path.dirname(__file__))
import attention as A  # noqa: E402

from brainattn.kernels import _triton as T  # noqa: E402


def fix(kern, m, n, warps, stages):
    """One config for an autotuned kernel (the autotuner then launches it directly)."""
    kern.configs = [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=warps,
                                  num_stages=stages)]


def main():
    fix(T._fwd, 128, 64, 8, 3)
    fix(T._bwd_q, *map(int, os.environ.get("DQCFG", "64,64,4,3").split(",")))
    fix(T._bwd_kv, 32, 128, 4, 3)
    name = os.environ.get("CASE", "vertices")
    dims, q, k, v, ex = A.make_case(name)
    fn = A.brainattn_fn(name)
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    g = torch.randn(dims[0], dims[1], dims[2], dims[4], device="cuda", dtype=A.DT)
    for _ in range(3):
        fn(*leaves, ex).backward(g)
    torch.cuda.synchronize()
    print("done")


if __name__ == "__main__":
    main()
