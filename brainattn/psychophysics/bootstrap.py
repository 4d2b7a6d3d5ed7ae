"""Parametric bootstrap of an MLDS fit: every replicate refitted, all of them together."""

from __future__ import annotations

import numpy as np

from brainattn.errors import ConfigError
from brainattn.psychophysics._likelihood import _batched_newton, _group_sum, _grouped
from brainattn.psychophysics.diagnostics import _diagnostics, _six_point
from brainattn.psychophysics.formula import solve_formula_batch
from brainattn.psychophysics.glm import _torch_mu_deriv, solve_mlds_glm
from brainattn.psychophysics.result import MLDSResult

__all__ = ["bootstrap_mlds", "solve_firth_batch"]



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



def _glm_beta_of(res: MLDSResult) -> np.ndarray:
    if res.method == "glm":
        return np.asarray(res.params, dtype=float)
    return res.psi[1:] / res.sigma  # optim: psi / sigma is the glm parametrisation
