"""Factorized spatial x feature readout (Klindt et al. 2017; fwRF, St-Yves & Naselaris 2018).

Each vertex v has a spatial map over the token grid, ``m_v = softmax(s_v)`` (non-negative,
sums to 1, so it says *where* the vertex looks), and feature weights ``w_v`` (*what*)::

    pred[b, v] = sum_l m_v[l] * (x_norm[b, l] . w_v) + b_v

Training: the same loop and optimiser as the transformer (MSE on z-scored betas, AdamW), plus
a smoothness penalty on the map logits (squared differences of neighbouring tokens,
``smoothness`` per vertex) so that maps stay compact with ~1,000 training images.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from brainattn.encoders._base import EncoderModule, TorchEncoder
from brainattn.errors import ShapeError


class FactorizedModule(EncoderModule):
    def __init__(self, n_tokens, n_features, n_vertices, *, grid, seed=0, chunk=8192):
        super().__init__(n_tokens, n_features, n_vertices, grid=list(grid), seed=seed)
        if grid[0] * grid[1] != n_tokens:
            raise ShapeError(f"grid {tuple(grid)} does not hold {n_tokens} tokens")
        g = torch.Generator().manual_seed(seed)
        self.grid = tuple(grid)
        self.spatial = nn.Parameter(torch.zeros(n_vertices, n_tokens))
        self.weight = nn.Parameter(torch.randn(n_vertices, n_features, generator=g) * 0.01)
        self.bias = nn.Parameter(torch.zeros(n_vertices))
        self.chunk = chunk

    def maps(self):
        """Spatial maps (n_vertices, rows, cols), each summing to 1."""
        return torch.softmax(self.spatial, -1).view(-1, *self.grid)

    def forward(self, x):
        x = self.normalise(x)  # (B, L, C)
        m = torch.softmax(self.spatial, -1).to(x.dtype)  # (V, L)
        outs = []
        for s in range(0, m.shape[0], self.chunk):  # bounds the (B, V, C) intermediate
            pooled = torch.einsum("vl,blc->bvc", m[s : s + self.chunk], x)
            outs.append((pooled * self.weight[s : s + self.chunk].to(x.dtype)).sum(-1))
        return torch.cat(outs, 1) + self.bias.to(x.dtype)

    def smoothness_penalty(self):
        s = self.spatial.view(-1, *self.grid)
        return ((s[:, 1:] - s[:, :-1]) ** 2).mean() + ((s[:, :, 1:] - s[:, :, :-1]) ** 2).mean()


class SpatialFeatureEncoder(TorchEncoder):
    """Factorized (where x what) encoder, scikit-learn style.

    Parameters: ``smoothness`` (weight of the map smoothness penalty), ``map_lr`` (learning
    rate multiplier of the map logits), and the training parameters of
    :class:`~brainattn.encoders.transformer.TransformerBrainEncoder`.
    Learned: ``module_`` (``maps()`` gives (n_vertices, rows, cols)), ``history_``.
    """

    _param_names = ("smoothness", "map_lr", "epochs", "batch_size", "lr", "weight_decay",
                    "grad_clip", "schedule", "warmup", "patience", "val_fraction", "seed",
                    "device", "amp")

    def __init__(self, smoothness: float = 0.1, map_lr: float = 20.0, epochs: int = 30,
                 batch_size: int = 64, lr: float = 3e-3, weight_decay: float = 1e-3,
                 grad_clip: float | None = None, schedule: str = "cosine", warmup: int = 0,
                 patience: int | None = 5, val_fraction: float = 0.1, seed: int = 0,
                 device: str = "auto", amp: bool = True):
        self.smoothness = smoothness
        self.map_lr = map_lr
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.grad_clip = grad_clip
        self.schedule = schedule
        self.warmup = warmup
        self.patience = patience
        self.val_fraction = val_fraction
        self.seed = seed
        self.device = device
        self.amp = amp

    def _build(self, n_tokens, n_features, n_vertices, *, grid=None, **_):
        if grid is None:
            side = int(round(math.sqrt(n_tokens)))
            if side * side != n_tokens:
                raise ShapeError(f"{n_tokens} tokens are not a square grid; pass grid=(rows, cols)")
            grid = (side, side)
        return FactorizedModule(n_tokens, n_features, n_vertices, grid=grid, seed=self.seed)

    def _optimizer(self, module):
        return torch.optim.AdamW(
            [{"params": [module.spatial], "lr": self.lr * self.map_lr, "weight_decay": 0.0},
             {"params": [module.weight, module.bias], "lr": self.lr}],
            lr=self.lr, weight_decay=self.weight_decay)

    def _extra_loss(self):
        lam = float(self.smoothness)
        if lam <= 0:
            return None
        return lambda m: lam * m.smoothness_penalty()

    def fit(self, X, Y, *, grid=None, **kw):
        return super().fit(X, Y, grid=grid, **kw)

    def maps(self) -> np.ndarray:
        self._check_fitted()
        with torch.no_grad():
            return self.module_.maps().cpu().numpy()
