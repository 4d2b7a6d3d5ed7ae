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

Where each piece lives (all importable from ``brainattn.theory.pavlovian``):
:mod:`~brainattn.theory.pavlovian.memory` (stimuli, memories, retrieval, the worst-case bound),
:mod:`~brainattn.theory.pavlovian.predictions` (the analytic predictions above),
:mod:`~brainattn.theory.pavlovian.experiments` (the batched experiments) and
:mod:`~brainattn.theory.pavlovian.simulation` (:func:`simulate`, :func:`summary`); the presets
:data:`QUICK`, :data:`FULL` and their checks are in :mod:`brainattn.theory._config`, the figure
:func:`plot` in :mod:`brainattn.report.theory_figures`.
"""

from brainattn.report.theory_figures import plot_pavlovian as plot
from brainattn.theory._config import PAVLOVIAN_FULL as FULL
from brainattn.theory._config import PAVLOVIAN_QUICK as QUICK
from brainattn.theory._config import validate_pavlovian as validate_config
from brainattn.theory.pavlovian.experiments import (
    RULES,
    rules_theory,
    run_capacity,
    run_propagation,
    run_rules,
    run_worst_case,
)
from brainattn.theory.pavlovian.memory import (
    decay_memory,
    delta_rule_memory,
    hebbian_memory,
    linear_attention,
    random_keys,
    random_values,
    retrieval_stats,
    retrieve,
    softmax_attention,
    worst_case_bound,
    worst_case_capacity,
)
from brainattn.theory.pavlovian.predictions import (
    bit_error_from_snr,
    capacity_average_theory,
    capacity_from_curve,
    capacity_worst_case_ev_theory,
    capacity_worst_case_theory,
    cosine_from_snr,
    decay_theory,
    delta_snr_theory,
    fit_exponent,
    propagation_limit_theory,
    propagation_theory,
    snr_theory,
    softmax_snr_theory,
    top1_theory,
)
from brainattn.theory.pavlovian.simulation import simulate, summary

__all__ = [
    "FULL", "QUICK", "RULES", "bit_error_from_snr", "capacity_average_theory",
    "capacity_from_curve", "capacity_worst_case_ev_theory", "capacity_worst_case_theory",
    "cosine_from_snr", "decay_memory", "decay_theory", "delta_rule_memory", "delta_snr_theory",
    "fit_exponent", "hebbian_memory", "linear_attention", "plot", "propagation_limit_theory",
    "propagation_theory", "random_keys", "random_values", "retrieval_stats", "retrieve",
    "rules_theory", "run_capacity", "run_propagation", "run_rules", "run_worst_case", "simulate",
    "snr_theory", "softmax_attention", "softmax_snr_theory", "summary", "top1_theory",
    "validate_config", "worst_case_bound", "worst_case_capacity",
]
