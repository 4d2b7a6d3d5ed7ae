"""The transformer brain encoder written the way the published model is (Adeli, Sun &
Kriegeskorte 2025, built on DETR): the peer that ``benchmarks/encoder.py`` times brainattn
against. Not part of the package.

What makes it "the published way":

* DETR's ``TransformerDecoderLayer`` in its pre-norm form (``normalize_before=True``):
  self-attention among the queries, then cross-attention to the token grid, then the FFN (ReLU),
  each on ``torch.nn.MultiheadAttention`` in DETR's sequence-first layout ``(L, B, d)``; the
  decoder's target starts at zero and the learned query embedding enters as ``query_pos`` at
  every attention; the 2-D sine encoding is added to the keys; a final LayerNorm;
* the memory is a 1x1 projection (DETR's ``input_proj``) of the backbone tokens;
* readout: one ``Linear(d -> n_vertices)`` per hemisphere applied to *every* query of that
  hemisphere, then each vertex keeps the row of its own ROI query (one-hot mask and sum);
* eager PyTorch; the training loop runs under ``torch.autocast(bfloat16)`` on CUDA.

Shapes: tokens ``(B, L, C)`` float32 -> predictions ``(B, V)`` (z-scored units).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class DETRDecoderLayer(nn.Module):
    """DETR's decoder layer, ``forward_pre`` (pre-norm), sequence-first tensors."""

    def __init__(self, d: int, nhead: int, dim_ff: int, dropout: float, self_attn: bool = True):
        super().__init__()
        self.use_self_attn = self_attn
        self.self_attn = nn.MultiheadAttention(d, nhead, dropout=dropout)
        self.multihead_attn = nn.MultiheadAttention(d, nhead, dropout=dropout)
        self.linear1 = nn.Linear(d, dim_ff)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_ff, d)
        self.norm1 = nn.LayerNorm(d)
        self.norm2 = nn.LayerNorm(d)
        self.norm3 = nn.LayerNorm(d)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

    def forward(self, tgt, memory, pos, query_pos):
        if self.use_self_attn:
            tgt2 = self.norm1(tgt)
            q = k = tgt2 + query_pos
            tgt = tgt + self.dropout1(self.self_attn(q, k, value=tgt2)[0])
        tgt2 = self.norm2(tgt)
        tgt2 = self.multihead_attn(query=tgt2 + query_pos, key=memory + pos, value=memory)[0]
        tgt = tgt + self.dropout2(tgt2)
        tgt2 = self.norm3(tgt)
        tgt2 = self.linear2(self.dropout(torch.relu(self.linear1(tgt2))))
        return tgt + self.dropout3(tgt2)


class PublishedEncoder(nn.Module):
    """DETR-style brain encoder with per-hemisphere readouts (see module docstring).

    Parameters
    ----------
    n_features : backbone channels C.
    pos : (L, d) sine positional encoding of the token grid (float32).
    hemisphere : (V,) ``lh``/``rh`` per vertex; vertex_query : (V,) query index per vertex,
        queries of one hemisphere contiguous (as :func:`brainattn.encoders.assign_queries`
        numbers them).
    """

    def __init__(self, n_features, pos, hemisphere, vertex_query, *, d=768, nhead=16,
                 dim_ff=1024, dropout=0.1, self_attn=True, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        hemisphere = np.asarray(hemisphere).astype(str)
        vertex_query = np.asarray(vertex_query)
        nq = int(vertex_query.max()) + 1
        self.input_proj = nn.Linear(n_features, d)
        self.query_embed = nn.Embedding(nq, d)
        self.layer = DETRDecoderLayer(d, nhead, dim_ff, dropout, self_attn)
        self.norm = nn.LayerNorm(d)
        self.register_buffer("pos", pos[:, None, :].float(), persistent=False)  # (L, 1, d)
        self.hemis = []
        for h in dict.fromkeys(hemisphere.tolist()):
            vix = np.flatnonzero(hemisphere == h)
            qs = np.unique(vertex_query[vix])
            onehot = torch.zeros(len(qs), len(vix))
            onehot[torch.as_tensor(np.searchsorted(qs, vertex_query[vix])), torch.arange(len(vix))] = 1
            self.register_buffer(f"mask_{h}", onehot, persistent=False)
            self.register_buffer(f"vix_{h}", torch.as_tensor(vix), persistent=False)
            setattr(self, f"{h}_embed", nn.Linear(d, len(vix)))
            self.hemis.append((h, int(qs[0]), int(qs[-1]) + 1))
        self.n_vertices = len(hemisphere)

    def forward(self, x):
        memory = self.input_proj(x).transpose(0, 1)  # (L, B, d)
        B = x.shape[0]
        query_pos = self.query_embed.weight[:, None, :].expand(-1, B, -1)
        tgt = torch.zeros_like(query_pos)
        hs = self.norm(self.layer(tgt, memory, self.pos.to(memory.dtype), query_pos))
        hs = hs.transpose(0, 1)  # (B, Q, d)
        out = x.new_empty(B, self.n_vertices, dtype=torch.float32)
        for h, q0, q1 in self.hemis:
            pred = getattr(self, f"{h}_embed")(hs[:, q0:q1])  # (B, Qh, Vh): every query
            out[:, getattr(self, f"vix_{h}")] = (pred * getattr(self, f"mask_{h}")).sum(1).float()
        return out
