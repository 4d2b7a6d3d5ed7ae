"""On-disk float16 feature cache, memory-mapped, keyed by data set + backbone + layer + stream.

Layout: ``<cache_dir>/<dataset-tag>__<backbone>__<hash>/`` holding ``features.npy`` (float16,
``(n_images, n_tokens, dim)``, opened with ``mmap_mode="r"``) and ``meta.json`` (the full key,
token ``grid``, ``image_ids``). The folder is built in a temporary sibling and renamed, so an
interrupted extraction leaves nothing behind and the next call starts again.

A layer sweep (:func:`get_layer_features`) runs the backbone ONCE over the images and writes one
such folder per layer, each under the key a single-layer extraction of that layer would use, so
later fits of any one of those layers find their features in the cache.

The default cache folder is ``$BRAINATTN_CACHE`` or ``~/.cache/brainattn/features``.

:class:`Rows` is a row view of such a memory map (``brainattn fit`` fits on the train+validation
rows without copying 14 GB).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np

from brainattn.errors import DataError, ShapeError
from brainattn.io import atomic_dir, atomic_write_json, load_npy
from brainattn.utils import progress


def default_cache_dir() -> Path:
    return Path(os.environ.get("BRAINATTN_CACHE", Path.home() / ".cache" / "brainattn" / "features"))


def dataset_key(image_paths, tag: str = "") -> dict:
    """Identity of a data set's images: count + digest of the ordered file names and sizes."""
    h = hashlib.sha1()
    for p in image_paths:
        p = Path(p)
        h.update(p.name.encode())
        try:
            h.update(str(p.stat().st_size).encode())
        except OSError:
            pass
    return {"dataset": tag, "n_images": len(image_paths), "images_sha1": h.hexdigest()[:16]}


def cache_folder(cache_dir, key: dict) -> Path:
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    tag = re.sub(r"[^A-Za-z0-9_.-]+", "-", str(key.get("dataset", "data")))[:40] or "data"
    bb = re.sub(r"[^A-Za-z0-9_.-]+", "-", str(key.get("backbone", "bb")))[:40]
    return Path(cache_dir) / f"{tag}__{bb}__{digest}"


class Rows:
    """Rows ``index`` of an array or memory map, read on demand: ``Rows(X, idx)[i]`` is
    ``X[idx[i]]``. Equal to ``X[idx]`` for every reader here (estimators' ``fit``/``predict``,
    loaders), without the copy that fancy indexing makes of a 14 GB memory map."""

    def __init__(self, X, index):
        self.base = X
        self.index = np.asarray(index, dtype=np.int64)
        if self.index.ndim != 1:
            raise ShapeError(f"Rows: index must be 1-D, got shape {self.index.shape}")
        if len(self.index) and (self.index.min() < 0 or self.index.max() >= X.shape[0]):
            raise ShapeError(f"Rows: index outside 0..{X.shape[0] - 1}")
        self.shape = (len(self.index), *X.shape[1:])
        self.ndim = len(self.shape)
        self.dtype = X.dtype

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key):
        if isinstance(key, tuple):
            return np.asarray(self.base[(self.index[key[0]], *key[1:])])
        return np.asarray(self.base[self.index[key]])

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self.base[self.index], dtype=dtype)


class FeatureCache:
    """A read-only view of a cached token array.

    Attributes: ``features`` (memmap float16 (n_images, n_tokens, dim)), ``grid`` (rows, cols),
    ``image_ids`` (list of str), ``key`` (dict), ``path``.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        meta_p = self.path / "meta.json"
        if not meta_p.is_file():
            raise DataError(f"{self.path}: not a brainattn feature cache (no meta.json)")
        meta = json.loads(meta_p.read_text())
        self.key = meta["key"]
        self.grid = tuple(meta["grid"])
        self.image_ids = list(meta["image_ids"])
        self.features = load_npy(self.path / "features.npy", mmap=True)

    def __len__(self) -> int:
        return self.features.shape[0]


def extract_features(backbone, image_paths, *, image_ids=None, batch_size: int = 32,
                     device: str = "cpu") -> np.ndarray:
    """Run ``backbone`` over image files in batches (progress bar): float32 (n, L, C)."""
    from brainattn.encoders.backbones import load_images

    out = None
    n = len(image_paths)
    for s in progress(range(0, n, batch_size), desc=f"features {backbone.name}",
                      total=(n + batch_size - 1) // batch_size):
        imgs = load_images(image_paths[s : s + batch_size], backbone.image_size)
        f = backbone(imgs.to(device)).cpu().numpy()
        if out is None:
            out = np.empty((n, *f.shape[1:]), dtype=np.float32)
        out[s : s + len(f)] = f
    return out


def get_features(backbone, image_paths, *, image_ids=None, dataset_tag: str = "",
                 cache_dir=None, batch_size: int = 32, device: str = "cpu") -> FeatureCache:
    """Features of ``image_paths`` from the cache, extracting (once) on a miss.

    The cache key is the data set identity (tag, image names and sizes) + ``backbone.key()``
    (name, weights digest, layer, stream, image size).
    """
    return get_layer_features(backbone, [backbone.layer], image_paths, image_ids=image_ids,
                              dataset_tag=dataset_tag, cache_dir=cache_dir,
                              batch_size=batch_size, device=device)[backbone.layer]


def _cached(folder: Path, key: dict) -> FeatureCache | None:
    if (folder / "meta.json").is_file():
        cache = FeatureCache(folder)
        if cache.key == json.loads(json.dumps(key)):
            return cache
    return None


def get_layer_features(backbone, layers, image_paths, *, image_ids=None, dataset_tag: str = "",
                       cache_dir=None, batch_size: int = 32, device: str = "cpu"
                       ) -> dict[int, FeatureCache]:
    """Features of several layers of ``backbone``, ``{layer: FeatureCache}`` (layers resolved to
    non-negative indices), the missing ones extracted together in one pass over the images
    (:meth:`layer_outputs`); each layer's folder is the one :func:`get_features` of
    ``backbone.with_layer(layer)`` reads and writes."""
    from contextlib import ExitStack

    from brainattn.encoders.backbones import load_images

    image_paths = [str(p) for p in image_paths]
    image_ids = [Path(p).stem for p in image_paths] if image_ids is None else list(image_ids)
    layers = list(dict.fromkeys(backbone.check_layer(x) for x in layers))
    if not layers:
        raise DataError("no layers to extract features from")
    root = cache_dir or default_cache_dir()
    data_key = dataset_key(image_paths, dataset_tag)
    keys = {x: {**data_key, **backbone.with_layer(x).key()} for x in layers}
    out = {x: _cached(cache_folder(root, keys[x]), keys[x]) for x in layers}
    missing = [x for x in layers if out[x] is None]
    if not missing:
        return out
    n = len(image_paths)
    if n == 0:
        raise DataError("no images to extract features from")
    with ExitStack() as stack:  # every layer's folder appears only when all are complete
        tmps = {x: stack.enter_context(atomic_dir(cache_folder(root, keys[x]), overwrite=True))
                for x in missing}
        mms: dict = {}
        desc = f"features {backbone.name}" + (f" layers {missing}" if len(missing) > 1 else "")
        for s in progress(range(0, n, batch_size), desc=desc,
                          total=(n + batch_size - 1) // batch_size):
            imgs = load_images(image_paths[s : s + batch_size], backbone.image_size).to(device)
            feats = (backbone.layer_outputs(imgs, missing) if len(missing) > 1
                     else [backbone.with_layer(missing[0])(imgs)])
            for x, f in zip(missing, feats, strict=True):
                f = f.cpu().numpy()
                if x not in mms:
                    mms[x] = np.lib.format.open_memmap(tmps[x] / "features.npy", mode="w+",
                                                       dtype=np.float16, shape=(n, *f.shape[1:]))
                mms[x][s : s + len(f)] = f.astype(np.float16)
        for x in missing:
            mms[x].flush()
            atomic_write_json(tmps[x] / "meta.json", {"key": keys[x], "grid": list(backbone.grid),
                                                      "image_ids": image_ids})
        mms.clear()
    for x in missing:
        out[x] = FeatureCache(cache_folder(root, keys[x]))
    return out
