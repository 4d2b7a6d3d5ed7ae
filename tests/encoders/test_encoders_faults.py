"""Faults around fitted runs: damaged run folders give one line naming the file and what to
do; ``fit`` killed (kill -9) or interrupted (Ctrl-C) at a random moment, then ``--resume``d,
ends in the run an uninterrupted fit writes, bit for bit on the CPU (every model)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from brainattn.cli import main
from brainattn.io import load_netcdf

SEED = int(os.environ.get("BRAINATTN_KILL_SEED", random.SystemRandom().randrange(2**31)))
ENV = {**os.environ, "BRAINATTN_PROGRESS": "0", "OMP_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
TINY = ["--image-size", "32", "--width", "16", "--heads", "2", "--ffn", "32", "--epochs", "150",
        "--patience", "1000", "--val-fraction", "0.15", "--test-fraction", "0.2", "--device", "cpu",
        "--permutations", "20", "--bootstrap", "20"]


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from brainattn.data.synth import generate

    root = tmp_path_factory.mktemp("synth") / "data"
    generate(root, subjects=1, images=48, seed=0, image_size=32, n_ev_roi=6,
             n_category_roi=4, n_unlabelled=10, n_jobs=1)
    return root


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def _argv(synth, cache, out, model):
    return ["fit", str(synth), "--out", str(out), "--cache", str(cache), "--model", model, *TINY]


@pytest.fixture(scope="module")
def runs(synth, cache, tmp_path_factory):
    """One finished run per model, fitted in-process (the reference of the kill tests)."""
    base = tmp_path_factory.mktemp("runs")
    done = {}

    def get(model):
        if model not in done:
            t0 = time.perf_counter()
            assert main(_argv(synth, cache, base / model, model)) == 0
            done[model] = (base / model, time.perf_counter() - t0)
        return done[model]

    return get


# ------------------------------------------------------------------------ damaged run folders


def _damage(run, what):
    w = run / "model.safetensors"
    if what == "truncated":
        w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    elif what == "random":
        w.write_bytes(np.random.default_rng(0).bytes(w.stat().st_size))
    elif what == "missing":
        w.unlink()
    elif what == "model.json":
        (run / "model.json").write_text('{"class": "RidgeEnc')
    elif what == "config.json":
        (run / "config.json").write_text("not json")
    elif what == "split.json":
        (run / "split.json").unlink()


@pytest.mark.parametrize("model", ["ridge", "factorized"])
@pytest.mark.parametrize("what,file", [("truncated", "model.safetensors"),
                                       ("random", "model.safetensors"),
                                       ("missing", "model.safetensors"),
                                       ("model.json", "model.json"),
                                       ("config.json", "config.json"),
                                       ("split.json", "split.json")])
def test_damaged_run_folder_names_the_file_and_what_to_do(runs, synth, cache, model, what, file,
                                                          tmp_path, capsys):
    import shutil

    src, _ = runs(model)
    run = tmp_path / "run"
    shutil.copytree(src, run)
    _damage(run, what)
    capsys.readouterr()  # the reference fit's log
    img = sorted((synth / "subj01" / "test_split" / "test_images").glob("*.png"))[0]
    verbs = [["evaluate", str(run), "--device", "cpu", "--cache", str(cache)]]
    if file != "split.json":  # predict does not read the split
        verbs.append(["predict", str(run), str(img), "--device", "cpu"])
    for argv in verbs:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: {run / file}: "), err
        assert "refit it" in err[0] and "--overwrite" in err[0], err
        assert "Traceback" not in err[0]


# ------------------------------------------------------------------------ kill and resume


def _snapshot(run):
    scores = load_netcdf(run / "scores.nc")
    return {"weights": (run / "model.safetensors").read_bytes(),
            "score": scores["score"].values.tobytes(),
            "split": (run / "split.json").read_bytes(),
            "history": _history(run)}


def _history(run):
    p = run / "history.csv"
    if not p.is_file():
        return None
    rows = [ln.split(",") for ln in p.read_text().splitlines()]
    keep = [i for i, name in enumerate(rows[0]) if name != "seconds"]  # wall time differs
    return [[r[i] for i in keep] for r in rows]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["kill-9", "ctrl-c"])
@pytest.mark.parametrize("model", ["transformer", "factorized", "ridge"])
def test_fit_killed_then_resumed_equals_an_uninterrupted_fit(runs, synth, cache, model, sig,
                                                             tmp_path):
    ref, duration = runs(model)
    out = tmp_path / model
    argv = [sys.executable, "-m", "brainattn", *_argv(synth, cache, out, model)]
    proc = subprocess.Popen(argv, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    # start-up (imports) takes ~2 s of a subprocess; the in-process reference has paid it
    at = random.Random(f"{SEED}-{model}-{int(sig)}").uniform(1.0, 2.5 + duration)
    time.sleep(at)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    where = f"fit {model}: {sig.name} at {at:.2f} s (BRAINATTN_KILL_SEED={SEED})"
    assert "Traceback" not in err, where + "\n" + err[-2000:]
    if proc.returncode == 0:
        assert _snapshot(out) == _snapshot(ref), where
        return
    if sig == signal.SIGINT:
        assert err.strip().splitlines()[-1].startswith("error: interrupted"), where + err[-500:]
    if (out / "scores.nc").is_file() and not (out / "checkpoint").exists():
        assert _snapshot(out) == _snapshot(ref), where  # killed after its last write
        return
    # what the run left: nothing, or a folder that --resume continues
    again = ["--resume"] if (out / "config.json").is_file() else ["--overwrite"]
    res = subprocess.run([*argv, *again], env=ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, where + "\n" + res.stderr[-2000:]
    assert _snapshot(out) == _snapshot(ref), where
    assert sorted(p.name for p in out.rglob("*.tmp")) == [], where
