"""Maximum likelihood difference scaling (MLDS): the glm, optim and lapse fits, the estimator.

The conventions and definitions are those of the R package MLDS 0.5.1 (Knoblauch & Maloney),
so results compare one-to-one; how each method relates to R's is also printed in
``summary.txt`` (:data:`~brainattn.psychophysics.result.R_RELATION`):

``glm``
    R's ``mlds(method = "glm")``: a binomial GLM without intercept on the difference design
    matrix, first level dropped: ``psi_1 = 0`` and ``sigma = 1`` (the scale is in units of the
    decision noise).  Same estimates, standard errors, logLik, AIC, deviance, null deviance.
``optim``
    R's ``mlds(method = "optim")``: ``psi_1 = 0``, ``psi_p = 1``, ``sigma`` free, the interior
    values constrained to (0, 1) (R writes them as ``plogis`` of free parameters).  Here the
    maximum over [0, 1] is found with bounds; where it lies on a bound R's BFGS stops short of
    it by its tolerance, and a Wald standard error is not defined there (NaN; R prints NA or a
    meaningless small number).
``optim-unconstrained``
    not in R: the same parametrisation with the interior values free, i.e. the glm fit divided
    by its last value (``1 / sigma = psi_p`` of glm).  It equals ``optim`` when every glm value
    lies in [0, psi_p].
``formula``
    R's ``mlds(formula, p, ...)``: a parametric scale ``psi(s) = f(s, *theta)`` (a built-in
    family, an expression in ``s`` parsed safely, or a callable) with R's signed ``sigma``, plus a
    likelihood-ratio test against the glm fit.  R prints the scale normalised to 0..1.

Options: any statsmodels binomial link; a lapse rate ``lam`` (``P = lam/2 + (1 - lam) F``) or
lower/upper asymptotes (psyphy's links), fixed, or fitted by profile likelihood; bias reduction
named as brglm2 names it (``firth="AS_mean"``, the vignette's brglm, or ``"MPL_Jeffreys"``).
Separation is detected by linear programming and reported, never judged from the size of the
estimates.  The parametric bootstrap (:mod:`~brainattn.psychophysics.bootstrap`, R's
``boot.mlds``) and the goodness-of-fit tests (:mod:`~brainattn.psychophysics.diagnostics`:
``binom.diagnostics``, ``simu.6pt``, ``pmc``) each draw their own simulations; with a fitted
lapse rate the replicates keep it fixed at its estimate.

The result object is :class:`~brainattn.psychophysics.result.MLDSResult` (``scale.nc`` layout
documented there); the formula method lives in :mod:`~brainattn.psychophysics.formula`.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
from sklearn.base import BaseEstimator

from brainattn.errors import ConfigError, DataError
from brainattn.psychophysics._likelihood import _Core, _theta_fit, _torch_nll
from brainattn.psychophysics.bootstrap import bootstrap_mlds
from brainattn.psychophysics.design import Trials, _grouped, read_mlds_csv
from brainattn.psychophysics.diagnostics import diagnose
from brainattn.psychophysics.formula import _fit_formula
from brainattn.psychophysics.glm import (
    LapseLink,
    binomial_loglik,
    detect_separation,
    get_link,
    mu_and_deriv,
    solve_as_mean,
    solve_firth,
    solve_mlds_glm,
)
from brainattn.psychophysics.result import MLDSResult

__all__ = ["MLDS", "fit_mlds"]

_METHODS = ("glm", "optim", "optim-unconstrained", "formula")
_BIAS_REDUCTIONS = ("AS_mean", "MPL_Jeffreys")


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


def _make_link(link, lapse):
    """Base link, or a :class:`LapseLink`: a float is a symmetric lapse rate (lam/2 at each end),
    a pair gives the lower and upper asymptotes (psyphy's ``2asym``)."""
    base = get_link(link)
    if isinstance(lapse, tuple):
        return LapseLink(base, *lapse) if any(lapse) else base
    if lapse:
        return LapseLink(base, lapse / 2.0, lapse / 2.0)
    return base


def _bias_reduction(firth) -> str | None:
    """``firth`` as brglm2 names the fit: None, ``"AS_mean"`` or ``"MPL_Jeffreys"`` (True)."""
    if firth is None or firth is False:
        return None
    if firth is True:
        return "MPL_Jeffreys"
    if firth in _BIAS_REDUCTIONS:
        return firth
    raise ConfigError(f"firth: expected False, True, 'AS_mean' or 'MPL_Jeffreys' (brglm2's types), got {firth!r}")


def _fit_glm(trials: Trials, link, engine: str, firth: str | None, pre=None) -> _Core:
    X = trials.design_matrix()
    y = trials.resp.astype(float)
    p = trials.n_levels
    names = [f"psi[{i}]" for i in range(2, p + 1)]
    n_iter = 0
    if firth == "MPL_Jeffreys":
        beta, cov, ll, _pen, conv = solve_firth(X, y, link)
    elif firth == "AS_mean":
        Xu, _inv, m, k = _grouped(X, y)
        sol = solve_as_mean(Xu, k, link, weights=m)
        beta, cov, ll, conv, n_iter = sol.beta, sol.cov, float(sol.loglik), bool(sol.converged), int(sol.n_iter)
    elif engine == "statsmodels":
        import statsmodels.api as sm

        fam = sm.families.Binomial(link=link, check_link=not isinstance(link, LapseLink))
        res = sm.GLM(y, X, family=fam).fit(tol=1e-13, maxiter=1000)
        beta, cov, ll, conv = np.asarray(res.params), np.asarray(res.cov_params()), float(res.llf), bool(res.converged)
        n_iter = int(res.fit_history["iteration"])
    elif engine == "numpy":
        if pre is None:
            Xu, inv, m, k = _grouped(X, y)
            pre = solve_mlds_glm(Xu, k, link, weights=m, tol=1e-12, max_iter=100)
        sol = pre
        beta, cov, ll, conv, n_iter = sol.beta, sol.cov, float(sol.loglik), bool(sol.converged), int(sol.n_iter)
    else:
        raise ConfigError(f"engine: expected 'numpy' or 'statsmodels', got {engine!r}")
    mu = mu_and_deriv(link, X @ beta)[0]
    se = np.sqrt(np.clip(np.diag(cov), 0, None))
    cov_psi = np.zeros((p, p))
    cov_psi[1:, 1:] = cov
    return _Core(np.r_[0.0, beta], np.r_[0.0, se], 1.0, 0.0, ll, p - 1, mu, beta, se, names, conv,
                 glm_beta=beta, cov_psi=cov_psi, n_iter=n_iter)


def _fit_optim(trials: Trials, link, beta_glm: np.ndarray, *, constrained: bool) -> _Core:
    """``psi_1 = 0``, ``psi_p = 1``, sigma free, by direct maximum likelihood.

    ``constrained``: R's ``mlds(method = "optim")``, whose interior values are ``plogis`` of free
    parameters and so lie in (0, 1); the maximum over that box is found with the bounds [0, 1]
    (where R's optimiser approaches a bound, it stops short of it by its tolerance).  Otherwise
    the interior values are free, and the fit is the glm solution divided by its last value.
    """
    import torch

    p = trials.n_levels

    def psi_fn(free):
        z = torch.zeros(1, dtype=torch.float64)
        return torch.cat([z, free, z + 1.0])

    nll = _torch_nll(trials, link, psi_fn)
    # start at the glm solution rescaled (the unconstrained optimum itself when it exists)
    beta = np.asarray(beta_glm, dtype=float)
    if np.all(np.isfinite(beta)) and beta[-1] > 0:
        theta0 = np.r_[beta[:-1] / beta[-1], -np.log(beta[-1])]
    else:
        theta0 = np.r_[np.linspace(0, 1, p)[1:-1], np.log(0.2)]
    bounds = [(0.0, 1.0)] * (p - 2) + [None] if constrained else None
    th, cov, fmin, n_iter, conv = _theta_fit(nll, theta0, torch_ok=True, bounds=bounds)
    se = np.sqrt(np.diag(cov))
    sigma = float(np.exp(th[-1]))
    psi = np.r_[0.0, th[:-1], 1.0]
    psi_se = np.r_[0.0, se[:-1], 0.0]
    Xf = trials.design_matrix(drop_first=False)
    mu = mu_and_deriv(link, Xf @ psi / sigma)[0]
    names = [f"psi[{i}]" for i in range(2, p)] + ["log_sigma"]
    cov_psi = np.zeros((p, p))
    cov_psi[1:-1, 1:-1] = cov[:-1, :-1]
    return _Core(psi, psi_se, sigma, sigma * se[-1], -fmin, p - 1, mu, th, se, names, conv,
                 cov_psi=cov_psi, n_iter=n_iter)


def fit_mlds(
    trials,
    method: str = "glm",
    link="probit",
    *,
    lapse: float | str | None = None,
    firth: bool | str = False,
    formula=None,
    p0=None,
    bootstrap: int = 0,
    diagnostics: int = 0,
    diagnostics_refit: str = "link",
    seed: int | None = None,
    engine: str = "numpy",
    alpha: float = 0.05,
    on_separation: str = "raise",
) -> MLDSResult:
    """Fit a difference scale; see the module docstring for the methods and how each relates to R.

    Parameters
    ----------
    trials : :class:`Trials`, a DataFrame ``resp, S1..S4`` or a CSV path.
    method : ``"glm"`` (default), ``"optim"`` (R's constrained estimator),
        ``"optim-unconstrained"`` or ``"formula"``.
    link : probit (default), logit, cauchit, cloglog, loglog or a statsmodels link.
    lapse : None; a fixed lapse rate ``lam`` in [0, 0.5) (``P = lam/2 + (1 - lam) F``); a pair
        ``(lower, upper)`` of fixed asymptotes (``P = lower + (1 - lower - upper) F``);
        ``"fit"`` (symmetric lapse rate by profile likelihood, one more parameter) or
        ``"fit-both"`` (both asymptotes by profile likelihood, two more parameters).
    firth : bias reduction, named as brglm2 names it: ``"AS_mean"`` (mean-bias-reducing
        adjusted score, R's ``brglm`` of the MLDS vignette) or ``"MPL_Jeffreys"`` (Jeffreys-prior
        penalised likelihood; ``True``); the two coincide for the logit link.  Both have finite
        estimates for separated data.
    formula, p0 : parametric scale for ``method="formula"``: a name in
        :data:`~brainattn.psychophysics.formula.PARAMETRIC_SCALES`, an expression in the
        stimulus ``s`` (e.g. ``"(s / max(s)) ** gamma"``) or a callable ``f(s, *params)``, and
        start values.
    bootstrap : number of parametric bootstrap replicates (0: Wald intervals only).
    diagnostics : number of simulations for R's ``binom.diagnostics`` and (quadruples) the
        six-point test (0: none); ``diagnostics_refit``: ``"link"`` (the fit's link) or
        ``"probit"`` (R's ``binom.diagnostics`` as shipped).
    engine : ``"numpy"`` (batched IRLS) or ``"statsmodels"`` (``statsmodels.GLM``) for glm.
    on_separation : ``"raise"`` (DataError suggesting firth) or ``"warn"`` (fit anyway, flagged).
    """
    trials = _as_trials(trials)
    if method not in _METHODS:
        raise ConfigError(f"method: expected one of {', '.join(_METHODS)}, got {method!r}")
    if method == "formula" and formula is None:
        raise ConfigError("formula: method='formula' needs a formula (e.g. 'power' or a callable)")
    for name, v in (("bootstrap", bootstrap), ("diagnostics", diagnostics)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise ConfigError(f"{name}: expected a non-negative integer, got {v!r}")
    if bootstrap == 1:
        raise ConfigError("bootstrap: expected 0 (none) or at least 2 replicates, got 1")
    firth = _bias_reduction(firth)
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
    pre = solve_mlds_glm(Xu, kk, base_link, weights=m, tol=1e-12, max_iter=100)
    # separation is decided by linear programming, never from the size of the estimates; the LP
    # (a few ms) runs when the fit did not converge or some fitted probability is within 1e-15 of
    # 0 or 1 (it rounds to 0 or 1: separated trials drive theirs there), and for bias-reduced fits
    sep, sep_trials = False, np.array([], dtype=np.int64)
    mu_pre = np.asarray(pre.mu)
    if firth or not pre.converged or np.any(np.minimum(mu_pre, 1.0 - mu_pre) < 1e-15):
        sep, _dir, sep_trials = detect_separation(X, trials.resp)
    # only the unconstrained scale has no maximum under separation; R's optim and formula fits
    # (bounded or parametric scales) still have one
    if sep and not firth and on_separation == "raise" and method in ("glm", "optim-unconstrained"):
        rows = ", ".join(str(i + 1) for i in sep_trials[:5]) + (" ..." if len(sep_trials) > 5 else "")
        raise DataError(
            f"{trials.source}: responses are perfectly separable (trials {rows}): the maximum likelihood "
            "scale does not exist; use a bias-reduced fit (firth='AS_mean' or 'MPL_Jeffreys', CLI "
            "--firth AS_mean)"
        )

    def core_for(lam: float) -> _Core:
        lk = _make_link(link, lam)
        plain = None if isinstance(lk, LapseLink) else pre
        if method == "glm":
            return _fit_glm(trials, lk, engine, firth, pre=plain)
        if method.startswith("optim"):
            start = plain.beta if plain is not None else _fit_glm(trials, lk, "numpy", None).params
            return _fit_optim(trials, lk, start, constrained=method == "optim")
        unc = _fit_glm(trials, lk, "numpy", None).loglik
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
        lapse_se=float("nan") if isinstance(lapse_se, tuple) else lapse_se, lapse_fitted=lapse_fitted,
        firth=firth, separated=bool(sep), separated_trials=sep_trials, converged=core.converged,
        n_iter=core.n_iter, formula=core.formula, alpha=alpha, cov_psi=core.cov_psi,
    )
    if bootstrap:
        bootstrap_mlds(res, bootstrap, seed=seed)
    if diagnostics:
        # its own stream: the diagnostics do not depend on whether a bootstrap ran before them
        diagnose(res, diagnostics, seed=None if seed is None else [int(seed), 1], refit=diagnostics_refit)
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
# scikit-learn style estimator


class MLDS(BaseEstimator):
    """Estimator shell over :func:`fit_mlds` (hyper-parameters in ``__init__``, ``fit`` returns self).

    Learned attributes: ``result_`` (:class:`MLDSResult`), ``scale_`` ((p,) estimate),
    ``sigma_``, ``stimulus_``.
    """

    def __init__(self, method: str = "glm", link="probit", lapse=None, firth: bool | str = False,
                 formula=None, p0=None, n_bootstrap: int = 0, n_diagnostics: int = 0,
                 random_state: int | None = None,
                 engine: str = "numpy", alpha: float = 0.05):
        self.method = method
        self.link = link
        self.lapse = lapse
        self.firth = firth
        self.formula = formula
        self.p0 = p0
        self.n_bootstrap = n_bootstrap
        self.n_diagnostics = n_diagnostics
        self.random_state = random_state
        self.engine = engine
        self.alpha = alpha

    def fit(self, trials, y=None) -> MLDS:
        self.result_ = fit_mlds(trials, self.method, self.link, lapse=self.lapse, firth=self.firth,
                                formula=self.formula, p0=self.p0, bootstrap=self.n_bootstrap,
                                diagnostics=self.n_diagnostics, seed=self.random_state, engine=self.engine, alpha=self.alpha)
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
