"""Gaussian population-receptive-field (pRF) prior as an exact rank-4 additive attention bias."""

from __future__ import annotations

import torch

from brainattn.errors import ConfigError, ShapeError


def prf_bias_factors(mu, sigma, positions, *, query_mask=None, token_mask=None, validate=True):
    """Factors of the bias ``-||x_j - mu_i||^2 / (2 sigma_i^2)`` for :func:`attention`.

    The bias equals ``q_bias @ k_bias^T`` exactly, with
    ``q_bias_i = [mu_i / sigma_i^2, -1 / (2 sigma_i^2), -||mu_i||^2 / (2 sigma_i^2)]`` (4 numbers,
    mu has 2) and ``k_bias_j = [x_j, ||x_j||^2, 1]``, so the (Lq, Lk) bias is never formed.

    Parameters
    ----------
    mu : (H or 1, Lq, 2) pRF centres, in the units of ``positions``.
    sigma : (H or 1, Lq) pRF sizes (standard deviations), positive, same units.
    positions : (Lk, 2) token centres. Keep them centred and O(1) (e.g. in [-1, 1]): the
        factorisation subtracts ``||x||^2`` and ``||mu||^2`` terms, so coordinates far from the
        origin lose precision to cancellation.
    query_mask : optional (Lq,) or (H or 1, Lq) bool; False marks queries that get no prior
        (their bias row is 0).
    token_mask : optional (Lk,) bool; False marks tokens without a position, e.g. a CLS token
        (their bias column is 0; their ``positions`` rows are ignored and may be NaN).
    validate : check that every sigma is positive. The check reads a value back from the
        device (a host sync on CUDA); a training loop whose sigma is positive by construction
        (``exp``/``softplus``) can pass False.

    Returns
    -------
    q_bias : (1, H or 1, Lq, 4), k_bias : (1, 1, Lk, 4), in mu's dtype (float32 or float64;
    half precision is promoted to float32). Differentiable in mu and sigma (and positions).
    """
    for name, t, nd in (("mu", mu, 3), ("sigma", sigma, 2), ("positions", positions, 2)):
        if not isinstance(t, torch.Tensor) or t.ndim != nd:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ShapeError(f"{name}: expected a {nd}-dim tensor, got {shape}")
    if mu.shape[-1] != 2 or positions.shape[-1] != 2:
        raise ShapeError(
            f"mu/positions: expected 2-D coordinates in the last dim, got mu {tuple(mu.shape)} "
            f"and positions {tuple(positions.shape)}"
        )
    if tuple(sigma.shape) != tuple(mu.shape[:2]):
        raise ShapeError(
            f"sigma: expected shape {tuple(mu.shape[:2])} (H or 1, Lq) like mu, "
            f"got {tuple(sigma.shape)}"
        )
    if not torch.is_floating_point(mu) or not torch.is_floating_point(sigma):
        raise ConfigError(f"mu/sigma: expected floating dtypes, got {mu.dtype} and {sigma.dtype}")
    if validate and bool((sigma.detach() <= 0).any()):
        raise ConfigError("sigma: expected every pRF size to be positive")
    dt = torch.float64 if mu.dtype == torch.float64 else torch.float32
    mu = mu.to(dt)
    qb = None
    if mu.is_cuda and dt == torch.float32:
        from brainattn.kernels import _factors, _ops

        # one kernel each way; compiled code, fake tensors and subclasses get the torch ops
        # (inductor fuses them itself)
        if _ops.plain_eager(mu, sigma):
            qb = _factors.PrfQueryFactor.apply(mu, sigma.to(dt))
    if qb is None:
        inv = 1.0 / (2.0 * sigma.to(dt) ** 2)  # (H, Lq)
        qb = torch.stack(
            [2 * inv * mu[..., 0], 2 * inv * mu[..., 1], -inv, -inv * (mu**2).sum(-1)], dim=-1
        )  # (H, Lq, 4)
    if query_mask is not None:
        query_mask = torch.as_tensor(query_mask, dtype=torch.bool, device=qb.device)
        if query_mask.shape[-1] != mu.shape[1] or query_mask.ndim not in (1, 2):
            raise ShapeError(
                f"query_mask: expected shape ({mu.shape[1]},) or (H or 1, {mu.shape[1]}), "
                f"got {tuple(query_mask.shape)}"
            )
        # (a fill value, not a CPU zero tensor: that would be a blocking host-to-device copy
        # per call, i.e. a stream sync in every training step)
        qb = qb.masked_fill(~query_mask.unsqueeze(-1), 0.0)
    pos = positions.to(dt)
    kb = torch.stack(
        [pos[:, 0], pos[:, 1], (pos**2).sum(-1), torch.ones_like(pos[:, 0])], dim=-1
    )  # (Lk, 4)
    if token_mask is not None:
        token_mask = torch.as_tensor(token_mask, dtype=torch.bool, device=kb.device)
        if tuple(token_mask.shape) != (positions.shape[0],):
            raise ShapeError(
                f"token_mask: expected shape ({positions.shape[0]},), got {tuple(token_mask.shape)}"
            )
        kb = kb.masked_fill(~token_mask.unsqueeze(-1), 0.0)
    return qb.unsqueeze(0), kb.unsqueeze(0).unsqueeze(0)
