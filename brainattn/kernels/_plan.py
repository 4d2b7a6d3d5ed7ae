"""The per-call plan of the Triton path: sizes, precisions, strides, the low-rank split factors
and pointer stand-ins that the forward computes and the backward reuses, plus the host state
the passes share (dq-pass counters, stand-in tensors, SM counts) and the fused-dq decision.

Strides of broadcast dims are passed as 0; the last dim of q, k, v, dO and of the biases is
contiguous (the autograd layer makes it so), and out, lse, delta and the gradient buffers are
allocated contiguous.
"""

from __future__ import annotations

import torch
import triton.language as tl

from brainattn.kernels._factors import split_rows
from brainattn.kernels._tiling import p2

#: the fused dq pays off only with many queries (vertices: 20,000; rois' 50 keep the dq pass)
FUSED_MIN_LQ = 2048

_DUMMY: dict = {}  # device -> a small fp32 tensor standing in for absent pointers
_CNT: dict = {}  # (device, stream) -> int32 counters of the dq pass, zero between launches
_CNT_CAPTURED: list = []  # counters allocated inside CUDA-graph captures (graphs keep pointers)
_SMS: dict = {}  # device -> number of SMs
_CAP: dict = {}  # device -> compute capability
_TMA: list = []  # [whether this Triton has in-kernel descriptor reductions], once known


def strides(t: torch.Tensor | None, n: int) -> tuple[int, ...]:
    """Strides of ``t``'s first n dims with broadcast (size-1) dims as 0; zeros when None."""
    if t is None:
        return (0,) * n
    shape, stride = t.shape, t.stride()
    return tuple(0 if shape[i] == 1 else stride[i] for i in range(n))


def dummy(dev) -> torch.Tensor:
    """A small tensor for pointer arguments a launch does not read."""
    t = _DUMMY.get(dev)
    if t is None:
        t = _DUMMY[dev] = torch.empty(16, device=dev, dtype=torch.float32)
    return t


def n_sms(dev: torch.device) -> int:
    n = _SMS.get(dev)
    if n is None:
        n = 4
        if dev.type == "cuda":
            n = torch.cuda.get_device_properties(dev).multi_processor_count
        _SMS[dev] = n
    return n


def counters(dev: torch.device, n: int) -> torch.Tensor:
    """Zeroed int32 counters (at least n) for the dq pass's last-split reduction, one buffer
    per (device, stream): the kernel leaves them zero, so they are allocated once, and calls on
    other streams (which may run at the same time) get their own. Inside a CUDA-graph capture
    each call gets its own buffer, kept alive with the graph's lifetime in mind (graphs captured
    on one stream may later be replayed side by side)."""
    if dev.type == "cuda":
        if torch.cuda.is_current_stream_capturing():
            t = torch.zeros(max(n, 16), device=dev, dtype=torch.int32)
            _CNT_CAPTURED.append(t)
            return t
        stream = torch.cuda.current_stream(dev).cuda_stream
    else:
        stream = 0
    t = _CNT.get((dev, stream))
    if t is None or t.numel() < n:
        t = _CNT[(dev, stream)] = torch.zeros(max(n, 4096), device=dev, dtype=torch.int32)
    return t


def split_pair(q_bias: torch.Tensor, k_bias: torch.Tensor, kaug: int, qscale: float = 1.0):
    """fp16 hi/lo split of the low-rank factors: one fp16 dot of
    qa = [q_hi, q_hi, q_lo] and ka = [k_hi, k_lo, k_hi] gives qscale * q_bias k_bias^T to
    ~2^-21 (qscale = 1/scale lets the kernels scale q k^T and the low-rank term together).

    Column r of both factors is first rescaled by a_r = sqrt(max|q_r| / max|k_r|) (the product
    is unchanged) so both sides stay well inside fp16's range."""
    qf, kf = q_bias.detach().float(), k_bias.detach().float()
    # (few passes over the query factor, (H, Lq, R) in a pRF step: the column maxima in one
    # reduction, the rescaled split in one kernel)
    dims = tuple(range(qf.ndim - 1))
    qm = torch.linalg.vector_norm(qf, float("inf"), dim=dims) * abs(qscale)
    km = torch.linalg.vector_norm(kf, float("inf"), dim=dims)
    a = torch.sqrt(qm / km)
    a = torch.where(torch.isfinite(a) & (a > 0), a, 1.0)
    return [split_rows(qf, qscale / a, kaug, True), split_rows(kf, a, kaug, False)]


def reduce_to(t: torch.Tensor, shape) -> torch.Tensor:
    """Sum ``t`` over the dims where ``shape`` has size 1 (broadcast dims)."""
    dims = [i for i, n in enumerate(shape) if n == 1 and t.shape[i] != 1]
    return t.sum(dim=dims, keepdim=True) if dims else t


class Plan:
    """Everything about one call that the forward computes and the backward reuses: sizes,
    the dots' precision, strides, the split factors and the pointer stand-ins."""

    __slots__ = ("B", "H", "Lq", "Lk", "D", "R", "BLOCK_D", "prec", "lr_dot", "kaug", "gw",
                 "ptrs", "strides", "dev", "key")

    def __init__(self, q, k, v, bias, q_bias, k_bias, scale):
        B, H, Lk, D = k.shape
        self.B, self.H, self.Lk, self.D = B, H, Lk, D
        self.Lq = q.shape[2]
        self.R = R = 0 if q_bias is None else q_bias.shape[3]
        self.dev = dev = q.device
        self.BLOCK_D = max(16, p2(D))
        # the precision of the fp32 dots: every dot for float32 inputs (tf32 as torch's matmul
        # setting allows), the low-rank gradient dots for half inputs (tf32)
        tf32 = q.dtype != torch.float32 or torch.backends.cuda.matmul.allow_tf32
        self.prec = "tf32" if tf32 else "ieee"
        # (a zero scale cannot be folded into the split factors: exact fp32 products then)
        self.lr_dot = R > 0 and q.dtype != torch.float32 and scale != 0
        self.kaug = max(16, p2(3 * max(R, 1)))
        # a gradient dot's width: the factor's high part and remainder (_tile.factor_tile)
        self.gw = max(16, p2(2 * max(R, 1)))
        d = dummy(dev)
        qa = ka = d
        lr = (0, 0, 0, 0)
        if self.lr_dot:
            # without a dense bias the kernels apply the scale after the low-rank dot
            qa, ka = split_pair(q_bias, k_bias, self.kaug, 1.0 / scale if bias is None else 1.0)
            lr = strides(qa, 2) + strides(ka, 2)
        self.ptrs = (bias if bias is not None else d, q_bias if q_bias is not None else d,
                     k_bias if k_bias is not None else d, qa, ka)
        bs = (0, 0) if bias is None else strides(bias, 2)
        self.strides = (*strides(q, 3), *strides(k, 3), *strides(v, 3), *bs,
                        *strides(q_bias, 4), *strides(k_bias, 4), *lr)
        self.key = (self.Lq, self.Lk, D, bias is not None, R, self.prec, self.lr_dot, q.dtype,
                    None if bias is None else bias.dtype,
                    None if q_bias is None else (q_bias.dtype, k_bias.dtype))


def tma_reduce_available() -> bool:
    """This Triton makes tensor descriptors in the kernel and reduces into them (3.4+)."""
    try:
        from triton.runtime import _allocation
    except ImportError:
        return False
    return (hasattr(tl, "make_tensor_descriptor") and hasattr(_allocation, "_allocator")
            and hasattr(getattr(tl, "tensor_descriptor", None), "atomic_add"))


def kv_key(plan: Plan, nkb: bool, fused: bool, nqb_fused: bool) -> tuple:
    """The dk/dv pass's launch key: dk_bias wanted, dq fused, dq_bias fused, the plan's key."""
    return ("kv", nkb, fused, nqb_fused) + plan.key


def fused_dq(q, q_bias, plan: Plan, needs, has_bias: bool, tuned: dict) -> bool:
    """Whether the backward adds dq (and dq_bias) inside the dk/dv pass (fp32 TMA reductions
    into (H, Lq, D) and (H, Lq, R) buffers) instead of a separate dq pass that recomputes
    q k^T and dO v^T for every batch.

    When: queries (and a low-rank query factor) broadcast over a batch, many of them, no dense
    bias, head dim 64, half precision, an NVIDIA card with TMA (sm_90+), and deterministic
    algorithms not requested (the order of the reductions varies from run to run). Head dim 64
    only: at 48 and 128 the fused pass was slower than the separate one, and at 32 and below
    its dq dot is an mma.sync (docs/kernels.md). ``needs`` is (q, k, v, bias, q_bias, k_bias)."""
    nq, nk, nv, _, nqb, nkb = needs
    if not (nq and (nk or nv) and not has_bias and q.shape[0] == 1 and plan.B > 1
            and plan.Lq >= FUSED_MIN_LQ and plan.D == 64
            and q.dtype in (torch.float16, torch.bfloat16) and q.is_cuda
            and torch.version.hip is None):
        return False
    if plan.R > 0 and not (plan.lr_dot and (not nqb or q_bias.shape[0] == 1)):
        return False
    if torch.are_deterministic_algorithms_enabled():
        return False
    if torch.cuda.is_current_stream_capturing():
        # a capture runs what the eager steps before it ran and tuned (no tuning can run
        # inside a capture): the fused pass only if it was tuned for this shape
        return kv_key(plan, nkb and plan.R > 0, True, nqb and plan.R > 0) in tuned
    cap = _CAP.get(q.device)
    if cap is None:
        cap = _CAP[q.device] = torch.cuda.get_device_capability(q.device)
    return cap[0] >= 9 and _tma_ok()


def _tma_ok() -> bool:
    if not _TMA:
        _TMA.append(tma_reduce_available())
    return _TMA[0]
