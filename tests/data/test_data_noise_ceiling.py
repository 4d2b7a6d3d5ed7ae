"""Noise ceiling: NSD's ncsnr and NC formula on a hand-computed case and on simulated data."""

import numpy as np
import pytest

from brainattn.data import ncsnr, noise_ceiling, spearman_brown, split_half_reliability
from brainattn.errors import ConfigError, DataError, ShapeError

# one vertex, 3 images x 2 trials
HAND = np.array([[1.0, 3.0], [2.0, 2.0], [6.0, 8.0]])


def test_hand_computed_means_method():
    # across-trial variances (ddof=1): 2, 0, 2 -> sd_noise^2 = 4/3
    # trial means 2, 2, 7 -> variance (ddof=1) 25/3; minus (4/3)/2 -> sd_signal^2 = 23/3
    # ncsnr^2 = (23/3) / (4/3) = 23/4
    assert ncsnr(HAND)[0] == pytest.approx(np.sqrt(23 / 4), rel=1e-12)
    assert noise_ceiling(np.sqrt(23 / 4), n=1) == pytest.approx(100 * 5.75 / 6.75, rel=1e-12)
    assert noise_ceiling(np.sqrt(23 / 4), n=2) == pytest.approx(100 * 5.75 / 6.25, rel=1e-12)


def test_hand_computed_nsd_method():
    # z-score all 6 trials (population sd^2 = 56/9): sd_noise^2 = (4/3) / (56/9) = 3/14,
    # NSD: sd_signal^2 = 1 - 3/14 = 11/14, ncsnr^2 = 11/3
    z = (HAND - HAND.mean()) / HAND.std()
    assert ncsnr(z, method="nsd")[0] == pytest.approx(np.sqrt(11 / 3), rel=1e-12)


def test_nc_edges():
    np.testing.assert_allclose(noise_ceiling([0.0, np.inf, 1.0], n=[1, 1, 3]), [0.0, 100.0, 75.0])
    with pytest.raises(ConfigError, match="must be positive"):
        noise_ceiling(1.0, n=0)
    assert spearman_brown(0.5, 2) == pytest.approx(2 / 3)
    # no signal at all: the estimate is clipped at 0 -> NC 0
    flat = np.tile(np.array([[0.0, 1.0, -1.0]]), (5, 1))
    assert ncsnr(flat)[0] == 0.0


def test_simulated_known_snr_within_10_percent():
    rng = np.random.default_rng(1)
    n_img, n_tr = 4000, 3
    true = np.linspace(0.5, 2.0, 16)  # ncsnr per vertex
    sd_noise = rng.uniform(0.5, 2.0, true.size)
    signal = rng.standard_normal((n_img, 1, true.size)) * true * sd_noise
    rep = 3.0 + signal + rng.standard_normal((n_img, n_tr, true.size)) * sd_noise
    est = ncsnr(rep)
    np.testing.assert_allclose(est, true, rtol=0.1)
    nc_true = noise_ceiling(true, n=1)
    np.testing.assert_allclose(noise_ceiling(est, n=1), nc_true, rtol=0.1)
    # split-half reliability (Spearman-Brown to 1 trial) estimates the same quantity
    sh1 = 100 * split_half_reliability(rep, n=1)
    np.testing.assert_allclose(sh1, nc_true, rtol=0.1)
    # and, stepped to all 3 trials, the NC of the 3-trial average
    np.testing.assert_allclose(100 * split_half_reliability(rep), noise_ceiling(true, n=3), rtol=0.1)


def test_split_half_even_trials_all_splits():
    rng = np.random.default_rng(2)
    s = rng.standard_normal((3000, 1, 4))
    rep = s + rng.standard_normal((3000, 4, 4))  # ncsnr 1 -> NC(4 trials) = 80 %
    np.testing.assert_allclose(100 * split_half_reliability(rep), 80.0, rtol=0.1)


def test_bad_repeats():
    with pytest.raises(ShapeError, match="at least 2 trials"):
        ncsnr(np.zeros((5, 1, 3)))
    with pytest.raises(ShapeError, match=r"expected shape \(n_images, n_trials, n_vertices\)"):
        ncsnr(np.zeros(5))
    bad = np.ones((5, 2, 3))
    bad[0, 0, 0] = np.nan
    with pytest.raises(DataError, match="1 NaN/Inf"):
        ncsnr(bad)
    with pytest.raises(ConfigError, match="method"):
        ncsnr(np.random.default_rng(0).standard_normal((5, 2, 3)), method="magic")


def test_missing_trials():
    rng = np.random.default_rng(4)
    true = np.array([0.6, 1.0, 1.8])
    rep = rng.standard_normal((4000, 1, 3)) * true + rng.standard_normal((4000, 3, 3))
    full = ncsnr(rep)
    np.testing.assert_allclose(ncsnr(rep, allow_missing=True), full, rtol=1e-10)
    holes = rep.copy()
    drop = rng.random((4000, 3)) < 0.3  # NSD-like: images with 1-3 trials
    holes[:, 1:][np.broadcast_to(drop[:, 1:, None], holes[:, 1:].shape)] = np.nan
    np.testing.assert_allclose(ncsnr(holes, allow_missing=True), true, rtol=0.1)
    with pytest.raises(DataError, match="NaN/Inf"):
        ncsnr(holes)
