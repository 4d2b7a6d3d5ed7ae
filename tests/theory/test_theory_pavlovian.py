"""Pavlovian associative memory: reference implementations and the issue's targets at quick size."""

import math

import numpy as np
import pytest
import torch

from brainattn.errors import ConfigError
from brainattn.theory import pavlovian as pv


@pytest.fixture(scope="module")
def quick():
    """One run of the QUICK config on the CPU, shared by the target tests (~10 s on one core)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small batched ops: one thread is faster on a shared 2-core box
    try:
        return pv.simulate(pv.QUICK, device="cpu")
    finally:
        torch.set_num_threads(threads)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------ reference implementations


def test_hebbian_memory_and_linear_attention_match_explicit_sum():
    g = _gen()
    k = pv.random_keys(3, 7, 5, generator=g).double()
    v = pv.random_values(3, 7, 4, generator=g).double()
    q = torch.randn(3, 2, 5, generator=g, dtype=torch.float64)
    m_ref = torch.zeros(3, 4, 5, dtype=torch.float64)
    for i in range(7):
        m_ref += v[:, i, :, None] * k[:, i, None, :]
    torch.testing.assert_close(pv.hebbian_memory(k, v), m_ref)
    expect = torch.einsum("bvk,bqk->bqv", m_ref, q)
    torch.testing.assert_close(pv.retrieve(pv.hebbian_memory(k, v), q), expect)
    torch.testing.assert_close(pv.linear_attention(k, v, q), expect)


def test_random_stimuli_have_unit_norm_and_the_stated_statistics():
    g = _gen(1)
    k = pv.random_keys(200, 20, 64, generator=g)
    v = pv.random_values(200, 20, 64, generator=g)
    torch.testing.assert_close(k.norm(dim=-1), torch.ones(200, 20))
    torch.testing.assert_close(v.norm(dim=-1), torch.ones(200, 20))
    assert set(np.unique(v.numpy() * 8).tolist()) == {-1.0, 1.0}
    c = (k[:, 1:] * k[:, :1]).sum(-1)  # overlaps with the first key
    assert float((c**2).mean()) == pytest.approx(1 / 64, rel=0.05)  # E[c^2] = 1/d_k
    assert float(c.abs().mean()) == pytest.approx(math.sqrt(2 / (math.pi * 64)), rel=0.05)


def test_decay_memory_equals_the_online_rule():
    g = _gen(2)
    k = pv.random_keys(2, 9, 6, generator=g).double()
    v = pv.random_values(2, 9, 6, generator=g).double()
    m = torch.zeros(2, 6, 6, dtype=torch.float64)
    for t in range(9):
        m = 0.8 * m + v[:, t, :, None] * k[:, t, None, :]
    torch.testing.assert_close(pv.decay_memory(k, v, 0.8), m)


def test_delta_rule_is_exact_on_orthonormal_keys_and_reaches_least_squares():
    g = _gen(3)
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=g, dtype=torch.float64))
    k = q[:10][None]  # 10 orthonormal CS
    v = pv.random_values(1, 10, 8, generator=g).double()
    m = pv.delta_rule_memory(k, v, lr=1.0, epochs=1)
    torch.testing.assert_close(pv.retrieve(m, k), v)  # one pass suffices
    hebb = pv.retrieve(pv.hebbian_memory(k, v), k)
    torch.testing.assert_close(hebb, v)  # orthonormal keys: no crosstalk for Hebbian either
    # random keys, N < d_k: the delta rule converges to the least-squares memory V^T K^+T
    k = pv.random_keys(1, 12, 24, generator=g).double()
    v = pv.random_values(1, 12, 24, generator=g).double()
    m = pv.delta_rule_memory(k, v, lr=1.0, epochs=200)
    m_ls = torch.linalg.lstsq(k[0], v[0]).solution.T  # min-norm solution of K M^T = V
    torch.testing.assert_close(m[0], m_ls, atol=1e-6, rtol=1e-6)


def test_softmax_attention_matches_float64_reference():
    g = _gen(4)
    k = pv.random_keys(2, 11, 8, generator=g)
    v = pv.random_values(2, 11, 8, generator=g)
    out = pv.softmax_attention(k, v, k[:, :3], beta=3.0)
    w = torch.softmax(3.0 * k[:, :3].double() @ k.double().transpose(-1, -2), dim=-1)
    torch.testing.assert_close(out.double(), w @ v.double(), atol=1e-5, rtol=1e-5)


def test_worst_case_bound_matches_brute_force():
    g = _gen(5)
    k = pv.random_keys(3, 9, 7, generator=g).double()
    got = pv.worst_case_bound(k)
    for b in range(3):
        for n in range(1, 10):
            w = [sum(abs(float(k[b, i] @ k[b, j])) for i in range(n) if i != j) for j in range(n)]
            assert float(got[b, n - 1]) == pytest.approx(max(w), abs=1e-12)
    cap = pv.worst_case_capacity(k, 0.5)
    for b in range(3):
        assert int(cap[b]) == int((got[b] < 0.5).sum())


def test_retrieval_stats_known_answers():
    target = torch.tensor([[[0.5, 0.5, 0.5, 0.5]]])
    stored = torch.tensor([[[0.5, 0.5, 0.5, 0.5], [0.5, -0.5, 0.5, -0.5]]])
    v_hat = torch.tensor([[[0.5, 0.5, -0.5, 0.5]]])
    st = pv.retrieval_stats(v_hat, target, stored, torch.tensor([0]))
    assert float(st["noise_power"]) == pytest.approx(1.0)
    assert float(st["cosine"]) == pytest.approx(0.5)
    assert float(st["bit_error"]) == pytest.approx(0.25)
    assert float(st["top1"]) == 1.0


def test_analytic_helpers_known_values():
    assert pv.snr_theory(65, 64) == pytest.approx(1.0)
    assert pv.bit_error_from_snr(1.0) == pytest.approx(0.158655, abs=1e-6)
    assert pv.capacity_average_theory(100, 0.5 - 1e-12) > 1e10  # z -> 0: unlimited
    assert pv.capacity_average_theory(2.706, 0.05) == pytest.approx(2.0, rel=1e-3)
    assert pv.capacity_worst_case_theory(2 / math.pi, 1.0) == pytest.approx(2.0)
    assert pv.fit_exponent([1, 10, 100], [3, 30, 300]) == pytest.approx(1.0)
    assert pv.capacity_from_curve([10, 100], [0.01, 0.1], 0.0316227766) == pytest.approx(
        31.6227766, rel=1e-6
    )
    rho = pv.propagation_theory(16, 64, [1, 4], 40)
    np.testing.assert_allclose(rho[-1], pv.propagation_limit_theory(16, 64, [1, 4]), rtol=1e-6)


# ------------------------------------------------------------------------ the targets


def test_snr_within_10_percent_of_theory(quick):
    big = quick.sel(d_k=quick["d_k"] >= 64)
    ratio = (big["snr_sim"] / big["snr_theory"]).values  # theory d_k / (N - 1)
    assert np.all(np.abs(ratio - 1) < 0.10), ratio
    n = big["n_pairs"].values
    dk = big["d_k"].values[:, None]
    ok = n >= 16  # where d_k/N and d_k/(N-1) differ by < 7%
    ratio_n = big["snr_sim"].values / (dk / n)
    assert ok.sum() > 10 and np.all(np.abs(ratio_n[ok] - 1) < 0.10), ratio_n[ok]


def test_bit_error_cosine_and_top1_follow_theory(quick):
    np.testing.assert_allclose(quick["bit_error_sim"], quick["bit_error_theory"], atol=0.01)
    np.testing.assert_allclose(quick["cosine_sim"].sel(d_k=quick["d_k"] >= 64),
                               quick["cosine_theory"].sel(d_k=quick["d_k"] >= 64), atol=0.02)
    # the conditionally-independent-rivals approximation is slightly conservative
    gap = quick["top1_sim"].values - quick["top1_theory"].values
    assert np.all(gap >= -0.02) and np.all(gap <= 0.12), gap
    assert np.all(np.abs(gap[quick["d_k"].values >= 64]) <= 0.08)
    assert float(quick["top1_sim"].isel(load=0).min()) == 1.0
    assert float(quick["top1_sim"].sel(d_k=32).isel(load=-1)) < 0.5


def test_capacity_exponents(quick):
    assert float(quick["exponent_avg_sim"]) == pytest.approx(1.0, abs=0.1)
    assert float(quick["exponent_wc_sim"]) == pytest.approx(0.5, abs=0.15)
    np.testing.assert_allclose(quick["capacity_avg_sim"], quick["capacity_avg_theory"], rtol=0.05)
    # the max over pairs pulls the measured error-free capacity below the mean-field value
    ratio = (quick["capacity_wc_sim"] / quick["capacity_wc_theory"]).values
    assert np.all((ratio > 0.6) & (ratio <= 1.0)), ratio
    # ... and the extreme-value refinement predicts it to within one pair
    np.testing.assert_allclose(quick["capacity_wc_sim"], quick["capacity_wc_ev_theory"], atol=1)


def test_delta_rule_stores_up_to_d_k_pairs_where_hebbian_fails(quick):
    d = quick.attrs["rules_d_k"]
    rules = quick.sel(rules_n=[d // 2, 3 * d // 4])
    delta, hebb = rules.sel(rule="delta"), rules.sel(rule="hebbian")
    assert np.all(delta["rule_bit_error_sim"].values <= 0.002)
    assert np.all(delta["rule_top1_sim"].values == 1.0)
    assert np.all(delta["rule_cosine_sim"].values >= 0.98)
    assert np.all(hebb["rule_bit_error_sim"].values >= 0.07)
    assert np.all(hebb["rule_cosine_sim"].values <= 0.83)
    # well beyond d_k pairs the delta rule fails too
    assert float(quick["rule_bit_error_sim"].sel(rule="delta", rules_n=4 * d)) > 0.1
    # Hebbian and decay rules match their analytic bit error curves
    for r in ("hebbian", "hebbian_decay"):
        np.testing.assert_allclose(quick["rule_bit_error_sim"].sel(rule=r),
                                   quick["rule_bit_error_theory"].sel(rule=r), atol=0.01)
    assert float(quick["rule_bit_error_sim"].sel(rule="softmax").max()) < 0.001


def test_head_averaging_variance_follows_one_over_h(quick):
    first = quick["error_power_sim"].sel(layer=1)
    h = quick["heads"].values
    scaled = first.values * h / float(first.sel(heads=1))
    assert np.all(np.abs(scaled - 1) < 0.10), scaled
    ratio = (quick["error_power_sim"] / quick["error_power_theory"]).values
    assert np.all(np.abs(ratio - 1) < 0.10), ratio


# ------------------------------------------------------------------------ bad input, outputs


@pytest.mark.parametrize(
    ("key", "value"),
    [("d_k", [0, 8]), ("error_rate", 0.7), ("decay", 1.5), ("n_trials", 0), ("load", [-1.0]),
     ("prop_heads", []), ("softmax_beta", -1.0), ("seed", -3)],
)
def test_impossible_values_name_the_key(key, value):
    cfg = dict(pv.QUICK, **{key: value})
    with pytest.raises(ConfigError, match=f"'{key}'"):
        pv.simulate(cfg, device="cpu")


def test_unknown_key_is_refused():
    with pytest.raises(ConfigError, match="'dk'.*valid keys"):
        pv.simulate(dict(pv.QUICK, dk=3), device="cpu")


def test_summary_and_plot(quick):
    import matplotlib.figure

    table = pv.summary(quick)
    assert list(table.columns) == ["quantity", "setting", "simulation", "theory"]
    row = table[(table.quantity == "exponent: capacity ~ d_k^a") & (table.setting == "error-free")]
    assert float(row.simulation.iloc[0]) == pytest.approx(float(quick["exponent_wc_sim"]))
    fig = pv.plot(quick)
    assert isinstance(fig, matplotlib.figure.Figure) and len(fig.axes) == 6
    import matplotlib.pyplot as plt

    plt.close(fig)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_path_computes_the_same_functions():
    g = _gen(6)
    k = pv.random_keys(4, 50, 32, generator=g)
    v = pv.random_values(4, 50, 32, generator=g)
    for fn in (lambda a, b: pv.linear_attention(a, b, a),
               lambda a, b: pv.retrieve(pv.delta_rule_memory(a, b, epochs=3), a),
               lambda a, b: pv.softmax_attention(a, b, a, beta=4.0)):
        torch.testing.assert_close(fn(k.cuda(), v.cuda()).cpu(), fn(k, v), atol=1e-4, rtol=1e-4)
