"""Consciousness-prior bottleneck: reference computations, the factor-graph world, the target."""

import math

import numpy as np
import pytest
import torch

from brainattn.errors import ConfigError, ShapeError
from brainattn.theory import consciousness as cs


@pytest.fixture(scope="module")
def small_run():
    """Five seeds, the bottleneck at k = factor size against dense attention (~15 s, one core)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = dict(cs.QUICK, k_values=[cs.QUICK["factor_size"]], steps=200, n_test=1000)
        return cs.simulate(cfg, device="cpu")
    finally:
        torch.set_num_threads(threads)


def _model(mode, k=2, **kw):
    torch.manual_seed(0)
    return cs.ConsciousnessBottleneck(6, k=k, n_queries=2, d_model=8, d_state=4, hidden=8,
                                      mode=mode, **kw).double()


def _x(b=3, n=5, d=6, seed=0):
    return torch.randn(b, n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _reference(model, x):
    """Scores and value projections computed by hand."""
    keys = x @ model.key.weight.T + model.key.bias
    vals = x @ model.value.weight.T + model.value.bias
    scores = torch.einsum("qd,bnd->bqn", model.queries, keys) / math.sqrt(model.d_model)
    return scores, vals


def test_straight_through_forward_is_hard_top_k_and_backward_reaches_unselected():
    m = _model("straight_through")
    x = _x().requires_grad_(True)
    out = m(x)
    scores, vals = _reference(m, x.detach())
    top = scores.topk(2, dim=-1).indices
    torch.testing.assert_close(out.selected, top)
    w = out.weights.detach()
    assert set(torch.unique(w).tolist()) == {0.0, 1.0} and torch.all(w.sum(-1) == 2)
    expect = torch.stack([vals[b, top[b]].sum(1) for b in range(3)]) @ m.readout.weight.T
    torch.testing.assert_close(out.state.detach(), expect)
    out.prediction.sum().backward()
    unselected = torch.ones(3, 5, dtype=torch.bool)
    for b in range(3):
        unselected[b, top[b].flatten()] = False
    # unselected elements get gradient through the softmax surrogate
    assert x.grad[unselected].abs().sum() > 0


def test_soft_mode_is_softmax_restricted_to_top_k():
    m = _model("soft", k=3)
    x = _x(seed=1)
    out = m(x)
    scores, vals = _reference(m, x)
    top = scores.topk(3, dim=-1).indices
    ref = torch.full_like(scores, float("-inf")).scatter(-1, top, scores.gather(-1, top))
    ref = torch.softmax(ref, -1)
    torch.testing.assert_close(out.weights, ref)
    torch.testing.assert_close(out.state, (ref @ vals) @ m.readout.weight.T)


def test_dense_mode_is_softmax_attention_over_all_elements():
    m = _model("dense")
    x = _x(seed=2)
    out = m(x)
    scores, vals = _reference(m, x)
    torch.testing.assert_close(out.weights, torch.softmax(scores, -1))
    torch.testing.assert_close(out.state, (torch.softmax(scores, -1) @ vals) @ m.readout.weight.T)


def test_relax_blends_top_k_and_softmax_weights():
    m = _model("straight_through")
    x = _x(seed=3)
    hard, soft = m(x, relax=0.0).weights, m(x, relax=1.0).weights
    scores, _ = _reference(m, x)
    torch.testing.assert_close(soft, torch.softmax(scores, -1))
    mid = m(x, relax=0.25).weights
    torch.testing.assert_close(mid, 0.75 * hard + 0.25 * soft)


def test_key_dims_makes_selection_ignore_content():
    m = _model("straight_through", key_dims=3)
    x = _x(seed=4)
    y = x.clone()
    y[..., 3:] = 100 * torch.randn_like(y[..., 3:])  # change only the content features
    torch.testing.assert_close(m(x).selected, m(y).selected)
    torch.testing.assert_close(m(x).scores, m(y).scores)


def test_verifier_scores_the_prediction():
    m = _model("soft")
    x = _x(seed=5)
    pred = m(x).prediction.detach()
    torch.testing.assert_close(m.verify(x, pred), torch.zeros(3, dtype=torch.float64))
    torch.testing.assert_close(m.verify(x, pred[:, 0] + 2.0), torch.full((3,), -4.0,
                                                                           dtype=torch.float64))


def test_bad_module_input():
    with pytest.raises(ConfigError, match="k: 9 is larger"):
        _model("straight_through", k=9)(_x())
    with pytest.raises(ConfigError, match="mode"):
        cs.ConsciousnessBottleneck(4, mode="hard")
    with pytest.raises(ShapeError, match="elements"):
        _model("soft")(torch.zeros(5, 6, dtype=torch.float64))


def test_world_follows_its_factor_graph():
    w = cs.FactorGraphWorld(6, 3, 4, 8, noise=0.0, seed=3)
    assert len(w.target_parents) == 3 and w.target not in w.target_parents
    assert all(2 <= len(p) <= 3 for i, p in enumerate(w.parents) if i != w.target)
    g = torch.Generator().manual_seed(0)
    el, var, y = w.sample(50, 5, generator=g)
    assert el.shape == (50, 11, 16) and var.shape == (50, 11)
    assert torch.all((var == -1).sum(1) == 5)
    emb, content = el[..., :8], el[..., 8:]
    values = (content * emb).sum(-1) / (emb * emb).sum(-1)  # content = value * identity
    x = torch.zeros(50, 6)
    for b in range(50):
        for e in range(11):
            if var[b, e] >= 0:
                x[b, var[b, e]] = values[b, e]
    expect = x[:, w.target_parents] @ torch.as_tensor(w.weights[w.target], dtype=torch.float32)
    torch.testing.assert_close(y, expect, atol=1e-4, rtol=1e-4)
    # out of distribution the distractors' values are shifted and scaled
    el, var, _ = w.sample(4000, 5, generator=g, ood=True, ood_shift=3.0, ood_scale=2.0)
    emb, content = el[..., :8], el[..., 8:]
    dv = ((content * emb).sum(-1) / (emb * emb).sum(-1))[var < 0]
    assert float(dv.mean()) == pytest.approx(3.0, abs=0.1)
    assert float(dv.std()) == pytest.approx(2.0, abs=0.1)
    assert w.oracle_error == 0.0


@pytest.mark.parametrize("n_queries", [1, 2])
def test_evaluate_model_selection_metrics_match_a_loop(n_queries):
    w = cs.FactorGraphWorld(5, 2, 3, 8, noise=0.1, seed=1)
    torch.manual_seed(1)
    m = cs.ConsciousnessBottleneck(16, k=2, n_queries=n_queries, d_model=8, d_state=4, hidden=8)
    ev = cs.evaluate_model(m, w, n_test=40, n_distractors=3, generator=torch.Generator().manual_seed(2),
                           ood=False, ood_shift=3.0, ood_scale=2.0)
    el, var, y = w.sample(40, 3, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = m(el)
    parents = set(w.target_parents.tolist())
    exact, prec, rec, freq = [], [], [], np.zeros(5)
    for b in range(40):
        chosen = [int(var[b, e]) for e in out.selected[b].flatten()]
        vars_ = {v for v in chosen if v >= 0}
        exact.append(vars_ == parents and -1 not in chosen)
        prec.append(len(vars_ & parents) / len(chosen))
        rec.append(len(vars_ & parents) / len(parents))
        for v in vars_:
            freq[v] += 1 / 40
    assert ev["exact"] == pytest.approx(np.mean(exact))
    assert ev["precision"] == pytest.approx(np.mean(prec))
    assert ev["recall"] == pytest.approx(np.mean(rec))
    np.testing.assert_allclose(ev["freq"], freq, atol=1e-6)
    err = float(((out.prediction[:, 0] - y) ** 2).mean()) / w.target_variance
    assert ev["error"] == pytest.approx(err, rel=1e-5)


def test_bottleneck_selects_the_true_parents_and_ignores_shifted_distractors(small_run):
    ds = small_run
    assert ds.sizes["seed"] >= 5
    k = ds.attrs["factor_size"]
    top = ds.sel(model=f"top{k}")
    assert float(top["selection_exact_id"].mean()) >= 0.90
    assert float(top["selection_exact_ood"].mean()) >= 0.90
    # exact selection keeps distractors out: shifting them leaves the error unchanged
    np.testing.assert_allclose(top["error_ood"], top["error_id"], rtol=0.2)
    # and the error comes close to the analytic noise floor
    assert float(top["error_id"].mean()) < 3 * float(ds["error_oracle"].mean())
    # selection frequency: parents always, other variables never
    freq = top["selection_freq"].values
    tp = ds["true_parent"].values
    assert freq[tp].mean() > 0.9 and freq[~tp].mean() < 0.05
    assert np.all(np.isfinite(ds["error_ood"].sel(model="dense")))


def test_summary_reports_paired_ood_difference(small_run):
    table = cs.summary(small_run)
    assert list(table.model) == ["dense", f"top{small_run.attrs['factor_size']}"]
    row = table.iloc[1]
    diff = (small_run["error_ood"].isel(model=1) - small_run["error_ood"].isel(model=0)).values
    assert row.ood_minus_dense == pytest.approx(diff.mean())
    assert row.ci95_low < row.ood_minus_dense < row.ci95_high
    import matplotlib.pyplot as plt

    fig = cs.plot(small_run)
    assert len(fig.axes) >= 3
    plt.close(fig)


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [("k_values", [30], "k=30 is larger than the number of elements"),
     ("factor_size", 8, "factor_size"), ("mode", "hard", "mode"), ("n_seeds", 0, "n_seeds"),
     ("anneal_fraction", 2.0, "anneal_fraction"), ("d_id", -1, "d_id"), ("novelty", 1, "novelty")],
)
def test_bad_config_names_the_key(key, value, match):
    with pytest.raises(ConfigError, match=match):
        cs.simulate(dict(cs.QUICK, **{key: value}), device="cpu")
