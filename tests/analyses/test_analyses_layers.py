"""A layer sweep on the synthetic cortex recovers the planted stage of each ROI."""

import numpy as np
import pytest
import torch

from brainattn.analyses.layers import layer_sweep_summary
from brainattn.errors import ConfigError

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    from brainattn.data import open_algonauts, synth
    from brainattn.encoders.backbones import GaborBackbone
    from brainattn.encoders.cache import get_layer_features
    from brainattn.encoders.metrics import score_table
    from brainattn.encoders.ridge import RidgeEncoder

    root = tmp_path_factory.mktemp("sweep") / "synth"
    synth.generate(root, subjects=1, images=240, seed=3, image_size=96, test_images=4,
                   n_ev_roi=30, n_category_roi=20, n_unlabelled=40, n_jobs=1)
    ds = open_algonauts(root, "subj01")
    caches = get_layer_features(GaborBackbone(image_size=96), [0, 1, 3], ds["image_path"].values,
                                dataset_tag="sweep", cache_dir=root.parent / "cache")
    Y = np.asarray(ds["betas"].values)
    tr, te = np.arange(190), np.arange(190, 240)
    coords = {k: ds[k].values for k in ds.coords if k.startswith("roi_") or k == "hemisphere"}
    scores = {}
    for layer, cache in caches.items():
        est = RidgeEncoder(pool="pca", n_components=64, device="cpu").fit(cache.features[tr], Y[tr])
        scores[layer] = score_table(est.predict(cache.features[te]), Y[te], vertex_coords=coords,
                                    device="cpu", attrs={"model": "ridge"})
    return layer_sweep_summary(scores), synth.load_ground_truth(root, "subj01")


def test_sweep_recovers_the_planted_stage(sweep):
    summary, gt = sweep
    assert list(summary["layer"].values) == [0, 1, 3]
    roi = summary["roi_score"].to_pandas()
    # planted (brainattn.data.synth): hV4 pools colour (stage 0), V1-V3 luminance contrast
    # energy (stage 1); category ROIs need the deeper, nonlinear stage
    hv4 = roi["prf-visualrois/hV4"]
    assert hv4[0] > hv4[1] + 0.3
    for name in ("V1v", "V1d", "V2v", "V2d", "V3v", "V3d"):
        col = roi[f"prf-visualrois/{name}"]
        assert col[1] > col[0] + 0.2, name
    early = summary.sel(layer=[0, 1])
    best = early["best_layer"].values
    kind = gt["driving_stage"].values
    # vertex-wise: the best early stage is the planted one for most early-visual vertices
    for stage in (0, 1):
        sel = (kind == stage) & np.isfinite(summary["best_vertex_score"].values)
        assert (np.asarray([0, 1])[np.argmax(early["vertex_score"].values[:, sel], 0)] == stage).mean() > 0.8
    fam = summary["family_score"].to_pandas()
    for f in ("floc-faces", "floc-words"):
        assert fam[f][3] > fam[f][0] + 0.1
    assert summary["best_layer_roi"].sel(roi="prf-visualrois/V1v") in (1, 3)
    assert best.shape == summary["vertex"].shape


def test_summary_validates():
    with pytest.raises(ConfigError):
        layer_sweep_summary({})
