"""The result of an MLDS fit (:class:`MLDSResult`), its summary and its saved form.

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
``loglik``, ``aic``, ``deviance``, ``null_deviance``, ``daf`` (deviance accounted for), ``pmc``
(probability of misclassification), ``converged``, ``n_iter``, ``relation_to_r``, ``n_params``, ``sigma_estimate``, ``lapse``, ``lapse_fitted``,
``firth`` (none, AS_mean, MPL_Jeffreys), ``separated``, ``n_bootstrap``, ``n_bootstrap_failed``,
``n_bootstrap_separated``, ``runs_observed`` (sign changes, as R counts them), ``runs_p``
(fraction of simulated runs <= observed), ``diagnostics_n``, ``diagnostics_refit`` (link, probit), ``envelope_outside`` (fraction of
observed sorted residuals outside the envelope), ``six_point_loglik``, ``six_point_p``,
``six_point_n``, ``six_point_n_sim``, formula fits add ``formula``, ``formula_params`` (json), ``lr_stat``,
``lr_df``, ``lr_p``; predictions add ``prediction_model``, ``area_match``, ``rmse``,
``correlation`` and their ``*_lower``/``*_upper`` bootstrap bounds.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from brainattn.psychophysics.design import Trials
from brainattn.psychophysics.diagnostics import deviance_residuals
from brainattn.psychophysics.glm import link_name

__all__ = ["MLDSResult"]

_STATS = ["estimate", "se", "lower", "upper"]

# how each method and option relates to the R package MLDS 0.5.1 (printed in summary.txt)
R_RELATION = {
    "glm": 'R mlds(method = "glm"): the same binomial glm (scale, se, logLik, AIC, deviance)',
    "optim": 'R mlds(method = "optim"): interior values kept in (0, 1) (R: plogis); the maximum '
             "over [0, 1] (R's BFGS stops short of a bound by its tolerance)",
    "optim-unconstrained": "not in R: the glm fit divided by psi_p (interior values free); equals R's "
                           "optim only when every glm value lies in [0, psi_p]",
    "formula": "R mlds(formula): the same likelihood; R prints the scale normalised (psi_1 = 0, "
               "psi_p = 1) with sigma in the formula's units, se from the Hessian",
    "AS_mean": 'brglm2 type = "AS_mean" (mean-bias-reducing adjusted score; R brglm, the MLDS vignette)',
    "MPL_Jeffreys": 'brglm2 type = "MPL_Jeffreys" (Jeffreys-prior penalised likelihood)',
    "lapse": "R: psyphy's links (probit.2asym); fitted asymptotes maximise the profile likelihood",
    "bootstrap": "R boot.mlds: replicates drawn from the fitted probabilities and refitted by glm "
                 "(optim: divided by psi_p); here a replicate is dropped only when its data are "
                 "separated (no maximum likelihood estimate) or its fit fails",
}


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
    firth: str | None = None
    separated: bool = False
    separated_trials: np.ndarray = field(default_factory=lambda: np.array([], dtype=int))
    converged: bool = True
    n_iter: int = 0
    formula: dict | None = None
    boot_psi: np.ndarray | None = None
    boot_sigma: np.ndarray | None = None
    n_boot_failed: int = 0
    n_boot_separated: int = 0
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
    def null_deviance(self) -> float:
        """Deviance of the model without predictors (``eta = 0`` on every trial), as R's
        ``glm`` reports it for a fit without intercept: ``2 n log 2`` for a plain link."""
        from brainattn.psychophysics.glm import binomial_loglik, mu_and_deriv

        mu, muc, _ = mu_and_deriv(self.link, np.zeros(self.trials.n_trials))
        return float(-2.0 * binomial_loglik(self.trials.resp.astype(float), mu, muc))

    @property
    def daf(self) -> float:
        """Deviance accounted for, ``1 - deviance / null_deviance`` (R MLDS vignette)."""
        return 1.0 - self.deviance / self.null_deviance

    @property
    def pmc(self) -> float:
        """Probability of misclassification (R's ``pmc``)."""
        from brainattn.psychophysics.diagnostics import pmc

        return pmc(self)

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
                         f"{self.asymptotes[0]:.4f} / {1 - self.asymptotes[1]:.4f}; {R_RELATION['lapse']}")
        lines.append(f"null deviance: {self.null_deviance:<13.4f} deviance accounted for: {self.daf:.4f}   "
                     f"pmc: {self.pmc:.4f}")
        lines.append(f"converged: {'yes' if self.converged else 'NO'} ({self.n_iter} iterations)")
        lines.append(f"relation to R: {R_RELATION[self.method]}")
        if self.firth:
            lines.append(f"bias reduction: {self.firth}: {R_RELATION[self.firth]}")
        if self.separated:
            what = ("the unconstrained (glm) maximum likelihood scale does not exist"
                    if self.method in ("glm", "optim-unconstrained") and not self.firth else
                    "the unconstrained (glm) scale has no maximum likelihood estimate; this fit's does")
            lines.append(f"WARNING: the data are separated ({len(self.separated_trials)} trials): {what}")
        if self.boot_psi is not None:
            lines.append(f"bootstrap replicates: {len(self.boot_psi)} ({self.n_boot_separated} separated and "
                         f"{self.n_boot_failed} failed replicates dropped); {R_RELATION['bootstrap']}")
        lines += ["-" * 72,
                  f"{'level':>5} {'stimulus':>12} {'estimate':>12} {'se':>10} {'lower':>10} {'upper':>10}"]
        for i in range(t.n_levels):
            lines.append(f"{i + 1:>5} {t.stimulus[i]:>12.5g} {self.psi[i]:>12.5f} {se[i]:>10.5f} "
                         f"{lo[i]:>10.5f} {hi[i]:>10.5f}")
        lines.append(f"{'sigma':>5} {'':>12} {self.sigma:>12.5f} {sse:>10.5f} {slo:>10.5f} {shi:>10.5f}")
        if not self.method.startswith("optim"):
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
            if d["refit"] == "probit":
                how = "R's binom.diagnostics as shipped (simulations refitted with probit)"
            elif d["refit_link"] == "probit":
                how = "simulations refitted with the fit's link, probit (as R's binom.diagnostics)"
            else:
                how = (f"simulations refitted with the fit's link ({d['refit_link']}); R's binom.diagnostics "
                       "refits with probit (--diagnostics-refit probit)")
            dropped = d.get("n_separated", 0) + d.get("n_failed", 0)
            used = f"{d['n_sim']} simulations" + (f" ({dropped} separated/failed dropped)" if dropped else "")
            lines += ["-" * 72, f"goodness of fit: {used}, {how}",
                      f"  runs (sign changes of residuals ordered by fitted value, as R counts): "
                      f"{d['runs_observed']}; P(simulated <= observed) = {d['runs_p']:.4f}",
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
        """The scale with its interval against the stimulus; returns the Figure.

        Drawn by :func:`brainattn.psychophysics.plots.plot_scale`, as in the report.
        """
        from brainattn.psychophysics.plots import plot_scale

        return plot_scale(self.to_dataset(), normalized=normalized, ax=ax)

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
            "null_deviance": self.null_deviance, "daf": self.daf, "pmc": self.pmc,
            "converged": self.converged, "n_iter": self.n_iter, "relation_to_r": R_RELATION[self.method],
            "lapse": self.lapse, "lapse_fitted": self.lapse_fitted, "firth": self.firth or "none",
            "lower_asymptote": self.asymptotes[0], "upper_asymptote": 1 - self.asymptotes[1],
            "separated": self.separated, "source": t.source,
            "n_bootstrap": 0 if self.boot_psi is None else len(self.boot_psi),
            "n_bootstrap_failed": self.n_boot_failed, "n_bootstrap_separated": self.n_boot_separated,
        }
        if self.boot_psi is not None:
            ds["bootstrap_scale"] = (("replicate", "level"), self.boot_psi)
            ds["bootstrap_sigma"] = ("replicate", self.boot_sigma)
        if self.diagnostics is not None:
            d = self.diagnostics
            ds["envelope"] = (("rank", "bound"), d["envelope"])
            ds = ds.assign_coords(bound=["lower", "median", "upper"])
            attrs.update(runs_observed=d["runs_observed"], runs_p=d["runs_p"],
                         envelope_outside=d["envelope_outside"], diagnostics_n=d["n_sim"],
                         diagnostics_refit=d["refit"])
        if self.six_point is not None:
            attrs.update(six_point_loglik=self.six_point["loglik"], six_point_p=self.six_point["p"],
                         six_point_n=self.six_point["n"], six_point_n_sim=self.six_point.get("n_sim", 0))
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
