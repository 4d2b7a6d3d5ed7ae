"""Binomial GLM solvers for difference scaling: batched IRLS, Firth, separation detection.

Plain functions on arrays (the estimator in :mod:`brainattn.psychophysics.mlds` validates and
delegates here).  :func:`solve_mlds_glm` solves one data set or thousands of bootstrap
replicates *together*: the design ``X`` is shared, the responses ``Y`` are ``(B, n)``, and each
Fisher-scoring step is one GEMM for all ``X^T W_b X`` plus one batched ``solve``.

Links are statsmodels binomial links (``Probit``, ``Logit``, ``Cauchy``, ``CLogLog``, ...);
``probit``, ``logit`` and ``cauchit`` take a fast path with ``scipy.special`` ufuncs.
:class:`LapseLink` adds asymptotes: ``mu = lower + (1 - lower - upper) F(eta)`` (psyphy).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import special

from brainattn.errors import ConfigError

__all__ = [
    "get_link",
    "link_name",
    "LapseLink",
    "GLMSolution",
    "solve_mlds_glm",
    "solve_firth",
    "solve_as_mean",
    "detect_separation",
    "binomial_loglik",
]

_TINY = 1e-300


_LINKS_MODULE = None


def _sm_links():
    global _LINKS_MODULE
    if _LINKS_MODULE is None:
        from statsmodels.genmod.families import links

        _LINKS_MODULE = links
    return _LINKS_MODULE


_NAMES = {
    "probit": "Probit",
    "logit": "Logit",
    "cauchit": "Cauchy",
    "cauchy": "Cauchy",
    "cloglog": "CLogLog",
    "loglog": "LogLog",
}


def get_link(link="probit"):
    """A statsmodels binomial link from a name (probit, logit, cauchit, cloglog, loglog) or a
    statsmodels ``Link`` instance (returned as is)."""
    links = _sm_links()
    if isinstance(link, links.Link):
        return link
    if isinstance(link, str) and link.lower() in _NAMES:
        return getattr(links, _NAMES[link.lower()])()
    raise ConfigError(
        f"link: unknown link {link!r}; expected probit, logit, cauchit, cloglog, loglog or a "
        "statsmodels.genmod.families.links.Link instance"
    )


def link_name(link) -> str:
    """Short lower-case name of a link (``probit``, ``logit``, ``cauchit``, ... )."""
    if isinstance(link, LapseLink):
        return f"{link_name(link.base)}+lapse({link.lower:g},{link.upper:g})"
    name = type(link).__name__.lower()
    return {"cauchy": "cauchit"}.get(name, name)


def _base_mu(link, eta: np.ndarray):
    """(mu, 1 - mu, dmu/deta) for a plain binomial link, computed without cancellation."""
    links = _sm_links()
    t = type(link)
    if t is links.Probit:
        return special.ndtr(eta), special.ndtr(-eta), np.exp(-0.5 * eta * eta) / np.sqrt(2 * np.pi)
    if t is links.Logit:
        mu = special.expit(eta)
        muc = special.expit(-eta)
        return mu, muc, mu * muc
    if t is links.Cauchy:
        a = np.arctan(eta) / np.pi
        return 0.5 + a, 0.5 - a, 1.0 / (np.pi * (1.0 + eta * eta))
    if t is links.CLogLog:
        e = np.exp(np.minimum(eta, 700.0))
        muc = np.exp(-e)
        return -np.expm1(-e), muc, e * muc
    if t is links.LogLog:
        e = np.exp(np.minimum(-eta, 700.0))
        mu = np.exp(-e)
        return mu, -np.expm1(-e), e * mu
    mu = np.asarray(link.inverse(eta), dtype=np.float64)
    return mu, 1.0 - mu, np.asarray(link.inverse_deriv(eta), dtype=np.float64)


def _base_deriv2(link, eta: np.ndarray, mu, muc, dmu):
    """d^2 mu / d eta^2 of a plain binomial link (the bias-reducing adjustment needs it)."""
    links = _sm_links()
    t = type(link)
    if t is links.Probit:
        return -eta * dmu
    if t is links.Logit:
        return dmu * (muc - mu)
    if t is links.Cauchy:
        return -2.0 * np.pi * eta * dmu * dmu
    if t is links.CLogLog:
        return dmu * (1.0 - np.exp(np.minimum(eta, 700.0)))
    if t is links.LogLog:
        return dmu * (np.exp(np.minimum(-eta, 700.0)) - 1.0)
    return np.asarray(link.inverse_deriv2(eta), dtype=np.float64)


def mu_deriv2(link, eta: np.ndarray) -> np.ndarray:
    """``d^2 mu / d eta^2`` for any supported link (lapse links included)."""
    base = link.base if isinstance(link, LapseLink) else link
    mu, muc, dmu = _base_mu(base, eta)
    d2 = _base_deriv2(base, eta, mu, muc, dmu)
    return d2 * (1.0 - link.lower - link.upper) if isinstance(link, LapseLink) else d2


def mu_and_deriv(link, eta: np.ndarray):
    """Return ``(mu, 1 - mu, dmu/deta)`` for any supported link (lapse links included)."""
    if isinstance(link, LapseLink):
        F, Fc, dF = _base_mu(link.base, eta)
        s = 1.0 - link.lower - link.upper
        return link.lower + s * F, link.upper + s * Fc, s * dF
    return _base_mu(link, eta)


class LapseLink(_sm_links().Link):
    """Binomial link with asymptotes (psyphy's ``probit.2asym``):
    ``mu = lower + (1 - lower - upper) * F(eta)``, F the inverse of ``base``.

    A symmetric lapse rate ``lam`` (random guess on lapsed trials) is ``lower = upper = lam/2``.
    Works inside statsmodels ``GLM`` too.
    """

    def __init__(self, base="probit", lower: float = 0.0, upper: float = 0.0):
        self.base = get_link(base)
        lower, upper = float(lower), float(upper)
        if not (0 <= lower < 1 and 0 <= upper < 1 and lower + upper < 1):
            raise ConfigError(f"lapse: asymptotes lower={lower}, upper={upper} must be >= 0 with sum < 1")
        self.lower, self.upper = lower, upper
        self._s = 1.0 - lower - upper

    def _clean(self, p):
        return np.clip(p, self.lower + 1e-12, 1 - self.upper - 1e-12)

    def __call__(self, p):
        return self.base((self._clean(p) - self.lower) / self._s)

    def inverse(self, z):
        return self.lower + self._s * self.base.inverse(z)

    def deriv(self, p):
        return self.base.deriv((self._clean(p) - self.lower) / self._s) / self._s

    def inverse_deriv(self, z):
        return self._s * self.base.inverse_deriv(z)

    def deriv2(self, p):
        return self.base.deriv2((self._clean(p) - self.lower) / self._s) / self._s**2

    def inverse_deriv2(self, z):
        return self._s * self.base.inverse_deriv2(z)


# --------------------------------------------------------------------------------------------
# batched IRLS


@dataclass
class GLMSolution:
    """Solutions of B binomial GLMs sharing one design.

    beta : (B, k) coefficients; cov : (B, k, k) inverse expected information at ``beta``;
    loglik, deviance : (B,); mu : (B, n) fitted probabilities; converged : (B,) bool;
    n_iter : (B,) Fisher-scoring iterations used.
    """

    beta: np.ndarray
    cov: np.ndarray
    loglik: np.ndarray
    deviance: np.ndarray
    mu: np.ndarray
    converged: np.ndarray
    n_iter: np.ndarray


def binomial_loglik(y: np.ndarray, mu: np.ndarray, muc: np.ndarray | None = None,
                    m: np.ndarray | float = 1.0) -> np.ndarray:
    """Binomial log-likelihood without the ``log C(m, y)`` term, summed over the last axis.

    With ``m = 1`` (0/1 responses) this is the Bernoulli log-likelihood of the trials; for
    ``y`` successes out of ``m`` identical trials it is the same number as for the expanded
    0/1 data, which is why grouping identical trials changes nothing.
    """
    if muc is None:
        muc = 1.0 - mu
    return np.sum(y * np.log(np.maximum(mu, _TINY)) + (m - y) * np.log(np.maximum(muc, _TINY)), axis=-1)


def solve_mlds_glm(
    X: np.ndarray,
    Y: np.ndarray,
    link="probit",
    *,
    weights: np.ndarray | None = None,
    beta0: np.ndarray | None = None,
    max_iter: int = 60,
    tol: float = 1e-10,
    chunk: int = 4096,
    line_search: bool = True,
    n_threads: int | None = None,
    summaries: bool = True,
) -> GLMSolution:
    """Fit ``P(y = 1) = F(X beta)`` (no intercept) for B response vectors at once.

    Newton steps on the observed information for the probit link (quadratic convergence),
    Fisher scoring for the other links; standard errors always come from the expected
    information at the solution, as in R's ``glm`` and statsmodels' ``GLM``.

    Parameters
    ----------
    X : (n, k) design matrix (shared by all replicates).
    Y : (n,) or (B, n) responses: 0/1, or success counts out of ``weights`` trials per row.
    link : a name or statsmodels link (see :func:`get_link`), or a :class:`LapseLink`.
    weights : (n,) number of identical trials each row stands for (default 1): fitting the
        grouped counts gives exactly the estimates of the expanded 0/1 trials.
    beta0 : (k,) or (B, k) start values (default zeros).
    tol : convergence when every step satisfies ``max |delta beta| <= tol * (1 + max |beta|)``.
    chunk : replicates solved per block (bounds memory to about ``8 * chunk * n`` floats).
    line_search : halve steps that lower the likelihood (costs two logs per element and
        iteration; switch off for bootstrap replicates started at the fitted estimate).
    n_threads : blocks solved in parallel threads (NumPy releases the GIL); default: CPUs.
    summaries : compute ``loglik`` and ``cov`` at the solution (NaN when False: bootstrap
        replicates only need the estimates).

    Returns
    -------
    :class:`GLMSolution` (``loglik`` and ``deviance = -2 loglik`` are those of the 0/1 trials).
    ``converged`` means the full Newton/scoring step became small; it is not a separation test
    (separated data diverge, but their steps can vanish once the probabilities round to 0 or 1):
    use :func:`detect_separation` for that.
    """
    import os
    from concurrent.futures import ThreadPoolExecutor

    link = get_link(link) if not isinstance(link, LapseLink) else link
    X = np.ascontiguousarray(X, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    squeeze = Y.ndim == 1
    Y = np.atleast_2d(Y)
    B = Y.shape[0]
    n, k = X.shape
    if Y.shape[1] != n:
        raise ConfigError(f"Y has {Y.shape[1]} trials but X has {n} rows")
    M = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    b0 = np.zeros((B, k)) if beta0 is None else np.broadcast_to(np.asarray(beta0, float), (B, k)).copy()
    XX = (X[:, :, None] * X[:, None, :]).reshape(n, k * k)
    n_threads = n_threads or os.cpu_count() or 1
    chunk = max(1, min(chunk, -(-B // n_threads)))
    starts = list(range(0, B, chunk))

    def run(s):
        return _solve_block(X, XX, Y[s : s + chunk], M, link, b0[s : s + chunk], max_iter, tol,
                            line_search, summaries)

    if len(starts) > 1 and n_threads > 1:
        with ThreadPoolExecutor(max_workers=min(n_threads, len(starts))) as ex:
            out = list(ex.map(run, starts))
    else:
        out = [run(s) for s in starts]
    sol = GLMSolution(*[np.concatenate([o[i] for o in out]) for i in range(7)])
    if squeeze:
        sol = GLMSolution(*[a[0] for a in (sol.beta, sol.cov, sol.loglik, sol.deviance, sol.mu,
                                             sol.converged, sol.n_iter)])
    return sol


def _is_probit(link) -> bool:
    return type(link) is _sm_links().Probit


def _irls_pieces(X, XX, Y, M, beta, link, *, newton=True, need_ll=True, need_info=True):
    """(loglik, information (B, k, k), score (B, k), mu) at ``beta``.

    With ``newton`` and the probit link the information is the observed one (Newton);
    otherwise the expected one (Fisher scoring).
    """
    eta = beta @ X.T
    k = X.shape[1]
    if _is_probit(link):
        q = special.ndtr(-np.abs(eta))  # the smaller tail, accurate far out
        pos = eta >= 0
        mu = np.where(pos, 1.0 - q, q)
        muc = np.where(pos, q, 1.0 - q)
        phi = np.exp(-0.5 * eta * eta) * (1.0 / np.sqrt(2 * np.pi))
        l1 = phi / np.maximum(mu, _TINY)
        l0 = phi / np.maximum(muc, _TINY)
        Y0 = M - Y
        score = (Y * l1 - Y0 * l0) @ X
        if need_info:
            w = (Y * l1 * (l1 + eta) + Y0 * l0 * (l0 - eta) if newton
                 else M * phi * phi / np.maximum(mu * muc, _TINY))
            info = (w @ XX).reshape(-1, k, k)
        else:
            info = None
    else:
        mu, muc, dmu = mu_and_deriv(link, eta)
        var = np.maximum(mu * muc, _TINY)
        dv = dmu / var
        score = ((Y - M * mu) * dv) @ X
        info = (((M * dmu) * dv) @ XX).reshape(-1, k, k) if need_info else None
    ll = binomial_loglik(Y, mu, muc, M) if need_ll else None
    return ll, info, score, mu


def _expected_info(X, XX, M, beta, link):
    eta = beta @ X.T
    mu, muc, dmu = mu_and_deriv(link, eta)
    k = X.shape[1]
    return (((M * dmu) * dmu / np.maximum(mu * muc, _TINY)) @ XX).reshape(-1, k, k)


def _solve_block(X, XX, Y, M, link, beta, max_iter, tol, line_search=True, summaries=True):
    B, k = beta.shape
    converged = np.zeros(B, dtype=bool)
    n_iter = np.zeros(B, dtype=np.int64)
    ll, info, score, mu = _irls_pieces(X, XX, Y, M, beta, link, need_ll=line_search)
    act = np.arange(B)
    for _ in range(max_iter):
        if act.size == 0:
            break
        try:
            step = np.linalg.solve(info[act], score[act][:, :, None])[:, :, 0]
        except np.linalg.LinAlgError:
            step = np.stack([np.linalg.lstsq(info[a], score[a], rcond=None)[0] for a in act])
        b_old = beta[act]
        Ya = Y[act]
        t = np.ones(act.size)
        if line_search:
            ll_old = ll[act]
            # step halving where the log-likelihood would decrease
            for _half in range(30):
                b_new = b_old + t[:, None] * step
                ll_new, info_new, score_new, mu_new = _irls_pieces(X, XX, Ya, M, b_new, link)
                worse = ~(ll_new >= ll_old - 1e-10 * (1.0 + np.abs(ll_old)))
                if not worse.any():
                    break
                t[worse] *= 0.5
            ll[act] = ll_new
        else:
            b_new = b_old + step
            _, info_new, score_new, mu_new = _irls_pieces(X, XX, Ya, M, b_new, link, need_ll=False)
        beta[act] = b_new
        info[act] = info_new
        score[act] = score_new
        mu[act] = mu_new
        n_iter[act] += 1
        # converged when the full step is small (a step shrunk by the line search is not)
        small = np.max(np.abs(step), axis=1) <= tol * (1.0 + np.max(np.abs(b_new), axis=1))
        small |= ~np.all(np.isfinite(b_new), axis=1)
        converged[act[small]] = True
        act = act[~small]
    # no cut-off on |eta|: heavy-tailed links (cauchit) have large |eta| at a proper maximum;
    # separated data are found by linear programming (detect_separation), not by size
    converged &= np.all(np.isfinite(beta), axis=1)
    if not summaries:
        nan = np.full(B, np.nan)
        return beta, np.full((B, k, k), np.nan), nan, nan, mu, converged, n_iter
    if not line_search:
        mu_, muc_, _ = mu_and_deriv(link, beta @ X.T)
        ll = binomial_loglik(Y, mu_, muc_, M)
    info = _expected_info(X, XX, M, beta, link)
    with np.errstate(all="ignore"):
        try:
            cov = np.linalg.inv(info)
        except np.linalg.LinAlgError:
            cov = np.linalg.pinv(info)
    dev = -2.0 * ll  # saturated log-likelihood of 0/1 trials is 0
    return beta, cov, ll, dev, mu, converged, n_iter


# --------------------------------------------------------------------------------------------
# separation and Firth


def detect_separation(X: np.ndarray, y: np.ndarray, tol: float = 1e-7):
    """Linear-programming check for (quasi-)complete separation (Konis 2007).

    Looks for a direction ``beta`` (|beta_j| <= 1) with ``s_i x_i^T beta >= 0`` for all trials,
    ``s_i = 2 y_i - 1``, and maximises the sum; a positive maximum means the likelihood keeps
    increasing along ``beta`` and the maximum likelihood estimate does not exist.

    Returns
    -------
    (separated, direction, trials): bool, (k,) direction, indices of the separated trials.
    """
    from scipy.optimize import linprog

    X = np.asarray(X, dtype=np.float64)
    s = 2.0 * np.asarray(y, dtype=np.float64) - 1.0
    A = s[:, None] * X
    res = linprog(-A.sum(axis=0), A_ub=-A, b_ub=np.zeros(len(A)), bounds=[(-1, 1)] * X.shape[1],
                  method="highs")
    if res.status != 0 or -res.fun <= tol * max(1.0, len(A)):
        return False, np.zeros(X.shape[1]), np.array([], dtype=np.int64)
    direction = res.x
    trials = np.flatnonzero(A @ direction > tol)
    return True, direction, trials


def solve_as_mean(
    X: np.ndarray,
    Y: np.ndarray,
    link="probit",
    *,
    weights: np.ndarray | None = None,
    beta0: np.ndarray | None = None,
    max_iter: int = 500,
    tol: float = 1e-10,
    summaries: bool = True,
) -> GLMSolution:
    """Mean-bias-reducing adjusted-score fit of B binomial GLMs on one design: brglm2's
    ``type = "AS_mean"`` (Firth 1993; Kosmidis & Firth 2009), the bias reduction of R's
    ``brglm`` used in the MLDS vignette.

    Solves ``U(beta) + A(beta) = 0`` with ``A_j = sum_i h_i d2_i / (2 d_i) x_ij`` (``h`` the
    leverages of the weighted design, ``d``, ``d2`` the first and second derivatives of ``mu``
    in ``eta``) by quasi-Fisher scoring, as brglm2 does.  For the logit link this is the
    Jeffreys-penalised fit (:func:`solve_firth`); for other links the two differ.

    Arguments as :func:`solve_mlds_glm`; ``loglik`` and ``cov`` (inverse expected information)
    are evaluated at the solution, ``n_iter`` counts scoring steps.
    """
    link = get_link(link) if not isinstance(link, LapseLink) else link
    X = np.ascontiguousarray(X, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    squeeze = Y.ndim == 1
    Y = np.atleast_2d(Y)
    B, (n, k) = Y.shape[0], X.shape
    M = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    beta = np.zeros((B, k)) if beta0 is None else np.broadcast_to(np.asarray(beta0, float), (B, k)).copy()
    converged = np.zeros(B, dtype=bool)
    n_iter = np.zeros(B, dtype=np.int64)
    act = np.arange(B)
    for _ in range(max_iter):
        if act.size == 0:
            break
        eta = beta[act] @ X.T
        mu, muc, dmu = mu_and_deriv(link, eta)
        d2 = mu_deriv2(link, eta)
        var = np.maximum(mu * muc, _TINY)
        w = M * dmu * dmu / var
        info = np.einsum("br,ri,rj->bij", w, X, X)
        try:
            C = np.linalg.inv(info)
        except np.linalg.LinAlgError:
            C = np.linalg.pinv(info)
        h = w * np.einsum("ri,bij,rj->br", X, C, X)
        score = ((Y[act] - M * mu) * dmu / var) @ X
        adj = (0.5 * h * d2 / np.where(dmu > 0, dmu, _TINY)) @ X
        step = np.einsum("bij,bj->bi", C, score + adj)
        beta[act] += step
        n_iter[act] += 1
        small = np.max(np.abs(step), axis=1) <= tol * (1.0 + np.max(np.abs(beta[act]), axis=1))
        small |= ~np.all(np.isfinite(step), axis=1)
        converged[act[small]] = True
        act = act[~small]
    converged &= np.all(np.isfinite(beta), axis=1)
    eta = beta @ X.T
    mu, muc, _ = mu_and_deriv(link, eta)
    if summaries:
        ll = binomial_loglik(Y, mu, muc, M)
        XX = (X[:, :, None] * X[:, None, :]).reshape(n, k * k)
        with np.errstate(all="ignore"):
            cov = np.linalg.pinv(_expected_info(X, XX, M, beta, link))
    else:
        ll, cov = np.full(B, np.nan), np.full((B, k, k), np.nan)
    sol = GLMSolution(beta, cov, ll, -2.0 * ll, mu, converged, n_iter)
    if squeeze:
        sol = GLMSolution(*[a[0] for a in (sol.beta, sol.cov, sol.loglik, sol.deviance, sol.mu,
                                             sol.converged, sol.n_iter)])
    return sol


def _torch_mu(link, eta):
    import torch

    links = _sm_links()
    base = link.base if isinstance(link, LapseLink) else link
    t = type(base)
    if t is links.Probit:
        F = torch.special.ndtr(eta)
    elif t is links.Logit:
        F = torch.sigmoid(eta)
    elif t is links.Cauchy:
        F = 0.5 + torch.atan(eta) / np.pi
    elif t is links.CLogLog:
        F = 1.0 - torch.exp(-torch.exp(eta))
    elif t is links.LogLog:
        F = torch.exp(-torch.exp(-eta))
    else:
        raise ConfigError(
            f"firth: link {link_name(base)!r} is not supported; use probit, logit, cauchit, cloglog or loglog"
        )
    if isinstance(link, LapseLink):
        F = link.lower + (1 - link.lower - link.upper) * F
    return F


def _torch_mu_deriv(link, eta):
    """(mu, 1 - mu, dmu/deta) in torch, analytically and without cancellation in the tails."""
    import torch

    links = _sm_links()
    base = link.base if isinstance(link, LapseLink) else link
    t = type(base)
    if t is links.Probit:
        F, Fc = torch.special.ndtr(eta), torch.special.ndtr(-eta)
        dF = torch.exp(-0.5 * eta * eta) / np.sqrt(2 * np.pi)
    elif t is links.Logit:
        F, Fc = torch.sigmoid(eta), torch.sigmoid(-eta)
        dF = F * Fc
    elif t is links.Cauchy:
        a = torch.atan(eta) / np.pi
        F, Fc, dF = 0.5 + a, 0.5 - a, 1.0 / (np.pi * (1 + eta * eta))
    elif t is links.CLogLog:
        e = torch.exp(eta)
        F, Fc, dF = -torch.expm1(-e), torch.exp(-e), e * torch.exp(-e)
    elif t is links.LogLog:
        e = torch.exp(-eta)
        F, Fc, dF = torch.exp(-e), -torch.expm1(-e), e * torch.exp(-e)
    else:
        raise ConfigError(f"link {link_name(base)!r} is not supported here; use probit, logit, cauchit, "
                          "cloglog or loglog")
    if isinstance(link, LapseLink):
        s = 1 - link.lower - link.upper
        F, Fc, dF = link.lower + s * F, link.upper + s * Fc, s * dF
    return F, Fc, dF


def solve_firth(X: np.ndarray, y: np.ndarray, link="probit", *, max_iter: int = 100, tol: float = 1e-10):
    """Bias-reduced fit: maximise the Jeffreys-prior penalised log-likelihood
    ``l(beta) + 0.5 log det(X^T W(beta) X)`` (Firth 1993; for the logit link this is exactly
    Firth's bias reduction, for other links it is the Jeffreys-penalty variant of brglm2,
    which always has finite estimates, Kosmidis & Firth 2021).

    Returns ``(beta (k,), cov (k, k) inverse expected information, loglik (unpenalised),
    penalised loglik, converged)``.
    """
    import torch

    from brainattn.psychophysics.design import _grouped

    link = get_link(link) if not isinstance(link, LapseLink) else link
    # identical trials grouped (same likelihood and penalty, fewer rows to differentiate)
    Xu, _inv, m, kk = _grouped(np.asarray(X, dtype=np.float64), np.asarray(y, dtype=np.float64))
    Xt, mt, yt = (torch.as_tensor(a) for a in (Xu, m, kk))
    k = Xt.shape[1]

    def objective(beta):
        eta = Xt @ beta
        mu, muc, dmu = _torch_mu_deriv(link, eta)
        mu, muc = mu.clamp_min(1e-300), muc.clamp_min(1e-300)
        ll = torch.sum(yt * torch.log(mu) + (mt - yt) * torch.log(muc))
        w = mt * dmu * dmu / (mu * muc)
        info = Xt.T @ (w[:, None] * Xt)
        return ll + 0.5 * torch.logdet(info), ll

    beta = torch.zeros(k, dtype=torch.float64, requires_grad=True)
    converged = False
    f_old = float(objective(beta)[0].detach())
    for _ in range(max_iter):
        g = torch.autograd.grad(objective(beta)[0], beta, create_graph=True)[0]
        H = torch.stack([torch.autograd.grad(g[j], beta, retain_graph=True)[0] for j in range(k)])
        g = g.detach()
        H = H.detach()
        try:
            step = torch.linalg.solve(-H, g)
            if torch.dot(step, g) <= 0:  # not an ascent direction: fall back to gradient
                step = g
        except RuntimeError:
            step = g
        t = 1.0
        with torch.no_grad():
            b0 = beta.detach().clone()
        for _h in range(40):
            cand = (b0 + t * step).requires_grad_(True)
            f_new, _ = objective(cand)
            if torch.isfinite(f_new) and float(f_new.detach()) >= f_old - 1e-12 * (1 + abs(float(f_old))):
                break
            t *= 0.5
        beta = cand
        f_old = float(f_new.detach())
        if float(torch.max(torch.abs(t * step))) <= tol * (1 + float(torch.max(torch.abs(b0)))):
            converged = True
            break
    beta_np = beta.detach().numpy().copy()
    penalised = f_old
    sol = solve_mlds_glm(Xu, kk, link, weights=m, beta0=beta_np, max_iter=0)
    return beta_np, sol.cov, float(sol.loglik), penalised, converged
