"""The Triton path as a differentiable PyTorch operator.

Two doors into the same host code (``_host.forward`` / ``_host.backward``):

- ``brainattn::attention_fwd`` and ``brainattn::attention_bwd``, custom operators
  (``torch.library.custom_op``, torch >= 2.4) with fake implementations and
  ``register_autograd``. ``torch.compile`` sees them as opaque calls (no graph break, no
  tracing into Triton), infers their output shapes from the fake implementations, and
  differentiates through the registered formula; so do fake-tensor tools (``FakeTensorMode``,
  ``torch.export``). Used while compiling and for any tensor that is not a plain one.
- ``TritonAttention``, a ``torch.autograd.Function``, for plain eager calls: a custom op's eager
  call goes through the dispatcher and a generated Function on top of this one (tens of
  microseconds more host time a step, which the host-bound small cases would pay), and it
  keeps the forward's split low-rank factors for the backward instead of recomputing them.

Both run the same kernels, and the tests compare them.
"""

import torch

from brainattn.kernels import _host

_FWD_SCHEMA = ("(Tensor q, Tensor k, Tensor v, Tensor? bias, Tensor? q_bias, Tensor? k_bias, "
               "float scale) -> (Tensor, Tensor)")
_BWD_SCHEMA = ("(Tensor? dout, Tensor? dlse, Tensor q, Tensor k, Tensor v, Tensor? bias, "
               "Tensor? q_bias, Tensor? k_bias, Tensor out, Tensor lse, float scale, "
               "bool[] needs) -> Tensor[]")


def _prepare(q, k, v, bias, q_bias, k_bias):
    """The kernels index the last dim with unit stride: copy only the tensors that lack it."""
    return tuple(_host.last_contiguous(t) for t in (q, k, v, bias, q_bias, k_bias))


def _run_backward(dout, dlse, q, k, v, bias, q_bias, k_bias, out, lse, scale, needs, plan):
    if dout is None:
        dout = torch.zeros_like(out)
    elif dout.stride(-1) != 1:
        dout = dout.contiguous()
    if dlse is not None:
        dlse = dlse.float().contiguous()
    return _host.backward(q, k, v, bias, q_bias, k_bias, out, lse, dout, dlse, scale,
                          tuple(bool(n) for n in needs), plan)


def _fwd_impl(q, k, v, bias, q_bias, k_bias, scale):
    out, lse, _ = _host.forward(*_prepare(q, k, v, bias, q_bias, k_bias), scale)
    return out, lse


def _fwd_fake(q, k, v, bias, q_bias, k_bias, scale):
    B, H, Lk, D = k.shape
    Lq = q.shape[2]
    return q.new_empty((B, H, Lq, D)), q.new_empty((B, H, Lq), dtype=torch.float32)


def _bwd_impl(dout, dlse, q, k, v, bias, q_bias, k_bias, out, lse, scale, needs):
    ins = _prepare(q, k, v, bias, q_bias, k_bias)
    grads = _run_backward(dout, dlse, *ins, out, lse, scale, needs, None)
    return [g for g, n in zip(grads, needs, strict=True) if n]


def _bwd_fake(dout, dlse, q, k, v, bias, q_bias, k_bias, out, lse, scale, needs):
    ins = (q, k, v, bias, q_bias, k_bias)
    return [t.new_empty(t.shape) for t, n in zip(ins, needs, strict=True) if n]


attention_fwd = torch.library.custom_op("brainattn::attention_fwd", _fwd_impl, mutates_args=(),
                                        schema=_FWD_SCHEMA)
attention_fwd.register_fake(_fwd_fake)
attention_bwd = torch.library.custom_op("brainattn::attention_bwd", _bwd_impl, mutates_args=(),
                                        schema=_BWD_SCHEMA)
attention_bwd.register_fake(_bwd_fake)


def _setup_context(ctx, inputs, output):
    q, k, v, bias, q_bias, k_bias, scale = inputs
    ctx.save_for_backward(q, k, v, bias, q_bias, k_bias, *output)
    ctx.scale = scale
    ctx.set_materialize_grads(False)


def _op_backward(ctx, dout, dlse):
    q, k, v, bias, q_bias, k_bias, out, lse = ctx.saved_tensors
    needs = [bool(n) and t is not None for n, t in
             zip(ctx.needs_input_grad[:6], (q, k, v, bias, q_bias, k_bias), strict=True)]
    grads = iter(attention_bwd(dout, dlse, q, k, v, bias, q_bias, k_bias, out, lse,
                               ctx.scale, needs))
    return (*(next(grads) if n else None for n in needs), None)


attention_fwd.register_autograd(_op_backward, setup_context=_setup_context)


class TritonAttention(torch.autograd.Function):
    """The eager door: forward saves (out, lse) and the plan; backward recomputes the
    probabilities."""

    @staticmethod
    def forward(ctx, q, k, v, bias, q_bias, k_bias, scale):
        q, k, v, bias, q_bias, k_bias = _prepare(q, k, v, bias, q_bias, k_bias)
        out, lse, plan = _host.forward(q, k, v, bias, q_bias, k_bias, scale)
        ctx.save_for_backward(q, k, v, bias, q_bias, k_bias, out, lse)
        ctx.scale = scale
        ctx.plan = plan
        ctx.set_materialize_grads(False)
        return out, lse

    @staticmethod
    def backward(ctx, dout, dlse):
        q, k, v, bias, q_bias, k_bias, out, lse = ctx.saved_tensors
        grads = _run_backward(dout, dlse, q, k, v, bias, q_bias, k_bias, out, lse, ctx.scale,
                              ctx.needs_input_grad[:6], ctx.plan)
        ctx.plan = None
        return (*grads, None)


_PLAIN = (torch.Tensor, torch.nn.Parameter)


def plain_eager(*tensors) -> bool:
    """Not compiling, and every given tensor a plain one (no fake tensor or subclass): calls
    that may launch kernels directly through an autograd Function."""
    return not torch.compiler.is_compiling() and all(
        t is None or type(t) in _PLAIN for t in tensors)


def attention_triton(q, k, v, bias, q_bias, k_bias, scale: float):
    """Triton path of :func:`brainattn.kernels.attention`; returns ``(out, lse)``."""
    if not plain_eager(q, k, v, bias, q_bias, k_bias):
        return attention_fwd(q, k, v, bias, q_bias, k_bias, scale)
    return TritonAttention.apply(q, k, v, bias, q_bias, k_bias, scale)
