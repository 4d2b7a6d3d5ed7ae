"""Encoders at Algonauts size: brainattn against the published architecture, vertices mode,
ridge against himalaya, and data-parallel training.

    PYTHONPATH=. python3 benchmarks/encoder.py [--size full|tiny] [--parts ...] [--out FILE]
    PYTHONPATH=. torchrun --nproc_per_node=2 benchmarks/encoder.py --parts ddp [...]

Data (``make_data``): 8,857 training + 984 validation images, 31 x 31 = 961 tokens x 768
features (brainattn's caches hold the patch grid; the CLS token, the 962nd, is dropped) written
as a brainattn feature cache (``features.npy``, float16, memory-mapped, 14.5 GB) and 39,548
vertices (19,004 LH + 20,544 RH) with ROI sizes close to NSD subj01's (24 ROIs + "other" per
hemisphere -> 50 queries). Tokens are Gaussian noise; responses carry a planted signal so that
validation r means something: each ROI has a Gaussian receptive field over the grid and each
vertex reads a random direction of an 8-d feature subspace pooled by its ROI's field,
``y_v = sum_l A[q(v), l] (x_l U) c_v / scale_v + noise`` (noise sd 1.2: the best possible r is
about 0.64).

Parts (``--parts``, comma-separated):

``brainattn``  TransformerBrainEncoder's module + training loop (``rois`` queries, bf16 AMP,
               Triton attention, features held on the GPU): s/epoch, images/s, peak memory,
               validation mean r per epoch.
``brainattn_graph`` the same with the training step replayed as a CUDA graph and fused AdamW
               (``fit_loop(cuda_graph=None)``: on CUDA; ``brainattn`` itself trains eagerly).
``published``  :mod:`published_decoder` (DETR decoder on nn.MultiheadAttention, eager, AMP),
               fed as it would be: a ``torch.utils.data.DataLoader`` over the memory-mapped cache
               (8 workers, pinned memory, float32 batches); same epochs, optimiser, LR, clip.
``published_gpu`` the same model fed by brainattn's GPU-resident loader (separates data
               loading from model speed).
``vertices``   one query per vertex with the learned pRF bias, batch 16: ms/step over
               ``--vertex-steps`` steps after warm-up, the implied s/epoch, peak memory.
``ridge``      brainattn RidgeEncoder (15 alphas, per-vertex CV, torch_cuda) against himalaya's
               RidgeCV with its own defaults (alphas [0.1, 1], no intercept, cv 5), same pooled
               features (mean over tokens), same backend; time and validation r.
``ddp``        (under torchrun) the brainattn part, data-parallel over the ranks, with the
               training step (DDP's all-reduce included) replayed as a CUDA graph and fused
               AdamW (``fit_loop(cuda_graph=None)``); ``ddp_eager``: the same, eager steps.

``--size tiny`` shrinks everything so the whole script runs on a CPU in seconds (the test
``tests/encoders/test_encoders_benchmark.py`` runs it; no timing is asserted there).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from published_decoder import PublishedEncoder  # noqa: E402

from brainattn.encoders import distributed as D  # noqa: E402
from brainattn.encoders.cache import FeatureCache  # noqa: E402
from brainattn.encoders.loader import ArrayLoader  # noqa: E402
from brainattn.encoders.metrics import pearson_per_column  # noqa: E402
from brainattn.encoders.training import fit_loop  # noqa: E402
from brainattn.encoders.transformer import (  # noqa: E402
    TransformerModule,
    assign_queries,
    sine_position_encoding,
    token_positions,
)

#: approximate NSD subj01 ROI sizes (vertices per hemisphere, fsaverage), family -> ROI -> n
ROI_SIZES = {
    "prf-visualrois": {"V1v": 1350, "V1d": 1300, "V2v": 1150, "V2d": 1200, "V3v": 1050,
                       "V3d": 1100, "hV4": 900},
    "floc-bodies": {"EBA": 2600, "FBA-1": 300, "FBA-2": 500, "mTL-bodies": 100},
    "floc-faces": {"OFA": 400, "FFA-1": 600, "FFA-2": 400, "mTL-faces": 100, "aTL-faces": 200},
    "floc-places": {"OPA": 1500, "PPA": 1000, "RSC": 600},
    "floc-words": {"OWFA": 400, "VWFA-1": 700, "VWFA-2": 400, "mfs-words": 400,
                   "mTL-words": 150},
}

SIZES = {
    "full": dict(n_train=8857, n_val=984, grid=(31, 31), dim=768, lh=19004, rh=20544,
                 width=768, heads=16, ffn=1024, batch=16, epochs=3, vertex_steps=20,
                 roi_scale=1.0, workers=8, synth_images=2000, synth_epochs=6),
    # the full token grid and widths with fewer images and vertices: reproduces the full-size
    # learning behaviour on a CPU in minutes
    "mid": dict(n_train=1200, n_val=200, grid=(31, 31), dim=768, lh=1900, rh=2050,
                width=768, heads=16, ffn=1024, batch=16, epochs=2, vertex_steps=3,
                roi_scale=0.1, workers=2, synth_images=400, synth_epochs=2),
    "tiny": dict(n_train=48, n_val=16, grid=(4, 4), dim=32, lh=150, rh=170, width=32, heads=4,
                 ffn=64, batch=8, epochs=1, vertex_steps=2, roi_scale=0.005, workers=0,
                 synth_images=24, synth_epochs=1),
}
RANK_K = 8  # planted feature subspace
NOISE_SD = 1.2


def log(msg: str) -> None:
    ctx = D.current()
    if ctx is None or ctx.is_main:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def sync(dev) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


# --------------------------------------------------------------------------------------------
# data


def vertex_layout(cfg, seed=0):
    """hemisphere (V,), roi labels {family: (V,)}, vertex_query (V,), query names."""
    rng = np.random.default_rng([seed, 5])
    hemi, labels = [], {f: [] for f in ROI_SIZES}
    for h in ("lh", "rh"):
        n_h = cfg[h]
        lab = {f: np.full(n_h, "Unknown", dtype=object) for f in ROI_SIZES}
        perm = rng.permutation(n_h)
        at = 0
        for fam, rois in ROI_SIZES.items():
            for roi, n in rois.items():
                k = max(1, int(round(n * cfg["roi_scale"])))
                lab[fam][perm[at : at + k]] = roi
                at += k
        hemi += [h] * n_h
        for f in ROI_SIZES:
            labels[f].append(lab[f])
    hemi = np.asarray(hemi)
    labels = {f: np.concatenate(v).astype(str) for f, v in labels.items()}
    names, vq = assign_queries("rois", hemi, labels)
    return hemi, labels, vq, names


def make_data(cfg, workdir: Path, device, seed=0):
    """Write (or reuse) the feature cache and targets; returns (X memmap, Y, layout...)."""
    L = cfg["grid"][0] * cfg["grid"][1]
    n = cfg["n_train"] + cfg["n_val"]
    hemi, labels, vq, names = vertex_layout(cfg, seed)
    V = len(hemi)
    tag = f"bench_{n}x{L}x{cfg['dim']}_v{V}_s{seed}"
    folder = workdir / tag
    ctx = D.current()
    if ctx is not None and not ctx.is_main:
        ctx.barrier()  # rank 0 writes the cache
    if not (folder / "meta.json").is_file():
        t0 = time.perf_counter()
        folder.mkdir(parents=True, exist_ok=True)
        g = torch.Generator(device=device).manual_seed(seed)
        nq = int(vq.max()) + 1
        pos = token_positions(cfg["grid"]).to(device)
        mu = torch.rand(nq, 2, generator=g, device=device) * 1.6 - 0.8
        sig = torch.rand(nq, generator=g, device=device) * 0.35 + 0.15
        A = torch.exp(-((pos[None] - mu[:, None]) ** 2).sum(-1) / (2 * sig[:, None] ** 2))
        A = A / A.sum(1, keepdim=True)  # (Q, L) receptive fields
        U = torch.randn(cfg["dim"], RANK_K, generator=g, device=device) / math.sqrt(cfg["dim"])
        C = torch.randn(V, RANK_K, generator=g, device=device)
        vq_t = torch.as_tensor(vq, device=device)
        # analytic signal sd per vertex (tokens are iid N(0, 1)): ||A_q|| * ||U c_v||
        scale = A.norm(dim=1)[vq_t] * (C @ U.T).norm(dim=1)
        X = np.lib.format.open_memmap(folder / "features.npy.tmp", mode="w+", dtype=np.float16,
                                      shape=(n, L, cfg["dim"]))
        Y = np.empty((n, V), np.float32)
        for s in range(0, n, 128):
            c = min(128, n - s)
            x = torch.randn(c, L, cfg["dim"], generator=g, device=device).half()
            pooled = torch.einsum("ql,clk->cqk", A, x.float() @ U)  # (c, Q, k)
            sig_v = (pooled[:, vq_t, :] * C).sum(-1) / scale
            y = sig_v + NOISE_SD * torch.randn(c, V, generator=g, device=device)
            X[s : s + c] = x.cpu().numpy()
            Y[s : s + c] = y.cpu().numpy()
        X.flush()
        del X
        os.replace(folder / "features.npy.tmp", folder / "features.npy")
        np.save(folder / "targets.npy", Y)
        (folder / "meta.json").write_text(json.dumps({
            "key": {"dataset": tag, "backbone": "synthetic-noise"}, "grid": list(cfg["grid"]),
            "image_ids": [f"img{i:05d}" for i in range(n)]}))
        log(f"wrote {folder} ({n} x {L} x {cfg['dim']} float16, "
            f"{n * L * cfg['dim'] * 2 / 1e9:.1f} GB) in {time.perf_counter() - t0:.1f} s")
    if ctx is not None and ctx.is_main:
        ctx.barrier()
    cache = FeatureCache(folder)
    Y = np.load(folder / "targets.npy", mmap_mode="r")
    tr = np.arange(cfg["n_train"])
    va = np.arange(cfg["n_train"], n)
    return cache, np.asarray(Y), hemi, labels, vq, names, tr, va


def gpu_stats(X, idx, device, chunk=128):
    """Per-channel mean/std of the training tokens (float64 sums on the device); ``X`` an
    array/memmap or a tensor already on the device."""
    s = torch.zeros(X.shape[-1], dtype=torch.float64, device=device)
    ss = torch.zeros_like(s)
    for i in range(0, len(idx), chunk):
        rows = idx[i : i + chunk]
        x = X[torch.as_tensor(rows, device=X.device)] if torch.is_tensor(X) else \
            torch.from_numpy(np.asarray(X[rows]))
        x = x.to(device).double()
        x = x.reshape(-1, x.shape[-1])
        s += x.sum(0)
        ss += (x * x).sum(0)
    m = len(idx) * X.shape[1]
    mean = s / m
    return mean.cpu().numpy(), ((ss / m - mean**2).clamp_min(0).sqrt() + 1e-6).cpu().numpy()


def pearson_mean(pred: torch.Tensor, y: torch.Tensor) -> float:
    """Mean validation r over vertices (brainattn's one Pearson r; NaN vertices skipped)."""
    r = pearson_per_column(torch.as_tensor(pred), torch.as_tensor(y))
    return float(r[torch.isfinite(r)].mean())


def peak_mem(dev) -> float:
    return torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else float("nan")


def reset_peak(dev) -> None:
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)


class _Take:
    """The first ``n`` batches of a loader (for profiling a few steps)."""

    def __init__(self, loader, n):
        self.loader, self.n, self.batch_size = loader, n, loader.batch_size

    def __len__(self):
        return self.n

    def __iter__(self):
        for i, b in enumerate(self.loader):
            if i >= self.n:
                return
            yield b


def profile_steps(step_loader_fn, dev, n: int) -> dict:
    """torch.profiler over ``n`` training steps: wall ms/step, GPU-busy ms/step (sum of kernel
    times), and the top operators by device time -- what bounds a step."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    step_loader_fn(2)  # warm
    sync(dev)
    with profile(activities=acts) as prof:
        t0 = time.perf_counter()
        step_loader_fn(n)
        sync(dev)
        wall = (time.perf_counter() - t0) / n * 1e3
    ka = prof.key_averages()
    dev_attr = "self_device_time_total" if hasattr(ka[0], "self_device_time_total") else \
        "self_cuda_time_total"
    busy = sum(getattr(e, dev_attr, 0) for e in ka) / 1e3 / n
    top = sorted(ka, key=lambda e: getattr(e, dev_attr, 0), reverse=True)[:12]
    return {"steps": n, "wall_ms_per_step": round(wall, 3), "gpu_busy_ms_per_step": round(busy, 3),
            "top_device_ops_ms_per_step": {e.key[:60]: round(getattr(e, dev_attr, 0) / 1e3 / n, 3)
                                           for e in top},
            "top_cpu_ops_ms_per_step": {e.key[:60]: round(e.self_cpu_time_total / 1e3 / n, 3)
                                        for e in sorted(ka, key=lambda e: e.self_cpu_time_total,
                                                        reverse=True)[:8]}}


# --------------------------------------------------------------------------------------------
# parts


def synth_data(cfg, workdir: Path, dev, n_images: int, seed=0):
    """The embedded synthetic cortex (``brainattn.data.synth``), one subject, ``n_images``
    images, features from the embedded Gabor backbone through brainattn's feature cache."""
    from brainattn.data import open_algonauts, roi_labels, synth
    from brainattn.encoders.backbones import make_backbone
    from brainattn.encoders.cache import get_features

    root = workdir / f"synth_{n_images}_s{seed}"
    t0 = time.perf_counter()
    if not (root / "subj01").is_dir():
        synth.generate(root, subjects=1, images=n_images, seed=seed, overwrite=True,
                       n_jobs=max(1, min(16, os.cpu_count() or 1)))
    gen_s = time.perf_counter() - t0
    ds = open_algonauts(root, "subj01")
    t0 = time.perf_counter()
    # the embedded Gabor backbone keeps its filters on the CPU (14:00 UTC: on CUDA images it
    # raised a device mismatch), so it extracts on the CPU; timing that is not the point here
    bb = make_backbone("gabor", device="cpu")
    cache = get_features(bb, [str(p) for p in ds["image_path"].values], dataset_tag="bench-synth",
                         cache_dir=workdir / "cache", device="cpu")
    feat_s = time.perf_counter() - t0
    Y = np.asarray(ds["betas"].values, np.float32)
    hemi = np.asarray(ds["hemisphere"].values).astype(str)
    labels = roi_labels(ds)
    names, vq = assign_queries("rois", hemi, labels)
    perm = np.random.default_rng([seed, 9]).permutation(len(Y))
    n_val = max(2, len(Y) // 10)
    log(f"synthetic cortex: {len(Y)} images x {Y.shape[1]} vertices, grid {cache.grid}, "
        f"{cache.features.shape[2]} features; generated in {gen_s:.1f} s, features {feat_s:.1f} s")
    return (cache, Y, hemi, labels, vq, names, np.sort(perm[n_val:]), np.sort(perm[:n_val]),
            {"generate_s": round(gen_s, 1), "features_s": round(feat_s, 1),
             "n_images": len(Y), "n_vertices": int(Y.shape[1]), "grid": list(cache.grid),
             "n_features": int(cache.features.shape[2]), "n_queries": len(names)})


class Data:
    def __init__(self, cfg, workdir, dev, seed, synth_images: int = 0):
        self.info = {}
        if synth_images:
            (self.cache, Y, self.hemi, self.labels, self.vq, self.names, self.tr, self.va,
             self.info) = synth_data(cfg, workdir, dev, synth_images, seed)
        else:
            (self.cache, Y, self.hemi, self.labels, self.vq, self.names, self.tr,
             self.va) = make_data(cfg, workdir, dev, seed)
        self.X = self.cache.features
        self.ymean, self.ystd = Y[self.tr].mean(0), Y[self.tr].std(0)
        self.Yz = ((Y - self.ymean) / self.ystd).astype(np.float32)
        self._loaders = None
        self.loaders(cfg, dev, cfg["batch"])
        t0 = time.perf_counter()
        tr = self._loaders[0]
        if tr.where == "gpu":  # statistics from the resident copy: no second pass over the disk
            self.fmean, self.fstd = gpu_stats(tr._X, np.arange(len(self.tr)), dev)
        else:
            self.fmean, self.fstd = gpu_stats(self.X, self.tr, dev)
        self.stats_s = time.perf_counter() - t0

    def loaders(self, cfg, dev, batch, seed=0):
        """The train/val loaders (built once: the rows stay where they are; a new batch size or
        seed only changes the order)."""
        if self._loaders is None:
            t0 = time.perf_counter()
            tr = ArrayLoader(self.X, self.Yz, self.tr, batch_size=batch, shuffle=True, seed=seed,
                             device=dev)
            va = ArrayLoader(self.X, self.Yz, self.va, batch_size=64, device=dev)
            sync(dev)
            self.load_s = time.perf_counter() - t0
            log(f"loaders: train rows on {tr.where}, {self.load_s:.1f} s")
            self._loaders = (tr, va)
        tr, va = self._loaders
        tr.batch_size, tr.seed = batch, seed
        tr.shard(0, 1)
        va.shard(0, 1)
        return tr, va


def run_brainattn(cfg, data: Data, dev, *, epochs, batch, lr, seed=0, dist=None,
                  profile: int = 0, gather_readout: bool = False,
                  cuda_graph: bool | None = False):
    torch.manual_seed(seed)
    L = data.X.shape[1]
    m = TransformerModule(L, data.X.shape[2], len(data.hemi), vertex_query=data.vq,
                          grid=cfg["grid"], width=cfg["width"], heads=cfg["heads"],
                          ffn=cfg["ffn"], dropout=0.1, seed=seed, query_names=data.names)
    m.set_normalisation(data.fmean, data.fstd, data.ymean, data.ystd)
    m.to(dev)
    tr, va = data.loaders(cfg, dev, batch, seed)
    resident = torch.cuda.memory_allocated(dev) / 2**30 if dev.type == "cuda" else 0.0
    reset_peak(dev)
    opt = torch.optim.AdamW(m.parameters(), lr=lr, weight_decay=1e-4,
                            **({"fused": True} if dev.type == "cuda" and cuda_graph is not False
                               else {}))
    if gather_readout:  # the all-queries-then-gather readout, also off CUDA
        m.dense_readout = True
    st = fit_loop(m, opt, tr, va, epochs=epochs, config={}, device=dev, amp=dev.type == "cuda",
                  grad_clip=0.1, schedule="step", patience=None, dist=dist, log=log,
                  cuda_graph=cuda_graph)
    hist = st["history"]
    prof = None
    if profile and dist is None:
        from brainattn.encoders.training import train_epoch

        prof = profile_steps(lambda k: train_epoch(m, _Take(tr, k), opt, device=dev,
                                                   amp=dev.type == "cuda", grad_clip=0.1), dev,
                             profile)
    graph = st.get("cuda_graph", "off")
    name = "brainattn TransformerBrainEncoder (rois)" + (", gather readout" if gather_readout
                                                          else "") \
        + (", CUDA graph + fused AdamW" if graph == "captured" else "")
    return {"model": name, "epochs": len(hist), "profile": prof, "cuda_graph": graph,
            "epoch_s": [round(h["seconds"], 3) for h in hist],
            "train_s": [round(t, 3) for t in st.get("train_seconds", [])],
            "val_r": [round(h["val_mean_r"], 4) for h in hist],
            "images_per_s": round(len(data.tr) / hist[-1]["seconds"],
                                  1),
            "peak_gib": round(peak_mem(dev), 2), "resident_data_gib": round(resident, 2),
            "loader_build_s": round(data.load_s, 1), "batch": batch, "lr": lr,
            "world_size": 1 if dist is None else dist.world_size}


class _MemmapRows(torch.utils.data.Dataset):
    """What a user of the published code writes for a cached-feature data set."""

    def __init__(self, X, Y, idx):
        self.X, self.Y, self.idx = X, Y, idx

    def __len__(self):
        return len(self.idx)

    def __getitem__(self, i):
        j = self.idx[i]
        return (torch.from_numpy(np.asarray(self.X[j], dtype=np.float32)),
                torch.from_numpy(self.Y[j]))


def run_published(cfg, data: Data, dev, *, epochs, batch, lr, seed=0, gpu_loader=False,
                  profile: int = 0):
    L = data.X.shape[1]
    pos = sine_position_encoding(cfg["grid"], cfg["width"])
    m = PublishedEncoder(data.X.shape[2], pos, data.hemi, data.vq, d=cfg["width"],
                         nhead=cfg["heads"], dim_ff=cfg["ffn"], dropout=0.1, seed=seed).to(dev)
    fmean = torch.as_tensor(data.fmean, dtype=torch.float32, device=dev)
    fstd = torch.as_tensor(data.fstd, dtype=torch.float32, device=dev)
    if gpu_loader:
        tr, va = data.loaders(cfg, dev, batch, seed)
    else:
        kw = dict(num_workers=cfg["workers"], pin_memory=dev.type == "cuda",
                  persistent_workers=cfg["workers"] > 0)
        g = torch.Generator().manual_seed(seed)
        tr = torch.utils.data.DataLoader(_MemmapRows(data.X, data.Yz, data.tr), batch_size=batch,
                                         shuffle=True, generator=g, drop_last=False, **kw)
        va = torch.utils.data.DataLoader(_MemmapRows(data.X, data.Yz, data.va), batch_size=64,
                                         **kw)
    reset_peak(dev)
    opt = torch.optim.AdamW(m.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.5)
    amp = dev.type == "cuda"
    times, rs = [], []

    def train(batches):
        m.train()
        running = 0.0
        for x, y in batches:
            x = x.to(dev, non_blocking=True)
            y = y.to(dev, non_blocking=True)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                pred = m((x - fmean) / fstd)
                loss = torch.nn.functional.mse_loss(pred.float(), y)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(m.parameters(), 0.1)
            opt.step()
            running += loss.item()  # the running loss the training script prints
        return running

    for ep in range(epochs):
        if gpu_loader:
            tr.set_epoch(ep)
        t0 = time.perf_counter()
        train(tr)
        sched.step()
        m.eval()
        preds, ys = [], []
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            for x, y in va:
                x = x.to(dev, non_blocking=True)
                preds.append(m((x - fmean) / fstd).float().cpu())
                ys.append(y.cpu())
        rs.append(round(pearson_mean(torch.cat(preds), torch.cat(ys)), 4))
        sync(dev)
        times.append(round(time.perf_counter() - t0, 3))
        log(f"published{' (gpu data)' if gpu_loader else ''} epoch {ep + 1}: {times[-1]:.1f} s, "
            f"val r {rs[-1]:.4f}")
    del L
    prof = profile_steps(lambda k: train(_Take(tr, k)), dev, profile) if profile else None
    return {"profile": prof, "model": "published-style DETR decoder (nn.MultiheadAttention, eager, AMP)"
                     + (", brainattn GPU-resident loader" if gpu_loader else
                        f", DataLoader {cfg['workers']} workers, pinned"),
            "epochs": epochs, "epoch_s": times, "val_r": rs,
            "images_per_s": round(len(data.tr) / times[-1], 1),  # last epoch: after warm-up
            "peak_gib": round(peak_mem(dev), 2), "batch": batch, "lr": lr}


def run_vertices(cfg, data: Data, dev, *, steps, batch, lr, seed=0):
    torch.manual_seed(seed)
    V = len(data.hemi)
    tr, _ = data.loaders(cfg, dev, batch, seed)
    out = {"model": "brainattn vertices mode + learned pRF bias", "batch": batch,
           "n_queries": V}
    try:
        m = TransformerModule(data.X.shape[1], data.X.shape[2], V, vertex_query=np.arange(V),
                              grid=cfg["grid"], width=cfg["width"], heads=cfg["heads"],
                              ffn=cfg["ffn"], dropout=0.1, prf_bias=True, seed=seed)
        m.set_normalisation(data.fmean, data.fstd, data.ymean, data.ystd)
        m.to(dev)
        base = torch.cuda.memory_allocated(dev) / 2**30 if dev.type == "cuda" else 0.0
        reset_peak(dev)
        opt = torch.optim.AdamW(m.parameters(), lr=lr, weight_decay=1e-4)
        amp = dev.type == "cuda"
        warm = 3 if dev.type == "cuda" else 1
        it = iter(tr)
        t0 = None
        for i in range(warm + steps):
            if i == warm:
                sync(dev)
                t0 = time.perf_counter()
            x, y = next(it)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                loss = torch.mean((m(x).float() - y) ** 2)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(m.parameters(), 0.1)
            opt.step()
        sync(dev)
        ms = (time.perf_counter() - t0) / steps * 1e3
        out.update(ms_per_step=round(ms, 2),
                   epoch_s_estimate=round(ms * math.ceil(len(data.tr) / batch) / 1e3, 1),
                   peak_gib=round(peak_mem(dev), 2), resident_gib=round(base, 2),
                   loss=round(float(loss.detach()), 4), steps_timed=steps)
    except torch.cuda.OutOfMemoryError as exc:
        out.update(error=f"out of memory: {str(exc).splitlines()[0][:120]}")
    return out


def run_ridge(cfg, data: Data, dev):
    from himalaya.backend import set_backend
    from himalaya.ridge import RidgeCV

    from brainattn.encoders.ridge import RidgeEncoder

    t0 = time.perf_counter()
    n = data.X.shape[0]
    pooled = np.empty((n, data.X.shape[2]), np.float32)
    for s in range(0, n, 128):
        pooled[s : s + 128] = torch.from_numpy(np.array(data.X[s : s + 128])).to(dev) \
            .float().mean(1).cpu().numpy()
    pool_s = time.perf_counter() - t0
    Y = data.Yz
    out = {"pooling_s": round(pool_s, 2), "features": "mean over tokens", "n_alphas_brainattn": 15}
    sync(dev)
    t0 = time.perf_counter()
    est = RidgeEncoder(pool="mean", device=str(dev)).fit(pooled[data.tr][:, None, :], Y[data.tr])
    sync(dev)
    out["brainattn_s"] = round(time.perf_counter() - t0, 2)
    pred = est.predict(pooled[data.va][:, None, :])
    out["brainattn_val_r"] = round(pearson_mean(torch.from_numpy(pred), torch.from_numpy(Y[data.va])), 4)
    backend = set_backend("torch_cuda" if dev.type == "cuda" else "numpy", on_error="warn")
    Xtr = pooled[data.tr]
    Ytr = Y[data.tr]

    def himalaya(name, model):
        sync(dev)
        t0 = time.perf_counter()
        model.fit(backend.asarray(Xtr), backend.asarray(Ytr))
        p = backend.to_numpy(model.predict(backend.asarray(pooled[data.va])))
        sync(dev)
        out[f"himalaya_{name}_s"] = round(time.perf_counter() - t0, 2)
        out[f"himalaya_{name}_val_r"] = round(pearson_mean(torch.as_tensor(np.asarray(p)),
                                                          torch.from_numpy(Y[data.va])), 4)

    himalaya("defaults", RidgeCV())  # himalaya's own: alphas [0.1, 1], no intercept, cv 5
    # brainattn's settings (15 alphas, intercept, 5 folds): the wrapper's overhead
    himalaya("same_settings", RidgeCV(alphas=np.logspace(-1, 6, 15), cv=5, fit_intercept=True))
    out["backend"] = backend.name
    set_backend("numpy")
    return out


# --------------------------------------------------------------------------------------------


def environment(dev) -> dict:
    env = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "torch": torch.__version__, "python": platform.python_version(),
           "device": str(dev)}
    if dev.type == "cuda":
        env["card"] = torch.cuda.get_device_name(dev)
        env["n_gpus"] = torch.cuda.device_count()
        try:
            import triton

            env["triton"] = triton.__version__
        except ImportError:
            pass
    try:
        import himalaya

        env["himalaya"] = himalaya.__version__
    except ImportError:
        pass
    return env


def markdown(res: dict) -> str:
    lines = [f"### encoder benchmark ({res['size']}) -- {res['env'].get('card', res['env']['device'])}",
             "", "```", json.dumps(res["env"]), "```", ""]
    rows = [r for k, r in res["parts"].items()
            if k.partition("@")[0] in ("brainattn_graph", "brainattn", "brainattn_gather",
                                       "published", "published_gpu", "ddp", "ddp_eager")]
    if rows:
        lines += ["| model | batch | s/epoch (last) | images/s | peak GiB | val r per epoch |",
                  "|---|---|---|---|---|---|"]
        for r in rows:
            ranks = f" x{r['world_size']} ranks" if r.get("world_size", 1) > 1 else ""
            lines.append(f"| {r['model']}{ranks}"
                         f" | {r['batch']} | {r['epoch_s'][-1]:.2f} | {r['images_per_s']} |"
                         f" {r['peak_gib']} | {', '.join(str(v) for v in r['val_r'])} |")
    # what `brainattn fit` runs (the CUDA-graph step) when it was measured, else eager
    b = res["parts"].get("brainattn_graph") or res["parts"].get("brainattn")
    p = res["parts"].get("published")
    if b and p:
        lines += ["", f"speed-up brainattn vs published: "
                      f"{p['epoch_s'][-1] / b['epoch_s'][-1]:.2f}x per epoch (last epoch); "
                      f"final val r {b['val_r'][-1]} vs {p['val_r'][-1]} "
                      f"(diff {b['val_r'][-1] - p['val_r'][-1]:+.4f})"]
    sy = res["parts"].get("synth")
    if sy:
        b, p = sy["brainattn"], sy["published"]
        lines += ["", f"synthetic cortex ({json.dumps(sy['data'])}):",
                  f"brainattn s/epoch {np.median(b['epoch_s']):.2f}, val r {b['val_r']}; "
                  f"published s/epoch {np.median(p['epoch_s']):.2f}, val r {p['val_r']}; "
                  f"best r diff {max(b['val_r']) - max(p['val_r']):+.4f}"]
    for k in ("vertices", "ridge"):
        if k in res["parts"]:
            lines += ["", f"{k}: `{json.dumps(res['parts'][k])}`"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="full")
    ap.add_argument("--tiny", action="store_true", help="same as --size tiny")
    ap.add_argument("--parts",
                    default="brainattn_graph,brainattn,published,published_gpu,vertices,ridge,synth")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--vertex-steps", type=int, default=None)
    ap.add_argument("--synth-images", type=int, default=None,
                    help="images of the synthetic cortex for the accuracy part")
    ap.add_argument("--synth-epochs", type=int, default=None)
    ap.add_argument("--profile", type=int, default=0, help="profile this many training steps "
                    "of each timed model after its epochs (0: off)")
    ap.add_argument("--workdir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp"))
                    / "brainattn-bench")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", type=Path, default=None, help="markdown summary")
    ap.add_argument("--json", type=Path, default=None, help="raw results")
    args = ap.parse_args(argv)
    size = "tiny" if args.tiny else args.size
    cfg = dict(SIZES[size])
    epochs = args.epochs or cfg["epochs"]
    batch = args.batch_size or cfg["batch"]
    parts = [p for p in args.parts.split(",") if p]
    dist = D.init_distributed(args.device) if any(p.startswith("ddp") for p in parts) else None
    from brainattn.utils import resolve_device

    dev = dist.device if dist is not None else resolve_device(args.device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    res = {"size": size, "env": environment(dev), "parts": {}}
    if dist is not None:
        res["env"]["world_size"] = dist.world_size
    t0 = time.perf_counter()
    data = Data(cfg, args.workdir, dev, seed=0)
    res["data_s"] = round(time.perf_counter() - t0, 1)
    res["feature_stats_s"] = round(data.stats_s, 1)
    log(f"data ready in {res['data_s']} s")
    try:
        for part_b in parts:
            t0 = time.perf_counter()
            part, _, pb = part_b.partition("@")  # "ddp@32": batch 32, lr * sqrt(32 / batch)
            pbatch = int(pb) if pb else batch
            plr = args.lr * math.sqrt(pbatch / batch)
            if part in ("brainattn", "brainattn_gather", "brainattn_graph", "ddp", "ddp_eager"):
                r = run_brainattn(cfg, data, dev, epochs=epochs, batch=pbatch, lr=plr,
                                  dist=dist, profile=args.profile if dist is None else 0,
                                  gather_readout=part == "brainattn_gather",
                                  cuda_graph=None if part in ("brainattn_graph", "ddp")
                                  else False)
            elif part in ("published", "published_gpu"):
                r = run_published(cfg, data, dev, epochs=epochs, batch=batch, lr=args.lr,
                                  gpu_loader=part == "published_gpu", profile=args.profile)
            elif part == "vertices":
                r = run_vertices(cfg, data, dev, steps=args.vertex_steps or cfg["vertex_steps"],
                                 batch=16 if size == "full" else batch, lr=args.lr)
            elif part == "ridge":
                r = run_ridge(cfg, data, dev)
            elif part == "synth":
                sdata = Data(cfg, args.workdir, dev, 0, synth_images=args.synth_images
                             or cfg["synth_images"])
                scfg = {**cfg, "grid": sdata.cache.grid}
                r = {"data": sdata.info,
                     "brainattn": run_brainattn(scfg, sdata, dev, epochs=args.synth_epochs
                                                or cfg["synth_epochs"], batch=batch, lr=args.lr),
                     "published": run_published(scfg, sdata, dev, epochs=args.synth_epochs
                                                or cfg["synth_epochs"], batch=batch, lr=args.lr)}
                del sdata
            else:
                raise SystemExit(f"--parts: unknown part {part!r}")
            r["wall_s"] = round(time.perf_counter() - t0, 1)
            res["parts"][part_b] = r
            log(f"{part}: {json.dumps(r)}")
            if (dist is None or dist.is_main) and args.json:  # partial results survive a kill
                args.json.write_text(json.dumps(res, indent=1, default=str))
            if dev.type == "cuda":
                torch.cuda.empty_cache()
    finally:
        if dist is not None:
            D.shutdown()
    if dist is None or dist.is_main:
        md = markdown(res)
        print(md)
        if args.out:
            args.out.write_text(md)
        if args.json:
            args.json.write_text(json.dumps(res, indent=1, default=str))
    return res


if __name__ == "__main__":
    main()
