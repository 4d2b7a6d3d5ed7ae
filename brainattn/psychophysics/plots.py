"""The MLDS scale figure: one function, drawn from the ``scale.nc`` Dataset.

:meth:`MLDSResult.plot <brainattn.psychophysics.result.MLDSResult.plot>` (and so ``scale.png``)
and the run report (:mod:`brainattn.report.psychophysics`) both call :func:`plot_scale`, so the
figure a user saves and the one in the report are the same drawing.
"""

from __future__ import annotations

import numpy as np

__all__ = ["plot_scale", "scale_arrays", "first_name"]


def first_name(ds, names, *, where=None):
    """The first of ``names`` present in ``ds``'s variables (or in ``where``), else None."""
    pool = ds.variables if where is None else where
    for n in names:
        if n in pool:
            return n
    return None


def scale_arrays(ds, *, normalized: bool = True) -> dict:
    """``stimulus``, ``estimate``, ``lower``, ``upper``, ``se`` (NaN when absent), ``predicted`` or None.

    Reads ``scale_normalized`` (``normalized=True``, falling back to ``scale``) or ``scale``
    (level, stat); separate ``estimate``/``lower``/``upper`` variables are read too.
    """
    n = ds.sizes.get("level")
    if n is None:
        raise ValueError("scale.nc has no 'level' dimension")
    stim = ds["stimulus"].values.astype(float) if "stimulus" in ds.variables else \
        (ds["level"].values.astype(float) if "level" in ds.variables else np.arange(1.0, n + 1))
    out = {"stimulus": stim}
    scale = None
    for name in (("scale_normalized", "scale") if normalized else ("scale", "scale_normalized")):
        if name in ds.data_vars:
            scale = ds[name]
            break
    stat_dim = None
    if scale is not None:
        stat_dim = next((d for d in scale.dims if d != "level"), None)
    for key in ("estimate", "lower", "upper", "se"):
        if stat_dim is not None and key in [str(s) for s in ds[stat_dim].values]:
            out[key] = scale.sel({stat_dim: key}).values.astype(float)
            continue
        name = first_name(ds, (key, f"scale_{key}", f"ci_{key}"))
        if key == "estimate" and name is None and scale is not None and scale.dims == ("level",):
            name = "scale"
        out[key] = ds[name].values.astype(float) if name else np.full(n, np.nan)
    p = first_name(ds, ("predicted_scale", "predicted", "prediction", "fisher_scale"))
    out["predicted"] = ds[p].values.astype(float) if p else None
    return out


def _normalise(v, ref):
    """``(v - ref[0]) / (ref[-1] - ref[0])``: psi_1 = 0, psi_p = 1."""
    lo, hi = ref[0], ref[-1]
    span = hi - lo if np.isfinite(hi - lo) and hi != lo else 1.0
    return (v - lo) / span


def plot_scale(ds, *, normalized: bool = True, ax=None):
    """Measured scale (points with interval bars, one per level) and the predicted scale (line).

    ``normalized`` draws ``psi_1 = 0, psi_p = 1`` (R's ``optim`` convention; the prediction is
    normalised the same way); otherwise the scale in its method's convention, the prediction
    mapped onto it (``psi_1 + pred (psi_p - psi_1)``).  Returns the Figure.  The estimate's
    points carry ``gid`` ``"scale-estimate"`` and the prediction's line ``"scale-predicted"``.
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

    a = scale_arrays(ds, normalized=normalized)
    x, est = a["stimulus"], a["estimate"]
    if ax is None:
        fig, ax = plt.subplots(figsize=(4.8, 3.8), layout="constrained")
    else:
        fig = ax.figure
    if normalized:
        y, lo, hi = _normalise(est, est), _normalise(a["lower"], est), _normalise(a["upper"], est)
    else:
        y, lo, hi = est, a["lower"], a["upper"]
    yerr = None
    if np.isfinite(lo).any():
        yerr = np.nan_to_num(np.vstack([np.clip(y - lo, 0, None), np.clip(hi - y, 0, None)]))
    interval = ds["scale"].attrs.get("interval", "bootstrap") if "scale" in ds.data_vars else "bootstrap"
    method = ds.attrs.get("method")
    label = "measured (MLDS" + (f" {method}" if method else "") + f", 95% {interval})"
    cont = ax.errorbar(x, y, yerr=yerr, fmt="o", color="C0", ms=5, capsize=3, label=label)
    cont[0].set_gid("scale-estimate")
    if a["predicted"] is not None:
        pred = _normalise(a["predicted"], a["predicted"])
        if not normalized:
            pred = est[0] + pred * (est[-1] - est[0])
        (ln,) = ax.plot(x, pred, color="C3", lw=2, label="Fisher prediction")
        ln.set_gid("scale-predicted")
    title = "measured scale"
    if a["predicted"] is not None:
        model = ds.attrs.get("prediction_model")
        title += " vs Fisher prediction" + (f"\n({model})" if model else "")
    ax.set(xlabel=str(ds["stimulus"].attrs.get("long_name", "stimulus")) if "stimulus" in ds else "level",
           ylabel="perceptual scale" + (" (normalised)" if normalized else ""))
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, frameon=False, loc="upper left")
    sns.despine(ax=ax)
    return fig
