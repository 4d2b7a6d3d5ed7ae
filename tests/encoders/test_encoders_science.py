"""The issue's science targets on a CI-sized synthetic cortex (1 subject, 360 images of 112 px,
tokens of 8 px): the transformer routes to the object of its ROI's category, so it beats the
factorized and ridge baselines in category-selective ROIs by >= 10 points, is at most 5 points
below the factorized model in early visual cortex, and its category queries' attention peaks inside
the objects' boxes in >= 80 % of held-out images. Demo-size numbers:
benchmarks/RESULTS.md, section encoders."""

import numpy as np
import pytest

N_IMAGES = 360


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    from brainattn.data import open_algonauts, roi_labels, vertex_coords
    from brainattn.data.synth import generate, load_ground_truth
    from brainattn.encoders import split_images
    from brainattn.encoders.backbones import GaborBackbone
    from brainattn.encoders.cache import get_features
    from brainattn.encoders.factorized import SpatialFeatureEncoder
    from brainattn.encoders.metrics import score_table
    from brainattn.encoders.ridge import RidgeEncoder
    from brainattn.encoders.run import attention_dataset
    from brainattn.encoders.transformer import TransformerBrainEncoder

    root = tmp_path_factory.mktemp("sci") / "data"
    generate(root, subjects=1, images=N_IMAGES, seed=1, image_size=112, n_ev_roi=25,
             n_category_roi=20, n_unlabelled=40, n_jobs=1)
    ds = open_algonauts(root, "subj01")
    gt = load_ground_truth(root, "subj01")
    bb = GaborBackbone(image_size=112, patch=8)
    cache = get_features(bb, list(ds["image_path"].values), dataset_tag="sci",
                         cache_dir=tmp_path_factory.mktemp("cache"))
    X = np.asarray(cache.features, np.float32)
    Y = ds["betas"].values
    fit, te = split_images(len(Y), 0.2, 0)
    roi = roi_labels(ds)
    models = {
        "ridge": RidgeEncoder(device="cpu").fit(X[fit], Y[fit]),
        "factorized": SpatialFeatureEncoder(val_fraction=0.15, grid=cache.grid,
                                            device="cpu").fit(X[fit], Y[fit]),
        "transformer": TransformerBrainEncoder(
            queries="rois", hemisphere=ds["hemisphere"].values, roi_labels=roi,
            grid=cache.grid, width=64, heads=4, ffn=128, prf_bias=True, epochs=30,
            batch_size=16, lr=2e-3, patience=None, val_fraction=0.15, device="cpu", seed=0,
        ).fit(X[fit], Y[fit]),
    }
    nc = ds["noise_ceiling"].values
    scores = {m: score_table(e.predict(X[te]), Y[te], noise_ceiling=nc,
                             vertex_coords=vertex_coords(ds), device="cpu")
              for m, e in models.items()}
    att = attention_dataset(models["transformer"], X, te, ds, cache.grid)
    return scores, att, gt, roi


@pytest.mark.slow
def test_transformer_wins_in_category_rois(fitted):
    from brainattn.encoders.synthcheck import roi_group_medians

    scores, *_ = fitted
    g = {m: roi_group_medians(s) for m, s in scores.items()}
    print(g)
    # the targets, in points of noise-normalised accuracy (0.10 = 10 points); measured
    # here: transformer 66.8 vs factorized 11.7 / ridge 21.1 (category), EV 70.9 vs 61.9 (with
    # the pRF prior at 1x lr, before issue 21: 66.3 and EV 61.0). "Within 5 points" is a bound
    # on the loss: being better than the factorized model in EVC is not a miss
    assert g["transformer"]["category"] >= g["factorized"]["category"] + 10, g
    assert g["transformer"]["category"] >= g["ridge"]["category"] + 10, g
    assert g["transformer"]["early_visual"] >= g["factorized"]["early_visual"] - 5, g
    # retinotopic cortex is where the factorized (where x what) model beats pooled ridge
    assert g["factorized"]["early_visual"] > g["ridge"]["early_visual"] + 10, g


@pytest.mark.slow
def test_category_queries_attend_to_their_objects(fitted):
    from brainattn.encoders.synthcheck import attention_in_box

    _, att, gt, roi = fitted
    hits = attention_in_box(att, gt, {f: np.unique(v) for f, v in roi.items()})
    rate, n = hits["all"]
    print(hits)
    assert n > 50
    assert rate >= 0.8, hits  # measured 0.812 (882 pairs; 0.808 with the prior at 1x lr)
