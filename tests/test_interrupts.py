"""Faults during long work: a verb killed (SIGKILL) or interrupted (SIGINT, Ctrl-C) at a random
moment leaves nothing half-written; Ctrl-C says so in one line (exit 130) and removes its
temporaries; after kill -9 the same command run again gives exactly the uninterrupted result
and removes what the killed run left.

The moment is drawn from a seeded generator (seed printed on failure: BRAINATTN_KILL_SEED
replays it) between start-up and the uninterrupted run's duration. Sizes are tiny: each case
takes a few seconds on a 2-core machine.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from brainattn.io import load_netcdf

SEED = int(os.environ.get("BRAINATTN_KILL_SEED", random.SystemRandom().randrange(2**31)))
ENV = {**os.environ, "BRAINATTN_PROGRESS": "0", "MPLBACKEND": "Agg",
       "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
#: attributes that differ between two runs by design (when and how the run was started, how
#: long its parts took)
VOLATILE = {"created_utc", "command"}


def _volatile(key: str) -> bool:
    return key in VOLATILE or key.startswith("time_") or key.endswith("_seconds")

TINY_PAVLOVIAN = {
    "d_k": [16, 32], "load": [0.25, 0.5, 1], "n_trials": 8, "n_queries": 8,
    "worst_case_trials": 20, "rules_d_k": 16, "rules_n": [4, 8, 16, 32], "rules_trials": 4,
    "delta_epochs": 2, "prop_d_k": 16, "prop_n": 4, "prop_layers": 2, "prop_heads": [1, 2],
    "prop_trials": 8,
}
TINY_DEMO = {"images": 12, "image_size": 32, "epochs": 1, "bootstrap": 30, "models": (),
             "theory_scale": "quick", "simulations": (), "estimate_scale": 0.01}


def _demo_argv(out: Path) -> list[str]:
    code = (f"import brainattn.demo as d; d.QUICK = {TINY_DEMO!r}; from brainattn.cli import main; "
            f"raise SystemExit(main(['demo', '--quick', '--out', {str(out)!r}]))")
    return ["-c", code]


def _snapshot(path: Path) -> dict:
    """What a run produced, comparable across runs: file bytes, NetCDF values and attributes
    (but its creation time), figures by name only (their metadata holds dates)."""
    if not path.exists():
        return {}
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    snap = {}
    for f in files:
        rel = str(f.relative_to(path.parent))
        if f.suffix in (".png", ".svg", ".html") or f.name in ("fit.log", "synth.json"):
            snap[rel] = "present"
        elif f.suffix == ".nc":
            ds = load_netcdf(f)
            snap[rel] = ({k: np.asarray(v.values).tobytes() for k, v in ds.variables.items()},
                         {k: str(v).replace(str(path.parent), "<OUT>")
                          for k, v in ds.attrs.items() if not _volatile(k)})
        else:  # where the run folder lies is no part of its result
            snap[rel] = f.read_bytes().replace(str(path.parent).encode(), b"<OUT>")
    return snap


def _temporaries(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*.tmp"))


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, *argv] if argv[0] == "-c" else [sys.executable, "-m", "brainattn", *argv]
    return subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=300)


def _interrupted(argv: list[str], cwd: Path, sig: int, at: float) -> tuple[int, str]:
    cmd = [sys.executable, *argv] if argv[0] == "-c" else [sys.executable, "-m", "brainattn", *argv]
    proc = subprocess.Popen(cmd, cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    time.sleep(at)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


def _cases(tmp: Path) -> dict:
    """name -> (argv writing OUT, OUT, setup run once before)."""
    cfg = tmp / "tiny.json"
    cfg.write_text(json.dumps(TINY_PAVLOVIAN))
    trials = tmp / "trials.csv"
    return {
        "data synth": (["data", "synth", "--out", "OUT", "--subjects", "1", "--images", "8",
                        "--image-size", "32", "--seed", "5"], None),
        "simulate": (["simulate", "pavlovian", "--config", str(cfg), "--seed", "2", "--out", "OUT"], None),
        "scale fit --bootstrap": (["scale", "fit", str(trials), "--bootstrap", "300", "--seed", "4",
                                   "--out", "OUT"],
                                  ["scale", "simulate", "--out", str(trials), "--levels", "7", "--sigma", "0.3", "--repeats", "3",
                                   "--design", "triad", "--seed", "3"]),
        "report": (["report", str(tmp / "scaled"), "--no-svg", "--out", "OUT"],
                   ["scale", "fit", str(trials), "--out", str(tmp / "scaled")]),
        "demo": (None, None),
    }


CASES = ["data synth", "simulate", "scale fit --bootstrap", "report", "demo"]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("interrupts")


def _argv(name: str, work: Path, out: Path) -> list[str]:
    if name == "demo":
        return _demo_argv(out)
    argv, _ = _cases(work)[name]
    return [str(out) if a == "OUT" else a for a in argv]


@pytest.fixture(scope="module")
def reference(work):
    """Each case run once, uninterrupted: its outputs and how long it took."""
    refs = {}

    def get(name: str):
        if name not in refs:
            _, setup = _cases(work)[name]
            if setup is not None:
                setup = [a for a in setup]
                if not Path(setup[setup.index("--out") + 1]).exists():
                    assert _run(setup, work).returncode == 0
            out = work / f"ref-{name.replace(' ', '_').replace('-', '')}" / "out.d"
            if name == "report":
                out = out.with_suffix(".html")
            t0 = time.perf_counter()
            res = _run(_argv(name, work, out), work)
            assert res.returncode == 0, res.stderr[-2000:]
            refs[name] = (out, _snapshot(out), time.perf_counter() - t0)
        return refs[name]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "kill-9"])
@pytest.mark.parametrize("name", CASES)
def test_interrupted_run_leaves_nothing_half_written(name, sig, reference, work, tmp_path):
    ref_out, ref_snap, duration = reference(name)
    rng = random.Random(f"{SEED}-{name}-{int(sig)}")
    at = rng.uniform(0.3, max(0.6, 0.9 * duration))
    out = tmp_path / ref_out.name
    argv = _argv(name, work, out)
    rc, err = _interrupted(argv, tmp_path, sig, at)
    where = f"{name}: signal {sig.name} at {at:.2f} s of {duration:.2f} s (BRAINATTN_KILL_SEED={SEED})"
    assert "Traceback" not in err, where + "\n" + err[-2000:]
    snap = _snapshot(out)
    if name == "demo":  # stage by stage: every stage folder present is complete
        assert all(ref_snap.get(k) == v for k, v in snap.items()), where
    else:
        assert snap in ({}, ref_snap), where
    if rc == 0:
        assert snap == ref_snap, where  # finished before the signal
    elif sig == signal.SIGINT:
        # 130, or killed by SIGINT itself (-2) when the signal lands as the command starts: a
        # shell reports both as 130
        assert rc in (130, -signal.SIGINT), where + "\n" + err[-2000:]
        assert err.strip().splitlines()[-1].startswith("error: interrupted"), where + err[-500:]
        assert _temporaries(tmp_path) == [], where  # Ctrl-C cleans up after itself
    else:
        assert rc == -signal.SIGKILL, where
    # the same command again (refusing nothing a complete output would not refuse) gives the
    # uninterrupted result and removes what the killed run left
    if snap and name != "demo":
        return
    if name == "demo" and snap:
        argv = [*argv[:-1], argv[-1].replace("'--quick'", "'--quick', '--overwrite'")]
    res = _run(argv, tmp_path)
    assert res.returncode == 0, where + "\n" + res.stderr[-2000:]
    assert _snapshot(out) == ref_snap, where
    assert _temporaries(tmp_path) == [], where
