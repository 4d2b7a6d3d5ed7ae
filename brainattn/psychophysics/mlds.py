"""Maximum likelihood difference scaling (MLDS): fits, bootstrap, diagnostics, results.

Same conventions as the R package MLDS (Knoblauch & Maloney) so results compare one-to-one:

``glm``
    binomial GLM without intercept on the difference design matrix, first level dropped:
    ``psi_1 = 0`` and ``sigma = 1`` (the scale is in units of the decision noise).
``optim``
    ``psi_1 = 0``, ``psi_p = 1``, ``sigma`` free, by direct maximum likelihood
    (``1 / sigma_optim`` equals ``psi_p`` of the glm fit).
``formula``
    a parametric scale ``psi(s) = f(s, *theta)`` (any callable; torch-differentiable callables
    get exact gradients, others finite differences) with ``sigma`` free, plus a
    likelihood-ratio test against the unconstrained fit.

Options: any statsmodels binomial link; a lapse rate ``lam`` (``P = lam/2 + (1 - lam) F``) or
lower/upper asymptotes, fixed, or a lapse rate fitted by profile likelihood; Firth / Jeffreys
bias reduction (``firth=True``); separation is detected by linear programming and reported,
never hidden behind huge numbers.  The parametric bootstrap draws every replicate from the
fitted probabilities and solves all of them together
(:func:`~brainattn.psychophysics.glm.solve_mlds_glm` for glm/optim, :func:`solve_formula_batch`
for formula, :func:`solve_firth_batch` for Firth fits); its first 1,000 replicates also give R's
``binom.diagnostics`` (residual envelope, runs test) and ``simu.6pt`` (six-point test).  With a
fitted lapse rate the replicates keep it fixed at its estimate.

Saved results (``scale.nc``, written by :meth:`MLDSResult.save` / ``brainattn scale fit``)
-----------------------------------------------------------------------------------------------
dims: ``level`` (1..p), ``stat`` (estimate, se, lower, upper), ``trial``, ``position``
(S1..S3|S4), ``rank`` (sorted residual rank), ``bound`` (lower, median, upper), ``replicate``.

==========================  =====================  ==============================================
variable                    dims                   meaning
==========================  =====================  ==============================================
``stimulus``                level                  stimulus value of each level (user units)
``scale``                   level, stat            scale in the method's convention; se and
                                                   95% interval (bootstrap percentile, else Wald)
``scale_normalized``        level, stat            the same scale divided by ``psi_p`` (0 -> 1)
``sigma``                   stat                   decision noise sd in the method's convention
``sigma_normalized``        stat                   sigma / (psi_p - psi_1) (R boot.mlds style)
``resp``                    trial                  responses after reordering (0/1)
``S``                       trial, position        level indices (1-based), canonical order
``swapped``                 trial                  True where the trial was reordered/flipped
``fitted``                  trial                  fitted probability of resp = 1
``deviance_residual``       trial                  signed deviance residuals
``residual_sorted``         rank                   observed residuals, sorted
``envelope``                rank, bound            bootstrap 2.5/50/97.5 % of sorted residuals
``bootstrap_scale``         replicate, level       bootstrap replicates of ``scale`` (if any)
``bootstrap_sigma``         replicate              bootstrap replicates of ``sigma`` (if any)
``predicted_scale``         level                  predicted (Fisher) scale, 0 -> 1 (if asked)
==========================  =====================  ==============================================

attrs: ``method``, ``link``, ``n_trials``, ``n_levels``, ``design`` (triad/quadruple),
``loglik``, ``aic``, ``deviance``, ``n_params``, ``sigma_estimate``, ``lapse``, ``lapse_fitted``,
``firth``, ``separated``, ``n_bootstrap``, ``n_bootstrap_failed``, ``runs_observed``,
``runs_p`` (fraction of simulated runs <= observed), ``envelope_outside`` (fraction of
observed sorted residuals outside the envelope), ``six_point_loglik``, ``six_point_p``,
``six_point_n``, formula fits add ``formula``, ``formula_params`` (json), ``lr_stat``,
``lr_df``, ``lr_p``; predictions add ``prediction_model``, ``area_match``, ``rmse``,
``correlation`` and their ``*_lower``/``*_upper`` bootstrap bounds.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from brainattn.errors import ConfigError, DataError
from brainattn.psychophysics.design import Trials, read_mlds_csv
from brainattn.psychophysics.glm import (
    LapseLink,
    _torch_mu,
    _torch_mu_deriv,
    binomial_loglik,
    detect_separation,
    get_link,
    link_name,
    mu_and_deriv,
    solve_firth,
    solve_mlds_glm,
)

__all__ = ["MLDS", "MLDSResult", "fit_mlds", "bootstrap_mlds", "six_point_sets", "solve_formula_batch",
           "solve_firth_batch",
           "deviance_residuals", "PARAMETRIC_SCALES"]

_METHODS = ("glm", "optim", "formula")
_STATS = ["estimate", "se", "lower", "upper"]


# --------------------------------------------------------------------------------------------
# parametric scales for the formula method (all work on numpy arrays and torch tensors)


def _power(s, gamma):
    smax = s.max()
    return (s / smax) ** gamma


def _log_scale(s, c):
    # psi = log(1 + s/c) (c > 0), a log scale with a soft origin
    return (s / c).log1p() if hasattr(s, "log1p") else np.log1p(s / c)


def _saturating(s, tau):
    return 1 - ((-s / tau).exp() if hasattr(s, "exp") else np.exp(-s / tau))


PARAMETRIC_SCALES: dict[str, tuple[Callable, tuple[str, ...], tuple[float, ...]]] = {
    "power": (_power, ("gamma",), (1.0,)),
    "log": (_log_scale, ("c",), (1.0,)),
    "saturating": (_saturating, ("tau",), (1.0,)),
}


# --------------------------------------------------------------------------------------------
# the result object


@dataclass
class MLDSResult:
    """A fitted difference scale; reads like a statsmodels result.

    Main attributes: ``scale`` (xarray ``level x stat``), ``sigma``, ``loglik``, ``aic``,
    ``deviance``, ``params``/``bse`` (free parameters), ``fitted`` (n_trials,) probabilities.
    """

    trials: Trials
    method: str
    link: object
    psi: np.ndarray
    psi_se: np.ndarray
    sigma: float
    sigma_se: float
    loglik: float
    n_params: int
    fitted: np.ndarray
    params: np.ndarray
    bse: np.ndarray
    param_names: list[str]
    lapse: float = 0.0
    lapse_se: float = float("nan")
    lapse_fitted: bool = False
    asymptotes: tuple = (0.0, 0.0)
    asymptotes_se: tuple = (float("nan"), float("nan"))
    firth: bool = False
    separated: bool = False
    separated_trials: np.ndarray = field(default_factory=lambda: np.array([], dtype=int))
    converged: bool = True
    formula: dict | None = None
    boot_psi: np.ndarray | None = None
    boot_sigma: np.ndarray | None = None
    n_boot_failed: int = 0
    alpha: float = 0.05
    cov_psi: np.ndarray | None = None
    diagnostics: dict | None = None
    six_point: dict | None = None
    prediction: dict | None = None

    # -- statsmodels-like numbers ---------------------------------------------------------
    @property
    def aic(self) -> float:
        """``-2 loglik + 2 k`` with ``k`` the number of free parameters (R's/statsmodels' AIC)."""
        return -2.0 * self.loglik + 2.0 * self.n_params

    @property
    def deviance(self) -> float:
        """Deviance of the 0/1 trials (``-2 loglik``; the saturated model has loglik 0)."""
        return -2.0 * self.loglik

    @property
    def n_levels(self) -> int:
        return self.trials.n_levels

    @property
    def stimulus(self) -> np.ndarray:
        return self.trials.stimulus

    @property
    def deviance_residuals(self) -> np.ndarray:
        return deviance_residuals(self.trials.resp, self.fitted)

    def _bounds(self, alpha: float | None = None):
        alpha = self.alpha if alpha is None else alpha
        if self.boot_psi is not None and len(self.boot_psi):
            lo = np.quantile(self.boot_psi, alpha / 2, axis=0)
            hi = np.quantile(self.boot_psi, 1 - alpha / 2, axis=0)
            slo = np.quantile(self.boot_sigma, alpha / 2)
            shi = np.quantile(self.boot_sigma, 1 - alpha / 2)
            se = self.boot_psi.std(axis=0, ddof=1)
            sse = float(self.boot_sigma.std(ddof=1))
            return se, lo, hi, sse, float(slo), float(shi)
        from scipy.stats import norm

        z = norm.ppf(1 - alpha / 2)
        return (self.psi_se, self.psi - z * self.psi_se, self.psi + z * self.psi_se, self.sigma_se,
                self.sigma - z * self.sigma_se, self.sigma + z * self.sigma_se)

    @property
    def interval_kind(self) -> str:
        return "bootstrap percentile" if self.boot_psi is not None else "Wald"

    @property
    def scale(self):
        """xarray DataArray ``(level, stat)``: estimate, se, lower, upper (95% by default)."""
        import xarray as xr

        se, lo, hi, *_ = self._bounds()
        data = np.stack([self.psi, se, lo, hi], axis=1)
        return xr.DataArray(
            data,
            dims=("level", "stat"),
            coords={"level": np.arange(1, self.n_levels + 1), "stat": _STATS,
                    "stimulus": ("level", self.stimulus)},
            name="scale",
            attrs={"method": self.method, "interval": self.interval_kind,
                   "coverage": 1 - self.alpha},
        )

    @property
    def scale_normalized(self):
        """The scale divided by ``psi_p`` (0 at the first level, 1 at the last)."""
        import xarray as xr

        top = self.psi[-1]
        if self.boot_psi is not None and len(self.boot_psi):
            bn = self.boot_psi / self.boot_psi[:, -1:]
            a = self.alpha
            se, lo, hi = bn.std(axis=0, ddof=1), np.quantile(bn, a / 2, 0), np.quantile(bn, 1 - a / 2, 0)
        else:
            from scipy.stats import norm

            # delta method for r = (psi - psi_1) / (psi_p - psi_1) with the scale's covariance
            D = top - self.psi[0]
            r = (self.psi - self.psi[0]) / D
            G = np.eye(self.n_levels) / D
            G[:, 0] += (r - 1.0) / D
            G[:, -1] -= r / D
            C = self.cov_psi if self.cov_psi is not None else np.diag(self.psi_se**2)
            se = np.sqrt(np.clip(np.einsum("ij,jk,ik->i", G, C, G), 0, None))
            z = norm.ppf(1 - self.alpha / 2)
            lo, hi = r - z * se, r + z * se
        data = np.stack([(self.psi - self.psi[0]) / (top - self.psi[0]), se, lo, hi], axis=1)
        return xr.DataArray(data, dims=("level", "stat"),
                            coords={"level": np.arange(1, self.n_levels + 1), "stat": _STATS,
                                    "stimulus": ("level", self.stimulus)},
                            name="scale_normalized")

    @property
    def sigma_normalized(self) -> np.ndarray:
        """sigma on the normalised scale (``psi_p - psi_1 = 1``): estimate, se, lower, upper.

        This is R's ``boot.mlds`` convention (replicates divided by their last scale value).
        """
        D = self.psi[-1] - self.psi[0]
        est = self.sigma / D
        if self.boot_psi is not None and len(self.boot_psi):
            b = self.boot_sigma / (self.boot_psi[:, -1] - self.boot_psi[:, 0])
            a = self.alpha
            return np.array([est, b.std(ddof=1), np.quantile(b, a / 2), np.quantile(b, 1 - a / 2)])
        from scipy.stats import norm

        se = self.psi_se[-1] / D**2 if self.method == "glm" else self.sigma_se / D
        z = norm.ppf(1 - self.alpha / 2)
        return np.array([est, se, est - z * se, est + z * se])

    def conf_int(self, alpha: float = 0.05):
        """DataFrame of (lower, upper) for every level's scale value and sigma."""
        import pandas as pd

        _, lo, hi, _, slo, shi = self._bounds(alpha)
        idx = [f"psi[{i + 1}]" for i in range(self.n_levels)] + ["sigma"]
        return pd.DataFrame({"lower": np.r_[lo, slo], "upper": np.r_[hi, shi]}, index=idx)

    # -- text and figures -----------------------------------------------------------------
    def summary(self) -> str:
        """A plain-text table like statsmodels' ``summary()``."""
        se, lo, hi, sse, slo, shi = self._bounds()
        t = self.trials
        lines = [
            "Maximum likelihood difference scaling",
            "=" * 72,
            f"method: {self.method:<14} link: {link_name(self.link):<22} design: {t.kind}s",
            f"trials: {t.n_trials:<14} levels: {t.n_levels:<22} reordered trials: {int(t.swapped.sum())}",
            f"log-likelihood: {self.loglik:<14.4f} AIC: {self.aic:<14.4f} deviance: {self.deviance:.4f}",
            f"free parameters: {self.n_params:<13} intervals: {self.interval_kind}, {100 * (1 - self.alpha):g}%",
        ]
        if self.lapse or self.lapse_fitted:
            how = "fitted" if self.lapse_fitted else "fixed"
            se_txt = f" (se {self.lapse_se:.4f})" if self.lapse_fitted and np.isfinite(self.lapse_se) else ""
            if self.lapse_fitted and np.isfinite(self.asymptotes_se[0]):
                se_txt = f" (se of the asymptotes {self.asymptotes_se[0]:.4f}, {self.asymptotes_se[1]:.4f})"
            lines.append(f"lapse rate: {self.lapse:.4f} {how}{se_txt}; asymptotes "
                         f"{self.asymptotes[0]:.4f} / {1 - self.asymptotes[1]:.4f}")
        if self.firth:
            lines.append("bias reduction: Jeffreys-prior penalised likelihood (Firth)")
        if self.separated:
            lines.append(f"WARNING: the data are separated ({len(self.separated_trials)} trials); "
                         "the maximum likelihood estimate does not exist")
        if self.boot_psi is not None:
            lines.append(f"bootstrap replicates: {len(self.boot_psi)} "
                         f"({self.n_boot_failed} separated/failed replicates dropped)")
        lines += ["-" * 72,
                  f"{'level':>5} {'stimulus':>12} {'estimate':>12} {'se':>10} {'lower':>10} {'upper':>10}"]
        for i in range(t.n_levels):
            lines.append(f"{i + 1:>5} {t.stimulus[i]:>12.5g} {self.psi[i]:>12.5f} {se[i]:>10.5f} "
                         f"{lo[i]:>10.5f} {hi[i]:>10.5f}")
        lines.append(f"{'sigma':>5} {'':>12} {self.sigma:>12.5f} {sse:>10.5f} {slo:>10.5f} {shi:>10.5f}")
        if self.method != "optim":
            sn = self.sigma_normalized
            lines.append(f"sigma on the normalised scale (psi_p - psi_1 = 1): {sn[0]:.5f} (se {sn[1]:.5f}, "
                         f"{sn[2]:.5f} to {sn[3]:.5f})")
        if self.formula is not None:
            f = self.formula
            lines += ["-" * 72, f"formula: {f['name']}"]
            for nm, v, s in zip(f["names"], f["params"], f["bse"], strict=True):
                lines.append(f"  {nm:<12} {v:>12.5f} (se {s:.5f})")
            lines.append(f"  LR test vs unconstrained: chi2 = {f['lr_stat']:.4f}, df = {f['lr_df']}, "
                         f"p = {f['lr_p']:.4g}")
        if self.diagnostics is not None:
            d = self.diagnostics
            lines += ["-" * 72, "goodness of fit (binom.diagnostics)",
                      f"  runs of residual signs: {d['runs_observed']}; P(simulated <= observed) = "
                      f"{d['runs_p']:.4f}",
                      f"  sorted residuals outside the 95% envelope: {100 * d['envelope_outside']:.1f}%"]
        if self.six_point is not None and self.six_point.get("n", 0) > 0:
            s = self.six_point
            lines.append(f"  six-point test: {s['n']} conditions, loglik {s['loglik']:.3f}, "
                         f"P(simulated <= observed) = {s['p']:.4f}")
        if self.prediction is not None:
            p = self.prediction
            lines += ["-" * 72, f"prediction: {p['model']}",
                      f"  area match {p['area_match']:.4f} [{p['area_match_lower']:.4f}, {p['area_match_upper']:.4f}]",
                      f"  RMSE {p['rmse']:.4f} [{p['rmse_lower']:.4f}, {p['rmse_upper']:.4f}]",
                      f"  correlation {p['correlation']:.4f} [{p['correlation_lower']:.4f}, "
                      f"{p['correlation_upper']:.4f}]"]
        lines.append("=" * 72)
        return "\n".join(lines)

    def __repr__(self) -> str:  # pragma: no cover - convenience
        return f"<MLDSResult method={self.method} levels={self.n_levels} loglik={self.loglik:.3f}>"

    def plot(self, ax=None, normalized: bool = False):
        """Scale with its interval against the stimulus (seaborn); returns the Figure."""
        import matplotlib.pyplot as plt
        import seaborn as sns

        da = self.scale_normalized if normalized else self.scale
        if ax is None:
            fig, ax = plt.subplots(figsize=(5, 4), dpi=100)
        else:
            fig = ax.figure
        x = self.stimulus
        est = da.sel(stat="estimate").values
        lo = da.sel(stat="lower").values
        hi = da.sel(stat="upper").values
        sns.lineplot(x=x, y=est, marker="o", ax=ax, label=f"MLDS ({self.method})")
        ax.fill_between(x, lo, hi, alpha=0.25, label=f"{100 * (1 - self.alpha):g}% {self.interval_kind}")
        if self.prediction is not None:
            pred = np.asarray(self.prediction["scale"])
            if not normalized:
                pred = self.psi[0] + pred * (self.psi[-1] - self.psi[0])
            sns.lineplot(x=x, y=pred, ax=ax, linestyle="--", color="k",
                         label=f"predicted ({self.prediction['model']})")
        ax.set_xlabel("stimulus")
        ax.set_ylabel("perceptual scale" + (" (normalised)" if normalized else ""))
        ax.legend(frameon=False)
        fig.tight_layout()
        return fig

    # -- saving ---------------------------------------------------------------------------
    def to_dataset(self):
        """Everything in one ``xarray.Dataset`` (variables documented in the module docstring)."""
        import xarray as xr

        t = self.trials
        se, lo, hi, sse, slo, shi = self._bounds()
        res = self.deviance_residuals
        ds = xr.Dataset(
            {
                "stimulus": ("level", t.stimulus),
                "scale": self.scale.drop_vars("stimulus"),
                "scale_normalized": self.scale_normalized.drop_vars("stimulus"),
                "sigma": ("stat", np.array([self.sigma, sse, slo, shi])),
                "sigma_normalized": ("stat", self.sigma_normalized),
                "resp": ("trial", t.resp.astype(np.int8)),
                "S": (("trial", "position"), t.stim.astype(np.int32)),
                "swapped": ("trial", t.swapped.astype(bool)),
                "fitted": ("trial", self.fitted),
                "deviance_residual": ("trial", res),
                "residual_sorted": ("rank", np.sort(res)),
            },
            coords={"level": np.arange(1, t.n_levels + 1), "stat": _STATS,
                    "position": [f"S{j + 1}" for j in range(t.stim.shape[1])],
                    "trial": np.arange(t.n_trials), "rank": np.arange(t.n_trials)},
        )
        ds["stimulus"].attrs["units"] = "user units"
        ds["scale"].attrs.update(interval=self.interval_kind, coverage=1 - self.alpha)
        attrs = {
            "method": self.method, "link": link_name(self.link), "design": t.kind,
            "n_trials": t.n_trials, "n_levels": t.n_levels, "loglik": self.loglik, "aic": self.aic,
            "deviance": self.deviance, "n_params": self.n_params, "sigma_estimate": self.sigma,
            "lapse": self.lapse, "lapse_fitted": self.lapse_fitted, "firth": self.firth,
            "lower_asymptote": self.asymptotes[0], "upper_asymptote": 1 - self.asymptotes[1],
            "separated": self.separated, "source": t.source,
            "n_bootstrap": 0 if self.boot_psi is None else len(self.boot_psi),
            "n_bootstrap_failed": self.n_boot_failed,
        }
        if self.boot_psi is not None:
            ds["bootstrap_scale"] = (("replicate", "level"), self.boot_psi)
            ds["bootstrap_sigma"] = ("replicate", self.boot_sigma)
        if self.diagnostics is not None:
            d = self.diagnostics
            ds["envelope"] = (("rank", "bound"), d["envelope"])
            ds = ds.assign_coords(bound=["lower", "median", "upper"])
            attrs.update(runs_observed=d["runs_observed"], runs_p=d["runs_p"],
                         envelope_outside=d["envelope_outside"])
        if self.six_point is not None:
            attrs.update(six_point_loglik=self.six_point["loglik"], six_point_p=self.six_point["p"],
                         six_point_n=self.six_point["n"])
        if self.formula is not None:
            f = self.formula
            attrs.update(formula=f["name"], lr_stat=f["lr_stat"], lr_df=f["lr_df"], lr_p=f["lr_p"],
                         formula_params=json.dumps(dict(zip(f["names"], map(float, f["params"]), strict=True))))
        if self.prediction is not None:
            p = self.prediction
            ds["predicted_scale"] = ("level", np.asarray(p["scale"], dtype=float))
            attrs["prediction_model"] = p["model"]
            for key in ("area_match", "rmse", "correlation"):
                for suf in ("", "_lower", "_upper"):
                    attrs[key + suf] = float(p[key + suf])
        ds.attrs.update(attrs)
        return ds

    def save(self, out_dir: str | os.PathLike, *, overwrite: bool = False, seed: int | None = None) -> Path:
        """Write ``scale.nc``, ``summary.txt`` and ``scale.png`` into ``out_dir`` (atomically)."""
        import matplotlib.pyplot as plt

        from brainattn.io import atomic_dir, save_netcdf

        ds = self.to_dataset()
        text = self.summary()
        fig = self.plot()
        try:
            with atomic_dir(out_dir, overwrite=overwrite) as tmp:
                save_netcdf(ds, tmp / "scale.nc", seed=seed)
                (tmp / "summary.txt").write_text(text + "\n", encoding="utf-8")
                fig.savefig(tmp / "scale.png", dpi=120)
        finally:
            plt.close(fig)
        return Path(out_dir)


def deviance_residuals(y: np.ndarray, mu: np.ndarray) -> np.ndarray:
    """Signed deviance residuals of 0/1 responses, same shape as ``mu``."""
    y = np.asarray(y, dtype=float)
    p = np.where(y > 0.5, mu, 1.0 - mu)
    return np.sign(y - mu) * np.sqrt(-2.0 * np.log(np.maximum(p, 1e-300)))


# --------------------------------------------------------------------------------------------
# fitting


def _as_trials(trials) -> Trials:
    if isinstance(trials, Trials):
        return trials
    if isinstance(trials, (str, os.PathLike)):
        return read_mlds_csv(trials)
    try:
        import pandas as pd

        if isinstance(trials, pd.DataFrame):
            from brainattn.psychophysics.design import as_trials

            cols = {c.lower(): c for c in trials.columns}
            if "resp" not in cols:
                raise DataError("trials: DataFrame has no 'resp' column; expected resp,S1,S2,S3[,S4]")
            names = [c for c in ("s1", "s2", "s3", "s4") if c in cols]
            return as_trials(trials[cols["resp"]].to_numpy(object),
                             trials[[cols[c] for c in names]].to_numpy(object), source="<DataFrame>")
    except ImportError:  # pragma: no cover
        pass
    raise ConfigError(f"trials: expected Trials, a DataFrame or a CSV path, got {type(trials).__name__}")


def _grouped(X: np.ndarray, y: np.ndarray):
    """Identical design rows grouped: (unique rows (R, k), inverse (n,), trials m (R,), successes (R,)).

    Rows are sorted by two random projections and split where neighbours differ exactly
    (much faster than ``np.unique(axis=0)``; a projection tie can only split a group, which
    leaves the likelihood unchanged).
    """
    X = np.asarray(X, dtype=np.float64)
    n = len(X)
    keys = X @ np.random.default_rng(12345).standard_normal((X.shape[1], 2))
    order = np.lexsort((keys[:, 1], keys[:, 0]))
    Xs = X[order]
    new = np.r_[True, np.any(Xs[1:] != Xs[:-1], axis=1)] if n else np.zeros(0, dtype=bool)
    inv = np.empty(n, dtype=np.int64)
    inv[order] = np.cumsum(new) - 1
    Xu = Xs[new]
    m = np.bincount(inv, minlength=len(Xu)).astype(float)
    k = np.bincount(inv, weights=np.asarray(y, dtype=float), minlength=len(Xu))
    return Xu, inv, m, k


def _make_link(link, lapse):
    """Base link, or a :class:`LapseLink`: a float is a symmetric lapse rate (lam/2 at each end),
    a pair gives the lower and upper asymptotes (psyphy's ``2asym``)."""
    base = get_link(link)
    if isinstance(lapse, tuple):
        return LapseLink(base, *lapse) if any(lapse) else base
    if lapse:
        return LapseLink(base, lapse / 2.0, lapse / 2.0)
    return base


@dataclass
class _Core:
    psi: np.ndarray
    psi_se: np.ndarray
    sigma: float
    sigma_se: float
    loglik: float
    n_params: int
    fitted: np.ndarray
    params: np.ndarray
    bse: np.ndarray
    names: list[str]
    converged: bool
    formula: dict | None = None
    glm_beta: np.ndarray | None = None
    cov_psi: np.ndarray | None = None


def _fit_glm(trials: Trials, link, engine: str, firth: bool, pre=None) -> _Core:
    X = trials.design_matrix()
    y = trials.resp.astype(float)
    p = trials.n_levels
    names = [f"psi[{i}]" for i in range(2, p + 1)]
    if firth:
        beta, cov, ll, _pen, conv = solve_firth(X, y, link)
    elif engine == "statsmodels":
        import statsmodels.api as sm

        fam = sm.families.Binomial(link=link, check_link=not isinstance(link, LapseLink))
        res = sm.GLM(y, X, family=fam).fit(tol=1e-13, maxiter=1000)
        beta, cov, ll, conv = np.asarray(res.params), np.asarray(res.cov_params()), float(res.llf), bool(res.converged)
    elif engine == "numpy":
        if pre is None:
            Xu, inv, m, k = _grouped(X, y)
            pre = solve_mlds_glm(Xu, k, link, weights=m, tol=1e-12, max_iter=100)
        sol = pre
        beta, cov, ll, conv = sol.beta, sol.cov, float(sol.loglik), bool(sol.converged)
    else:
        raise ConfigError(f"engine: expected 'numpy' or 'statsmodels', got {engine!r}")
    mu = mu_and_deriv(link, X @ beta)[0]
    se = np.sqrt(np.clip(np.diag(cov), 0, None))
    cov_psi = np.zeros((p, p))
    cov_psi[1:, 1:] = cov
    return _Core(np.r_[0.0, beta], np.r_[0.0, se], 1.0, 0.0, ll, p - 1, mu, beta, se, names, conv,
                 glm_beta=beta, cov_psi=cov_psi)


def _theta_fit(nll, theta0: np.ndarray, *, torch_ok: bool):
    """Minimise ``nll(theta)``; returns (theta, cov = inverse Hessian, nll_min)."""
    from scipy.optimize import minimize

    theta0 = np.asarray(theta0, dtype=np.float64)
    if torch_ok:
        import torch

        def fg(th):
            t = torch.tensor(th, dtype=torch.float64, requires_grad=True)
            v = nll(t)
            (g,) = torch.autograd.grad(v, t)
            return float(v.detach()), g.numpy().copy()

        res = minimize(fg, theta0, jac=True, method="BFGS", options={"gtol": 1e-9, "maxiter": 5000})
        th = res.x
        # polish with Newton steps on the exact Hessian
        for _ in range(5):
            H = torch.autograd.functional.hessian(nll, torch.tensor(th, dtype=torch.float64)).numpy()
            _, g = fg(th)
            try:
                step = np.linalg.solve(H, g)
            except np.linalg.LinAlgError:
                break
            if not np.all(np.isfinite(step)) or fg(th - step)[0] > fg(th)[0] + 1e-12:
                break
            th = th - step
            if np.max(np.abs(step)) < 1e-12:
                break
        H = torch.autograd.functional.hessian(nll, torch.tensor(th, dtype=torch.float64)).numpy()
        fmin = fg(th)[0]
    else:
        f = lambda th: float(nll(np.asarray(th)))  # noqa: E731
        res = minimize(f, theta0, method="BFGS", options={"gtol": 1e-7, "maxiter": 5000})
        th = res.x
        H = _num_hessian(f, th)
        fmin = f(th)
    try:
        cov = np.linalg.inv(H)
    except np.linalg.LinAlgError:
        cov = np.linalg.pinv(H)
    return th, cov, fmin


def _num_hessian(f, x, h=1e-4):
    k = len(x)
    H = np.empty((k, k))
    for i in range(k):
        for j in range(i, k):
            ei = np.zeros(k)
            ej = np.zeros(k)
            ei[i] = h * max(1.0, abs(x[i]))
            ej[j] = h * max(1.0, abs(x[j]))
            v = (f(x + ei + ej) - f(x + ei - ej) - f(x - ei + ej) + f(x - ei - ej)) / (4 * ei[i] * ej[j])
            H[i, j] = H[j, i] = v
    return H


def _torch_nll(trials: Trials, link, psi_fn):
    """NLL(theta) = -loglik with eta = X_full psi(theta) / sigma, theta's last entry log sigma."""
    import torch

    Xf = trials.design_matrix(drop_first=False)
    Xu, _inv, m, k = _grouped(Xf, trials.resp.astype(float))
    Xt, mt, kt = (torch.as_tensor(a) for a in (Xu, m, k))

    def nll(theta):
        psi = psi_fn(theta[:-1])
        eta = Xt @ psi / torch.exp(theta[-1])
        mu = _torch_mu(link, eta).clamp(1e-300, 1 - 1e-16)
        return -torch.sum(kt * torch.log(mu) + (mt - kt) * torch.log((1 - mu).clamp_min(1e-300)))

    return nll


def _fit_optim(trials: Trials, link) -> _Core:
    import torch

    p = trials.n_levels

    def psi_fn(free):
        z = torch.zeros(1, dtype=torch.float64)
        return torch.cat([z, free, z + 1.0])

    nll = _torch_nll(trials, link, psi_fn)
    theta0 = np.r_[np.linspace(0, 1, p)[1:-1], np.log(0.2)]
    th, cov, fmin = _theta_fit(nll, theta0, torch_ok=True)
    se = np.sqrt(np.clip(np.diag(cov), 0, None))
    sigma = float(np.exp(th[-1]))
    psi = np.r_[0.0, th[:-1], 1.0]
    psi_se = np.r_[0.0, se[:-1], 0.0]
    Xf = trials.design_matrix(drop_first=False)
    mu = mu_and_deriv(link, Xf @ psi / sigma)[0]
    names = [f"psi[{i}]" for i in range(2, p)] + ["log_sigma"]
    cov_psi = np.zeros((p, p))
    cov_psi[1:-1, 1:-1] = cov[:-1, :-1]
    return _Core(psi, psi_se, sigma, sigma * se[-1], -fmin, p - 1, mu, th, se, names, True,
                 cov_psi=cov_psi)


def _resolve_formula(formula, p0, stimulus):
    if isinstance(formula, str):
        if formula not in PARAMETRIC_SCALES:
            raise ConfigError(f"formula: unknown scale {formula!r}; expected one of "
                              f"{sorted(PARAMETRIC_SCALES)} or a callable f(s, *params)")
        fn, names, start = PARAMETRIC_SCALES[formula]
        if formula in ("log", "saturating"):
            start = (float(np.median(stimulus)),)
        return formula, fn, list(names), np.asarray(p0 if p0 is not None else start, dtype=float)
    if callable(formula):
        if p0 is None:
            raise ConfigError("p0: a callable formula needs start values p0 (one per parameter)")
        p0 = np.atleast_1d(np.asarray(p0, dtype=float))
        name = getattr(formula, "__name__", "callable")
        return name, formula, [f"theta[{i}]" for i in range(len(p0))], p0
    raise ConfigError(f"formula: expected a name ({sorted(PARAMETRIC_SCALES)}) or a callable, got {formula!r}")


def _fit_formula(trials: Trials, link, formula, p0, unconstrained_ll: float) -> _Core:
    import torch
    from scipy.stats import chi2

    name, fn, pnames, p0 = _resolve_formula(formula, p0, trials.stimulus)
    p = trials.n_levels
    k = len(p0)
    if k + 1 > p - 1:
        raise ConfigError(f"formula: {k} parameters + sigma cannot be identified from {p} levels "
                          f"(at most {p - 2} parameters)")
    s_np = trials.stimulus.astype(np.float64)
    s_t = torch.as_tensor(s_np)
    torch_ok = True
    try:  # differentiable in torch? (a numpy-only callable drops the graph or raises)
        th = torch.as_tensor(p0, dtype=torch.float64).clone().requires_grad_(True)
        out = fn(s_t, *th)
        torch_ok = (isinstance(out, torch.Tensor) and out.shape == s_t.shape
                    and (k == 0 or out.requires_grad))
    except Exception:
        torch_ok = False

    def psi_fn(theta):
        if isinstance(theta, torch.Tensor):
            return fn(s_t, *theta)
        return np.asarray(fn(s_np, *theta), dtype=float)

    def psi_np(params):
        return np.asarray(psi_fn(np.asarray(params, dtype=float)), dtype=float)

    _check_identifiable(psi_np, p0, name)
    if torch_ok:
        nll = _torch_nll(trials, link, psi_fn)
    else:
        Xf = trials.design_matrix(drop_first=False)
        Xu, _inv, m, kk = _grouped(Xf, trials.resp.astype(float))

        def nll(theta):
            psi = psi_np(theta[:-1])
            if psi.shape != s_np.shape or not np.all(np.isfinite(psi)):
                return 1e300
            mu, muc, _ = mu_and_deriv(link, Xu @ psi / np.exp(theta[-1]))
            return -float(binomial_loglik(kk, mu, muc, m))

    # sigma start: fit sigma with theta at p0 by a 1-d search
    from scipy.optimize import minimize_scalar

    def nll_np(theta):
        if torch_ok:
            return float(nll(torch.as_tensor(np.asarray(theta, dtype=float))).detach())
        return nll(theta)

    ls0 = minimize_scalar(lambda ls: nll_np(np.r_[p0, ls]), bounds=(-8, 5), method="bounded").x
    th, cov, fmin = _theta_fit(nll, np.r_[p0, ls0], torch_ok=torch_ok)
    _check_identifiable(psi_np, th[:-1], name, at_optimum=True)
    se = np.sqrt(np.clip(np.diag(cov), 0, None))
    sigma = float(np.exp(th[-1]))
    psi = psi_np(th[:-1])
    # delta method for the scale values
    J = np.empty((p, k))
    for j in range(k):
        h = 1e-6 * max(1.0, abs(th[j]))
        e = np.zeros(k)
        e[j] = h
        J[:, j] = (psi_np(th[:-1] + e) - psi_np(th[:-1] - e)) / (2 * h)
    psi_se = np.sqrt(np.clip(np.einsum("pi,ij,pj->p", J, cov[:k, :k], J), 0, None))
    Xf = trials.design_matrix(drop_first=False)
    mu = mu_and_deriv(link, Xf @ psi / sigma)[0]
    ll = -fmin
    lr = max(0.0, 2.0 * (unconstrained_ll - ll))
    df = (p - 1) - (k + 1)
    info = {"name": name, "names": pnames, "params": th[:-1].copy(), "bse": se[:-1].copy(),
            "fn": fn, "torch_ok": torch_ok,
            "lr_stat": lr, "lr_df": df, "lr_p": float(chi2.sf(lr, df)) if df > 0 else float("nan"),
            "unconstrained_loglik": unconstrained_ll}
    return _Core(psi, psi_se, sigma, sigma * se[-1], ll, k + 1, mu, th, se, pnames + ["log_sigma"],
                 True, formula=info, cov_psi=J @ cov[:k, :k] @ J.T)


def _check_identifiable(psi_np, params, name, at_optimum: bool = False):
    """The map (params, sigma) -> scale differences / sigma must have full column rank."""
    params = np.asarray(params, dtype=float)
    k = len(params)
    base = psi_np(params)
    if not np.all(np.isfinite(base)):
        raise ConfigError(f"formula {name}: the scale is not finite at parameters {params.tolist()}")
    d0 = base[1:] - base[0]
    J = np.empty((len(d0), k + 1))
    for j in range(k):
        h = 1e-5 * max(1.0, abs(params[j]))
        e = np.zeros(k)
        e[j] = h
        a, b = psi_np(params + e), psi_np(params - e)
        J[:, j] = ((a[1:] - a[0]) - (b[1:] - b[0])) / (2 * h)
    J[:, k] = -d0  # d/d(log sigma) of d0 / sigma at sigma = 1
    sv = np.linalg.svd(J, compute_uv=False)
    if sv[0] == 0 or sv[-1] / sv[0] < 1e-7:
        where = "the maximum-likelihood estimate (the fit ran to a boundary)" if at_optimum else "p0"
        raise ConfigError(
            f"formula {name}: its {k} parameters and sigma cannot be identified (the scale depends on "
            f"fewer than {k + 1} combinations of them at {where} {params.tolist()}); drop or fix a parameter"
        )


def fit_mlds(
    trials,
    method: str = "glm",
    link="probit",
    *,
    lapse: float | str | None = None,
    firth: bool = False,
    formula=None,
    p0=None,
    bootstrap: int = 0,
    seed: int | None = None,
    engine: str = "numpy",
    alpha: float = 0.05,
    n_diagnostic: int = 1000,
    on_separation: str = "raise",
) -> MLDSResult:
    """Fit a difference scale; see the module docstring for the methods' conventions.

    Parameters
    ----------
    trials : :class:`Trials`, a DataFrame ``resp, S1..S4`` or a CSV path.
    method : ``"glm"`` (default), ``"optim"`` or ``"formula"``.
    link : probit (default), logit, cauchit, cloglog, loglog or a statsmodels link.
    lapse : None; a fixed lapse rate ``lam`` in [0, 0.5) (``P = lam/2 + (1 - lam) F``); a pair
        ``(lower, upper)`` of fixed asymptotes (``P = lower + (1 - lower - upper) F``);
        ``"fit"`` (symmetric lapse rate by profile likelihood, one more parameter) or
        ``"fit-both"`` (both asymptotes by profile likelihood, two more parameters).
    firth : bias-reduced (Jeffreys-penalised) fit; use it when the data are separated.
    formula, p0 : parametric scale for ``method="formula"``: a name in
        :data:`PARAMETRIC_SCALES` or a callable ``f(s, *params)``, and start values.
    bootstrap : number of parametric bootstrap replicates (0: Wald intervals only).
    engine : ``"numpy"`` (batched IRLS) or ``"statsmodels"`` (``statsmodels.GLM``) for glm.
    on_separation : ``"raise"`` (DataError suggesting firth) or ``"warn"`` (fit anyway, flagged).
    """
    trials = _as_trials(trials)
    if method not in _METHODS:
        raise ConfigError(f"method: expected one of {', '.join(_METHODS)}, got {method!r}")
    if method == "formula" and formula is None:
        raise ConfigError("formula: method='formula' needs a formula (e.g. 'power' or a callable)")
    if isinstance(bootstrap, bool) or not isinstance(bootstrap, (int, np.integer)) or bootstrap < 0:
        raise ConfigError(f"bootstrap: expected a non-negative integer, got {bootstrap!r}")
    if firth and method != "glm":
        raise ConfigError("firth: the bias-reduced fit is available for method='glm' only")
    if on_separation not in ("raise", "warn"):
        raise ConfigError(f"on_separation: expected 'raise' or 'warn', got {on_separation!r}")
    base_link = get_link(link)
    X = trials.design_matrix()
    y = trials.resp.astype(float)
    Xu, _inv, m, kk = _grouped(X, y)
    if np.linalg.matrix_rank(Xu.T @ Xu) < X.shape[1]:
        raise DataError(f"{trials.source}: the design does not determine every level's scale value "
                        "(design matrix is rank deficient); add trials linking all levels")
    # a quick unpenalised fit: separated data make it diverge, and only then is the LP run
    pre = solve_mlds_glm(Xu, kk, base_link, weights=m, tol=1e-12, max_iter=100)
    suspicious = not pre.converged
    sep, sep_trials = False, np.array([], dtype=np.int64)
    if suspicious or firth:
        sep, _dir, sep_trials = detect_separation(X, trials.resp)
    if sep and not firth and on_separation == "raise":
        rows = ", ".join(str(i + 1) for i in sep_trials[:5]) + (" ..." if len(sep_trials) > 5 else "")
        raise DataError(
            f"{trials.source}: responses are perfectly separable (trials {rows}): the maximum likelihood "
            "scale does not exist; use the bias-reduced fit (firth=True, CLI --firth)"
        )

    def core_for(lam: float) -> _Core:
        lk = _make_link(link, lam)
        if method == "glm":
            return _fit_glm(trials, lk, engine, firth, pre=None if isinstance(lk, LapseLink) else pre)
        if method == "optim":
            return _fit_optim(trials, lk)
        unc = _fit_glm(trials, lk, "numpy", False).loglik
        return _fit_formula(trials, lk, formula, p0, unc)

    lapse_fitted = False
    lapse_se = float("nan")
    if lapse is None or lapse == 0:
        lam = 0.0
    elif isinstance(lapse, str):
        if lapse not in ("fit", "fit-both"):
            raise ConfigError(f"lapse: expected a number in [0, 0.5), 'fit' or 'fit-both', got {lapse!r}")

        def prof(lam_):
            return _fit_glm(trials, _make_link(link, lam_), "numpy", firth).loglik

        if lapse == "fit":
            lam, lapse_se = _fit_lapse(prof)
        else:
            lam, lapse_se = _fit_asymptotes(prof)
        lapse_fitted = True
    elif isinstance(lapse, (tuple, list)):
        if len(lapse) != 2:
            raise ConfigError(f"lapse: expected (lower, upper) asymptotes, got {lapse!r}")
        lam = (float(lapse[0]), float(lapse[1]))
        _make_link(link, lam)  # validates the asymptotes
    else:
        lam = float(lapse)
        if not 0 <= lam < 0.5:
            raise ConfigError(f"lapse: expected a lapse rate in [0, 0.5), got {lapse!r}")
    core = core_for(lam)
    lk = _make_link(link, lam)
    asym = (lk.lower, lk.upper) if isinstance(lk, LapseLink) else (0.0, 0.0)
    res = MLDSResult(
        trials=trials, method=method, link=lk, psi=core.psi, psi_se=core.psi_se, sigma=core.sigma,
        sigma_se=core.sigma_se, loglik=core.loglik,
        n_params=core.n_params + (2 if lapse == "fit-both" else int(lapse_fitted)),
        fitted=core.fitted, params=core.params, bse=core.bse, param_names=core.names,
        lapse=float(sum(asym)), asymptotes=asym,
        asymptotes_se=lapse_se if isinstance(lapse_se, tuple) else (float("nan"), float("nan")),
        lapse_se=float("nan") if isinstance(lapse_se, tuple) else lapse_se, lapse_fitted=lapse_fitted, firth=firth, separated=bool(sep),
        separated_trials=sep_trials, converged=core.converged, formula=core.formula, alpha=alpha,
        cov_psi=core.cov_psi,
    )
    if bootstrap:
        bootstrap_mlds(res, bootstrap, seed=seed, n_diagnostic=n_diagnostic)
    return res


def _fit_asymptotes(profile_ll: Callable, upper: float = 0.3):
    """Maximise the profile log-likelihood over (lower, upper) asymptotes; ((lo, up), (se, se))."""
    from scipy.optimize import minimize

    def f(x):
        return -profile_ll((float(x[0]), float(x[1])))

    r = minimize(f, np.array([0.01, 0.01]), method="L-BFGS-B", bounds=[(0.0, upper), (0.0, upper)],
                 options={"ftol": 1e-12, "gtol": 1e-8})
    x = np.where(r.x < 1e-4, 0.0, r.x)
    h = 1e-3
    H = np.empty((2, 2))
    base = np.maximum(x, 2 * h)  # room for the stencil at the boundary
    for i in range(2):
        for j in range(2):
            ei = np.eye(2)[i] * h
            ej = np.eye(2)[j] * h
            H[i, j] = (f(base + ei + ej) - f(base + ei - ej) - f(base - ei + ej) + f(base - ei - ej)) / (4 * h * h)
    try:
        cov = np.linalg.inv(H)
        se = tuple(float(v) for v in np.sqrt(np.clip(np.diag(cov), 0, None)))
    except np.linalg.LinAlgError:
        se = (float("nan"), float("nan"))
    return (float(x[0]), float(x[1])), se


def _fit_lapse(profile_ll: Callable[[float], float], upper: float = 0.3):
    """Maximise the profile log-likelihood over the lapse rate in [0, upper]; (lam, se)."""
    from scipy.optimize import minimize_scalar

    r = minimize_scalar(lambda l_: -profile_ll(l_), bounds=(0.0, upper), method="bounded",
                        options={"xatol": 1e-6})
    lam = float(r.x)
    if lam < 1e-4:
        lam = 0.0
    h = 1e-3
    lo, hi = max(lam - h, 0.0), lam + h
    mid = (lo + hi) / 2
    d2 = (profile_ll(hi) - 2 * profile_ll(mid) + profile_ll(lo)) / ((hi - lo) / 2) ** 2
    se = float(np.sqrt(-1.0 / d2)) if d2 < 0 else float("nan")
    return lam, se


# --------------------------------------------------------------------------------------------
# bootstrap, diagnostics, six-point test


def bootstrap_mlds(res: MLDSResult, n_boot: int, *, seed: int | None = None,
                   n_diagnostic: int = 1000, chunk: int = 4096) -> MLDSResult:
    """Parametric bootstrap of ``res``, in place; returns ``res``.

    Every replicate draws ``resp ~ Bernoulli(fitted)`` for every trial; all replicates are
    refitted together: by :func:`solve_mlds_glm` on the grouped design (glm, optim) or by a
    batched Newton solver in torch (formula; the callable must broadcast over parameters of
    shape (B, 1)).  The first
    ``n_diagnostic`` replicates also give the deviance-residual envelope, the runs test and the
    six-point test (R's ``binom.diagnostics`` and ``simu.6pt``).
    """
    rng = np.random.default_rng(seed)
    t = res.trials
    # bound memory: a block holds a few (chunk, n_trials) arrays
    chunk = max(1, min(int(chunk), int(2e7 // max(t.n_trials, 1))))
    if res.method == "formula":
        return _bootstrap_formula(res, n_boot, rng, n_diagnostic, chunk)
    X = t.design_matrix()
    Xu, inv, m, _k = _grouped(X, t.resp.astype(float))
    n = t.n_trials
    p_hat = res.fitted
    beta_hat = _glm_beta_of(res)
    psis, sigmas, ok_all = [], [], []
    n_diag = min(n_boot, n_diagnostic)
    diag_Y, diag_mu = [], []
    from brainattn.utils import progress

    for s in progress(range(0, n_boot, chunk), desc="bootstrap"):
        b = min(chunk, n_boot - s)
        Y = rng.random((b, n)) < p_hat  # (b, n) bool
        K = _group_sum(Y, inv, len(Xu))
        if res.firth:
            beta_b, conv_b, mu_b = solve_firth_batch(Xu, m, K, res.link, beta_hat)
        else:
            sol = solve_mlds_glm(Xu, K, res.link, weights=m, beta0=beta_hat, tol=1e-8, max_iter=50,
                                 line_search=False, summaries=False)
            beta_b, conv_b, mu_b = sol.beta, sol.converged, sol.mu
        psi = np.concatenate([np.zeros((b, 1)), beta_b], axis=1)
        if res.method == "optim":
            top = psi[:, -1:]
            sig = 1.0 / top[:, 0]
            psi = psi / top
        else:
            sig = np.ones(b)
        psis.append(psi)
        sigmas.append(sig)
        ok_all.append(conv_b)
        if s < n_diag:
            d = min(b, n_diag - s)
            diag_Y.append(Y[:d])
            diag_mu.append(mu_b[:d][:, inv])
    psi = np.concatenate(psis)
    sig = np.concatenate(sigmas)
    ok = np.concatenate(ok_all)
    res.boot_psi = psi[ok]
    res.boot_sigma = sig[ok]
    res.n_boot_failed = int((~ok).sum())
    if n_diag:
        Yd = np.concatenate(diag_Y)
        Md = np.concatenate(diag_mu)
        okd = ok[:n_diag]
        res.diagnostics = _diagnostics(t.resp, res.fitted, Yd[okd], Md[okd])
        if t.kind == "quadruple":
            res.six_point = _six_point(t, res.fitted, Yd[okd], Md[okd])
    return res


def solve_formula_batch(Xf: np.ndarray, m: np.ndarray, K: np.ndarray, stimulus: np.ndarray, fn, link,
                        theta0: np.ndarray, *, max_iter: int = 50, tol: float = 1e-8):
    """Maximum likelihood of a parametric scale for B response sets at once (batched Newton).

    Parameters
    ----------
    Xf : (R, p) full difference design (no level dropped); m : (R,) trials per row;
    K : (B, R) successes; fn : ``psi = fn(s, *params)`` broadcasting params of shape (B, 1)
    against s of shape (1, p); theta0 : (k + 1,) start (params..., log sigma).

    Returns
    -------
    theta (B, k + 1), converged (B,) bool, mu (B, R) fitted probabilities.
    """
    import torch

    Xt = torch.as_tensor(Xf, dtype=torch.float64)
    mt = torch.as_tensor(m, dtype=torch.float64)
    Kt = torch.as_tensor(K, dtype=torch.float64)
    st = torch.as_tensor(stimulus, dtype=torch.float64)[None, :]
    B = Kt.shape[0]
    q = len(theta0)

    def nll(Th):
        psi = fn(st, *[Th[:, j : j + 1] for j in range(q - 1)])
        psi = psi.expand(B, -1) if psi.shape[0] == 1 else psi
        eta = psi @ Xt.T / torch.exp(Th[:, -1:])
        mu = _torch_mu(link, eta).clamp(1e-300, 1 - 1e-16)
        return -(Kt * torch.log(mu) + (mt - Kt) * torch.log((1 - mu).clamp_min(1e-300))).sum(1), mu

    Th0 = torch.as_tensor(np.broadcast_to(theta0, (B, q)).copy(), dtype=torch.float64)
    Th, ok, mu = _batched_newton(nll, Th0, max_iter=max_iter, tol=tol)
    return Th.numpy(), ok.numpy(), mu.numpy()


def _batched_newton(nll, Th, *, max_iter: int = 50, tol: float = 1e-8):
    """Minimise B independent objectives ``nll(Th) -> ((B,) values, extra)`` over Th (B, q).

    Per-replicate gradients come from one backward pass of the sum, Hessian rows from q more;
    Newton steps where the Hessian is positive definite, damped gradient steps elsewhere, step
    halving per replicate.  Returns (Th, converged (B,), extra at the solution).
    """
    import torch

    B, q = Th.shape
    conv = torch.zeros(B, dtype=torch.bool)
    for _ in range(max_iter):
        Tg = Th.clone().requires_grad_(True)
        f, _extra = nll(Tg)
        (g,) = torch.autograd.grad(f.sum(), Tg, create_graph=True)
        H = torch.stack([torch.autograd.grad(g[:, j].sum(), Tg, retain_graph=True)[0] for j in range(q)], 1)
        g, H, f = g.detach(), H.detach(), f.detach()
        L, info = torch.linalg.cholesky_ex(H)
        pd = info == 0
        step = 0.1 * g
        if bool(pd.any()):
            step[pd] = torch.cholesky_solve(g[pd][:, :, None], L[pd])[:, :, 0]
        step[~torch.isfinite(step)] = 0.0
        t = torch.ones(B, 1, dtype=torch.float64)
        with torch.no_grad():
            for _h in range(30):
                f_new, _ = nll(Th - t * step)
                worse = ~(f_new <= f + 1e-10 * (1 + f.abs()))
                if not bool(worse.any()):
                    break
                t[worse] *= 0.5
            Th = Th - t * step
        small = step.abs().max(1).values <= tol * (1 + Th.abs().max(1).values)
        conv |= small & (t[:, 0] == 1) & pd
        if bool(conv.all()):
            break
    with torch.no_grad():
        _, extra = nll(Th)
    return Th, conv & torch.isfinite(Th).all(1), extra


def solve_firth_batch(X: np.ndarray, m: np.ndarray, K: np.ndarray, link, beta0: np.ndarray, *,
                      max_iter: int = 50, tol: float = 1e-8):
    """Jeffreys-penalised (Firth) fits of B response sets at once on a grouped design.

    X : (R, k) design (first level dropped); m : (R,) trials per row; K : (B, R) successes.
    Maximises ``l_b(beta) + 1/2 log det(X^T W_b X)`` for every replicate, as
    :func:`~brainattn.psychophysics.glm.solve_firth` does for one.
    Returns beta (B, k), converged (B,), mu (B, R).
    """
    import torch

    Xt = torch.as_tensor(X, dtype=torch.float64)
    mt = torch.as_tensor(m, dtype=torch.float64)
    Kt = torch.as_tensor(K, dtype=torch.float64)
    B = Kt.shape[0]

    def nll(Bt):
        eta = Bt @ Xt.T
        mu, muc, dmu = _torch_mu_deriv(link, eta)
        mu, muc = mu.clamp_min(1e-300), muc.clamp_min(1e-300)
        ll = (Kt * torch.log(mu) + (mt - Kt) * torch.log(muc)).sum(1)
        w = mt * dmu * dmu / (mu * muc)
        info = torch.einsum("ri,br,rj->bij", Xt, w, Xt)
        return -(ll + 0.5 * torch.logdet(info)), mu

    B0 = torch.as_tensor(np.broadcast_to(beta0, (B, X.shape[1])).copy(), dtype=torch.float64)
    Bt, ok, mu = _batched_newton(nll, B0, max_iter=max_iter, tol=tol)
    return Bt.numpy(), ok.numpy(), mu.numpy()


def _bootstrap_formula(res: MLDSResult, n_boot: int, rng, n_diagnostic: int, chunk: int) -> MLDSResult:
    import torch

    f = res.formula
    t = res.trials
    if not f.get("torch_ok"):
        raise ConfigError("bootstrap: the formula method needs a torch-differentiable callable "
                          "(use torch operations, e.g. (s / s_max) ** g); Wald intervals are reported")
    fn = f["fn"]
    try:  # the batched solver calls fn with parameters of shape (B, 1)
        probe = fn(torch.as_tensor(t.stimulus)[None, :], *[torch.ones(2, 1, dtype=torch.float64)
                                                             * float(v) for v in f["params"]])
        if tuple(probe.shape) not in ((2, t.n_levels), (1, t.n_levels)):
            raise ValueError
    except Exception:
        raise ConfigError("bootstrap: the formula callable must broadcast parameters of shape (B, 1) "
                          "against stimulus values of shape (1, p)") from None
    Xf = t.design_matrix(drop_first=False)
    Xu, inv, m, _k = _grouped(Xf, t.resp.astype(float))
    theta0 = np.asarray(res.params, dtype=float)
    psis, sigmas, oks, diag_Y, diag_mu = [], [], [], [], []
    n_diag = min(n_boot, n_diagnostic)
    from brainattn.utils import progress

    for s0 in progress(range(0, n_boot, chunk), desc="bootstrap"):
        b = min(chunk, n_boot - s0)
        Y = rng.random((b, t.n_trials)) < res.fitted
        K = _group_sum(Y, inv, len(Xu))
        th, ok, mu = solve_formula_batch(Xu, m, K, t.stimulus, fn, res.link, theta0)
        with torch.no_grad():
            psi = fn(torch.as_tensor(t.stimulus)[None, :], *[torch.as_tensor(th[:, j : j + 1])
                                                               for j in range(th.shape[1] - 1)])
        psis.append(np.broadcast_to(psi.numpy(), (b, t.n_levels)))
        sigmas.append(np.exp(th[:, -1]))
        oks.append(ok)
        if s0 < n_diag:
            d = min(b, n_diag - s0)
            diag_Y.append(Y[:d])
            diag_mu.append(mu[:d][:, inv])
    ok = np.concatenate(oks)
    res.boot_psi = np.concatenate(psis)[ok]
    res.boot_sigma = np.concatenate(sigmas)[ok]
    res.n_boot_failed = int((~ok).sum())
    if n_diag:
        okd = ok[:n_diag]
        Yd, Md = np.concatenate(diag_Y)[okd], np.concatenate(diag_mu)[okd]
        res.diagnostics = _diagnostics(t.resp, res.fitted, Yd, Md)
        if t.kind == "quadruple":
            res.six_point = _six_point(t, res.fitted, Yd, Md)
    return res


def _group_sum(Y: np.ndarray, inv: np.ndarray, n_groups: int) -> np.ndarray:
    """Sum the (b, n) 0/1 responses over trials sharing a design row -> (b, n_groups)."""
    order = np.argsort(inv, kind="stable")
    starts = np.r_[0, np.flatnonzero(np.diff(inv[order])) + 1]
    return np.add.reduceat(Y[:, order].astype(np.float64), starts, axis=1)


def _glm_beta_of(res: MLDSResult) -> np.ndarray:
    if res.method == "glm":
        return np.asarray(res.params, dtype=float)
    return res.psi[1:] / res.sigma  # optim: psi / sigma is the glm parametrisation


def _runs(signs_by_fit: np.ndarray) -> np.ndarray:
    """Number of runs of equal signs along the last axis."""
    return 1 + np.sum(signs_by_fit[..., 1:] != signs_by_fit[..., :-1], axis=-1)


def _diagnostics(y, mu, Yb, Mb) -> dict:
    """binom.diagnostics: sorted deviance residuals vs their bootstrap envelope; runs test."""
    r_obs = deviance_residuals(y, mu)
    r_b = deviance_residuals(Yb, Mb)
    sorted_b = np.sort(r_b, axis=1)
    env = np.quantile(sorted_b, [0.025, 0.5, 0.975], axis=0).T  # (n, 3)
    sorted_obs = np.sort(r_obs)
    outside = float(np.mean((sorted_obs < env[:, 0]) | (sorted_obs > env[:, 2])))
    order = np.argsort(mu, kind="stable")
    runs_obs = int(_runs(np.sign(r_obs[order])))
    order_b = np.argsort(Mb, axis=1, kind="stable")
    runs_b = _runs(np.sign(np.take_along_axis(r_b, order_b, axis=1)))
    return {"envelope": env, "runs_observed": runs_obs, "runs_simulated": runs_b,
            "runs_p": float(np.mean(runs_b <= runs_obs)), "envelope_outside": outside}


def six_point_sets(trials: Trials) -> np.ndarray:
    """Trial indices of the six-point conditions in the data, (n_conditions, 3) (R's Get6pts).

    For levels ``a1 < a2 < a3`` and ``b1 < b2 < b3`` with ``a1 < b1``, the quadruples
    ``A = (a1, a2; b1, b2)``, ``B = (a2, a3; b2, b3)`` and ``E = (a1, a3; b1, b3)`` form a
    condition when all three were run; repeated trials are paired in order of occurrence.
    """
    if trials.kind != "quadruple":
        return np.zeros((0, 3), dtype=np.int64)
    import itertools

    p = trials.n_levels
    base = p + 1

    def code(q):
        return ((q[..., 0] * base + q[..., 1]) * base + q[..., 2]) * base + q[..., 3]

    codes = code(trials.stim)
    where: dict[int, list[int]] = {}
    for i, c in enumerate(codes.tolist()):
        where.setdefault(c, []).append(i)
    A3 = np.array(list(itertools.combinations(range(1, p + 1), 3)))
    B3 = np.array(list(itertools.combinations(range(2, p + 1), 3)))
    ia, ib = np.meshgrid(np.arange(len(A3)), np.arange(len(B3)), indexing="ij")
    a, b = A3[ia.ravel()], B3[ib.ravel()]
    keep = a[:, 0] < b[:, 0]
    a, b = a[keep], b[keep]
    qa = code(np.stack([a[:, 0], a[:, 1], b[:, 0], b[:, 1]], 1))
    qb = code(np.stack([a[:, 1], a[:, 2], b[:, 1], b[:, 2]], 1))
    qe = code(np.stack([a[:, 0], a[:, 2], b[:, 0], b[:, 2]], 1))
    present = np.unique(codes)
    hit = np.isin(qa, present) & np.isin(qb, present) & np.isin(qe, present)
    out = []
    for ca, cb, ce in zip(qa[hit].tolist(), qb[hit].tolist(), qe[hit].tolist(), strict=True):
        la, lb, le = where[ca], where[cb], where[ce]
        for r in range(min(len(la), len(lb), len(le))):
            out.append((la[r], lb[r], le[r]))
    return np.asarray(out, dtype=np.int64).reshape(-1, 3)


def _six_point(trials: Trials, mu, Yb, Mb) -> dict:
    """simu.6pt: log-likelihood of the six-point trials vs its parametric-bootstrap distribution."""
    sets = six_point_sets(trials)
    if len(sets) == 0:
        return {"n": 0, "loglik": float("nan"), "p": float("nan")}
    idx = sets.T.ravel()  # A's, then B's, then E's (R's order)
    y = trials.resp[idx].astype(float)
    ll_obs = float(binomial_loglik(y, mu[idx]))
    ll_b = binomial_loglik(Yb[:, idx].astype(float), Mb[:, idx])
    return {"n": int(len(sets)), "loglik": ll_obs, "p": float(np.mean(ll_b <= ll_obs)),
            "loglik_simulated": ll_b}


# --------------------------------------------------------------------------------------------
# scikit-learn style estimator


class MLDS:
    """Estimator shell over :func:`fit_mlds` (hyper-parameters in ``__init__``, ``fit`` returns self).

    Learned attributes: ``result_`` (:class:`MLDSResult`), ``scale_`` ((p,) estimate),
    ``sigma_``, ``stimulus_``.
    """

    def __init__(self, method: str = "glm", link="probit", lapse=None, firth: bool = False,
                 formula=None, p0=None, n_bootstrap: int = 0, random_state: int | None = None,
                 engine: str = "numpy", alpha: float = 0.05):
        self.method = method
        self.link = link
        self.lapse = lapse
        self.firth = firth
        self.formula = formula
        self.p0 = p0
        self.n_bootstrap = n_bootstrap
        self.random_state = random_state
        self.engine = engine
        self.alpha = alpha

    def get_params(self, deep: bool = True) -> dict:
        return {k: getattr(self, k) for k in ("method", "link", "lapse", "firth", "formula", "p0",
                                               "n_bootstrap", "random_state", "engine", "alpha")}

    def set_params(self, **params) -> MLDS:
        for k, v in params.items():
            if k not in self.get_params():
                raise ConfigError(f"MLDS: unknown parameter {k!r}")
            setattr(self, k, v)
        return self

    def fit(self, trials, y=None) -> MLDS:
        self.result_ = fit_mlds(trials, self.method, self.link, lapse=self.lapse, firth=self.firth,
                                formula=self.formula, p0=self.p0, bootstrap=self.n_bootstrap,
                                seed=self.random_state, engine=self.engine, alpha=self.alpha)
        self.scale_ = self.result_.psi
        self.sigma_ = self.result_.sigma
        self.stimulus_ = self.result_.stimulus
        return self

    def predict_proba(self, trials) -> np.ndarray:
        """P(resp = 1) for other trials over the same levels, (n_trials,)."""
        t = _as_trials(trials) if not isinstance(trials, Trials) else trials
        Xf = t.design_matrix(drop_first=False)
        return mu_and_deriv(self.result_.link, Xf @ self.scale_ / self.sigma_)[0]

    def score(self, trials, y=None) -> float:
        """Mean log-likelihood per trial of ``trials`` under the fitted scale."""
        t = _as_trials(trials)
        mu = self.predict_proba(t)
        return float(binomial_loglik(t.resp.astype(float), mu) / t.n_trials)
