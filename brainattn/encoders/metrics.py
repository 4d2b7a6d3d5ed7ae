"""Per-vertex accuracy of an encoding model on held-out images.

Plain functions on arrays. Pearson r is computed column-wise in one vectorised float64 pass (on
the GPU when one is present, or where torch inputs already are); the noise-ceiling-normalised accuracy is the
Algonauts-2023 score: ``r < 0 -> 0``, then ``100 * r**2 / NC`` with NC as a fraction of
variance (NSD ships it in percent, so ``100 * r**2 / (NC% / 100)``), capped at 100.

Vertices whose r is undefined are never silently scored as zero: their r is NaN and
:func:`vertex_status` says why (``constant_target``, ``constant_prediction``, ``nonfinite``).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from brainattn.errors import ShapeError

STATUS_OK = "ok"
STATUS_CONSTANT_TARGET = "constant_target"
STATUS_CONSTANT_PREDICTION = "constant_prediction"
STATUS_NONFINITE = "nonfinite"

#: names of the ``metric`` coordinate of ``scores.nc``
METRICS = ("pearson_r", "r2", "noise_normalized")


def _as_2d(name: str, a):
    if hasattr(a, "detach"):
        if a.ndim != 2:
            raise ShapeError(f"{name}: expected a 2-D array (n_images, n_vertices), got shape "
                             f"{tuple(a.shape)}")
        return a
    a = np.asarray(a)
    if a.ndim != 2:
        raise ShapeError(f"{name}: expected a 2-D array (n_images, n_vertices), got shape {a.shape}")
    return a


def _pearson_torch(p, t):
    """Column-wise r of two float tensors (n, v) in float64 on their device; NaN where a column
    is constant or holds NaN/Inf."""
    import torch

    p, t = p.double(), t.double()
    finite = torch.isfinite(p).all(0) & torch.isfinite(t).all(0)
    # exactly constant columns: centring in float64 leaves rounding noise that would give an
    # arbitrary r, so they are found by max == min
    const = (p.amax(0) == p.amin(0)) | (t.amax(0) == t.amin(0))
    p = p - p.mean(0)
    t = t - t.mean(0)
    r = (p * t).sum(0) / torch.sqrt((p * p).sum(0) * (t * t).sum(0))
    r = torch.where(finite & ~const, r, torch.full_like(r, float("nan")))
    return r.clamp(-1.0, 1.0)


def pearson_per_column(pred, true, *, device: str = "auto", batch: int = 65536):
    """Pearson r between matching columns of ``pred`` and ``true``: the one implementation of
    r in brainattn (training's validation score, ``scores.nc``, estimators' ``score``).

    Parameters
    ----------
    pred, true : array (n_images, n_vertices), NumPy or torch
        Predicted and measured responses (any units; r is scale-free).
    device : for NumPy input, where to compute: "auto" puts it on CUDA when present, else the
        CPU; torch tensors are scored on their own device (``pred``'s), with no host copy.
    batch : vertices per chunk (memory knob).

    Returns
    -------
    r : float64, (n_vertices,): a NumPy array for NumPy input, a tensor on the input's device
        for torch input. NaN where a column is constant or holds NaN/Inf (see
        :func:`vertex_status`); computed in float64 with two-pass centring.
    """
    import torch

    pred = _as_2d("pred", pred)
    true = _as_2d("true", true)
    if tuple(pred.shape) != tuple(true.shape):
        raise ShapeError(
            f"pred has shape {tuple(pred.shape)} but true has {tuple(true.shape)}; expected the same "
            "(n_images, n_vertices)"
        )
    n, v = pred.shape
    if n < 2:
        raise ShapeError(f"pearson r needs at least 2 images, got {n}")
    if torch.is_tensor(pred) or torch.is_tensor(true):
        dev = pred.device if torch.is_tensor(pred) else true.device
        p_all = torch.as_tensor(pred, device=dev)
        t_all = torch.as_tensor(true, device=dev)
        return torch.cat([_pearson_torch(p_all[:, s : s + batch], t_all[:, s : s + batch])
                          for s in range(0, v, batch)]) if v else torch.zeros(0, dtype=torch.float64)
    from brainattn.utils import resolve_device

    dev = resolve_device(device)
    out = np.empty(v, dtype=np.float64)
    for s in range(0, v, batch):
        e = min(v, s + batch)
        p = torch.as_tensor(np.asarray(pred[:, s:e]), device=dev)
        t = torch.as_tensor(np.asarray(true[:, s:e]), device=dev)
        out[s:e] = _pearson_torch(p, t).cpu().numpy()
    return out


def _column_flags(a) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a.detach().float().cpu() if hasattr(a, "detach") else a)
    finite = np.isfinite(a).all(0)
    with np.errstate(invalid="ignore"):
        const = np.nanmax(a, 0) == np.nanmin(a, 0) if a.shape[0] else np.ones(a.shape[1], bool)
    return ~finite, const


def vertex_status(pred, true) -> np.ndarray:
    """Why a vertex's r is (un)defined: str array (n_vertices,) of ``ok``, ``nonfinite``
    (NaN/Inf in target or prediction), ``constant_target``, ``constant_prediction``."""
    nf_t, c_t = _column_flags(true)
    nf_p, c_p = _column_flags(pred)
    status = np.full(nf_t.shape, STATUS_OK, dtype=object)
    status[c_p] = STATUS_CONSTANT_PREDICTION
    status[c_t] = STATUS_CONSTANT_TARGET
    status[nf_t | nf_p] = STATUS_NONFINITE
    return status.astype(str)


def noise_normalized(r, noise_ceiling) -> np.ndarray:
    """Algonauts score per vertex, percent of the explainable variance explained:
    ``100 * max(r, 0)**2 / (NC / 100)``, capped at 100.

    ``noise_ceiling`` NC is in percent of variance (0-100, as NSD ships it), so r**2 = NC/100
    scores 100. Where r is NaN or the noise ceiling is NaN or <= 0 the result is NaN.
    """
    r = np.asarray(r, dtype=np.float64)
    nc = np.asarray(noise_ceiling, dtype=np.float64)
    if r.shape != nc.shape:
        raise ShapeError(f"r has shape {r.shape} but noise_ceiling has {nc.shape}; expected equal")
    with np.errstate(invalid="ignore", divide="ignore"):
        s = 100.0 * np.clip(r, 0.0, None) ** 2 / (nc / 100.0)
    s = np.minimum(s, 100.0)
    s[~(nc > 0)] = np.nan
    s[np.isnan(r)] = np.nan
    return s


def roi_medians(values, labels, *, unknown: str = "Unknown") -> dict[str, tuple[float, int]]:
    """Median of ``values`` (n_vertices,) per ROI label, ignoring NaN.

    Returns ``{roi: (median, n_valid_vertices)}`` in first-seen order; ``unknown`` is skipped.
    An ROI whose vertices are all NaN gets median NaN and count 0.
    """
    values = np.asarray(values, dtype=np.float64)
    labels = np.asarray(labels).astype(str)
    if values.shape != labels.shape:
        raise ShapeError(f"values {values.shape} and labels {labels.shape} must have the same shape")
    out: dict[str, tuple[float, int]] = {}
    for name in dict.fromkeys(labels.tolist()):
        if name == unknown:
            continue
        sel = values[labels == name]
        ok = sel[~np.isnan(sel)]
        out[name] = (float(np.median(ok)) if ok.size else float("nan"), int(ok.size))
    return out


def score_table(
    pred,
    true,
    *,
    noise_ceiling=None,
    vertex_coords: Mapping[str, np.ndarray] | None = None,
    roi_families: list[str] | None = None,
    device: str = "auto",
    attrs: Mapping | None = None,
):
    """All metrics of ``scores.nc`` as an ``xarray.Dataset`` (see :mod:`brainattn.encoders`).

    ``vertex_coords`` are copied as coordinates on ``vertex`` (``hemisphere``, ``hemi_vertex``,
    ``roi_<family>``...). ROI medians are computed for every ``roi_<family>`` coordinate listed in
    ``roi_families`` (default: all present).
    """
    import xarray as xr

    r = pearson_per_column(pred, true, device=device)
    status = vertex_status(pred, true)
    v = r.shape[0]
    nc = None if noise_ceiling is None else np.asarray(noise_ceiling, dtype=np.float64)
    nn = noise_normalized(r, nc) if nc is not None else np.full(v, np.nan)
    table = np.stack([r, r**2, nn], axis=1)
    coords = {"vertex": np.arange(v), "metric": list(METRICS)}
    for k, c in (vertex_coords or {}).items():
        c = np.asarray(c)
        if c.shape != (v,):
            raise ShapeError(f"vertex coordinate {k!r} has shape {c.shape}; expected ({v},)")
        coords[k] = ("vertex", c.astype(str) if c.dtype.kind in "OUS" else c)
    data = {
        "score": (("vertex", "metric"), table, {"long_name": "per-vertex accuracy on held-out images",
                                              "units": "pearson_r: 1, r2: 1, noise_normalized: %"}),
        "status": (("vertex",), status.astype(str), {"long_name": "why a vertex's r is NaN"}),
    }
    if nc is not None:
        data["noise_ceiling"] = (("vertex",), nc, {"units": "%"})
    ds = xr.Dataset(data, coords=coords)
    from brainattn.data.rois import roi_families as families_of
    from brainattn.data.rois import roi_labels

    have = families_of(ds)
    fams = have if roi_families is None else [f for f in roi_families if f in have]
    rows, fam_of, name_of, count = [], [], [], []
    for fam, labels in roi_labels(ds, fams).items():
        meds = {m: roi_medians(table[:, i], labels) for i, m in enumerate(METRICS)}
        for roi in meds[METRICS[0]]:
            rows.append([meds[m][roi][0] for m in METRICS])
            fam_of.append(fam)
            name_of.append(roi)
            count.append(meds[METRICS[0]][roi][1])
    ds["roi_median"] = (
        ("roi", "metric"),
        np.asarray(rows, dtype=np.float64).reshape(len(rows), len(METRICS)),
        {"long_name": "median over the ROI's valid vertices"},
    )
    ds = ds.assign_coords(
        roi=("roi", np.asarray([f"{f}/{n}" for f, n in zip(fam_of, name_of, strict=True)], dtype=str)),
        roi_family=("roi", np.asarray(fam_of, dtype=str)),
        roi_name=("roi", np.asarray(name_of, dtype=str)),
        roi_n_vertices=("roi", np.asarray(count, dtype=np.int64)),
    )
    ds.attrs.update(
        {
            "n_images": int(np.asarray(true.shape)[0]),
            "mean_r": float(np.nanmean(r)) if np.isfinite(r).any() else float("nan"),
            "median_r": float(np.nanmedian(r)) if np.isfinite(r).any() else float("nan"),
            "n_undefined_vertices": int((status != STATUS_OK).sum()),
        }
    )
    ds.attrs.update(dict(attrs or {}))
    return ds
