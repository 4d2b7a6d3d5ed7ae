"""Goodness of fit of a difference scale: deviance residuals, R's ``binom.diagnostics`` (residual
envelope and runs test) and the six-point test (``Get6pts``, ``lik6pt``, ``simu.6pt``)."""

from __future__ import annotations

import numpy as np

from brainattn.psychophysics.design import Trials
from brainattn.psychophysics.glm import binomial_loglik

__all__ = ["deviance_residuals", "six_point_sets"]


def deviance_residuals(y: np.ndarray, mu: np.ndarray) -> np.ndarray:
    """Signed deviance residuals of 0/1 responses, same shape as ``mu``."""
    y = np.asarray(y, dtype=float)
    p = np.where(y > 0.5, mu, 1.0 - mu)
    return np.sign(y - mu) * np.sqrt(-2.0 * np.log(np.maximum(p, 1e-300)))



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
