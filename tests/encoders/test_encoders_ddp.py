"""Data-parallel training on the CPU: gloo, 2 processes started by torchrun.

Known answers: one DDP step of 2 processes on 4 + 4 images gives the parameters of one step of
one process on the 8 images; a run stopped by 2 processes and resumed by 1 ends where an
uninterrupted 1-process run ends; a rank that dies leaves the checkpoint intact and the
survivor exits with a message that says how to continue.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch

from brainattn.encoders import distributed as D
from brainattn.encoders.loader import ArrayLoader
from brainattn.errors import ConfigError

WORKER = textwrap.dedent('''
    import os, sys
    import numpy as np, torch
    torch.set_num_threads(1)
    from brainattn.encoders import distributed as D
    from brainattn.encoders import loader as T
    from brainattn.errors import BrainAttnError
    sys.path.insert(0, os.path.dirname(__file__))
    from common import run, fit_run_tiny
    from safetensors.torch import save_file

    mode, out = sys.argv[1], sys.argv[2]
    ctx = D.init_distributed("cpu")
    assert ctx is not None and ctx.backend == "gloo" and ctx.world_size == 2
    try:
        if mode == "happy":
            m, st = run(epochs=1, n_train=8)
            if ctx.is_main:
                save_file({k: v.contiguous() for k, v in m.state_dict().items()},
                          os.path.join(out, "step.safetensors"))
            run(epochs=3, n_train=22, ckpt=os.path.join(out, "ckpt"), stop_after=1)
            fit_run_tiny(os.path.join(out, "data"), os.path.join(out, "run"))
        elif mode == "die":
            if ctx.rank == 1:  # die in the middle of the second epoch
                orig = T.ArrayLoader.__iter__
                def dying(self):
                    for i, b in enumerate(orig(self)):
                        if self.shuffle and self.epoch == 1 and i == 1:
                            os._exit(3)
                        yield b
                T.ArrayLoader.__iter__ = dying
            run(epochs=3, n_train=22, ckpt=os.path.join(out, "ckpt"))
    except BrainAttnError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
    finally:
        D.shutdown()
''')

COMMON = textwrap.dedent('''
    import os
    import numpy as np, torch
    from brainattn.encoders.loader import ArrayLoader
    from brainattn.encoders.training import fit_loop
    from brainattn.encoders.transformer import TransformerModule

    def data():
        rng = np.random.default_rng(0)
        X = rng.standard_normal((40, 16, 16)).astype(np.float16)
        W = rng.standard_normal((16, 12))
        Y = X.astype(np.float32).mean(1) @ W + 0.3 * rng.standard_normal((40, 12))
        return X, Y.astype(np.float32)

    def run(*, epochs, n_train, ckpt=None, stop_after=None, resume=False):
        X, Y = data()
        torch.manual_seed(0)
        m = TransformerModule(16, 16, 12, vertex_query=np.repeat(np.arange(3), 4), grid=(4, 4),
                              width=16, heads=2, ffn=32, dropout=0.0, seed=0)
        # SGD: AdamW would turn the rounding noise of gradients that are zero analytically
        # (the key bias: softmax ignores it) into lr-sized steps, hiding real differences
        opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
        tr = ArrayLoader(X, Y, np.arange(n_train), batch_size=8, shuffle=True, seed=3)
        va = ArrayLoader(X, Y, np.arange(30, 40), batch_size=4)
        st = fit_loop(m, opt, tr, va, epochs=epochs, config={"n_train": n_train},
                      ckpt_dir=ckpt, resume=resume, stop_after=stop_after, grad_clip=1.0,
                      schedule="cosine")
        return m, st

    def tiny_dataset(data_dir):
        import xarray as xr
        from PIL import Image
        os.makedirs(data_dir, exist_ok=True)
        rng = np.random.default_rng(1)
        paths = []
        for i in range(24):
            p = os.path.join(data_dir, f"img{i:03d}.png")
            if not os.path.exists(p):
                Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(p)
            paths.append(p)
        betas = rng.standard_normal((24, 6)).astype(np.float32)
        ds = xr.Dataset({"betas": (("image", "vertex"), betas)},
                        coords={"image_path": ("image", np.asarray(paths)),
                                "hemisphere": ("vertex", np.asarray(["lh"] * 3 + ["rh"] * 3)),
                                "roi_floc-faces": ("vertex", np.asarray(
                                    ["FFA-1", "Unknown", "FFA-1", "OFA", "Unknown", "OFA"]))},
                        attrs={"subject": "subj01"})
        return ds

    def fit_run_tiny(data_dir, out):
        from brainattn.encoders.run import fit_run
        ds = tiny_dataset(data_dir)
        return fit_run(ds, out, cache_dir=os.path.join(data_dir, "cache"), echo=False,
                       image_size=32, epochs=2, batch_size=4, width=16, heads=2, ffn=16,
                       dropout=0.0, device="cpu", n_attention_images=2, patience=None)
''')


def _torchrun(tmp_path, mode, timeout=240):
    env = {k: v for k, v in os.environ.items() if k not in D.ENV_KEYS}
    env.update(OMP_NUM_THREADS="1", BRAINATTN_PROGRESS="0", BRAINATTN_DIST_TIMEOUT="60",
               PYTHONPATH=os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")]))
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "--max_restarts=0", "--monitor_interval=0.5", str(tmp_path / "worker.py"), mode,
         str(tmp_path)], env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("ddp")
    (d / "worker.py").write_text(WORKER)
    (d / "common.py").write_text(COMMON)
    sys.path.insert(0, str(d))
    import common

    yield d, common
    sys.path.remove(str(d))
    sys.modules.pop("common", None)


@pytest.fixture(scope="module")
def happy(work):
    d, _ = work
    res = _torchrun(d, "happy")
    assert res.returncode == 0, res.stderr[-3000:]
    return d


def test_ddp_step_equals_single_process_on_concatenated_batch(work, happy):
    from safetensors.torch import load_file

    _, common = work
    single, _ = common.run(epochs=1, n_train=8)  # one step on all 8 images
    ddp = load_file(str(happy / "step.safetensors"))  # one step, 4 images on each of 2 ranks
    ref = single.state_dict()
    moved = 0
    torch.manual_seed(0)
    init = common.TransformerModule(16, 16, 12, vertex_query=np.repeat(np.arange(3), 4),
                                    grid=(4, 4), width=16, heads=2, ffn=32, dropout=0.0,
                                    seed=0).state_dict()
    for k, v in ref.items():
        torch.testing.assert_close(ddp[k], v, rtol=1e-5, atol=1e-6, msg=k)
        moved += int(not torch.equal(v, init[k]))
    assert moved >= 10  # the step changed the parameters, so the comparison means something


def test_resume_with_fewer_processes_continues_from_same_step(work, happy):
    _, common = work
    ckpt = happy / "ckpt"
    state = json.loads((ckpt / "state.json").read_text())
    assert state["epoch"] == 0 and not state["done"]  # the 2-process run stopped after epoch 1
    resumed, st_r = common.run(epochs=3, n_train=22, ckpt=ckpt, resume=True)
    straight, st_s = common.run(epochs=3, n_train=22)
    assert [h["epoch"] for h in st_r["history"]] == [0, 1, 2]
    for a, b in zip(st_r["history"], st_s["history"], strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["val_mean_r"] == pytest.approx(b["val_mean_r"], abs=1e-5)
    for k, v in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[k], v, rtol=1e-4, atol=1e-5, msg=k)


def test_torchrun_fit_run_writes_one_run_folder(happy):
    run = happy / "run"
    names = sorted(p.name for p in run.iterdir())
    assert names == ["attention.nc", "config.json", "fit.log", "history.csv", "model.json",
                     "model.safetensors", "scores.nc", "split.json"]
    log = (run / "fit.log").read_text()
    assert "data-parallel over 2 processes (gloo), 2 images per process" in log
    assert len((run / "history.csv").read_text().strip().splitlines()) == 3  # header + 2 epochs


def test_dying_rank_leaves_checkpoint_and_resume_finishes(work):
    d, common = work
    die = d / "die"
    die.mkdir()
    (die / "worker.py").write_text(WORKER)
    (die / "common.py").write_text(COMMON)
    res = _torchrun(die, "die")
    assert res.returncode != 0
    assert "continue with --resume" in res.stderr, res.stderr[-3000:]
    state = json.loads((die / "ckpt" / "state.json").read_text())
    assert state["epoch"] == 0  # epoch 1 finished, epoch 2 died
    resumed, st = common.run(epochs=3, n_train=22, ckpt=die / "ckpt", resume=True)
    straight, st_s = common.run(epochs=3, n_train=22)
    assert st["done"]
    assert st["history"][-1]["val_mean_r"] == pytest.approx(st_s["history"][-1]["val_mean_r"],
                                                           abs=1e-5)


# --------------------------------------------------------------------------------------------
# bad input and pure helpers (no processes)


def test_batch_not_divisible_says_what_to_set():
    with pytest.raises(ConfigError, match=r"--batch-size 16 does not divide among 3 processes.*"
                                          r"multiple of 3 \(e\.g\. 15 or 18\)"):
        D.check_batch_divisible(16, 3)
    D.check_batch_divisible(16, 4)
    X = np.zeros((10, 4, 2), np.float16)
    with pytest.raises(ConfigError, match="does not divide among 3"):
        ArrayLoader(X, np.zeros((10, 2)), np.arange(10), batch_size=16, shuffle=True,
                    world_size=3)


def test_shards_partition_each_global_batch():
    X = np.arange(23 * 2, dtype=np.float16).reshape(23, 1, 2)
    Y = np.arange(23, dtype=np.float32)[:, None]
    one = ArrayLoader(X, Y, np.arange(23), batch_size=6, shuffle=True, seed=5)
    parts = [ArrayLoader(X, Y, np.arange(23), batch_size=6, shuffle=True, seed=5, rank=r,
                         world_size=3) for r in range(3)]
    for ld in [one, *parts]:
        ld.set_epoch(2)
    full = [y[:, 0].tolist() for _, y in one]
    shards = [[y[:, 0].tolist() for _, y in p] for p in parts]
    assert all(len(s) == len(full) for s in shards)  # same number of steps on every rank
    for i, batch in enumerate(full):
        joined = sum((s[i] for s in shards), [])
        keep = len(batch) // 3 * 3  # the last batch (5 images) keeps 3: one per rank
        assert joined == batch[:keep]
    # evaluation shards: nothing left out
    ev = [ArrayLoader(X, Y, np.arange(23), batch_size=6, rank=r, world_size=3) for r in range(3)]
    got = sorted(v for e in ev for _, y in e for v in y[:, 0].tolist())
    assert got == list(range(23))


def test_streamed_loader_gives_the_preloaded_batches():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((30, 5, 3)).astype(np.float16)
    Y = rng.standard_normal((30, 4)).astype(np.float32)
    idx = rng.permutation(30)[:20]
    a = ArrayLoader(X, Y, idx, batch_size=7, shuffle=True, preload=True)
    b = ArrayLoader(X, Y, idx, batch_size=7, shuffle=True, preload=False, prefetch=2)
    for ld in (a, b):
        ld.set_epoch(1)
    pairs = list(zip(a, b, strict=True))
    assert len(pairs) == 3
    for (xa, ya), (xb, yb) in pairs:
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    np.testing.assert_array_equal(torch.cat([x for x, _ in a]).numpy(),
                                  X[idx[np.random.default_rng([0, 1]).permutation(20)]]
                                  .astype(np.float32))


def test_backend_choice_and_gloo_fallback(monkeypatch):
    assert D.choose_backend("cpu") == "gloo"
    monkeypatch.setattr(torch.distributed, "is_nccl_available", lambda: False)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        assert D.choose_backend("cuda") == "gloo"
    assert any("falling back to gloo" in str(x.message) for x in w)
    with pytest.raises(ConfigError, match="needs CUDA"):
        D.choose_backend("cpu", "nccl")
    monkeypatch.setenv("BRAINATTN_DIST_TIMEOUT", "soon")
    with pytest.raises(ConfigError, match="BRAINATTN_DIST_TIMEOUT"):
        D.timeout_seconds()


def test_plan_fits_rule():
    from brainattn.encoders import multifit as M

    assert M.plan_fits(1, 1) == "sequential"
    assert M.plan_fits(8, 0) == "sequential"
    assert M.plan_fits(1, 2) == "ddp"
    assert M.plan_fits(3, 4) == "ddp"
    assert M.plan_fits(2, 2) == "independent"
    assert M.plan_fits(16, 8) == "independent"
    assert M.assign_fits(5, 2, 0) == [0, 2, 4] and M.assign_fits(5, 2, 1) == [1, 3]
    assert M.fit_name("subj01", "gabor", -1) == "subj01__gabor__layer-1"


def test_not_under_torchrun_means_single_process(monkeypatch):
    for k in D.ENV_KEYS:
        monkeypatch.delenv(k, raising=False)
    assert D.init_distributed("cpu") is None and D.current() is None
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert D.init_distributed("cpu") is None
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="RANK=3"):
        D.init_distributed("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (runs on the GPU machine)")
def test_cuda_streamed_and_gpu_resident_loaders_agree():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((50, 9, 8)).astype(np.float16)
    Y = rng.standard_normal((50, 3)).astype(np.float32)
    idx = rng.permutation(50)[:40]
    gpu = ArrayLoader(X, Y, idx, batch_size=6, shuffle=True, device="cuda", preload="gpu")
    st = ArrayLoader(X, Y, idx, batch_size=6, shuffle=True, device="cuda", preload=False)
    assert gpu.where == "gpu" and st.where == "stream" and gpu._X.is_cuda
    for (xa, ya), (xb, yb) in zip(gpu, st, strict=True):
        assert xa.is_cuda and xb.is_cuda
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_several_fits_in_one_call_get_one_folder_each(work, tmp_path):
    _, common = work
    ds = common.tiny_dataset(str(tmp_path / "data"))
    fits = [{"subject": s, "backbone": "gabor", "layer": -1} for s in ("subj01", "subj02")]
    from brainattn.encoders.multifit import fit_many

    said = []
    runs = fit_many(ds, tmp_path / "out", fits, log=said.append, model="ridge", image_size=32,
                    cache_dir=tmp_path / "cache", echo=False, device="cpu")
    assert [r.name for r in runs] == ["subj01__gabor__layer-1", "subj02__gabor__layer-1"]
    for r in runs:
        assert (r / "scores.nc").is_file() and (r / "model.safetensors").is_file()


def test_cli_rejects_a_bad_layer_list(tmp_path, capsys):
    from brainattn.cli import main

    assert main(["fit", str(tmp_path), "--layer", "8,x", "--out", str(tmp_path / "o")]) == 2
    assert "--layer '8,x': expected integers" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# two GPUs: DDP with the training step (and its all-reduce) replayed as a CUDA graph

GPU_WORKER = textwrap.dedent('''
    import json, os, sys, time, warnings
    import numpy as np, torch
    from brainattn.encoders import distributed as D
    from brainattn.encoders import loader as LD
    from brainattn.encoders import training as T
    from brainattn.encoders.transformer import TransformerModule
    from brainattn.errors import BrainAttnError
    from safetensors.torch import save_file

    mode, out = sys.argv[1], sys.argv[2]
    ctx = D.init_distributed("cuda")
    assert ctx is not None and ctx.backend == "nccl" and ctx.world_size == 2, ctx
    L, C, V = 64, 64, 200

    def data(n):
        rng = np.random.default_rng(0)
        X = rng.standard_normal((n, L, C)).astype(np.float32)
        W = rng.standard_normal((C, V)) / np.sqrt(C)
        Y = X.mean(1) @ W * 8 + 0.5 * rng.standard_normal((n, V))
        return X, ((Y - Y.mean(0)) / Y.std(0)).astype(np.float32)

    def fit(cuda_graph, *, extra_loss=None, epochs=4, ckpt=None, resume=False):
        """100 training rows, global batch 16: 6 full steps (8 rows a rank) and a partial one
        (2 rows a rank) per epoch; the capture is the 12th full step."""
        X, Y = data(116)
        torch.manual_seed(0)
        m = TransformerModule(L, C, V, vertex_query=np.arange(V) % 5, grid=(8, 8), width=64,
                              heads=4, ffn=128, dropout=0.0, seed=0).to(ctx.device)
        opt = torch.optim.AdamW(m.parameters(), lr=2e-3, weight_decay=1e-4, fused=True)
        tr = LD.ArrayLoader(X, Y, np.arange(100), batch_size=16, shuffle=True, seed=0,
                           device=ctx.device)
        va = LD.ArrayLoader(X, Y, np.arange(100, 116), batch_size=16, device=ctx.device)
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            st = T.fit_loop(m, opt, tr, va, epochs=epochs, config={}, device=ctx.device,
                            amp=True, grad_clip=1.0, schedule="cosine", patience=None,
                            cuda_graph=cuda_graph, extra_loss=extra_loss, ckpt_dir=ckpt,
                            resume=resume)
        st["warnings"] = [str(x.message) for x in w if "CUDA-graph" in str(x.message)]
        return m, st

    def save(name, m, st):
        save_file({k: v.detach().float().cpu().contiguous() for k, v in m.state_dict().items()},
                  os.path.join(out, f"{name}-r{ctx.rank}.safetensors"))
        with open(os.path.join(out, f"{name}-r{ctx.rank}.json"), "w") as f:
            json.dump({k: st[k] for k in ("history", "cuda_graph", "warnings")}, f)

    def syncs(mod):  # reads a value back on rank 1 only: that rank cannot capture
        if ctx.rank == 1:
            return 0.0 * float(mod.readout_b.detach().sum())
        return 0.0 * mod.readout_b.sum()

    try:
        if mode == "equal":
            env = {k: os.environ.get(k) for k in D.ASYNC_ERROR_KEYS}
            assert ctx.graphs and env[D.ASYNC_ERROR_KEYS[0]] == "0", env
            t0 = time.perf_counter()
            save("graph", *fit(None))
            save("eager", *fit(False))
            save("fallback", *fit(None, extra_loss=syncs))
            # for the record: the all-reduce of an Algonauts-size gradient (33 M float32)
            g = torch.ones(33_000_000, device=ctx.device)
            for _ in range(3):
                torch.distributed.all_reduce(g)
            torch.cuda.synchronize()
            t1 = time.perf_counter()
            for _ in range(20):
                torch.distributed.all_reduce(g)
            torch.cuda.synchronize()
            if ctx.is_main:
                print(f"three fits in {t1 - t0:.1f} s; all-reduce of 33 M float32: "
                      f"{(time.perf_counter() - t1) / 20 * 1e3:.2f} ms", file=sys.stderr)
        elif mode == "die":
            if ctx.rank == 1:  # die in epoch 3, after the capture (epoch 2)
                orig = LD.ArrayLoader.__iter__
                def dying(self):
                    for i, b in enumerate(orig(self)):
                        if self.shuffle and self.epoch == 2 and i == 2:
                            os._exit(3)
                        yield b
                LD.ArrayLoader.__iter__ = dying
            fit(None, ckpt=os.path.join(out, "ckpt"))
    except BrainAttnError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
    D.shutdown()
''')

two_gpus = pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2,
                              reason="needs 2 CUDA devices (runs on the GPU machine)")


@pytest.fixture(scope="module")
def gpu_work(tmp_path_factory):
    d = tmp_path_factory.mktemp("ddp_gpu")
    (d / "worker.py").write_text(GPU_WORKER)
    os.environ.setdefault("TRITON_CACHE_DIR", str(d / "triton"))  # shared by the launches
    return d


def _torchrun_gpu(d, mode, timeout):
    """torchrun on 2 GPUs; on a timeout torchrun gets SIGTERM, so that it stops its workers
    (they run in sessions of their own: killing torchrun alone would leave them in NCCL)."""
    env = {k: v for k, v in os.environ.items() if k not in D.ENV_KEYS}
    env.update(BRAINATTN_PROGRESS="0", PYTHONPATH=os.pathsep.join([str(d),
                                                                   env.get("PYTHONPATH", "")]))
    proc = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "--max_restarts=0", "--monitor_interval=0.5", str(d / "worker.py"), mode, str(d)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        err = f"{err}\n(timed out after {timeout} s)"
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _load(d, name, rank):
    from safetensors.torch import load_file

    p = load_file(str(d / f"{name}-r{rank}.safetensors"))
    return (torch.cat([v.flatten() for _, v in sorted(p.items())]),
            json.loads((d / f"{name}-r{rank}.json").read_text()))


@two_gpus
@pytest.mark.gpu
def test_two_gpus_ddp_graph_equals_ddp_eager_and_capture_failure_is_collective(gpu_work):
    res = _torchrun_gpu(gpu_work, "equal", timeout=120)
    print(res.stderr[-2500:])
    assert (gpu_work / "eager-r1.json").is_file(), res.stderr[-4000:]
    g0, sg = _load(gpu_work, "graph", 0)
    g1, _ = _load(gpu_work, "graph", 1)
    e0, se = _load(gpu_work, "eager", 0)
    e1, _ = _load(gpu_work, "eager", 1)
    assert sg["cuda_graph"] == "captured" and not sg["warnings"], sg
    assert se["cuda_graph"] == "off"
    # DDP keeps the ranks identical, replayed or not (same all-reduced update on each)
    assert torch.equal(g0, g1) and torch.equal(e0, e1)
    torch.manual_seed(0)
    from brainattn.encoders.transformer import TransformerModule

    init = TransformerModule(64, 64, 200, vertex_query=np.arange(200) % 5, grid=(8, 8),
                             width=64, heads=4, ffn=128, dropout=0.0, seed=0)
    p0 = torch.cat([v.float().flatten() for _, v in sorted(init.state_dict().items())])
    moved = (e0 - p0).norm()
    assert moved > 0
    # 24 full steps (11 eager warm-up, 1 capture, 12 replays) + 4 eager partial ones, dropout
    # 0, bf16 autocast both ways: the replayed all-reduced steps are the eager ones
    assert (g0 - e0).norm() / moved < 0.02
    np.testing.assert_allclose([h["train_loss"] for h in sg["history"]],
                               [h["train_loss"] for h in se["history"]], rtol=0.02)
    np.testing.assert_allclose([h["val_mean_r"] for h in sg["history"]],
                               [h["val_mean_r"] for h in se["history"]], atol=0.01)
    # rank 1 cannot capture: both ranks train eagerly (rank 0 drops the graph it captured)
    assert res.returncode == 0, res.stderr[-4000:]
    f0, sf0 = _load(gpu_work, "fallback", 0)
    f1, sf1 = _load(gpu_work, "fallback", 1)
    assert sf0["cuda_graph"].startswith("eager (capture failed: it failed on another rank")
    assert sf1["cuda_graph"].startswith("eager (capture failed") and sf1["warnings"]
    assert torch.equal(f0, f1)
    assert (f0 - e0).norm() / moved < 0.02


@two_gpus
@pytest.mark.gpu
def test_two_gpus_dead_rank_under_graphs_ends_the_run_and_leaves_the_checkpoint(gpu_work):
    import time

    from brainattn.encoders.training import load_checkpoint

    die = gpu_work / "die"
    die.mkdir()
    (die / "worker.py").write_text(GPU_WORKER)
    t0 = time.perf_counter()
    res = _torchrun_gpu(die, "die", timeout=120)
    took = time.perf_counter() - t0
    print(f"dead peer under graphs: exit {res.returncode} after {took:.0f} s;",
          res.stderr[-1500:])
    assert res.returncode != 0
    state = json.loads((die / "ckpt" / "state.json").read_text())
    assert state["epoch"] == 1 and not state["done"]  # epochs 1-2 done, epoch 3 died
    from brainattn.encoders.transformer import TransformerModule

    m = TransformerModule(64, 64, 200, vertex_query=np.arange(200) % 5, grid=(8, 8), width=64,
                          heads=4, ffn=128, dropout=0.0, seed=1)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    assert load_checkpoint(die / "ckpt", model=m, opt=opt)["epoch"] == 1  # intact, loadable
