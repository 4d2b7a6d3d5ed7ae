"""Training many small networks at once: :func:`fit_stacked` and what uses it.

:func:`fit_stacked` trains ``G`` models of one architecture together through ``torch.vmap``
over their stacked parameters (the same optimisation as one at a time, in fewer small
operations); :func:`train_autoencoders` / :func:`train_autoencoder` and :func:`train_mlps` /
:func:`train_mlp` / :func:`classifier_accuracy` are that loop for the agents and the classifier.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from brainattn.theory.semiotics.networks import MLP


def fit_stacked(
    models: Sequence[nn.Module],
    x: torch.Tensor,
    target: torch.Tensor,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    steps: int,
    lr: float,
    weight_decay: float = 0.0,
    cosine: bool = False,
    autocast: torch.dtype | None = None,
) -> np.ndarray:
    """Train ``G`` models of one architecture at once, model ``g`` on ``(x[g], target[g])``.

    ``x``: ``(G, n, ...)``; ``loss(out, target)`` returns one loss per model ``(G,)`` from the
    stacked outputs ``(G, n, ...)``. Full-batch Adam (cosine-annealed learning rate if
    ``cosine``) on the parameters stacked with ``torch.func``: the gradient of the summed loss
    for model ``g`` is the gradient of its own loss and Adam is elementwise, so this is the
    same optimisation as training each model alone, in ``1/G`` as many (small) operations.
    The trained parameters are copied back into ``models``. Returns losses ``(steps, G)``.
    ``autocast`` (e.g. ``torch.bfloat16``): the forward and backward passes under
    ``torch.autocast`` of that dtype (mixed precision: parameters, loss and Adam stay float32).
    """
    from torch.func import functional_call, stack_module_state

    models = list(models)
    params, _ = stack_module_state(models)
    buffers = dict(models[0].named_buffers())  # index tables: identical in every model
    base = models[0]

    def call(p, xg):
        return functional_call(base, (p, buffers), (xg,))

    forward = torch.vmap(call)
    opt = torch.optim.Adam(list(params.values()), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps) if cosine else None
    # losses stay on the device until the end: a copy to the host each step would make the
    # CPU wait for the GPU, step after step
    hist = torch.zeros((steps, len(models)), dtype=torch.float32, device=x.device)
    for t in range(steps):
        opt.zero_grad(set_to_none=True)
        if autocast is None:
            out = forward(params, x)
        else:
            with torch.autocast(device_type=x.device.type, dtype=autocast):
                out = forward(params, x)
        per = loss(out.float(), target)
        per.sum().backward()
        opt.step()
        if sched is not None:
            sched.step()
        hist[t] = per.detach()
    losses = hist.cpu().numpy().astype(np.float64)
    with torch.no_grad():
        for g, m in enumerate(models):
            for name, p in m.named_parameters():
                p.copy_(params[name][g])
            m.eval()
    return losses


def _mse_per_model(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (out - target).pow(2).flatten(1).mean(1)


def train_autoencoders(
    agents: Sequence[tuple[nn.Module, nn.Module]],
    x: torch.Tensor,
    *,
    steps: int = 400,
    lr: float = 3e-3,
    bf16: bool = False,
) -> np.ndarray:
    """Fit ``G`` autoencoders at once, ``D_g(E_g(x[g])) ~ x[g]``, ``x`` ``(G, n, 1, s, s)``.

    Full-batch Adam on the MSE per pixel, cosine-annealed learning rate (see
    :func:`fit_stacked`). ``bf16``: passes under bfloat16 autocast (mixed precision; meant for
    CUDA's tensor cores).
    Returns the losses ``(steps, G)`` (MSE per pixel).
    """
    pairs = [nn.Sequential(E, D) for E, D in agents]
    return fit_stacked(pairs, x, x, _mse_per_model, steps=steps, lr=lr, cosine=True,
                       autocast=torch.bfloat16 if bf16 else None)


def train_autoencoder(
    E: nn.Module,
    D: nn.Module,
    x: torch.Tensor,
    *,
    steps: int = 400,
    lr: float = 3e-3,
) -> list[float]:
    """Fit ``D(E(x)) ~ x`` by full-batch Adam on MSE; ``x`` is ``(n, 1, s, s)`` in [0, 1].

    Returns the loss per step (mean squared error per pixel).
    """
    return train_autoencoders([(E, D)], x[None], steps=steps, lr=lr)[:, 0].tolist()



def _ce_per_model(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.transpose(1, 2), y, reduction="none").mean(1)


def train_mlps(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    hidden: Sequence[int] = (128, 64),
    n_classes: int = 10,
    steps: int = 300,
    lr: float = 1e-2,
    weight_decay: float = 1e-4,
    seeds: Sequence[int] = (0,),
) -> list[MLP]:
    """Train ``G = len(seeds)`` MLPs at once, model ``g`` on ``x[g]`` ``(n, ...)``, ``y[g]``.

    Model ``g`` is initialised from ``seeds[g]`` alone (the global RNG is left as it was), so
    the same seed on raw and on perceived inputs means the same network and schedule.
    Full-batch Adam with L2 ``weight_decay`` (see :func:`fit_stacked`).
    """
    models = []
    for s in seeds:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(s))
            models.append(MLP(int(np.prod(x.shape[2:])), hidden, n_classes).to(x.device))
    if steps > 0:
        fit_stacked(models, x, y, _ce_per_model, steps=steps, lr=lr, weight_decay=weight_decay)
    for m in models:
        m.eval()
    return models


def train_mlp(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    hidden: Sequence[int] = (128, 64),
    n_classes: int = 10,
    steps: int = 300,
    lr: float = 1e-2,
    weight_decay: float = 1e-4,
    seed: int = 0,
) -> MLP:
    """Train one :class:`MLP` on ``x`` ``(n, ...)``, labels ``y`` ``(n,)`` (see :func:`train_mlps`)."""
    return train_mlps(x[None], y[None], hidden=hidden, n_classes=n_classes, steps=steps, lr=lr,
                      weight_decay=weight_decay, seeds=[seed])[0]


def classifier_accuracy(
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    **mlp_kwargs,
) -> tuple[float, torch.Tensor, MLP]:
    """Train :func:`train_mlp` on the training images, return (test accuracy, predictions, model)."""
    model = train_mlp(x_train, y_train, **mlp_kwargs)
    with torch.no_grad():
        pred = model(x_test).argmax(1)
    return float((pred == y_test).double().mean()), pred, model

