"""Ensembles: the average prediction of several fitted runs, scored like one run.

Averaging models whose errors are partly independent (seeds, layers, backbones, model kinds)
raises held-out r; the ensemble is scored with the same :func:`brainattn.encoders.metrics.
score_table` as a run, so its ``scores.nc`` reads like any other.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from brainattn.errors import ConfigError, ShapeError


def average_predictions(preds: Sequence, weights: Sequence[float] | None = None) -> np.ndarray:
    """Weighted mean of predictions, float32 (n_images, n_vertices).

    Parameters
    ----------
    preds : two or more arrays of equal shape (n_images, n_vertices), the same images and
        vertices in the same order (one per run).
    weights : non-negative, one per prediction, not all zero (default: equal); normalised to
        sum to 1.
    """
    if len(preds) < 2:
        raise ConfigError(f"an ensemble needs at least 2 predictions, got {len(preds)}")
    shape = np.shape(preds[0])
    if len(shape) != 2:
        raise ShapeError(f"predictions: expected (n_images, n_vertices) arrays, got shape {shape}")
    for k, p in enumerate(preds):
        if np.shape(p) != shape:
            raise ShapeError(f"prediction {k} has shape {np.shape(p)} but prediction 0 has {shape}; "
                             "an ensemble averages the same images and vertices")
    w = np.ones(len(preds)) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (len(preds),) or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ConfigError(f"weights: expected {len(preds)} non-negative numbers, not all 0, got "
                          f"{np.asarray(weights).tolist()}")
    w = w / w.sum()
    out = np.zeros(shape, dtype=np.float64)
    for wk, p in zip(w, preds, strict=True):
        out += wk * np.asarray(p, dtype=np.float64)
    return out.astype(np.float32)


def ensemble_scores(preds: Sequence, true, *, weights: Sequence[float] | None = None,
                    members: Sequence[str] | None = None, noise_ceiling=None,
                    vertex_coords: Mapping[str, np.ndarray] | None = None, device: str = "auto",
                    attrs: Mapping | None = None, scorer: Callable | None = None):
    """``scores.nc`` of the averaged prediction (see :mod:`brainattn.encoders`), plus
    ``member_mean_r`` (member) the mean r of each member alone and attrs ``model="ensemble"``,
    ``members`` (names, default ``run0``...) and ``weights``.

    ``scorer(pred, true) -> Dataset`` replaces :func:`~brainattn.encoders.metrics.score_table`
    (then ``noise_ceiling``/``vertex_coords`` are its business): ``brainattn ensemble`` scores
    with the fit's own scorer, significance included.
    """
    from brainattn.encoders.metrics import pearson_per_column, score_table

    pred = average_predictions(preds, weights)
    names = [f"run{k}" for k in range(len(preds))] if members is None else [str(m) for m in members]
    if len(names) != len(preds):
        raise ConfigError(f"members: {len(names)} names for {len(preds)} predictions")
    w = np.ones(len(preds)) if weights is None else np.asarray(weights, dtype=np.float64)
    if scorer is None:
        ds = score_table(pred, true, noise_ceiling=noise_ceiling, vertex_coords=vertex_coords,
                         device=device)
    else:
        ds = scorer(pred, true)
    ds.attrs.update({"model": "ensemble", "members": names, "weights": (w / w.sum()).tolist(),
                     **dict(attrs or {})})
    member_r = [float(np.nanmean(pearson_per_column(p, true, device=device))) for p in preds]
    ds["member_mean_r"] = ("member", np.asarray(member_r),
                           {"long_name": "mean held-out r of each member alone"})
    return ds.assign_coords(member=("member", np.asarray(names, dtype=str)))
