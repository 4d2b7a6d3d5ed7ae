"""The Triton path as a PyTorch operator: torch.library checks, fake-tensor shapes, and
``torch.compile(fullgraph=True)`` over an encoder equal to eager, forward and backward.

On a machine without a GPU the kernels run in Triton's interpreter (conftest) at tiny sizes and
the compiler is ``aot_eager`` (dynamo's graph capture and AOTAutograd's fake-tensor tracing of
forward and backward, without inductor's code generation); on a GPU the last test compiles
with inductor.
"""

import numpy as np
import pytest
import torch

from brainattn.kernels import attention, prf_bias_factors

pytestmark = pytest.mark.triton
pytest.importorskip("triton")

GPU = torch.cuda.is_available()
DEV = "cuda" if GPU else "cpu"


def _ops():
    from brainattn.kernels import _ops

    return _ops


def _recording_backend(graphs):
    """aot_eager that keeps the forward and backward graphs it compiles."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    def keep(gm, _inputs):
        graphs.append(gm)
        return make_boxed_func(gm.forward)

    return aot_autograd(fw_compiler=keep, bw_compiler=keep)


def _targets(graphs) -> set:
    return {str(n.target) for gm in graphs for n in gm.graph.nodes if n.op == "call_function"}


@pytest.mark.slow
def test_custom_op_passes_torch_library_checks():
    """Schema, fake implementation against the real kernels, the autograd registration, and
    AOTAutograd's tracing of forward and backward with dynamic shapes (``opcheck``), on a call
    with a dense and a low-rank bias and broadcast queries."""
    g = torch.Generator().manual_seed(0)
    B, H, Lq, Lk, D, R = 2, 2, 9, 13, 16, 3
    q = torch.randn(1, H, Lq, D, generator=g)
    k, v = (torch.randn(B, H, Lk, D, generator=g) for _ in range(2))
    bias = torch.randn(H, Lq, Lk, generator=g)
    qb = torch.randn(1, H, Lq, R, generator=g) * 0.5
    kb = torch.randn(1, 1, Lk, R, generator=g) * 0.5
    args = [t.to(DEV).requires_grad_() for t in (q, k, v, bias, qb, kb)] + [0.3]
    result = torch.library.opcheck(_ops().attention_fwd, args)
    assert set(result.values()) == {"SUCCESS"}, result


def test_fake_tensors_infer_shapes_forward_and_backward(monkeypatch):
    """Under FakeTensorMode the public function runs no kernel: shapes and dtypes come from the
    fake implementations, and so do the gradients' through the registered backward."""
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

    monkeypatch.setenv("BRAINATTN_ATTENTION", "triton")
    B, H, Lq, Lk, D = 3, 2, 7, 11, 32
    with FakeTensorMode():
        q = torch.empty(1, H, Lq, D, device=DEV, dtype=torch.float16, requires_grad=True)
        k = torch.empty(B, H, Lk, D, device=DEV, dtype=torch.float16, requires_grad=True)
        v = torch.empty(B, H, Lk, D, device=DEV, dtype=torch.float16, requires_grad=True)
        mu = torch.empty(H, Lq, 2, device=DEV, requires_grad=True)
        sigma = torch.ones(H, Lq, device=DEV, requires_grad=True)
        qb, kb = prf_bias_factors(mu, sigma, torch.empty(Lk, 2, device=DEV), validate=False)
        out, lse = attention(q, k, v, q_bias=qb, k_bias=kb, return_lse=True)
        assert isinstance(out, FakeTensor)
        assert out.shape == (B, H, Lq, D) and out.dtype == torch.float16
        assert lse.shape == (B, H, Lq) and lse.dtype == torch.float32
        (out.float().sum() + lse.sum()).backward()
        for t in (q, k, v, mu, sigma):
            assert t.grad.shape == t.shape and t.grad.dtype == t.dtype


@pytest.mark.slow
@pytest.mark.parametrize("path", ["triton", "torch"])
def test_compiled_encoder_matches_eager(path, monkeypatch):
    """``torch.compile(fullgraph=True)`` over the transformer encoder (pRF prior on): one graph,
    the Triton path as the custom forward and backward ops in it, and the compiled step equals
    the eager one (output and every parameter's gradient)."""
    from brainattn.encoders.transformer import TransformerModule

    monkeypatch.setenv("BRAINATTN_ATTENTION", path)
    vq = np.sort(np.random.default_rng(0).integers(0, 3, 20))
    vq[:3] = np.arange(3)
    m = TransformerModule(16, 8, 20, vertex_query=vq, grid=(4, 4), width=32, heads=2, ffn=16,
                          dropout=0.0, prf_bias=True, seed=0).to(DEV)
    x = torch.randn(2, 16, 8, generator=torch.Generator().manual_seed(1)).to(DEV)

    def step(fn):
        m.zero_grad(set_to_none=True)
        y = fn(x)
        y.square().sum().backward()
        return y.detach(), {n: p.grad.clone() for n, p in m.named_parameters()
                            if p.grad is not None}

    ref, ref_grads = step(m)
    graphs = []
    torch._dynamo.reset()
    got, grads = step(torch.compile(m, fullgraph=True, backend=_recording_backend(graphs)))
    targets = _targets(graphs)
    uses_op = {"brainattn.attention_fwd.default", "brainattn.attention_bwd.default"} <= targets
    assert uses_op == (path == "triton"), sorted(t for t in targets if "brainattn" in t)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    assert grads.keys() == ref_grads.keys() and any("prf" in n for n in grads)
    for name, g in grads.items():
        torch.testing.assert_close(g, ref_grads[name], rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.slow
@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="needs a CUDA device")
def test_gpu_inductor_compiled_attention_matches_eager():
    """Inductor over a function with projections around the kernel (broadcast queries, the pRF
    prior, the fused-dq shape on sm_90+): one graph, bf16 output and gradients as eager's."""
    g = torch.Generator(device="cuda").manual_seed(0)
    B, H, Lq, Lk, D = 4, 2, 2050, 130, 64
    q0 = torch.randn(1, H, Lq, D, device="cuda", generator=g)
    k0 = torch.randn(B, H, Lk, D, device="cuda", generator=g)
    w = torch.randn(D, D, device="cuda", generator=g) / D**0.5
    mu = (torch.rand(H, Lq, 2, device="cuda", generator=g) * 2 - 1)
    sigma = torch.rand(H, Lq, device="cuda", generator=g) * 0.3 + 0.1
    lin = torch.linspace(-1, 1, 12, device="cuda")
    pos = torch.stack(torch.meshgrid(lin, lin, indexing="ij"), -1).reshape(-1, 2)[:Lk]
    leaves = [t.requires_grad_() for t in (q0, k0, w, mu, sigma)]

    def f(q0, k0, w, mu, sigma):
        qb, kb = prf_bias_factors(mu, sigma, pos, validate=False)
        q, k = (q0 @ w).bfloat16(), (k0 @ w).bfloat16()
        out = attention(q, k, k, q_bias=qb, k_bias=kb)
        return out.float().square().sum()

    def step(fn):
        for t in leaves:
            t.grad = None
        loss = fn(*leaves)
        loss.backward()
        return [loss.detach()] + [t.grad.clone() for t in leaves]

    ref = step(f)
    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True)
    for _ in range(2):  # the second call runs the cached graph
        got = step(compiled)
    for name, a, b in zip(["loss", "q0", "k0", "w", "mu", "sigma"], got, ref, strict=True):
        err = ((a.double() - b.double()).norm() / b.double().norm()).item()
        assert err <= 5e-3, f"{name}: relative difference {err:.2e} from eager"


def test_prf_factors_of_fake_cuda_tensors_launch_no_kernel():
    """On CUDA ``prf_bias_factors`` builds the query factor with a Triton kernel; fake tensors
    (shape inference, AOT tracing) take the torch formula instead, so no kernel is handed
    a fake pointer. Fake CUDA tensors need no GPU, so this runs on the CPU too."""
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

    with FakeTensorMode():
        mu = torch.empty(2, 5, 2, device="cuda", requires_grad=True)
        sigma = torch.ones(2, 5, device="cuda", requires_grad=True)
        qb, kb = prf_bias_factors(mu, sigma, torch.empty(7, 2, device="cuda"), validate=False)
        assert isinstance(qb, FakeTensor) and qb.shape == (1, 2, 5, 4) and qb.is_cuda
        assert kb.shape == (1, 1, 7, 4)
