"""The perception loops: an agent iterating ``x <- D(E(x))`` on what it sees.

:func:`vanilla_loop` (deterministic iteration to an attractor, with convergence statistics),
:func:`augment` and :func:`stochastic_loop` (augmentation of strength ``decay**-n`` at step
``n``, many copies averaged: the *perceived* image) and :func:`two_agent_loop` (agent A's
"seen" is agent B's "observed").
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from brainattn.errors import ConfigError
from brainattn.theory.semiotics.networks import CosMinusX


def rms(a: torch.Tensor) -> torch.Tensor:
    """Root mean square per sample over all but the first axis."""
    return a.flatten(1).pow(2).mean(1).sqrt()


@dataclass
class LoopResult:
    """Outcome of an iterated map ``x <- f(x)`` on a batch.

    x: ``(n, 1, s, s)`` the final images; residual: ``(n,)`` RMS per pixel of ``f(x) - x`` at
    the final images (the attractor test); converged: ``(n,)`` ``residual < tol``; n_steps:
    ``(n,)`` first step after which the step size fell below ``tol`` (-1 if never);
    trace: ``(steps,)`` mean step size (RMS per pixel of ``x_{t+1} - x_t``) per iteration, NaN
    after the loop stopped early (every image at its attractor).
    """

    x: torch.Tensor
    residual: torch.Tensor
    converged: torch.Tensor
    n_steps: torch.Tensor
    trace: torch.Tensor

    @property
    def converged_fraction(self) -> float:
        return float(self.converged.float().mean())


@torch.no_grad()
def _iterate(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, steps: int, tol: float,
             batch_size: int, stop_early: bool = True) -> LoopResult:
    outs, res, nst, traces = [], [], [], []
    for start in range(0, len(x), batch_size):
        xb = x[start : start + batch_size]
        first = torch.full((len(xb),), -1, dtype=torch.long, device=xb.device)
        trace = torch.full((steps,), math.nan, dtype=torch.float64, device=xb.device)
        for t in range(steps):
            nxt = f(xb)
            step = rms(nxt - xb)
            trace[t] = step.double().mean()
            newly = (step < tol) & (first < 0)
            first[newly] = t + 1
            xb = nxt
            # all at the attractor: further steps move no image by more than tol
            if stop_early and bool((step < tol).all()) and bool((rms(f(xb) - xb) < tol).all()):
                break
        outs.append(xb)
        res.append(rms(f(xb) - xb))
        nst.append(first)
        traces.append(trace)
    residual = torch.cat(res)
    return LoopResult(
        x=torch.cat(outs),
        residual=residual,
        converged=residual < tol,
        n_steps=torch.cat(nst),
        trace=torch.stack(traces).nanmean(0).float(),
    )


def vanilla_loop(
    E: nn.Module,
    D: nn.Module,
    x: torch.Tensor,
    steps: int = 30,
    *,
    tol: float = 1e-3,
    batch_size: int = 4096,
) -> LoopResult:
    """Iterate ``x <- D(E(x))`` at most ``steps`` times (the vanilla perception loop).

    ``x``: ``(n, 1, s, s)``. Convergence: the attractor residual ``RMS(D(E(x*)) - x*)`` per
    pixel below ``tol`` at the final images ``x*``. A chunk of ``batch_size`` images stops
    early once every image in it has converged. See :class:`LoopResult`.
    """
    if steps < 1:
        raise ConfigError(f"steps: expected a positive integer, got {steps!r}")
    return _iterate(lambda z: D(E(z)), x, steps, tol, batch_size)


def two_agent_loop(
    agent_a: tuple[nn.Module, nn.Module],
    agent_b: tuple[nn.Module, nn.Module],
    x: torch.Tensor,
    steps: int = 30,
    *,
    tol: float = 1e-3,
    batch_size: int = 4096,
) -> tuple[LoopResult, torch.Tensor]:
    """Two agents looking at each other's images: A's "seen" is B's "observed" and back.

    One step is ``x <- D_B(E_B(D_A(E_A(x))))``. Returns the :class:`LoopResult` of that map
    and the disagreement ``(n,)``: RMS per pixel between A's seen image ``D_A(E_A(x*))`` and
    B's ``x*`` at the end (0 when the two agents share the attractor).
    """
    (Ea, Da), (Eb, Db) = agent_a, agent_b
    if steps < 1:
        raise ConfigError(f"steps: expected a positive integer, got {steps!r}")
    res = _iterate(lambda z: Db(Eb(Da(Ea(z)))), x, steps, tol, batch_size)
    with torch.no_grad():
        seen_a = torch.cat([Da(Ea(res.x[i : i + batch_size])) for i in range(0, len(x), batch_size)])
    return res, rms(seen_a - res.x)


@dataclass(frozen=True)
class AugmentParams:
    """Augmentation magnitudes at strength ``alpha = 1`` (see :func:`augment`)."""

    noise: float = 0.2  # Gaussian noise sd, pixel units
    shift: float = 1.0  # max translation, pixels
    rotate: float = 15.0  # max rotation, degrees
    scale: float = 0.1  # max relative zoom
    contrast: float = 0.3  # max relative contrast change
    blur: float = 0.5  # max blend weight with the blurred image

    @classmethod
    def from_config(cls, cfg: dict) -> AugmentParams:
        return cls(**{k: float(cfg[f"aug_{k}"]) for k in cls.__dataclass_fields__})


def _blur(x: torch.Tensor) -> torch.Tensor:
    g = torch.tensor([0.27406862, 0.45186276, 0.27406862], dtype=x.dtype, device=x.device)  # sd 1
    k = (g[:, None] * g[None, :]).view(1, 1, 3, 3)
    return F.conv2d(x, k, padding=1)


def augment(
    x: torch.Tensor, alpha: float, params: AugmentParams, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Random augmentation of strength ``alpha`` on images ``(B, 1, s, s)`` in [0, 1].

    Per image: affine (rotation ``alpha*rotate`` deg, zoom ``1 + alpha*scale``, shift
    ``alpha*shift`` px; each uniformly in +-), blend with a blurred copy (weight up to
    ``alpha*blur``), contrast about the mean (factor ``1 +- alpha*contrast``), additive Gaussian
    noise (sd ``alpha*noise``); clamped to [0, 1]. ``alpha = 0`` returns ``x`` unchanged.
    """
    if alpha == 0:
        return x
    B, _, h, w = x.shape

    def u(*shape):  # uniform in [-1, 1]
        return torch.rand(*shape, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1

    ang = u(B) * math.radians(params.rotate) * alpha
    zoom = 1 + u(B) * params.scale * alpha
    tx, ty = u(B) * params.shift * alpha * 2 / w, u(B) * params.shift * alpha * 2 / h
    cos, sin = torch.cos(ang) / zoom, torch.sin(ang) / zoom
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    y = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    wb = (u(B) + 1) / 2 * params.blur * alpha
    y = y + wb.view(B, 1, 1, 1) * (_blur(y) - y)
    mean = y.mean(dim=(1, 2, 3), keepdim=True)
    y = mean + (y - mean) * (1 + u(B) * params.contrast * alpha).view(B, 1, 1, 1)
    noise = torch.randn(y.shape, generator=generator, device=x.device, dtype=x.dtype)
    y = y + noise * params.noise * alpha
    return y.clamp(0, 1)


def _bf16_copy(m: nn.Module) -> nn.Module:
    """A bfloat16, channels-last copy of ``m`` for forward passes (``m`` itself untouched).

    Its ``cos(x) - x`` activations take the fused kernel on CUDA (:class:`CosMinusX`).
    """
    # channels-last weights make cuDNN's convolutions write channels-last outputs, the layout
    # its bfloat16 tensor-core kernels read without a transpose
    out = copy.deepcopy(m).to(dtype=torch.bfloat16, memory_format=torch.channels_last)
    for mod in out.modules():
        if isinstance(mod, CosMinusX):
            mod.fused = True
    return out


@torch.no_grad()
def stochastic_loop(
    E: nn.Module,
    D: nn.Module,
    x: torch.Tensor,
    steps: int = 30,
    *,
    n_copies: int = 500,
    decay: float = 2.6,
    params: AugmentParams | None = None,
    generator: torch.Generator | None = None,
    batch_size: int = 4096,
    bf16: bool = False,
) -> torch.Tensor:
    """The perceived images ``(n, 1, s, s)``: mean over ``n_copies`` stochastic trajectories.

    Each copy starts at ``x`` and at step ``n = 0 .. steps-1`` is augmented with strength
    ``alpha_n = decay ** -n`` and mapped by ``D(E(.))``; the copies' images after ``steps``
    steps are averaged. ``batch_size`` bounds images x copies per forward pass.

    ``bf16``: the passes ``D(E(.))`` run in bfloat16 (copies of the networks); augmentation and
    the average stay float32. Meant for CUDA, where it doubles the tensor-core rate and halves
    the memory traffic of these passes, the bulk of the experiment's work. On CUDA the images
    are split into chunks of equal size (at most ``batch_size // n_copies`` images), so that
    every pass has the same shape and cuDNN's choice of kernels (``cudnn.benchmark``) is reused.
    """
    if steps < 1 or n_copies < 1:
        raise ConfigError(f"steps, n_copies: expected positive integers, got {steps!r}, {n_copies!r}")
    if decay <= 1:
        raise ConfigError(f"decay: expected a number > 1, got {decay!r}")
    params = params or AugmentParams()
    per = max(1, batch_size // n_copies)
    if x.is_cuda and len(x) > per:
        per = math.ceil(len(x) / math.ceil(len(x) / per))
    if bf16:
        E, D = _bf16_copy(E), _bf16_copy(D)
    out = []
    for start in range(0, len(x), per):
        xb = x[start : start + per]
        z = xb.repeat_interleave(n_copies, dim=0)
        for n in range(steps):
            a = augment(z, decay ** (-n), params, generator)
            z = D(E(a.to(torch.bfloat16))).float() if bf16 else D(E(a))
        out.append(z.view(len(xb), n_copies, *xb.shape[1:]).mean(1))
    return torch.cat(out)
