"""Several layers from one backbone pass, and the feature cache of a layer sweep."""

import numpy as np
import pytest
import torch

from brainattn.encoders.backbones import GABOR_STAGES, GaborBackbone, TimmViTBackbone, make_backbone
from brainattn.encoders.cache import get_features, get_layer_features
from brainattn.errors import ConfigError


def _images(n=2, size=64, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_gabor_stages_are_slices_of_one_pass():
    bb = GaborBackbone(image_size=64)
    assert bb.n_layers == len(GABOR_STAGES) >= 3 and bb.layer == 4
    x = _images()
    outs = bb.layer_outputs(x, [0, 1, 2, 3, 4])
    assert [o.shape[-1] for o in outs] == [5, 12, 36, bb.dim, bb.dim + 54]
    for k, o in enumerate(outs):
        assert torch.equal(o, bb.with_layer(k)(x))
        assert bb.with_layer(k).n_features == o.shape[-1]
    # the default stage is the output every fit used before stages existed
    torch.testing.assert_close(outs[4], bb(x), rtol=0, atol=0)
    torch.testing.assert_close(outs[4][..., : bb.dim], outs[3], rtol=0, atol=0)
    assert "layer" not in bb.key() and bb.with_layer(1).key()["layer"] == 1
    assert make_backbone("gabor", layer=2, image_size=64).n_features == 36
    with pytest.raises(ConfigError, match="5 stages"):
        GaborBackbone(layer=5)


def test_vit_layers_from_one_pass_match_single_layers():
    import timm

    torch.manual_seed(0)
    m = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32)
    x = _images(2, 32)
    for stream in ("block", "q"):
        bb = TimmViTBackbone("vit_tiny_patch16_224", None, stream=stream, image_size=32,
                             allow_random=True)
        bb.model.load_state_dict(m.state_dict())
        outs = bb.layer_outputs(x, [5, 1, -1])
        for layer, o in zip([5, 1, 11], outs, strict=True):
            torch.testing.assert_close(o, bb.with_layer(layer)(x), rtol=0, atol=0)
    with pytest.raises(ConfigError, match="12 blocks"):
        bb.with_layer(12)


def test_layer_sweep_cache_is_one_pass_and_shared_with_single_layer_fits(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for i in range(5):
        p = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(p)
        paths.append(p)

    class Counting(GaborBackbone):
        passes = 0

        def layer_outputs(self, images, layers):
            Counting.passes += 1
            return super().layer_outputs(images, layers)

    bb = Counting(image_size=64)
    caches = get_layer_features(bb, [1, 3, -1], paths, dataset_tag="t", cache_dir=tmp_path / "c",
                                batch_size=5)
    assert Counting.passes == 1  # three layers, one pass over the 5 images
    assert sorted(caches) == [1, 3, 4]
    assert [caches[k].features.shape[-1] for k in (1, 3, 4)] == [12, bb.dim, bb.dim + 54]
    single = get_features(bb.with_layer(3), paths, dataset_tag="t", cache_dir=tmp_path / "c")
    assert Counting.passes == 1 and single.path == caches[3].path  # found, not re-extracted
    again = get_layer_features(bb, [0, 1], paths, dataset_tag="t", cache_dir=tmp_path / "c")
    assert again[1].path == caches[1].path and again[0].features.shape[-1] == 5
