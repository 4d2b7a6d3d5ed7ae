"""Frozen vision backbones that turn images into token grids.

Two kinds:

* :class:`GaborBackbone` (name ``"gabor"``, the default): embedded, needs no weights, fully
  deterministic. Each image is resized to ``image_size`` (224 px), converted to luminance and two
  colour-opponent channels (R-G, B-Y), and filtered at three scales (image pyramid 1, 1/2, 1/4) by
  quadrature Gabor pairs at 4 orientations (9x9 px, wavelength 4 px at each pyramid level, i.e.
  4, 8 and 16 px in the image). Energies (sqrt(even^2 + odd^2)), rectified colour opponency and
  luminance are average-pooled onto the 14 x 14 token grid (16 px patches) and, for context, onto
  3 x 3 token neighbourhoods; ``log1p`` compresses them. The resulting 54 numbers per token pass
  through a fixed random projection (seeded, ``dim`` outputs, ReLU), concatenated with the
  54 raw features. Output ``(n_images, 196, dim + 54)``. This makes local shape/texture classes
  (and the categories of the synthetic cortex's objects) linearly readable per token.
  Its stages (``layer`` 0-4, :data:`GABOR_STAGES`), all on the same token grid, so that a layer
  sweep can ask which stage predicts which ROI: 0 ``colour`` (rectified R-G / B-Y opponency and
  luminance, 5), 1 ``energy`` (Gabor energies, 3 scales x 4 orientations, 12), 2 ``context``
  (all 18 local features pooled over 3 x 3 and 5 x 5 token neighbourhoods, 36), 3 ``projection``
  (the ReLU random projection, ``dim``), 4 ``output`` (projection + the 54 log features: the
  default, ``layer=-1``).

* :class:`TimmViTBackbone`: any timm ViT (incl. DINOv2 ``vit_small_patch14_dinov2``,
  ``vit_base_patch14_dinov2``) built WITHOUT download, weights loaded only from a local file the
  user names (``.safetensors``; timm / torch-hub ``.pth``/``.pt``/``.bin`` read with
  ``torch.load(weights_only=True)``). Tokens: the output of block ``layer`` (``stream="block"``)
  or the query projection of that block's qkv (``stream="q"``, as in the published encoder).
  Prefix tokens (CLS, registers) are dropped; the patch grid is ``image_size / patch_size``
  per side (e.g. 434 px / 14 -> 31 x 31).

Both return float32 tensors ``(batch, n_tokens, dim)`` from :meth:`__call__` on a float image
batch ``(batch, 3, H, W)`` in [0, 1]; ``grid`` is ``(rows, cols)`` with tokens in row-major order.
Both also give several layers from ONE forward pass: ``layer_outputs(images, layers)`` (list of
tensors, the same numbers as ``with_layer(l)(images)``), which the feature cache uses for layer
sweeps; ``n_layers`` counts the layers (stages or blocks), ``with_layer(l)`` is the same backbone
(shared weights) reading another layer.
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path

import numpy as np

from brainattn.errors import ConfigError, DataError, ShapeError, UnsafeFileError

DEFAULT_BACKBONE = "gabor"

#: the embedded backbone's stages, in depth order (``layer`` index = position)
GABOR_STAGES = ("colour", "energy", "context", "projection", "output")


def _torch():
    import torch

    return torch


# --------------------------------------------------------------------------------------------
# the embedded default backbone


def _gabor_bank(size: int = 9, wavelength: float = 4.0, n_orient: int = 4):
    """(2 * n_orient, 1, size, size) zero-mean, unit-norm quadrature Gabor kernels."""
    torch = _torch()
    half = size // 2
    y, x = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float64)
    sigma = 0.56 * wavelength
    ks = []
    for i in range(n_orient):
        th = math.pi * i / n_orient
        u = x * math.cos(th) + y * math.sin(th)
        env = np.exp(-(x**2 + y**2) / (2 * sigma**2))
        for phase in (0.0, math.pi / 2):
            k = env * np.cos(2 * math.pi * u / wavelength + phase)
            k -= k.mean()
            k /= np.linalg.norm(k)
            ks.append(k)
    return torch.tensor(np.stack(ks)[:, None], dtype=torch.float32)


class GaborBackbone:
    """Embedded multi-scale Gabor / colour-opponent filter bank + fixed random projection.

    Parameters
    ----------
    image_size : images are resized to this many px (multiple of ``patch``).
    patch : token size in px (default 16 -> 14 x 14 tokens at 224 px).
    dim : width of the fixed random ReLU projection (the output has ``dim + 54`` features).
    seed : seed of the projection (part of the cache key).
    """

    name = "gabor"
    n_raw = 54
    n_layers = len(GABOR_STAGES)
    #: channels of the 54 log features (``_raw``) each stage reads; ``None``: computed
    _STAGE_CHANNELS = (list(range(12, 17)), list(range(12)), list(range(18, 54)), None, None)

    def __init__(self, image_size: int = 224, patch: int = 16, dim: int = 202, seed: int = 0,
                 layer: int = -1):
        torch = _torch()
        if image_size % (4 * patch) and image_size % patch:
            raise ConfigError(f"image_size {image_size} must be a multiple of patch {patch}")
        self.image_size = int(image_size)
        self.patch = int(patch)
        self.dim = int(dim)
        self.seed = int(seed)
        self.layer = self.check_layer(layer)
        self.grid = (self.image_size // self.patch, self.image_size // self.patch)
        self.n_features = self._width(self.layer)
        self._kernels = _gabor_bank()
        g = torch.Generator().manual_seed(self.seed)
        self._proj = torch.randn(self.n_raw, self.dim, generator=g) / math.sqrt(self.n_raw)
        self._bias = torch.randn(self.dim, generator=g) * 0.5
        # fixed centring of the log-energies so that the ReLU features are not all on/off;
        # computed once from a deterministic noise image at construction.
        self._shift = None
        self._shift = self._raw(torch.rand(4, 3, self.image_size, self.image_size,
                                           generator=g)).mean((0, 1))

    def check_layer(self, layer) -> int:
        """Stage index 0..4 (negative counts from the end), or a ConfigError naming them."""
        n = self.n_layers
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not -n <= layer < n:
            raise ConfigError(f"--layer {layer!r}: the gabor backbone has {n} stages "
                              f"({', '.join(f'{i} {s}' for i, s in enumerate(GABOR_STAGES))}); "
                              f"use 0..{n - 1} or -1")
        return int(layer) % n

    def _width(self, layer: int) -> int:
        ch = self._STAGE_CHANNELS[layer]
        return len(ch) if ch is not None else self.dim + (self.n_raw if layer == 4 else 0)

    def with_layer(self, layer: int) -> GaborBackbone:
        """The same filters and projection, reading stage ``layer``."""
        import copy

        other = copy.copy(self)
        other.layer = self.check_layer(layer)
        other.n_features = self._width(other.layer)
        return other

    def key(self) -> dict:
        key = {"backbone": self.name, "image_size": self.image_size, "patch": self.patch,
               "dim": self.dim, "seed": self.seed, "version": 1}
        if self.layer != self.n_layers - 1:  # the default stage keeps the caches written before
            key["layer"] = self.layer
        return key

    def _to(self, device) -> None:
        """Keep the fixed filters and projection on the images' device (CPU or CUDA)."""
        if self._kernels.device != device:
            self._kernels = self._kernels.to(device)
            self._proj = self._proj.to(device)
            self._bias = self._bias.to(device)
            if self._shift is not None:
                self._shift = self._shift.to(device)

    def _raw(self, img):
        torch = _torch()
        F = torch.nn.functional
        self._to(img.device)
        r, g, b = img[:, 0:1], img[:, 1:2], img[:, 2:3]
        lum = (r + g + b) / 3
        rg = r - g
        by = b - (r + g) / 2
        feats = []
        x = lum
        for level in range(3):
            resp = F.conv2d(x, self._kernels, padding=self._kernels.shape[-1] // 2)
            energy = torch.sqrt(resp[:, 0::2] ** 2 + resp[:, 1::2] ** 2 + 1e-8)  # (B, 4, h, w)
            k = self.patch >> level
            feats.append(F.avg_pool2d(energy, k))
            if level < 2:
                x = F.avg_pool2d(x, 2)
        colour = torch.cat([F.relu(rg), F.relu(-rg), F.relu(by), F.relu(-by), lum,
                            (lum - F.avg_pool2d(lum, self.patch).repeat_interleave(
                                self.patch, 2).repeat_interleave(self.patch, 3)).abs()], 1)
        feats.append(F.avg_pool2d(colour, self.patch) * 4)
        loc = torch.cat(feats, 1)  # (B, 18, gh, gw)
        ctx = F.avg_pool2d(loc, 3, stride=1, padding=1, count_include_pad=False)
        wide = F.avg_pool2d(loc, 5, stride=1, padding=2, count_include_pad=False)
        z = torch.log1p(10 * torch.cat([loc, ctx, wide], 1))  # (B, 54, gh, gw)
        z = z.flatten(2).transpose(1, 2)  # (B, L, 54)
        if self._shift is not None:
            z = z - self._shift
        return z

    def layer_outputs(self, images, layers) -> list:
        """Stages ``layers`` of one pass: list of (B, L, width) float32 tensors."""
        torch = _torch()
        layers = [self.check_layer(x) for x in layers]
        with torch.no_grad():
            z = self._raw(images.float())
            proj = torch.relu(z @ self._proj + self._bias) if max(layers) >= 3 else None
            out = []
            for x in layers:
                ch = self._STAGE_CHANNELS[x]
                out.append(z[..., ch].contiguous() if ch is not None else
                           proj if x == 3 else torch.cat([proj, z], -1))
            return out

    def __call__(self, images):
        """images (B, 3, image_size, image_size) float in [0, 1] -> (B, L, n_features) float32
        (stage ``layer``; the default stage 4 has ``dim + 54`` features)."""
        return self.layer_outputs(images, [self.layer])[0]


# --------------------------------------------------------------------------------------------
# timm ViTs with local weights


def load_state_dict_file(path: str | os.PathLike) -> dict:
    """Read a weights file into a flat ``{name: tensor}`` dict without executing code.

    ``.safetensors`` via safetensors; ``.pth``/``.pt``/``.bin``/``.ckpt`` via
    ``torch.load(weights_only=True)`` (a file that needs arbitrary unpickling is refused).
    Nested checkpoints (``{"model": ...}``, ``{"state_dict": ...}``, ``{"teacher": ...}``) are
    unwrapped.
    """
    torch = _torch()
    path = Path(path)
    if not path.is_file():
        raise DataError(f"--weights {path}: no such file (give a local .safetensors or .pth file)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            sd = load_file(str(path))
        except Exception as exc:
            raise DataError(f"--weights {path}: not a readable safetensors file ({exc})") from exc
    else:
        try:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if "weights_only" in str(exc) or "Unsupported global" in str(exc) or isinstance(
                exc, __import__("pickle").UnpicklingError
            ):
                raise UnsafeFileError(
                    f"--weights {path}: needs arbitrary unpickling to load, refused (only plain "
                    "tensor dicts load with torch.load(weights_only=True)); convert it to "
                    ".safetensors or save a plain state_dict"
                ) from exc
            raise DataError(f"--weights {path}: not a readable checkpoint ({msg})") from exc
    for wrap in ("model", "state_dict", "model_state", "teacher", "module"):
        if isinstance(sd, dict) and wrap in sd and isinstance(sd[wrap], dict):
            sd = sd[wrap]
    if not isinstance(sd, dict) or not all(hasattr(v, "shape") for v in sd.values()):
        raise DataError(f"--weights {path}: expected a dict of tensors (a state_dict)")
    sd = {k.removeprefix("module.").removeprefix("backbone."): v for k, v in sd.items()}
    return sd


def _file_digest(path: Path) -> str:
    h = hashlib.sha1()
    st = path.stat()
    h.update(f"{st.st_size}".encode())
    with open(path, "rb") as fh:
        h.update(fh.read(1 << 20))
        if st.st_size > (2 << 20):
            fh.seek(-(1 << 20), 2)
            h.update(fh.read(1 << 20))
    return h.hexdigest()[:16]


class TimmViTBackbone:
    """A frozen timm ViT with weights from a local file; no network access ever.

    Parameters
    ----------
    arch : timm architecture name, e.g. ``vit_base_patch14_dinov2``.
    weights : local weights file; ``None`` keeps the random init (tests only: ``allow_random``).
    layer : block index (negative counts from the end).
    stream : ``"block"`` (block output) or ``"q"`` (query projection of the block's qkv).
    image_size : input size in px; must be a multiple of the patch size (DINOv2: 14 -> e.g. 224,
        434 (31 x 31 tokens), 518).
    """

    def __init__(self, arch: str, weights: str | os.PathLike | None, *, layer: int = -1,
                 stream: str = "block", image_size: int = 224, allow_random: bool = False,
                 device: str = "cpu"):
        torch = _torch()
        import timm

        if stream not in ("block", "q"):
            raise ConfigError(f"--stream {stream!r}: expected 'block' or 'q'")
        if weights is None and not allow_random:
            raise ConfigError(
                f"--backbone {arch} needs --weights FILE: brainattn never downloads weights. Save "
                f"them once where you have network, e.g. python -c \"import timm, safetensors.torch "
                f"as s; m = timm.create_model('{arch}', pretrained=True); "
                f"s.save_file(m.state_dict(), '{arch}.safetensors')\", then pass --weights "
                f"{arch}.safetensors"
            )
        try:
            model = timm.create_model(arch, pretrained=False, num_classes=0, img_size=image_size)
        except RuntimeError as exc:
            raise ConfigError(f"--backbone {arch!r}: not a timm architecture ({exc})") from exc
        except (TypeError, AssertionError) as exc:
            raise ConfigError(f"--backbone {arch!r} with image size {image_size}: {exc}") from exc
        if not hasattr(model, "blocks") or not hasattr(model, "patch_embed"):
            raise ConfigError(f"--backbone {arch!r}: not a ViT (no blocks / patch_embed)")
        patch = model.patch_embed.patch_size[0]
        if image_size % patch:
            raise ConfigError(f"--image-size {image_size}: must be a multiple of the patch size {patch}")
        self.arch = arch
        self.n_layers = len(model.blocks)
        layer = self.check_layer(layer)
        self.weights_digest = "random"
        if weights is not None:
            wpath = Path(weights)
            sd = load_state_dict_file(wpath)
            self.weights_digest = _file_digest(wpath)
            load_vit_weights(model, sd, source=str(wpath))
        model.eval().requires_grad_(False)
        self.model = model.to(device)
        self.device = device
        self.name = arch
        self.layer = layer
        self.stream = stream
        self.image_size = int(image_size)
        self.grid = tuple(int(g) for g in model.patch_embed.grid_size)
        self.n_features = int(model.embed_dim)
        cfg = getattr(model, "pretrained_cfg", {}) or {}
        self.mean = torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406))).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg.get("std", (0.229, 0.224, 0.225))).view(1, 3, 1, 1)

    def key(self) -> dict:
        return {"backbone": self.arch, "weights": self.weights_digest, "layer": self.layer,
                "stream": self.stream, "image_size": self.image_size}

    def check_layer(self, layer) -> int:
        """Block index (negative counts from the end), or a ConfigError naming the range."""
        n = self.n_layers
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not -n <= layer < n:
            raise ConfigError(f"--layer {layer!r}: {self.arch} has {n} blocks (use 0..{n - 1} or -1)")
        return int(layer) % n

    def with_layer(self, layer: int) -> TimmViTBackbone:
        """The same model (shared, not copied), reading block ``layer``."""
        import copy

        other = copy.copy(self)
        other.layer = self.check_layer(layer)
        return other

    def layer_outputs(self, images, layers) -> list:
        """Tokens of blocks ``layers`` from one pass through the blocks up to the deepest one:
        list of (B, L, dim) float32, each equal to ``with_layer(l)(images)``."""
        torch = _torch()
        m = self.model
        layers = [self.check_layer(x) for x in layers]
        want = set(layers)
        got = {}
        with torch.no_grad():
            x = (images.float().to(self.device) - self.mean.to(self.device)) / self.std.to(self.device)
            x = m.patch_embed(x)
            x = m._pos_embed(x)
            x = m.patch_drop(x)
            x = m.norm_pre(x)
            for i, blk in enumerate(m.blocks[: max(layers) + 1]):
                if self.stream == "q" and i in want:
                    qkv = blk.attn.qkv(blk.norm1(x))
                    got[i] = qkv[..., : qkv.shape[-1] // 3]
                if self.stream == "block" or i < max(layers):
                    x = blk(x)
                if self.stream == "block" and i in want:
                    got[i] = x
            return [got[i][:, m.num_prefix_tokens :].float() for i in layers]

    def __call__(self, images):
        return self.layer_outputs(images, [self.layer])[0]


def load_vit_weights(model, sd: dict, *, source: str) -> None:
    """Load ``sd`` into a timm ViT, converting torch-hub DINOv2 names and resizing positional
    embeddings (timm's own filter); mismatches are refused naming the first tensors."""
    torch = _torch()
    from timm.models.vision_transformer import checkpoint_filter_fn

    sd = {k: v for k, v in sd.items() if k != "mask_token"}
    try:
        sd = checkpoint_filter_fn(sd, model)
    except Exception as exc:
        raise DataError(f"--weights {source}: does not fit {type(model).__name__} ({exc})") from exc
    want = model.state_dict()
    missing = [k for k in want if k not in sd]
    unexpected = [k for k in sd if k not in want]
    wrong = [k for k in want if k in sd and tuple(sd[k].shape) != tuple(want[k].shape)]
    # heads are not used for token features; tolerate their absence / presence
    missing = [k for k in missing if not k.startswith(("head.", "fc_norm."))]
    unexpected = [k for k in unexpected if not k.startswith(("head.", "fc_norm."))]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            parts.append("shape mismatch: " + ", ".join(
                f"{k} {tuple(sd[k].shape)} vs expected {tuple(want[k].shape)}" for k in wrong[:3]))
        if missing:
            parts.append("missing: " + ", ".join(missing[:3]))
        if unexpected:
            parts.append("unexpected: " + ", ".join(unexpected[:3]))
        raise DataError(f"--weights {source}: does not fit the architecture; " + "; ".join(parts))
    with torch.no_grad():
        model.load_state_dict(sd, strict=True)


def make_backbone(name: str = DEFAULT_BACKBONE, *, weights=None, layer: int = -1,
                  stream: str = "block", image_size: int | None = None, device: str = "cpu",
                  allow_random: bool = False):
    """Build a backbone by name: ``"gabor"`` (embedded) or a timm ViT architecture name."""
    if name in ("gabor", "default"):
        if weights is not None:
            raise ConfigError("--weights: the embedded 'gabor' backbone takes no weights file")
        return GaborBackbone(image_size=image_size or 224, layer=layer)
    return TimmViTBackbone(name, weights, layer=layer, stream=stream, image_size=image_size or 224,
                           allow_random=allow_random, device=device)


# --------------------------------------------------------------------------------------------
# images


def load_images(paths, size: int):
    """Read image files into a float tensor (n, 3, size, size) in [0, 1] (bilinear resize)."""
    torch = _torch()
    from PIL import Image

    out = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    for i, p in enumerate(paths):
        try:
            with Image.open(p) as im:
                im = im.convert("RGB")
                if im.size != (size, size):
                    im = im.resize((size, size), Image.BILINEAR)
                out[i] = np.asarray(im)
        except FileNotFoundError as exc:
            raise DataError(f"image {p}: no such file") from exc
        except OSError as exc:
            raise DataError(f"image {p}: not a readable image ({exc})") from exc
    return torch.from_numpy(out).permute(0, 3, 1, 2).float() / 255.0


def check_tokens(features, n_images: int | None = None, grid=None) -> None:
    """Validate a token array (n_images, n_tokens, dim) at the door."""
    if getattr(features, "ndim", None) != 3:
        raise ShapeError(
            f"features: expected (n_images, n_tokens, dim), got shape {getattr(features, 'shape', None)}"
        )
    if n_images is not None and features.shape[0] != n_images:
        raise ShapeError(
            f"features hold {features.shape[0]} images but the betas hold {n_images}; they must match"
        )
    if grid is not None and grid[0] * grid[1] != features.shape[1]:
        raise ShapeError(f"grid {tuple(grid)} does not match {features.shape[1]} tokens")
