r"""Attention as Pavlovian conditioning: capacity of a linear associative memory.

Linear attention read as classical conditioning (Qiao, arXiv 2508.08289): keys are
conditioned stimuli (CS), values unconditioned stimuli (US), a query is a test stimulus. A
Hebbian rule stores N CS-US pairs in the memory

.. math:: M = \sum_{i=1}^{N} v_i k_i^\top \qquad (d_v \times d_k),

and a query ``q`` retrieves :math:`\hat v = M q = \sum_i v_i (k_i \cdot q)` -- linear attention
without normalisation.

Model and definitions (used by every function here)
---------------------------------------------------
- Keys ``k_i`` are independent uniform unit vectors in ``d_k`` dims (Gaussian, normalised).
- Values ``v_i`` are random binary US patterns, entries :math:`\pm 1/\sqrt{d_v}` (unit norm),
  with ``d_v = d_k`` (one attention head).
- Retrieval of pair ``j`` queries with its own CS, ``q = k_j``. With :math:`c_i = k_i\cdot k_j`,

  .. math:: \hat v_j = v_j + n_j, \qquad n_j = \sum_{i\ne j} c_i v_i \quad\text{(crosstalk)}.

- **Crosstalk variance.** :math:`E[c_i^2] = 1/d_k` exactly for uniform unit vectors, and the
  ``v_i`` are independent with mean zero, so :math:`E\|n_j\|^2 = (N-1)/d_k`.
- **SNR** is signal power over crosstalk power,
  :math:`\mathrm{SNR} = \|v_j\|^2 / E\|n_j\|^2 = d_k/(N-1) \approx d_k/N`. It is measured as
  ``1 / mean ||v_hat - v||^2`` over trials and queries (a ratio of means).
- **Cosine** :math:`\cos(\hat v_j, v_j) \approx 1/\sqrt{1 + (N-1)/d_k}` (the norms concentrate).
- **Bit error**: each US feature is read out by its sign. Per feature the signal is
  :math:`\pm 1/\sqrt{d_v}` and the crosstalk is a sum of ``N-1`` independent terms of variance
  :math:`1/(d_k d_v)`, so by the central limit theorem
  :math:`P_\mathrm{bit} = \Phi(-\sqrt{\mathrm{SNR}}) = \Phi(-\sqrt{d_k/(N-1)})`.
- **Top-1 identification**: :math:`\hat v_j` is compared (dot product) with the N stored US and
  counts as correct when ``v_j`` scores highest. Its own score is :math:`1 + S`,
  :math:`S = \sum_{l\ne j} c_l\, v_j\cdot v_l` (variance :math:`(N-1)/d_k^2`, shared by all
  comparisons); a rival ``i`` scores :math:`c_i + v_i\cdot v_j + \sum_{l\ne i,j} c_l\, v_i\cdot v_l`,
  of variance :math:`\sigma^2 = 2/d_k + (N-2)/d_k^2`. Treating the rivals as independent given
  ``S``, :math:`P_\mathrm{top1} \approx E_S[\Phi((1+S)/\sigma)^{N-1}]` (Gauss-Hermite quadrature;
  an approximation: the rivals stay weakly correlated).
- **Average-case capacity at error rate** :math:`\varepsilon`: the largest N whose bit error
  rate is at most :math:`\varepsilon`. From :math:`\Phi(-\sqrt{d_k/(N-1)}) = \varepsilon`:
  :math:`N_\varepsilon = 1 + d_k / z_\varepsilon^2` with :math:`z_\varepsilon = \Phi^{-1}(1-\varepsilon)`,
  i.e. :math:`O(d_k)`. Measured by log-log interpolation of the simulated bit error between
  the swept N.
- **Error-free (worst-case) capacity**: recall is *guaranteed* for every bit of every stored
  pair, whatever the binary US patterns, when the crosstalk bound
  :math:`W_j = \sum_{i\ne j} |c_i| < \theta` holds for every ``j`` (``theta = 1``: the worst
  case aligns all crosstalk against one bit of size :math:`1/\sqrt{d_v}`). The capacity is the
  largest N for which :math:`\max_j W_j < \theta` (median over trials). Since
  :math:`E|c_i| = \sqrt{2/(\pi d_k)}`, the mean-field prediction is
  :math:`N_\mathrm{wc} = 1 + \theta\sqrt{\pi d_k/2}`, i.e. :math:`O(\sqrt{d_k})`. The max
  over ``j`` pulls the simulation below it; the extreme-value refinement treats the ``W_j`` as
  independent Gaussians of mean :math:`(N-1)\mu` and variance :math:`(N-1)s^2`
  (:math:`\mu = \sqrt{2/(\pi d_k)}`, :math:`s^2 = (1 - 2/\pi)/d_k`), whose median maximum is
  :math:`(N-1)\mu + \sqrt{N-1}\, s\, \Phi^{-1}(2^{-1/N})`; the capacity is the largest N for
  which that stays below :math:`\theta` (still :math:`O(\sqrt{d_k})` to leading order).

Learning rules compared on the same CS-US streams (``d_k`` fixed, N swept):

- Hebbian outer product (above).
- Delta rule :math:`M \leftarrow M + \eta (v_t - M k_t) k_t^\top`, repeated for a few epochs; it
  converges to the least-squares memory :math:`M = V^\top K (K^\top K)^{+}`, which recalls
  every pair exactly for :math:`N \le d_k`; for :math:`N > d_k` the retrieval is row ``j`` of the
  hat matrix (:math:`H_{jj} \approx d_k/N`), giving :math:`\mathrm{SNR} = d_k/(N-d_k)`.
  That is the *least-squares limit*: with a constant rate the rule keeps cycling when
  :math:`N > d_k` (no memory fits all pairs) and ends worse than the limit, and near
  :math:`N = d_k` it converges slowly (the key matrix is ill-conditioned), so the simulation
  sits above the theory's bit error there.
- Hebbian with decay :math:`M \leftarrow \lambda M + v_t k_t^\top`: the pair of age ``a``
  (0 = newest) has signal :math:`\lambda^a` and crosstalk variance
  :math:`S_a/d_k`, :math:`S_a = \sum_{a'\ne a} \lambda^{2a'}`; per-pair bit error
  :math:`\Phi(-\lambda^a\sqrt{d_k/S_a})`, averaged over ages (recency: old pairs are forgotten).
- Softmax attention :math:`\hat v = \sum_i \mathrm{softmax}_i(\beta\, k_i\cdot q)\, v_i` with
  :math:`\beta = \sqrt{d_k}` by default (standard scaled dot-product attention for keys of
  norm :math:`\sqrt{d_k}`). With :math:`c_i \approx N(0, 1/d_k)`,
  :math:`\mathrm{SNR} \approx e^{2\beta} / ((N-1) e^{2\beta^2/d_k})` (log-normal crosstalk,
  Gaussian approximation): exponentially larger capacity, the non-linear reference.

Error propagation through ``L`` stacked layers of ``H`` redundant heads (width ``d_k``, N pairs
per layer). Layer ``l`` maps item ``i``'s code to the next code ``v_i^{(l)}``; each head ``h``
stores the same pairs under its own random CS code :math:`k_i^{(l,h)}` and the head outputs
are averaged. A head reads the previous layer through its own key map, modelled as sending the
stored item exactly to its code and the residual error ``e`` (power :math:`\rho_{l-1}`) through
a random rotation (isotropic, norm preserving, independent across heads). Then

.. math:: \rho_l = E\|\hat v^{(l)} - v^{(l)}\|^2 = \frac{(N-1) + N\rho_{l-1}}{d_k H}, \qquad \rho_0 = 0,

so one layer gives :math:`(N-1)/(d_k H)` (variance divided by H), errors grow geometrically with
depth when :math:`N/(d_k H)` is not small, and the stationary error is
:math:`(N-1)/(d_k H - N)` when :math:`d_k H > N` (unbounded otherwise): depth, width and head
redundancy trade against each other through :math:`d_k H / N`.

All tensors are ``float32`` on the chosen device; trials are batched (``max_batch_elements``).
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch

from brainattn.errors import ConfigError

QUICK: dict[str, Any] = {
    "seed": 0,
    # capacity sweep over d_k and the load N / d_k
    "d_k": [32, 64, 128, 256],
    "load": [2.0 ** (e / 2) for e in range(-8, 7)],  # N / d_k from 1/16 to 8
    "n_trials": 32,
    "n_queries": 32,
    "error_rate": 0.05,
    "worst_case_threshold": 1.0,
    "worst_case_trials": 200,
    # learning rules on the same streams
    "rules_d_k": 64,
    "rules_n": [8, 16, 32, 48, 64, 96, 128, 256],
    "rules_trials": 32,
    "delta_lr": 1.0,
    "delta_epochs": 10,
    "decay": 0.97,
    "softmax_beta": None,  # None: sqrt(rules_d_k)
    # error propagation through layers and heads
    "prop_d_k": 64,
    "prop_n": 16,
    "prop_layers": 6,
    "prop_heads": [1, 2, 4, 8, 16],
    "prop_trials": 128,
    # memory knob: at most this many floats per batched (trials, N, d_k) key tensor
    "max_batch_elements": 2**23,
}

FULL: dict[str, Any] = {
    **QUICK,
    "d_k": [32, 64, 128, 256, 512, 1024],
    "n_trials": 1000,
    "n_queries": 128,
    "worst_case_trials": 1000,
    "rules_d_k": 256,
    "rules_n": [32, 64, 128, 192, 256, 384, 512, 1024],
    "rules_trials": 256,
    "delta_epochs": 20,
    "decay": 0.99,
    "prop_d_k": 256,
    "prop_n": 64,
    "prop_layers": 10,
    "prop_heads": [1, 2, 4, 8, 16, 32],
    "prop_trials": 1000,
    "max_batch_elements": 2**28,
}

RULES = ("hebbian", "delta", "hebbian_decay", "softmax")

# --------------------------------------------------------------------------------------------
# stimuli and memories (plain functions on tensors)


def random_keys(
    n_trials: int, n: int, d: int, *, generator: torch.Generator, device=None
) -> torch.Tensor:
    """Uniform random unit CS vectors, shape ``(n_trials, n, d)``."""
    k = torch.randn(n_trials, n, d, generator=generator, device=device)
    return k / k.norm(dim=-1, keepdim=True)


def random_values(
    n_trials: int, n: int, d: int, *, generator: torch.Generator, device=None
) -> torch.Tensor:
    """Random binary US patterns with entries ``+-1/sqrt(d)`` (unit norm), ``(n_trials, n, d)``."""
    # 32 random bits per draw: the generator, not the arithmetic, is the cost on a CPU
    total = n_trials * n * d
    words = torch.randint(0, 2**32, ((total + 31) // 32,), generator=generator, device=device)
    shifts = torch.arange(32, device=device, dtype=torch.int64)
    bits = ((words[:, None] >> shifts) & 1).reshape(-1)[:total].view(n_trials, n, d)
    return (bits.to(torch.float32) * 2.0 - 1.0) / math.sqrt(d)


def hebbian_memory(keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``M = sum_i v_i k_i^T``: keys ``(B, N, d_k)``, values ``(B, N, d_v)`` -> ``(B, d_v, d_k)``."""
    return values.transpose(-1, -2) @ keys


def decay_memory(keys: torch.Tensor, values: torch.Tensor, decay: float) -> torch.Tensor:
    """Hebbian with forgetting, ``M <- decay * M + v_t k_t^T`` over t = 0..N-1 (closed form).

    Pair ``t`` ends with weight ``decay ** (N - 1 - t)``. Shapes as :func:`hebbian_memory`.
    """
    n = keys.shape[-2]
    age = torch.arange(n - 1, -1, -1, device=keys.device, dtype=keys.dtype)
    w = torch.as_tensor(decay, dtype=keys.dtype, device=keys.device) ** age
    return (values * w[:, None]).transpose(-1, -2) @ keys


def delta_rule_memory(
    keys: torch.Tensor, values: torch.Tensor, *, lr: float = 1.0, epochs: int = 1
) -> torch.Tensor:
    """Error-correcting (Widrow-Hoff) rule ``M <- M + lr (v_t - M k_t) k_t^T``.

    The pairs are presented in order t = 0..N-1, ``epochs`` times. Shapes as
    :func:`hebbian_memory`; returns ``(B, d_v, d_k)``.
    """
    b, n, dk = keys.shape
    m = keys.new_zeros(b, values.shape[-1], dk)
    for _ in range(epochs):
        for t in range(n):
            k = keys[:, t, :, None]  # (B, d_k, 1)
            err = values[:, t, :, None] - torch.bmm(m, k)  # (B, d_v, 1)
            m.baddbmm_(err, k.transpose(1, 2), alpha=lr)
    return m


def retrieve(memory: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """Linear retrieval ``v_hat = M q``: memory ``(B, d_v, d_k)``, queries ``(B, Q, d_k)`` -> ``(B, Q, d_v)``."""
    return queries @ memory.transpose(-1, -2)


def linear_attention(keys: torch.Tensor, values: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """``sum_i v_i (k_i . q)`` without forming M (same as ``retrieve(hebbian_memory(k, v), q)``).

    Cheaper when ``Q * N < d_k * d_v``; shapes ``(B, N, d_k)``, ``(B, N, d_v)``, ``(B, Q, d_k)``.
    """
    return (queries @ keys.transpose(-1, -2)) @ values


def _attention_fn():
    """``brainattn.kernels.attention`` when it is importable, else torch's SDPA."""
    try:
        from brainattn.kernels import attention  # type: ignore[attr-defined]

        return attention
    except Exception:  # the kernel package is optional here
        import torch.nn.functional as F

        def attention(q, k, v, *, scale=None, **_):
            return F.scaled_dot_product_attention(q, k, v, scale=scale)

        return attention


def softmax_attention(
    keys: torch.Tensor, values: torch.Tensor, queries: torch.Tensor, *, beta: float
) -> torch.Tensor:
    """``sum_i softmax_i(beta k_i . q) v_i`` (one head); shapes as :func:`linear_attention`."""
    attn = _attention_fn()
    out = attn(queries[:, None], keys[:, None], values[:, None], scale=float(beta))
    return out[:, 0]


def retrieval_stats(
    v_hat: torch.Tensor, target: torch.Tensor, stored: torch.Tensor, target_index: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Per-query retrieval quality.

    Parameters
    ----------
    v_hat : ``(B, Q, d_v)`` retrieved US.
    target : ``(B, Q, d_v)`` the true US of each query (unit norm).
    stored : ``(B, N, d_v)`` all stored US (the candidates of top-1 identification).
    target_index : ``(Q,)`` index of each query's US in ``stored``.

    Returns ``(B, Q)`` tensors: ``noise_power`` ``||v_hat - v||^2``, ``cosine``, ``bit_error``
    (fraction of features whose sign is wrong), ``top1`` (1.0 when the true US scores highest),
    ``gain`` ``v_hat . v`` and ``perp_power`` ``||v_hat - gain v||^2``.
    """
    diff = v_hat - target
    gain = (v_hat * target).sum(-1)
    perp = v_hat - gain[..., None] * target
    cos = gain / (v_hat.norm(dim=-1) * target.norm(dim=-1)).clamp_min(1e-30)
    bit = (torch.sign(v_hat) != torch.sign(target)).float().mean(-1)
    scores = v_hat @ stored.transpose(-1, -2)
    top1 = (scores.argmax(-1) == target_index[None, :]).float()
    return {
        "noise_power": (diff * diff).sum(-1),
        "cosine": cos,
        "bit_error": bit,
        "top1": top1,
        "gain": gain,
        "perp_power": (perp * perp).sum(-1),
    }


def worst_case_bound(keys: torch.Tensor) -> torch.Tensor:
    """``max_j W_j(N)`` for every prefix size N = 1..N_max of the stored keys.

    ``W_j(N) = sum_{i<N, i!=j} |k_i . k_j|`` bounds the crosstalk on pair ``j`` whatever the US
    patterns are. keys ``(B, N_max, d_k)`` -> ``(B, N_max)``; entry ``n`` is for N = n + 1.
    """
    g = (keys @ keys.transpose(-1, -2)).abs()
    g.diagonal(dim1=-2, dim2=-1).zero_()
    c = g.cumsum(-1)  # c[b, j, n] = sum_{i <= n} |k_i . k_j|
    n_max = keys.shape[-2]
    valid = torch.ones(n_max, n_max, dtype=torch.bool, device=keys.device).tril()  # j <= n
    c = c.masked_fill(~valid.T[None], float("-inf"))
    return c.max(dim=-2).values


def worst_case_capacity(keys: torch.Tensor, threshold: float = 1.0) -> torch.Tensor:
    """Largest N with ``max_j W_j(N) < threshold`` per trial (``(B,)`` int64).

    ``keys`` ``(B, N_max, d_k)``; the answer is capped at ``N_max`` (use enough keys).
    """
    bound = worst_case_bound(keys)
    return (bound < threshold).long().sum(-1)


# --------------------------------------------------------------------------------------------
# analytic predictions


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


# --------------------------------------------------------------------------------------------
# validation


def _check_int_list(config, key, minimum=1):
    vals = config[key]
    if not isinstance(vals, (list, tuple)) or not vals:
        raise ConfigError(f"config key {key!r}: expected a non-empty list, got {vals!r}")
    for v in vals:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum:
            raise ConfigError(f"config key {key!r}: expected integers >= {minimum}, got {v!r}")
    return [int(v) for v in vals]


def _check_int(config, key, minimum=1):
    v = config[key]
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum:
        raise ConfigError(f"config key {key!r}: expected an integer >= {minimum}, got {v!r}")
    return int(v)


def _check_float(config, key, lo, hi, *, lo_open=True, hi_open=True):
    v = config[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ConfigError(f"config key {key!r}: expected a number, got {v!r}")
    bad = (v <= lo if lo_open else v < lo) or (v >= hi if hi_open else v > hi)
    if bad:
        lb, rb = ("(" if lo_open else "["), (")" if hi_open else "]")
        raise ConfigError(f"config key {key!r}: {v!r} is outside {lb}{lo}, {hi}{rb}")
    return float(v)


def validate_config(config: dict[str, Any]) -> dict[str, Any]:
    """Check every value of a pavlovian config; raise :class:`ConfigError` naming the key."""
    missing = sorted(set(QUICK) - set(config))
    if missing:
        raise ConfigError(f"config key {missing[0]!r}: missing (expected keys: {', '.join(sorted(QUICK))})")
    unknown = sorted(set(config) - set(QUICK))
    if unknown:
        raise ConfigError(f"config key {unknown[0]!r}: unknown; valid keys: {', '.join(sorted(QUICK))}")
    c = dict(config)
    c["seed"] = _check_int(config, "seed", 0)
    c["d_k"] = _check_int_list(config, "d_k")
    loads = config["load"]
    if not isinstance(loads, (list, tuple)) or not loads or any(
        isinstance(x, bool) or not isinstance(x, (int, float)) or not x > 0 for x in loads
    ):
        raise ConfigError(f"config key 'load': expected a non-empty list of N/d_k > 0, got {loads!r}")
    c["load"] = sorted(float(x) for x in loads)
    for key in ("n_trials", "n_queries", "worst_case_trials", "rules_d_k", "rules_trials",
                "delta_epochs", "prop_d_k", "prop_n", "prop_layers", "prop_trials",
                "max_batch_elements"):
        c[key] = _check_int(config, key)
    c["error_rate"] = _check_float(config, "error_rate", 0.0, 0.5)
    c["worst_case_threshold"] = _check_float(config, "worst_case_threshold", 0.0, math.inf)
    c["delta_lr"] = _check_float(config, "delta_lr", 0.0, 2.0)
    c["decay"] = _check_float(config, "decay", 0.0, 1.0, hi_open=False)
    c["rules_n"] = sorted(_check_int_list(config, "rules_n"))
    c["prop_heads"] = sorted(_check_int_list(config, "prop_heads"))
    if config["softmax_beta"] is not None:
        c["softmax_beta"] = _check_float(config, "softmax_beta", 0.0, math.inf)
    return c


# --------------------------------------------------------------------------------------------
# the three experiments


def _chunks(n_trials: int, per_trial: int, max_elements: int):
    size = max(1, min(n_trials, max_elements // max(per_trial, 1)))
    start = 0
    while start < n_trials:
        yield start, min(size, n_trials - start)
        start += size


def _n_grid(d: int, loads) -> list[int]:
    return [max(2, int(round(a * d))) for a in loads]


def run_capacity(c: dict, device, bar=None) -> dict[str, np.ndarray]:
    """Hebbian storage/retrieval sweep over ``d_k`` x load; returns ``(d_k, load)`` arrays."""
    dks, loads = c["d_k"], c["load"]
    shape = (len(dks), len(loads))
    out = {k: np.zeros(shape) for k in ("snr", "cosine", "bit_error", "top1", "n_pairs")}
    gen = torch.Generator(device=device).manual_seed(c["seed"])
    for a, d in enumerate(dks):
        for b, n in enumerate(_n_grid(d, loads)):
            nq = min(c["n_queries"], n)
            # small memories get more trials so every point has >= 2 n_trials n_queries samples
            n_trials = max(c["n_trials"], -(-2 * c["n_trials"] * c["n_queries"] // n))
            acc = {"noise_power": 0.0, "cosine": 0.0, "bit_error": 0.0, "top1": 0.0}
            idx = torch.arange(nq, device=device)
            for _, size in _chunks(n_trials, n * d, c["max_batch_elements"]):
                keys = random_keys(size, n, d, generator=gen, device=device)
                vals = random_values(size, n, d, generator=gen, device=device)
                v_hat = linear_attention(keys, vals, keys[:, :nq])
                st = retrieval_stats(v_hat, vals[:, :nq], vals, idx)
                for key in acc:
                    acc[key] += float(st[key].sum())
            count = n_trials * nq
            out["snr"][a, b] = count / acc["noise_power"]
            out["cosine"][a, b] = acc["cosine"] / count
            out["bit_error"][a, b] = acc["bit_error"] / count
            out["top1"][a, b] = acc["top1"] / count
            out["n_pairs"][a, b] = n
            if bar is not None:
                bar.update(1)
    return out


def run_worst_case(c: dict, device, bar=None) -> np.ndarray:
    """Median error-free capacity per ``d_k`` (``(len(d_k),)``)."""
    gen = torch.Generator(device=device).manual_seed(c["seed"] + 1)
    theta = c["worst_case_threshold"]
    caps = np.zeros(len(c["d_k"]))
    for a, d in enumerate(c["d_k"]):
        n_max = int(math.ceil(3.0 * capacity_worst_case_theory(d, theta))) + 8
        per = []
        for _, size in _chunks(c["worst_case_trials"], n_max * max(n_max, d), c["max_batch_elements"]):
            keys = random_keys(size, n_max, d, generator=gen, device=device)
            per.append(worst_case_capacity(keys, theta).cpu())
        caps[a] = float(torch.cat(per).double().median())
        if bar is not None:
            bar.update(1)
    return caps


def run_rules(c: dict, device, bar=None) -> dict[str, np.ndarray]:
    """Hebbian, delta, decay and softmax on the same streams; ``(rule, rules_n)`` arrays."""
    d = c["rules_d_k"]
    beta = c["softmax_beta"] if c["softmax_beta"] is not None else math.sqrt(d)
    ns = c["rules_n"]
    shape = (len(RULES), len(ns))
    out = {k: np.zeros(shape) for k in ("cosine", "bit_error", "top1", "snr")}
    gen = torch.Generator(device=device).manual_seed(c["seed"] + 2)
    for b, n in enumerate(ns):
        acc = {r: {"cosine": 0.0, "bit_error": 0.0, "top1": 0.0, "gain2": 0.0, "perp": 0.0}
               for r in RULES}
        idx = torch.arange(n, device=device)
        for _, size in _chunks(c["rules_trials"], n * d, c["max_batch_elements"]):
            keys = random_keys(size, n, d, generator=gen, device=device)
            vals = random_values(size, n, d, generator=gen, device=device)
            recalls = {
                "hebbian": retrieve(hebbian_memory(keys, vals), keys),
                "delta": retrieve(
                    delta_rule_memory(keys, vals, lr=c["delta_lr"], epochs=c["delta_epochs"]), keys
                ),
                "hebbian_decay": retrieve(decay_memory(keys, vals, c["decay"]), keys),
                "softmax": softmax_attention(keys, vals, keys, beta=beta),
            }
            for r, v_hat in recalls.items():
                st = retrieval_stats(v_hat, vals, vals, idx)
                acc[r]["cosine"] += float(st["cosine"].sum())
                acc[r]["bit_error"] += float(st["bit_error"].sum())
                acc[r]["top1"] += float(st["top1"].sum())
                acc[r]["gain2"] += float((st["gain"] ** 2).sum())
                acc[r]["perp"] += float(st["perp_power"].sum())
        count = c["rules_trials"] * n
        for a, r in enumerate(RULES):
            out["cosine"][a, b] = acc[r]["cosine"] / count
            out["bit_error"][a, b] = acc[r]["bit_error"] / count
            out["top1"][a, b] = acc[r]["top1"] / count
            perp = acc[r]["perp"]
            out["snr"][a, b] = acc[r]["gain2"] / perp if perp > 0 else np.inf
        if bar is not None:
            bar.update(1)
    return out


def rules_theory(c: dict) -> dict[str, np.ndarray]:
    """Analytic bit error, cosine and SNR for each rule (``(rule, rules_n)``)."""
    d = c["rules_d_k"]
    beta = c["softmax_beta"] if c["softmax_beta"] is not None else math.sqrt(d)
    ns = np.asarray(c["rules_n"], float)
    snr = np.stack([
        snr_theory(ns, d),
        delta_snr_theory(ns, d),
        np.full(ns.shape, np.nan),
        softmax_snr_theory(ns, d, beta),
    ])
    bit = bit_error_from_snr(snr)
    cos = cosine_from_snr(snr)
    for b, n in enumerate(ns):
        bit[2, b], cos[2, b] = decay_theory(int(n), d, c["decay"])
    return {"bit_error": bit, "cosine": cos, "snr": snr}


def run_propagation(c: dict, device, bar=None) -> np.ndarray:
    """Mean error power after each of ``prop_layers`` layers for each head count; ``(L, H)``."""
    d, n, n_layers = c["prop_d_k"], c["prop_n"], c["prop_layers"]
    heads = c["prop_heads"]
    gen = torch.Generator(device=device).manual_seed(c["seed"] + 3)
    out = np.zeros((n_layers, len(heads)))
    for h_i, h in enumerate(heads):
        sums = np.zeros(n_layers)
        for _, size in _chunks(c["prop_trials"], h * n * d, c["max_batch_elements"]):
            err_norm = torch.zeros(size, n, device=device)  # ||e|| of the layer input, per query
            for l in range(n_layers):
                vals = random_values(size, n, d, generator=gen, device=device)
                keys = random_keys(size * h, n, d, generator=gen, device=device).view(size, h, n, d)
                u = random_keys(size * h, n, d, generator=gen, device=device).view(size, h, n, d)
                q = keys + err_norm[:, None, :, None] * u
                coef = q @ keys.transpose(-1, -2)  # (B, H, Q, N)
                v_hat = (coef @ vals[:, None]).mean(1)  # average of the H heads
                e = v_hat - vals
                power = (e * e).sum(-1)
                sums[l] += float(power.sum())
                err_norm = power.sqrt()
        out[:, h_i] = sums / (c["prop_trials"] * n)
        if bar is not None:
            bar.update(1)
    return out


# --------------------------------------------------------------------------------------------
# the simulation driver


def simulate(config: dict[str, Any], *, device=None):
    """Run the three Pavlovian experiments and return the figure's data as an ``xarray.Dataset``.

    Dimensions: ``d_k`` x ``load`` (capacity sweep, ``n_pairs`` = round(load * d_k)), ``rule`` x
    ``rules_n`` (learning rules at ``rules_d_k``), ``layer`` x ``heads`` (error propagation at
    ``prop_d_k``, ``prop_n`` pairs). Every ``*_sim`` variable has its analytic ``*_theory``
    beside it; the fitted capacity exponents are 0-d variables.
    """
    import xarray as xr

    from brainattn.utils import progress, resolve_device

    c = validate_config(config)
    dev = resolve_device(device if device is not None else "auto")
    n_steps = len(c["d_k"]) * (len(c["load"]) + 1) + len(c["rules_n"]) + len(c["prop_heads"])
    timings = {}

    def timed(name, fn, *args):
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        result = fn(*args)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        timings[f"time_{name}_s"] = round(time.perf_counter() - t0, 4)
        return result

    from brainattn.theory._config import cpu_threads

    with progress(total=n_steps, desc="pavlovian") as bar, cpu_threads(dev):
        cap = timed("capacity", run_capacity, c, dev, bar)
        wc = timed("worst_case", run_worst_case, c, dev, bar)
        rules = timed("rules", run_rules, c, dev, bar)
        prop = timed("propagation", run_propagation, c, dev, bar)

    dks = np.asarray(c["d_k"], float)
    n_pairs = cap["n_pairs"]
    dk2 = dks[:, None] * np.ones_like(n_pairs)
    snr_t = snr_theory(n_pairs, dk2)
    cap_avg_sim = np.array([
        capacity_from_curve(n_pairs[a], cap["bit_error"][a], c["error_rate"]) for a in range(len(dks))
    ])
    cap_avg_t = capacity_average_theory(dks, c["error_rate"])
    cap_wc_t = capacity_worst_case_theory(dks, c["worst_case_threshold"])
    rt = rules_theory(c)
    prop_t = propagation_theory(c["prop_n"], c["prop_d_k"], c["prop_heads"], c["prop_layers"])

    dl = ("d_k", "load")
    rn = ("rule", "rules_n")
    lh = ("layer", "heads")
    ds = xr.Dataset(
        {
            "snr_sim": (dl, cap["snr"], {"long_name": "signal-to-noise ratio ||v||^2/E||n||^2"}),
            "snr_theory": (dl, snr_t, {"long_name": "d_k / (N - 1)"}),
            "cosine_sim": (dl, cap["cosine"]),
            "cosine_theory": (dl, cosine_from_snr(snr_t)),
            "bit_error_sim": (dl, cap["bit_error"], {"long_name": "fraction of US signs wrong"}),
            "bit_error_theory": (dl, bit_error_from_snr(snr_t)),
            "top1_sim": (dl, cap["top1"], {"long_name": "top-1 identification among stored US"}),
            "top1_theory": (dl, top1_theory(n_pairs, dk2),
                            {"note": "rivals independent given the true US's score"}),
            "capacity_avg_sim": ("d_k", cap_avg_sim, {"units": "pairs"}),
            "capacity_avg_theory": ("d_k", cap_avg_t, {"units": "pairs"}),
            "capacity_wc_sim": ("d_k", wc, {"units": "pairs"}),
            "capacity_wc_theory": ("d_k", cap_wc_t, {"units": "pairs",
                                                     "long_name": "mean-field 1 + theta sqrt(pi d_k/2)"}),
            "capacity_wc_ev_theory": ("d_k", capacity_worst_case_ev_theory(
                dks, c["worst_case_threshold"]), {"units": "pairs",
                                                  "long_name": "extreme-value refinement"}),
            "exponent_avg_sim": ((), fit_exponent(dks, cap_avg_sim)),
            "exponent_avg_theory": ((), fit_exponent(dks, cap_avg_t)),
            "exponent_wc_sim": ((), fit_exponent(dks, wc)),
            "exponent_wc_theory": ((), fit_exponent(dks, cap_wc_t)),
            "rule_cosine_sim": (rn, rules["cosine"]),
            "rule_cosine_theory": (rn, rt["cosine"]),
            "rule_bit_error_sim": (rn, rules["bit_error"]),
            "rule_bit_error_theory": (rn, rt["bit_error"]),
            "rule_top1_sim": (rn, rules["top1"]),
            "rule_snr_sim": (rn, rules["snr"], {"long_name": "E[g^2]/E||v_hat - g v||^2, g = v_hat.v"}),
            "rule_snr_theory": (rn, rt["snr"]),
            "error_power_sim": (lh, prop, {"long_name": "E||v_hat - v||^2 after each layer"}),
            "error_power_theory": (lh, prop_t),
            "error_power_limit_theory": ("heads", propagation_limit_theory(
                c["prop_n"], c["prop_d_k"], c["prop_heads"])),
        },
        coords={
            "d_k": ("d_k", np.asarray(c["d_k"]), {"units": "dims"}),
            "load": ("load", np.asarray(c["load"]), {"long_name": "N / d_k"}),
            "n_pairs": (dl, n_pairs.astype(np.int64)),
            "rule": ("rule", list(RULES)),
            "rules_n": ("rules_n", np.asarray(c["rules_n"])),
            "layer": ("layer", np.arange(1, c["prop_layers"] + 1)),
            "heads": ("heads", np.asarray(c["prop_heads"])),
        },
        attrs={
            "simulation": "pavlovian",
            "error_rate": c["error_rate"],
            "worst_case_threshold": c["worst_case_threshold"],
            "rules_d_k": c["rules_d_k"],
            "softmax_beta": float(c["softmax_beta"] if c["softmax_beta"] is not None
                                  else math.sqrt(c["rules_d_k"])),
            "prop_d_k": c["prop_d_k"],
            "prop_n": c["prop_n"],
            "sim_device": str(dev),
            **timings,
            "config": {k: config[k] for k in sorted(config)},
        },
    )
    return ds


def summary(ds):
    """The table the CLI prints (``pandas.DataFrame``): one row per headline number.

    Columns ``quantity``, ``setting``, ``simulation``, ``theory``.
    """
    import pandas as pd

    rows = []
    for d in ds["d_k"].values:
        sel = ds.sel(d_k=d)
        rows.append((f"capacity @ bit error {ds.attrs['error_rate']:g}", f"d_k={d}",
                     float(sel["capacity_avg_sim"]), float(sel["capacity_avg_theory"])))
    for d in ds["d_k"].values:
        sel = ds.sel(d_k=d)
        rows.append(("error-free capacity", f"d_k={d}",
                     float(sel["capacity_wc_sim"]), float(sel["capacity_wc_theory"])))
        rows.append(("error-free capacity (extreme value)", f"d_k={d}",
                     float(sel["capacity_wc_sim"]), float(sel["capacity_wc_ev_theory"])))
    rows.append(("exponent: capacity ~ d_k^a", "average case",
                 float(ds["exponent_avg_sim"]), float(ds["exponent_avg_theory"])))
    rows.append(("exponent: capacity ~ d_k^a", "error-free",
                 float(ds["exponent_wc_sim"]), float(ds["exponent_wc_theory"])))
    one = ds.sel(load=1.0, method="nearest")
    for d in ds["d_k"].values:
        sel = one.sel(d_k=d)
        rows.append(("SNR", f"d_k={d}, N={int(sel['n_pairs'])}",
                     float(sel["snr_sim"]), float(sel["snr_theory"])))
    dr = ds.attrs["rules_d_k"]
    for r in ds["rule"].values:
        for n in ds["rules_n"].values:
            if n in (dr // 2, dr, 2 * dr):
                sel = ds.sel(rule=r, rules_n=n)
                rows.append((f"bit error, {r}", f"d_k={dr}, N={n}",
                             float(sel["rule_bit_error_sim"]), float(sel["rule_bit_error_theory"])))
    for h in ds["heads"].values:
        sel = ds.sel(heads=h)
        rows.append(("error power after layer 1", f"H={h}",
                     float(sel["error_power_sim"][0]), float(sel["error_power_theory"][0])))
        rows.append((f"error power after layer {int(ds['layer'][-1])}", f"H={h}",
                     float(sel["error_power_sim"][-1]), float(sel["error_power_theory"][-1])))
    return pd.DataFrame(rows, columns=["quantity", "setting", "simulation", "theory"])


def plot(ds):
    """Six panels: SNR, capacity vs d_k, cosine; learning rules, error propagation, top-1."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="paper")
    fig, axes = plt.subplots(2, 3, figsize=(16, 8.5))
    pal = sns.color_palette("viridis", ds.sizes["d_k"])
    for ax, var, title in ((axes[0, 2], "cosine", "retrieval cosine vs 1/sqrt(1 + (N-1)/d_k)"),
                           (axes[1, 2], "top1", "top-1 identification (lines: approximation)")):
        for i, d in enumerate(ds["d_k"].values):
            sel = ds.sel(d_k=d)
            n = sel["n_pairs"].values
            ax.plot(n, sel[f"{var}_sim"].values, "o", color=pal[i], ms=4, label=f"d_k={d}")
            ax.plot(n, sel[f"{var}_theory"].values, "-", color=pal[i], lw=1)
        ax.set(xscale="log", xlabel="stored pairs N", ylabel=var, title=title, ylim=(-0.02, 1.02))
        ax.legend(fontsize=7)

    ax = axes[0, 0]
    for i, d in enumerate(ds["d_k"].values):
        sel = ds.sel(d_k=d)
        n = sel["n_pairs"].values
        ax.loglog(n, sel["snr_sim"].values, "o", color=pal[i], ms=4, label=f"d_k={d}")
        ax.loglog(n, sel["snr_theory"].values, "-", color=pal[i], lw=1)
    ax.set(xlabel="stored pairs N", ylabel="SNR", title="Hebbian SNR (dots) vs d_k/(N-1) (lines)")
    ax.legend(fontsize=7)

    ax = axes[0, 1]
    dks = ds["d_k"].values
    ax.loglog(dks, ds["capacity_avg_sim"], "o", color="C0",
              label=f"average, eps={ds.attrs['error_rate']:g} "
                    f"(slope {float(ds['exponent_avg_sim']):.2f})")
    ax.loglog(dks, ds["capacity_avg_theory"], "-", color="C0", lw=1)
    ax.loglog(dks, ds["capacity_wc_sim"], "s", color="C3",
              label=f"error-free (slope {float(ds['exponent_wc_sim']):.2f})")
    ax.loglog(dks, ds["capacity_wc_theory"], "-", color="C3", lw=1)
    ax.loglog(dks, ds["capacity_wc_ev_theory"], "--", color="C3", lw=1)
    ax.set(xlabel="d_k", ylabel="capacity (pairs)",
           title="capacity: O(d_k) vs O(sqrt d_k) (lines: theory, dashed: extreme value)")
    ax.legend(fontsize=7)

    ax = axes[1, 0]
    n = ds["rules_n"].values
    for i, r in enumerate(ds["rule"].values):
        sel = ds.sel(rule=r)
        ax.plot(n, sel["rule_bit_error_sim"], "o-", color=f"C{i}", ms=4, lw=1, label=r)
        ax.plot(n, sel["rule_bit_error_theory"], "--", color=f"C{i}", lw=1)
    ax.axvline(ds.attrs["rules_d_k"], color="k", lw=0.5)
    ax.set(xscale="log", xlabel="stored pairs N", ylabel="bit error",
           title=f"learning rules, d_k={ds.attrs['rules_d_k']} (dashed: theory)")
    ax.legend(fontsize=7)

    ax = axes[1, 1]
    pal = sns.color_palette("rocket", ds.sizes["heads"])
    for i, h in enumerate(ds["heads"].values):
        sel = ds.sel(heads=h)
        ax.semilogy(ds["layer"], sel["error_power_sim"], "o", color=pal[i], ms=4, label=f"H={h}")
        ax.semilogy(ds["layer"], sel["error_power_theory"], "-", color=pal[i], lw=1)
    ax.set(xlabel="layer", ylabel="error power E||v_hat - v||^2",
           title=f"propagation, d_k={ds.attrs['prop_d_k']}, N={ds.attrs['prop_n']}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


__all__ = [
    "FULL", "QUICK", "RULES", "bit_error_from_snr", "capacity_average_theory",
    "capacity_from_curve", "capacity_worst_case_ev_theory", "capacity_worst_case_theory", "cosine_from_snr", "decay_memory",
    "decay_theory", "delta_rule_memory", "delta_snr_theory", "fit_exponent", "hebbian_memory",
    "linear_attention", "plot", "propagation_limit_theory", "propagation_theory", "random_keys",
    "random_values", "retrieval_stats", "retrieve", "simulate", "snr_theory",
    "softmax_attention", "softmax_snr_theory", "summary", "top1_theory", "validate_config",
    "worst_case_bound", "worst_case_capacity",
]
