"""GLM solvers against statsmodels' own GLM, Firth, separation, lapse links."""

import numpy as np
import pytest
import statsmodels.api as sm

from brainattn.psychophysics.design import as_trials, make_design
from brainattn.psychophysics.glm import (
    LapseLink,
    detect_separation,
    get_link,
    solve_firth,
    solve_mlds_glm,
)
from brainattn.psychophysics.mlds import fit_mlds
from brainattn.psychophysics.observer import SimulatedObserver

LINKS = sm.families.links


def _data(p=11, repeats=3, sigma=0.15, seed=0, kind="quadruple"):
    obs = SimulatedObserver(np.linspace(0, 1, p) ** 2, sigma=sigma)
    d = make_design(p, kind, repeats=repeats, seed=seed, swap_pairs=0.5)
    return as_trials(obs.respond(d, seed + 1), d)


@pytest.fixture(autouse=True)
def _quiet_domain_warning():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=sm.tools.sm_exceptions.DomainWarning)
        yield


def _sm_fit(tr, link):
    X = tr.design_matrix()
    model = sm.GLM(tr.resp.astype(float), X, family=sm.families.Binomial(link=link, check_link=False))
    res = model.fit(tol=1e-14, maxiter=2000)
    # statsmodels stops on the deviance change, which for slow (Fisher-scoring) links such as
    # cauchit leaves ~1e-8 in the estimates: restart IRLS from its own answer until it is still
    for _ in range(5):
        res = model.fit(start_params=res.params, tol=1e-14, maxiter=2000)
    return res


@pytest.mark.parametrize("name, cls", [("probit", LINKS.Probit), ("logit", LINKS.Logit),
                                       ("cauchit", LINKS.Cauchy), ("cloglog", LINKS.CLogLog)])
def test_glm_equals_statsmodels_to_1e8(name, cls):
    tr = _data()
    ref = _sm_fit(tr, cls())
    res = fit_mlds(tr, "glm", name)
    np.testing.assert_allclose(res.params, ref.params, rtol=0, atol=1e-8)
    np.testing.assert_allclose(res.bse, ref.bse, rtol=0, atol=1e-8)
    assert abs(res.loglik - ref.llf) < 1e-8
    assert abs(res.aic - ref.aic) < 1e-8
    assert abs(res.deviance - ref.deviance) < 1e-8
    # the statsmodels engine gives the same numbers through statsmodels itself
    res_sm = fit_mlds(tr, "glm", cls(), engine="statsmodels")
    np.testing.assert_allclose(res_sm.psi, res.psi, atol=1e-8)


def test_batched_replicates_equal_separate_statsmodels_fits():
    tr = _data(p=7, repeats=4)
    X = tr.design_matrix()
    rng = np.random.default_rng(3)
    Y = (rng.random((5, tr.n_trials)) < 0.5 + 0.4 * np.tanh(X @ np.arange(1, 7) / 6)).astype(float)
    sol = solve_mlds_glm(X, Y, "probit", n_threads=2, chunk=2)
    for b in range(5):
        ref = sm.GLM(Y[b], X, family=sm.families.Binomial(link=LINKS.Probit())).fit(tol=1e-14, maxiter=2000)
        np.testing.assert_allclose(sol.beta[b], ref.params, atol=1e-8)
        np.testing.assert_allclose(np.sqrt(np.diag(sol.cov[b])), ref.bse, atol=1e-8)
        assert abs(sol.loglik[b] - ref.llf) < 1e-8
    assert sol.converged.all()


def test_grouped_counts_give_the_same_fit():
    tr = _data(p=6, repeats=5)
    X = tr.design_matrix()
    full = solve_mlds_glm(X, tr.resp, "logit")
    Xu, inv = np.unique(X, axis=0, return_inverse=True)
    m = np.bincount(inv.ravel()).astype(float)
    k = np.bincount(inv.ravel(), weights=tr.resp.astype(float))
    grouped = solve_mlds_glm(Xu, k, "logit", weights=m)
    np.testing.assert_allclose(grouped.beta, full.beta, atol=1e-10)
    assert abs(grouped.loglik - full.loglik) < 1e-9


def test_lapse_link_matches_statsmodels_glm_with_the_same_link():
    tr = _data(p=8, repeats=3)
    link = LapseLink("probit", 0.02, 0.02)
    mu = link.inverse(np.array([-1.0, 0.0, 2.0]))
    np.testing.assert_allclose(mu, 0.02 + 0.96 * sm.families.links.Probit().inverse(np.array([-1.0, 0.0, 2.0])))
    np.testing.assert_allclose(link(mu), [-1.0, 0.0, 2.0], atol=1e-10)
    ref = _sm_fit(tr, LapseLink("probit", 0.02, 0.02))
    res = fit_mlds(tr, lapse=0.04)
    np.testing.assert_allclose(res.params, ref.params, atol=1e-6)
    assert abs(res.loglik - ref.llf) < 1e-8


def test_separation_is_detected_and_firth_gives_finite_estimates():
    d = make_design(5, "triad", repeats=2, shuffle=False)
    obs = SimulatedObserver(np.arange(5.0) ** 1.5, sigma=1e-3)
    y = (obs.probability(d) > 0.5).astype(int)
    tr = as_trials(y, d)
    sep, direction, trials = detect_separation(tr.design_matrix(), tr.resp)
    assert sep and len(trials) > 0
    s = 2 * tr.resp - 1
    assert np.all(s * (tr.design_matrix() @ direction) >= -1e-9)
    # a non-separated data set is not flagged
    noisy = _data(p=6, sigma=0.5, repeats=4)
    assert not detect_separation(noisy.design_matrix(), noisy.resp)[0]
    assert fit_mlds(noisy).converged
    with pytest.raises(Exception, match="perfectly separable.*firth"):
        fit_mlds(tr)
    res = fit_mlds(tr, firth=True)
    assert res.separated and np.all(np.isfinite(res.psi)) and np.all(np.abs(res.psi) < 50)
    assert np.all(np.diff(res.psi) > 0)  # the order of the planted scale survives


def test_firth_logit_solves_firths_adjusted_score():
    # Firth (1993) for the logit link: sum_i (y_i - mu_i + h_i (1/2 - mu_i)) x_i = 0
    tr = _data(p=6, repeats=2, sigma=0.3)
    X = tr.design_matrix()
    y = tr.resp.astype(float)
    beta, cov, ll, pen, conv = solve_firth(X, y, "logit")
    assert conv
    mu = 1 / (1 + np.exp(-X @ beta))
    w = mu * (1 - mu)
    Xw = X * np.sqrt(w)[:, None]
    h = np.einsum("ij,jk,ik->i", Xw, np.linalg.inv(Xw.T @ Xw), Xw)
    score = X.T @ (y - mu + h * (0.5 - mu))
    np.testing.assert_allclose(score, 0, atol=1e-7)
    # the bias-reduced estimates shrink towards 0 relative to the MLE
    mle = solve_mlds_glm(X, y, "logit")
    assert np.linalg.norm(beta) < np.linalg.norm(mle.beta)
    assert pen > ll


def test_get_link_rejects_unknown():
    with pytest.raises(Exception, match="unknown link 'probitt'"):
        get_link("probitt")


def test_batched_firth_equals_single_firth_and_bootstrap_runs():
    from brainattn.psychophysics.bootstrap import solve_firth_batch
    from brainattn.psychophysics.design import _grouped

    d = make_design(5, "triad", repeats=2, shuffle=False)
    obs = SimulatedObserver(np.arange(5.0) ** 1.5, sigma=1e-3)
    tr = as_trials((obs.probability(d) > 0.5).astype(int), d)  # separated data
    res = fit_mlds(tr, firth=True, link="logit")
    X = tr.design_matrix()
    rng = np.random.default_rng(0)
    Y = (rng.random((3, tr.n_trials)) < res.fitted).astype(float)
    Xu, inv, m, _ = _grouped(X, tr.resp)
    K = np.stack([np.bincount(inv, weights=y, minlength=len(Xu)) for y in Y])
    beta, ok, _ = solve_firth_batch(Xu, m, K, res.link, res.params)
    assert ok.all()
    for b in range(3):
        single = solve_firth(X, Y[b], "logit")[0]
        np.testing.assert_allclose(beta[b], single, atol=1e-6)
    # logit: Firth's own estimator, finite for every replicate (Kosmidis & Firth 2021)
    boot = fit_mlds(tr, firth=True, link="logit", bootstrap=100, seed=1)
    assert boot.n_boot_failed == 0 and np.all(np.isfinite(boot.boot_psi))
    # probit: replicates where the penalised likelihood has no reachable maximum are dropped and
    # counted, never returned as huge numbers
    pb = fit_mlds(tr, firth=True, bootstrap=100, seed=1)
    assert len(pb.boot_psi) + pb.n_boot_failed == 100 and np.all(np.abs(pb.boot_psi) < 100)
    sc = boot.scale
    assert np.all(sc.sel(stat="upper").values[1:] > sc.sel(stat="lower").values[1:])
