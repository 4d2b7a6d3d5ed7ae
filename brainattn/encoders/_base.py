"""Shared shell of the encoders: input checks, the image splitter, device-side staging of
targets and feature statistics, and the scikit-learn estimator base of the gradient-trained
encoders (transformer, factorized).

:class:`TorchEncoder` follows scikit-learn's contract (``BaseEstimator``: every
hyper-parameter is an ``__init__`` argument, learned state ends in ``_``; ``fit(X, Y)`` returns
self), so ``sklearn.base.clone``, ``cross_val_score`` and ``GridSearchCV`` work. ``fit`` splits
off a seeded validation set (:func:`split_images`), z-scores targets and features with training
statistics computed where the data will live (the GPU when there is one; the statistics are
stored as buffers in the module, so a saved model predicts in measured units) and delegates
the loop to :func:`brainattn.encoders.training.fit_loop`.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from sklearn.base import BaseEstimator, RegressorMixin

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


def stage_targets(Y, n_images: int, train_idx, device) -> tuple[torch.Tensor, torch.Tensor,
                                                                 torch.Tensor]:
    """Betas (n_images, n_vertices) on ``device``, checked and z-scored with the statistics of
    rows ``train_idx``: returns ``(Yz float32 (n_images, n_vertices), mean, std)`` (float32
    (n_vertices,), on ``device``). The checks run where the data goes (no host float64 pass)."""
    if torch.is_tensor(Y):
        Yt = Y.detach().to(device=device, dtype=torch.float32)
    else:
        Y = np.asarray(Y)
        if Y.ndim != 2:
            raise ShapeError(f"betas: expected (n_images, n_vertices), got shape {Y.shape}")
        with warnings.catch_warnings():  # a read-only memory map is only read from here
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            Yt = torch.as_tensor(np.asarray(Y, dtype=np.float32)).to(device)
    if Yt.ndim != 2:
        raise ShapeError(f"betas: expected (n_images, n_vertices), got shape {tuple(Yt.shape)}")
    if Yt.shape[0] != n_images:
        raise ShapeError(
            f"betas hold {Yt.shape[0]} images but the features hold {n_images}; they must match"
        )
    bad = ~torch.isfinite(Yt).all(0)
    if bool(bad.any()):
        idx = torch.nonzero(bad).flatten()[:5].tolist()
        raise DataError(
            f"betas: {int(bad.sum())} vertices hold NaN/Inf (first: {idx}); drop them "
            "(open the data with drop_nonfinite=True / --drop-nonfinite)"
        )
    tr = Yt[torch.as_tensor(np.asarray(train_idx), device=Yt.device)]
    mean = tr.double().mean(0)
    std = tr.double().std(0, correction=0)
    const = std == 0
    if bool(const.any()):
        idx = torch.nonzero(const).flatten()[:5].tolist()
        raise DataError(
            f"betas: {int(const.sum())} vertices have zero variance over the training images (first: "
            f"{idx}); remove them before fitting"
        )
    Yt = ((Yt - mean.float()) / std.float())
    return Yt, mean.float(), std.float()


def feature_stats(X, indices=None, *, device="cpu", chunk: int = 64) -> tuple[torch.Tensor,
                                                                            torch.Tensor]:
    """Per-channel mean and std of tokens over (rows ``indices`` of ``X``) x tokens, float64
    sums on ``device``. ``X``: an array, memmap or row view (rows are read in chunks and sent
    to ``device``), or a tensor (e.g. a loader's resident copy; then ``indices`` default to all
    rows and the sums run where it is). Returns float32 tensors (n_features,) on ``device``."""
    dev = torch.device(device)
    n = X.shape[0] if indices is None else len(indices)
    idx = np.arange(X.shape[0]) if indices is None else np.sort(np.asarray(indices))
    s = torch.zeros(X.shape[-1], dtype=torch.float64, device=dev)
    ss = torch.zeros_like(s)
    for i in range(0, n, chunk):
        rows = idx[i : i + chunk]
        if torch.is_tensor(X):
            x = X[torch.as_tensor(rows, device=X.device)].to(dev)
        else:
            x = torch.from_numpy(np.asarray(X[rows])).to(dev)
        x = x.reshape(-1, x.shape[-1]).double()
        s += x.sum(0)
        ss += (x * x).sum(0)
    m = n * int(np.prod(X.shape[1:-1]))
    mean = s / m
    std = (ss / m - mean**2).clamp_min(0).sqrt() + 1e-6
    if not bool(torch.isfinite(mean).all()):
        raise DataError("features hold NaN/Inf; re-extract them (delete the cache folder)")
    return mean.float(), std.float()


def split_images(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The one image splitter: seeded ``(kept, held_out)`` sorted index arrays of ``n`` images,
    ``round(n * fraction)`` (at least 2) held out. ``brainattn fit`` holds out its test images
    with it (``test_fraction``) and every estimator its validation images (``val_fraction``)."""
    if not 0 < fraction < 1:
        raise ConfigError(f"fraction {fraction}: expected a number in (0, 1)")
    n_out = max(2, int(round(n * fraction)))
    if n - n_out < 2:
        raise ShapeError(f"{n} images are too few to hold out {n_out} of them")
    perm = np.random.default_rng([int(seed), 7]).permutation(n)
    return np.sort(perm[n_out:]), np.sort(perm[:n_out])


def _digest(a) -> str:
    a = np.ascontiguousarray(np.asarray(a))
    if a.dtype.kind in "OU":
        a = np.asarray(a.astype(str).tolist(), dtype=np.bytes_)
    return f"sha1:{hashlib.sha1(a.tobytes()).hexdigest()[:16]}:{list(a.shape)}"


def json_param(v):
    """A hyper-parameter as JSON (arrays as a content digest: enough to tell two fits apart)."""
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, (tuple, list)) and all(isinstance(e, (str, int, float, bool)) for e in v):
        return list(v)
    if isinstance(v, dict):
        return {str(k): json_param(e) for k, e in v.items()}
    if hasattr(v, "digest"):
        return v.digest()
    return _digest(v)


def _plain(v) -> bool:
    try:
        return json.loads(json.dumps(v)) is not None or v is None
    except (TypeError, ValueError):
        return False


class TorchEncoder(RegressorMixin, BaseEstimator):
    """Base of the gradient-trained encoders: subclasses define ``_build(n_tokens, n_features,
    n_vertices)`` -> nn.Module. Learned: ``module_`` (the torch module holding normalisation
    buffers), ``history_`` (list of per-epoch dicts), ``best_epoch_``, ``n_features_in_``,
    ``train_idx_``/``val_idx_`` (rows of ``X`` used to train and to pick the epoch),
    ``finished_``, ``setup_seconds_`` (from the call of ``fit`` to the first training step).

    ``score(X, Y)`` is the mean Pearson r over vertices (the field's accuracy measure), not
    scikit-learn's default R^2; ``cross_val_score`` and ``GridSearchCV`` use it.
    """

    def _extra_loss(self):
        return None

    def _device(self):
        return resolve_device(self.device)

    def _json_params(self) -> dict:
        return {k: json_param(v) for k, v in self.get_params(deep=False).items()}

    def _before_training(self, module, train_loader, device, log) -> None:
        """Hook run after staging, before the first step (the transformer's CPU estimate)."""

    def fit(self, X, Y, *, ckpt_dir=None, resume: bool = False, log=None,
            stop_after: int | None = None):
        """Fit on tokens ``X`` (n_images, n_tokens, n_features) and betas ``Y``
        (n_images, n_vertices); a seeded ``val_fraction`` of the images picks the epoch.

        How the fit runs, not what it fits: ``ckpt_dir`` writes a checkpoint per epoch and
        ``resume`` continues from it (the same model as an uninterrupted fit); ``log`` takes
        progress lines; ``stop_after`` ends after that many epochs as if interrupted."""
        from brainattn.encoders.loader import ArrayLoader
        from brainattn.encoders.training import fit_loop
        from brainattn.utils import seed_everything

        t_start = time.perf_counter()
        check_tokens(X)
        n = X.shape[0]
        dev = self._device()
        seed_everything(self.seed)
        train_idx, val_idx = split_images(n, self.val_fraction, self.seed)
        Yz, ymean, ystd = stage_targets(Y, n, train_idx, dev)
        module = self._build(X.shape[1], X.shape[2], Yz.shape[1])
        train = ArrayLoader(X, Yz, train_idx, batch_size=self.batch_size, shuffle=True,
                            seed=self.seed, device=dev)
        val = ArrayLoader(X, Yz, val_idx, batch_size=max(self.batch_size, 64), device=dev)
        held = train.resident()  # statistics from the staged copy: no second pass over X
        fmean, fstd = (feature_stats(held, device=dev) if held is not None
                       else feature_stats(X, train_idx, device=dev))
        module.set_normalisation(fmean, fstd, ymean, ystd)
        module.to(dev)
        opt = self._optimizer(module)
        amp = bool(self.amp) and dev.type == "cuda"
        config = {**self._json_params(), "n_images": int(n), "n_vertices": int(Yz.shape[1]),
                  "n_tokens": int(X.shape[1]), "n_features": int(X.shape[2])}
        say = log or (lambda msg: None)
        self._before_training(module, train, dev, say)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        self.setup_seconds_ = time.perf_counter() - t_start
        say(f"ready to train in {self.setup_seconds_:.1f} s ({len(train_idx)} training images "
            f"on {train.where}, {len(val_idx)} validation)")
        state = fit_loop(module, opt, train, val, epochs=self.epochs, config=config,
                         ckpt_dir=ckpt_dir, resume=resume, device=dev, amp=amp,
                         grad_clip=self.grad_clip, patience=self.patience,
                         schedule=self.schedule, warmup=self.warmup,
                         extra_loss=self._extra_loss(), log=log, stop_after=stop_after,
                         cuda_graph=getattr(self, "cuda_graph", None))
        self.module_ = module
        self.history_ = state["history"]
        self.best_epoch_ = state["best_epoch"]
        self.n_features_in_ = int(X.shape[2])
        self.train_idx_, self.val_idx_ = train_idx, val_idx
        self.finished_ = bool(state["done"])
        return self

    def _param_groups(self, module):
        """What the optimizer trains: the parameters, or param groups with their own settings
        (a subclass's hook)."""
        return module.parameters()

    def _optimizer(self, module):
        # fused AdamW on CUDA: one kernel for the whole update instead of a few per tensor
        # (checkpoints do not depend on it: see brainattn.encoders.training._IMPL_KEYS)
        cuda = all(p.is_cuda for p in module.parameters())
        return torch.optim.AdamW(self._param_groups(module), lr=self.lr,
                                 weight_decay=self.weight_decay,
                                 **({"fused": True} if cuda else {}))

    def _check_fitted(self):
        if not hasattr(self, "module_"):
            raise ConfigError(f"{type(self).__name__} is not fitted; call fit first")

    @torch.no_grad()
    def predict(self, X, *, batch_size: int = 64) -> np.ndarray:
        """Predicted betas (n_images, n_vertices) float32 in measured units."""
        from brainattn.encoders.loader import ArrayLoader
        from brainattn.encoders.training import predict_loader

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
        """Mean Pearson r over vertices (NaN vertices skipped)."""
        from brainattn.encoders.metrics import pearson_per_column

        return float(np.nanmean(pearson_per_column(self.predict(X), np.asarray(Y))))

    # persistence --------------------------------------------------------------------------
    def _saved_params(self) -> dict:
        """The hyper-parameters model.json keeps: the JSON-plain ones (arrays such as ROI
        labels are not kept; the module's build arguments hold what they decided)."""
        out = {}
        for k, v in self.get_params(deep=False).items():
            v = list(v) if isinstance(v, tuple) else v
            if _plain(v):
                out[k] = v
        return out

    def save(self, folder) -> None:
        """``model.safetensors`` + ``model.json`` (class, params, build arguments)."""
        from brainattn.encoders.training import save_module
        from brainattn.io import atomic_write_json

        self._check_fitted()
        folder = Path(folder)
        save_module(folder / "model.safetensors", self.module_)
        atomic_write_json(folder / "model.json", {
            "class": type(self).__name__, "params": self._saved_params(),
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
        est.module_ = est._module_class()(b["n_tokens"], b["n_features"], b["n_vertices"],
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
            val = val if torch.is_tensor(val) else torch.as_tensor(np.asarray(val))
            getattr(self, name).copy_(val.to(torch.float32))

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
