"""Start-up time of the ``brainattn`` command: ``--help`` and argument errors, each run N times
in a fresh interpreter (median and minimum wall time), against the peer measured in the same
run: importing what the verbs need (torch, xarray, pandas), which these answers must not pay.

    python benchmarks/startup.py [--repeat 10]

Run it from outside the repository root (or with the package installed) so that the
interpreter imports the tree you mean. ``python -X importtime -m brainattn --help`` shows
where the remaining time goes.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

COMMANDS = [
    ["--help"],
    ["fit", "--help"],
    ["scale", "fit", "missing.csv"],
    ["fit", "/no/such/data", "--out", "/tmp/x"],
    ["data", "synth", "--out", "/tmp/x", "--images", "-1"],
    ["fit", "/tmp", "--out", "/tmp/x", "--lr", "-1"],
]
PEER = ["-c", "import torch, xarray, pandas"]


def _time(argv: list[str], repeat: int) -> tuple[float, float]:
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, *argv], capture_output=True, check=False)
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs), min(runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=10)
    args = ap.parse_args()
    print(f"| command | median ms | min ms |  (python {sys.version.split()[0]}, {args.repeat} runs)")
    print("|---|---|---|")
    for cmd in COMMANDS:
        med, lo = _time(["-m", "brainattn", *cmd], args.repeat)
        print(f"| `brainattn {' '.join(cmd)}` | {1000 * med:.0f} | {1000 * lo:.0f} |")
    med, lo = _time(PEER, args.repeat)
    print(f"| peer: `python {' '.join(PEER)}` | {1000 * med:.0f} | {1000 * lo:.0f} |")


if __name__ == "__main__":
    main()
