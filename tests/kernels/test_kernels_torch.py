"""Torch path of brainattn.kernels against the float64 reference; pRF factors; input checks."""

import math

import pytest
import torch

from brainattn.errors import ConfigError, ShapeError
from brainattn.kernels import attention, attention_weights, prf_bias_factors
from brainattn.kernels.reference import reference_attention


def _rel(a, b):
    a, b = a.detach().double(), b.detach().double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def _inputs(B, Bq, H, Lq, Lk, D, R, bias_h, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(Bq, H, Lq, D, generator=g).to(dtype)
    k = torch.randn(B, H, Lk, D, generator=g).to(dtype)
    v = torch.randn(B, H, Lk, D, generator=g).to(dtype)
    bias = None if bias_h is None else torch.randn(bias_h, Lq, Lk, generator=g)
    qb = kb = None
    if R:
        qb = torch.randn(1, H, Lq, R, generator=g) * 0.5
        kb = torch.randn(B, 1, Lk, R, generator=g) * 0.5
    return q, k, v, bias, qb, kb


@pytest.mark.parametrize(
    "B,Bq,H,Lq,Lk,D,R,bias_h",
    [(2, 1, 2, 13, 29, 16, 0, None), (3, 3, 1, 1, 7, 48, 4, 1), (1, 1, 2, 9, 33, 32, 2, 2)],
)
def test_torch_path_matches_reference_fp32(B, Bq, H, Lq, Lk, D, R, bias_h, monkeypatch):
    monkeypatch.setenv("BRAINATTN_ATTENTION", "torch")
    args = _inputs(B, Bq, H, Lq, Lk, D, R, bias_h, torch.float32, seed=B * 7 + Lq)
    leaves = [a.clone().requires_grad_() if a is not None else None for a in args]
    out, lse = attention(*leaves[:3], bias=leaves[3], q_bias=leaves[4], k_bias=leaves[5],
                         return_lse=True)
    refl = [a.detach().double().requires_grad_() if a is not None else None for a in args]
    rout, rlse = reference_attention(*refl[:3], bias=refl[3], q_bias=refl[4], k_bias=refl[5])
    assert out.shape == (B, H, Lq, D) and lse.shape == (B, H, Lq) and lse.dtype == torch.float32
    assert _rel(out, rout) < 1e-5 and _rel(lse, rlse) < 1e-6
    g = torch.randn_like(rout)
    gl = torch.randn_like(rlse)
    ((out * g.float()).sum() + (lse * gl.float()).sum()).backward()
    ((rout * g).sum() + (rlse * gl).sum()).backward()
    for a, r in zip(leaves, refl, strict=True):
        if a is not None:
            assert a.grad.shape == a.shape
            assert _rel(a.grad, r.grad) < 1e-5


def test_attention_weights_rows_sum_to_one_and_match_reference():
    q, k, v, bias, qb, kb = _inputs(2, 1, 3, 5, 11, 16, 4, 3, torch.float32)
    w = attention_weights(q, k, bias=bias, q_bias=qb, k_bias=kb)
    assert w.shape == (2, 3, 5, 11)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 3, 5))
    out = torch.einsum("bhij,bhjd->bhid", w, v)
    rout, _ = reference_attention(q, k, v, bias=bias, q_bias=qb, k_bias=kb)
    assert _rel(out, rout) < 1e-5


def test_prf_factors_are_exact_and_masks_zero_the_bias():
    g = torch.Generator().manual_seed(3)
    mu = (torch.rand(3, 6, 2, generator=g) * 2 - 1).double().requires_grad_()
    sigma = (torch.rand(3, 6, generator=g) * 0.5 + 0.1).double().requires_grad_()
    pos = torch.rand(10, 2, generator=g).double() * 2 - 1
    qb, kb = prf_bias_factors(mu, sigma, pos)
    assert qb.shape == (1, 3, 6, 4) and kb.shape == (1, 1, 10, 4)
    full = -((pos[None, None] - mu[:, :, None]) ** 2).sum(-1) / (2 * sigma[:, :, None] ** 2)
    low = (qb @ kb.transpose(-1, -2))[0]
    torch.testing.assert_close(low, full, rtol=1e-12, atol=1e-10)
    # gradients in mu and sigma equal those of the dense form
    w = torch.randn(3, 6, 10, dtype=torch.float64, generator=g)
    gm, gs = torch.autograd.grad((low * w).sum(), (mu, sigma))
    fm, fs = torch.autograd.grad((full * w).sum(), (mu, sigma))
    torch.testing.assert_close(gm, fm)
    torch.testing.assert_close(gs, fs)
    # a CLS token (NaN position) and an unconstrained query get bias exactly 0
    pos2 = torch.cat([torch.full((1, 2), math.nan, dtype=torch.float64), pos])
    tmask = torch.ones(11, dtype=torch.bool)
    tmask[0] = False
    qmask = torch.ones(6, dtype=torch.bool)
    qmask[2] = False
    qb2, kb2 = prf_bias_factors(mu, sigma, pos2, token_mask=tmask, query_mask=qmask)
    low2 = (qb2 @ kb2.transpose(-1, -2))[0]
    assert torch.all(low2[:, :, 0] == 0) and torch.all(low2[:, 2, :] == 0)
    torch.testing.assert_close(low2[:, [0, 1, 3, 4, 5], 1:], full[:, [0, 1, 3, 4, 5]])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_prf_factors_with_masks_never_synchronize():
    """With device masks and validate=False the factors (and their gradients) are built without
    a host sync (a training step's GPU would otherwise idle while the host catches up)."""
    dev = "cuda"
    mu = (torch.rand(2, 5, 2, device=dev) * 2 - 1).requires_grad_()
    sigma = (torch.rand(2, 5, device=dev) + 0.2).requires_grad_()
    pos = torch.rand(7, 2, device=dev) * 2 - 1
    tmask = torch.ones(7, dtype=torch.bool, device=dev)
    tmask[0] = False
    qmask = torch.ones(5, dtype=torch.bool, device=dev)
    qmask[1] = False
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        qb, kb = prf_bias_factors(mu, sigma, pos, token_mask=tmask, query_mask=qmask,
                                  validate=False)
        (qb @ kb.transpose(-1, -2)).sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    low = (qb @ kb.transpose(-1, -2))[0].detach()
    assert torch.all(low[:, :, 0] == 0) and torch.all(low[:, 1, :] == 0)
    assert mu.grad is not None and torch.isfinite(mu.grad).all()


def test_prf_rejects_bad_sigma_and_shapes():
    mu = torch.zeros(1, 4, 2)
    with pytest.raises(ConfigError, match="sigma"):
        prf_bias_factors(mu, torch.zeros(1, 4), torch.zeros(5, 2))
    with pytest.raises(ShapeError, match="sigma"):
        prf_bias_factors(mu, torch.ones(1, 3), torch.zeros(5, 2))
    with pytest.raises(ShapeError, match="positions"):
        prf_bias_factors(mu, torch.ones(1, 4), torch.zeros(5, 3))


def _ok():
    q = torch.randn(1, 2, 4, 16)
    k = torch.randn(3, 2, 6, 16)
    return q, k, k.clone()


@pytest.mark.parametrize(
    "change,err,name",
    [
        (lambda a: {**a, "q": torch.randn(2, 2, 4, 16)}, ShapeError, "q"),
        (lambda a: {**a, "q": torch.randn(1, 2, 4, 32)}, ShapeError, "q"),
        (lambda a: {**a, "v": torch.randn(3, 2, 5, 16)}, ShapeError, "v"),
        (lambda a: {**a, "k": a["k"].half()}, ConfigError, "k"),
        (lambda a: {**a, "q": a["q"].long()}, ConfigError, "q"),
        (lambda a: {**a, "bias": torch.randn(2, 4, 5)}, ShapeError, "bias"),
        (lambda a: {**a, "bias": torch.randn(3, 4, 6)}, ShapeError, "bias"),
        (lambda a: {**a, "q_bias": torch.randn(1, 1, 4, 0), "k_bias": torch.randn(1, 1, 6, 0)},
         ShapeError, "rank"),
        (lambda a: {**a, "q_bias": torch.randn(1, 1, 4, 2), "k_bias": torch.randn(1, 1, 6, 3)},
         ShapeError, "k_bias"),
        (lambda a: {**a, "q_bias": torch.randn(1, 1, 4, 2)}, ShapeError, "k_bias"),
        (lambda a: {**a, "scale": float("nan")}, ConfigError, "scale"),
        (lambda a: {**a, "scale": float("inf")}, ConfigError, "scale"),
    ],
)
def test_bad_input_names_the_argument(change, err, name):
    q, k, v = _ok()
    a = change({"q": q, "k": k, "v": v})
    with pytest.raises(err, match=name):
        attention(a.pop("q"), a.pop("k"), a.pop("v"), **a)


def test_bad_backend_env(monkeypatch):
    monkeypatch.setenv("BRAINATTN_ATTENTION", "cuda-magic")
    with pytest.raises(ConfigError, match="BRAINATTN_ATTENTION"):
        attention(*_ok())


def test_torch_path_nan_pattern_matches_reference(monkeypatch):
    monkeypatch.setenv("BRAINATTN_ATTENTION", "torch")
    q, k, v, *_ = _inputs(2, 1, 2, 5, 9, 16, 0, None, torch.float32)
    q[0, 1, 3, 2] = math.nan
    k[1, 0, 4, 0] = math.nan
    v[0, 0, 2, 5] = math.nan
    out, lse = attention(q, k, v, return_lse=True)
    rout, rlse = reference_attention(q, k, v)
    assert torch.equal(out.isnan(), rout.isnan()) and torch.equal(lse.isnan(), rlse.isnan())
    assert 0 < int(rout.isnan().sum()) < rout.numel()
    fin = ~rout.isnan()
    assert _rel(out[fin], rout[fin]) < 1e-5


def test_auto_dispatch_uses_torch_for_cpu_tensors(monkeypatch):
    import brainattn.kernels.api as A

    monkeypatch.delenv("BRAINATTN_ATTENTION", raising=False)
    q, k, v = _ok()
    assert A._backend(q, 16) == "torch"
    monkeypatch.setenv("BRAINATTN_ATTENTION", "torch")
    assert A._backend(q, 16) == "torch"
    # float64 and odd head dims are fine on the torch path
    out = attention(q.double(), k.double(), v.double())
    assert out.dtype == torch.float64 and out.shape == (3, 2, 4, 16)


def test_torch_path_random_shapes_match_reference(monkeypatch):
    """Random shapes and broadcast patterns (q, bias heads, factor batch/heads) vs float64."""
    monkeypatch.setenv("BRAINATTN_ATTENTION", "torch")
    g = torch.Generator().manual_seed(11)

    def ri(lo, hi):
        return int(torch.randint(lo, hi + 1, (1,), generator=g))

    for _ in range(12):
        B, H, Lq, Lk, D, R = ri(1, 3), ri(1, 3), ri(1, 9), ri(1, 12), ri(1, 20), ri(1, 5)
        q = torch.randn(ri(0, 1) * (B - 1) + 1, H, Lq, D, generator=g)
        k = torch.randn(B, H, Lk, D, generator=g)
        v = torch.randn(B, H, Lk, D, generator=g)
        bias = torch.randn(ri(0, 1) * (H - 1) + 1, Lq, Lk, generator=g)
        qb = torch.randn(ri(0, 1) * (B - 1) + 1, ri(0, 1) * (H - 1) + 1, Lq, R, generator=g)
        kb = torch.randn(ri(0, 1) * (B - 1) + 1, ri(0, 1) * (H - 1) + 1, Lk, R, generator=g)
        scale = float(torch.rand((), generator=g)) + 0.1
        ins = [t.requires_grad_() for t in (q, k, v, bias, qb, kb)]
        out, lse = attention(*ins[:3], bias=ins[3], q_bias=ins[4], k_bias=ins[5], scale=scale,
                             return_lse=True)
        ref = [t.detach().double().requires_grad_() for t in ins]
        rout, rlse = reference_attention(*ref[:3], bias=ref[3], q_bias=ref[4], k_bias=ref[5],
                                         scale=scale)
        assert _rel(out, rout) < 1e-5 and _rel(lse, rlse) < 1e-5
        (out.sum() + lse.sum()).backward()
        (rout.sum() + rlse.sum()).backward()
        for a, r in zip(ins, ref, strict=True):
            assert a.grad.shape == a.shape and _rel(a.grad, r.grad) < 1e-5
