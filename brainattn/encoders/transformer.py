"""Transformer brain encoder (Adeli, Sun & Kriegeskorte 2025): learned queries cross-attend
to a frozen backbone's token grid; each vertex reads out its own query's output.

Architecture (DETR-style decoder, no encoder layers)::

    memory  = LayerNorm(Linear(z-scored tokens))                (B, L, d)
    keys    = memory + sine-2D-PE(grid)      values = memory
    tgt     = 0;  query_pos = learned query embedding           (1, Q, d), broadcast over B
    per layer (pre-norm):  tgt += Dropout(Wo . attention(Wq (LN(tgt) + query_pos), Wk keys,
                                                      Wv values, + optional Gaussian pRF bias))
                           tgt += Dropout(FFN(LN(tgt)))
    out     = LN(tgt)                                           (B, Q, d)
    pred[v] = out[query(v)] . w_v + b_v                          (B, V)

As in DETR, the learned query embedding only says *where to look* (it enters each layer's
attention queries) and the residual stream starts at zero, with zero-initialised projection
biases: so at initialisation everything the readout sees comes from the image. Starting the
stream at the learned queries instead (an earlier version) buries the image signal -- an average
over ~1,000 tokens is ~30x smaller than the constant part -- and at Algonauts size (961 tokens x
768 features, width 768) that model did not learn at all (validation r 0.005 against 0.63 for
the published decoder; benchmarks/RESULTS.md, section scale).

All attention goes through :func:`brainattn.kernels.attention` (Triton on CUDA); the pRF prior
``-||x - mu||^2 / (2 sigma^2)`` per head and query enters as its rank-4 factors
(:func:`brainattn.kernels.prf_bias_factors`), never as a dense (Q, L) matrix. Readout: one
weight vector per vertex applied to its query's output -- the same function as the published
per-hemisphere ``Linear(d -> n_vertices)`` with each vertex taking its own ROI query's row; in
``vertices`` mode every vertex has its own query and its own readout vector.

Query modes (:func:`assign_queries`): ``rois`` -- one query per ROI per hemisphere (a vertex
belongs to the first listed ROI family that labels it) plus one ``other`` query per hemisphere
for unlabelled vertices; ``hemis`` -- one query per hemisphere; ``vertices`` -- one per vertex;
``hybrid`` -- one per vertex in the retinotopic ROIs (``prf-visualrois``), one per ROI elsewhere.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from brainattn.encoders._base import EncoderModule, TorchEncoder
from brainattn.errors import ConfigError, DataError, ShapeError

QUERY_MODES = ("rois", "hemis", "vertices", "hybrid")


def assign_queries(mode: str, hemisphere, roi_labels: dict | None = None,
                   families: list[str] | None = None, unknown: str = "Unknown",
                   vertex_families=("prf-visualrois",)):
    """Which query each vertex reads from.

    Parameters
    ----------
    mode : ``rois`` | ``hemis`` | ``vertices`` | ``hybrid`` (one query per vertex for the
        vertices of ``vertex_families`` -- retinotopic ROIs, whose vertices each look somewhere
        else -- and one query per ROI elsewhere). Per-vertex queries are named
        ``<hemi>:<roi>#<vertex>``.
    hemisphere : (n_vertices,) str, ``lh``/``rh``.
    roi_labels : ``{family: (n_vertices,) str labels}``; needed for ``rois``.
    families : families to use, in priority order (default: all in ``roi_labels`` except
        ``streams``); a family not in ``roi_labels`` is an error.

    Returns
    -------
    query_names : list of str, e.g. ``lh:FFA-1``, ``lh:other``; vertex_query : (n_vertices,) int.
    """
    hemisphere = np.asarray(hemisphere).astype(str)
    v = hemisphere.shape[0]
    if mode not in QUERY_MODES:
        raise ConfigError(f"--queries {mode!r}: expected one of {', '.join(QUERY_MODES)}")
    hemis = list(dict.fromkeys(hemisphere.tolist()))
    if mode == "vertices" and not roi_labels:
        return [f"{h}:all#{i}" for i, h in enumerate(hemisphere)], np.arange(v)
    if mode == "hemis":
        names = [f"{h}:all" for h in hemis]
        return names, np.array([hemis.index(h) for h in hemisphere])
    roi_labels = roi_labels or {}
    if families is None:
        families = [f for f in roi_labels if f != "streams"]
    for f in families:
        if f not in roi_labels:
            raise DataError(
                f"ROI family {f!r} is not in the data set (it has: {', '.join(roi_labels) or 'none'})"
            )
    label = np.full(v, "other", dtype=object)
    for f in reversed(families):
        lab = np.asarray(roi_labels[f]).astype(str)
        if lab.shape != (v,):
            raise ShapeError(f"roi_{f} has {lab.shape[0]} labels for {v} vertices")
        known = lab != unknown
        label[known] = lab[known]
    keys = [f"{h}:{lab}" for h, lab in zip(hemisphere, label, strict=True)]
    if mode in ("vertices", "hybrid"):
        own = np.ones(v, bool) if mode == "vertices" else np.zeros(v, bool)
        for f in vertex_families if mode == "hybrid" else ():
            if f in roi_labels:
                own |= np.asarray(roi_labels[f]).astype(str) != unknown
        keys = [f"{k}#{i}" if own[i] else k for i, k in enumerate(keys)]
    names = []
    for h in hemis:  # ROIs in first-seen order per hemisphere, ``other`` last
        rois = [k for k in dict.fromkeys(keys) if k.startswith(f"{h}:") and k != f"{h}:other"]
        names += rois + ([f"{h}:other"] if f"{h}:other" in keys else [])
    index = {n: i for i, n in enumerate(names)}
    return names, np.array([index[k] for k in keys])


def sine_position_encoding(grid, d: int, temperature: float = 10000.0) -> torch.Tensor:
    """DETR's 2-D sine encoding of a (rows, cols) token grid: (rows*cols, d), d divisible by 4.

    Row and column coordinates are normalised to (0, 2*pi]; each uses d/2 channels of
    interleaved sin/cos at geometrically spaced frequencies.
    """
    if d % 4:
        raise ConfigError(f"width {d}: must be divisible by 4 for the 2-D sine encoding")
    rows, cols = grid
    y = (torch.arange(rows, dtype=torch.float64) + 1) / rows * 2 * math.pi
    x = (torch.arange(cols, dtype=torch.float64) + 1) / cols * 2 * math.pi
    npf = d // 2
    dim_t = temperature ** (2 * (torch.arange(npf, dtype=torch.float64) // 2) / npf)
    px = x[:, None] / dim_t
    py = y[:, None] / dim_t
    px = torch.stack([px[:, 0::2].sin(), px[:, 1::2].cos()], -1).flatten(1)
    py = torch.stack([py[:, 0::2].sin(), py[:, 1::2].cos()], -1).flatten(1)
    pos = torch.cat([py[:, None, :].expand(rows, cols, npf), px[None, :, :].expand(rows, cols, npf)], -1)
    return pos.reshape(rows * cols, d).float()


def token_positions(grid) -> torch.Tensor:
    """Token centres in [-1, 1]^2, (rows*cols, 2) as (x, y), row-major."""
    rows, cols = grid
    y = (torch.arange(rows) + 0.5) / rows * 2 - 1
    x = (torch.arange(cols) + 0.5) / cols * 2 - 1
    yy, xx = torch.meshgrid(y, x, indexing="ij")
    return torch.stack([xx.flatten(), yy.flatten()], -1).float()


#: parameter names of the learned pRF prior (their own learning rate: ``prf_lr``)
PRF_PARAMS = ("prf_mu", "prf_log_sigma")


class CrossAttentionLayer(nn.Module):
    """Pre-norm decoder layer: cross-attention (brainattn kernel) then FFN."""

    def __init__(self, d: int, heads: int, ffn: int, dropout: float, n_queries: int,
                 prf_bias: bool, seed: int = 0):
        super().__init__()
        if d % heads:
            raise ConfigError(f"width {d} must be divisible by heads {heads}")
        self.d, self.h = d, heads
        self.norm_q = nn.LayerNorm(d)
        self.wq = nn.Linear(d, d)
        self.wk = nn.Linear(d, d)
        self.wv = nn.Linear(d, d)
        self.wo = nn.Linear(d, d)
        self.norm_ff = nn.LayerNorm(d)
        self.ffn = nn.Sequential(nn.Linear(d, ffn), nn.GELU(), nn.Dropout(dropout), nn.Linear(ffn, d))
        self.drop = nn.Dropout(dropout)
        for lin in (self.wq, self.wk, self.wv, self.wo):  # as nn.MultiheadAttention
            nn.init.zeros_(lin.bias)
        self.prf_bias = prf_bias
        if prf_bias:
            g = torch.Generator().manual_seed(seed + 11)
            self.prf_mu = nn.Parameter((torch.rand(heads, n_queries, 2, generator=g) * 2 - 1) * 0.7)
            self.prf_log_sigma = nn.Parameter(torch.full((heads, n_queries), math.log(0.5)))

    def _qkv(self, tgt, keys, values, query_pos):
        B = keys.shape[0]
        L = keys.shape[1]
        Q = tgt.shape[1]
        hd = self.d // self.h
        qin = self.norm_q(tgt) + query_pos
        q = self.wq(qin).view(qin.shape[0], Q, self.h, hd).transpose(1, 2)
        k = self.wk(keys).view(B, L, self.h, hd).transpose(1, 2)
        v = self.wv(values).view(B, L, self.h, hd).transpose(1, 2)
        return q, k, v

    def _bias(self, positions):
        if not self.prf_bias:
            return None, None
        from brainattn.kernels import prf_bias_factors

        sigma = self.prf_log_sigma.float().exp().clamp_min(0.03)
        # sigma > 0 by construction: no validation, whose GPU read-back would stop graph capture
        return prf_bias_factors(self.prf_mu.float(), sigma, positions, validate=False)

    def forward(self, tgt, keys, values, positions, query_pos, need_weights: bool = False):
        """``tgt`` (1 or B, Q, d) residual stream, ``query_pos`` (1, Q, d) learned query
        embedding, ``keys``/``values`` (B, L, d), ``positions`` (L, 2) token centres."""
        from brainattn.kernels import attention, attention_weights

        q, k, v = self._qkv(tgt, keys, values, query_pos)
        q_bias, k_bias = self._bias(positions)
        if q.dtype != torch.float32 and q_bias is not None:
            q, k, v = q, k.to(q.dtype), v.to(q.dtype)
        o = attention(q.contiguous(), k.contiguous(), v.contiguous(), q_bias=q_bias, k_bias=k_bias)
        B = k.shape[0]
        o = o.transpose(1, 2).reshape(B, -1, self.d)
        tgt = tgt + self.drop(self.wo(o))
        tgt = tgt + self.drop(self.ffn(self.norm_ff(tgt)))
        w = None
        if need_weights:
            w = attention_weights(q.float(), k.float(), q_bias=q_bias, k_bias=k_bias).mean(1)
        return tgt, w


class TransformerModule(EncoderModule):
    """The torch module behind :class:`TransformerBrainEncoder` (see the module docstring)."""

    def __init__(self, n_tokens, n_features, n_vertices, *, vertex_query, grid, width=768,
                 heads=16, ffn=1024, layers=1, dropout=0.1, prf_bias=False, seed=0,
                 query_names=None):
        vertex_query = np.asarray(vertex_query, dtype=np.int64)
        super().__init__(n_tokens, n_features, n_vertices, vertex_query=vertex_query,
                         grid=list(grid), width=width, heads=heads, ffn=ffn, layers=layers,
                         dropout=dropout, prf_bias=prf_bias, seed=seed, query_names=query_names)
        if vertex_query.shape != (n_vertices,):
            raise ShapeError(f"vertex_query has {vertex_query.shape[0]} entries for {n_vertices} vertices")
        if grid[0] * grid[1] != n_tokens:
            raise ShapeError(f"grid {tuple(grid)} does not hold {n_tokens} tokens")
        nq = int(vertex_query.max()) + 1
        self.n_queries = nq
        self.grid = tuple(grid)
        self.query_names = list(query_names) if query_names is not None else [f"q{i}" for i in range(nq)]
        g = torch.Generator().manual_seed(seed)
        self.input_proj = nn.Linear(n_features, width)
        self.input_norm = nn.LayerNorm(width)
        # DETR's query embedding (nn.Embedding's N(0, 1) init); the stream itself starts at 0
        self.query_pos = nn.Parameter(torch.randn(1, nq, width, generator=g))
        self.layers = nn.ModuleList(CrossAttentionLayer(width, heads, ffn, dropout, nq, prf_bias, seed)
                                    for _ in range(layers))
        self.out_norm = nn.LayerNorm(width)
        # nn.Linear's default init, U(-1/sqrt(width), 1/sqrt(width)), as the published readout:
        # 10x smaller weights (an earlier version) did not learn at all at Algonauts size with
        # AdamW at lr 5e-4 (ablation on an H200, benchmarks/RESULTS.md, section scale)
        self.readout_w = nn.Parameter((torch.rand(n_vertices, width, generator=g) * 2 - 1)
                                      * width**-0.5)
        self.readout_b = nn.Parameter(torch.zeros(n_vertices))
        self.register_buffer("pos", sine_position_encoding(grid, width), persistent=False)
        self.register_buffer("positions", token_positions(grid), persistent=False)
        self.register_buffer("vertex_query", torch.as_tensor(vertex_query), persistent=False)
        self.per_vertex = nq == n_vertices and bool((vertex_query == np.arange(n_vertices)).all())
        # readout plan: queries owning one vertex are read out together (one gather + dot);
        # queries owning several are read out by one small matmul each
        counts = np.bincount(vertex_query, minlength=nq)
        single = counts[vertex_query] == 1
        multi_v = np.flatnonzero(~single)
        order = multi_v[np.argsort(vertex_query[multi_v], kind="stable")]
        self._counts = [int(c) for c in counts if c > 1]
        self._multi_q = [int(q) for q in np.flatnonzero(counts > 1)]
        sv = np.flatnonzero(single)
        self.register_buffer("_single_v", torch.as_tensor(sv), persistent=False)
        self.register_buffer("_single_q", torch.as_tensor(vertex_query[sv]), persistent=False)
        self.register_buffer("_order", torch.as_tensor(order), persistent=False)
        self.register_buffer("_inverse", torch.as_tensor(np.argsort(np.concatenate([order, sv]))),
                             persistent=False)

    def decode(self, x, need_weights: bool = False):
        """Tokens (B, L, C) -> query outputs (B, Q, width) [, last layer's head-mean attention
        (B, Q, L)]."""
        mem = self.input_norm(self.input_proj(self.normalise(x)))
        keys = mem + self.pos.to(mem.dtype)
        qpos = self.query_pos.to(mem.dtype)
        tgt = torch.zeros_like(qpos)
        w = None
        for i, layer in enumerate(self.layers):
            tgt, w = layer(tgt, keys, mem, self.positions, qpos,
                           need_weights=need_weights and i == len(self.layers) - 1)
        if tgt.shape[0] != x.shape[0]:
            tgt = tgt.expand(x.shape[0], -1, -1)
        return self.out_norm(tgt), w

    #: ``None``: all-queries-then-gather readout on CUDA when there are at most
    #: ``DENSE_READOUT_MAX_QUERIES`` queries, grouped readout elsewhere; ``True``/``False`` force it.
    dense_readout: bool | None = None
    DENSE_READOUT_MAX_QUERIES = 256

    def readout(self, out):
        if self.per_vertex:
            return (out * self.readout_w).sum(-1) + self.readout_b
        dense = self.dense_readout
        if dense is None:
            dense = out.is_cuda and out.shape[1] <= self.DENSE_READOUT_MAX_QUERIES
        if dense:
            # On a GPU two kernels (every query against every vertex's weights, then each
            # vertex's own query) beat ~2 small matmuls per query, whose launches bounded the
            # step at Algonauts size (RESULTS.md, section scale); costs n_queries x the flops.
            full = out @ self.readout_w.to(out.dtype).T  # (B, Q, V)
            idx = self.vertex_query.view(1, 1, -1).expand(out.shape[0], 1, -1)
            return full.gather(1, idx).squeeze(1) + self.readout_b.to(out.dtype)
        # one gather of the weights into query order, one small matmul per query, one
        # scatter back: O(V * width) memory, no per-query index_put of the whole output
        parts = []
        if len(self._order):
            w = self.readout_w[self._order].to(out.dtype)
            parts += [out[:, qi] @ wq.T
                      for qi, wq in zip(self._multi_q, torch.split(w, self._counts), strict=True)]
        if len(self._single_v):
            parts.append((out[:, self._single_q] * self.readout_w[self._single_v].to(out.dtype))
                         .sum(-1))
        return torch.cat(parts, 1)[:, self._inverse] + self.readout_b.to(out.dtype)

    def forward(self, x):
        out, _ = self.decode(x)
        return self.readout(out)


@dataclass(frozen=True, eq=False)
class QueryAssignment:
    """Which query each vertex reads from, fixed in advance: ``names`` (n_queries,) str and
    ``vertex_query`` (n_vertices,) int in ``0..n_queries-1``. Pass it as
    ``TransformerBrainEncoder(queries=...)``; :meth:`from_labels` builds one from a query mode
    and ROI labels (:func:`assign_queries`)."""

    names: tuple
    vertex_query: np.ndarray

    def __post_init__(self):
        vq = np.asarray(self.vertex_query)
        if vq.ndim != 1 or vq.dtype.kind not in "iu":
            raise ShapeError(f"vertex_query: expected a 1-D int array, got {vq.dtype} {vq.shape}")
        if len(vq) and (vq.min() < 0 or vq.max() >= len(self.names)):
            raise ShapeError(f"vertex_query: values must lie in 0..{len(self.names) - 1} "
                             f"(one per query name)")
        object.__setattr__(self, "names", tuple(str(n) for n in self.names))
        object.__setattr__(self, "vertex_query", vq.astype(np.int64))

    @classmethod
    def from_labels(cls, mode: str, hemisphere, roi_labels=None, families=None):
        names, vq = assign_queries(mode, hemisphere, roi_labels, families)
        return cls(tuple(names), vq)

    def digest(self) -> str:
        import hashlib

        h = hashlib.sha1("\n".join(self.names).encode())
        h.update(np.ascontiguousarray(self.vertex_query).tobytes())
        return f"queries:{h.hexdigest()[:16]}:{len(self.names)}x{len(self.vertex_query)}"

    def __repr__(self) -> str:
        return f"QueryAssignment({len(self.names)} queries, {len(self.vertex_query)} vertices)"


#: the documented CPU preset of ``brainattn fit --model transformer --preset cpu`` (and of the
#: demo): a 128-wide decoder that meets the science targets on the synthetic cortex in minutes
#: on 2 cores (benchmarks/RESULTS.md)
CPU_PRESET = {"width": 128, "heads": 8, "ffn": 256, "prf_bias": True, "epochs": 15,
              "batch_size": 32, "lr": 0.002}


class TransformerBrainEncoder(TorchEncoder):
    """Transformer brain encoder, scikit-learn style.

    Parameters
    ----------
    queries : how vertices are assigned to queries: a mode, ``rois`` (one query per ROI per
        hemisphere plus one ``other`` per hemisphere), ``hemis``, ``vertices`` or ``hybrid``
        (see :func:`assign_queries`), applied to ``hemisphere`` and ``roi_labels``; or a
        :class:`QueryAssignment`. Without labels ``rois``/``hemis`` give one query per
        hemisphere present (one in all if ``hemisphere`` is None).
    hemisphere : (n_vertices,) ``lh``/``rh`` per vertex, or None (one hemisphere).
    roi_labels : ``{family: (n_vertices,) ROI name}`` (:func:`brainattn.data.roi_labels`).
    roi_families : families used for the queries, in priority order (default: all but
        ``streams``).
    grid : (rows, cols) of the token grid (default: the square root of the token count).
    width, heads, ffn, layers, dropout : decoder size (defaults as published: 768, 16, 1024, 1,
        0.1); :data:`CPU_PRESET` is the small size for machines without CUDA.
    prf_bias : learn a Gaussian pRF prior (centre, size) per head and query.
    prf_lr : learning rate of the pRF prior's centres and log sizes as a multiple of ``lr``
        (no weight decay on them). Adam moves a parameter by about its learning rate per step,
        so at ``lr`` itself a prior crosses at most ``steps * lr`` grid units (the grid is
        [-1, 1]^2): ~0.4 in a CPU-preset fit on 1,000 images, where the heads of an early-visual
        query then stayed where they started, 1-3 of 8 inside the ROI's visual field, at
        ~3 tokens' size against pRFs of under one token (benchmarks/RESULTS.md, section
        evc_seeds). 5x (the default) gives a centre the travel to cross the grid in such a fit;
        10x was 1-2 points better in early visual cortex, but its category queries' attention
        peaked on their objects less often (CI-size cortex: 79.3 vs 81.2 % of pairs).
    epochs, batch_size, lr, weight_decay, grad_clip, schedule ('cosine'|'step'|'constant'),
    warmup (epochs), patience (early stopping on validation mean r; None = off),
    val_fraction, seed, device ('auto'), amp (bf16 autocast on CUDA), cuda_graph (replay the
    training step as a CUDA graph: None = on a single CUDA device, else eager; True on a CPU or
    under DDP is an error).

    Learned: ``module_``, ``history_``, ``best_epoch_``, ``query_names_``, ``vertex_query_``
    and those of :class:`~brainattn.encoders._base.TorchEncoder`.
    """

    def __init__(self, queries="rois", hemisphere=None, roi_labels=None, roi_families=None,
                 grid=None, width: int = 768, heads: int = 16, ffn: int = 1024,
                 layers: int = 1, dropout: float = 0.1, prf_bias: bool = False,
                 prf_lr: float = 5.0, epochs: int = 15,
                 batch_size: int = 16, lr: float = 5e-4, weight_decay: float = 1e-4,
                 grad_clip: float | None = 0.1, schedule: str = "cosine", warmup: int = 0,
                 patience: int | None = 5, val_fraction: float = 0.1, seed: int = 0,
                 device: str = "auto", amp: bool = True, cuda_graph: bool | None = None):
        self.queries = queries
        self.hemisphere = hemisphere
        self.roi_labels = roi_labels
        self.roi_families = roi_families
        self.grid = grid
        self.width = width
        self.heads = heads
        self.ffn = ffn
        self.layers = layers
        self.dropout = dropout
        self.prf_bias = prf_bias
        self.prf_lr = prf_lr
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
        self.cuda_graph = cuda_graph

    def query_assignment(self, n_vertices: int) -> QueryAssignment:
        """The :class:`QueryAssignment` these parameters give for ``n_vertices`` vertices."""
        if isinstance(self.queries, QueryAssignment):
            qa = self.queries
        else:
            hemi = (np.full(n_vertices, "lh") if self.hemisphere is None
                    else np.asarray(self.hemisphere).astype(str))
            if hemi.shape != (n_vertices,):
                raise ShapeError(f"hemisphere has {hemi.shape[0]} entries for {n_vertices} "
                                 "vertices")
            families = self.roi_families
            if isinstance(families, str):
                families = [f for f in families.split(",") if f]
            qa = QueryAssignment.from_labels(self.queries, hemi, self.roi_labels, families)
        if len(qa.vertex_query) != n_vertices:
            raise ShapeError(f"queries assign {len(qa.vertex_query)} vertices; the betas hold "
                             f"{n_vertices}")
        return qa

    @staticmethod
    def _module_class():
        return TransformerModule

    def _build(self, n_tokens, n_features, n_vertices):
        qa = self.query_assignment(n_vertices)
        return TransformerModule(n_tokens, n_features, n_vertices, vertex_query=qa.vertex_query,
                                 grid=token_grid(n_tokens, self.grid), width=self.width,
                                 heads=self.heads, ffn=self.ffn, layers=self.layers,
                                 dropout=self.dropout, prf_bias=self.prf_bias, seed=self.seed,
                                 query_names=list(qa.names))

    def _param_groups(self, module):
        if float(self.prf_lr) <= 0:
            raise ConfigError(f"prf_lr {self.prf_lr!r}: expected a positive multiple of lr")
        prior = [p for n, p in module.named_parameters() if n.rsplit(".", 1)[-1] in PRF_PARAMS]
        if not prior:
            return module.parameters()
        rest = [p for n, p in module.named_parameters() if n.rsplit(".", 1)[-1] not in PRF_PARAMS]
        # weight decay would pull the centres to the image centre and the sizes to half the
        # image, a prior with no basis: none on them
        return [{"params": rest},
                {"params": prior, "lr": self.lr * float(self.prf_lr), "weight_decay": 0.0}]

    def _before_training(self, module, train_loader, device, log) -> None:
        if device.type == "cpu":
            cpu_time_notice(self, module, train_loader, log)

    def fit(self, X, Y, **kw):
        """Fit (see :meth:`TorchEncoder.fit <brainattn.encoders._base.TorchEncoder.fit>`)."""
        super().fit(X, Y, **kw)
        self.query_names_ = self.module_.query_names
        self.vertex_query_ = self.module_.vertex_query.cpu().numpy()
        return self

    @torch.no_grad()
    def attention_maps(self, X, *, batch_size: int = 32) -> np.ndarray:
        """Head-mean attention of every query over the token grid, last decoder layer:
        float32 (n_images, n_queries, rows, cols), each map sums to 1."""
        from brainattn.encoders.backbones import check_tokens

        self._check_fitted()
        check_tokens(X)
        m = self.module_.eval()
        dev = next(m.parameters()).device
        out = []
        for s in range(0, X.shape[0], batch_size):
            x = torch.as_tensor(np.asarray(X[s : s + batch_size], dtype=np.float32), device=dev)
            _, w = m.decode(x, need_weights=True)
            out.append(w.float().cpu().numpy())
        a = np.concatenate(out, 0)
        return a.reshape(a.shape[0], a.shape[1], *m.grid)

    @classmethod
    def load(cls, folder, device: str = "cpu"):
        est = super().load(folder, device)
        est.query_names_ = est.module_.query_names
        est.vertex_query_ = est.module_.vertex_query.cpu().numpy()
        # the saved assignment stands in for the labels it came from: a refit of the loaded
        # estimator (clone) builds the same queries
        est.queries = QueryAssignment(tuple(est.query_names_), est.vertex_query_)
        est.hemisphere = est.roi_labels = est.roi_families = None
        return est


def token_grid(n_tokens: int, grid=None) -> tuple[int, int]:
    """``grid`` as (rows, cols), checked against ``n_tokens``; default the square grid."""
    if grid is None:
        side = int(round(math.sqrt(n_tokens)))
        if side * side != n_tokens:
            raise ShapeError(f"{n_tokens} tokens are not a square grid; pass grid=(rows, cols)")
        return (side, side)
    rows, cols = (int(g) for g in grid)
    if rows * cols != n_tokens:
        raise ShapeError(f"grid {(rows, cols)} does not hold {n_tokens} tokens")
    return (rows, cols)


def cpu_time_notice(est, module, loader, log, *, threshold_s: float = 300.0) -> float:
    """Time one training step on the CPU (forward + backward on one batch, nothing updated,
    random state restored) and, when the whole fit would take longer than ``threshold_s``,
    say how long before it starts and which preset is small. Returns the estimate (s)."""
    import warnings

    x, y = next(iter(loader))
    rng = torch.get_rng_state()
    module.train()
    t0 = time.perf_counter()
    loss = torch.mean((module(x).float() - y) ** 2)
    loss.backward()
    step_s = time.perf_counter() - t0
    module.zero_grad(set_to_none=True)
    torch.set_rng_state(rng)
    total = step_s * len(loader) * int(est.epochs)
    if total > threshold_s:
        about = f"{total:.0f} s" if total < 120 else f"{total / 60:.0f} min"
        msg = (f"on the CPU this fit takes about {about} ({est.epochs} epochs x "
               f"{len(loader)} steps x {step_s:.2f} s a step, measured); a CUDA GPU takes seconds "
               "per epoch. For a small model use `brainattn fit --preset cpu` "
               "(TransformerBrainEncoder(**brainattn.encoders.transformer.CPU_PRESET): width "
               f"{CPU_PRESET['width']}, {CPU_PRESET['heads']} heads, ffn {CPU_PRESET['ffn']})")
        log(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=3)
    return total

