"""The formula method: a parametric scale ``psi(s) = f(s, *theta)`` with sigma free.

A built-in family (:data:`PARAMETRIC_SCALES`) or any callable; torch-differentiable callables
get exact gradients, others finite differences.  :func:`solve_formula_batch` fits many response
sets at once (the bootstrap).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from brainattn.errors import ConfigError
from brainattn.psychophysics._likelihood import (
    _batched_newton,
    _Core,
    _grouped,
    _theta_fit,
    _torch_nll,
)
from brainattn.psychophysics.design import Trials
from brainattn.psychophysics.glm import _torch_mu, binomial_loglik, mu_and_deriv

__all__ = ["PARAMETRIC_SCALES", "solve_formula_batch"]


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
