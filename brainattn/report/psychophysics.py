"""Psychophysics section: the measured perceptual scale vs the Fisher prediction, fit checks.

Reads the ``scale.nc`` that ``brainattn scale fit`` writes (layout documented in
:mod:`brainattn.psychophysics.result`): ``stimulus`` (level), ``scale`` / ``scale_normalized``
(level, stat) with ``stat`` in ``estimate, se, lower, upper``, ``predicted_scale`` (level, 0 -> 1),
``residual_sorted`` (rank) with ``envelope`` (rank, bound) (``bound`` = lower, median, upper),
``resp`` (trial) and ``S`` (trial, position); attrs ``runs_observed``, ``runs_p``,
``envelope_outside``, ``area_match``... A few other spellings (``estimate``/``lower``/``upper``
variables, ``S1..S4``, ``envelope_lower``/``envelope_upper``) are read too.

The scale is drawn by :func:`brainattn.psychophysics.plots.plot_scale` (the same function as
``scale.png``), normalised (``psi_1 = 0``, ``psi_p = 1``) with the prediction normalised the same
way.
"""

from __future__ import annotations

import numpy as np

from brainattn.psychophysics.plots import first_name, plot_scale, scale_arrays
from brainattn.report.discovery import Run
from brainattn.report.figures import Section, load_result, provenance_of, render

TEXT = (
    "Maximum likelihood difference scaling: the perceptual scale estimated from the trials "
    "(points, with bootstrap 95% intervals) against the scale predicted from the stimulus "
    "model's Fisher information (line), both normalised to run from 0 to 1. The fit checks "
    "compare the deviance residuals with their envelope from simulated data sets and report "
    "the runs test (too few or too many runs of same-sign residuals point to a misfit; both as "
    "R's binom.diagnostics); the design panel "
    "shows which level gaps the trials compared."
)


def runs_test(ds) -> dict:
    """Runs-test numbers from the attrs (``p``, ``observed``, ``expected``), NaN when absent."""
    out = {}
    for key, names in (("p", ("runs_p", "runs_test_p", "runs_pvalue", "runs_test_pvalue")),
                       ("observed", ("runs_observed", "runs", "n_runs")),
                       ("expected", ("runs_expected", "runs_mean"))):
        k = first_name(ds, names, where=ds.attrs)
        if k is None and any(n in ds.data_vars for n in names):
            k2 = first_name(ds, names)
            out[key] = float(np.asarray(ds[k2].values).ravel()[0])
        else:
            out[key] = float(ds.attrs[k]) if k is not None else float("nan")
    return out


def envelope_bounds(ds):
    """(lower, upper) of the simulated envelope of the sorted residuals, or None."""
    if "envelope" in ds.data_vars and "bound" in ds.coords:
        e = ds["envelope"]
        bd = [str(b) for b in ds["bound"].values]
        if "lower" in bd and "upper" in bd:
            return (e.sel(bound="lower").values.astype(float),
                    e.sel(bound="upper").values.astype(float))
    lo = first_name(ds, ("envelope_lower", "envelope_lo"))
    hi = first_name(ds, ("envelope_upper", "envelope_hi"))
    if lo and hi:
        return ds[lo].values.astype(float).ravel(), ds[hi].values.astype(float).ravel()
    return None


def trial_table(ds):
    """(resp (n,), stim (n, 3|4)) or None when the file holds no trials."""
    if "resp" not in ds.variables:
        return None
    resp = ds["resp"].values.astype(float)
    name = first_name(ds, ("S", "stim"))
    if name is not None and ds[name].ndim == 2:
        stim = np.asarray(ds[name].transpose(ds["resp"].dims[0], ...).values)
    else:
        cols = [c for c in ("S1", "S2", "S3", "S4") if c in ds.variables]
        if len(cols) < 3:
            return None
        stim = np.stack([ds[c].values for c in cols], axis=1)
    return resp, stim.astype(np.int64)


def plot_diagnostics(ds):
    """Residual envelope, runs test and design, side by side.

    The envelope's sorted residuals carry ``gid`` ``"envelope-residuals"``; the design heatmap
    ``"design-counts"``.
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(12, 3.6), layout="constrained")
    res = first_name(ds, ("residual_sorted", "deviance_residual", "residual", "residuals"))
    env = envelope_bounds(ds)
    if res is not None:
        r = np.sort(ds[res].values.astype(float).ravel())
        cdf = (np.arange(1, r.size + 1) - 0.5) / r.size
        if env is not None and len(env[0]) == r.size:
            ax1.fill_betweenx(cdf, np.sort(env[0]), np.sort(env[1]),
                              color="0.8", label="simulated 95% envelope")
        (ln,) = ax1.plot(r, cdf, color="C0", lw=1.5, label="observed")
        ln.set_gid("envelope-residuals")
        ax1.legend(fontsize=8, frameon=False, loc="upper left")
        ax1.set(xlabel="deviance residual", ylabel="cumulative proportion",
                title="residual envelope")
    else:
        ax1.text(0.5, 0.5, "no residuals in scale.nc", ha="center", va="center")
        ax1.set_axis_off()
    rt = runs_test(ds)
    ax2.set_axis_off()
    lines = ["runs test on the deviance residuals"]
    if np.isfinite(rt["observed"]):
        lines.append(f"runs observed: {rt['observed']:.0f}")
    if np.isfinite(rt["expected"]):
        lines.append(f"runs expected: {rt['expected']:.1f}")
    lines.append(f"p = {rt['p']:.3g}" if np.isfinite(rt["p"]) else "p: not in scale.nc")
    if np.isfinite(rt["p"]):
        lines.append("no evidence of misfit" if rt["p"] >= 0.05 else "misfit (p < 0.05)")
    if "envelope_outside" in ds.attrs:
        lines.append(f"residuals outside envelope: {100 * float(ds.attrs['envelope_outside']):.1f}%")
    for k in ("method", "link", "n_trials", "sigma_estimate", "loglik", "aic", "six_point_p",
              "area_match", "correlation"):
        if k in ds.attrs:
            v = ds.attrs[k]
            lines.append(f"{k}: {v:.4g}" if isinstance(v, (float, np.floating)) else f"{k}: {v}")
    ax2.text(0.02, 0.98, "\n".join(lines), va="top", ha="left", family="monospace", fontsize=9)
    ax2.set_title("goodness of fit")
    tt = trial_table(ds)
    if tt is not None:
        resp, stim = tt
        if stim.shape[1] == 3:
            g1, g2 = stim[:, 1] - stim[:, 0], stim[:, 2] - stim[:, 1]
            xl, yl = "gap S2\u2212S1 (levels)", "gap S3\u2212S2 (levels)"
        else:
            g1, g2 = stim[:, 1] - stim[:, 0], stim[:, 3] - stim[:, 2]
            xl, yl = "gap S2\u2212S1 (levels)", "gap S4\u2212S3 (levels)"
        m1, m2 = int(max(1, g1.max())), int(max(1, g2.max()))
        counts = np.zeros((m2 + 1, m1 + 1))
        np.add.at(counts, (g2, g1), 1)
        hm = ax3.imshow(counts, origin="lower", cmap="Blues", aspect="auto")
        hm.set_gid("design-counts")
        ax3.set_xlim(0.5, m1 + 0.5)  # a gap is at least one level
        ax3.set_ylim(0.5, m2 + 0.5)
        fig.colorbar(hm, ax=ax3, label="trials")
        ax3.set(xlabel=xl, ylabel=yl, title=f"design: {len(resp)} trials, "
                f"{int(np.max(stim))} levels")
    else:
        ax3.text(0.5, 0.5, "no trial table in scale.nc", ha="center", va="center")
        ax3.set_axis_off()
    sns.despine(fig=fig)
    return fig


def scale_table(ds):
    """The scale per level as a DataFrame (stimulus, estimate, lower, upper, predicted)."""
    import pandas as pd

    a = scale_arrays(ds)
    df = pd.DataFrame({"stimulus": a["stimulus"], "estimate": a["estimate"],
                       "lower": a["lower"], "upper": a["upper"]})
    if a["predicted"] is not None:
        df["predicted"] = a["predicted"]
    df.index = pd.RangeIndex(1, len(df) + 1, name="level")
    return df


def build_section(runs: list[Run], missing: list[str] | None = None, *, svg: bool = True) -> Section:
    """Draw every difference-scaling run into one section."""
    sec = Section("psychophysics", "Psychophysics", TEXT, missing=list(missing or []))
    many = len(runs) > 1
    for run in runs:
        sec.missing.extend(run.missing)
        if "scale.nc" not in run.files:
            continue
        ds = load_result(run.files["scale.nc"])
        sec.provenance.append(provenance_of(ds, run.files["scale.nc"]))
        tag = f"-{run.label}" if many else ""
        sec.figures.append(render(plot_scale(ds), f"psychophysics-scale{tag}",
                                  "Measured scale (one point per level, bootstrap 95% interval) "
                                  "and the Fisher-information prediction.", svg=svg))
        sec.figures.append(render(plot_diagnostics(ds), f"psychophysics-fit{tag}",
                                  "Goodness of fit: residual envelope, runs test, and the trial "
                                  "design (count of trials per pair of gaps).", svg=svg))
        sec.tables.append((f"Scale per level ({run.label})", scale_table(ds)))
        if "summary.txt" in run.files:
            txt = run.files["summary.txt"].read_text(encoding="utf-8", errors="replace")
            sec.tables.append((f"summary.txt ({run.label})", "<pre>" + _esc(txt) + "</pre>"))
    return sec


def _esc(s: str) -> str:
    import html

    return html.escape(s)
