"""The perceptualized-classifier experiment: one config in, the figure's data out.

:func:`validate_config` (the checks live in :mod:`brainattn.theory._config`; this adds the
data set's class sizes), :func:`run_R` (every repetition at one ``R``: train the agents,
perceive, classify), :func:`simulate` (all ``R``, paired statistics, the result Dataset) and
:func:`summary` (one table row per ``R``).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from brainattn.theory._config import check_semiotics_data, validate_semiotics
from brainattn.theory.semiotics.data import load_dataset, restricted_split, train_pool
from brainattn.theory.semiotics.loops import (
    AugmentParams,
    rms,
    stochastic_loop,
    two_agent_loop,
    vanilla_loop,
)
from brainattn.theory.semiotics.networks import build_autoencoder
from brainattn.theory.semiotics.stats import paired_comparison
from brainattn.theory.semiotics.training import train_autoencoders, train_mlps

if TYPE_CHECKING:
    import pandas as pd

METHODS = ("baseline", "vanilla", "stochastic")
CONTRASTS = ("vanilla-baseline", "stochastic-baseline")


def validate_config(config: dict | None, *, check_data: bool = True) -> dict:
    """Return a complete config (missing keys from ``QUICK``) or raise ``ConfigError``.

    Unknown keys and impossible values (non-positive steps, ``decay <= 1``, ...) raise with a
    message naming the key (:func:`brainattn.theory._config.validate_semiotics`).
    ``check_data`` also loads the data set to compare ``R`` with the class sizes.
    """
    cfg = validate_semiotics(config)
    if check_data:
        _, labels = train_pool(cfg)
        check_semiotics_data(cfg, int(np.bincount(labels).min()))
    return cfg


def _to_tensor(a: np.ndarray, device) -> torch.Tensor:
    return torch.as_tensor(a, dtype=torch.float32, device=device).unsqueeze(1)


def _stratified_subset(labels: np.ndarray, idx: np.ndarray, n: int, rng) -> np.ndarray:
    """``n // n_classes`` random indices of each class among ``idx`` (fewer if a class is short)."""
    classes = np.unique(labels[idx])
    per = max(1, n // len(classes))
    pick = []
    for c in classes:
        cand = idx[labels[idx] == c]
        pick.append(rng.choice(cand, size=min(per, len(cand)), replace=False))
    return np.sort(np.concatenate(pick))


def _one_example_per_class(y: np.ndarray, n_classes: int = 10) -> np.ndarray:
    """Index of the first image of each class (-1 where a class is absent)."""
    return np.array([int(np.flatnonzero(y == c)[0]) if np.any(y == c) else -1
                     for c in range(n_classes)])


def _draw(cfg: dict, data: dict, R: int, seed: int) -> dict[str, np.ndarray]:
    """Indices of one repetition: agent A's training set, agent B's, the test images.

    Digits: A's and (with ``agents``) B's training images are drawn first, disjoint; the test
    images come from the rest (seen by neither agent). MNIST: the test images come from the
    test split. ``n_test`` caps the test images (stratified: ``n_test // 10`` per class).
    """
    rng = np.random.default_rng([seed, R])
    y_all = data["y"]
    tr, rest = restricted_split(y_all, R, rng)
    tr_b = None
    if cfg["agents"]:
        tr_b, rest = restricted_split(y_all, R, rng, exclude=tr)
    y_te_pool = data["y_test"] if "y_test" in data else y_all
    te = np.arange(len(y_te_pool)) if "y_test" in data else rest
    if cfg["n_test"] is not None and len(te) > cfg["n_test"]:
        te = _stratified_subset(y_te_pool, te, cfg["n_test"], rng)
    return {"tr": tr, "tr_b": tr_b, "te": te}


def _clock(device: torch.device) -> float:
    # CUDA runs ahead of the host: wait for it, so that a phase's time is its own
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def run_R(cfg: dict, data: dict, R: int, seeds: Sequence[int], device: torch.device,
          timing: dict[str, float] | None = None) -> list[dict]:
    """All repetitions at one ``R``: train the agents, perceive, classify; numbers per seed.

    ``timing``, if given, gets the seconds of each phase added to its keys ``train``
    (autoencoders), ``vanilla`` (the vanilla and two-agent loops and the per-seed numbers),
    ``stochastic`` (the stochastic loop), ``mlp`` (classifiers), summed over seeds.

    The autoencoders of all repetitions (agents A and B) are trained together, and so are the
    MLPs (see :func:`fit_stacked`: the same optimisation as one at a time). Model seeds:
    agent A ``1000*seed + R``, agent B ``1000*seed + R + 500``, MLP ``1000*seed + R + 7`` (the
    same MLP initialisation on raw, vanilla and stochastic images of a repetition).
    """
    x_all, y_all = data["x"], data["y"]
    x_te_pool = data.get("x_test", x_all)
    y_te_pool = data.get("y_test", y_all)
    size = x_all.shape[-1]
    draws = [_draw(cfg, data, R, s) for s in seeds]

    agents_a = [build_autoencoder(size, cfg["channels"], seed=1000 * s + R, device=device)
                for s in seeds]
    agents = list(agents_a)
    x_fit = [x_all[d["tr"]] for d in draws]
    if cfg["agents"]:
        agents += [build_autoencoder(size, cfg["channels"], seed=1000 * s + R + 500, device=device)
                   for s in seeds]
        x_fit += [x_all[d["tr_b"]] for d in draws]
    x_fit_t = torch.as_tensor(np.stack(x_fit), dtype=torch.float32, device=device)[:, :, None]
    spent = dict.fromkeys(("train", "vanilla", "stochastic", "mlp"), 0.0)
    t0 = _clock(device)
    bf16 = bool(cfg["cuda_bf16"]) and device.type == "cuda"
    losses = train_autoencoders(agents, x_fit_t, steps=cfg["ae_steps"], lr=cfg["ae_lr"], bf16=bf16)

    t1 = _clock(device)
    spent["train"] += t1 - t0
    outs, mlp_x, mlp_test = [], [], []
    for i, (seed, d) in enumerate(zip(seeds, draws, strict=True)):
        E, D = agents_a[i]
        x_tr = _to_tensor(x_all[d["tr"]], device)
        x_te = _to_tensor(x_te_pool[d["te"]], device)
        y_te = torch.as_tensor(y_te_pool[d["te"]], device=device)
        x_both = torch.cat([x_tr, x_te])
        n_tr = len(x_tr)
        van = vanilla_loop(E, D, x_both, cfg["vanilla_steps"], tol=cfg["tol"],
                           batch_size=cfg["batch_size"])
        t2 = _clock(device)
        spent["vanilla"] += t2 - t1
        gen = torch.Generator(device=device)
        gen.manual_seed(1000 * seed + R)
        sto = stochastic_loop(
            E, D, x_both, cfg["stochastic_steps"], n_copies=cfg["n_copies"], decay=cfg["decay"],
            params=AugmentParams.from_config(cfg), generator=gen, batch_size=cfg["batch_size"],
            bf16=bf16,
        )
        t1 = _clock(device)
        spent["stochastic"] += t1 - t2
        mlp_x += [x_tr, van.x[:n_tr], sto[:n_tr]]
        mlp_test.append((x_te, van.x[n_tr:], sto[n_tr:], y_te))
        n_conv = van.n_steps[n_tr:]
        out: dict[str, Any] = {
            "ae_loss": float(losses[-1, i]),
            "van_converged": float(van.converged[n_tr:].float().mean()),
            "van_steps": float(n_conv[n_conv > 0].float().mean()) if bool((n_conv > 0).any())
            else math.nan,
            "van_residual": float(van.residual[n_tr:].median()),
            "van_train_drift": float(rms(van.x[:n_tr] - x_tr).median()),
            "van_trace": van.trace.cpu().numpy(),
        }
        ex = _one_example_per_class(y_te.cpu().numpy())
        views = [x_te[:, 0], van.x[n_tr:, 0], sto[n_tr:, 0]]
        out["examples"] = np.stack([v[np.maximum(ex, 0)].cpu().numpy() for v in views])
        out["examples"][:, ex < 0] = np.nan
        nan = math.nan
        out.update(agents_converged=nan, agents_steps=nan, agents_residual=nan,
                   agents_disagreement=nan, agents_label_kept=nan)
        if cfg["agents"]:
            res, dis = two_agent_loop(agents_a[i], agents[len(seeds) + i], x_te, cfg["agent_steps"],
                                      tol=cfg["tol"], batch_size=cfg["batch_size"])
            ok = res.n_steps > 0
            out.update(
                agents_converged=res.converged_fraction,
                agents_steps=float(res.n_steps[ok].float().mean()) if bool(ok.any()) else nan,
                agents_residual=float(res.residual.median()),
                agents_disagreement=float(dis.median()),
                agents_final=res.x,
            )
        outs.append(out)

    y_fit = torch.as_tensor(np.stack([y_all[d["tr"]] for d in draws for _ in METHODS]),
                            device=device)
    models = train_mlps(
        torch.stack(mlp_x), y_fit, hidden=cfg["mlp_hidden"], steps=cfg["mlp_steps"],
        lr=cfg["mlp_lr"], weight_decay=cfg["mlp_weight_decay"],
        seeds=[1000 * s + R + 7 for s in seeds for _ in METHODS],
    )
    with torch.no_grad():
        for i, out in enumerate(outs):
            *views, y_te = mlp_test[i]
            out["accuracy"] = [
                float((models[3 * i + k](v).argmax(1) == y_te).double().mean())
                for k, v in enumerate(views)
            ]
            if "agents_final" in out:  # does the raw-image classifier still name the digit?
                final = out.pop("agents_final")
                out["agents_label_kept"] = float((models[3 * i](final).argmax(1) == y_te).double().mean())
    spent["mlp"] += _clock(device) - t1
    if timing is not None:
        for k, v in spent.items():
            timing[k] = timing.get(k, 0.0) + v
    return outs


def simulate(config: dict | None = None, *, device: str | torch.device | None = None):
    """Run the perceptualized-classifier experiment; return the figure's data as a Dataset.

    ``config``: keys of :data:`QUICK` (missing keys take QUICK's values). For each ``R`` and
    each of ``n_seeds`` repetitions: draw R training images per class, train the autoencoder
    (agent A) on them, perceive training and test images with the vanilla and the stochastic
    loop, train the same MLP on raw / vanilla / stochastic images and test it on the matching
    test images; with ``agents`` also train agent B on a disjoint restricted set and run the
    two-agent loop on the test images. Paired statistics over repetitions per R.

    Returns an ``xarray.Dataset`` with dims ``seed``, ``R``, ``perception`` (baseline = raw
    images, vanilla, stochastic), ``contrast`` (vanilla-baseline, stochastic-baseline),
    ``step``, and for the example images ``digit``/``row``/``col``. Accuracies are fractions in [0, 1]; residuals
    are RMS per pixel (pixels in [0, 1]).
    """
    from brainattn.utils import resolve_device

    cfg = validate_config(config)
    dev = resolve_device("auto" if device is None else device)
    threads = torch.get_num_threads()
    if dev.type == "cpu" and cfg["cpu_threads"] is not None:
        torch.set_num_threads(cfg["cpu_threads"])
    try:
        return _simulate(cfg, dev)
    finally:
        torch.set_num_threads(threads)


def _simulate(cfg: dict, dev: torch.device):
    import xarray as xr

    from brainattn.utils import progress

    data = load_dataset(cfg)
    Rs, seeds = cfg["R"], [cfg["seed"] + i for i in range(cfg["n_seeds"])]
    nS, nR = len(seeds), len(Rs)
    acc = np.full((nS, nR, len(METHODS)), np.nan)
    scal_names = ("ae_loss", "van_converged", "van_steps", "van_residual", "van_train_drift",
                  "agents_converged",
                  "agents_steps", "agents_residual", "agents_disagreement", "agents_label_kept")
    scal = {k: np.full((nS, nR), np.nan) for k in scal_names}
    trace = np.full((nS, nR, cfg["vanilla_steps"]), np.nan)
    size = data["x"].shape[-1]
    examples = np.zeros((nR, len(METHODS), 10, size, size), dtype=np.float32)
    timing: dict[str, float] = {}
    for j in progress(range(nR), desc="semiotics R", total=nR):
        for i, r in enumerate(run_R(cfg, data, Rs[j], seeds, dev, timing)):
            acc[i, j] = r["accuracy"]
            for k in scal_names:
                scal[k][i, j] = r[k]
            trace[i, j] = r["van_trace"]
            if i == 0:
                examples[j] = r["examples"]

    stat_names = ("mean_diff", "sd_diff", "ci_low", "ci_high", "t_stat", "t_pvalue", "w_stat", "w_pvalue")
    stats_arr = {k: np.full((nR, len(CONTRASTS)), np.nan) for k in stat_names}
    for j in range(nR):
        for c, name in enumerate(CONTRASTS):
            m = METHODS.index(name.split("-")[0])
            # the bootstrap seed follows R's value, not its place in the list: a run of one R
            # gives that R's row of a run of many
            res = paired_comparison(acc[:, j, m], acc[:, j, 0], n_boot=cfg["n_boot"], ci=cfg["ci"],
                                    seed=1000 * cfg["seed"] + int(Rs[j]))
            for k in stat_names:
                stats_arr[k][j, c] = res[k]
    diff = np.stack([acc[:, :, 1] - acc[:, :, 0], acc[:, :, 2] - acc[:, :, 0]], axis=-1)

    ds = xr.Dataset(
        {
            "accuracy": (("seed", "R", "perception"), acc, {"units": "fraction correct",
                                                        "long_name": "test accuracy of the MLP"}),
            "diff": (("seed", "R", "contrast"), diff, {"units": "fraction correct",
                                                        "long_name": "paired accuracy difference"}),
            **{k: (("R", "contrast"), v) for k, v in stats_arr.items()},
            "ae_loss": (("seed", "R"), scal["ae_loss"], {"units": "MSE per pixel"}),
            "vanilla_converged": (("seed", "R"), scal["van_converged"],
                                  {"long_name": "fraction of test images at an attractor"}),
            "vanilla_steps": (("seed", "R"), scal["van_steps"],
                              {"long_name": "mean steps to convergence (converged images)"}),
            "vanilla_residual": (("seed", "R"), scal["van_residual"],
                                 {"units": "RMS per pixel", "long_name": "median ||D(E(x*)) - x*||"}),
            "vanilla_train_drift": (("seed", "R"), scal["van_train_drift"],
                                    {"units": "RMS per pixel",
                                     "long_name": "median distance of a training image from its "
                                                  "attractor (0: training images are attractors)"}),
            "vanilla_trace": (("seed", "R", "step"), trace, {"units": "RMS per pixel",
                                                             "long_name": "mean step size"}),
            "agents_converged": (("seed", "R"), scal["agents_converged"]),
            "agents_steps": (("seed", "R"), scal["agents_steps"]),
            "agents_residual": (("seed", "R"), scal["agents_residual"], {"units": "RMS per pixel"}),
            "agents_disagreement": (("seed", "R"), scal["agents_disagreement"],
                                    {"units": "RMS per pixel",
                                     "long_name": "median RMS between A's and B's seen images"}),
            "agents_label_kept": (("seed", "R"), scal["agents_label_kept"],
                                  {"long_name": "baseline MLP still names the true digit"}),
            "examples": (("R", "perception", "digit", "row", "col"), examples,
                         {"long_name": "test images of repetition 0: raw, vanilla, stochastic"}),
        },
        coords={
            "seed": seeds, "R": Rs, "perception": list(METHODS), "contrast": list(CONTRASTS),
            "step": np.arange(1, cfg["vanilla_steps"] + 1),
            "digit": np.arange(10), "row": np.arange(size), "col": np.arange(size),
        },
        attrs={
            "simulation": "semiotics",
            "reference": "Kupeev & Nitzany, arXiv 2310.05212",
            "paper_claim": "stochastic-loop perceptualized MLP beats the raw baseline at few "
                           "images per class; the vanilla loop does not",
            "config": {k: (str(v) if isinstance(v, os.PathLike) else v) for k, v in cfg.items()},
            "phase_seconds": {k: round(v, 3) for k, v in timing.items()},
        },
    )
    return ds


def summary(ds) -> pd.DataFrame:
    """One row per R: mean accuracies, paired differences with intervals and p-values, loops.

    ``claim_reproduced`` is True where the stochastic-minus-baseline interval lies above 0
    and the vanilla-minus-baseline mean difference is not positive.
    """
    import pandas as pd

    rows = []
    for R in ds["R"].values:
        d = ds.sel(R=R)
        row = {"R": int(R), "n_seeds": int(d.sizes["seed"])}
        for m in METHODS:
            row[f"acc_{m}"] = float(d["accuracy"].sel(perception=m).mean())
        for c, short in zip(CONTRASTS, ("vanilla", "stochastic"), strict=True):
            e = d.sel(contrast=c)
            row[f"{short}_minus_base"] = float(e["mean_diff"])
            row[f"{short}_ci_low"] = float(e["ci_low"])
            row[f"{short}_ci_high"] = float(e["ci_high"])
            row[f"{short}_t_p"] = float(e["t_pvalue"])
            row[f"{short}_wilcoxon_p"] = float(e["w_pvalue"])
        row["vanilla_converged"] = float(d["vanilla_converged"].mean())
        row["vanilla_train_drift"] = float(d["vanilla_train_drift"].mean())
        row["agents_converged"] = float(d["agents_converged"].mean())
        row["agents_label_kept"] = float(d["agents_label_kept"].mean())
        row["claim_reproduced"] = bool(row["stochastic_ci_low"] > 0 and row["vanilla_minus_base"] <= 0)
        rows.append(row)
    return pd.DataFrame(rows)

