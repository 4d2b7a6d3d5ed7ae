"""Ridge baseline: himalaya ``RidgeCV`` with one alpha per vertex chosen by cross-validation.

Features are reduced per image before the regression, as the user picks:

* ``pool="mean"``: the mean over tokens, (n_images, n_features);
* ``pool="pca"``: the whole flattened token grid, (n_images, n_tokens * n_features), projected
  on its first ``n_components`` principal components (fitted on the training images).

The reduced features are z-scored with training statistics; himalaya fits with an intercept.
Backend: ``torch_cuda`` when the device is CUDA, else ``torch`` (CPU), both float32. Learned state is kept
as plain arrays (``coef_`` (n_reduced, n_vertices), ``intercept_``, ``alphas_``), so a saved
model predicts without himalaya.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from brainattn.encoders._base import check_targets
from brainattn.encoders.backbones import check_tokens
from brainattn.errors import ConfigError, DataError, ShapeError
from brainattn.utils import resolve_device


def reduce_features(X, pool: str, *, chunk: int = 256) -> np.ndarray:
    """(n_images, n_tokens, n_features) -> pooled (n, C) or flattened (n, L*C), float32."""
    check_tokens(X)
    if pool == "mean":
        out = np.empty((X.shape[0], X.shape[2]), np.float32)
        for s in range(0, X.shape[0], chunk):
            out[s : s + chunk] = np.asarray(X[s : s + chunk], np.float32).mean(1)
        return out
    if pool == "pca":
        return np.asarray(X, np.float32).reshape(X.shape[0], -1)
    raise ConfigError(f"pool {pool!r}: expected 'mean' or 'pca'")


class RidgeEncoder:
    """Ridge regression from (pooled or PCA-reduced) tokens to every vertex.

    Parameters
    ----------
    pool : ``mean`` | ``pca``.
    n_components : PCA size for ``pool="pca"``.
    alphas : candidate alphas (per-vertex choice by ``cv``-fold cross-validation).
    cv : folds.
    n_targets_batch : vertices per solver batch (memory knob, himalaya's).
    device : ``auto`` uses himalaya's torch_cuda backend on a GPU.
    """

    _param_names = ("pool", "n_components", "alphas", "cv", "n_targets_batch", "seed", "device")

    def __init__(self, pool: str = "mean", n_components: int = 256, alphas=None, cv: int = 5,
                 n_targets_batch: int | None = None, seed: int = 0, device: str = "auto"):
        self.pool = pool
        self.n_components = n_components
        self.alphas = alphas
        self.cv = cv
        self.n_targets_batch = n_targets_batch
        self.seed = seed
        self.device = device

    def get_params(self, deep: bool = True) -> dict:
        return {k: getattr(self, k) for k in self._param_names}

    def set_params(self, **params):
        for k, v in params.items():
            if k not in self._param_names:
                raise ConfigError(f"RidgeEncoder: unknown parameter {k!r}")
            setattr(self, k, v)
        return self

    def _alphas(self) -> np.ndarray:
        return np.asarray(self.alphas if self.alphas is not None else np.logspace(-1, 6, 15),
                          dtype=np.float64)

    def _reduce(self, X) -> np.ndarray:
        Z = reduce_features(X, self.pool)
        if self.pool == "pca":
            Z = (Z - self.pca_mean_) @ self.pca_components_.T
        return (Z - self.x_mean_) / self.x_std_

    def fit(self, X, Y, *, train_idx=None, **_):
        """Fit on rows ``train_idx`` (default all) of tokens ``X`` and betas ``Y``."""
        from himalaya.backend import get_backend, set_backend
        from himalaya.ridge import RidgeCV

        check_tokens(X)
        Y = check_targets(Y, X.shape[0])
        idx = np.sort(np.arange(X.shape[0]) if train_idx is None else np.asarray(train_idx))
        Z = reduce_features(X[idx], self.pool)
        Ytr = np.asarray(Y[idx], np.float32)  # the torch backends work in float32
        if self.pool == "pca":
            k = min(int(self.n_components), Z.shape[0] - 1, Z.shape[1])
            if k < 1:
                raise ShapeError("pool='pca' needs at least 2 training images")
            self.pca_mean_ = Z.mean(0).astype(np.float32)
            import torch

            g = torch.Generator().manual_seed(int(self.seed))
            Zc = torch.from_numpy(Z - self.pca_mean_)
            # randomised range finder + exact SVD of the small projected matrix
            omega = torch.randn(Zc.shape[1], min(Zc.shape[1], k + 10), generator=g)
            Qm, _ = torch.linalg.qr(Zc @ omega)
            for _ in range(2):
                Qm, _ = torch.linalg.qr(Zc @ (Zc.T @ Qm))
            _, _, vt = torch.linalg.svd(Qm.T @ Zc, full_matrices=False)
            self.pca_components_ = vt[:k].numpy().astype(np.float32)
            Z = (Z - self.pca_mean_) @ self.pca_components_.T
        self.x_mean_ = Z.mean(0).astype(np.float32)
        self.x_std_ = (Z.std(0) + 1e-6).astype(np.float32)
        Z = ((Z - self.x_mean_) / self.x_std_).astype(np.float32)
        dev = resolve_device(self.device)
        old = get_backend()
        backend = set_backend("torch_cuda" if dev.type == "cuda" else "torch", on_error="warn")
        try:
            params = {"n_targets_batch": self.n_targets_batch} if self.n_targets_batch else None
            cv = min(int(self.cv), Z.shape[0])
            if cv < 2:
                raise ShapeError("ridge cross-validation needs at least 2 training images")
            model = RidgeCV(alphas=self._alphas(), cv=cv, fit_intercept=True, solver_params=params)
            model.fit(Z, Ytr)
            self.coef_ = np.asarray(backend.to_numpy(model.coef_), np.float32)
            self.intercept_ = np.asarray(backend.to_numpy(model.intercept_), np.float32)
            self.alphas_ = np.asarray(backend.to_numpy(model.best_alphas_), np.float32)
        finally:
            set_backend(old)
        for k in self._arrays:  # C-contiguous float32: a reloaded model predicts bit-identically
            if hasattr(self, k):
                setattr(self, k, np.ascontiguousarray(getattr(self, k), dtype=np.float32))
        self.n_features_in_ = int(X.shape[2])
        self.n_tokens_in_ = int(X.shape[1])
        return self

    def predict(self, X) -> np.ndarray:
        if not hasattr(self, "coef_"):
            raise ConfigError("RidgeEncoder is not fitted; call fit first")
        check_tokens(X)
        if X.shape[1:] != (self.n_tokens_in_, self.n_features_in_):
            raise ShapeError(f"features have shape {tuple(X.shape[1:])} per image; the model was "
                             f"fitted on {(self.n_tokens_in_, self.n_features_in_)}")
        return (self._reduce(X) @ self.coef_ + self.intercept_).astype(np.float32)

    def score(self, X, Y) -> float:
        from brainattn.encoders.metrics import pearson_per_column

        return float(np.nanmean(pearson_per_column(self.predict(X), Y)))

    _arrays = ("coef_", "intercept_", "alphas_", "x_mean_", "x_std_", "pca_mean_", "pca_components_")

    def save(self, folder) -> None:
        from safetensors.numpy import save_file

        from brainattn.io import atomic_path, atomic_write_json

        folder = Path(folder)
        arrs = {k: np.ascontiguousarray(getattr(self, k), dtype=np.float32)
                for k in self._arrays if hasattr(self, k)}
        with atomic_path(folder / "model.safetensors") as tmp:
            save_file(arrs, str(tmp))
        params = {**self.get_params(), "alphas": self._alphas().tolist()}
        atomic_write_json(folder / "model.json", {
            "class": "RidgeEncoder", "params": params, "n_features_in": self.n_features_in_,
            "n_tokens_in": self.n_tokens_in_})

    @classmethod
    def load(cls, folder, device: str = "cpu"):
        from safetensors.numpy import load_file

        folder = Path(folder)
        if not (folder / "model.json").is_file():
            raise DataError(f"{folder}: no model.json (not a brainattn run folder?)")
        meta = json.loads((folder / "model.json").read_text())
        est = cls(**meta["params"])
        for k, v in load_file(str(folder / "model.safetensors")).items():
            setattr(est, k, v)
        est.n_features_in_ = meta["n_features_in"]
        est.n_tokens_in_ = meta["n_tokens_in"]
        return est
