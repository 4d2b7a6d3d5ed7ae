"""The public estimators at Algonauts size (issue 18), every peer in the same process on the
same card:

    PYTHONPATH=. python3 benchmarks/estimators.py [--size full|tiny] [--epochs 2] \
        [--parts fit_memory,fit_memmap,cli,engine,ridge] [--json FILE] [--out FILE]

(on the GPU machine: ``bash benchmarks/gpu_estimators.sh``; ``--size tiny`` runs on a CPU in
seconds, as ``tests/encoders/test_encoders_benchmark.py`` does).

Data: :func:`encoder.make_data` -- 9,841 images x 961 tokens x 768 float16 features (a 14.5 GB
memory-mapped feature cache) and 39,548 vertices with NSD-like ROIs (50 ``rois`` queries) and a
planted signal (best possible r ~0.64). Parts:

``fit_memory``  ``TransformerBrainEncoder(queries="rois", hemisphere=..., roi_labels=...).fit(X, Y)``
                with X a NumPy array in host memory (the published size, its defaults: 10 %
                of the images validate, CUDA-graph step, bf16). Reports the time from the call
                of ``fit`` to the first training step (``setup_seconds_``: checks, split,
                statistics, staging), s/epoch and validation r per epoch.
``fit_memmap``  the same with X the memory-mapped cache.
``cli``         what ``brainattn fit DATA --model transformer`` runs: ``prepare_run`` (options,
                data set, feature cache -- a cache hit on the same memory map, test split with
                ``--test-fraction 0.001`` so that the training set has the same size) then
                ``fit_prepared`` (the estimator's ``fit`` on a row view of the memory map).
``engine``      the training engine alone, as ``encoder.py --parts brainattn_graph`` runs it
                (``TransformerModule`` + ``fit_loop``, statistics and loaders built outside):
                the loop the CLI ran before the estimators carried it.
``ridge``       ``RidgeEncoder`` against himalaya's ``RidgeCV`` (torch_cuda), the same pooled
                features (mean over tokens, pooled on the device) and z-scored targets, train
                8,857 / validation 984 rows: himalaya with brainattn's settings (15 alphas, cv 5,
                intercept) and with its own defaults (alphas [0.1, 1], cv 5, no intercept);
                time and validation r. Also ``RidgeEncoder().fit`` on the memory map itself
                (what ``brainattn fit --model ridge`` times: pooling included).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import encoder as E  # noqa: E402

from brainattn.encoders.cache import Rows  # noqa: E402
from brainattn.encoders.transformer import TransformerBrainEncoder  # noqa: E402


def _transformer(cfg, data, dev, epochs) -> TransformerBrainEncoder:
    return TransformerBrainEncoder(queries="rois", hemisphere=data["hemi"],
                                   roi_labels=data["labels"], width=cfg["width"],
                                   heads=cfg["heads"], ffn=cfg["ffn"], epochs=epochs,
                                   batch_size=cfg["batch"], device=str(dev))


def _fit_row(est, wall_s, n_train) -> dict:
    hist = est.history_
    return {"setup_s": round(est.setup_seconds_, 2), "fit_wall_s": round(wall_s, 1),
            "epoch_s": [round(h["seconds"], 3) for h in hist],
            "val_r": [round(h["val_mean_r"], 4) for h in hist], "n_train": int(n_train),
            "images_per_s": round(n_train / hist[-1]["seconds"], 1)}


def run_fit(cfg, data, dev, epochs, *, in_memory: bool) -> dict:
    X = data["cache"].features
    out = {}
    if in_memory:
        t0 = time.perf_counter()
        X = np.empty(X.shape, X.dtype)
        for s in range(0, len(X), 512):  # into host memory (not part of the fit)
            X[s : s + 512] = data["cache"].features[s : s + 512]
        out["load_to_memory_s"] = round(time.perf_counter() - t0, 1)
    est = _transformer(cfg, data, dev, epochs)
    E.sync(dev)
    t0 = time.perf_counter()
    est.fit(X, data["Y"], log=E.log)
    E.sync(dev)
    out.update(_fit_row(est, time.perf_counter() - t0, len(est.train_idx_)))
    out["features"] = "NumPy array in host memory" if in_memory else "memory map (/dev/shm)"
    return out


def run_cli(cfg, data, dev, epochs, workdir: Path) -> dict:
    """``prepare_run`` + ``fit_prepared`` on a data set whose feature cache is the benchmark's
    memory map (a cache hit: nothing is extracted)."""
    import xarray as xr

    from brainattn.encoders.backbones import make_backbone
    from brainattn.encoders.cache import cache_folder, dataset_key
    from brainattn.encoders.run import fit_prepared, prepare_run

    cache = data["cache"]
    n = cache.features.shape[0]
    root = workdir / "cli-data"
    paths = [str(root / f"img{i:05d}.png") for i in range(n)]  # never read: the cache hits
    ds = xr.Dataset({"betas": (("image", "vertex"), data["Y"])},
                    coords={"image_path": ("image", np.asarray(paths)),
                            "hemisphere": ("vertex", data["hemi"]),
                            **{f"roi_{f}": ("vertex", v) for f, v in data["labels"].items()}},
                    attrs={"subject": "subj01", "root": str(root)})
    bb = make_backbone("gabor", device="cpu")
    key = {**dataset_key(paths, f"{root.name}-subj01"),
           **bb.with_layer(bb.check_layer(bb.layer)).key()}  # as get_features keys it
    folder = cache_folder(workdir / "cli-cache", key)
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "features.npy").exists():
        os.symlink(cache.path / "features.npy", folder / "features.npy")
    (folder / "meta.json").write_text(json.dumps({"key": key, "grid": list(cache.grid),
                                                  "image_ids": cache.image_ids}))
    t0 = time.perf_counter()
    run = prepare_run(ds, workdir / "cli-run", overwrite=True, cache_dir=workdir / "cli-cache",
                      echo=False, model="transformer", width=cfg["width"], heads=cfg["heads"],
                      ffn=cfg["ffn"], epochs=epochs, batch_size=cfg["batch"],
                      test_fraction=0.001, device=str(dev), n_attention_images=0)
    prepare_s = time.perf_counter() - t0
    E.sync(dev)
    t0 = time.perf_counter()
    fit_prepared(run)
    E.sync(dev)
    est = run.estimator
    return {"prepare_run_s": round(prepare_s, 2),
            **_fit_row(est, time.perf_counter() - t0, len(est.train_idx_)),
            "features": "memory map via the feature cache (brainattn fit's path)"}


def run_engine(cfg, data, dev, epochs, workdir: Path) -> dict:
    t0 = time.perf_counter()
    d = E.Data(cfg, workdir, dev, seed=0)  # loaders + statistics, outside the timed loop
    prep = time.perf_counter() - t0
    r = E.run_brainattn(cfg, d, dev, epochs=epochs, batch=cfg["batch"], lr=5e-4, cuda_graph=None)
    del d
    return {"prepare_s": round(prep, 1), "epoch_s": r["epoch_s"], "val_r": r["val_r"],
            "images_per_s": r["images_per_s"], "cuda_graph": r["cuda_graph"],
            "model": "TransformerModule + fit_loop (encoder.py brainattn_graph)"}


REPEATS = 4  # rounds of the ridge comparison


def run_ridge(data, dev) -> dict:
    from himalaya.backend import set_backend
    from himalaya.ridge import RidgeCV

    from brainattn.encoders.ridge import DEFAULT_ALPHAS, RidgeEncoder, pool_tokens, solve_ridge_cv

    X = data["cache"].features
    tr, va = data["tr"], data["va"]
    Y = data["Y"]
    Yz = ((Y - Y[tr].mean(0)) / Y[tr].std(0)).astype(np.float32)
    out = {}
    E.sync(dev)
    t0 = time.perf_counter()
    pooled = pool_tokens(X, "mean", device=dev).cpu().numpy()
    E.sync(dev)
    out["pooling_s"] = round(time.perf_counter() - t0, 2)

    def score(pred):
        return round(E.pearson_mean(torch.as_tensor(np.asarray(pred)), torch.from_numpy(Yz[va])), 4)

    def ours(est):
        return lambda: est.fit(pooled[tr][:, None, :], Yz[tr]).predict(pooled[va][:, None, :])

    backend = set_backend("torch_cuda" if dev.type == "cuda" else "torch", on_error="warn")

    def himalaya(model):
        def run():
            model.fit(backend.asarray(pooled[tr]), backend.asarray(Yz[tr]))
            return backend.to_numpy(model.predict(backend.asarray(pooled[va])))
        return run

    ways = {"brainattn_default": ours(RidgeEncoder(device=str(dev))),  # = fit --model ridge
            "himalaya_same_settings": himalaya(RidgeCV(alphas=np.asarray(DEFAULT_ALPHAS), cv=5,
                                                       fit_intercept=True)),
            "himalaya_defaults": himalaya(RidgeCV())}
    # the ways take turns, REPEATS rounds; the first round pays CUDA set-up and is dropped
    times = {name: [] for name in ways}
    preds = {}
    for _ in range(REPEATS):
        for name, way in ways.items():
            E.sync(dev)
            t0 = time.perf_counter()
            preds[name] = way()
            E.sync(dev)
            times[name].append(round(time.perf_counter() - t0, 3))
    for name in ways:
        out[f"{name}_s"] = times[name]
        out[f"{name}_median_s"] = float(np.median(times[name][1:]))
        out[f"{name}_val_r"] = score(preds[name])
    # where brainattn's time goes: the solver alone, on data already on the device
    Xd = torch.from_numpy(pooled[tr]).to(dev)
    Xd = (Xd - Xd.mean(0)) / Xd.std(0)
    Yd = torch.from_numpy(Yz[tr]).to(dev)
    solver = []
    for _ in range(3):
        E.sync(dev)
        t0 = time.perf_counter()
        solve_ridge_cv(Xd, Yd, DEFAULT_ALPHAS)
        E.sync(dev)
        solver.append(round(time.perf_counter() - t0, 3))
    out["brainattn_solver_only_s"] = solver
    del Xd, Yd
    set_backend("numpy")
    E.sync(dev)
    t0 = time.perf_counter()
    RidgeEncoder(device=str(dev)).fit(Rows(X, tr), Y[tr])
    E.sync(dev)
    out["brainattn_from_memmap_s"] = round(time.perf_counter() - t0, 2)
    out["backend"] = backend.name
    return out


def markdown(res: dict) -> str:
    env = res["env"]
    lines = [f"### estimators at {res['size']} size -- {env.get('card', env['device'])}", "",
             "```", json.dumps(env), "```", ""]
    rows = [(k, r) for k, r in res["parts"].items() if k in ("fit_memory", "fit_memmap", "cli",
                                                           "engine")]
    if rows:
        lines += ["| path | fit -> first step (s) | s/epoch (each epoch) | images/s (last) | "
                  "val r per epoch |", "|---|---|---|---|---|"]
        for k, r in rows:
            setup = r.get("setup_s", r.get("prepare_s"))
            lines.append(f"| {k} ({r.get('features', r.get('model', ''))}) | {setup} | "
                         f"{', '.join(map(str, r['epoch_s']))} | {r['images_per_s']} | "
                         f"{', '.join(map(str, r['val_r']))} |")
    if "ridge" in res["parts"]:
        lines += ["", f"ridge: `{json.dumps(res['parts']['ridge'])}`"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=("full", "mid", "tiny"), default="full")
    ap.add_argument("--parts", default="fit_memory,fit_memmap,cli,ridge,engine")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp"))
                    / "brainattn-bench")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", type=Path, default=None, help="markdown summary")
    ap.add_argument("--json", type=Path, default=None, help="raw results")
    args = ap.parse_args(argv)
    from brainattn.utils import resolve_device

    cfg = dict(E.SIZES[args.size])
    dev = resolve_device(args.device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    res = {"size": args.size, "env": E.environment(dev), "parts": {}}
    t0 = time.perf_counter()
    cache, Y, hemi, labels, vq, names, tr, va = E.make_data(cfg, args.workdir, dev, seed=0)
    data = {"cache": cache, "Y": np.asarray(Y, np.float32), "hemi": hemi, "labels": labels,
            "tr": tr, "va": va}
    res["data_s"] = round(time.perf_counter() - t0, 1)
    E.log(f"data ready in {res['data_s']} s")
    for part in [p for p in args.parts.split(",") if p]:
        t0 = time.perf_counter()
        if part in ("fit_memory", "fit_memmap"):
            r = run_fit(cfg, data, dev, args.epochs, in_memory=part == "fit_memory")
        elif part == "cli":
            r = run_cli(cfg, data, dev, args.epochs, args.workdir)
        elif part == "engine":
            r = run_engine(cfg, data, dev, args.epochs, args.workdir)
        elif part == "ridge":
            r = run_ridge(data, dev)
        else:
            raise SystemExit(f"--parts: unknown part {part!r}")
        r["wall_s"] = round(time.perf_counter() - t0, 1)
        res["parts"][part] = r
        E.log(f"{part}: {json.dumps(r)}")
        if args.json:  # partial results survive a kill
            args.json.write_text(json.dumps(res, indent=1, default=str))
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    if args.out:
        args.out.write_text(markdown(res))
    print(markdown(res))
    return res


if __name__ == "__main__":
    main()
