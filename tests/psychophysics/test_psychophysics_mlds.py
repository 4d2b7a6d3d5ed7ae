"""MLDS fits (optim, formula, lapse), bootstrap, diagnostics, six-point test, result object."""

import itertools

import numpy as np
import pytest

from brainattn.errors import ConfigError, DataError, OutputExistsError
from brainattn.psychophysics.design import as_trials, make_design
from brainattn.psychophysics.diagnostics import six_point_sets
from brainattn.psychophysics.mlds import MLDS, fit_mlds
from brainattn.psychophysics.observer import SimulatedObserver, simulate_experiment


@pytest.fixture(scope="module")
def trials():
    obs = SimulatedObserver(np.linspace(0, 1, 9) ** 2, sigma=0.12, stimulus=np.linspace(1, 5, 9))
    return simulate_experiment(obs, "quadruple", repeats=2, seed=4)


@pytest.fixture(scope="module")
def boot_result(trials):
    return fit_mlds(trials, bootstrap=400, diagnostics=400, seed=1)


def test_optim_is_the_glm_fit_rescaled(trials):
    g = fit_mlds(trials, "glm")
    o = fit_mlds(trials, "optim")
    # R's identity: 1 / sigma_optim == max psi_glm (here the last level), same likelihood
    assert abs(1.0 / o.sigma - g.psi.max()) < 1e-5 * g.psi.max()
    np.testing.assert_allclose(o.psi, g.psi / g.psi[-1], atol=1e-6)
    assert abs(o.loglik - g.loglik) < 1e-7
    assert o.psi[0] == 0 and o.psi[-1] == 1
    np.testing.assert_allclose(g.sigma_normalized[0], o.sigma, rtol=1e-5)
    assert o.n_params == g.n_params == trials.n_levels - 1
    # delta method: se(sigma_optim) = se(psi_p) / psi_p^2 (glm); optim uses the observed and
    # glm the expected information, which differ by a few percent for the probit link
    assert o.sigma_se == pytest.approx(g.psi_se[-1] / g.psi[-1] ** 2, rel=0.05)


def test_normalized_wald_se_is_the_optim_se(trials):
    # the delta method on the glm covariance gives the se of the optim (psi_p = 1) fit
    g = fit_mlds(trials, "glm").scale_normalized.sel(stat="se").values
    o = fit_mlds(trials, "optim").scale.sel(stat="se").values
    assert g[0] == 0 and g[-1] == pytest.approx(0, abs=1e-12)
    np.testing.assert_allclose(g[1:-1], o[1:-1], rtol=0.05)  # expected vs observed information


def test_formula_recovers_exponent_and_lr_test(trials):
    res = fit_mlds(trials, "formula", formula="power")
    gamma = res.formula["params"][0]
    assert abs(gamma - 2.0) < 3 * res.formula["bse"][0] + 0.05
    assert res.sigma == pytest.approx(0.12, rel=0.35)
    g = fit_mlds(trials, "glm")
    assert res.loglik <= g.loglik + 1e-9
    assert res.formula["lr_stat"] == pytest.approx(2 * (g.loglik - res.loglik), abs=1e-6)
    assert res.formula["lr_df"] == trials.n_levels - 1 - 2
    assert res.formula["lr_p"] > 0.01  # the true family is not rejected
    # a wrong scale (square root for a squared truth; sigma the only parameter) is rejected
    bad = fit_mlds(trials, "formula", formula=lambda s: (s / 5.0) ** 0.5, p0=[])
    assert bad.formula["lr_df"] == trials.n_levels - 2 and bad.formula["lr_p"] < 1e-6
    # a concave family on convex data runs to its linear limit: reported, not returned
    with pytest.raises(ConfigError, match="boundary"):
        fit_mlds(trials, "formula", formula="saturating")


def test_formula_batched_solver_equals_separate_fits(trials):
    import torch  # noqa: F401  (the built-in formulas are torch functions)

    from brainattn.psychophysics.design import _grouped
    from brainattn.psychophysics.formula import PARAMETRIC_SCALES, solve_formula_batch

    base = fit_mlds(trials, "formula", formula="power")
    rng = np.random.default_rng(11)
    Y = (rng.random((3, trials.n_trials)) < base.fitted).astype(int)
    Xu, inv, m, _ = _grouped(trials.design_matrix(drop_first=False), trials.resp.astype(float))
    K = np.stack([np.bincount(inv, weights=y, minlength=len(Xu)) for y in Y])
    th, ok, _ = solve_formula_batch(Xu, m, K, trials.stimulus, PARAMETRIC_SCALES["power"][0], base.link,
                                    base.params)
    assert ok.all()
    for b in range(3):
        single = fit_mlds(trials.with_responses(Y[b]), "formula", formula="power")
        np.testing.assert_allclose(th[b], single.params, atol=1e-6)


def test_formula_bootstrap(trials):
    res = fit_mlds(trials, "formula", formula="power", bootstrap=150, diagnostics=100, seed=2)
    assert res.boot_psi.shape[1] == trials.n_levels and res.n_boot_failed < 10
    # every replicate is a power curve: psi_1 = (1/5)^gamma, psi_p = 1
    np.testing.assert_allclose(res.boot_psi[:, -1], 1.0)
    sc = res.scale
    assert np.all(sc.sel(stat="lower").values <= res.psi + 1e-12)
    assert np.all(res.psi <= sc.sel(stat="upper").values + 1e-12)
    sig_se = res.boot_sigma.std(ddof=1)
    assert sig_se == pytest.approx(res.sigma_se, rel=0.3)  # bootstrap vs Wald
    assert res.diagnostics is not None and res.six_point["n"] > 0
    with pytest.raises(ConfigError, match="torch-differentiable"):
        fit_mlds(trials, "formula", formula=lambda s, g: np.power(np.asarray(s, float) / 5.0, g), p0=[1.0],
                 bootstrap=10)


def test_formula_with_numpy_only_callable(trials):
    def power_np(s, gamma):  # np.power breaks torch autograd -> finite differences are used
        return np.power(np.asarray(s, dtype=float) / 5.0, gamma)

    a = fit_mlds(trials, "formula", formula=power_np, p0=[1.0])
    b = fit_mlds(trials, "formula", formula="power")
    assert a.formula["params"][0] == pytest.approx(b.formula["params"][0], abs=1e-4)
    assert a.loglik == pytest.approx(b.loglik, abs=1e-6)


def test_formula_not_identifiable(trials):
    with pytest.raises(ConfigError, match="cannot be identified"):
        # the amplitude a is confounded with sigma
        fit_mlds(trials, "formula", formula=lambda s, a, g: a * (s / 5.0) ** g, p0=[1.0, 1.0])
    with pytest.raises(ConfigError, match="p0"):
        fit_mlds(trials, "formula", formula=lambda s, g: s**g)


def test_lapse_rate_recovered():
    obs = SimulatedObserver(np.linspace(0, 1, 8), sigma=0.08, lapse=0.1)
    tr = simulate_experiment(obs, "quadruple", repeats=12, seed=7)
    res = fit_mlds(tr, lapse="fit")
    assert res.lapse_fitted and res.n_params == tr.n_levels
    assert abs(res.lapse - 0.1) < 3 * res.lapse_se + 0.02
    no = fit_mlds(tr)
    assert res.loglik > no.loglik + 5  # a real lapse rate improves the fit clearly
    fixed = fit_mlds(tr, lapse=0.1)
    assert fixed.lapse == 0.1 and not fixed.lapse_fitted
    with pytest.raises(ConfigError, match="lapse"):
        fit_mlds(tr, lapse=0.7)
    # asymmetric fixed asymptotes (psyphy 2asym): symmetric pair == the lapse rate
    pair = fit_mlds(tr, lapse=(0.05, 0.05))
    np.testing.assert_allclose(pair.psi, fixed.psi, atol=1e-8)
    skew = fit_mlds(tr, lapse=(0.1, 0.0))
    assert skew.asymptotes == (0.1, 0.0) and skew.fitted.min() > 0.1
    assert skew.to_dataset().attrs["lower_asymptote"] == 0.1
    with pytest.raises(ConfigError, match="asymptotes"):
        fit_mlds(tr, lapse=(0.6, 0.5))


def test_both_asymptotes_fitted():
    # an observer who says "second pair" on 12% of trials whatever the stimuli: lower asymptote
    obs = SimulatedObserver(np.linspace(0, 1, 8), sigma=0.08)
    d = make_design(8, "quadruple", repeats=10, seed=3)
    rng = np.random.default_rng(4)
    p_resp = 0.12 + 0.88 * obs.probability(d)
    tr = as_trials((rng.random(len(d)) < p_resp).astype(int), d)
    res = fit_mlds(tr, lapse="fit-both")
    lo, up = res.asymptotes
    assert abs(lo - 0.12) < 3 * res.asymptotes_se[0] + 0.02 and up < 0.04
    assert res.n_params == tr.n_levels - 1 + 2
    sym = fit_mlds(tr, lapse="fit")
    assert res.loglik > sym.loglik


def test_bootstrap_result_object(boot_result, trials):
    r = boot_result
    assert r.boot_psi.shape == (400 - r.n_boot_failed, trials.n_levels)
    sc = r.scale
    assert sc.dims == ("level", "stat") and list(sc.stat.values) == ["estimate", "se", "lower", "upper"]
    np.testing.assert_allclose(sc.sel(stat="se").values, r.boot_psi.std(axis=0, ddof=1))
    lo, hi = sc.sel(stat="lower").values, sc.sel(stat="upper").values
    assert np.all(lo[1:] < r.psi[1:]) and np.all(r.psi[1:] < hi[1:])
    ci = r.conf_int(0.1)
    assert ci.shape == (trials.n_levels + 1, 2)
    np.testing.assert_allclose(ci["lower"].values[:-1], np.quantile(r.boot_psi, 0.05, axis=0))
    assert np.all(sc.sel(stat="se").values[1:] > 0.5 * r.psi_se[1:])
    # R's boot.mlds convention: sigma = 1 / psi_p per replicate
    sn = r.sigma_normalized
    assert sn[1] == pytest.approx(np.std(1 / r.boot_psi[:, -1], ddof=1))
    text = r.summary()
    assert "log-likelihood" in text and "six-point" in text and "runs" in text
    assert f"{r.loglik:.4f}" in text


def test_diagnostics_envelope_and_runs(boot_result, trials):
    d = boot_result.diagnostics
    env = d["envelope"]
    assert env.shape == (trials.n_trials, 3)
    assert np.all(np.diff(env[:, 1]) >= -1e-12)  # sorted residual medians increase
    assert np.all(env[:, 0] <= env[:, 1]) and np.all(env[:, 1] <= env[:, 2])
    # data from the model itself: residuals inside the envelope, runs typical
    assert d["envelope_outside"] < 0.1
    assert 0.01 < d["runs_p"] < 0.99
    # runs as R counts them: sign changes of (residual > 0) in order of fitted probability
    r = boot_result.deviance_residuals
    pos = r[np.argsort(boot_result.fitted, kind="stable")] > 0
    assert d["runs_observed"] == int(np.sum(pos[1:] != pos[:-1]))


def test_six_point_sets_match_brute_force(trials):
    sets = six_point_sets(trials)
    stim = [tuple(s) for s in trials.stim]
    p = trials.n_levels
    expected = 0
    for a in itertools.combinations(range(1, p + 1), 3):
        for b in itertools.combinations(range(2, p + 1), 3):
            if a[0] < b[0]:
                qa, qb, qe = (a[0], a[1], b[0], b[1]), (a[1], a[2], b[1], b[2]), (a[0], a[2], b[0], b[2])
                expected += min(stim.count(qa), stim.count(qb), stim.count(qe))
    assert len(sets) == expected > 0
    for ia, ib, ie in sets[:50]:
        A, B, E = trials.stim[ia], trials.stim[ib], trials.stim[ie]
        assert A[0] == E[0] and A[1] == B[0] and B[1] == E[1]  # a1, a2, a3
        assert A[2] == E[2] and A[3] == B[2] and B[3] == E[3]  # b1, b2, b3


def test_diagnostics_detect_an_observer_without_a_scale():
    # responses that ignore the scale's structure: psi used differs by trial position
    obs = SimulatedObserver(np.linspace(0, 1, 7), sigma=0.1)
    d = make_design(7, "quadruple", repeats=6, seed=2, swap_pairs=0.0)
    rng = np.random.default_rng(5)
    first = np.abs(obs.psi[d[:, 1] - 1] - obs.psi[d[:, 0] - 1]) ** 0.3  # pairs compared on
    second = np.abs(obs.psi[d[:, 3] - 1] - obs.psi[d[:, 2] - 1]) ** 3.0  # incompatible metrics
    resp = (second - first + 0.5 * rng.standard_normal(len(d)) > 0).astype(int)
    bad = fit_mlds(as_trials(resp, d), diagnostics=300, seed=0)
    good = fit_mlds(as_trials(obs.respond(d, 6), d), diagnostics=300, seed=0)
    # binom.diagnostics flags it: too few runs of residual signs, residuals outside the envelope
    assert bad.diagnostics["runs_p"] < 0.05 and bad.diagnostics["envelope_outside"] > 0.2
    assert good.diagnostics["runs_p"] > 0.05 and good.diagnostics["envelope_outside"] < 0.1
    assert good.six_point["p"] > 0.01 and good.six_point["n"] == 7 * 6  # 7 conditions x 6 repeats


def test_to_dataset_and_save(boot_result, tmp_path):
    ds = boot_result.to_dataset()
    for name in ("scale", "scale_normalized", "sigma", "resp", "S", "fitted", "deviance_residual",
                 "envelope", "bootstrap_scale", "stimulus"):
        assert name in ds
    assert ds["scale"].dims == ("level", "stat")
    assert ds.attrs["loglik"] == boot_result.loglik and ds.attrs["method"] == "glm"
    np.testing.assert_allclose(ds["scale_normalized"].sel(stat="estimate")[[0, -1]], [0, 1])
    out = boot_result.save(tmp_path / "fit")
    assert sorted(p.name for p in out.iterdir()) == ["scale.nc", "scale.png", "summary.txt"]
    from brainattn.io import load_netcdf

    back = load_netcdf(out / "scale.nc")
    np.testing.assert_allclose(back["scale"].values, ds["scale"].values)
    with pytest.raises(OutputExistsError):
        boot_result.save(tmp_path / "fit")


def test_plot_returns_figure(boot_result):
    import matplotlib.figure
    import matplotlib.pyplot as plt

    fig = boot_result.plot(normalized=True)
    assert isinstance(fig, matplotlib.figure.Figure)
    ax = fig.axes[0]
    assert ax.get_ylabel().startswith("perceptual scale")
    plt.close(fig)


def test_estimator_contract(trials):
    from sklearn.base import clone

    est = MLDS(method="optim", link="logit")
    assert est.fit(trials) is est
    c = clone(est)
    assert c.get_params() == est.get_params() and not hasattr(c, "result_")
    assert est.scale_[-1] == 1.0 and est.sigma_ > 0
    p = est.predict_proba(trials)
    assert p.shape == (trials.n_trials,) and np.all((p > 0) & (p < 1))
    assert est.score(trials) == pytest.approx(est.result_.loglik / trials.n_trials)


def test_precision_by_repeats_plans_experiments():
    from brainattn.psychophysics.observer import precision_by_repeats

    obs = SimulatedObserver(np.linspace(0, 1, 6) ** 1.5, sigma=0.3)
    ds = precision_by_repeats(obs, "quadruple", repeats=(4, 16), n_experiments=300, seed=0)
    assert list(ds.n_trials.values) == [60, 240] and ds.failed.sum() == 0
    ratio = ds.sd.sel(repeats=4).values[1:] / ds.sd.sel(repeats=16).values[1:]
    assert np.all((ratio > 1.6) & (ratio < 2.8)), ratio  # sd ~ 1 / sqrt(trials) = 2x
    # the small-sample bias of the maximum likelihood scale shrinks with more trials
    assert abs(ds.bias.sel(repeats=16).values[-1]) < 0.5 * abs(ds.bias.sel(repeats=4).values[-1])


def test_bad_arguments(trials):
    with pytest.raises(ConfigError, match="method"):
        fit_mlds(trials, "nls")
    with pytest.raises(ConfigError, match="bootstrap"):
        fit_mlds(trials, bootstrap=-1)
    with pytest.raises(ConfigError, match="formula"):
        fit_mlds(trials, "formula")
    rank_def = as_trials([1, 0, 1, 0], [[1, 2, 3], [1, 2, 3], [4, 5, 6], [4, 5, 6]])
    with pytest.raises(DataError, match="rank deficient"):
        fit_mlds(rank_def)


@pytest.mark.slow
def test_bootstrap_intervals_cover_truth_at_nominal_rate():
    """95% percentile intervals cover the planted scale in 90-99% of 200 experiments."""
    p = 7
    psi = np.linspace(0, 1, p) ** 1.5
    sigma = 0.15
    obs = SimulatedObserver(psi, sigma=sigma)
    d = make_design(p, "quadruple", repeats=20, seed=0)
    truth = psi / sigma  # glm convention: psi_1 = 0, sigma = 1
    truth_n = psi / psi[-1]
    rng = np.random.default_rng(123)
    cover, cover_n = [], []
    for _ in range(200):
        res = fit_mlds(as_trials(obs.respond(d, rng), d), bootstrap=300,
                       seed=int(rng.integers(2**31)))
        sc = res.scale
        cover.append((sc.sel(stat="lower").values[1:] <= truth[1:]) & (truth[1:] <= sc.sel(stat="upper").values[1:]))
        sn = res.scale_normalized
        cover_n.append((sn.sel(stat="lower").values[1:-1] <= truth_n[1:-1])
                       & (truth_n[1:-1] <= sn.sel(stat="upper").values[1:-1]))
    c, cn = np.mean(cover), np.mean(cover_n)
    assert 0.90 <= c <= 0.99, c
    assert 0.90 <= cn <= 0.99, cn


def test_presentation_order_does_not_change_the_fit():
    """Reversing a pair keeps the response, swapping the pairs flips it (R's SwapOrder): the
    reader must give the same canonical trials and the same scale whatever the order shown."""
    obs = SimulatedObserver(np.linspace(0, 1, 7) ** 1.3, sigma=0.15)
    d = make_design(7, "quadruple", repeats=3, seed=8)
    resp = obs.respond(d, 9)
    base = fit_mlds(as_trials(resp, d))
    rng = np.random.default_rng(10)
    shown, r = d.copy(), resp.copy()
    rev1, rev2, swap = (rng.random((3, len(d))) < 0.5)
    shown[rev1] = shown[rev1][:, [1, 0, 2, 3]]
    shown[rev2] = shown[rev2][:, [0, 1, 3, 2]]
    shown[swap] = shown[swap][:, [2, 3, 0, 1]]
    r[swap] = 1 - r[swap]
    other = fit_mlds(as_trials(r, shown))
    np.testing.assert_array_equal(as_trials(r, shown).stim, as_trials(resp, d).stim)
    np.testing.assert_allclose(other.psi, base.psi, atol=1e-10)
    assert other.loglik == pytest.approx(base.loglik, abs=1e-9)
