"""Factorized spatial x feature readout (Klindt et al. 2017; fwRF, St-Yves & Naselaris 2018).

Each vertex v has a spatial map over the token grid, ``m_v = softmax(s_v)`` (non-negative,
sums to 1, so it says *where* the vertex looks), and feature weights ``w_v`` (*what*)::

    pred[b, v] = sum_l m_v[l] * (x_norm[b, l] . w_v) + b_v

Two ways to fit (``method``):

* ``"fwrf"`` (default; St-Yves & Naselaris 2018): closed form. The map is a Gaussian over the
  token grid (or the uniform map), chosen per vertex from a grid of candidates (``n_centers``
  x ``n_centers`` centres x ``sizes``, in [-1, 1] image units, plus the uniform map). For every
  candidate the pooled features are z-scored and ridge-regressed onto all vertices at once (one
  SVD, every alpha in ``alphas``); each vertex keeps the (candidate, alpha) with the lowest
  validation error. Cost ~ candidates x (N C^2 + C N V).
* ``"sgd"`` (Klindt et al. 2017): free-form maps ``softmax(s_v)`` learnt jointly with the
  feature weights by the transformer's training loop (MSE on z-scored betas, AdamW), plus a
  smoothness penalty on the map logits (``smoothness``). Cost ~ epochs x N L C V.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from brainattn.encoders._base import EncoderModule, TorchEncoder
from brainattn.errors import ConfigError, ShapeError


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

    Parameters: ``method`` (``fwrf``: closed form over candidate Gaussian maps; ``sgd``:
    free-form maps trained by gradient descent), ``n_centers``, ``sizes``, ``alphas``,
    ``n_components`` (fwRF's candidate grid, ridge penalties and feature PCA size),
    ``smoothness`` (weight of the map smoothness penalty, ``sgd``), ``map_lr`` (learning rate
    multiplier of the map logits, ``sgd``), ``grid`` (token grid, default square), and the
    training parameters of :class:`~brainattn.encoders.transformer.TransformerBrainEncoder`.
    Learned: ``module_`` (``maps()`` gives (n_vertices, rows, cols)), ``history_``.
    """

    def __init__(self, method: str = "fwrf", n_centers: int = 8, sizes=(0.1, 0.2, 0.4),
                 alphas=(1.0, 10.0, 100.0, 1e3, 1e4), n_components: int = 64,
                 smoothness: float = 0.1, map_lr: float = 20.0, grid=None, epochs: int = 30,
                 batch_size: int = 64, lr: float = 3e-3, weight_decay: float = 1e-3,
                 grad_clip: float | None = None, schedule: str = "cosine", warmup: int = 0,
                 patience: int | None = 5, val_fraction: float = 0.1, seed: int = 0,
                 device: str = "auto", amp: bool = True):
        self.method = method
        self.n_centers = n_centers
        self.sizes = sizes
        self.alphas = alphas
        self.n_components = n_components
        self.smoothness = smoothness
        self.map_lr = map_lr
        self.grid = grid
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

    @staticmethod
    def _module_class():
        return FactorizedModule

    def _build(self, n_tokens, n_features, n_vertices):
        from brainattn.encoders.transformer import token_grid

        return FactorizedModule(n_tokens, n_features, n_vertices,
                                grid=token_grid(n_tokens, self.grid), seed=self.seed)

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

    def fit(self, X, Y, *, ckpt_dir=None, resume: bool = False, log=None,
            stop_after: int | None = None):
        """Fit (``sgd``: the shared training loop, see :meth:`TorchEncoder.fit
        <brainattn.encoders._base.TorchEncoder.fit>`; ``fwrf``: closed form on the same seeded
        train/validation split, no checkpoints)."""
        if self.method == "sgd":
            return super().fit(X, Y, ckpt_dir=ckpt_dir, resume=resume, log=log,
                               stop_after=stop_after)
        if self.method != "fwrf":
            raise ConfigError(f"method {self.method!r}: expected 'fwrf' or 'sgd'")
        import time

        from brainattn.encoders._base import feature_stats, split_images, stage_targets
        from brainattn.encoders.backbones import check_tokens

        t0 = time.perf_counter()
        check_tokens(X)
        dev = self._device()
        train_idx, val_idx = split_images(X.shape[0], self.val_fraction, self.seed)
        Yz, ymean, ystd = stage_targets(Y, X.shape[0], train_idx, dev)
        module = self._build(X.shape[1], X.shape[2], Yz.shape[1])
        fmean, fstd = feature_stats(X, train_idx, device=dev)
        module.set_normalisation(fmean, fstd, ymean, ystd)
        self.setup_seconds_ = time.perf_counter() - t0
        fit_fwrf(module, X, Yz, train_idx, val_idx, centers=self.n_centers, sizes=self.sizes,
                 alphas=self.alphas, n_components=self.n_components, device=dev, log=log)
        self.module_ = module.to(dev).eval()
        self.history_ = []
        self.best_epoch_ = -1
        self.n_features_in_ = int(X.shape[2])
        self.train_idx_, self.val_idx_ = train_idx, val_idx
        self.finished_ = True
        return self

    def maps(self) -> np.ndarray:
        self._check_fitted()
        with torch.no_grad():
            return self.module_.maps().cpu().numpy()


def fwrf_candidates(grid, n_centers: int, sizes) -> torch.Tensor:
    """Candidate maps (K, L): Gaussians on an ``n_centers`` x ``n_centers`` lattice of centres
    x ``sizes`` (sd, [-1, 1] image units) + the uniform map; each row sums to 1."""
    from brainattn.encoders.transformer import token_positions

    pos = token_positions(grid).double()  # (L, 2)
    c = (torch.arange(n_centers, dtype=torch.float64) + 0.5) / n_centers * 2 - 1
    cy, cx = torch.meshgrid(c, c, indexing="ij")
    centres = torch.stack([cx.flatten(), cy.flatten()], -1)  # (n^2, 2)
    maps = []
    for s in sizes:
        d2 = ((pos[None] - centres[:, None]) ** 2).sum(-1)  # (n^2, L)
        maps.append(torch.exp(-d2 / (2 * float(s) ** 2)))
    maps.append(torch.ones(1, pos.shape[0], dtype=torch.float64))
    m = torch.cat(maps, 0)
    return (m / m.sum(1, keepdim=True)).float()


@torch.no_grad()
def fit_fwrf(module: FactorizedModule, X, Yz, train_idx, val_idx, *, centers: int, sizes,
             alphas, n_components: int = 64, device="cpu", log=None, chunk: int = 256) -> None:
    """Closed-form fwRF fit of ``module`` (see the module docstring); ``Yz`` z-scored betas.

    Token features are z-scored and projected on their first ``n_components`` principal
    directions (training tokens) before pooling, which bounds the cost per candidate map; the
    fitted weights are mapped back to the full feature space of ``module``.
    """
    from brainattn.utils import progress

    dev = torch.device(device)
    cand = fwrf_candidates(module.grid, centers, sizes).to(dev)  # (K, L)
    fmean = module.feat_mean.to(dev)
    fstd = module.feat_std.to(dev)
    idx = np.concatenate([train_idx, val_idx])
    n_tr = len(train_idx)
    C = X.shape[2]

    def tokens(rows):
        x = torch.from_numpy(np.asarray(X[np.sort(rows)])).to(dev).float()
        return (x - fmean) / fstd

    # channel PCA from (up to) 256 training images' tokens
    sub = np.sort(train_idx)[:: max(1, n_tr // 256)]
    t = tokens(sub).reshape(-1, C)
    evals, evecs = torch.linalg.eigh(t.T @ t / len(t))
    k_c = min(int(n_components), C)
    Pc = evecs[:, -k_c:].flip(1)  # (C, c)
    # reduced tokens of the train+val images, in ``idx`` order: (N, L, c)
    R = torch.empty(len(idx), X.shape[1], k_c, device=dev)
    order = np.argsort(idx)
    for s in range(0, len(idx), chunk):
        rows = order[s : s + chunk]
        R[torch.as_tensor(rows, device=dev)] = tokens(idx[rows]) @ Pc
    Y = torch.as_tensor(Yz, device=dev)[torch.as_tensor(idx, device=dev)]
    Ytr, Yva = Y[:n_tr], Y[n_tr:]
    V = Y.shape[1]
    alphas = torch.as_tensor(list(alphas), dtype=torch.float32, device=dev)
    best = torch.full((V,), float("inf"), device=dev)
    best_k = torch.zeros(V, dtype=torch.long, device=dev)
    best_a = torch.zeros(V, dtype=torch.long, device=dev)

    def pooled(k):
        Z = torch.einsum("l,nlc->nc", cand[k], R)
        mu = Z[:n_tr].mean(0)
        sd = Z[:n_tr].std(0) + 1e-6
        Z = (Z - mu) / sd
        U, S, Vt = torch.linalg.svd(Z[:n_tr], full_matrices=False)
        return Z, mu, sd, U, S, Vt

    # pass 1: validation error of every (candidate, alpha) for every vertex; keep the argmin
    for k in progress(range(cand.shape[0]), desc="fwRF candidate maps"):
        Z, _, _, U, S, Vt = pooled(k)
        UtY = U.T @ Ytr  # (c, V); Ytr has zero mean over the training rows
        ZvV = Z[n_tr:] @ Vt.T  # (Nval, c)
        for ai, a in enumerate(alphas):
            d = S / (S * S + a)
            err = ((ZvV * d) @ UtY - Yva).pow(2).mean(0)
            sel = err < best
            best = torch.where(sel, err, best)
            best_k = torch.where(sel, k, best_k)
            best_a = torch.where(sel, ai, best_a)
    # pass 2: weights of the winners, one candidate at a time
    W = torch.zeros(V, k_c, device=dev)
    mu_k = torch.zeros(V, k_c, device=dev)
    sd_k = torch.ones(V, k_c, device=dev)
    for k in torch.unique(best_k).tolist():
        cols = torch.nonzero(best_k == k).flatten()
        _, mu, sd, U, S, Vt = pooled(k)
        d = S[None, :] / (S[None, :] ** 2 + alphas[best_a[cols]][:, None])  # (n, c)
        W[cols] = (d * (U.T @ Ytr[:, cols]).T) @ Vt
        mu_k[cols] = mu
        sd_k[cols] = sd
    if log:
        log(f"fwRF: {cand.shape[0]} candidate maps x {len(alphas)} alphas, {k_c} feature "
            f"components; median validation MSE {best.median():.3f} (z-scored betas)")
    # module space: u = m @ x_norm (C), reduced u @ Pc; the fit used (u Pc - mu_k) / sd_k . W
    module.spatial.copy_(torch.log(cand[best_k] + 1e-12).cpu())
    module.weight.copy_(((W / sd_k) @ Pc.T).cpu())
    module.bias.copy_((-(mu_k / sd_k) * W).sum(1).cpu())
