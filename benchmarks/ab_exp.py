"""Per-pass times and a head-to-head with cuDNN on the vertices cases, for A/B runs of kernel
variants: one process per variant (environment knobs, or a patched tree), each measuring its own
cuDNN, since single passes move by up to +-4 % between processes on one card.

    PYTHONPATH=. BRAINATTN_DIRECT_LAUNCH=0 python3 benchmarks/ab_exp.py [--cases vertices]
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
import attention as A  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", default="vertices")
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    knobs = {k: v for k, v in os.environ.items() if k.startswith("BRAINATTN_")}
    print(torch.cuda.get_device_name(), knobs)
    for name in a.cases.split(","):
        dims, q, k, v, ex = A.make_case(name)
        peers = A.peers_for(name, q, k, v, ex, dims)
        cudnn = peers.get("sdpa-cudnn") or peers["sdpa-cudnn (no bias)"]
        print(f"  {name} breakdown:", {k2: round(v2, 3) for k2, v2 in
                                        A.breakdown(name, q, k, v, ex).items()})
        res = A.head_to_head({"brainattn": A.brainattn_fn(name), "cudnn": cudnn}, q, k, v, ex,
                             rounds=a.rounds)
        print(f"  {name} h2h: brainattn {res['brainattn']:.3f} cudnn {res['cudnn']:.3f} "
              f"ratio {res['cudnn'] / res['brainattn']:.3f}", flush=True)


if __name__ == "__main__":
    main()
