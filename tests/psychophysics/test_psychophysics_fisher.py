"""Fisher information: closed forms vs autograd, Bures path, predicted scales, comparisons."""

import numpy as np
import pytest
import torch

from brainattn.errors import ConfigError
from brainattn.psychophysics.fisher import (
    bures_map,
    bures_path,
    compare_scales,
    fisher_bures_path,
    fisher_density,
    fisher_frequency_bandwidth,
    fisher_gaussian,
    fisher_mode_frequency,
    fisher_orientation_bandwidth,
    fisher_texture_path,
    octave_to_log_sigma,
    predicted_scale,
)

C = float(np.sqrt(np.log(2) / 8))  # log-normal sd per octave of bandwidth


def test_mode_frequency_closed_form_equals_autograd():
    # log f ~ N(log f0 + sigma^2, sigma^2): a 1-d Gaussian model of the frequency
    b = 1.5
    s = float(octave_to_log_sigma(b))
    f0 = np.array([1.0, 2.0, 3.3, 5.0])
    num = fisher_gaussian(lambda f: (torch.log(f) + s * s).reshape(1),
                          lambda f: torch.full((1,), s * s, dtype=torch.float64), f0)
    np.testing.assert_allclose(fisher_mode_frequency(f0, b), num, rtol=1e-12)


def test_frequency_bandwidth_closed_form_equals_autograd_and_science_md():
    b = np.array([0.25, 0.75, 1.75, 3.25])
    num = fisher_gaussian(lambda x: (np.log(3.0) + (C * x) ** 2).reshape(1),
                          lambda x: ((C * x) ** 2).reshape(1), b)
    closed = fisher_frequency_bandwidth(b)
    np.testing.assert_allclose(closed, num, rtol=1e-12)
    # SCIENCE.md: sqrt(I) ∝ sqrt(ln2/2 (1 + 4 / (b^2 ln2)))
    np.testing.assert_allclose(closed, np.log(2) / 2 * (1 + 4 / (b**2 * np.log(2))))


def test_orientation_bandwidth_closed_form_equals_numeric_density():
    grid = np.linspace(-np.pi / 2, np.pi / 2, 8001)

    def logp(theta, B):  # von Mises on 2 theta, kappa = 1 / (4 B^2), B in degrees
        k = 1.0 / (4.0 * (B * np.pi / 180.0) ** 2)
        return k * torch.cos(2 * theta)

    B = np.array([1.5, 4.0, 9.0, 13.5])
    np.testing.assert_allclose(fisher_orientation_bandwidth(B), fisher_density(logp, B, grid), rtol=1e-6)
    # large concentration limit: von Mises -> Gaussian, I(kappa) -> 1 / (2 kappa^2)
    br = np.deg2rad(0.5)
    kappa = 1 / (4 * br**2)
    approx = 1 / (2 * kappa**2) * (1 / (2 * br**3)) ** 2
    assert fisher_orientation_bandwidth(0.5) == pytest.approx(
        approx * (np.pi / 180) ** 2, rel=1e-3)


def test_bures_path_endpoints_and_map():
    rng = np.random.default_rng(0)
    A = rng.normal(size=(5, 5))
    S0 = A @ A.T + np.eye(5)
    Bm = rng.normal(size=(5, 5))
    S1 = Bm @ Bm.T + 0.5 * np.eye(5)
    T = bures_map(S0, S1)
    np.testing.assert_allclose(T, T.T, atol=1e-10)
    np.testing.assert_allclose(T @ S0 @ T, S1, atol=1e-9)  # T pushes N(0,S0) onto N(0,S1)
    assert np.all(np.linalg.eigvalsh(T) > 0)
    a, b = rng.normal(size=5), rng.normal(size=5)
    m0, C0 = bures_path(a, S0, b, S1, 0.0)
    m1, C1 = bures_path(a, S0, b, S1, 1.0)
    np.testing.assert_allclose(C0, S0, atol=1e-12)
    np.testing.assert_allclose(C1, S1, atol=1e-9)
    np.testing.assert_allclose(m1, b)


def test_bures_fisher_closed_form_equals_autograd():
    rng = np.random.default_rng(1)
    A = rng.normal(size=(4, 4))
    S0 = A @ A.T + np.eye(4)
    Bm = rng.normal(size=(4, 4))
    S1 = Bm @ Bm.T + np.eye(4)
    a, b = rng.normal(size=4), rng.normal(size=4)
    T = torch.tensor(bures_map(S0, S1))
    I4 = torch.eye(4, dtype=torch.float64)

    def cov(t):
        M = (1 - t) * I4 + t * T
        return M @ torch.tensor(S0) @ M

    ts = np.array([0.0, 0.25, 0.6, 1.0])
    num = fisher_gaussian(lambda t: (1 - t) * torch.tensor(a) + t * torch.tensor(b), cov, ts)
    np.testing.assert_allclose(fisher_bures_path(a, S0, b, S1, ts), num, rtol=1e-10)
    # diagonal (spectral) form equals the matrix form on diagonal covariances
    s0, s1 = rng.uniform(0.5, 2, 6), rng.uniform(0.5, 2, 6)
    np.testing.assert_allclose(fisher_bures_path(np.zeros(6), s0, np.zeros(6), s1, ts),
                               fisher_bures_path(np.zeros(6), np.diag(s0), np.zeros(6), np.diag(s1), ts),
                               rtol=1e-10)
    # texture path: 0.5 sum (2 (sqrt s1 - sqrt s0) / sqrt s_t)^2
    t = 0.3
    st = ((1 - t) * np.sqrt(s0) + t * np.sqrt(s1)) ** 2
    expected = 0.5 * np.sum((2 * (np.sqrt(s1) - np.sqrt(s0)) / np.sqrt(st)) ** 2)
    assert fisher_texture_path(s0, s1, t)[0] == pytest.approx(expected, rel=1e-12)


def test_predicted_scales_known_answers():
    f = np.linspace(1, 5, 13)
    np.testing.assert_allclose(predicted_scale("mode-frequency", f), np.log(f) / np.log(5), atol=1e-6)
    # bandwidth: integral of sqrt(ln2/2 + 2/b^2) in closed form
    b = np.linspace(0.25, 3.25, 13)
    a2, c2 = np.log(2) / 2, 2.0

    def F(x):
        r = np.sqrt(a2 * x**2 + c2)
        return r - np.sqrt(c2) * np.log((np.sqrt(c2) + r) / x)

    ref = (F(b) - F(b[0])) / (F(b[-1]) - F(b[0]))
    np.testing.assert_allclose(predicted_scale("frequency-bandwidth", b), ref, atol=1e-6)
    # constant information -> linear scale; callable models accepted
    np.testing.assert_allclose(predicted_scale(lambda s: np.ones_like(s), [2, 3, 7]), [0, 0.2, 1], atol=1e-12)
    o = predicted_scale("orientation-bandwidth", np.linspace(1.5, 13.5, 13))
    assert o[0] == 0 and o[-1] == 1 and np.all(np.diff(o) > 0)
    with pytest.raises(ConfigError, match="unknown Fisher model"):
        predicted_scale("contrast", f)
    with pytest.raises(ConfigError, match="increasing"):
        predicted_scale("mode-frequency", [3, 2, 1])


def test_compare_scales_scores():
    s = np.linspace(1, 5, 9)
    pred = np.log(s) / np.log(5)
    same = compare_scales(3 + 2 * pred, pred, s)  # affine copies compare equal
    assert same["area_match"] == pytest.approx(1) and same["rmse"] == pytest.approx(0, abs=1e-12)
    assert same["correlation"] == pytest.approx(1)
    u = (s - 1) / 4
    mirror = 2 * u - pred  # reflected through the diagonal: no agreement at all
    opp = compare_scales(mirror, pred, s)
    assert opp["area_match"] == pytest.approx(0, abs=1e-12)
    half = compare_scales((u + pred) / 2, pred, s)  # halfway to the diagonal
    assert 0.3 < half["area_match"] < 0.7
    rng = np.random.default_rng(0)
    boot = pred + 0.02 * rng.standard_normal((200, 9))
    boot[:, 0], boot[:, -1] = 0, 1
    out = compare_scales(pred, pred, s, bootstrap=boot)
    assert out["rmse_lower"] < out["rmse_upper"] and out["area_match_upper"] <= 1 + 1e-12
    with pytest.raises(ConfigError, match="shapes differ"):
        compare_scales(pred[:-1], pred, s)


def test_observer_following_fisher_prediction_is_matched_end_to_end():
    """Vacher & Mamassian's design (13 levels, triads with gaps <= 3, 5 repeats): an observer
    whose scale is the Fisher prediction is matched by it, a linear observer is not."""
    from brainattn.psychophysics import SimulatedObserver, fit_mlds, simulate_experiment

    f = np.linspace(1, 5, 13)
    pred = predicted_scale("mode-frequency", f)
    scores = {}
    for name, psi in (("fisher", pred), ("linear", (f - 1) / 4)):
        obs = SimulatedObserver(psi, sigma=0.1, stimulus=f)
        tr = simulate_experiment(obs, "triad", repeats=5, max_gap=3, seed=1)
        assert tr.n_trials == 405
        res = fit_mlds(tr, "optim", bootstrap=200, seed=0)
        scores[name] = compare_scales(res.psi, pred, f, bootstrap=res.boot_psi)
    good, bad = scores["fisher"], scores["linear"]
    assert good["rmse"] < 0.05 and good["area_match"] > 0.7 and good["correlation"] > 0.99
    assert bad["rmse"] > 0.1 and bad["area_match_upper"] < good["area_match_lower"]
