import numpy as np
import pytest

from brainattn.encoders.metrics import (
    noise_normalized,
    pearson_per_column,
    roi_medians,
    score_table,
    vertex_status,
)
from brainattn.errors import ShapeError


def test_pearson_matches_numpy_corrcoef():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((50, 7))
    b = 0.5 * a + rng.standard_normal((50, 7))
    r = pearson_per_column(a.astype(np.float32), b.astype(np.float32), device="cpu", batch=3)
    ref = [np.corrcoef(a[:, j], b[:, j])[0, 1] for j in range(7)]
    np.testing.assert_allclose(r, ref, atol=1e-6)


def test_constant_and_nan_vertices_are_nan_and_reported():
    rng = np.random.default_rng(1)
    true = rng.standard_normal((20, 4))
    pred = rng.standard_normal((20, 4))
    true[:, 1] = 3.0
    pred[:, 2] = 0.0
    true[5, 3] = np.nan
    r = pearson_per_column(pred, true, device="cpu")
    assert np.isfinite(r[0]) and np.isnan(r[1:]).all()
    assert vertex_status(pred, true).tolist() == [
        "ok", "constant_target", "constant_prediction", "nonfinite"]


def test_noise_normalized_algonauts_rule():
    r = np.array([0.5, -0.3, 0.9, 0.5, np.nan])
    nc = np.array([50.0, 40.0, 50.0, 0.0, 50.0])
    s = noise_normalized(r, nc)
    assert s[0] == pytest.approx(50.0)  # 100 * 0.25 / 0.50
    assert s[1] == 0.0  # r < 0 -> 0
    assert s[2] == 100.0  # 162 % capped at 100
    assert np.isnan(s[3]) and np.isnan(s[4])


def test_roi_medians_skip_unknown_and_nan():
    vals = np.array([1.0, 3.0, np.nan, 10.0, 20.0, 30.0, 5.0])
    labs = np.array(["A", "A", "A", "B", "B", "B", "Unknown"])
    med = roi_medians(vals, labs)
    assert med == {"A": (2.0, 2), "B": (20.0, 3)}


def test_shape_mismatch_is_an_error():
    with pytest.raises(ShapeError, match="pred has shape"):
        pearson_per_column(np.zeros((5, 3)), np.zeros((5, 4)))


def test_score_table_layout():
    rng = np.random.default_rng(2)
    true = rng.standard_normal((30, 6))
    pred = true + rng.standard_normal((30, 6))
    ds = score_table(pred, true, noise_ceiling=np.full(6, 50.0),
                     vertex_coords={"hemisphere": np.array(["lh"] * 3 + ["rh"] * 3),
                                    "roi_fam": np.array(["X", "X", "Unknown", "Y", "Y", "Y"])},
                     device="cpu")
    assert ds["score"].dims == ("vertex", "metric")
    assert list(ds["metric"].values) == ["pearson_r", "r2", "noise_normalized"]
    assert list(ds["roi"].values) == ["fam/X", "fam/Y"]
    r = ds["score"].sel(metric="pearson_r").values
    assert ds["roi_median"].sel(roi="fam/Y", metric="pearson_r") == pytest.approx(np.median(r[3:]))
    np.testing.assert_allclose(ds["score"].sel(metric="noise_normalized").values,
                               np.minimum(100 * np.clip(r, 0, None) ** 2 / 0.5, 100))
