"""Algonauts submission files and score; ensembles of predictions."""

import numpy as np
import pytest

from brainattn.analyses.ensemble import average_predictions, ensemble_scores
from brainattn.analyses.submission import (
    challenge_score,
    read_submission,
    split_hemispheres,
    write_submission,
)
from brainattn.errors import ConfigError, DataError, OutputExistsError, ShapeError


def test_submission_files_in_challenge_vertex_order(tmp_path):
    # 3 lh + 2 rh vertices, stored out of order: column j of the file is hemi_vertex j
    hemi = np.array(["rh", "lh", "lh", "rh", "lh"])
    hv = np.array([1, 2, 0, 0, 1])
    pred = np.arange(4 * 5, dtype=np.float64).reshape(4, 5)
    paths = write_submission(pred, hemi, hv, tmp_path, "subj01", n_test_images=4)
    assert [p.name for p in paths] == ["lh_pred_test.npy", "rh_pred_test.npy"]
    sub = read_submission(tmp_path, "subj01")
    assert sub["lh"].dtype == np.float32 and sub["lh"].shape == (4, 3)
    np.testing.assert_array_equal(sub["lh"], pred[:, [2, 4, 1]])
    np.testing.assert_array_equal(sub["rh"], pred[:, [3, 0]])
    with pytest.raises(OutputExistsError):
        write_submission(pred, hemi, hv, tmp_path, "subj01")
    with pytest.raises(ShapeError):
        write_submission(pred, hemi, hv, tmp_path, "subj02", n_test_images=5)


def test_submission_refuses_missing_vertices_and_nan():
    hemi = np.array(["lh", "lh", "rh"])
    with pytest.raises(DataError, match="2 of the hemisphere's 3"):
        split_hemispheres(np.zeros((2, 3)), hemi, np.array([0, 2, 0]), n_vertices={"lh": 3, "rh": 1})
    bad = np.zeros((2, 3))
    bad[0, 1] = np.nan
    with pytest.raises(DataError, match="NaN"):
        split_hemispheres(bad, hemi, np.array([0, 1, 0]))
    with pytest.raises(DataError, match="both lh and rh"):
        split_hemispheres(np.zeros((2, 2)), np.array(["lh", "lh"]), np.array([0, 1]))


def test_challenge_score_known_answer():
    r = np.array([0.5, -0.2, 0.9, np.nan, 0.3])
    nc = np.array([50.0, 40.0, 20.0, 30.0, np.nan])  # percent
    # 100 * .25 / .5 = 50; r<0 -> 0; 100 * .81 / .2 = 405 -> 100; NaN r -> 0; no NC: left out
    assert challenge_score(r, nc) == pytest.approx((50 + 0 + 100 + 0) / 4)
    assert np.isnan(challenge_score(r, np.full(5, np.nan)))


def test_average_predictions_and_ensemble_gain():
    rng = np.random.default_rng(0)
    signal = rng.standard_normal((200, 30))
    true = signal + rng.standard_normal((200, 30))
    preds = [signal + 1.5 * rng.standard_normal((200, 30)) for _ in range(4)]
    np.testing.assert_allclose(average_predictions(preds), np.mean(preds, 0), rtol=1e-6)
    np.testing.assert_allclose(average_predictions(preds[:2], weights=[3, 1]),
                               0.75 * preds[0] + 0.25 * preds[1], rtol=1e-6)
    ds = ensemble_scores(preds, true, members=["a", "b", "c", "d"], device="cpu",
                         vertex_coords={"roi_fam": np.repeat(["X", "Y"], 15)})
    # independent member errors: averaging 4 members cuts the error variance 4x, so the
    # ensemble's r beats every member (population r: 0.39 per member vs 0.58 for the mean)
    assert ds.attrs["mean_r"] > ds["member_mean_r"].values.max() + 0.1
    assert ds.attrs["model"] == "ensemble" and list(ds["member"].values) == ["a", "b", "c", "d"]
    assert ds.sizes["roi"] == 2
    with pytest.raises(ConfigError):
        average_predictions(preds[:1])
    with pytest.raises(ShapeError):
        average_predictions([preds[0], preds[1][:, :5]])
    with pytest.raises(ConfigError):
        average_predictions(preds[:2], weights=[1, -1])
