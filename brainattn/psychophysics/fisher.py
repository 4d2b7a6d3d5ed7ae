"""Fisher information of stimulus models and the perceptual scales they predict.

Vacher & Mamassian (ICLR 2024): an observer whose sensitivity follows the Fisher information
``I(s)`` of the stimulus distribution has the perceptual scale ``psi(s) ∝ ∫ sqrt(I(s)) ds``.

Closed forms (Gaussian log-Gabor textures)
------------------------------------------
The radial frequency ``f`` of the texture's energy is log-normal: ``log f ~ N(mu, sigma_b^2)``
with octave bandwidth ``b`` (full width at half maximum, ``sigma_b = b sqrt(ln 2 / 8)``) and mode
``f0 = exp(mu - sigma_b^2)``.  Orientation follows ``p(theta) ∝ exp(kappa cos 2(theta - theta0))``
with ``kappa = 1 / (4 B_theta^2)`` (``B_theta`` in radians, the MotionClouds convention).

* mode spatial frequency ``f0`` (bandwidth fixed): ``I(f0) = 1 / (sigma_b^2 f0^2)``, so the
  predicted scale is logarithmic;
* frequency bandwidth ``b`` (mode fixed): ``I(b) = ln2/2 · (1 + 4 / (b^2 ln 2))`` per octave^2;
* orientation bandwidth ``B``: ``I(B) = V(kappa) (dkappa/dB)^2`` with
  ``V = 1 - A/kappa - A^2``, ``A = I1(kappa)/I0(kappa)`` (Bessel), ``dkappa/dB = -1/(2 B^3)``.

Gaussian models, numerically
----------------------------
:func:`fisher_gaussian` differentiates any torch mean ``m(s)`` and covariance ``S(s)`` with
autograd: ``I = m'^T S^-1 m' + 1/2 tr(S^-1 S' S^-1 S')``; :func:`fisher_density` does
``∫ p (d log p / ds)^2 dx`` on a grid for any differentiable (unnormalised) log density.
Both are checked against the closed forms in the tests.  :func:`bures_path` /
:func:`fisher_bures_path` give the optimal-transport (McCann) interpolation between two
Gaussians and its Fisher information in closed form; :func:`fisher_texture_path` that of the
path between two stationary textures given by their power spectra, seen through an observer's
internal white noise (the ``texture-path`` model).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from brainattn.errors import ConfigError

__all__ = [
    "octave_to_log_sigma",
    "fisher_mode_frequency",
    "fisher_frequency_bandwidth",
    "fisher_orientation_bandwidth",
    "fisher_gaussian",
    "fisher_density",
    "bures_map",
    "bures_path",
    "fisher_bures_path",
    "fisher_texture_path",
    "fisher_texture_model",
    "predicted_scale",
    "compare_scales",
    "FISHER_MODELS",
]

LN2 = float(np.log(2.0))


def octave_to_log_sigma(b) -> np.ndarray:
    """Log-normal sd (natural-log units) of an octave bandwidth ``b`` (FWHM): ``b sqrt(ln2/8)``."""
    return np.asarray(b, dtype=float) * np.sqrt(LN2 / 8.0)


def _positive(x, name):
    x = np.asarray(x, dtype=float)
    if np.any(~np.isfinite(x)) or np.any(x <= 0):
        raise ConfigError(f"{name}: expected positive values, got {x.tolist() if x.ndim else float(x)}")
    return x


def fisher_mode_frequency(f0, bandwidth: float = 1.0) -> np.ndarray:
    """Fisher information about the mode spatial frequency ``f0`` (per (frequency unit)^2).

    ``f0`` in cycles per unit (c/deg, c/cm, ...), ``bandwidth`` the octave bandwidth.
    """
    f0 = _positive(f0, "f0")
    s = octave_to_log_sigma(_positive(bandwidth, "bandwidth"))
    return 1.0 / (s * s * f0 * f0)


def fisher_frequency_bandwidth(b) -> np.ndarray:
    """Fisher information about the octave bandwidth ``b`` at fixed mode (per octave^2)."""
    b = _positive(b, "bandwidth")
    return LN2 / 2.0 * (1.0 + 4.0 / (b * b * LN2))


def fisher_orientation_bandwidth(b_theta, degrees: bool = True) -> np.ndarray:
    """Fisher information about the orientation bandwidth ``B_theta`` (per deg^2 or rad^2)."""
    from scipy.special import i0e, i1e

    b = _positive(b_theta, "orientation bandwidth")
    br = np.deg2rad(b) if degrees else b
    kappa = 1.0 / (4.0 * br * br)
    A = i1e(kappa) / i0e(kappa)
    V = 1.0 - A / kappa - A * A
    I_rad = V / (4.0 * br**6)
    return I_rad * (np.pi / 180.0) ** 2 if degrees else I_rad


# --------------------------------------------------------------------------------------------
# numeric Fisher information with autograd


def _jvp(fn, st):
    """(fn(s), d fn / ds) for a scalar tensor ``s``: every output's derivative at once, with two
    reverse passes (the double-backward trick ``J v = d/du (J^T u) . v``)."""
    import torch

    s = st.detach().clone().requires_grad_(True)
    out = fn(s)
    if not out.requires_grad:  # the output does not depend on s
        return out.detach(), torch.zeros_like(out)
    u = torch.zeros_like(out, requires_grad=True)
    (g,) = torch.autograd.grad(out, s, grad_outputs=u, create_graph=True)
    (jv,) = torch.autograd.grad(g, u, grad_outputs=torch.ones_like(g), allow_unused=True)
    if jv is None:
        jv = torch.zeros_like(out)
    return out.detach(), jv


def fisher_gaussian(mean_fn: Callable, cov_fn: Callable, s) -> np.ndarray:
    """Fisher information of ``N(mean_fn(s), cov_fn(s))`` about the scalar ``s``, by autograd.

    Parameters
    ----------
    mean_fn : torch function of a 0-d float64 tensor ``s`` -> (d,) mean.
    cov_fn : torch function ``s`` -> (d, d) covariance, or (d,) variances (diagonal model).
    s : float or (n,) values.

    Returns
    -------
    (n,) Fisher information, in 1 / (units of s)^2.
    """
    import torch

    s_arr = np.atleast_1d(np.asarray(s, dtype=np.float64))
    out = np.empty(len(s_arr))
    for i, sv in enumerate(s_arr):
        st = torch.tensor(sv, dtype=torch.float64)
        # forward mode: one pass gives the derivative of every output w.r.t. the scalar s
        m, dm = _jvp(mean_fn, st)
        C, dC = _jvp(cov_fn, st)
        dm = dm.reshape(-1)
        if C.ndim == 1:
            val = torch.sum(dm * dm / C) + 0.5 * torch.sum((dC / C) ** 2)
        else:
            if dm.shape[0] != C.shape[0]:
                raise ConfigError(f"fisher_gaussian: mean has {m.numel()} entries but covariance is {tuple(C.shape)}")
            L = torch.linalg.cholesky(C)
            a = torch.cholesky_solve(dm[:, None], L)[:, 0]
            Q = torch.cholesky_solve(dC.reshape(C.shape), L)
            val = dm @ a + 0.5 * torch.trace(Q @ Q)
        out[i] = float(val)
    return out


def fisher_density(logpdf_fn: Callable, s, grid) -> np.ndarray:
    """Fisher information ``∫ p(x|s) (d/ds log p(x|s))^2 dx`` on a 1-d grid, by autograd.

    ``logpdf_fn(x, s)`` takes a (g,) float64 tensor of grid points and a 0-d tensor ``s`` and
    returns the (possibly unnormalised) log density; it is normalised on the grid.
    """
    import torch

    x = torch.as_tensor(np.asarray(grid, dtype=np.float64))
    dx = torch.diff(x)
    s_arr = np.atleast_1d(np.asarray(s, dtype=np.float64))
    out = np.empty(len(s_arr))

    def log_p(st):
        lp = logpdf_fn(x, st)
        w = torch.exp(lp - lp.max())
        Z = torch.sum(0.5 * (w[1:] + w[:-1]) * dx)
        return lp - lp.max() - torch.log(Z)

    for i, sv in enumerate(s_arr):
        st = torch.tensor(sv, dtype=torch.float64)
        # forward mode: d log p(x_j | s) / ds at every grid point in one pass, (g,)
        lp, score = _jvp(log_p, st)
        p = torch.exp(lp)
        f = p * score * score
        out[i] = float(torch.sum(0.5 * (f[1:] + f[:-1]) * dx))
    return out


# --------------------------------------------------------------------------------------------
# optimal-transport (Bures) interpolation between Gaussians


def _sqrtm_psd(A: np.ndarray) -> np.ndarray:
    w, V = np.linalg.eigh((A + A.T) / 2)
    return (V * np.sqrt(np.clip(w, 0, None))) @ V.T


def bures_map(cov0: np.ndarray, cov1: np.ndarray) -> np.ndarray:
    """Optimal-transport map ``T`` from ``N(., cov0)`` to ``N(., cov1)`` (symmetric, (d, d)):
    ``T = S0^-1/2 (S0^1/2 S1 S0^1/2)^1/2 S0^-1/2``; diagonal inputs (d,) give ``sqrt(s1/s0)``."""
    cov0 = np.asarray(cov0, dtype=float)
    cov1 = np.asarray(cov1, dtype=float)
    if cov0.ndim == 1:
        return np.sqrt(cov1 / cov0)
    r0 = _sqrtm_psd(cov0)
    r0i = np.linalg.inv(r0)
    return r0i @ _sqrtm_psd(r0 @ cov1 @ r0) @ r0i


def bures_path(mean0, cov0, mean1, cov1, t):
    """McCann interpolant at ``t`` in [0, 1]: ``mu_t = (1-t) a + t b``,
    ``S_t = ((1-t) I + t T) S0 ((1-t) I + t T)``. Diagonal covariances may be given as (d,)."""
    a, b = np.asarray(mean0, float), np.asarray(mean1, float)
    S0 = np.asarray(cov0, float)
    T = bures_map(S0, cov1)
    mu = (1 - t) * a + t * b
    if S0.ndim == 1:
        return mu, ((1 - t) + t * T) ** 2 * S0
    M = (1 - t) * np.eye(len(S0)) + t * T
    return mu, M @ S0 @ M


def fisher_bures_path(mean0, cov0, mean1, cov1, t) -> np.ndarray:
    """Closed-form Fisher information about ``t`` along the Bures path, (n_t,).

    ``I(t) = mu'^T S_t^-1 mu' + 1/2 tr(S_t^-1 S' S_t^-1 S')`` with ``mu' = b - a``,
    ``S' = D S0 M_t + M_t S0 D``, ``M_t = (1-t) I + t T``, ``D = T - I``.
    """
    a, b = np.asarray(mean0, float), np.asarray(mean1, float)
    S0 = np.asarray(cov0, float)
    T = bures_map(S0, cov1)
    dmu = b - a
    ts = np.atleast_1d(np.asarray(t, dtype=float))
    out = np.empty(len(ts))
    for i, tv in enumerate(ts):
        if S0.ndim == 1:
            m = (1 - tv) + tv * T
            St = m * m * S0
            dS = 2 * (T - 1) * m * S0
            out[i] = np.sum(dmu * dmu / St) + 0.5 * np.sum((dS / St) ** 2)
        else:
            d = len(S0)
            M = (1 - tv) * np.eye(d) + tv * T
            D = T - np.eye(d)
            St = M @ S0 @ M
            dS = D @ S0 @ M + M @ S0 @ D
            Q = np.linalg.solve(St, dS)
            out[i] = dmu @ np.linalg.solve(St, dmu) + 0.5 * np.trace(Q @ Q)
    return out


def fisher_texture_path(spectrum0: np.ndarray, spectrum1: np.ndarray, t, *, noise: float = 0.0,
                        chunk: int = 64) -> np.ndarray:
    """Fisher information about ``t`` along the OT path between two stationary Gaussian textures.

    The textures are zero-mean Gaussian fields given by their power spectra ``S0``, ``S1`` (any
    shape, the same for both; every Fourier coefficient an independent Gaussian). The OT map is
    ``sqrt(S1 / S0)`` per frequency, so along the path the amplitude spectrum is
    ``a_t = (1 - t) sqrt(S0) + t sqrt(S1)``.

    ``noise`` is the observer's internal white noise, as a variance relative to the mean power
    of the two textures per frequency (in the pixel domain: noise variance / texture variance).
    The observed variance at a frequency is ``v_t = a_t^2 + n`` and

        I(t) = sum_f 1/2 (v_t' / v_t)^2 = sum_f 2 a_t^2 (a1 - a0)^2 / (a_t^2 + n)^2.

    With ``noise = 0`` this is the Bures-path information of :func:`fisher_bures_path`, and
    frequencies without power in either texture are ignored; it is then dominated by the
    frequencies where one spectrum is nearly zero (a ratio ``a1/a0`` without bound), so the
    predicted scale of two textures with little overlapping power jumps at the ends of the
    path. A positive noise bounds every frequency's share, as an observer's noise does.

    Returns (n_t,) Fisher information, per unit ``t`` squared.
    """
    S0 = np.asarray(spectrum0, float).ravel()
    S1 = np.asarray(spectrum1, float).ravel()
    if S0.shape != S1.shape:
        raise ConfigError(f"spectra have different shapes {np.shape(spectrum0)} and {np.shape(spectrum1)}")
    if np.any(~np.isfinite(S0)) or np.any(~np.isfinite(S1)) or np.any(S0 < 0) or np.any(S1 < 0):
        raise ConfigError("spectra: expected finite non-negative power at every frequency")
    if isinstance(noise, bool) or not np.isfinite(noise) or noise < 0:
        raise ConfigError(f"noise: expected a variance ratio >= 0, got {noise!r}")
    ts = np.atleast_1d(np.asarray(t, dtype=float))
    if noise == 0:
        keep = (S0 > 1e-300) & (S1 > 1e-300)
        if not keep.any():
            raise ConfigError("spectra: no frequency has power in both textures; give a positive noise")
        S0, S1, n = S0[keep], S1[keep], 0.0
    else:
        n = noise * 0.5 * (S0.mean() + S1.mean())
        if not n > 0:
            raise ConfigError("spectra: both textures have no power")
    a0, a1 = np.sqrt(S0), np.sqrt(S1)
    da2 = (a1 - a0) ** 2
    out = np.empty(len(ts))
    for i in range(0, len(ts), chunk):  # (chunk, n_freq) at a time: memory stays bounded
        at2 = ((1 - ts[i:i + chunk, None]) * a0 + ts[i:i + chunk, None] * a1) ** 2
        out[i:i + chunk] = np.sum(2 * at2 * da2 / (at2 + n) ** 2, axis=1)
    return out


def fisher_texture_model(t, *, spectra, noise: float = 0.01) -> np.ndarray:
    """The ``texture-path`` model of :data:`FISHER_MODELS`: :func:`fisher_texture_path` of the
    two spectra ``spectra = (S0, S1)`` at ``t`` (0: the first texture, 1: the second)."""
    if not isinstance(spectra, (tuple, list)) or len(spectra) != 2:
        raise ConfigError("texture-path: expected spectra=(S0, S1), the power spectra of the two end textures")
    ts = np.asarray(t, dtype=float)
    if np.any(ts < 0) or np.any(ts > 1):
        raise ConfigError(f"texture-path: t must lie in [0, 1], got {np.atleast_1d(ts).tolist()}")
    return fisher_texture_path(spectra[0], spectra[1], ts, noise=noise)


# --------------------------------------------------------------------------------------------
# predicted scales and comparisons


FISHER_MODELS: dict[str, Callable[..., np.ndarray]] = {
    "mode-frequency": fisher_mode_frequency,
    "frequency-bandwidth": fisher_frequency_bandwidth,
    "orientation-bandwidth": fisher_orientation_bandwidth,
    "texture-path": fisher_texture_model,
}


def predicted_scale(fisher, levels, *, n_grid: int = 2001, **model_kw) -> np.ndarray:
    """Predicted perceptual scale at ``levels``: normalised cumulative ``∫ sqrt(I(s)) ds``.

    Parameters
    ----------
    fisher : a name in :data:`FISHER_MODELS` or a callable ``I(s)`` on (n,) arrays.
    levels : (p,) increasing stimulus values.
    model_kw : extra arguments of the named model (``bandwidth`` for mode-frequency;
        ``spectra=(S0, S1)`` and ``noise`` for texture-path, whose levels are ``t`` in [0, 1]).

    Returns
    -------
    (p,) scale, 0 at the first level and 1 at the last.
    """
    if isinstance(fisher, str):
        if fisher not in FISHER_MODELS:
            raise ConfigError(f"model: unknown Fisher model {fisher!r}; expected one of {sorted(FISHER_MODELS)}")
        fn = FISHER_MODELS[fisher]

        def fisher_fn(s):
            return fn(s, **model_kw)
    elif callable(fisher):
        fisher_fn = fisher
    else:
        raise ConfigError(f"fisher: expected a model name or a callable I(s), got {fisher!r}")
    levels = np.asarray(levels, dtype=float)
    if levels.ndim != 1 or len(levels) < 2 or np.any(np.diff(levels) <= 0):
        raise ConfigError(f"levels: expected at least 2 strictly increasing values, got {levels.tolist()}")
    grid = np.union1d(np.linspace(levels[0], levels[-1], n_grid), levels)
    I = np.asarray(fisher_fn(grid), dtype=float)
    if I.shape != grid.shape or np.any(~np.isfinite(I)) or np.any(I < 0):
        raise ConfigError("fisher: I(s) must return finite non-negative values, one per stimulus value")
    r = np.sqrt(I)
    cum = np.r_[0.0, np.cumsum(0.5 * (r[1:] + r[:-1]) * np.diff(grid))]
    if cum[-1] <= 0:
        raise ConfigError("fisher: the Fisher information is zero over the whole range")
    return np.interp(levels, grid, cum / cum[-1])


def _normalise(psi: np.ndarray) -> np.ndarray:
    psi = np.asarray(psi, dtype=float)
    return (psi - psi[..., :1]) / (psi[..., -1:] - psi[..., :1])


def _scores(m: np.ndarray, p: np.ndarray, u: np.ndarray):
    def area(v):
        return np.sum(0.5 * (v[..., 1:] + v[..., :-1]) * np.diff(u), axis=-1)

    num = area(np.abs(m - p))
    den = area(np.abs(m - u)) + area(np.abs(p - u))
    with np.errstate(invalid="ignore", divide="ignore"):
        am = np.where(den > 1e-12, 1.0 - num / np.where(den > 1e-12, den, 1.0), np.where(num < 1e-12, 1.0, 0.0))
    rmse = np.sqrt(np.mean((m - p) ** 2, axis=-1))
    mc = m - m.mean(axis=-1, keepdims=True)
    pc = p - p.mean(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = np.sum(mc * pc, axis=-1) / np.sqrt(np.sum(mc * mc, axis=-1) * np.sum(pc * pc, axis=-1))
    return am, rmse, corr


def compare_scales(measured, predicted, stimulus, *, bootstrap=None, alpha: float = 0.05,
                   model: str = "prediction") -> dict:
    """Compare a measured scale with a predicted one, both normalised to run from 0 to 1.

    Scores (u = stimulus rescaled to [0, 1]):

    * ``area_match = 1 - ∫|m - p| du / (∫|m - u| du + ∫|p - u| du)``: 1 when the curves
      coincide, 0 when they lie on opposite sides of the diagonal (linear scale);
    * ``rmse`` over the levels and Pearson ``correlation``.

    ``bootstrap`` (B, p) measured replicates give percentile intervals of each score.
    """
    m = _normalise(np.asarray(measured, dtype=float))
    p = _normalise(np.asarray(predicted, dtype=float))
    s = np.asarray(stimulus, dtype=float)
    if m.shape != p.shape or m.shape != s.shape:
        raise ConfigError(f"compare_scales: shapes differ (measured {m.shape}, predicted {p.shape}, "
                          f"stimulus {s.shape})")
    u = (s - s[0]) / (s[-1] - s[0])
    am, rmse, corr = _scores(m, p, u)
    out = {"model": model, "scale": p, "area_match": float(am), "rmse": float(rmse),
           "correlation": float(corr)}
    if bootstrap is not None and len(bootstrap):
        mb = _normalise(np.asarray(bootstrap, dtype=float))
        bam, brm, bco = _scores(mb, p[None, :], u)
        for key, v in (("area_match", bam), ("rmse", brm), ("correlation", bco)):
            v = v[np.isfinite(v)]
            out[key + "_lower"] = float(np.quantile(v, alpha / 2))
            out[key + "_upper"] = float(np.quantile(v, 1 - alpha / 2))
    else:
        for key in ("area_match", "rmse", "correlation"):
            out[key + "_lower"] = out[key + "_upper"] = float("nan")
    return out
