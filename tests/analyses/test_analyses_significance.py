"""Permutation p-values, BH q-values and bootstrap ROI intervals on planted truth."""

import numpy as np
import pytest
import torch
from scipy import stats

from brainattn.analyses.significance import (
    bh_qvalues,
    bootstrap_r,
    bootstrap_roi_medians,
    permutation_pvalues,
    resamples,
    significance_table,
)
from brainattn.errors import ConfigError, ShapeError

torch.set_num_threads(1)


def _planted(n, v, r_true, rng):
    """pred, true with population correlation r_true per column (array (v,))."""
    z = rng.standard_normal((n, v))
    e = rng.standard_normal((n, v))
    true = r_true * z + np.sqrt(1 - r_true**2) * e
    return z, true


def test_p_uniform_under_the_null():
    rng = np.random.default_rng(0)
    pred, true = rng.standard_normal((40, 2000)), rng.standard_normal((40, 2000))
    r, p = permutation_pvalues(pred, true, n_permutations=1000, seed=1, device="cpu")
    assert np.isfinite(p).all() and p.min() >= 1 / 1001 and p.max() <= 1
    assert stats.kstest(p, "uniform").pvalue > 0.01
    # the permutation p agrees with the exact t-test p of r under Gaussian data (same null)
    t = r * np.sqrt(38 / (1 - r**2))
    p_t = stats.t.sf(t, 38)
    # Monte-Carlo error of p at 1,000 permutations: sd <= 0.016
    assert np.abs(p - p_t).mean() < 0.01 and np.abs(p - p_t).max() < 0.08


def test_fdr_at_nominal_rate_and_power_on_planted_signal():
    rng = np.random.default_rng(2)
    alpha, fdp, power = 0.1, [], []
    for _ in range(8):
        r_true = np.zeros(600)
        r_true[:120] = 0.7  # 20 % of the vertices carry signal
        pred, true = _planted(30, 600, r_true, rng)
        _, p = permutation_pvalues(pred, true, n_permutations=1000, seed=int(rng.integers(1e6)),
                                   device="cpu")
        hit = bh_qvalues(p) <= alpha
        fdp.append(hit[120:].sum() / max(1, hit.sum()))
        power.append(hit[:120].mean())
    # BH's FDR is pi0 * alpha = 0.08 here; 8 runs x ~120 discoveries give a tight mean
    assert np.mean(fdp) <= alpha
    assert np.mean(fdp) > 0.02  # not trivially conservative
    assert np.mean(power) > 0.95


def test_bh_matches_scipy_and_keeps_nan():
    rng = np.random.default_rng(3)
    p = rng.uniform(size=200) ** 2
    q = bh_qvalues(p)
    np.testing.assert_allclose(q, stats.false_discovery_control(p, method="bh"), rtol=1e-12)
    p2 = p.copy()
    p2[[5, 17]] = np.nan
    q2 = bh_qvalues(p2)
    assert np.isnan(q2[[5, 17]]).all()
    keep = np.isfinite(p2)
    np.testing.assert_allclose(q2[keep], stats.false_discovery_control(p2[keep]), rtol=1e-12)
    with pytest.raises(ConfigError):
        bh_qvalues([0.1, 1.5])


def test_batching_does_not_change_p_and_constant_columns_are_nan():
    rng = np.random.default_rng(4)
    pred, true = _planted(20, 50, np.full(50, 0.3), rng)
    true[:, 7] = 1.0  # constant target: r undefined
    r1, p1 = permutation_pvalues(pred, true, n_permutations=300, seed=5, device="cpu")
    r2, p2 = permutation_pvalues(pred, true, n_permutations=300, seed=5, device="cpu",
                                 memory_mb=0.01)  # one vertex / few permutations per chunk
    np.testing.assert_array_equal(p1, p2)
    assert np.isnan(p1[7]) and np.isnan(r1[7])
    np.testing.assert_allclose(r1[np.isfinite(r1)],
                               [stats.pearsonr(pred[:, j], true[:, j])[0] for j in range(50) if j != 7],
                               atol=1e-5)
    with pytest.raises(ShapeError):
        permutation_pvalues(pred[:2], true[:2])
    with pytest.raises(ConfigError):
        permutation_pvalues(pred, true, n_permutations=0)


def test_bootstrap_interval_covers_the_roi_median():
    rng = np.random.default_rng(6)
    r_true = np.r_[np.full(100, 0.6), np.full(100, 0.1)]
    pred, true = _planted(150, 200, r_true, rng)
    labels = {"fam": np.r_[np.full(100, "A"), np.full(90, "B"), np.full(10, "Unknown")]}
    ds = bootstrap_roi_medians(pred, true, labels, n_bootstrap=500, seed=0, device="cpu")
    assert list(ds["roi"].values) == ["fam/A", "fam/B"]
    lo, hi = ds["roi_median_r_ci"].values.T
    med = ds["roi_median_r"].values
    assert np.all(lo < med) and np.all(med < hi)
    # the interval is about the sampling error of r at n = 150: sd ~ (1 - r^2) / sqrt(n)
    width = hi - lo
    expect = 2 * 1.96 * (1 - np.array([0.6, 0.1]) ** 2) / np.sqrt(150)
    assert np.all(width < expect) and np.all(width > 0.1 * expect)
    assert lo[0] < 0.6 < hi[0] + 0.05


def test_significance_dataset_labels():
    rng = np.random.default_rng(7)
    r_true = np.r_[np.full(30, 0.8), np.zeros(30)]
    pred, true = _planted(40, 60, r_true, rng)
    coords = {"hemisphere": np.repeat(["lh", "rh"], 30), "roi_fam": np.repeat(["X", "Y"], 30)}
    ds = significance_table(pred, true, vertex_coords=coords, n_permutations=200, n_bootstrap=100,
                      device="cpu")
    assert ds["significant"].values[:30].all()
    assert ds["significant"].values[30:].sum() <= 3
    assert ds.attrs["n_significant"] == int(ds["significant"].sum())
    assert set(ds["roi"].values) == {"fam/X", "fam/Y"}
    assert ds["hemisphere"].values[0] == "lh"


def test_bootstrap_r_is_r_of_the_resampled_images():
    rng = np.random.default_rng(8)
    pred, true = _planted(25, 40, np.full(40, 0.5), rng)
    true[:, 3] = true[:, 3] * 0 + np.arange(25) % 2  # two values: some resamples are constant
    boot = bootstrap_r(pred, true, n_bootstrap=30, seed=9, device="cpu", memory_mb=0.01)
    idx = resamples(25, 30, 9).numpy()
    for b in range(30):
        p, t = pred[idx[b]], true[idx[b]]
        with np.errstate(all="ignore"):
            want = [np.corrcoef(p[:, j], t[:, j])[0, 1] for j in range(40)]
        np.testing.assert_allclose(boot[b], want, atol=1e-5)
