"""Numerical pieces shared by the MLDS fits: grouped designs, likelihood minimisation, batched Newton.

Plain functions on arrays and torch tensors; :mod:`~brainattn.psychophysics.mlds`,
:mod:`~brainattn.psychophysics.formula` and :mod:`~brainattn.psychophysics.bootstrap` build on them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from brainattn.psychophysics.design import Trials
from brainattn.psychophysics.glm import _torch_mu


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



def _group_sum(Y: np.ndarray, inv: np.ndarray, n_groups: int) -> np.ndarray:
    """Sum the (b, n) 0/1 responses over trials sharing a design row -> (b, n_groups)."""
    order = np.argsort(inv, kind="stable")
    starts = np.r_[0, np.flatnonzero(np.diff(inv[order])) + 1]
    return np.add.reduceat(Y[:, order].astype(np.float64), starts, axis=1)



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
