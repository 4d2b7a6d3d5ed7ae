"""Analytic predictions of the Pavlovian model, beside which every simulation is drawn.

SNR, bit error, cosine and top-1 identification from the crosstalk theory, the average-case and
error-free capacities, the learning rules' limits, error propagation through layers and heads,
and the two fits that turn simulated curves into capacities and exponents. Derivations: the
docstring of :mod:`brainattn.theory.pavlovian`.
"""

from __future__ import annotations

import math

import numpy as np


def _phi(x):
    x = np.asarray(x, dtype=float)
    from scipy.special import ndtr

    return ndtr(x)


def snr_theory(n, d_k):
    """Hebbian SNR ``d_k / (N - 1)`` (infinite for a single pair)."""
    n, d_k = np.asarray(n, float), np.asarray(d_k, float)
    with np.errstate(divide="ignore"):
        return np.where(n > 1, d_k / np.maximum(n - 1, 1e-300), np.inf)


def bit_error_from_snr(snr):
    """Sign-readout error ``Phi(-sqrt(SNR))`` under Gaussian crosstalk."""
    snr = np.asarray(snr, float)
    return _phi(-np.sqrt(snr))


def cosine_from_snr(snr):
    """``1 / sqrt(1 + 1/SNR)``: cosine of the retrieved US with the true one."""
    snr = np.asarray(snr, float)
    with np.errstate(divide="ignore"):
        return 1.0 / np.sqrt(1.0 + 1.0 / snr)


def top1_theory(n, d_k):
    """Approximate top-1 identification ``E_S[Phi((1 + S)/sigma)^(N-1)]``.

    ``S ~ N(0, (N-1)/d_k^2)`` is the fluctuation of the true US's own score, ``sigma^2 = 2/d_k +
    (N-2)/d_k^2`` the variance of a rival's; 48-node Gauss-Hermite quadrature over ``S``.
    """
    from numpy.polynomial.hermite_e import hermegauss

    n, d = np.broadcast_arrays(np.asarray(n, float), np.asarray(d_k, float))
    z, w = hermegauss(48)
    w = w / w.sum()
    sigma = np.sqrt(2.0 / d + np.maximum(n - 2, 0) / d**2)[..., None]
    s = (np.sqrt(np.maximum(n - 1, 0)) / d)[..., None] * z
    p = _phi((1.0 + s) / sigma) ** np.maximum(n - 1, 0)[..., None]
    return (p * w).sum(-1)


def capacity_average_theory(d_k, error_rate: float):
    """``N_eps = 1 + d_k / z^2`` with ``z = Phi^-1(1 - eps)``: pairs stored at bit error eps."""
    from scipy.special import ndtri

    z = ndtri(1.0 - error_rate)
    return 1.0 + np.asarray(d_k, float) / z**2


def capacity_worst_case_theory(d_k, threshold: float = 1.0):
    """Mean-field error-free capacity ``1 + threshold * sqrt(pi d_k / 2)`` (``O(sqrt d_k)``)."""
    return 1.0 + threshold * np.sqrt(np.pi * np.asarray(d_k, float) / 2.0)


def capacity_worst_case_ev_theory(d_k, threshold: float = 1.0) -> np.ndarray:
    """Extreme-value refinement of the error-free capacity (integer pairs per ``d_k``).

    Largest N with ``(N-1) mu + sqrt(N-1) s Phi^-1(2^(-1/N)) < threshold``, ``mu =
    sqrt(2/(pi d_k))``, ``s^2 = (1 - 2/pi)/d_k``: the median of the largest of N independent
    Gaussian crosstalk bounds.
    """
    from scipy.special import ndtri

    out = []
    for d in np.atleast_1d(np.asarray(d_k, float)):
        mu, s = math.sqrt(2 / (math.pi * d)), math.sqrt((1 - 2 / math.pi) / d)
        n = 1
        while True:
            m = n  # N - 1 for N = n + 1
            if m * mu + math.sqrt(m) * s * ndtri(0.5 ** (1.0 / (n + 1))) >= threshold:
                break
            n += 1
        out.append(n)
    return np.asarray(out, dtype=float)


def delta_snr_theory(n, d_k):
    """Least-squares limit of the delta rule: infinite for ``N <= d_k``, else ``d_k / (N - d_k)``."""
    n, d = np.asarray(n, float), np.asarray(d_k, float)
    with np.errstate(divide="ignore"):
        return np.where(n <= d, np.inf, d / np.maximum(n - d, 1e-300))


def softmax_snr_theory(n, d_k, beta):
    """Softmax retrieval ``exp(2 beta) / ((N - 1) exp(2 beta^2 / d_k))`` (Gaussian approximation)."""
    n, d = np.asarray(n, float), np.asarray(d_k, float)
    with np.errstate(divide="ignore", over="ignore"):
        log_snr = 2.0 * beta - 2.0 * beta**2 / d - np.log(np.maximum(n - 1, 1e-300))
        return np.where(n > 1, np.exp(np.minimum(log_snr, 700.0)), np.inf)


def decay_theory(n: int, d_k: int, decay: float) -> tuple[float, float]:
    """Hebbian-with-decay bit error and cosine, averaged over the ages of the N stored pairs."""
    age = np.arange(n, dtype=float)
    p = decay ** (2 * age)
    s = p.sum() - p  # crosstalk weight seen by the pair of each age
    with np.errstate(divide="ignore"):
        snr = np.where(s > 0, p * d_k / np.maximum(s, 1e-300), np.inf)
    return float(bit_error_from_snr(snr).mean()), float(cosine_from_snr(snr).mean())


def propagation_theory(n: int, d_k: int, heads, n_layers: int) -> np.ndarray:
    """Error power after each layer, ``rho_l = ((N-1) + N rho_{l-1}) / (d_k H)``.

    Returns ``(n_layers, len(heads))`` for layers 1..n_layers.
    """
    heads = np.asarray(heads, float)
    out = np.zeros((n_layers, heads.size))
    rho = np.zeros(heads.size)
    for l in range(n_layers):
        rho = ((n - 1) + n * rho) / (d_k * heads)
        out[l] = rho
    return out


def propagation_limit_theory(n: int, d_k: int, heads) -> np.ndarray:
    """Stationary error ``(N-1)/(d_k H - N)`` when ``d_k H > N``, else ``inf``."""
    h = np.asarray(heads, float)
    denom = d_k * h - n
    with np.errstate(divide="ignore"):
        return np.where(denom > 0, (n - 1) / np.maximum(denom, 1e-300), np.inf)


def fit_exponent(d_k, capacity) -> float:
    """Slope of the least-squares line through ``(log d_k, log capacity)``."""
    x, y = np.log(np.asarray(d_k, float)), np.log(np.asarray(capacity, float))
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 2:
        return float("nan")
    return float(np.polyfit(x[ok], y[ok], 1)[0])


def capacity_from_curve(n, error, error_rate: float) -> float:
    """Largest N with ``error <= error_rate``, by log-log interpolation between swept points.

    ``n`` increasing, ``error`` the measured error at each N (non-decreasing in expectation).
    Returns NaN when the curve never crosses ``error_rate`` inside the sweep.
    """
    n, e = np.asarray(n, float), np.asarray(error, float)
    above = np.nonzero(e > error_rate)[0]
    if above.size == 0 or above[0] == 0:
        return float("nan")
    i = above[0]
    lo, hi = max(e[i - 1], 1e-12), e[i]
    x0, x1 = np.log(n[i - 1]), np.log(n[i])
    t = (np.log(error_rate) - np.log(lo)) / (np.log(hi) - np.log(lo))
    return float(np.exp(x0 + t * (x1 - x0)))
