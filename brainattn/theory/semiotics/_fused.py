"""The Triton kernel of ``cos(x) - x`` (imported only when :func:`networks.fused_cos_minus_x` runs).

At module level because Triton resolves a kernel's names (``tl``) through its module's globals.
"""

import triton
import triton.language as tl


@triton.jit
def cos_minus_x(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    # 64-bit offsets: a stochastic-loop batch holds more than 2**31 activations
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    x = tl.load(x_ptr + offs, mask=m).to(tl.float32)
    tl.store(y_ptr + offs, (tl.cos(x) - x).to(y_ptr.dtype.element_ty), mask=m)
