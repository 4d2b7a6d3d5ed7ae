"""Shared shell of the gradient-trained encoders (transformer, factorized).

The estimator validates inputs once, z-scores targets and features with training statistics
(stored as buffers in the module, so a saved model predicts in measured units), splits a
validation set, and delegates the loop to :func:`brainattn.encoders.training.fit_loop`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from brainattn.encoders.backbones import check_tokens
from brainattn.errors import ConfigError, DataError, ShapeError
from brainattn.utils import resolve_device


def check_targets(Y, n_images: int) -> np.ndarray:
    """Targets (n_images, n_vertices): finite, with variance; errors name the vertices."""
    Y = np.asarray(Y)
    if Y.ndim != 2:
        raise ShapeError(f"betas: expected (n_images, n_vertices), got shape {Y.shape}")
    if Y.shape[0] != n_images:
        raise ShapeError(
            f"betas hold {Y.shape[0]} images but the features hold {n_images}; they must match"
        )
    bad = ~np.isfinite(Y).all(0)
    if bad.any():
        idx = np.flatnonzero(bad)
        raise DataError(
            f"betas: {bad.sum()} vertices hold NaN/Inf (first: {idx[:5].tolist()}); drop them "
            "(open the data with drop_nonfinite=True / --drop-nonfinite)"
        )
    const = Y.std(0) == 0
    if const.any():
        idx = np.flatnonzero(const)
        raise DataError(
            f"betas: {const.sum()} vertices have zero variance over the training images (first: "
            f"{idx[:5].tolist()}); remove them before fitting"
        )
    return Y


def feature_stats(X, indices, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std over (images in ``indices``) x tokens, float64 accumulation."""
    s = np.zeros(X.shape[-1])
    ss = np.zeros(X.shape[-1])
    n = 0
    idx = np.sort(np.asarray(indices))
    for i in range(0, len(idx), chunk):
        x = np.asarray(X[idx[i : i + chunk]], dtype=np.float64).reshape(-1, X.shape[-1])
        s += x.sum(0)
        ss += (x * x).sum(0)
        n += len(x)
    mean = s / n
    std = np.sqrt(np.maximum(ss / n - mean**2, 0)) + 1e-6
    if not np.isfinite(mean).all():
        raise DataError("features hold NaN/Inf; re-extract them (delete the cache folder)")
    return mean, std


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if not 0 < val_fraction < 1:
        raise ConfigError(f"val_fraction {val_fraction}: expected a number in (0, 1)")
    perm = np.random.default_rng([seed, 7]).permutation(n)
    n_val = max(2, int(round(n * val_fraction)))
    if n - n_val < 2:
        raise ShapeError(f"{n} images are too few to split off a validation set")
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


class TorchEncoder:
    """Base: subclasses define ``_build(n_tokens, n_features, n_vertices)`` -> nn.Module and
    ``_param_names``. Learned: ``module_`` (the torch module holding normalisation buffers),
    ``history_`` (list of per-epoch dicts), ``best_epoch_``, ``n_features_in_``.

    An optional attribute ``cuda_graph`` (``None`` = auto, ``True``, ``False``; absent = auto)
    is passed to :func:`~brainattn.encoders.training.fit_loop`: on CUDA with one process the
    training step is replayed as a CUDA graph."""

    _param_names: tuple[str, ...] = ()

    # sklearn-style parameter protocol ----------------------------------------------------
    def get_params(self, deep: bool = True) -> dict:
        return {k: getattr(self, k) for k in self._param_names}

    def set_params(self, **params):
        for k, v in params.items():
            if k not in self._param_names:
                raise ConfigError(f"{type(self).__name__}: unknown parameter {k!r}")
            setattr(self, k, v)
        return self

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={getattr(self, k)!r}" for k in self._param_names)
        return f"{type(self).__name__}({args})"

    # --------------------------------------------------------------------------------------
    def _extra_loss(self):
        return None

    def _device(self):
        return resolve_device(self.device)

    def fit(self, X, Y, *, train_idx=None, val_idx=None, ckpt_dir=None, resume: bool = False,
            log=None, stop_after: int | None = None, **build_kw):
        """Fit on tokens ``X`` (n_images, n_tokens, n_features) and betas ``Y``
        (n_images, n_vertices). ``train_idx``/``val_idx`` choose the rows (default: a seeded
        ``val_fraction`` split). ``ckpt_dir`` enables per-epoch checkpoints and ``resume``."""
        from brainattn.encoders.training import ArrayLoader, fit_loop
        from brainattn.utils import seed_everything

        check_tokens(X)
        n = X.shape[0]
        Y = check_targets(Y, n)
        if train_idx is None or val_idx is None:
            train_idx, val_idx = split_indices(n, self.val_fraction, self.seed)
        train_idx, val_idx = np.asarray(train_idx), np.asarray(val_idx)
        Ytr = Y[train_idx]
        ystd = Ytr.std(0)
        if (ystd == 0).any():
            raise DataError(f"betas: {(ystd == 0).sum()} vertices are constant over the training "
                            "images; remove them before fitting")
        seed_everything(self.seed)
        dev = self._device()
        fmean, fstd = feature_stats(X, train_idx)
        module = self._build(X.shape[1], X.shape[2], Y.shape[1], **build_kw)
        module.set_normalisation(fmean, fstd, Ytr.mean(0), ystd)
        module.to(dev)
        Yz = ((Y - Ytr.mean(0)) / ystd).astype(np.float32)
        train = ArrayLoader(X, Yz, train_idx, batch_size=self.batch_size, shuffle=True,
                            seed=self.seed, device=dev)
        val = ArrayLoader(X, Yz, val_idx, batch_size=max(self.batch_size, 64), device=dev)
        opt = self._optimizer(module)
        amp = bool(self.amp) and dev.type == "cuda"
        config = {**self.get_params(), "n_images": int(n), "n_vertices": int(Y.shape[1]),
                  "n_tokens": int(X.shape[1]), "n_features": int(X.shape[2])}
        state = fit_loop(module, opt, train, val, epochs=self.epochs, config=config,
                         ckpt_dir=ckpt_dir, resume=resume, device=dev, amp=amp,
                         grad_clip=self.grad_clip, patience=self.patience,
                         schedule=self.schedule, warmup=getattr(self, "warmup", 0),
                         extra_loss=self._extra_loss(), log=log, stop_after=stop_after,
                         cuda_graph=getattr(self, "cuda_graph", None))
        self.module_ = module
        self.history_ = state["history"]
        self.best_epoch_ = state["best_epoch"]
        self.n_features_in_ = int(X.shape[2])
        self.train_idx_, self.val_idx_ = train_idx, val_idx
        self.finished_ = bool(state["done"])
        return self

    def _optimizer(self, module):
        # fused AdamW on CUDA: one kernel for the whole update instead of a few per tensor
        # (checkpoints do not depend on it: see brainattn.encoders.training._IMPL_KEYS)
        cuda = all(p.is_cuda for p in module.parameters())
        return torch.optim.AdamW(module.parameters(), lr=self.lr, weight_decay=self.weight_decay,
                                 **({"fused": True} if cuda else {}))

    def _check_fitted(self):
        if not hasattr(self, "module_"):
            raise ConfigError(f"{type(self).__name__} is not fitted; call fit first")

    @torch.no_grad()
    def predict(self, X, *, batch_size: int = 64) -> np.ndarray:
        """Predicted betas (n_images, n_vertices) float32 in measured units."""
        from brainattn.encoders.training import ArrayLoader, predict_loader

        self._check_fitted()
        check_tokens(X)
        if X.shape[2] != self.n_features_in_:
            raise ShapeError(
                f"features have {X.shape[2]} channels; the model was fitted on {self.n_features_in_}"
            )
        dev = next(self.module_.parameters()).device
        loader = ArrayLoader(X, None, np.arange(X.shape[0]), batch_size=batch_size, device=dev)
        z = predict_loader(self.module_, loader, device=dev, amp=bool(self.amp))
        return self.module_.destandardise(z).numpy()

    def score(self, X, Y) -> float:
        """Mean Pearson r over vertices."""
        from brainattn.encoders.metrics import pearson_per_column

        return float(np.nanmean(pearson_per_column(self.predict(X), Y)))

    # persistence --------------------------------------------------------------------------
    def _build_kwargs(self) -> dict:
        return {}

    def save(self, folder) -> None:
        """``model.safetensors`` + ``model.json`` (class, params, build arguments)."""
        from brainattn.encoders.training import save_module
        from brainattn.io import atomic_write_json

        self._check_fitted()
        folder = Path(folder)
        save_module(folder / "model.safetensors", self.module_)
        atomic_write_json(folder / "model.json", {
            "class": type(self).__name__, "params": self.get_params(),
            "build": self.module_.build_args, "n_features_in": self.n_features_in_,
        })

    @classmethod
    def load(cls, folder, device: str = "cpu"):
        from brainattn.encoders.training import load_module

        folder = Path(folder)
        meta_p = folder / "model.json"
        if not meta_p.is_file():
            raise DataError(f"{folder}: no model.json (not a brainattn run folder?)")
        meta = json.loads(meta_p.read_text())
        est = cls(**meta["params"])
        b = meta["build"]
        est.module_ = est._build(b["n_tokens"], b["n_features"], b["n_vertices"],
                                 **b.get("kwargs", {}))
        load_module(folder / "model.safetensors", est.module_)
        est.module_.to(resolve_device(device)).eval()
        est.n_features_in_ = meta["n_features_in"]
        return est


class EncoderModule(torch.nn.Module):
    """nn.Module base holding feature/target normalisation buffers and its build arguments.

    ``forward(x)`` takes raw tokens (B, L, C) and returns z-scored predictions (B, V);
    :meth:`destandardise` maps them back to measured units.
    """

    def __init__(self, n_tokens: int, n_features: int, n_vertices: int, **kwargs):
        super().__init__()
        self.build_args = {"n_tokens": int(n_tokens), "n_features": int(n_features),
                           "n_vertices": int(n_vertices), "kwargs": _jsonable(kwargs)}
        self.register_buffer("feat_mean", torch.zeros(n_features))
        self.register_buffer("feat_std", torch.ones(n_features))
        self.register_buffer("y_mean", torch.zeros(n_vertices))
        self.register_buffer("y_std", torch.ones(n_vertices))

    def set_normalisation(self, fmean, fstd, ymean, ystd) -> None:
        for name, val in (("feat_mean", fmean), ("feat_std", fstd), ("y_mean", ymean),
                          ("y_std", ystd)):
            getattr(self, name).copy_(torch.as_tensor(np.asarray(val), dtype=torch.float32))

    def normalise(self, x):
        return (x - self.feat_mean) / self.feat_std

    def destandardise(self, z):
        return z * self.y_std.to(z.device) + self.y_mean.to(z.device)


def _jsonable(d: dict) -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, np.ndarray):
            v = v.tolist()
        elif isinstance(v, tuple):
            v = list(v)
        out[k] = v
    return out
