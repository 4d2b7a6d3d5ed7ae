"""The networks of the semiotics experiment: the agents' autoencoder and the classifier.

:class:`CosMinusX` (the published activation ``cos(x) - x``), :class:`StridedConv` (a 3x3
stride-2 convolution applied as one dense matrix product on small images), :class:`ConvEncoder`
("observed", E), :class:`ConvDecoder` ("seen", D), :func:`build_autoencoder` and :class:`MLP`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from brainattn.errors import ShapeError

_FUSED: dict[str, object] = {}  # the Triton kernel of cos(x) - x, built on first use


def _fused_kernel():
    """The Triton kernel ``y = cos(x) - x`` (None where Triton is missing), imported once."""
    if "kernel" not in _FUSED:
        try:
            from brainattn.theory.semiotics._fused import cos_minus_x
        except ImportError:
            cos_minus_x = None
        _FUSED["kernel"] = cos_minus_x
    return _FUSED["kernel"]


def fused_cos_minus_x(x: torch.Tensor) -> torch.Tensor:
    """``cos(x) - x`` in one pass over memory (a Triton kernel), same layout as ``x``.

    For the stochastic loop's bfloat16 passes on CUDA, where the activations of 65,536 copies
    are gigabytes: PyTorch's ``cos`` then ``-`` read and write them three times, this once
    (and rounds once, from float32). ``x`` must be contiguous or channels-last contiguous (the
    kernel walks the storage, so the output takes ``x``'s strides).
    """
    kernel = _fused_kernel()
    if kernel is None:
        raise RuntimeError("fused_cos_minus_x needs Triton")
    if not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)):
        raise ShapeError("fused_cos_minus_x: x must be contiguous or channels-last contiguous")
    y = torch.empty_like(x)  # preserve_format: a dense x gives y its strides
    n = x.numel()
    block = 4096
    kernel[((n + block - 1) // block,)](x, y, n, BLOCK=block)
    return y


class CosMinusX(nn.Module):
    """The activation ``cos(x) - x`` of the published autoencoder (elementwise, any shape).

    ``fused = True`` (set on the bfloat16 copies that :func:`~brainattn.theory.semiotics.loops.
    stochastic_loop` makes on CUDA) computes it with :func:`fused_cos_minus_x` when no gradient
    is needed, ``x`` is a dense CUDA tensor and Triton is there; otherwise PyTorch's two
    operations.
    """

    fused = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (self.fused and x.is_cuda and not torch.is_grad_enabled()
                and (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last))
                and _fused_kernel() is not None):
            return fused_cos_minus_x(x)
        return torch.cos(x) - x


def _layer_sizes(size: int) -> list[int]:
    """Spatial sizes through stride-2, padding-1, 3x3 convolutions down to 1: 8 -> [8, 4, 2, 1]."""
    sizes = [int(size)]
    while sizes[-1] > 1:
        sizes.append((sizes[-1] + 1) // 2)
    return sizes


def _dense_index(transposed: bool, c_in: int, h_in: int, c_out: int, h_out: int):
    """Where each 3x3 stride-2 padding-1 kernel weight sits in the dense operator matrix.

    Returns ``table`` ``(c_out*h_out**2 * c_in*h_in**2,)``: with ``w0`` the flattened weight
    followed by one 0, ``w0[table]`` is the matrix ``M`` ``(c_out*h_out**2, c_in*h_in**2)`` with
    ``out.flatten(1) = in.flatten(1) @ M.T`` (one gather: cheap, and batched by ``vmap``).
    The convolution weight is ``(c_out, c_in, 3, 3)``, the transposed one ``(c_in, c_out, 3, 3)``
    (PyTorch layouts). Each (output, input) pair meets at most one kernel tap (stride 2 > 3 // 2),
    so no entry gets two taps.
    """
    ky, kx = np.meshgrid(np.arange(3), np.arange(3), indexing="ij")
    ky, kx = ky.ravel(), kx.ravel()
    if transposed:  # input (ci, iy, ix) -> output (co, 2*iy - 1 + ky, 2*ix - 1 + kx)
        ci, co, iy, ix, k = np.meshgrid(np.arange(c_in), np.arange(c_out), np.arange(h_in),
                                        np.arange(h_in), np.arange(9), indexing="ij")
        oy, ox = 2 * iy - 1 + ky[k], 2 * ix - 1 + kx[k]
        ok = (oy >= 0) & (oy < h_out) & (ox >= 0) & (ox < h_out)
        widx = (ci * c_out + co) * 9 + k
    else:  # output (co, oy, ox) <- input (ci, 2*oy - 1 + ky, 2*ox - 1 + kx)
        co, ci, oy, ox, k = np.meshgrid(np.arange(c_out), np.arange(c_in), np.arange(h_out),
                                        np.arange(h_out), np.arange(9), indexing="ij")
        iy, ix = 2 * oy - 1 + ky[k], 2 * ox - 1 + kx[k]
        ok = (iy >= 0) & (iy < h_in) & (ix >= 0) & (ix < h_in)
        widx = (co * c_in + ci) * 9 + k
    row = (co * h_out + oy) * h_out + ox
    col = (ci * h_in + iy) * h_in + ix
    flat = row[ok] * (c_in * h_in * h_in) + col[ok]
    # gather table: entry e of the operator is weight[table[e]], or the appended 0 when no tap
    n_w = c_in * c_out * 9
    table = np.full(c_out * h_out * h_out * c_in * h_in * h_in, n_w, dtype=np.int64)
    table[flat] = widx[ok]
    return torch.as_tensor(table)


# Above this many operator entries the dense path would cost more memory than it saves time.
_DENSE_MAX = 1 << 22


class StridedConv(nn.Module):
    """A 3x3 stride-2 padding-1 convolution (or transposed convolution) between fixed sizes.

    ``(B, c_in, h_in, h_in) -> (B, c_out, h_out, h_out)``. Parameters are those of
    ``nn.Conv2d`` / ``nn.ConvTranspose2d`` (``self.conv``). For small images the layer is
    applied as one matrix product with the dense operator built from the kernel (``dense``;
    the same function, much faster than PyTorch's CPU convolutions on 8x8 inputs); ``dense=None``
    picks it when the operator has at most 2**22 entries.
    """

    def __init__(self, c_in: int, c_out: int, h_in: int, h_out: int, *, transposed: bool,
                 dense: bool | None = None):
        super().__init__()
        self.c_in, self.c_out, self.h_in, self.h_out = c_in, c_out, h_in, h_out
        self.transposed = transposed
        cls = nn.ConvTranspose2d if transposed else nn.Conv2d
        self.conv = cls(c_in, c_out, 3, stride=2, padding=1)
        size = c_in * h_in * h_in * c_out * h_out * h_out
        self.dense = size <= _DENSE_MAX if dense is None else bool(dense)
        if self.dense:
            table = _dense_index(transposed, c_in, h_in, c_out, h_out)
            self.register_buffer("_table", table, persistent=False)

    def operator(self) -> torch.Tensor:
        """The dense matrix ``(c_out*h_out**2, c_in*h_in**2)`` of the layer (without bias)."""
        n_out, n_in = self.c_out * self.h_out**2, self.c_in * self.h_in**2
        if not self.dense:
            raise ShapeError("StridedConv.operator: layer too large for a dense operator")
        w = self.conv.weight.reshape(-1)
        w0 = torch.cat([w, w.new_zeros(1)])
        return w0.index_select(0, self._table).view(n_out, n_in)

    def _cached_operator(self) -> torch.Tensor:
        # Without autograd (the perception loops) the operator is reused while the weight is
        # unchanged; ``_version`` moves on every in-place update (optimizer steps, loading).
        w = self.conv.weight
        key = (w._version, w.data_ptr(), w.device)
        if getattr(self, "_op_key", None) != key:
            with torch.no_grad():
                self._op = self.operator()
            self._op_key = key
        return self._op

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dense:
            op = self.operator() if torch.is_grad_enabled() else self._cached_operator()
            y = torch.addmm(self.conv.bias.repeat_interleave(self.h_out**2), x.flatten(1), op.t())
            return y.view(len(x), self.c_out, self.h_out, self.h_out)
        if self.transposed:
            return self.conv(x, output_size=(self.h_out, self.h_out))
        return self.conv(x)


class ConvEncoder(nn.Module):
    """The "observed" map E: images ``(B, 1, s, s)`` -> codes ``(B, channels, 1, 1)``.

    ``ceil(log2(s))`` stride-2 3x3 convolutions, each followed by ``cos(x) - x``.
    """

    def __init__(self, image_size: int, channels: int = 256, *, dense: bool | None = None):
        super().__init__()
        self.image_size = int(image_size)
        self.sizes = _layer_sizes(image_size)
        layers: list[nn.Module] = []
        c_in = 1
        for h_in, h_out in zip(self.sizes[:-1], self.sizes[1:], strict=True):
            layers += [StridedConv(c_in, channels, h_in, h_out, transposed=False, dense=dense),
                       CosMinusX()]
            c_in = channels
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ConvDecoder(nn.Module):
    """The "seen" map D: codes ``(B, channels, 1, 1)`` -> images ``(B, 1, s, s)`` in [0, 1].

    Mirrors :class:`ConvEncoder` with stride-2 3x3 transposed convolutions (output sizes
    pinned to the encoder's); ``cos(x) - x`` between layers, a sigmoid at the end.
    """

    def __init__(self, image_size: int, channels: int = 256, *, dense: bool | None = None):
        super().__init__()
        self.image_size = int(image_size)
        self.sizes = _layer_sizes(image_size)[::-1]
        n = len(self.sizes) - 1
        self.convs = nn.ModuleList(
            StridedConv(channels, 1 if i == n - 1 else channels, self.sizes[i], self.sizes[i + 1],
                        transposed=True, dense=dense)
            for i in range(n)
        )
        self.act = CosMinusX()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        for i, conv in enumerate(self.convs):
            z = conv(z)
            z = self.act(z) if i < len(self.convs) - 1 else torch.sigmoid(z)
        return z


def build_autoencoder(
    image_size: int,
    channels: int,
    *,
    seed: int = 0,
    device: str | torch.device = "cpu",
    dense: bool | None = None,
) -> tuple[ConvEncoder, ConvDecoder]:
    """A fresh encoder/decoder pair, initialised from ``seed`` (global RNG state untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        E = ConvEncoder(image_size, channels, dense=dense)
        D = ConvDecoder(image_size, channels, dense=dense)
    return E.to(device), D.to(device)



class MLP(nn.Module):
    """Classifier ``(B, n_in) -> (B, n_classes)`` logits: Linear-ReLU blocks, then Linear."""

    def __init__(self, n_in: int, hidden: Sequence[int] = (128, 64), n_classes: int = 10):
        super().__init__()
        dims = [n_in, *hidden]
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:], strict=True):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(dims[-1], n_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))

