import numpy as np
import pytest

from brainattn.encoders.factorized import SpatialFeatureEncoder
from brainattn.encoders.ridge import RidgeEncoder


def _pooled_problem(n=240, L=4, c=12, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, L, c)).astype(np.float32)
    w = rng.standard_normal((c, 3))
    clean = X.mean(1) @ w
    noise_sd = np.array([0.05, 1.0, 20.0])  # per-vertex SNR -> per-vertex alpha
    Y = clean + noise_sd * rng.standard_normal(clean.shape) * clean.std(0)
    return X, Y.astype(np.float32)


def test_ridge_matches_sklearn_at_the_chosen_alpha_and_alphas_follow_snr():
    from sklearn.linear_model import Ridge

    X, Y = _pooled_problem()
    est = RidgeEncoder(pool="mean", alphas=np.logspace(-3, 5, 17), device="cpu").fit(X[:200], Y[:200])
    assert est.alphas_[0] < est.alphas_[1] < est.alphas_[2]
    Z = X[:200].mean(1)
    Zs = (Z - Z.mean(0)) / (Z.std(0) + 1e-6)
    Zt = (X[200:].mean(1) - Z.mean(0)) / (Z.std(0) + 1e-6)
    for j in range(3):
        ref = Ridge(alpha=float(est.alphas_[j])).fit(Zs, Y[:200, j])
        np.testing.assert_allclose(est.predict(X[200:])[:, j], ref.predict(Zt), rtol=1e-3, atol=1e-3)


def test_ridge_cv_picks_himalayas_alphas_and_predicts_as_himalaya():
    """The CV solver computes what himalaya's RidgeCV(solver="svd", fit_intercept=True)
    computes (same folds, score and rule), in feature space."""
    from himalaya.backend import set_backend
    from himalaya.ridge import RidgeCV

    X, Y = _pooled_problem(n=300)
    Y = np.concatenate([Y, Y[:, :1] * 3 + 1], 1)  # a rescaled copy: the same alpha
    alphas = np.logspace(-2, 5, 12)
    est = RidgeEncoder(pool="mean", alphas=alphas, cv=5, device="cpu").fit(X, Y)
    Z = X.mean(1)
    Zs = (Z - Z.mean(0)) / (Z.std(0) + 1e-6)
    set_backend("numpy")
    ref = RidgeCV(alphas=alphas, cv=5, fit_intercept=True).fit(Zs.astype(np.float64),
                                                              Y.astype(np.float64))
    np.testing.assert_allclose(est.alphas_, ref.best_alphas_, rtol=1e-5)
    assert est.alphas_[3] == est.alphas_[0]
    np.testing.assert_allclose(est.predict(X[:20]), ref.predict(Zs[:20]), rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(est.cv_scores_, ref.cv_scores_, rtol=1e-3)


def test_ridge_pca_recovers_a_token_specific_signal(tmp_path):
    rng = np.random.default_rng(1)
    X = rng.standard_normal((300, 9, 4)).astype(np.float32)
    Y = np.stack([X[:, 0, 1], X[:, 8, 2]], 1) + 0.2 * rng.standard_normal((300, 2))
    est = RidgeEncoder(pool="pca", n_components=36, device="cpu").fit(X[:250], Y[:250])
    r = [np.corrcoef(est.predict(X[250:])[:, j], Y[250:, j])[0, 1] for j in range(2)]
    assert min(r) > 0.9
    mean_only = RidgeEncoder(pool="mean", device="cpu").fit(X[:250], Y[:250])
    assert mean_only.score(X[250:], Y[250:]) < 0.5  # pooling loses where the signal is
    est.save(tmp_path)
    np.testing.assert_array_equal(RidgeEncoder.load(tmp_path).predict(X[:5]), est.predict(X[:5]))


@pytest.mark.parametrize("method", ["fwrf", pytest.param("sgd", marks=pytest.mark.slow)])
def test_factorized_recovers_planted_maps_and_features(method, tmp_path):
    rng = np.random.default_rng(2)
    grid = (5, 5)
    X = rng.standard_normal((600, 25, 6)).astype(np.float32)
    where = [3, 17, 21]
    what = rng.standard_normal((3, 6))
    Y = np.stack([X[:, t] @ what[k] for k, t in enumerate(where)], 1)
    Y = Y + 0.3 * rng.standard_normal(Y.shape) * Y.std(0)
    est = SpatialFeatureEncoder(method=method, epochs=40, lr=1e-2, patience=None, smoothness=0.0,
                                grid=grid, device="cpu").fit(X[:500], Y[:500])
    maps = est.maps().reshape(3, -1)
    assert maps.argmax(1).tolist() == where
    r = [np.corrcoef(est.predict(X[500:])[:, j], Y[500:, j])[0, 1] for j in range(3)]
    assert min(r) > 0.9, r
    est.save(tmp_path)
    np.testing.assert_array_equal(SpatialFeatureEncoder.load(tmp_path).predict(X[:4]),
                                  est.predict(X[:4]))


def test_ridge_solver_in_float32_keeps_float64_accuracy_on_correlated_features():
    """The solver eigendecomposes Gram matrices (the squared condition number of the rows); it
    must still give float32 coefficients at least as close to the float64 solution as the SVD of
    the rows it replaced (on this problem, condition number ~1e3: 8e-7 relative, the SVD 5e-6)."""
    import torch

    from brainattn.encoders.ridge import DEFAULT_ALPHAS, solve_ridge_cv

    rng = np.random.default_rng(3)
    n, p, t = 600, 48, 40
    X = rng.standard_normal((n, p)) @ np.diag(np.logspace(0, -3, p)) @ rng.standard_normal((p, p))
    X = (X - X.mean(0)) / X.std(0) + 0.3  # features off-centre: the intercept is exercised
    Y = X @ rng.standard_normal((p, t)) * rng.uniform(0, 0.5, t) + rng.standard_normal((n, t)) + 2
    ref = solve_ridge_cv(torch.from_numpy(X), torch.from_numpy(Y), DEFAULT_ALPHAS)
    got = solve_ridge_cv(torch.from_numpy(X).float(), torch.from_numpy(Y).float(), DEFAULT_ALPHAS)
    np.testing.assert_allclose(got[2].numpy(), ref[2].numpy(), rtol=1e-6)  # the same alphas
    rel = (got[0].double() - ref[0]).norm() / ref[0].norm()
    assert rel < 3e-6, float(rel)
    np.testing.assert_allclose(got[1].double().numpy(), ref[1].numpy(), atol=1e-5)
