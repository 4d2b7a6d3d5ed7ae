"""Banded ridge split scores and variance partitioning recover a planted split."""

import itertools

import numpy as np
import pytest
import torch

from brainattn.analyses.partition import (
    banded_ridge,
    partition_from_subsets,
    split_r2,
    variance_partition,
)
from brainattn.errors import ConfigError, ShapeError

torch.set_num_threads(1)


def _planted(n=500, v_group=12, seed=0, r2=0.6):
    """Spaces A = [Z, U_A], B = [Z, U_B]; vertex groups driven by U_A, U_B or the shared Z."""
    rng = np.random.default_rng(seed)
    Z, UA, UB = (rng.standard_normal((n, 4)) for _ in range(3))
    Y = []
    for drive in (UA, UB, Z):
        s = drive @ rng.standard_normal((4, v_group))
        s /= s.std(0)
        Y.append(np.sqrt(r2) * s + np.sqrt(1 - r2) * rng.standard_normal((n, v_group)))
    spaces = {"A": np.hstack([Z, UA]), "B": np.hstack([Z, UB])}
    return spaces, np.hstack(Y), np.arange(350), np.arange(350, n)


def test_variance_partition_recovers_planted_unique_and_shared():
    spaces, Y, tr, te = _planted()
    ds = variance_partition(spaces, Y, tr, te, n_iter=10, device="cpu")
    part = ds["partition"].to_pandas()
    assert list(ds["part"].values) == ["unique:A", "unique:B", "shared:A+B"]
    g = [slice(0, 12), slice(12, 24), slice(24, 36)]
    for k, name in enumerate(["unique:A", "unique:B", "shared:A+B"]):
        row = part.loc[name].values
        assert row[g[k]].mean() == pytest.approx(0.6, abs=0.1)  # planted R^2 0.6
        for j in range(3):
            if j != k:
                assert abs(row[g[j]].mean()) < 0.06
    # the atoms add up to the joint R^2
    np.testing.assert_allclose(ds["partition"].sum("part"), ds["r2"], atol=1e-9)
    # split scores of the joint model: a U_A vertex's R^2 belongs to A
    split = ds["split_r2"].sel(space="A").values
    assert split[g[0]].mean() == pytest.approx(ds["r2"].values[g[0]].mean(), abs=0.05)
    assert abs(split[g[1]].mean()) < 0.05


def test_dual_form_agrees_with_primal():
    spaces, Y, tr, te = _planted(n=120, v_group=4, seed=1, r2=0.8)
    tr, te = np.arange(80), np.arange(80, 120)
    primal = banded_ridge(spaces, Y, tr, te, n_iter=10, device="cpu")
    dual = banded_ridge(spaces, Y, tr, te, n_iter=10, device="cpu", form="dual")
    assert primal.attrs["solver"] == "BandedRidgeCV" and dual.attrs["solver"] == "MultipleKernelRidgeCV"
    # the same model in its two forms: same candidates, same kernels X X^T / p
    np.testing.assert_allclose(primal["r2"].values, dual["r2"].values, atol=0.02)
    assert primal["r2"].values.mean() > 0.6
    wide = {k: np.hstack([x] * 12) for k, x in spaces.items()}  # 96 features > 80 images
    assert banded_ridge(wide, Y, tr, te, n_iter=2, device="cpu").attrs["solver"] == \
        "MultipleKernelRidgeCV"


def test_partition_formula_on_a_known_venn_measure():
    rng = np.random.default_rng(3)
    names = ["a", "b", "c"]
    atoms = {frozenset(t): rng.uniform() for s in range(1, 4) for t in itertools.combinations(names, s)}
    r2 = {frozenset(S): sum(m for t, m in atoms.items() if t & frozenset(S))
          for s in range(1, 4) for S in itertools.combinations(names, s)}
    got = partition_from_subsets(r2, names)
    for t, m in atoms.items():
        assert got[t] == pytest.approx(m)


def test_split_r2_sums_to_joint_and_errors():
    rng = np.random.default_rng(4)
    y = rng.standard_normal((50, 3))
    p = rng.standard_normal((2, 50, 3)) * 0.3 + 0.5 * y
    yc, tot = y - y.mean(0), (p - p.mean(1, keepdims=True)).sum(0)
    np.testing.assert_allclose(split_r2(y, p).sum(0), 1 - ((yc - tot) ** 2).sum(0) / (yc**2).sum(0))
    spaces, Y, tr, te = _planted(n=60, v_group=2)
    with pytest.raises(ShapeError, match="overlap"):
        banded_ridge(spaces, Y, np.arange(40), np.arange(30, 60))
    with pytest.raises(ConfigError):
        variance_partition({"A": spaces["A"]}, Y, np.arange(40), np.arange(40, 60))
    with pytest.raises(ShapeError):
        banded_ridge({"A": spaces["A"][:10]}, Y, np.arange(40), np.arange(40, 60))
