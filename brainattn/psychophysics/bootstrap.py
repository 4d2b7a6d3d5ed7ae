"""Parametric bootstrap of an MLDS fit: every replicate refitted, all of them together."""

from __future__ import annotations

import numpy as np

from brainattn.errors import ConfigError
from brainattn.psychophysics._likelihood import (
    _batched_newton,
    glm_beta,
    refit_replicates,
)
from brainattn.psychophysics.design import _group_sum, _grouped
from brainattn.psychophysics.formula import solve_formula_batch
from brainattn.psychophysics.glm import _torch_mu_deriv, solve_as_mean
from brainattn.psychophysics.result import MLDSResult

__all__ = ["bootstrap_mlds", "solve_firth_batch"]


def bootstrap_mlds(res: MLDSResult, n_boot: int, *, seed: int | None = None,
                   chunk: int = 4096) -> MLDSResult:
    """Parametric bootstrap of ``res``, in place; returns ``res``.

    Every replicate draws ``resp ~ Bernoulli(fitted)`` for every trial; all replicates are
    refitted together on the grouped design: glm and both optim methods by the glm method
    (optim replicates normalised by their last value, as R's ``boot.mlds`` does), bias-reduced
    fits by the same bias reduction, formula fits by a batched Newton solver in torch (the
    callable must broadcast over parameters of shape (B, 1)).  A replicate is dropped only when
    its data are separated (linear-programming check: no maximum likelihood estimate exists) or
    its fit fails to converge even when solved on its own; ``n_boot_separated`` and
    ``n_boot_failed`` count them.
    """
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 2:
        raise ConfigError(f"bootstrap: expected at least 2 replicates, got {n_boot!r}")
    rng = np.random.default_rng(seed)
    t = res.trials
    # bound memory: a block holds a few (chunk, n_trials) arrays
    chunk = max(1, min(int(chunk), int(2e7 // max(t.n_trials, 1))))
    if res.method == "formula":
        return _bootstrap_formula(res, n_boot, rng, chunk)
    Xu, inv, m, _k = _grouped(t.design_matrix(), t.resp.astype(float))
    beta_hat = glm_beta(res.psi, res.sigma)
    psis, sigmas, oks, seps = [], [], [], []
    from brainattn.utils import progress

    for s in progress(range(0, n_boot, chunk), desc="bootstrap"):
        b = min(chunk, n_boot - s)
        Y = rng.random((b, t.n_trials)) < res.fitted  # (b, n) bool
        K = _group_sum(Y, inv, len(Xu))
        sep_b = np.zeros(b, dtype=bool)
        if res.firth == "MPL_Jeffreys":
            beta_b, ok_b, _mu = solve_firth_batch(Xu, m, K, res.link, beta_hat)
        elif res.firth == "AS_mean":
            sol = solve_as_mean(Xu, K, res.link, weights=m, beta0=beta_hat, summaries=False)
            beta_b, ok_b = sol.beta, sol.converged
        else:
            beta_b, ok_b, sep_b, _mu = refit_replicates(Xu, m, K, res.link, beta_hat)
        psi = np.concatenate([np.zeros((b, 1)), beta_b], axis=1)
        if res.method.startswith("optim"):
            top = psi[:, -1:]
            sig = 1.0 / top[:, 0]
            psi = psi / top
        else:
            sig = np.ones(b)
        psis.append(psi)
        sigmas.append(sig)
        oks.append(ok_b)
        seps.append(sep_b)
    _store(res, np.concatenate(psis), np.concatenate(sigmas), np.concatenate(oks), np.concatenate(seps))
    return res


def _store(res, psi, sig, ok, sep):
    res.boot_psi = psi[ok]
    res.boot_sigma = sig[ok]
    res.n_boot_separated = int(sep.sum())
    res.n_boot_failed = int((~ok & ~sep).sum())


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


def _bootstrap_formula(res: MLDSResult, n_boot: int, rng, chunk: int) -> MLDSResult:
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
    psis, sigmas, oks = [], [], []
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
        sigmas.append(th[:, -1].copy())
        oks.append(ok)
    ok = np.concatenate(oks)
    _store(res, np.concatenate(psis), np.concatenate(sigmas), ok, np.zeros_like(ok))
    return res
