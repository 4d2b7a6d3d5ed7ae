"""Paired statistics over repetitions: perceived-image accuracy against raw-image accuracy."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from brainattn.errors import ConfigError


def paired_comparison(
    a: Sequence[float], b: Sequence[float], *, n_boot: int = 2000, ci: float = 0.95, seed: int = 0
) -> dict[str, float]:
    """Paired comparison of ``a`` against ``b`` (same seeds): differences ``d = a - b``.

    Returns ``mean_diff``, ``sd_diff`` (ddof 1), ``ci_low``/``ci_high`` (percentile bootstrap of
    the mean difference, ``n_boot`` resamples, level ``ci``), ``t_stat``/``t_pvalue`` (paired
    t-test, two-sided), ``w_stat``/``w_pvalue`` (Wilcoxon signed-rank, two-sided) and ``n``.
    Statistics that are undefined (one pair, all differences zero) are NaN.
    """
    from scipy import stats

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ConfigError(f"paired_comparison: expected two 1-d arrays of equal length, got {a.shape}, {b.shape}")
    d = a - b
    n = len(d)
    out = {"n": float(n), "mean_diff": float(d.mean()) if n else math.nan}
    out["sd_diff"] = float(d.std(ddof=1)) if n > 1 else math.nan
    nan = math.nan
    out.update(t_stat=nan, t_pvalue=nan, w_stat=nan, w_pvalue=nan)
    if n > 1 and out["sd_diff"] > 0:
        t = stats.ttest_rel(a, b)
        out["t_stat"], out["t_pvalue"] = float(t.statistic), float(t.pvalue)
    if n > 1 and np.any(d != 0):
        w = stats.wilcoxon(a, b)
        out["w_stat"], out["w_pvalue"] = float(w.statistic), float(w.pvalue)
    if n:
        rng = np.random.default_rng(seed)
        means = d[rng.integers(0, n, size=(n_boot, n))].mean(1)
        lo, hi = np.quantile(means, [(1 - ci) / 2, (1 + ci) / 2])
        out["ci_low"], out["ci_high"] = float(lo), float(hi)
    else:
        out["ci_low"] = out["ci_high"] = nan
    return out

