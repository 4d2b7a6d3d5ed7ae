"""Stimuli, memories and retrieval of the Pavlovian model (plain functions on tensors).

Random CS keys and binary US values, the Hebbian, decaying and delta-rule memories, linear and
softmax retrieval, per-query retrieval statistics and the error-free (worst-case) crosstalk
bound; the model and its definitions are in :mod:`brainattn.theory.pavlovian`.
"""

from __future__ import annotations

import math

import torch


def random_keys(
    n_trials: int, n: int, d: int, *, generator: torch.Generator, device=None
) -> torch.Tensor:
    """Uniform random unit CS vectors, shape ``(n_trials, n, d)``."""
    k = torch.randn(n_trials, n, d, generator=generator, device=device)
    return k / k.norm(dim=-1, keepdim=True)


def random_values(
    n_trials: int, n: int, d: int, *, generator: torch.Generator, device=None
) -> torch.Tensor:
    """Random binary US patterns with entries ``+-1/sqrt(d)`` (unit norm), ``(n_trials, n, d)``."""
    # 32 random bits per draw: the generator, not the arithmetic, is the cost on a CPU
    total = n_trials * n * d
    words = torch.randint(0, 2**32, ((total + 31) // 32,), generator=generator, device=device)
    shifts = torch.arange(32, device=device, dtype=torch.int64)
    bits = ((words[:, None] >> shifts) & 1).reshape(-1)[:total].view(n_trials, n, d)
    return (bits.to(torch.float32) * 2.0 - 1.0) / math.sqrt(d)


def hebbian_memory(keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``M = sum_i v_i k_i^T``: keys ``(B, N, d_k)``, values ``(B, N, d_v)`` -> ``(B, d_v, d_k)``."""
    return values.transpose(-1, -2) @ keys


def decay_memory(keys: torch.Tensor, values: torch.Tensor, decay: float) -> torch.Tensor:
    """Hebbian with forgetting, ``M <- decay * M + v_t k_t^T`` over t = 0..N-1 (closed form).

    Pair ``t`` ends with weight ``decay ** (N - 1 - t)``. Shapes as :func:`hebbian_memory`.
    """
    n = keys.shape[-2]
    age = torch.arange(n - 1, -1, -1, device=keys.device, dtype=keys.dtype)
    w = torch.as_tensor(decay, dtype=keys.dtype, device=keys.device) ** age
    return (values * w[:, None]).transpose(-1, -2) @ keys


def delta_rule_memory(
    keys: torch.Tensor, values: torch.Tensor, *, lr: float = 1.0, epochs: int = 1
) -> torch.Tensor:
    """Error-correcting (Widrow-Hoff) rule ``M <- M + lr (v_t - M k_t) k_t^T``.

    The pairs are presented in order t = 0..N-1, ``epochs`` times. Shapes as
    :func:`hebbian_memory`; returns ``(B, d_v, d_k)``.
    """
    b, n, dk = keys.shape
    m = keys.new_zeros(b, values.shape[-1], dk)
    for _ in range(epochs):
        for t in range(n):
            k = keys[:, t, :, None]  # (B, d_k, 1)
            err = values[:, t, :, None] - torch.bmm(m, k)  # (B, d_v, 1)
            m.baddbmm_(err, k.transpose(1, 2), alpha=lr)
    return m


def retrieve(memory: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """Linear retrieval ``v_hat = M q``: memory ``(B, d_v, d_k)``, queries ``(B, Q, d_k)`` -> ``(B, Q, d_v)``."""
    return queries @ memory.transpose(-1, -2)


def linear_attention(keys: torch.Tensor, values: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """``sum_i v_i (k_i . q)`` without forming M (same as ``retrieve(hebbian_memory(k, v), q)``).

    Cheaper when ``Q * N < d_k * d_v``; shapes ``(B, N, d_k)``, ``(B, N, d_v)``, ``(B, Q, d_k)``.
    """
    return (queries @ keys.transpose(-1, -2)) @ values


def _attention_fn():
    """``brainattn.kernels.attention`` when it is importable, else torch's SDPA."""
    try:
        from brainattn.kernels import attention  # type: ignore[attr-defined]

        return attention
    except Exception:  # the kernel package is optional here
        import torch.nn.functional as F

        def attention(q, k, v, *, scale=None, **_):
            return F.scaled_dot_product_attention(q, k, v, scale=scale)

        return attention


def softmax_attention(
    keys: torch.Tensor, values: torch.Tensor, queries: torch.Tensor, *, beta: float
) -> torch.Tensor:
    """``sum_i softmax_i(beta k_i . q) v_i`` (one head); shapes as :func:`linear_attention`."""
    attn = _attention_fn()
    out = attn(queries[:, None], keys[:, None], values[:, None], scale=float(beta))
    return out[:, 0]


def retrieval_stats(
    v_hat: torch.Tensor, target: torch.Tensor, stored: torch.Tensor, target_index: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Per-query retrieval quality.

    Parameters
    ----------
    v_hat : ``(B, Q, d_v)`` retrieved US.
    target : ``(B, Q, d_v)`` the true US of each query (unit norm).
    stored : ``(B, N, d_v)`` all stored US (the candidates of top-1 identification).
    target_index : ``(Q,)`` index of each query's US in ``stored``.

    Returns ``(B, Q)`` tensors: ``noise_power`` ``||v_hat - v||^2``, ``cosine``, ``bit_error``
    (fraction of features whose sign is wrong), ``top1`` (1.0 when the true US scores highest),
    ``gain`` ``v_hat . v`` and ``perp_power`` ``||v_hat - gain v||^2``.
    """
    diff = v_hat - target
    gain = (v_hat * target).sum(-1)
    perp = v_hat - gain[..., None] * target
    cos = gain / (v_hat.norm(dim=-1) * target.norm(dim=-1)).clamp_min(1e-30)
    bit = (torch.sign(v_hat) != torch.sign(target)).float().mean(-1)
    scores = v_hat @ stored.transpose(-1, -2)
    top1 = (scores.argmax(-1) == target_index[None, :]).float()
    return {
        "noise_power": (diff * diff).sum(-1),
        "cosine": cos,
        "bit_error": bit,
        "top1": top1,
        "gain": gain,
        "perp_power": (perp * perp).sum(-1),
    }


def worst_case_bound(keys: torch.Tensor) -> torch.Tensor:
    """``max_j W_j(N)`` for every prefix size N = 1..N_max of the stored keys.

    ``W_j(N) = sum_{i<N, i!=j} |k_i . k_j|`` bounds the crosstalk on pair ``j`` whatever the US
    patterns are. keys ``(B, N_max, d_k)`` -> ``(B, N_max)``; entry ``n`` is for N = n + 1.
    """
    g = (keys @ keys.transpose(-1, -2)).abs()
    g.diagonal(dim1=-2, dim2=-1).zero_()
    c = g.cumsum(-1)  # c[b, j, n] = sum_{i <= n} |k_i . k_j|
    n_max = keys.shape[-2]
    valid = torch.ones(n_max, n_max, dtype=torch.bool, device=keys.device).tril()  # j <= n
    c = c.masked_fill(~valid.T[None], float("-inf"))
    return c.max(dim=-2).values


def worst_case_capacity(keys: torch.Tensor, threshold: float = 1.0) -> torch.Tensor:
    """Largest N with ``max_j W_j(N) < threshold`` per trial (``(B,)`` int64).

    ``keys`` ``(B, N_max, d_k)``; the answer is capped at ``N_max`` (use enough keys).
    """
    bound = worst_case_bound(keys)
    return (bound < threshold).long().sum(-1)
