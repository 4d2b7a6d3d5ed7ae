"""CUDA time of every kernel in one brainattn fwd+bwd step of a benchmark case (torch.profiler),
after warm-up: where a step's time goes beyond the three attention passes.

    PYTHONPATH=. python3 benchmarks/profile_step.py [vertices+prf]
"""

import os
import sys

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(__file__))
import attention as A  # noqa: E402


def main():
    name = sys.argv[1] if len(sys.argv) > 1 else "vertices+prf"
    dims, q, k, v, ex = A.make_case(name)
    fn = A.brainattn_fn(name)
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    ex = {key: (t.detach().clone().requires_grad_() if t.is_floating_point() else t)
          for key, t in ex.items()}
    if "pos" in ex:
        ex["pos"].requires_grad_(False)
    g = torch.randn(dims[0], dims[1], dims[2], dims[4], device="cuda", dtype=A.DT)
    grads = [p for p in [*leaves, *ex.values()] if p.requires_grad]

    def step():
        for p in grads:
            p.grad = None
        fn(*leaves, ex).backward(g)

    for _ in range(5):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            step()
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=40, max_name_column_width=70))


if __name__ == "__main__":
    main()
