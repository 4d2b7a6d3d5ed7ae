"""Simulated observers for difference scaling: plan experiments, check parameter recovery.

An observer has a perceptual scale ``psi(s)`` (array over the levels or a callable of the
stimulus value), Gaussian decision noise ``sigma`` and a lapse rate ``lam``.  On a quadruple
``(a, b; c, d)`` it answers 1 ("second pair more different") when
``|psi_d - psi_c| - |psi_b - psi_a| + sigma * eps > 0``; with probability ``lam`` it guesses.
Trials may be given in any presentation order (descending pairs included).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from brainattn.errors import ConfigError
from brainattn.psychophysics.design import Trials, as_trials, make_design

__all__ = ["SimulatedObserver", "simulate_experiment", "precision_by_repeats"]


class SimulatedObserver:
    """A difference-scaling observer.

    Parameters
    ----------
    scale : (p,) scale values of the levels, or a callable ``psi(stimulus) -> values``.
    sigma : decision-noise standard deviation, in scale units (> 0).
    lapse : probability of a random guess on a trial, in [0, 1).
    stimulus : (p,) stimulus values (needed when ``scale`` is a callable; default ``1..p``).
    """

    def __init__(self, scale: np.ndarray | Callable, sigma: float = 0.1, lapse: float = 0.0,
                 stimulus: np.ndarray | None = None):
        if not (np.isfinite(sigma) and sigma > 0):
            raise ConfigError(f"sigma: expected a positive number, got {sigma!r}")
        if not 0 <= lapse < 1:
            raise ConfigError(f"lapse: expected a probability in [0, 1), got {lapse!r}")
        if callable(scale):
            if stimulus is None:
                raise ConfigError("stimulus: a callable scale needs the stimulus values of the levels")
            stimulus = np.asarray(stimulus, dtype=float)
            values = np.asarray(scale(stimulus), dtype=float)
        else:
            values = np.asarray(scale, dtype=float).ravel()
            stimulus = (np.arange(1, len(values) + 1, dtype=float) if stimulus is None
                        else np.asarray(stimulus, dtype=float))
        if values.ndim != 1 or len(values) < 3 or values.shape != stimulus.shape:
            raise ConfigError(f"scale: expected one value per level (>= 3 levels), got shape {values.shape}")
        if not np.all(np.isfinite(values)):
            raise ConfigError("scale: values must be finite")
        self.psi = values
        self.stimulus = stimulus
        self.sigma = float(sigma)
        self.lapse = float(lapse)

    @property
    def n_levels(self) -> int:
        return len(self.psi)

    def decision_variable(self, stim: np.ndarray) -> np.ndarray:
        """Noise-free ``|psi(second pair)| - |psi(first pair)|`` for (n, 3|4) 1-based trials."""
        S = np.asarray(stim) - 1
        v = self.psi[S]
        if S.shape[1] == 3:
            return np.abs(v[:, 2] - v[:, 1]) - np.abs(v[:, 1] - v[:, 0])
        return np.abs(v[:, 3] - v[:, 2]) - np.abs(v[:, 1] - v[:, 0])

    def probability(self, stim: np.ndarray) -> np.ndarray:
        """P(resp = 1) for each trial, (n,)."""
        from scipy.special import ndtr

        return self.lapse / 2 + (1 - self.lapse) * ndtr(self.decision_variable(stim) / self.sigma)

    def respond(self, stim: np.ndarray, rng: np.random.Generator | int | None = None,
                n_experiments: int | None = None) -> np.ndarray:
        """Draw 0/1 responses, (n,) or (n_experiments, n) int8."""
        rng = np.random.default_rng(rng)
        p = self.probability(stim)
        shape = p.shape if n_experiments is None else (n_experiments,) + p.shape
        return (rng.random(shape) < p).astype(np.int8)

    def run(self, design: np.ndarray, rng: np.random.Generator | int | None = None) -> Trials:
        """Run one experiment on ``design`` and return validated :class:`Trials`."""
        design = np.asarray(design)
        if design.max() > self.n_levels:
            raise ConfigError(f"design: uses level {design.max()} but the observer has {self.n_levels} levels")
        return as_trials(self.respond(design, rng), design, self.stimulus, source="<simulated>")


def simulate_experiment(observer: SimulatedObserver, kind: str = "quadruple", *, repeats: int = 1,
                        max_gap: int | None = None, swap_pairs: float = 0.5,
                        seed: int | None = None) -> Trials:
    """All triads/quadruples of the observer's levels, ``repeats`` times, answered by it."""
    rng = np.random.default_rng(seed)
    design = make_design(observer.n_levels, kind, max_gap=max_gap, repeats=repeats,
                         swap_pairs=swap_pairs, seed=int(rng.integers(2**31)))
    return observer.run(design, rng)


def precision_by_repeats(observer: SimulatedObserver, kind: str = "quadruple", repeats=(1, 2, 4, 8), *,
                         max_gap: int | None = None, n_experiments: int = 200, link="probit",
                         seed: int | None = None):
    """Plan an experiment: spread of the glm scale estimates for several numbers of repeats.

    For each value in ``repeats`` the observer runs ``n_experiments`` full designs; all of them
    are fitted together by :func:`~brainattn.psychophysics.glm.solve_mlds_glm`.

    Returns
    -------
    xarray.Dataset with dims ``repeats``, ``level``: ``sd`` (standard deviation of the
    estimates across experiments, scale units with sigma = 1), ``bias`` (mean estimate minus
    truth), ``n_trials`` per experiment and ``failed`` (separated / non-converged experiments,
    left out of sd and bias); ``truth`` (level) is ``psi / sigma`` with ``psi_1 = 0``.
    """
    import xarray as xr

    from brainattn.psychophysics.design import design_matrix
    from brainattn.psychophysics.glm import solve_mlds_glm

    rng = np.random.default_rng(seed)
    p = observer.n_levels
    truth = (observer.psi - observer.psi[0]) / observer.sigma
    sd = np.full((len(repeats), p), np.nan)
    bias = np.full((len(repeats), p), np.nan)
    n_trials = np.zeros(len(repeats), dtype=np.int64)
    failed = np.zeros(len(repeats), dtype=np.int64)
    for i, r in enumerate(repeats):
        d = make_design(p, kind, max_gap=max_gap, repeats=int(r), shuffle=False)
        n_trials[i] = len(d)
        Y = observer.respond(d, rng, n_experiments=n_experiments).astype(float)
        sol = solve_mlds_glm(design_matrix(d, p), Y, link, summaries=False, line_search=False)
        est = np.concatenate([np.zeros((n_experiments, 1)), sol.beta], axis=1)[sol.converged]
        failed[i] = int((~sol.converged).sum())
        if len(est) > 1:
            sd[i] = est.std(axis=0, ddof=1)
            bias[i] = est.mean(axis=0) - truth
    return xr.Dataset(
        {"sd": (("repeats", "level"), sd), "bias": (("repeats", "level"), bias),
         "n_trials": ("repeats", n_trials), "failed": ("repeats", failed), "truth": ("level", truth)},
        coords={"repeats": np.asarray(repeats), "level": np.arange(1, p + 1)},
        attrs={"kind": kind, "n_experiments": n_experiments, "sigma": observer.sigma},
    )
