"""Numerical pieces shared by the MLDS fits: likelihood minimisation (optionally bounded), batched
Newton, and glm refits of simulated data with the separation check.

Plain functions on arrays and torch tensors; :mod:`~brainattn.psychophysics.mlds`,
:mod:`~brainattn.psychophysics.formula`, :mod:`~brainattn.psychophysics.bootstrap` and
:mod:`~brainattn.psychophysics.diagnostics` build on them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from brainattn.psychophysics.design import Trials, _grouped
from brainattn.psychophysics.glm import _torch_mu


@dataclass
class _Core:
    """What one fitting method hands to :class:`~brainattn.psychophysics.result.MLDSResult`."""

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
    n_iter: int = 0


def _theta_fit(nll, theta0: np.ndarray, *, torch_ok: bool, bounds=None):
    """Minimise ``nll(theta)``, optionally inside ``bounds`` (a list of (low, high) or None).

    Returns (theta, cov, nll_min, n_iter, converged): ``cov`` is the inverse Hessian over the
    coordinates not at a bound (NaN rows/columns for those at a bound, where a Wald standard
    error has no meaning); ``converged`` means the projected gradient vanished.
    """
    from scipy.optimize import minimize

    theta0 = np.asarray(theta0, dtype=np.float64)
    k = len(theta0)
    lo = np.array([-np.inf if b is None or b[0] is None else b[0] for b in (bounds or [None] * k)])
    hi = np.array([np.inf if b is None or b[1] is None else b[1] for b in (bounds or [None] * k)])
    if torch_ok:
        import torch

        def fg(th):
            t = torch.tensor(th, dtype=torch.float64, requires_grad=True)
            v = nll(t)
            (g,) = torch.autograd.grad(v, t)
            return float(v.detach()), g.numpy().copy()

        def hess(th):
            return torch.autograd.functional.hessian(nll, torch.tensor(th, dtype=torch.float64)).numpy()
    else:
        def f_np(th):
            return float(nll(np.asarray(th)))

        def fg(th):
            h = 1e-6 * np.maximum(1.0, np.abs(th))
            g = np.array([(f_np(th + e) - f_np(th - e)) / (2 * e[j]) for j, e in enumerate(np.diag(h))])
            return f_np(th), g

        def hess(th):
            return _num_hessian(f_np, th)

    if bounds is None:
        res = minimize(fg, theta0, jac=True, method="BFGS",
                       options={"gtol": 1e-9 if torch_ok else 1e-7, "maxiter": 5000})
    else:
        res = minimize(fg, np.clip(theta0, lo, hi), jac=True, method="L-BFGS-B",
                       bounds=list(zip(lo, hi, strict=True)),
                       options={"ftol": 1e-15, "gtol": 1e-11, "maxiter": 20000, "maxcor": 30})
    th = np.clip(res.x, lo, hi)
    n_iter = int(res.nit)

    def free_set(th, g):
        # a coordinate at a bound whose gradient pushes outwards stays there
        return ~(((th <= lo) & (g > 0)) | ((th >= hi) & (g < 0)))

    if torch_ok:  # polish with Newton steps on the exact Hessian over the free coordinates
        for _ in range(20):
            f0, g = fg(th)
            free = free_set(th, g)
            H = hess(th)[np.ix_(free, free)]
            try:
                step = np.zeros(k)
                step[free] = np.linalg.solve(H, g[free])
            except np.linalg.LinAlgError:
                break
            cand = np.clip(th - step, lo, hi)
            # (a step may raise the sum's rounding noise, ~1e-14 of |f|, not more)
            if not np.all(np.isfinite(cand)) or fg(cand)[0] > f0 + 1e-12 * max(1.0, abs(f0)):
                break
            n_iter += 1
            th = cand
            if np.max(np.abs(step)) < 1e-13:
                break
    fmin, g = fg(th)
    free = free_set(th, g)
    at_bound = ~free | (th <= lo) | (th >= hi)
    H = hess(th)
    cov = np.full((k, k), np.nan)
    keep = ~at_bound
    if keep.any():
        try:
            cov[np.ix_(keep, keep)] = np.linalg.inv(H[np.ix_(keep, keep)])
        except np.linalg.LinAlgError:
            cov[np.ix_(keep, keep)] = np.linalg.pinv(H[np.ix_(keep, keep)])
    converged = bool(np.all(np.isfinite(th)) and np.max(np.abs(g[free]), initial=0.0)
                     <= 1e-5 * (1.0 + abs(fmin)))
    return th, cov, fmin, n_iter, converged


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


def _torch_nll(trials: Trials, link, psi_fn, *, log_sigma: bool = True):
    """NLL(theta) = -loglik with eta = X_full psi(theta) / sigma; theta's last entry is
    ``log sigma`` (``log_sigma``) or sigma itself (signed, as R's formula method has it)."""
    import torch

    Xf = trials.design_matrix(drop_first=False)
    Xu, _inv, m, k = _grouped(Xf, trials.resp.astype(float))
    Xt, mt, kt = (torch.as_tensor(a) for a in (Xu, m, k))

    def nll(theta):
        psi = psi_fn(theta[:-1])
        sigma = torch.exp(theta[-1]) if log_sigma else theta[-1]
        mu = _torch_mu(link, Xt @ psi / sigma).clamp(1e-300, 1 - 1e-16)
        return -torch.sum(kt * torch.log(mu) + (mt - kt) * torch.log((1 - mu).clamp_min(1e-300)))

    return nll


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


def glm_beta(psi: np.ndarray, sigma: float) -> np.ndarray:
    """The glm parametrisation (first level dropped, sigma = 1) of any method's scale:
    ``(psi[1:] - psi[0]) / sigma`` (design rows sum to zero, so the offset does not matter)."""
    psi = np.asarray(psi, dtype=float)
    return (psi[1:] - psi[0]) / sigma


def _separated_rows(Xu: np.ndarray, m: np.ndarray, k: np.ndarray) -> bool:
    """Linear-programming separation check on grouped counts: a row with successes contributes
    ``s = +1``, a row with failures ``s = -1`` (both when it has both)."""
    from brainattn.psychophysics.glm import detect_separation

    pos, neg = k > 0, k < m
    X = np.concatenate([Xu[pos], Xu[neg]])
    y = np.r_[np.ones(int(pos.sum())), np.zeros(int(neg.sum()))]
    return bool(detect_separation(X, y)[0])


def refit_replicates(Xu: np.ndarray, m: np.ndarray, K: np.ndarray, link, beta0: np.ndarray):
    """Maximum likelihood glm fits of B response sets on one grouped design, for simulations.

    All replicates are solved together (:func:`solve_mlds_glm`, started at ``beta0``); a replicate
    that has not converged is checked for separation by linear programming, and one that is not
    separated is solved again on its own with step halving and more iterations (slow Fisher
    scoring, e.g. cauchit).  Only separated replicates (no maximum likelihood estimate) and ones
    that still fail are flagged (``ok`` False; ``separated`` tells which).

    Returns
    -------
    beta (B, k), ok (B,) bool, separated (B,) bool, mu (B, R) fitted probabilities.
    """
    from brainattn.psychophysics.glm import solve_mlds_glm

    sol = solve_mlds_glm(Xu, K, link, weights=m, beta0=beta0, tol=1e-8, max_iter=50,
                         line_search=False, summaries=False)
    beta, ok, mu = sol.beta, sol.converged.copy(), sol.mu
    separated = np.zeros(len(K), dtype=bool)
    # separated data can also look converged (steps vanish once every probability rounds to 0 or
    # 1, e.g. logit), so a fitted probability within 1e-15 of 0 or 1 calls for the LP check too
    with np.errstate(invalid="ignore"):
        saturated = np.any(np.minimum(mu, 1.0 - mu) < 1e-15, axis=1)
    for b in np.flatnonzero(~ok | saturated):
        if _separated_rows(Xu, m, K[b]):
            separated[b] = True
            ok[b] = False
            continue
        if ok[b]:
            continue
        start = beta[b] if np.all(np.isfinite(beta[b])) else beta0
        beta[b], mu[b], ok[b] = _newton_one(Xu, m, K[b], link, start)
    return beta, ok, separated, mu


def _newton_one(X, m, k, link, beta0, gtol: float = 1e-8):
    """One glm fit by a trust-region Newton method on the observed information (fast where
    Fisher scoring crawls, e.g. cauchit with large |eta|).  Returns (beta, mu, converged)."""
    from scipy.optimize import minimize

    from brainattn.psychophysics.glm import binomial_loglik, mu_and_deriv, mu_deriv2

    def parts(beta):
        eta = X @ beta
        mu, muc, d = mu_and_deriv(link, eta)
        mu_, muc_ = np.maximum(mu, 1e-300), np.maximum(muc, 1e-300)
        a = k / mu_ - (m - k) / muc_  # d loglik / d mu
        return eta, mu, muc, d, a, mu_, muc_

    def f(beta):
        _eta, mu, muc, _d, _a, _, _ = parts(beta)
        return -float(binomial_loglik(k, mu, muc, m))

    def g(beta):
        _eta, _mu, _muc, d, a, _, _ = parts(beta)
        return -(a * d) @ X

    def H(beta):
        eta, _mu, _muc, d, a, mu_, muc_ = parts(beta)
        w = (k / mu_**2 + (m - k) / muc_**2) * d * d - a * mu_deriv2(link, eta)
        return (X * w[:, None]).T @ X

    r = minimize(f, np.asarray(beta0, float), jac=g, hess=H, method="trust-exact",
                 options={"gtol": gtol, "maxiter": 500})
    beta = r.x
    ok = bool(np.all(np.isfinite(beta)) and np.max(np.abs(g(beta))) <= 1e-6 * (1.0 + abs(r.fun)))
    return beta, mu_and_deriv(link, X @ beta)[0], ok
