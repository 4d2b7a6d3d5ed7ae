import pickle

import numpy as np
import pytest
import torch

from brainattn.encoders.backbones import GaborBackbone, TimmViTBackbone, load_state_dict_file
from brainattn.encoders.cache import get_features
from brainattn.errors import ConfigError, DataError, UnsafeFileError

ARCH = "vit_small_patch14_dinov2"


@pytest.fixture(scope="module")
def vit_weights(tmp_path_factory):
    """Random DINOv2-S weights created locally (never downloaded), in three formats."""
    import timm
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("w")
    torch.manual_seed(0)
    m = timm.create_model(ARCH, pretrained=False, num_classes=0, img_size=42)
    sd = {k: v.contiguous() for k, v in m.state_dict().items()}
    save_file(sd, str(d / "w.safetensors"))
    hub = dict(sd)
    hub["mask_token"] = torch.zeros(1, sd["cls_token"].shape[-1])  # torch-hub DINOv2 extra key
    torch.save(hub, d / "hub.pth")
    return d, m.eval()


def _images(n=2, size=42, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_gabor_is_deterministic_and_shaped():
    a, b = GaborBackbone(), GaborBackbone()
    x = _images(2, 224)
    fa, fb = a(x), b(x)
    assert fa.shape == (2, 196, a.n_features) and a.grid == (14, 14)
    assert torch.equal(fa, fb)
    assert torch.isfinite(fa).all()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gabor_on_cuda_matches_cpu():
    bb = GaborBackbone()
    x = _images(2, 224)
    torch.testing.assert_close(bb(x.cuda()).cpu(), bb(x), rtol=1e-4, atol=1e-4)


def test_gabor_tokens_are_local():
    """Changing the top-left patch changes top-left tokens and leaves far tokens unchanged."""
    bb = GaborBackbone()
    x = _images(1, 224, seed=1)
    y = x.clone()
    y[:, :, :16, :16] = 1.0
    d = (bb(x) - bb(y)).abs().sum(-1)[0].view(14, 14)
    assert d[0, 0] > 0
    assert d[7:, 7:].max() == 0


@pytest.mark.parametrize("fname", ["w.safetensors", "hub.pth"])
def test_vit_weights_load_and_block_stream_matches_timm(vit_weights, fname):
    d, ref = vit_weights
    bb = TimmViTBackbone(ARCH, d / fname, layer=-1, stream="block", image_size=42)
    x = _images()
    assert bb.grid == (3, 3)
    out = bb(x)
    with torch.no_grad():
        xn = (x - bb.mean) / bb.std
        want = ref.forward_features(xn)  # final norm applied there
        tokens = ref.blocks(ref.norm_pre(ref._pos_embed(ref.patch_embed(xn))))
    torch.testing.assert_close(out, tokens[:, ref.num_prefix_tokens :])
    assert not torch.allclose(out, want[:, ref.num_prefix_tokens :])  # block output, not normed


def test_vit_q_stream_is_query_projection(vit_weights):
    d, ref = vit_weights
    bb = TimmViTBackbone(ARCH, d / "w.safetensors", layer=1, stream="q", image_size=42)
    x = _images()
    with torch.no_grad():
        h = ref.norm_pre(ref._pos_embed(ref.patch_embed((x - bb.mean) / bb.std)))
        h = ref.blocks[0](h)
        q = torch.nn.functional.linear(ref.blocks[1].norm1(h), ref.blocks[1].attn.qkv.weight[:384],
                                       ref.blocks[1].attn.qkv.bias[:384])
    torch.testing.assert_close(bb(x), q[:, 1:])


def test_mismatched_weights_name_the_tensors(vit_weights, tmp_path):
    from safetensors.torch import load_file, save_file

    d, _ = vit_weights
    sd = load_file(str(d / "w.safetensors"))
    sd["blocks.3.mlp.fc1.weight"] = torch.zeros(10, 10)
    del sd["blocks.5.attn.proj.bias"]
    save_file(sd, str(tmp_path / "bad.safetensors"))
    with pytest.raises(DataError, match=r"blocks\.3\.mlp\.fc1\.weight \(10, 10\).*missing: blocks\.5\.attn\.proj\.bias"):
        TimmViTBackbone(ARCH, tmp_path / "bad.safetensors", image_size=42)


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickled_code_is_refused(tmp_path):
    p = tmp_path / "evil.pth"
    with open(p, "wb") as fh:
        pickle.dump({"w": _Evil()}, fh)
    with pytest.raises(UnsafeFileError, match="weights_only"):
        load_state_dict_file(p)


def test_no_weights_says_how_to_provide_them():
    with pytest.raises(ConfigError, match="never downloads"):
        TimmViTBackbone(ARCH, None, image_size=42)


def test_feature_cache_extracts_once(tmp_path):
    from PIL import Image

    paths = []
    rng = np.random.default_rng(0)
    for i in range(5):
        p = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(p)
        paths.append(p)

    class Counting(GaborBackbone):
        calls = 0

        def __call__(self, images):
            Counting.calls += len(images)
            return super().__call__(images)

    bb = Counting(image_size=64)
    c1 = get_features(bb, paths, dataset_tag="t", cache_dir=tmp_path / "cache", batch_size=2)
    assert Counting.calls == 5
    c2 = get_features(bb, paths, dataset_tag="t", cache_dir=tmp_path / "cache")
    assert Counting.calls == 5  # hit
    assert c1.path == c2.path and c2.features.dtype == np.float16
    assert isinstance(c2.features, np.memmap)
    assert c2.features.shape == (5, 16, bb.n_features) and c2.grid == (4, 4)
    direct = bb(torch.from_numpy(np.stack([np.asarray(Image.open(p)) for p in paths]))
                .permute(0, 3, 1, 2).float() / 255).numpy()
    np.testing.assert_allclose(np.asarray(c2.features, np.float32), direct, rtol=2e-3, atol=2e-3)
    other = get_features(GaborBackbone(image_size=64, seed=1), paths, dataset_tag="t",
                         cache_dir=tmp_path / "cache")
    assert other.path != c1.path  # backbone settings are part of the key
