"""The analyses on run folders: what the CLI calls.

* :func:`prefill_layer_sweep` / :func:`summarise_layer_sweep`: ``brainattn fit --layer a,b,c``
  extracts every layer of a (subject, backbone) in one backbone pass before the fits, and after
  them writes ``OUT/layer_sweep.nc`` (:func:`brainattn.analyses.layers.layer_sweep_summary`;
  ``OUT/layer_sweep__<subject>__<backbone>.nc`` when several subjects or backbones are swept).
* :func:`ensemble_runs`: ``brainattn ensemble RUN... --out DIR`` -- the runs' predictions of
  their (shared) test images averaged and scored like a run: ``DIR/scores.nc`` (significance
  included), ``DIR/config.json`` (``model: ensemble``, the members), so that ``brainattn report``
  draws the ensemble beside its members.
* :func:`partition_run`: ``brainattn partition DATA --layer ... --out DIR`` -- banded ridge and
  variance partitioning over layers (and backbones): ``DIR/partition.nc``, the joint model's
  ``DIR/scores.nc`` and ``DIR/config.json`` (``model: banded-ridge``).
* :func:`write_run_submission`: ``brainattn predict RUN --algonauts-submission DIR``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from brainattn.errors import ConfigError, DataError


def _groups(fits: list[dict]) -> dict[tuple[str, str], list[int]]:
    out: dict[tuple[str, str], list[int]] = {}
    for f in fits:
        out.setdefault((f["subject"], f["backbone"]), []).append(int(f["layer"]))
    return out


def _fit_options(common: dict) -> dict:
    from brainattn.encoders.run import DEFAULTS

    return {k: v for k, v in common.items() if k in DEFAULTS}


def prefill_layer_sweep(data, fits: list[dict], common: dict, *, log=print) -> None:
    """Fill the feature cache of every swept (subject, backbone) in one pass per group."""
    from brainattn.encoders.run import layer_features_for, open_dataset, resolve_config

    for (subject, backbone), layers in _groups(fits).items():
        if len(layers) < 2:
            continue
        cfg = resolve_config(**{**_fit_options(common), "subject": subject, "backbone": backbone,
                                "layer": layers[0]})
        ds = open_dataset(data, subject, cfg)
        t0 = time.perf_counter()
        layer_features_for(ds, cfg, layers, cache_dir=common.get("cache_dir"))
        log(f"features of {backbone} layers {','.join(map(str, layers))} for {subject}: one "
            f"backbone pass ({time.perf_counter() - t0:.1f} s)")


def sweep_file(out: Path, subject: str, backbone: str, n_groups: int) -> Path:
    safe = "".join(c if c.isalnum() or c in "._-" else "-" for c in backbone)
    return out / ("layer_sweep.nc" if n_groups == 1 else f"layer_sweep__{subject}__{safe}.nc")


def summarise_layer_sweep(out, fits: list[dict], *, log=print) -> list[Path]:
    """``layer_sweep*.nc`` for every (subject, backbone) fitted at several layers, and the
    table of medians per ROI and layer (best layer marked) through ``log``."""
    from brainattn.analyses.layers import layer_sweep_summary
    from brainattn.encoders.multifit import fit_name
    from brainattn.io import load_netcdf, save_netcdf

    out = Path(out)
    groups = {k: v for k, v in _groups(fits).items() if len(v) > 1}
    written = []
    for (subject, backbone), layers in groups.items():
        scores = {ly: load_netcdf(out / fit_name(subject, backbone, ly) / "scores.nc")
                  for ly in layers}
        summary = layer_sweep_summary(scores)
        path = sweep_file(out, subject, backbone, len(groups))
        save_netcdf(summary, path, subject=subject)
        log(sweep_table(summary, title=f"layer sweep: {subject}, {backbone}"))
        written.append(path)
    return written


def sweep_table(summary, *, title: str = "layer sweep") -> str:
    """Median score per ROI (rows) and layer (columns), ``*`` on each ROI's best layer, then
    how many vertices each layer predicts best."""
    layers = [int(x) for x in summary["layer"].values]
    metric = summary.attrs.get("metric", "pearson_r")
    lines = [f"{title} (median {metric} per ROI; * best layer)",
             f"{'ROI':28s} " + " ".join(f"{'L' + str(x):>7s}" for x in layers)]
    if "roi" in summary.dims:
        best = summary["best_layer_roi"].values
        for i, roi in enumerate(summary["roi"].values):
            cells = []
            for j, x in enumerate(layers):
                v = summary["roi_score"].values[j, i]
                cells.append(f"{('*' if x == best[i] else '') + format(v, '.3f'):>7s}")
            lines.append(f"{str(roi):28s} " + " ".join(cells))
    bl = summary["best_layer"].values
    n = max(1, int((bl >= 0).sum()))
    lines.append("best layer per vertex: " + ", ".join(
        f"L{x} {100 * (bl == x).sum() / n:.0f}%" for x in layers))
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# ensembles


def _run_config(run: Path) -> dict:
    p = Path(run) / "config.json"
    if not p.is_file():
        raise DataError(f"{run}: no config.json; expected a run folder written by brainattn fit")
    return json.loads(p.read_text())


def test_predictions(run, *, data=None, cache_dir=None, device: str = "auto"):
    """A finished run's predictions of its held-out test images: ``(pred, test_idx, ds, cfg)``."""
    from brainattn.encoders.cache import Rows
    from brainattn.encoders.run import features_for, load_estimator, open_dataset

    run = Path(run)
    cfg = _run_config(run)
    if cfg.get("model") in ("ensemble", "banded-ridge"):
        raise DataError(f"{run}: is a {cfg['model']} folder, not a fitted run; give the runs "
                        "themselves")
    if not (run / "split.json").is_file():
        raise DataError(f"{run}: no split.json; the fit has not finished")
    cfg["device"] = device
    if data is None and cfg.get("data") is None:
        raise DataError(f"{run}: was fitted on an in-memory data set; pass --data")
    ds = open_dataset(data if data is not None else cfg["data"], cfg["subject"], cfg)
    est = load_estimator(run, device="cpu" if device == "auto" else device)
    _, cache = features_for(ds, cfg, cache_dir=cache_dir)
    test = np.asarray(json.loads((run / "split.json").read_text())["test"], dtype=np.int64)
    return np.asarray(est.predict(Rows(cache.features, test))), test, ds, cfg


def ensemble_runs(runs, out, *, data=None, weights=None, cache_dir=None, device: str = "auto",
                  overwrite: bool = False, log=print) -> Path:
    """Average the test predictions of ``runs`` (same data set, subject and test images) and
    write ``out/scores.nc``, ``out/config.json``; returns ``out``."""
    from brainattn.analyses.ensemble import ensemble_scores
    from brainattn.encoders.run import _summary, score_predictions
    from brainattn.io import atomic_write_json, check_output_dir, save_netcdf

    runs = [Path(r) for r in runs]
    if len(runs) < 2:
        raise ConfigError(f"ensemble: give at least 2 run folders, got {len(runs)}")
    out = Path(out)
    check_output_dir(out, overwrite=overwrite)
    preds, first = [], None
    for r in runs:
        pred, test, ds, cfg = test_predictions(r, data=data, cache_dir=cache_dir, device=device)
        if first is None:
            first = (test, ds, cfg, r)
        else:
            t0, _, c0, r0 = first
            if (cfg.get("data"), cfg["subject"]) != (c0.get("data"), c0["subject"]):
                raise DataError(f"{r} was fitted on {cfg.get('data')} {cfg['subject']}, {r0} on "
                                f"{c0.get('data')} {c0['subject']}; an ensemble averages "
                                "predictions of the same data")
            if not np.array_equal(test, t0):
                raise DataError(f"{r} and {r0} hold out different test images (other --seed or "
                                "--test-fraction); an ensemble needs the same test images")
        if pred.shape[1] != (preds[0].shape[1] if preds else pred.shape[1]):
            raise DataError(f"{r} predicts {pred.shape[1]} vertices, {runs[0]} "
                            f"{preds[0].shape[1]}")
        preds.append(pred)
        log(f"{r}: {cfg['model']} {cfg['backbone']} layer {cfg['layer']} seed {cfg['seed']}")
    test, ds, cfg0, _ = first
    true = np.asarray(ds["betas"].values[test], dtype=np.float32)
    cfg = {**cfg0, "model": "ensemble", "device": device}
    scores = ensemble_scores(
        preds, true, weights=weights, members=[str(r) for r in runs],
        scorer=lambda p, t: score_predictions(p, t, ds, cfg, n_test_images=len(test)))
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "config.json", {
        "model": "ensemble", "members": [str(r.resolve()) for r in runs],
        "weights": scores.attrs["weights"], "data": cfg0.get("data"), "subject": cfg0["subject"],
        "seed": cfg0["seed"], "backbone": "ensemble"})
    save_netcdf(scores, out / "scores.nc", seed=cfg0["seed"])
    log(_summary(scores))
    log("members' mean r: " + ", ".join(f"{m}: {v:.4f}" for m, v in
                                         zip(scores["member"].values, scores["member_mean_r"].values,
                                             strict=True)))
    return out


# --------------------------------------------------------------------------------------------
# Algonauts submission


def write_run_submission(run, folder, *, data=None, cache_dir=None, device: str = "auto",
                         overwrite: bool = False) -> list[Path]:
    """Predict the subject's ``test_split/test_images`` with a run's model and write
    ``folder/<subject>/{lh,rh}_pred_test.npy`` (:mod:`brainattn.analyses.submission`)."""
    from brainattn.analyses.submission import write_submission
    from brainattn.encoders.backbones import make_backbone
    from brainattn.encoders.cache import get_features
    from brainattn.encoders.run import _dataset_tag, load_estimator, open_dataset
    from brainattn.utils import resolve_device

    run = Path(run)
    cfg = _run_config(run)
    if data is None and cfg.get("data") is None:
        raise DataError(f"{run}: was fitted on an in-memory data set; pass --data")
    ds = open_dataset(data if data is not None else cfg["data"], cfg["subject"], cfg)
    paths = list(ds.attrs.get("test_image_paths") or [])
    if not paths:
        raise DataError(f"{ds.attrs.get('root', data)}/{cfg['subject']}/test_split/test_images: "
                        "no test images; the submission predicts the challenge's test images")
    for h in ("lh", "rh"):
        if (np.asarray(ds["hemisphere"].values).astype(str) == h).sum() == 0:
            raise DataError(f"the data set has no {h} vertices; a submission needs both")
    dev = resolve_device(device)
    est = load_estimator(run, device=str(dev))
    bb = make_backbone(cfg["backbone"], weights=cfg["weights"], layer=cfg["layer"],
                       stream=cfg["stream"], image_size=cfg["image_size"], device=str(dev))
    cache = get_features(bb, paths, dataset_tag=_dataset_tag(ds) + "-test", cache_dir=cache_dir,
                         device=str(dev))
    from brainattn.encoders.cache import Rows

    # rows of the read-only memory map, read as writable copies chunk by chunk
    pred = np.asarray(est.predict(Rows(cache.features, np.arange(len(paths)))), dtype=np.float32)
    return write_submission(pred, ds["hemisphere"].values, ds["hemi_vertex"].values, folder,
                            cfg["subject"], n_test_images=len(paths), overwrite=overwrite)


# --------------------------------------------------------------------------------------------
# banded ridge / variance partitioning


def pooled(X, pool: str, fit_idx, n_components: int, seed: int) -> np.ndarray:
    """Per-image features of one space: token mean (``mean``) or the flattened token grid
    projected on its first ``n_components`` principal components of the fitted images
    (``pca``), float32 (n_images, C)."""
    from brainattn.encoders.ridge import pool_tokens

    if pool not in ("mean", "pca"):
        raise ConfigError(f"--pool {pool!r}: expected 'mean' or 'pca'")
    from brainattn.encoders.cache import Rows

    Z = pool_tokens(Rows(X, np.arange(X.shape[0])), pool).numpy()  # writable copies of a memmap
    if pool == "mean":
        return Z
    from sklearn.decomposition import PCA

    k = int(min(n_components, len(fit_idx) - 1, Z.shape[1]))
    pca = PCA(k, svd_solver="randomized", random_state=int(seed)).fit(Z[fit_idx])
    return pca.transform(Z).astype(np.float32)


def partition_run(data, out, *, subject: str = "subj01", backbones=("gabor",), layers=(-1,),
                  weights=None, stream: str = "block", image_size=None, pool: str = "mean",
                  n_components: int = 64, test_fraction: float = 0.1, seed: int = 0,
                  n_iter: int = 30, device: str = "auto", cache_dir=None, permutations: int = 1000,
                  bootstrap: int = 1000, fdr: float = 0.05, overwrite: bool = False,
                  log=print) -> Path:
    """Banded ridge over the feature spaces ``backbones x layers`` (one backbone pass per
    backbone), variance partitioning, and the joint model's held-out scores."""
    from brainattn.analyses.partition import MAX_SPACES, variance_partition
    from brainattn.data.rois import vertex_coords
    from brainattn.encoders._base import split_images
    from brainattn.encoders.run import (
        layer_features_for,
        open_dataset,
        resolve_config,
        score_predictions,
    )
    from brainattn.io import atomic_write_json, check_output_dir, save_netcdf

    out = Path(out)
    check_output_dir(out, overwrite=overwrite)
    spaces_of = [(b, int(x)) for b in backbones for x in layers]
    if len(spaces_of) < 2:
        raise ConfigError("partition: give at least 2 feature spaces (--layer a,b or --backbone "
                          "a,b)")
    if len(spaces_of) > MAX_SPACES:
        raise ConfigError(f"partition: {len(spaces_of)} feature spaces; at most {MAX_SPACES} "
                          f"({2 ** MAX_SPACES - 1} fits)")
    ds = open_dataset(data, subject)
    betas = np.asarray(ds["betas"].values, dtype=np.float32)
    fit_idx, test_idx = split_images(betas.shape[0], test_fraction, seed)
    spaces = {}
    t0 = time.perf_counter()
    for b in backbones:
        cfg = resolve_config(subject=subject, backbone=b, weights=weights, stream=stream,
                             image_size=image_size, layer=int(layers[0]), device=device,
                             model="ridge", seed=seed)
        caches = layer_features_for(ds, cfg, [int(x) for x in layers], cache_dir=cache_dir)
        for x, c in zip(layers, caches.values(), strict=True):
            name = f"{b}:{x}" if len(backbones) > 1 else f"layer{x}"
            spaces[name] = pooled(c.features, pool, fit_idx, n_components, seed)
    log(f"{len(spaces)} feature spaces ({', '.join(f'{k} {v.shape[1]}' for k, v in spaces.items())}"
        f" features, pool {pool}) in {time.perf_counter() - t0:.1f} s")
    t0 = time.perf_counter()
    part = variance_partition(spaces, betas, fit_idx, test_idx, n_iter=n_iter, seed=seed,
                              device=device, vertex_coords=vertex_coords(ds))
    log(f"banded ridge on {2 ** len(spaces) - 1} subsets of the spaces: "
        f"{time.perf_counter() - t0:.1f} s")
    pred = part["prediction"].values
    part = part.drop_vars(["prediction", "test_image"])  # kept in scores.nc's metrics, not as a 2-D array
    cfg = {**resolve_config(subject=subject, model="ridge", seed=seed, device=device,
                            permutations=permutations, bootstrap=bootstrap, fdr=fdr),
           "model": "banded-ridge", "backbone": ",".join(backbones)}
    scores = score_predictions(pred, betas[test_idx], ds, cfg, n_test_images=len(test_idx),
                               spaces=list(spaces))
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "config.json", {
        "model": "banded-ridge", "data": None if not isinstance(data, (str, Path)) else
        str(Path(data).resolve()), "subject": subject, "backbone": ",".join(backbones),
        "layers": [int(x) for x in layers], "spaces": list(spaces), "pool": pool,
        "n_components": n_components, "test_fraction": test_fraction, "seed": seed,
        "n_iter": n_iter})
    save_netcdf(part, out / "partition.nc", seed=seed, subject=subject)
    save_netcdf(scores, out / "scores.nc", seed=seed)
    log(partition_table(part))
    return out


def partition_table(part) -> str:
    """Median of each variance part over each ROI's vertices (rows: ROIs)."""
    from brainattn.data.rois import roi_labels

    parts = [str(p) for p in part["part"].values]
    lines = ["variance partitioning (median held-out R^2 per ROI)",
             f"{'ROI':28s} " + " ".join(f"{p:>16s}" for p in parts)]
    for fam, labels in roi_labels(part).items():
        for name in dict.fromkeys(labels.tolist()):
            if name == "Unknown":
                continue
            sel = labels == name
            vals = [np.nanmedian(part["partition"].values[k, sel]) for k in range(len(parts))]
            lines.append(f"{fam + '/' + name:28s} " + " ".join(f"{v:16.3f}" for v in vals))
    return "\n".join(lines)
