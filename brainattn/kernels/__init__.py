"""Attention with dense and low-rank additive bias: Triton kernels on CUDA, torch elsewhere.

Public API::

    attention(q, k, v, *, bias=None, q_bias=None, k_bias=None, scale=None, return_lse=False)
    attention_weights(q, k, *, bias=None, q_bias=None, k_bias=None, scale=None)
    prf_bias_factors(mu, sigma, positions, *, query_mask=None, token_mask=None)

The float64 reference used by the tests is :func:`brainattn.kernels.reference.reference_attention`.
Imports only torch here; triton is imported on the first Triton call.
"""

from brainattn.kernels.api import (
    TRITON_HEAD_DIMS,
    attention,
    attention_weights,
    triton_available,
)
from brainattn.kernels.prf import prf_bias_factors

__all__ = [
    "TRITON_HEAD_DIMS",
    "attention",
    "attention_weights",
    "prf_bias_factors",
    "triton_available",
]
