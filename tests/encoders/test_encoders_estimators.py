"""The three encoders follow scikit-learn's estimator contract: parameters from ``__init__``
(queries included), ``clone`` refits the same model, ``cross_val_score`` and ``GridSearchCV``
run on (tokens, betas)."""

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, KFold, cross_val_score

from brainattn.encoders.factorized import SpatialFeatureEncoder
from brainattn.encoders.ridge import RidgeEncoder
from brainattn.encoders.transformer import QueryAssignment, TransformerBrainEncoder, assign_queries


def _planted(n=96, L=9, C=6, V=4, seed=0):
    """Tokens (n, L, C) float16 and betas (n, V): each vertex reads one token's features."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, L, C)).astype(np.float16)
    W = rng.standard_normal((C, V))
    Y = np.stack([X[:, (1 + 2 * v) % L].astype(np.float64) @ W[:, v] for v in range(V)], 1)
    return X, (Y + 0.3 * rng.standard_normal(Y.shape) * Y.std(0)).astype(np.float32)


SMALL = {
    "transformer": lambda: TransformerBrainEncoder(width=16, heads=2, ffn=16, epochs=3,
                                                   batch_size=16, lr=3e-3, device="cpu"),
    "factorized": lambda: SpatialFeatureEncoder(n_centers=3, n_components=6, device="cpu"),
    "ridge": lambda: RidgeEncoder(pool="pca", n_components=40, device="cpu"),
}


@pytest.mark.parametrize("name", list(SMALL))
def test_clone_refits_the_same_model(name):
    X, Y = _planted()
    est = SMALL[name]()
    a = est.fit(X, Y).predict(X[:8])
    twin = clone(est)
    assert not hasattr(twin, "coef_") and not hasattr(twin, "module_")  # learned state is not cloned
    assert twin.get_params() == est.get_params()
    np.testing.assert_array_equal(twin.fit(X, Y).predict(X[:8]), a)


@pytest.mark.parametrize("name", list(SMALL))
def test_cross_val_score_and_grid_search_run(name):
    X, Y = _planted()
    est = SMALL[name]()
    scores = cross_val_score(est, X, Y, cv=KFold(3))
    assert scores.shape == (3,) and np.isfinite(scores).all()
    if name != "transformer":  # closed-form fits recover the planted mapping
        assert scores.mean() > 0.5, scores
    grid = {"transformer": {"lr": [1e-3, 3e-3]}, "factorized": {"n_components": [3, 6]},
            "ridge": {"alphas": [(1e4, 1e5), (0.1, 1.0)]}}[name]
    search = GridSearchCV(est, grid, cv=KFold(2)).fit(X, Y)
    assert len(search.cv_results_["mean_test_score"]) == 2
    if name == "ridge":  # heavy shrinkage loses to light shrinkage on a high-SNR signal
        assert search.best_params_ == {"alphas": (0.1, 1.0)}


def test_defaults_fit_and_every_hyper_parameter_is_a_parameter():
    X, Y = _planted(n=48, L=4, C=4, V=2)
    est = TransformerBrainEncoder(epochs=1, device="cpu")  # published size otherwise
    assert est.fit(X, Y) is est and est.predict(X[:3]).shape == (3, 2)
    params = TransformerBrainEncoder().get_params()
    for k in ("queries", "hemisphere", "roi_labels", "roi_families", "grid", "width", "seed"):
        assert k in params
    assert RidgeEncoder().fit(X, Y).predict(X[:3]).shape == (3, 2)
    assert set(SpatialFeatureEncoder().get_params()) >= {"grid", "method", "val_fraction"}


def test_queries_come_from_init_and_survive_clone_and_load(tmp_path):
    X, Y = _planted(V=6)
    hemi = np.array(["lh"] * 3 + ["rh"] * 3)
    roi = {"floc-faces": np.array(["FFA", "Unknown", "FFA", "OFA", "OFA", "Unknown"])}
    est = TransformerBrainEncoder(queries="rois", hemisphere=hemi, roi_labels=roi, width=16,
                                  heads=2, ffn=16, epochs=1, device="cpu")
    names, vq = assign_queries("rois", hemi, roi)
    est.fit(X, Y)
    assert est.query_names_ == names and est.vertex_query_.tolist() == vq.tolist()
    assert clone(est).fit(X, Y).query_names_ == names
    est.save(tmp_path)
    again = TransformerBrainEncoder.load(tmp_path)
    assert isinstance(again.queries, QueryAssignment)
    assert again.queries.vertex_query.tolist() == vq.tolist()
    np.testing.assert_array_equal(again.predict(X[:5]), est.predict(X[:5]))
    # the loaded estimator's parameters rebuild the same queries in a refit
    assert clone(again).set_params(device="cpu").fit(X, Y).query_names_ == names
    with pytest.raises(Exception, match="hemisphere has 6 entries for 4 vertices"):
        TransformerBrainEncoder(hemisphere=hemi, epochs=1, width=16, heads=2, ffn=16,
                                device="cpu").fit(*_planted(V=4))


def test_cpu_fit_says_how_long_it_takes_and_the_probe_changes_nothing(monkeypatch):
    import warnings

    from brainattn.encoders import transformer as T

    X, Y = _planted(n=64)
    make = SMALL["transformer"]
    said = []
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        monkeypatch.setattr(T.cpu_time_notice, "__defaults__", None)
        monkeypatch.setattr(T.cpu_time_notice, "__kwdefaults__", {"threshold_s": 0.0})
        probed = make().fit(X, Y, log=said.append).predict(X[:8])
    msg = [m for m in said if "on the CPU this fit takes about" in m]
    assert msg and "--preset cpu" in msg[0] and "3 epochs x 4 steps" in msg[0], said
    assert any("--preset cpu" in str(x.message) for x in w)
    monkeypatch.setattr(T, "cpu_time_notice", lambda *a, **k: 0.0)
    np.testing.assert_array_equal(make().fit(X, Y).predict(X[:8]), probed)
