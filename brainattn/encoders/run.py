"""Run folders: fit a model on a data set, evaluate it, predict new images.

A run folder (``--out DIR``) holds::

    config.json        every option of the fit (resume compares it key by key)
    model.safetensors  the fitted model (best epoch); model.json its class and build arguments
    scores.nc          per-vertex accuracy on the held-out test images (see brainattn.encoders)
    attention.nc       transformer only: attention of each ROI query on held-out images
    history.csv        one row per epoch (gradient-trained models)
    split.json         image indices of the train / val / test split
    fit.log            what happened, with times
    checkpoint/        per-epoch checkpoint + state.json (resume), best.safetensors

Files are written atomically; ``checkpoint/`` exists while a fit is unfinished.
"""

from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from brainattn.errors import BrainAttnError, ConfigError, DataError, OutputExistsError
from brainattn.io import (
    atomic_write_json,
    atomic_write_text,
    check_output_dir,
    read_json,
    save_netcdf,
)

MODELS = ("transformer", "ridge", "factorized")

#: ``--preset`` values: named sets of transformer options (explicit options win)
PRESETS = ("cpu",)

#: options of :func:`fit_run` and their defaults (also the keys of config.json)
DEFAULTS = {
    "model": "transformer", "subject": "subj01", "backbone": "gabor", "weights": None,
    "layer": -1, "stream": "block", "image_size": None, "queries": "rois", "roi_families": None,
    "preset": None, "epochs": None, "batch_size": None, "lr": None, "width": 768, "heads": 16,
    "ffn": 1024, "layers": 1, "dropout": 0.1, "prf_bias": False, "prf_lr": 5.0,
    "pool": "mean",
    "n_components": 256, "val_fraction": 0.1, "test_fraction": 0.1, "seed": 0, "device": "auto",
    "n_attention_images": 32, "patience": 5, "permutations": 1000, "bootstrap": 1000,
    "fdr": 0.05, "drop_nonfinite": False, "allow_empty_rois": False,
}


def _cpu_preset() -> dict:
    from brainattn.encoders.transformer import CPU_PRESET

    return dict(CPU_PRESET)


#: options of the demo's fits (``brainattn demo`` reads this): the transformer's CPU preset
#: (:data:`brainattn.encoders.transformer.CPU_PRESET`, ``brainattn fit --preset cpu``), which
#: meets the science targets on the synthetic cortex with all three models fitted in about 3
#: minutes on 2 cores (benchmarks/RESULTS.md, section encoders).
DEMO_OPTIONS = {"transformer": _cpu_preset()}


class _Log:
    def __init__(self, path: Path | None, echo=True):
        self.path = path
        self.echo = echo
        self.t0 = time.perf_counter()

    def __call__(self, msg: str) -> None:
        line = f"[{time.perf_counter() - self.t0:7.1f} s] {msg}"
        if self.echo:
            import sys

            print(line, file=sys.stderr)
        if self.path is not None:
            with open(self.path, "a") as fh:
                fh.write(line + "\n")


def open_dataset(data, subject: str, cfg: dict | None = None):
    """``data``: an ``xarray.Dataset`` (returned as is) or an Algonauts-layout folder, opened
    with the fit's ``drop_nonfinite`` and ``allow_empty_rois`` (``cfg``), so evaluate and
    predict see the vertices the fit saw."""
    import xarray as xr

    if isinstance(data, xr.Dataset):
        return data
    from brainattn.data import open_algonauts

    cfg = cfg or {}
    return open_algonauts(data, subject=subject, drop_nonfinite=bool(cfg.get("drop_nonfinite")),
                          allow_empty_rois=bool(cfg.get("allow_empty_rois")))


def resolve_config(**options) -> dict:
    """Every option of a fit: ``DEFAULTS``, then the ``preset``'s values, then ``options``
    (None = not given), then the model's defaults for epochs, batch size and LR."""
    cfg = dict(DEFAULTS)
    unknown = set(options) - set(cfg)
    if unknown:
        raise ConfigError(f"unknown options: {', '.join(sorted(unknown))}")
    preset = options.get("preset")
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"--preset {preset!r}: expected one of {', '.join(PRESETS)}")
        if options.get("model", cfg["model"]) == "transformer":
            cfg.update(_cpu_preset())
    cfg.update({k: v for k, v in options.items() if v is not None or k in ("weights",)})
    if cfg["model"] not in MODELS:
        raise ConfigError(f"--model {cfg['model']!r}: expected one of {', '.join(MODELS)}")
    for name in ("val_fraction", "test_fraction"):
        if not 0 < cfg[name] < 0.5:
            raise ConfigError(f"--{name.replace('_', '-')} {cfg[name]}: expected a number in "
                              "(0, 0.5)")
    for name, lo in (("permutations", 0), ("bootstrap", 1)):
        v = cfg[name]
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ConfigError(f"--{name} {v!r}: expected an integer >= {lo}")
    if not 0 < cfg["fdr"] < 1:
        raise ConfigError(f"--fdr {cfg['fdr']}: expected a false discovery rate in (0, 1)")
    if cfg["weights"] is not None:
        cfg["weights"] = str(Path(cfg["weights"]).resolve())
    if cfg["epochs"] is None:
        cfg["epochs"] = {"transformer": 15, "factorized": 30, "ridge": 0}[cfg["model"]]
    if cfg["batch_size"] is None:
        cfg["batch_size"] = {"transformer": 16, "factorized": 64, "ridge": 0}[cfg["model"]]
    if cfg["lr"] is None:
        cfg["lr"] = {"transformer": 5e-4, "factorized": 3e-3, "ridge": 0.0}[cfg["model"]]
    return cfg


def make_estimator(cfg: dict, ds=None, grid=None):
    """The estimator a run's options describe, as a user would build it: the data set's
    hemispheres and ROI labels (:func:`brainattn.data.roi_labels`) set the transformer's
    queries, ``grid`` the token grid."""
    from brainattn.data.rois import roi_labels
    from brainattn.encoders.factorized import SpatialFeatureEncoder
    from brainattn.encoders.ridge import RidgeEncoder
    from brainattn.encoders.transformer import TransformerBrainEncoder

    common = {"epochs": cfg["epochs"], "batch_size": cfg["batch_size"], "lr": cfg["lr"],
              "val_fraction": cfg["val_fraction"], "seed": cfg["seed"], "device": cfg["device"],
              "patience": cfg["patience"], "grid": None if grid is None else tuple(grid)}
    if cfg["model"] == "transformer":
        hemi = roi = None
        if ds is not None:
            hemi = ds["hemisphere"].values if "hemisphere" in ds.coords else None
            roi = roi_labels(ds)
        return TransformerBrainEncoder(queries=cfg["queries"], hemisphere=hemi, roi_labels=roi,
                                       roi_families=cfg["roi_families"], width=cfg["width"],
                                       heads=cfg["heads"], ffn=cfg["ffn"], layers=cfg["layers"],
                                       dropout=cfg["dropout"], prf_bias=cfg["prf_bias"],
                                       prf_lr=cfg["prf_lr"], **common)
    if cfg["model"] == "factorized":
        return SpatialFeatureEncoder(**common)
    return RidgeEncoder(pool=cfg["pool"], n_components=cfg["n_components"], seed=cfg["seed"],
                        device=cfg["device"])


def load_estimator(run: Path, device: str = "cpu"):
    from brainattn.encoders.factorized import SpatialFeatureEncoder
    from brainattn.encoders.ridge import RidgeEncoder
    from brainattn.encoders.transformer import TransformerBrainEncoder

    hint = damaged_run_hint(run)
    meta = read_json(run / "model.json", what="the model's class and build arguments", hint=hint)
    classes = {"TransformerBrainEncoder": TransformerBrainEncoder, "RidgeEncoder": RidgeEncoder,
               "SpatialFeatureEncoder": SpatialFeatureEncoder}
    if not isinstance(meta, dict) or meta.get("class") not in classes:
        raise DataError(f"{run / 'model.json'}: damaged (no known model class); {hint}")
    weights = run / "model.safetensors"
    if not weights.is_file():
        raise DataError(f"{weights}: missing (the fitted model's weights); {hint}")
    try:
        return classes[meta["class"]].load(run, device=device)
    except BrainAttnError:
        raise
    except Exception as exc:  # noqa: BLE001 - safetensors, torch and a bad model.json raise
        # many types for a damaged file; none of them is a bug in brainattn
        first = (str(exc).splitlines() or [""])[0][:200]
        raise DataError(f"{weights}: damaged, cannot be loaded with {run / 'model.json'} "
                        f"({type(exc).__name__}: {first}); {hint}") from exc


def damaged_run_hint(run: Path) -> str:
    """What to do about a run folder whose files are damaged."""
    if (Path(run) / "checkpoint" / "state.json").is_file():
        return (f"its checkpoint is intact: finish the fit with 'brainattn fit DATA --out {run} "
                "--resume' (the options in config.json)")
    return (f"refit it: 'brainattn fit DATA --out {run} --overwrite' with the options in "
            "config.json")


def features_for(ds, cfg: dict, *, cache_dir=None, log=None):
    """Backbone + feature cache for the data set's images (extracted once)."""
    from brainattn.encoders.backbones import make_backbone
    from brainattn.encoders.cache import get_features
    from brainattn.utils import resolve_device

    dev = resolve_device(cfg["device"])
    bb = make_backbone(cfg["backbone"], weights=cfg["weights"], layer=cfg["layer"],
                       stream=cfg["stream"], image_size=cfg["image_size"], device=str(dev))
    paths = [str(p) for p in ds["image_path"].values]
    ids = [str(i) for i in ds["image_id"].values] if "image_id" in ds.coords else None
    t0 = time.perf_counter()
    cache = get_features(bb, paths, image_ids=ids, dataset_tag=_dataset_tag(ds),
                         cache_dir=cache_dir, device=str(dev))
    if log:
        log(f"features {cache.features.shape} grid {cache.grid} from {cache.path} "
            f"({time.perf_counter() - t0:.1f} s)")
    return bb, cache


def _dataset_tag(ds) -> str:
    return f"{Path(str(ds.attrs.get('root', 'data'))).name}-{ds.attrs.get('subject', '')}"


def layer_features_for(ds, cfg: dict, layers, *, cache_dir=None) -> dict:
    """``{layer: FeatureCache}`` of several layers of ``cfg``'s backbone, the missing ones
    extracted in one pass (:func:`brainattn.encoders.cache.get_layer_features`) into the cache
    folders that :func:`features_for` reads for each layer."""
    from brainattn.encoders.backbones import make_backbone
    from brainattn.encoders.cache import get_layer_features
    from brainattn.utils import resolve_device

    dev = resolve_device(cfg["device"])
    bb = make_backbone(cfg["backbone"], weights=cfg["weights"], layer=cfg["layer"],
                       stream=cfg["stream"], image_size=cfg["image_size"], device=str(dev))
    ids = [str(i) for i in ds["image_id"].values] if "image_id" in ds.coords else None
    return get_layer_features(bb, layers, [str(p) for p in ds["image_path"].values],
                              image_ids=ids, dataset_tag=_dataset_tag(ds), cache_dir=cache_dir,
                              device=str(dev))


@dataclass
class PreparedRun:
    """Everything :func:`prepare_run` readied for one fit: the resolved options ``cfg``, the
    data set ``ds``, tokens ``X`` (memory map) with their ``grid``, ``betas`` (n_images,
    n_vertices), the images to fit on (``fit_idx``: train + validation) and the held-out
    ``test_idx``, the unfitted ``estimator``, the run folder ``out`` and its ``log``."""

    out: Path
    cfg: dict
    ds: object
    X: object
    grid: tuple
    betas: np.ndarray
    fit_idx: np.ndarray
    test_idx: np.ndarray
    estimator: object
    log: object
    resume: bool = False
    main: bool = True
    fit_seconds: float = float("nan")


def prepare_run(data, out, *, overwrite: bool = False, resume: bool = False, cache_dir=None,
                echo: bool = True, **options) -> PreparedRun:
    """Validate the options, open the data set, ready the run folder (``config.json``,
    ``fit.log``), extract or reuse the features, split off the test images and build the
    estimator (see :func:`fit_run`).

    Under torchrun (after :func:`brainattn.encoders.distributed.init_distributed`) every rank
    calls this: all validate, rank 0 extracts features and writes every file.
    """
    import xarray as xr

    from brainattn.data.rois import roi_labels
    from brainattn.encoders import distributed as D
    from brainattn.encoders._base import check_targets, split_images

    dist = D.current()
    main = dist is None or dist.is_main
    cfg = resolve_config(**options)
    if dist is not None and cfg["model"] != "ridge":
        D.check_batch_divisible(cfg["batch_size"], dist.world_size)
    cfg["data"] = None if isinstance(data, xr.Dataset) else str(Path(data).resolve())
    out = Path(out)
    if resume:
        cfg_p = out / "config.json"
        if not cfg_p.is_file():
            raise DataError(f"--resume: {out} holds no config.json (nothing to resume)")
        from brainattn.encoders.training import config_diff

        old = json.loads(cfg_p.read_text())
        diff = config_diff(old, cfg)
        if diff:
            raise ConfigError(f"--resume: {out} was fitted with different options (differ: "
                              f"{', '.join(diff)}); use the same options or a new --out folder")
    else:
        check_output_dir(out, overwrite=overwrite)
        if dist is not None:
            dist.barrier()  # every rank has checked the folder before rank 0 writes to it
        if out.is_dir() and overwrite and main:
            import shutil

            for child in out.iterdir():
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    ds = open_dataset(data, cfg["subject"], cfg)
    n_images = ds.sizes["image"]
    roi_labels(ds, cfg["roi_families"])  # a family the data set lacks: say so before any work
    betas = np.asarray(ds["betas"].values, dtype=np.float32)
    check_targets(betas, n_images)
    if main:
        out.mkdir(parents=True, exist_ok=True)
        if not resume:
            atomic_write_json(out / "config.json", cfg)
    log = _Log(out / "fit.log", echo=echo) if main else _Log(None, echo=False)
    log(f"fit {cfg['model']} on {ds.attrs.get('subject', cfg['subject'])}: {n_images} images x "
        f"{betas.shape[1]} vertices")
    if dist is not None and not main:
        dist.barrier()  # rank 0 fills the feature cache first
    _, cache = features_for(ds, cfg, cache_dir=cache_dir, log=log)
    if dist is not None and main:
        dist.barrier()
    X = cache.features
    if X.shape[0] != n_images:
        raise DataError(f"features hold {X.shape[0]} images, betas {n_images}; delete {cache.path}")
    fit_idx, test_idx = split_images(n_images, cfg["test_fraction"], cfg["seed"])
    est = make_estimator(cfg, ds, cache.grid)
    if cfg["model"] == "transformer":
        qa = est.query_assignment(betas.shape[1])
        log(f"{len(qa.names)} queries ({cfg['queries']})")
    return PreparedRun(out=out, cfg=cfg, ds=ds, X=X, grid=tuple(cache.grid), betas=betas,
                       fit_idx=fit_idx, test_idx=test_idx, estimator=est, log=log,
                       resume=resume, main=main)


def fit_prepared(run: PreparedRun, *, stop_after: int | None = None) -> bool:
    """Fit ``run.estimator`` on the train + validation images (the estimator splits off its
    validation set itself; transformer and factorized fits checkpoint every epoch into
    ``out/checkpoint``). Returns whether the fit finished (False: stopped, ``--resume``)."""
    from brainattn.encoders.cache import Rows

    X = Rows(run.X, run.fit_idx)
    Y = run.betas[run.fit_idx]
    est = run.estimator
    t0 = time.perf_counter()
    if run.cfg["model"] == "ridge":
        if not run.main:  # one closed-form fit; the other ranks have nothing to do
            return False
        est.fit(X, Y)
    else:
        est.fit(X, Y, ckpt_dir=run.out / "checkpoint", resume=run.resume, log=run.log,
                stop_after=stop_after)
        if not est.finished_:
            run.log("stopped before the last epoch; continue with --resume")
            return False
    run.fit_seconds = time.perf_counter() - t0
    run.log(f"fitted in {run.fit_seconds:.1f} s")
    return True


def write_run(run: PreparedRun) -> Path:
    """Write a fitted run's files (rank 0 only): model, ``split.json``, ``history.csv``,
    ``scores.nc`` (test images), ``attention.nc`` (transformer); remove the checkpoint."""
    import shutil

    est, cfg, out = run.estimator, run.cfg, run.out
    if not run.main:
        return out
    if hasattr(est, "train_idx_"):
        split = {"train": run.fit_idx[est.train_idx_], "val": run.fit_idx[est.val_idx_]}
    else:  # ridge: every fitted image trains (its CV folds pick the alphas)
        split = {"train": run.fit_idx, "val": np.zeros(0, np.int64)}
    atomic_write_json(out / "split.json", {**split, "test": run.test_idx})
    if getattr(est, "history_", None):
        _write_history(out / "history.csv", est.history_)
    est.save(out)
    scores = _scores(est, run.X, run.betas, run.test_idx, run.ds, cfg,
                     fit_seconds=run.fit_seconds)
    save_netcdf(scores, out / "scores.nc", seed=cfg["seed"])
    run.log(_summary(scores))
    if cfg["model"] == "transformer" and cfg["n_attention_images"] > 0:
        att = attention_dataset(est, run.X, run.test_idx[: cfg["n_attention_images"]], run.ds,
                                run.grid)
        save_netcdf(att, out / "attention.nc", seed=cfg["seed"])
    if (out / "checkpoint").is_dir():
        shutil.rmtree(out / "checkpoint")
    return out


def fit_run(data, out, *, resume: bool = False, stop_after: int | None = None, **kw) -> Path:
    """Fit one model on one subject and write the run folder ``out`` (see module docstring):
    :func:`prepare_run`, :func:`fit_prepared`, :func:`write_run`.

    A fresh fit that fails on bad input before its first checkpoint leaves no folder behind.
    """
    import shutil

    from brainattn.encoders import distributed as D
    from brainattn.errors import BrainAttnError

    out = Path(out)
    existed = out.exists()
    try:
        run = prepare_run(data, out, resume=resume, **kw)
        if fit_prepared(run, stop_after=stop_after):
            write_run(run)
        return out
    except BrainAttnError:
        dist = D.current()
        if (not resume and (dist is None or dist.is_main)
                and not (out / "checkpoint" / "state.json").is_file()
                and (out / "config.json").is_file()):
            if existed:
                for f in ("config.json", "fit.log", "split.json"):
                    (out / f).unlink(missing_ok=True)
            else:
                shutil.rmtree(out, ignore_errors=True)
        raise


def _write_history(path: Path, history: list[dict]) -> None:
    if not history:
        return
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(history[0]))
    w.writeheader()
    w.writerows(history)
    atomic_write_text(path, buf.getvalue())


def _scores(est, X, betas, test_idx, ds, cfg, **attrs):
    from brainattn.encoders.cache import Rows

    return score_predictions(est.predict(Rows(X, test_idx)), betas[test_idx], ds, cfg,
                             n_test_images=len(test_idx), **attrs)


def score_predictions(pred, true, ds, cfg, **attrs):
    """``scores.nc`` of held-out predictions: the metrics, the Algonauts challenge score
    (attrs ``challenge_score`` where the data set has a noise ceiling) and the significance
    (:func:`brainattn.analyses.significance.add_to_scores`, ``cfg``'s ``permutations``,
    ``bootstrap``, ``fdr``)."""
    from brainattn.analyses.significance import add_to_scores
    from brainattn.analyses.submission import challenge_score
    from brainattn.data.rois import vertex_coords
    from brainattn.encoders.metrics import score_table

    nc = ds["noise_ceiling"].values if "noise_ceiling" in ds else None
    scores = score_table(pred, true, noise_ceiling=nc, vertex_coords=vertex_coords(ds),
                         device=cfg["device"],
                         attrs={"model": cfg["model"], "subject": str(ds.attrs.get("subject", "")),
                                "backbone": cfg["backbone"], "split": "test", **attrs})
    if nc is not None:
        scores.attrs["challenge_score"] = challenge_score(
            scores["score"].sel(metric="pearson_r").values, nc)
    return add_to_scores(scores, pred, true, n_permutations=cfg.get("permutations", 1000),
                         n_bootstrap=cfg.get("bootstrap", 1000), alpha=cfg.get("fdr", 0.05),
                         seed=cfg["seed"], device=cfg["device"])


def _summary(scores) -> str:
    lines = [f"test mean r {scores.attrs['mean_r']:.4f}, median r {scores.attrs['median_r']:.4f}"]
    if "challenge_score" in scores.attrs:
        lines[0] += f", Algonauts challenge score {scores.attrs['challenge_score']:.2f}"
    if "significant" in scores:
        lines.append(f"significant vertices: {int(scores['significant'].sum())} of "
                     f"{scores.sizes['vertex']} (permutation test, {scores.attrs['n_permutations']} "
                     f"permutations, FDR q <= {scores.attrs['fdr_alpha']:g})")
    if scores.sizes.get("roi", 0):
        lines.append(f"{'ROI':28s} {'n':>6s} {'median r':>9s} {'median NC-norm %':>17s}")
        for i in range(scores.sizes["roi"]):
            r, _, nn = scores["roi_median"].values[i]
            lines.append(f"{str(scores['roi'].values[i]):28s} {int(scores['roi_n_vertices'].values[i]):6d} "
                         f"{r:9.3f} {nn:17.1f}")
    return "\n".join(lines)


def attention_dataset(est, X, idx, ds, grid):
    """``attention.nc``: ``attention`` (image, query, row, col), head-mean, last layer; per-vertex
    queries (``vertices``/``hybrid`` modes) are averaged over each ROI (``query`` = ROI then)."""
    import xarray as xr

    from brainattn.encoders.cache import Rows

    idx = np.asarray(idx)
    maps = est.attention_maps(Rows(X, idx))
    names = list(est.query_names_)
    keys = [n.split("#", 1)[0] for n in names]  # per-vertex queries: <hemi>:<roi>#<vertex>
    if len(set(keys)) < len(keys):
        keys = np.asarray(keys)
        uniq = list(dict.fromkeys(keys.tolist()))
        maps = np.stack([maps[:, keys == u].mean(1) for u in uniq], 1)
        names = uniq
    hemi = [n.split(":", 1)[0] for n in names]
    rois = [n.split(":", 1)[1] if ":" in n else n for n in names]
    coords = {"image": idx, "query": np.asarray(names, dtype=str),
              "query_hemisphere": ("query", np.asarray(hemi, dtype=str)),
              "query_roi": ("query", np.asarray(rois, dtype=str)),
              "row": np.arange(grid[0]), "col": np.arange(grid[1])}
    if "image_id" in ds.coords:
        coords["image_id"] = ("image", np.asarray(ds["image_id"].values[idx]).astype(str))
    return xr.Dataset(
        {"attention": (("image", "query", "row", "col"), maps.astype(np.float32),
                       {"long_name": "head-mean attention weight of the query on each token, "
                                     "last decoder layer (sums to 1 over row, col)"})},
        coords=coords, attrs={"grid_rows": grid[0], "grid_cols": grid[1],
                              "note": "row 0 is the top of the image; col 0 the left"})


def evaluate_run(run, *, data=None, cache_dir=None, device: str = "auto", echo=True):
    """Recompute ``scores.nc`` of a finished run on its test split; returns the Dataset."""
    run = Path(run)
    cfg_p = run / "config.json"
    if not cfg_p.is_file():
        raise DataError(f"{run}: no config.json; expected a run folder written by brainattn fit")
    cfg = read_json(cfg_p, what="the fit's options", hint=damaged_run_hint(run))
    cfg["device"] = device
    if data is None and cfg.get("data") is None:
        raise DataError(f"{run}: was fitted on an in-memory data set; pass the data set")
    ds = open_dataset(data if data is not None else cfg["data"], cfg["subject"], cfg)
    est = load_estimator(run, device="cpu" if device == "auto" else device)
    _, cache = features_for(ds, cfg, cache_dir=cache_dir)
    split = read_json(run / "split.json", what="the train/val/test image indices",
                      hint=damaged_run_hint(run))
    betas = np.asarray(ds["betas"].values, dtype=np.float32)
    scores = _scores(est, cache.features, betas, np.asarray(split["test"]), ds, cfg)
    save_netcdf(scores, run / "scores.nc", seed=cfg["seed"])
    if echo:
        print(_summary(scores))
    return scores


def predict_run(run, images, out=None, *, overwrite: bool = False, device: str = "auto"):
    """Predict betas for image files with a run's model -> ``predictions.nc``
    (``prediction`` (image, vertex), coords ``image_path``, ``image_id``)."""
    import xarray as xr

    from brainattn.encoders.backbones import make_backbone
    from brainattn.encoders.cache import extract_features

    run = Path(run)
    cfg_p = run / "config.json"
    if not cfg_p.is_file():
        raise DataError(f"{run}: no config.json; expected a run folder written by brainattn fit")
    if not images:
        raise ConfigError("predict: give at least one image file")
    for p in images:
        if not Path(p).is_file():
            raise DataError(f"image {p}: no such file")
    out = Path(out) if out is not None else run / "predictions.nc"
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out} exists; pass --overwrite or choose another --out")
    cfg = read_json(cfg_p, what="the fit's options", hint=damaged_run_hint(run))
    est = load_estimator(run, device="cpu" if device == "auto" else device)
    bb = make_backbone(cfg["backbone"], weights=cfg["weights"], layer=cfg["layer"],
                       stream=cfg["stream"], image_size=cfg["image_size"])
    X = extract_features(bb, [str(p) for p in images])
    pred = est.predict(X)
    ds = xr.Dataset({"prediction": (("image", "vertex"), pred, {"units": "same as the betas"})},
                    coords={"image_path": ("image", np.asarray([str(p) for p in images])),
                            "image_id": ("image", np.asarray([Path(p).stem for p in images]))})
    save_netcdf(ds, out, model=cfg["model"])
    return out
