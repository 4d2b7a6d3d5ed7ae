"""Training-step time of the transformer encoder at Algonauts size: eager vs fused AdamW vs the
step replayed as a CUDA graph (``fit_loop(cuda_graph=True)``). No disk cache: random tokens.

    PYTHONPATH=. python3 benchmarks/graph_step.py [--tiny] [--images 800] [--epochs 3]

Module: ``TransformerModule`` with 961 tokens (31 x 31) x 768 features, width 768, 16 heads,
FFN 1024, dropout 0.1, 39,548 vertices in 50 ROI queries; batch 16, bf16 autocast, AdamW
(lr 5e-4, weight decay 1e-4), gradient clip 0.1. Data: ``--images`` random float16 token grids
held on the GPU by :class:`~brainattn.encoders.loader.ArrayLoader` (as ``brainattn fit`` holds
them), so a step includes the loader's gather. Each mode runs one warm-up epoch (Triton
compilation/autotuning, graph capture) then ``--epochs`` timed epochs of ``train_epoch`` (no
validation); ms/step is the median over those epochs of epoch seconds / steps. Prints one JSON
line per mode and a summary; ``--out FILE`` writes the JSON list.

Results (card, versions, the three modes side by side): benchmarks/RESULTS.md, section
``kernels``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from brainattn.encoders.loader import ArrayLoader
from brainattn.encoders.training import (
    CudaGraphStep,
    prepare_graph_optimizer,
    set_lr,
    train_epoch,
)
from brainattn.encoders.transformer import TransformerModule

FULL = dict(grid=(31, 31), dim=768, vertices=39548, queries=50, width=768, heads=16, ffn=1024,
            batch=16)
TINY = dict(grid=(4, 4), dim=32, vertices=300, queries=6, width=32, heads=4, ffn=64, batch=8)


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def run_mode(mode, cfg, X, Y, dev, *, epochs, seed=0):
    L = cfg["grid"][0] * cfg["grid"][1]
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    vq = np.sort(rng.integers(0, cfg["queries"], cfg["vertices"]))
    vq[: cfg["queries"]] = np.arange(cfg["queries"])
    m = TransformerModule(L, cfg["dim"], cfg["vertices"], vertex_query=vq, grid=cfg["grid"],
                          width=cfg["width"], heads=cfg["heads"], ffn=cfg["ffn"], dropout=0.1,
                          seed=seed).to(dev)
    cuda = dev.type == "cuda"
    opt = torch.optim.AdamW(m.parameters(), lr=5e-4, weight_decay=1e-4,
                            **({"fused": True} if cuda and mode != "eager" else {}))
    tr = ArrayLoader(X, Y, np.arange(len(X)), batch_size=cfg["batch"], shuffle=True, seed=seed,
                     device=dev, preload="gpu" if cuda else "cpu")
    graph = None
    if mode == "graph":
        prepare_graph_optimizer(opt, dev)
        graph = CudaGraphStep(m, opt, device=dev, amp=cuda, grad_clip=0.1, extra_loss=None,
                              batch_size=cfg["batch"])
    if cuda:
        torch.cuda.reset_peak_memory_stats(dev)
    times, losses = [], []
    for epoch in range(epochs + 1):
        tr.set_epoch(epoch)
        set_lr(opt.param_groups[0], 5e-4 * (1 - 0.1 * epoch))
        _sync(dev)
        t0 = time.perf_counter()
        losses.append(train_epoch(m, tr, opt, device=dev, amp=cuda, grad_clip=0.1, graph=graph))
        _sync(dev)
        times.append(time.perf_counter() - t0)
    steps = len(tr)
    ms = [1000 * t / steps for t in times[1:]]
    res = {"mode": mode, "ms_per_step": round(statistics.median(ms), 3),
           "ms_per_step_epochs": [round(x, 3) for x in ms],
           "warmup_epoch_s": round(times[0], 2), "steps_per_epoch": steps,
           "s_per_epoch_8857": round(statistics.median(ms) * -(-8857 // cfg["batch"]) / 1000, 2),
           "train_loss": [round(x, 4) for x in losses],
           "captured": None if graph is None else graph.graph is not None,
           "peak_gib": round(torch.cuda.max_memory_allocated(dev) / 2**30, 2) if cuda else None}
    del m, opt, tr, graph
    if cuda:
        torch.cuda.empty_cache()
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="tiny sizes (runs on a CPU)")
    ap.add_argument("--images", type=int, default=None, help="training images (default 800)")
    ap.add_argument("--epochs", type=int, default=3, help="timed epochs per mode")
    ap.add_argument("--modes", default="eager,fused,graph")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    cfg = TINY if args.tiny else FULL
    dev = torch.device(args.device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    n = args.images or (48 if args.tiny else 800)
    L = cfg["grid"][0] * cfg["grid"][1]
    rng = np.random.default_rng(0)
    X = np.empty((n, L, cfg["dim"]), dtype=np.float16)
    for s in range(0, n, 64):
        X[s : s + 64] = rng.standard_normal((min(64, n - s), L, cfg["dim"]), dtype=np.float32)
    Y = rng.standard_normal((n, cfg["vertices"]), dtype=np.float32)
    env = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
           "torch": torch.__version__, "images": n, "batch": cfg["batch"]}
    print(json.dumps(env), flush=True)
    out = []
    for mode in [m for m in args.modes.split(",") if m]:
        if mode == "graph" and dev.type != "cuda":
            continue
        r = run_mode(mode, cfg, X, Y, dev, epochs=args.epochs)
        out.append(r)
        print(json.dumps(r), flush=True)
    base = next((r["ms_per_step"] for r in out if r["mode"] == "eager"), None)
    for r in out:
        speed = f" ({base / r['ms_per_step']:.2f}x eager)" if base else ""
        print(f"{r['mode']:>6}: {r['ms_per_step']:.2f} ms/step{speed}, "
              f"{r['s_per_epoch_8857']:.2f} s per 8,857-image epoch (training steps only)")
    if args.out:
        args.out.write_text(json.dumps({"env": env, "modes": out}, indent=1))


if __name__ == "__main__":
    main()
