"""Noise ceilings from repeated presentations: NSD's ncsnr and split-half reliability.

Model of one vertex: trial ``r`` of image ``i`` gives ``b_ir = mu + s_i + e_ir`` with signal
``s_i`` (variance ``sd_signal**2`` over images) and noise ``e_ir`` (variance ``sd_noise**2``,
independent over trials). With ``R`` trials per image:

- ``sd_noise**2`` = mean over images of the across-trial variance (ddof=1) -- unbiased;
- the variance over images of the trial means is ``sd_signal**2 + sd_noise**2 / R``, so the
  general (``method="means"``) estimate is ``sd_signal**2 = max(0, var_i(mean_r b_ir) -
  sd_noise**2 / R)`` (var with ddof=1);
- NSD (Allen et al. 2022) z-scores betas per session, so the total single-trial variance is 1
  ``= sd_signal**2 + sd_noise**2`` and ``sd_signal**2 = max(0, 1 - sd_noise**2)``
  (``method="nsd"``; only meaningful on z-scored betas). For many images both agree: the total
  variance of all trials is ``var_means + sd_noise**2 (R - 1) / R`` up to O(1/n_images).

``ncsnr = sd_signal / sd_noise`` and the noise ceiling for responses averaged over ``n`` trials
is ``NC = 100 * ncsnr**2 / (ncsnr**2 + 1/n)`` percent: the share of the variance of an
``n``-trial average that the signal explains.

Split-half reliability is a second, model-light estimate: the Pearson correlation over images
between the means of two disjoint halves of the trials (``h = R // 2`` trials each, averaged over
all such splits), stepped to ``n`` trials with Spearman-Brown, ``k r / (1 + (k - 1) r)`` with
``k = n / h``. Under the model it equals ``NC / 100``.
"""

from __future__ import annotations

import itertools

import numpy as np

from brainattn.errors import ConfigError, DataError, ShapeError


def _check_repeats(repeats, check: bool = True) -> np.ndarray:
    rep = np.asarray(repeats, dtype=np.float64)
    if rep.ndim == 2:
        rep = rep[:, :, None]
    if rep.ndim != 3:
        raise ShapeError(
            f"repeats: expected shape (n_images, n_trials, n_vertices), got {np.shape(repeats)}"
        )
    if rep.shape[1] < 2:
        raise ShapeError(f"repeats: need at least 2 trials per image, got {rep.shape[1]}")
    if rep.shape[0] < 3:
        raise ShapeError(f"repeats: need at least 3 repeated images, got {rep.shape[0]}")
    if check and not np.all(np.isfinite(rep)):
        raise DataError(f"repeats: {int((~np.isfinite(rep)).sum())} NaN/Inf values")
    return rep


def noise_sd(repeats) -> np.ndarray:
    """Noise sd per vertex: sqrt of the mean over images of the across-trial variance (ddof=1).

    repeats : (n_images, n_trials, n_vertices). Returns (n_vertices,), betas' units.
    """
    rep = _check_repeats(repeats)
    return np.sqrt(rep.var(axis=1, ddof=1).mean(axis=0))


def ncsnr(
    repeats, *, method: str = "means", check: bool = True, allow_missing: bool = False
) -> np.ndarray:
    """NSD's noise-ceiling SNR, ``sd_signal / sd_noise``, per vertex.

    Parameters
    ----------
    repeats : (n_images, n_trials, n_vertices) single-trial betas (a 2-D array is one vertex).
    method : ``"means"`` (general, unbiased; see module docstring) or ``"nsd"`` (``1 -
        sd_noise**2``, for betas z-scored per session as NSD's).
    check : refuse NaN/Inf (a vertex with NaN/Inf gives NaN when False).
    allow_missing : NaN marks a missing trial (NSD images have 1-3 trials): the noise variance
        is the across-trial variance pooled over images with >= 2 trials (weighted by their
        degrees of freedom), the signal variance is the variance of the trial means minus the
        noise variance times the mean of ``1 / n_trials_i``. Equal to the default estimate when
        nothing is missing.

    Returns
    -------
    (n_vertices,) float64, dimensionless; ``inf`` where the noise is exactly 0 and the signal not.
    """
    if allow_missing:
        return _ncsnr_missing(_check_repeats(repeats, check=False), method)
    rep = _check_repeats(repeats, check=check)
    var_noise = rep.var(axis=1, ddof=1).mean(axis=0)
    if method == "means":
        var_signal = rep.mean(axis=1).var(axis=0, ddof=1) - var_noise / rep.shape[1]
    elif method == "nsd":
        var_signal = 1.0 - var_noise
    else:
        raise ConfigError(f"method: expected 'means' or 'nsd', got {method!r}")
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.sqrt(np.maximum(var_signal, 0.0)) / np.sqrt(var_noise)


def _ncsnr_missing(rep: np.ndarray, method: str) -> np.ndarray:
    if np.isinf(rep).any():
        raise DataError(f"repeats: {int(np.isinf(rep).sum())} Inf values (NaN marks a missing trial)")
    ok = ~np.isnan(rep)
    n = ok.sum(axis=1).astype(np.float64)  # (images, vertices) trials present
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.nansum(rep, axis=1) / n
        ss = np.nansum((rep - mean[:, None]) ** 2, axis=1)
        dof = np.clip(n - 1, 0, None)
        var_noise = ss.sum(axis=0) / dof.sum(axis=0)
        has = n >= 1
        m = np.where(has, mean, 0.0)
        k = has.sum(axis=0)
        mu = m.sum(axis=0) / k
        var_means = (np.where(has, (mean - mu) ** 2, 0.0)).sum(axis=0) / (k - 1)
        inv_n = np.where(has, 1.0 / np.where(has, n, 1.0), 0.0).sum(axis=0) / k
        if method == "means":
            var_signal = var_means - var_noise * inv_n
        elif method == "nsd":
            var_signal = 1.0 - var_noise
        else:
            raise ConfigError(f"method: expected 'means' or 'nsd', got {method!r}")
        return np.sqrt(np.maximum(var_signal, 0.0)) / np.sqrt(var_noise)


def noise_ceiling(ncsnr_values, n: float | np.ndarray = 1) -> np.ndarray:
    """``NC = 100 * ncsnr**2 / (ncsnr**2 + 1/n)`` in percent, for responses averaged over n trials.

    ``n`` may be an array broadcasting against ``ncsnr_values`` (NSD uses the mean of ``1/n``
    over images when images have different trial counts: pass ``n = 1 / mean(1 / n_i)``).
    """
    n = np.asarray(n, dtype=np.float64)
    if np.any(n <= 0):
        raise ConfigError(f"n: number of averaged trials must be positive, got {n}")
    s2 = np.asarray(ncsnr_values, dtype=np.float64) ** 2
    with np.errstate(invalid="ignore"):
        return np.where(np.isinf(s2), 100.0, 100.0 * s2 / (s2 + 1.0 / n))


def noise_ceiling_from_repeats(repeats, n: float = 1, *, method: str = "means") -> np.ndarray:
    """Noise ceiling (percent, (n_vertices,)) of ``n``-trial responses from repeated trials."""
    return noise_ceiling(ncsnr(repeats, method=method), n=n)


def spearman_brown(r, k: float) -> np.ndarray:
    """Reliability of a k-times longer measurement from reliability ``r``: ``k r / (1 + (k-1) r)``."""
    r = np.asarray(r, dtype=np.float64)
    return k * r / (1.0 + (k - 1.0) * r)


def split_half_reliability(
    repeats, n: float | None = None, *, max_splits: int = 50, seed: int = 0
) -> np.ndarray:
    """Split-half reliability per vertex, Spearman-Brown stepped to ``n`` trials.

    Parameters
    ----------
    repeats : (n_images, n_trials, n_vertices) single-trial betas.
    n : number of trials of the response whose reliability is wanted; default ``n_trials`` (the
        classic corrected split-half reliability of the full average). ``100 *`` the result with
        ``n = 1`` estimates the same quantity as ``noise_ceiling(ncsnr(repeats), n=1)``.
    max_splits : all splits of the trials into two halves of ``n_trials // 2`` are used when
        there are at most this many, else this many random ones (``seed``).

    Returns
    -------
    (n_vertices,) float64 reliability (fraction, may be negative for pure noise).
    """
    rep = _check_repeats(repeats)
    n_tr = rep.shape[1]
    h = n_tr // 2
    n = float(n_tr if n is None else n)
    if n <= 0:
        raise ConfigError(f"n: number of trials must be positive, got {n}")
    splits = []
    for a in itertools.combinations(range(n_tr), h):
        rest = [t for t in range(n_tr) if t not in a]
        for b in itertools.combinations(rest, h):
            if (b, a) not in splits:
                splits.append((a, b))
    if len(splits) > max_splits:
        rng = np.random.default_rng(seed)
        splits = [splits[i] for i in rng.choice(len(splits), size=max_splits, replace=False)]
    from brainattn.encoders.metrics import pearson_per_column  # the one Pearson r

    r = np.mean(
        [pearson_per_column(rep[:, list(a)].mean(axis=1), rep[:, list(b)].mean(axis=1),
                            device="cpu") for a, b in splits],
        axis=0,
    )
    return spearman_brown(r, n / h)
