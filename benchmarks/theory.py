"""Time the Pavlovian capacity sweep (``brainattn.theory.pavlovian``) and write a Markdown record.

Usage (from the repository root)::

    python benchmarks/theory.py --scale full --device auto --write

Runs a small warm-up, then ``simulate(FULL or QUICK)`` once, timed per experiment (capacity
sweep, error-free capacity, learning rules, propagation; CUDA synchronised). The peer, measured
in the same run, is a plain NumPy float64 implementation of one capacity point (per-trial loop,
the obvious way to write it) against the batched torch code at the same point. The headline
results (capacity exponents, SNR agreement) are recorded beside the times so a reader can see
that the timed run also reproduced the theory. ``--write`` appends the record to the ``theory``
section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from brainattn.theory import pavlovian as pv  # noqa: E402


def numpy_point(d: int, n: int, n_trials: int, n_queries: int, seed: int = 0) -> tuple[float, float]:
    """Reference: per-trial NumPy float64 Hebbian storage/retrieval; returns (SNR, seconds)."""
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    noise = 0.0
    for _ in range(n_trials):
        k = rng.standard_normal((n, d))
        k /= np.linalg.norm(k, axis=1, keepdims=True)
        v = rng.choice([-1.0, 1.0], size=(n, d)) / math.sqrt(d)
        m = v.T @ k  # M = sum_i v_i k_i^T
        v_hat = k[:n_queries] @ m.T
        noise += float(((v_hat - v[:n_queries]) ** 2).sum())
    return n_trials * n_queries / noise, time.perf_counter() - t0


def torch_point(d: int, n: int, n_trials: int, n_queries: int, device) -> tuple[float, float]:
    """The batched torch path of :func:`brainattn.theory.pavlovian.run_capacity` at one point."""
    cfg = pv.validate_config(dict(pv.QUICK, d_k=[d], load=[n / d], n_trials=n_trials,
                                  n_queries=n_queries, max_batch_elements=2**28))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    out = pv.run_capacity(cfg, device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return float(out["snr"][0, 0]), time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", choices=("quick", "full"), default="full")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--write", action="store_true",
                    help="append the record to the theory section of benchmarks/RESULTS.md")
    ap.add_argument("--peer-trials", type=int, default=20)
    args = ap.parse_args(argv)

    from brainattn.utils import resolve_device

    dev = resolve_device(args.device)
    card = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu"
    cfg = dict(pv.FULL if args.scale == "full" else pv.QUICK)

    # warm-up: CUDA context, kernels, allocator
    pv.simulate(dict(pv.QUICK, d_k=[32], load=[0.5, 1.0], n_trials=4, rules_n=[8, 16],
                     rules_trials=2, prop_trials=4, worst_case_trials=4), device=str(dev))
    t0 = time.perf_counter()
    ds = pv.simulate(cfg, device=str(dev))
    total = time.perf_counter() - t0

    d_peer, n_peer = 256, 2048
    snr_np, t_np = numpy_point(d_peer, n_peer, args.peer_trials, 128)
    snr_t, t_t = torch_point(d_peer, n_peer, args.peer_trials, 128, dev)

    ratio = (ds["snr_sim"] / ds["snr_theory"]).sel(d_k=ds["d_k"] >= 64).values
    lines = [
        f"\n## Pavlovian `{args.scale}` sweep -- {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC\n",
        f"- device: **{card}** (`{dev}`), torch {torch.__version__}, Python {platform.python_version()}",
        f"- sweep: d_k = {cfg['d_k']}, N = load x d_k with load {min(cfg['load']):g}..{max(cfg['load']):g} "
        f"({len(cfg['load'])} points), {cfg['n_trials']} trials x {cfg['n_queries']} queries per point; "
        f"error-free capacity {cfg['worst_case_trials']} trials; rules at d_k = {cfg['rules_d_k']}, "
        f"N = {cfg['rules_n']}, {cfg['rules_trials']} trials, delta {cfg['delta_epochs']} epochs; "
        f"propagation d_k = {cfg['prop_d_k']}, N = {cfg['prop_n']}, {cfg['prop_layers']} layers, "
        f"H = {cfg['prop_heads']}, {cfg['prop_trials']} trials",
        "",
        "| part | seconds |",
        "|---|---|",
    ]
    for part in ("capacity", "worst_case", "rules", "propagation"):
        lines.append(f"| {part} | {ds.attrs[f'time_{part}_s']:.2f} |")
    lines += [
        f"| **total `simulate`** | **{total:.2f}** |",
        "",
        f"- results of the timed run: capacity exponent {float(ds['exponent_avg_sim']):.3f} "
        f"(theory {float(ds['exponent_avg_theory']):.3f}), error-free {float(ds['exponent_wc_sim']):.3f} "
        f"(mean-field {float(ds['exponent_wc_theory']):.3f}); measured/theory SNR for d_k >= 64 in "
        f"[{ratio.min():.3f}, {ratio.max():.3f}]",
        f"- peer, one point (d_k = {d_peer}, N = {n_peer}, {args.peer_trials} trials, 128 queries): "
        f"NumPy float64 per-trial loop on this host's CPU {t_np:.2f} s (SNR {snr_np:.4f}); batched "
        f"torch on `{dev}` {t_t:.3f} s (SNR {snr_t:.4f}); theory {d_peer / (n_peer - 1):.4f}",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        from _results import write_section

        write_section("theory", text, append=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
