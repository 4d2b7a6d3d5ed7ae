"""Ridge baseline: one alpha per vertex chosen by K-fold cross-validation, as himalaya's
``RidgeCV(solver="svd", local_alpha=True)``.

Features are reduced per image before the regression, as the user picks:

* ``pool="mean"``: the mean over tokens, (n_images, n_features), computed where the fit runs
  (the GPU when there is one), chunk by chunk from the array or memory map;
* ``pool="pca"``: the whole flattened token grid, (n_images, n_tokens * n_features), projected
  on its first ``n_components`` principal components (fitted on the training images).

The reduced features are z-scored with training statistics; the fit has an intercept. Learned
state is kept as plain arrays (``coef_`` (n_reduced, n_vertices), ``intercept_``, ``alphas_``),
so a saved model predicts without himalaya.

The solver (:func:`solve_ridge_cv`) is a plain function on torch tensors (CPU or GPU). It is
himalaya's ``solve_ridge_cv_svd`` (``RidgeCV(solver="svd", fit_intercept=True)``) in what it
computes -- the same folds (scikit-learn's ``KFold(cv)``), the same score (``l2_neg_loss``, the
negative MSE, averaged over folds), the same rule (first best mean score per target); the tests
check alphas and predictions against himalaya's -- but not in how. It works in feature space:
one eigendecomposition of each training fold's centred Gram matrix (features x features, float64;
the total minus the validation block's) instead of an SVD of the fold's rows (cuSOLVER's tall
SVDs were the slow part of the fit on a GPU); the rows projected on that basis and multiplied
into Y once per fold, the validation block's share subtracted (unshuffled folds are contiguous
row views: no copies of the targets); then one (n_val x p) x (p x targets) product per alpha,
where himalaya's solver multiplies an (n_val x n_train) matrix per alpha into Y, n_train / p
times the work (9x at Algonauts size: 8,857 images, 768 features). Its refit with a per-target
alpha would materialise (features x images x targets); here the refit applies each target's
alpha to one eigenbasis of all rows.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from sklearn.base import BaseEstimator, RegressorMixin

from brainattn.encoders.backbones import check_tokens
from brainattn.errors import ConfigError, DataError, ShapeError
from brainattn.utils import resolve_device

#: the default candidate alphas (z-scored features; per-vertex choice)
DEFAULT_ALPHAS = tuple(np.logspace(-1, 6, 15).tolist())


def pool_tokens(X, pool: str, *, device="cpu", chunk: int = 128) -> torch.Tensor:
    """(n_images, n_tokens, n_features) -> float32 tensor on ``device``: the mean over tokens
    (n, C) for ``pool="mean"`` (rows read in chunks, summed on ``device``), or the flattened
    grid (n, L*C) for ``pool="pca"``."""
    check_tokens(X)
    dev = torch.device(device)
    if pool not in ("mean", "pca"):
        raise ConfigError(f"pool {pool!r}: expected 'mean' or 'pca'")
    width = X.shape[2] if pool == "mean" else X.shape[1] * X.shape[2]
    out = torch.empty((X.shape[0], width), dtype=torch.float32, device=dev)
    for s in range(0, X.shape[0], chunk):
        x = X[s : s + chunk]
        x = (x.to(dev) if torch.is_tensor(x) else torch.from_numpy(np.asarray(x)).to(dev)).float()
        out[s : s + len(x)] = x.mean(1) if pool == "mean" else x.reshape(len(x), -1)
    return out


def solve_ridge_cv(X, Y, alphas, *, cv: int = 5, n_targets_batch: int | None = None):
    """Ridge with an intercept and one alpha per target picked by ``cv``-fold CV.

    Parameters
    ----------
    X : (n, p) float tensor; Y : (n, t) float tensor, on the same device.
    alphas : candidate penalties (n_alphas,).
    cv : folds (scikit-learn's ``KFold(cv)``, unshuffled, as himalaya's ``RidgeCV(cv=5)``).
    n_targets_batch : targets per batch (memory knob; default all).

    Returns
    -------
    coef (p, t), intercept (t,), best_alphas (t,), cv_scores (t,) (mean over folds of the
    negative mean squared error at the chosen alpha) -- tensors on X's device.
    """
    from sklearn.model_selection import KFold

    n, t = Y.shape
    if X.shape[0] != n:
        raise ShapeError(f"ridge: X has {X.shape[0]} rows and Y {n}; they must match")
    if n < max(2, cv):
        raise ShapeError(f"ridge cross-validation needs at least {max(2, cv)} training images")
    dev = X.device
    a = torch.as_tensor(np.asarray(alphas, dtype=np.float64), dtype=X.dtype, device=dev)
    if a.ndim != 1 or not len(a) or bool((a <= 0).any()):
        raise ConfigError(f"alphas: expected positive numbers, got {np.asarray(alphas).tolist()}")
    batch = int(n_targets_batch or t)
    scores = torch.zeros((len(a), t), dtype=torch.float64, device=dev)
    # Unshuffled KFold: every validation fold is a contiguous block of rows, so the products
    # below read views of X and Y; a training fold's Gram matrix and sums are the totals minus
    # its validation block's.
    folds = [(int(te[0]), int(te[-1]) + 1) for _, te in KFold(int(cv)).split(np.arange(n))]
    X64 = X.double()
    gram, sx = X64.T @ X64, X64.sum(0)

    def basis(g, s, m):
        """Mean, eigenvalues (the squared singular values of the centred rows) and
        eigenvectors of the centred Gram matrix of ``m`` rows, in float64: float32 would square
        the condition number of the rows."""
        mu = s / m
        lam, V = torch.linalg.eigh(g - m * torch.outer(mu, mu))
        return mu, lam.clamp_min(0), V

    def projected(Z, Yb, lo=0, hi=0):
        """V^T (X_tr - mu)^T Y_tr over the training rows (all but lo:hi), (p, batch), from the
        rows already in the basis, Z = (X - mu) V: each component's rounding error then scales
        with its singular value, as with an SVD's U^T Y, not with the largest one."""
        return Z.T @ Yb - Z[lo:hi].T @ Yb[lo:hi]  # sum_tr (x - mu) = 0: Y needs no centring

    plans = []
    for lo, hi in folds:
        xte = X64[lo:hi]
        mu, lam, V = basis(gram - xte.T @ xte, sx - xte.sum(0), n - (hi - lo))
        # validation features in the training basis, scaled per alpha: (n_alphas, n_val, p)
        A = ((xte - mu) @ V)[None] / (lam[None, None] + a.double()[:, None, None])
        plans.append((lo, hi, ((X64 - mu) @ V).to(X.dtype), A.to(X.dtype)))
    for b in range(0, t, batch):
        Yb = Y[:, b : b + batch]
        sy = Yb.sum(0)
        for lo, hi, Z, A in plans:
            yte = Yb[lo:hi]
            B = projected(Z, Yb, lo, hi)
            yte = yte - (sy - yte.sum(0)) / (n - (hi - lo))
            for k in range(len(a)):
                err = yte - A[k] @ B  # himalaya's l2_neg_loss: -mean squared error
                scores[k, b : b + batch] -= err.square().mean(0).double()
    scores /= len(folds)
    best = scores.argmax(0)  # first maximum: the smallest alpha among ties, as himalaya
    mu_x, lam, V = basis(gram, sx, n)
    inv = 1.0 / (lam[None] + a.double()[:, None])  # (n_alphas, p)
    Z, Vx = ((X64 - mu_x) @ V).to(X.dtype), V.to(X.dtype)
    mu_y = Y.mean(0)
    coef = torch.empty((X.shape[1], t), dtype=X.dtype, device=dev)
    for b in range(0, t, batch):
        B = projected(Z, Y[:, b : b + batch])
        coef[:, b : b + batch] = Vx @ (inv[best[b : b + batch]].T.to(X.dtype) * B)
    mu_x = mu_x.to(X.dtype)
    intercept = mu_y - mu_x @ coef
    return coef, intercept, a[best], scores.gather(0, best[None])[0]


class RidgeEncoder(RegressorMixin, BaseEstimator):
    """Ridge regression from (pooled or PCA-reduced) tokens to every vertex.

    Parameters
    ----------
    pool : ``mean`` | ``pca``.
    n_components : PCA size for ``pool="pca"``.
    alphas : candidate alphas (per-vertex choice by ``cv``-fold cross-validation); default
        :data:`DEFAULT_ALPHAS`, 15 values from 0.1 to 1e6.
    cv : folds.
    n_targets_batch : vertices per solver batch (memory knob, himalaya's).
    seed : randomised PCA's seed.
    device : ``auto`` fits on the GPU when there is one.

    Learned: ``coef_`` (n_reduced, n_vertices), ``intercept_``, ``alphas_`` (per vertex),
    ``cv_scores_``, ``x_mean_``/``x_std_`` (z-scoring), ``pca_mean_``/``pca_components_``
    (``pca``), ``n_features_in_``, ``n_tokens_in_``. ``score`` is the mean Pearson r.
    """

    def __init__(self, pool: str = "mean", n_components: int = 256, alphas=None, cv: int = 5,
                 n_targets_batch: int | None = None, seed: int = 0, device: str = "auto"):
        self.pool = pool
        self.n_components = n_components
        self.alphas = alphas
        self.cv = cv
        self.n_targets_batch = n_targets_batch
        self.seed = seed
        self.device = device

    def _alphas(self) -> np.ndarray:
        return np.asarray(self.alphas if self.alphas is not None else DEFAULT_ALPHAS,
                          dtype=np.float64)

    def _reduce(self, X, device) -> torch.Tensor:
        Z = pool_tokens(X, self.pool, device=device)
        if self.pool == "pca":
            Z = (Z - torch.as_tensor(self.pca_mean_, device=Z.device)) \
                @ torch.as_tensor(self.pca_components_, device=Z.device).T
        return (Z - torch.as_tensor(self.x_mean_, device=Z.device)) \
            / torch.as_tensor(self.x_std_, device=Z.device)

    def fit(self, X, Y):
        """Fit on tokens ``X`` (n_images, n_tokens, n_features) and betas ``Y``
        (n_images, n_vertices), all rows (cross-validation inside picks the alphas)."""
        from brainattn.encoders._base import stage_targets

        check_tokens(X)
        dev = resolve_device(self.device)
        n = X.shape[0]
        # checked on the device and z-scored (per-target scaling changes no alpha choice: each
        # target's CV error scales by its variance); undone on the coefficients below
        Yz, ymean, ystd = stage_targets(Y, n, np.arange(n), dev)
        Z = pool_tokens(X, self.pool, device=dev)
        if self.pool == "pca":
            k = min(int(self.n_components), Z.shape[0] - 1, Z.shape[1])
            if k < 1:
                raise ShapeError("pool='pca' needs at least 2 training images")
            mean = Z.mean(0)
            g = torch.Generator(device="cpu").manual_seed(int(self.seed))
            Zc = Z - mean
            # randomised range finder + exact SVD of the small projected matrix
            omega = torch.randn(Zc.shape[1], min(Zc.shape[1], k + 10), generator=g).to(dev)
            Qm, _ = torch.linalg.qr(Zc @ omega)
            for _ in range(2):
                Qm, _ = torch.linalg.qr(Zc @ (Zc.T @ Qm))
            _, _, vt = torch.linalg.svd(Qm.T @ Zc, full_matrices=False)
            self.pca_mean_ = mean.cpu().numpy()
            self.pca_components_ = vt[:k].cpu().numpy()
            Z = Zc @ vt[:k].T
        x_mean = Z.mean(0)
        x_std = Z.std(0, correction=0) + 1e-6
        coef, intercept, best, cv_scores = solve_ridge_cv(
            (Z - x_mean) / x_std, Yz, self._alphas(), cv=min(int(self.cv), n),
            n_targets_batch=self.n_targets_batch)
        self.coef_ = (coef * ystd).cpu().numpy()
        self.intercept_ = (intercept * ystd + ymean).cpu().numpy()
        self.alphas_ = best.cpu().numpy()
        self.cv_scores_ = (cv_scores * ystd.double() ** 2).cpu().numpy()
        self.x_mean_ = x_mean.cpu().numpy()
        self.x_std_ = x_std.cpu().numpy()
        for k in self._arrays:  # C-contiguous float32: a reloaded model predicts bit-identically
            if hasattr(self, k):
                setattr(self, k, np.ascontiguousarray(getattr(self, k), dtype=np.float32))
        self.n_features_in_ = int(X.shape[2])
        self.n_tokens_in_ = int(X.shape[1])
        return self

    def predict(self, X) -> np.ndarray:
        """Predicted betas (n_images, n_vertices) float32, computed on ``device``."""
        if not hasattr(self, "coef_"):
            raise ConfigError("RidgeEncoder is not fitted; call fit first")
        check_tokens(X)
        if tuple(X.shape[1:]) != (self.n_tokens_in_, self.n_features_in_):
            raise ShapeError(f"features have shape {tuple(X.shape[1:])} per image; the model was "
                             f"fitted on {(self.n_tokens_in_, self.n_features_in_)}")
        dev = resolve_device(self.device)
        Z = self._reduce(X, dev)
        pred = Z @ torch.as_tensor(self.coef_, device=dev) \
            + torch.as_tensor(self.intercept_, device=dev)
        return pred.cpu().numpy()

    def score(self, X, Y) -> float:
        """Mean Pearson r over vertices (NaN vertices skipped)."""
        from brainattn.encoders.metrics import pearson_per_column

        return float(np.nanmean(pearson_per_column(self.predict(X), np.asarray(Y))))

    _arrays = ("coef_", "intercept_", "alphas_", "cv_scores_", "x_mean_", "x_std_", "pca_mean_",
               "pca_components_")

    def save(self, folder) -> None:
        from safetensors.numpy import save_file

        from brainattn.io import atomic_path, atomic_write_json

        folder = Path(folder)
        arrs = {k: np.ascontiguousarray(getattr(self, k), dtype=np.float32)
                for k in self._arrays if hasattr(self, k)}
        with atomic_path(folder / "model.safetensors") as tmp:
            save_file(arrs, str(tmp))
        params = {**self.get_params(deep=False), "alphas": self._alphas().tolist()}
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
        est = cls(**{**meta["params"], "device": device})
        for k, v in load_file(str(folder / "model.safetensors")).items():
            setattr(est, k, v)
        est.n_features_in_ = meta["n_features_in"]
        est.n_tokens_in_ = meta["n_tokens_in"]
        return est
