"""Goodness of fit of a difference scale, with R MLDS's definitions.

- :func:`deviance_residuals` -- as R's ``residuals(glm, "deviance")``, fitted probabilities
  clamped to ``[eps, 1 - eps]`` as R's binomial links clamp them.
- :func:`binom_diagnostics` -- R's ``binom.diagnostics``: simulated data sets drawn from the
  fitted probabilities are refitted (glm), giving an envelope for the sorted deviance residuals
  and the distribution of the number of runs.  Runs are counted as R counts them: residuals in
  order of fitted probability, ``TRUE`` where the residual is ``> 0``, the number of changes
  between neighbours (a residual of exactly 0 counts as negative, never as a third sign).
  ``p`` is the fraction of simulated counts ``<=`` the observed one (R: ``1 - mean(sim > obs)``).
  ``refit="probit"`` is R's function as shipped (it refits every simulation with the probit
  link whatever the fit's link); ``refit="link"`` refits with the fit's own link (the two agree
  for probit fits).
- :func:`six_point_test` -- R's ``simu.6pt``: the log-likelihood of the six-point conditions
  (``Get6pts``, ``lik6pt``) against its distribution under simulations refitted with the fit's link.
- :func:`pmc` -- R's ``pmc``: the fraction of trials whose response disagrees with the sign of
  the fitted decision variable.
"""

from __future__ import annotations

import numpy as np

from brainattn.errors import ConfigError
from brainattn.psychophysics._likelihood import glm_beta, refit_replicates
from brainattn.psychophysics.design import Trials, _group_sum, _grouped
from brainattn.psychophysics.glm import binomial_loglik, get_link, link_name, solve_mlds_glm

__all__ = ["deviance_residuals", "runs_of_signs", "binom_diagnostics", "six_point_sets",
           "six_point_test", "diagnose", "pmc"]

_EPS = np.finfo(np.float64).eps
_REFITS = ("link", "probit")


def deviance_residuals(y: np.ndarray, mu: np.ndarray) -> np.ndarray:
    """Signed deviance residuals of 0/1 responses, same shape as ``mu`` (``mu`` clamped to
    ``[eps, 1 - eps]``, so a probability that rounds to 1 still gives a residual with a sign)."""
    y = np.asarray(y, dtype=float)
    mu = np.clip(np.asarray(mu, dtype=float), _EPS, 1.0 - _EPS)
    p = np.where(y > 0.5, mu, 1.0 - mu)
    return np.sign(y - mu) * np.sqrt(-2.0 * np.log(p))


def runs_of_signs(resid: np.ndarray, fitted: np.ndarray) -> np.ndarray:
    """R's runs count along the last axis: residuals ordered by fitted probability (ties in trial
    order), ``resid > 0``, number of changes between neighbours."""
    order = np.argsort(fitted, axis=-1, kind="stable")
    pos = np.take_along_axis(np.asarray(resid), order, axis=-1) > 0
    return np.sum(pos[..., 1:] != pos[..., :-1], axis=-1)


def pmc(res) -> float:
    """Probability of misclassification (R's ``pmc``): ``1 - mean((eta > 0) == resp)``."""
    t = res.trials
    eta = t.design_matrix(drop_first=False) @ res.psi / res.sigma
    return float(1.0 - np.mean((eta > 0) == (t.resp == 1)))


def _simulate(res, n_sim: int, rng, link):
    """(Y (n_sim, n) 0/1 draws from the fitted probabilities, refitted mu (n_sim, n), ok (n_sim,),
    separated (n_sim,)): every simulation refitted by the glm method with ``link``."""
    t = res.trials
    Xu, inv, m, k = _grouped(t.design_matrix(), t.resp.astype(float))
    if link is res.link:
        beta0 = glm_beta(res.psi, res.sigma)
    else:  # start where the observed data put that link
        beta0 = solve_mlds_glm(Xu, k, link, weights=m, max_iter=100, summaries=False).beta
    Y = rng.random((n_sim, t.n_trials)) < res.fitted
    _beta, ok, sep, mu = refit_replicates(Xu, m, _group_sum(Y, inv, len(Xu)), link, beta0)
    return Y, mu[:, inv], ok, sep


def _check_count(n, name):
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ConfigError(f"{name}: expected a positive number of simulations, got {n!r}")
    return int(n)


def _check_refit(refit):
    if refit not in _REFITS:
        raise ConfigError(f"refit: expected 'link' (the fit's link) or 'probit' (R's binom.diagnostics "
                          f"as shipped), got {refit!r}")


def binom_diagnostics(res, n_sim: int = 1000, *, seed=None, refit: str = "link",
                      alpha: float = 0.025, _sims=None) -> dict:
    """R's ``binom.diagnostics`` for a fit (any method): residual envelope and runs test.

    Parameters
    ----------
    res : :class:`~brainattn.psychophysics.result.MLDSResult`.
    n_sim : number of simulated data sets.
    refit : ``"link"`` (refit with the fit's link) or ``"probit"`` (R's function as shipped).
    alpha : the envelope is the ``alpha`` and ``1 - alpha`` order statistics of the simulated
        sorted residuals (R's ``plot.mlds.diag``: rows ``alpha * nsim`` and ``(1 - alpha) * nsim``).

    Returns a dict: ``envelope`` (n, 3) lower/median/upper, ``runs_observed`` (sign changes, as
    R prints them), ``runs_simulated``, ``runs_p``, ``envelope_outside`` (fraction of observed
    sorted residuals outside the envelope), ``n_sim`` (simulations used), ``n_separated``,
    ``n_failed``, ``refit`` and ``refit_link``.
    """
    n_sim = _check_count(n_sim, "diagnostics")
    _check_refit(refit)
    link = res.link if refit == "link" else get_link("probit")
    rng = np.random.default_rng(seed)
    Y, Mb, ok, sep = _sims if _sims is not None else _simulate(res, n_sim, rng, link)
    y = res.trials.resp
    r_obs = deviance_residuals(y, res.fitted)
    r_b = deviance_residuals(Y[ok], Mb[ok])
    sorted_b = np.sort(np.sort(r_b, axis=1), axis=0)  # R: apply(resid, 2, sort)
    n_ok = len(sorted_b)
    lo = sorted_b[max(int(alpha * n_ok) - 1, 0)]
    hi = sorted_b[max(int((1 - alpha) * n_ok) - 1, 0)]
    env = np.stack([lo, np.median(sorted_b, axis=0), hi], axis=1)
    sorted_obs = np.sort(r_obs)
    outside = float(np.mean((sorted_obs < env[:, 0]) | (sorted_obs > env[:, 2])))
    runs_obs = int(runs_of_signs(r_obs, res.fitted))
    runs_b = runs_of_signs(r_b, Mb[ok])
    return {"envelope": env, "runs_observed": runs_obs, "runs_simulated": runs_b,
            "runs_p": float(np.mean(runs_b <= runs_obs)), "envelope_outside": outside,
            "n_sim": int(ok.sum()), "n_separated": int(sep.sum()), "n_failed": int((~ok & ~sep).sum()),
            "refit": refit, "refit_link": link_name(link)}


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


def six_point_test(res, n_sim: int = 1000, *, seed=None, _sims=None) -> dict:
    """R's ``simu.6pt``: the six-point log-likelihood of the data vs simulations refitted with the
    fit's link.  Returns ``n`` (conditions), ``loglik``, ``p`` (fraction of simulated
    log-likelihoods ``<=`` the observed one), ``loglik_simulated``, ``n_sim``."""
    n_sim = _check_count(n_sim, "six-point test")
    trials = res.trials
    sets = six_point_sets(trials)
    if len(sets) == 0:
        return {"n": 0, "loglik": float("nan"), "p": float("nan"), "n_sim": 0}
    rng = np.random.default_rng(seed)
    Y, Mb, ok, _sep = _sims if _sims is not None else _simulate(res, n_sim, rng, res.link)
    idx = sets.T.ravel()  # A's, then B's, then E's (R's order)
    ll_obs = float(binomial_loglik(trials.resp[idx].astype(float), res.fitted[idx]))
    ll_b = binomial_loglik(Y[ok][:, idx].astype(float), Mb[ok][:, idx])
    return {"n": int(len(sets)), "loglik": ll_obs, "p": float(np.mean(ll_b <= ll_obs)),
            "loglik_simulated": ll_b, "n_sim": int(ok.sum())}


def diagnose(res, n_sim: int = 1000, *, seed=None, refit: str = "link"):
    """Run :func:`binom_diagnostics` and (quadruples) :func:`six_point_test` on ``res``, in place.

    With ``refit="link"`` both use the same simulations; returns ``res``.
    """
    n_sim = _check_count(n_sim, "diagnostics")
    _check_refit(refit)
    rng = np.random.default_rng(seed)
    link = res.link if refit == "link" else get_link("probit")
    sims = _simulate(res, n_sim, rng, link)
    res.diagnostics = binom_diagnostics(res, n_sim, refit=refit, _sims=sims)
    if res.trials.kind == "quadruple":
        if refit != "link":
            sims = _simulate(res, n_sim, rng, res.link)
        res.six_point = six_point_test(res, n_sim, _sims=sims)
    return res
