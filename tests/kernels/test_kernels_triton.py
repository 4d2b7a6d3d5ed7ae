"""Triton kernels against the float64 reference.

On a machine without a GPU they run in Triton's interpreter (conftest sets TRITON_INTERPRET=1)
at small sizes in float32 and float16 (the interpreter's bfloat16 dot is broken); on a GPU the
same tests run in bfloat16, float16 and float32.
"""

import math

import pytest
import torch

from brainattn.errors import ConfigError
from brainattn.kernels import attention, prf_bias_factors
from brainattn.kernels.reference import reference_attention

pytestmark = pytest.mark.triton
pytest.importorskip("triton")
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from brainattn.kernels._tile import factor_tile, fold, lr_grad  # noqa: E402

GPU = torch.cuda.is_available()
DEV = "cuda" if GPU else "cpu"
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if GPU else [])
TOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}


@pytest.fixture(autouse=True)
def _force_triton(monkeypatch):
    monkeypatch.setenv("BRAINATTN_ATTENTION", "triton")


def _rel(a, b):
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


# (B, Bq, H, Lq, Lk, D, dense bias heads or None, low-rank: None | "prf" | (Bf, Hf, R))
CASES = {
    "bcast-q-nobias-d16": (2, 1, 2, 19, 37, 16, None, None),
    "perbatch-q-dense-d48": (2, 2, 1, 33, 20, 48, 1, None),
    "bcast-q-prf-d32": (3, 1, 2, 21, 35, 32, None, "prf"),
    "dense+lowrank-d64": (2, 1, 2, 17, 40, 64, 2, (2, 1, 3)),
    "b1-lq1-d96": (1, 1, 1, 1, 33, 96, 1, None),
    "perbatch-factors-d128": (2, 2, 1, 9, 18, 128, None, (2, 1, 2)),
    # 98 keys = 64 + 34 = 3 * 32 + 2 (like a ViT's 962 = 15 * 64 + 2): narrow tails; the dk/dv
    # pass's 64-key programs (interpreted) end in a 32- and a 16-wide tile
    "bcast-q-tail-dense-d64": (2, 1, 2, 45, 98, 64, 2, None),
    # many query blocks, so the dq pass runs two batches per split (interpreted): the pRF
    # factor gradient summed over the batch before its dot, and the last split's reduction
    "bcast-q-prf-split-d32": (3, 1, 2, 200, 35, 32, None, "prf"),
}


def _make(case, dtype, seed):
    B, Bq, H, Lq, Lk, D, bh, lr = CASES[case]
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(Bq, H, Lq, D, generator=g)
    k = torch.randn(B, H, Lk, D, generator=g)
    v = torch.randn(B, H, Lk, D, generator=g)
    bias = None if bh is None else torch.randn(bh, Lq, Lk, generator=g)
    qb = kb = None
    if lr == "prf":
        mu = torch.rand(H, Lq, 2, generator=g) * 2 - 1
        sigma = torch.rand(H, Lq, generator=g) * 0.4 + 0.3
        side = math.ceil(math.sqrt(Lk))
        grid = torch.stack(torch.meshgrid(torch.linspace(-1, 1, side), torch.linspace(-1, 1, side),
                                          indexing="ij"), -1).reshape(-1, 2)[:Lk]
        qb, kb = prf_bias_factors(mu, sigma, grid)
    elif lr is not None:
        Bf, Hf, R = lr
        qb = torch.randn(Bf, Hf, Lq, R, generator=g) * 0.5
        kb = torch.randn(1, H, Lk, R, generator=g) * 0.5
    cast = [t.to(dtype) for t in (q, k, v)] + [bias, qb, kb]
    return [None if t is None else t.to(DEV).requires_grad_() for t in cast]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("case", list(CASES))
def test_triton_matches_reference(case, dtype):
    ins = _make(case, dtype, seed=hash(case) % 1000)
    q, k, v, bias, qb, kb = ins
    out, lse = attention(q, k, v, bias=bias, q_bias=qb, k_bias=kb, return_lse=True)
    B, _, H, Lq, Lk, D = CASES[case][:6]
    assert out.shape == (B, H, Lq, D) and out.dtype == dtype and lse.dtype == torch.float32
    g = torch.Generator().manual_seed(1)
    gout = torch.randn(out.shape, generator=g, dtype=torch.float64)
    glse = torch.randn(lse.shape, generator=g, dtype=torch.float64)
    ((out.double() * gout.to(DEV)).sum() + (lse.double() * glse.to(DEV)).sum()).backward()
    ref = [None if t is None else t.detach().double().cpu().requires_grad_() for t in ins]
    rout, rlse = reference_attention(ref[0], ref[1], ref[2], bias=ref[3], q_bias=ref[4],
                                     k_bias=ref[5])
    ((rout * gout).sum() + (rlse * glse).sum()).backward()
    tol = TOL[dtype]
    assert _rel(out, rout) <= tol
    assert _rel(lse, rlse) <= tol
    for name, a, r in zip(["q", "k", "v", "bias", "q_bias", "k_bias"], ins, ref, strict=True):
        if a is not None:
            assert a.grad.shape == a.shape and a.grad.dtype == a.dtype, name
            err = _rel(a.grad, r.grad)
            assert err <= tol, f"d{name}: relative error {err:.2e} > {tol:.0e}"
    from brainattn.kernels import _plan

    # the dq pass's last-split counters are back at zero for the next call
    assert all(int(c.abs().sum()) == 0 for c in _plan._CNT.values())


def test_triton_nan_pattern_matches_reference():
    q, k, v, *_ = _make("bcast-q-nobias-d16", torch.float32, seed=5)
    q, k, v = (t.detach().clone() for t in (q, k, v))
    q[0, 1, 3, 2] = math.nan  # row 3 of head 1, every batch (queries broadcast)
    k[1, 0, 30, 0] = math.nan  # every row of (b=1, h=0)
    v[0, 0, 2, 5] = math.nan  # column 5 of (b=0, h=0)
    out, lse = attention(q, k, v, return_lse=True)
    rout, rlse = reference_attention(q.cpu(), k.cpu(), v.cpu())
    assert torch.equal(out.isnan().cpu(), rout.isnan())
    assert torch.equal(lse.isnan().cpu(), rlse.isnan())
    assert 0 < int(rout.isnan().sum()) < rout.numel() // 2
    fin = ~rout.isnan()
    assert _rel(out.cpu()[fin], rout[fin]) < 1e-5
    # the backward runs through NaN without crashing and gives the reference's NaN pattern
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    attention(*leaves).sum().backward()
    refl = [t.cpu().double().requires_grad_() for t in (q, k, v)]
    reference_attention(*refl)[0].sum().backward()
    for a, r in zip(leaves, refl, strict=True):
        assert torch.equal(a.grad.isnan().cpu(), r.grad.isnan())
    assert leaves[2].grad.isfinite().any()  # dv of (b=0, h=0) rows stays finite


def test_triton_rejects_what_it_cannot_run():
    q = torch.randn(1, 1, 4, 16, dtype=torch.float64, device=DEV)
    k = torch.randn(2, 1, 5, 16, dtype=torch.float64, device=DEV)
    with pytest.raises(ConfigError, match="float16/bfloat16/float32"):
        attention(q, k, k)
    q = torch.randn(1, 1, 4, 20, device=DEV)
    k = torch.randn(2, 1, 5, 20, device=DEV)
    with pytest.raises(ConfigError, match="head dims"):
        attention(q, k, k)


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="needs a CUDA device")
def test_gpu_deterministic_and_no_quadratic_allocation():
    B, H, Lq, Lk, D = 8, 4, 2048, 512, 64
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(1, H, Lq, D, device="cuda", dtype=torch.bfloat16, generator=g)
    k = torch.randn(B, H, Lk, D, device="cuda", dtype=torch.bfloat16, generator=g)
    v = torch.randn(B, H, Lk, D, device="cuda", dtype=torch.bfloat16, generator=g)
    bias = torch.randn(H, Lq, Lk, device="cuda", generator=g)
    grads = []
    # a first call with the same gradients needed compiles and autotunes every pass (the
    # autotuner allocates a 256 MiB L2-flush buffer)
    gout = torch.randn(B, H, Lq, D, device="cuda", dtype=torch.bfloat16, generator=g)
    warm = [t.clone().requires_grad_() for t in (q, k, v, bias)]
    attention(*warm[:3], bias=warm[3]).backward(gout)
    del warm
    for _ in range(2):
        leaves = [t.clone().requires_grad_() for t in (q, k, v, bias)]
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        # the upstream gradient exists before: the peak is attention's own (out, lse, the dq
        # partials, dk, dv, dbias: ~41 MB here), not a loss's fp32 copies of out
        attention(*leaves[:3], bias=leaves[3]).backward(gout)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
        assert peak < B * H * Lq * Lk * 2, f"peak {peak} bytes reaches a B*H*Lq*Lk buffer"
        grads.append([t.grad for t in leaves])
    for a, b in zip(*grads, strict=True):
        assert torch.equal(a, b)


def test_split_factors_reproduce_the_low_rank_product():
    from brainattn.kernels._plan import split_pair

    g = torch.Generator().manual_seed(2)
    mu = torch.rand(2, 30, 2, generator=g) * 2 - 1
    sigma = torch.rand(2, 30, generator=g) * 0.2 + 0.02  # narrow pRFs: factors up to ~1e3
    pos = torch.rand(50, 2, generator=g) * 2 - 1
    qb, kb = prf_bias_factors(mu, sigma, pos)
    qa, ka = (t.cpu() for t in split_pair(qb.to(DEV), kb.to(DEV), 16))
    assert qa.dtype == torch.float16 and qa.shape == (1, 2, 30, 16) and ka.shape == (1, 1, 50, 16)
    approx = qa.double() @ ka.double().transpose(-1, -2)
    exact = qb.double() @ kb.double().transpose(-1, -2)
    scale = (qb.double().abs() @ kb.double().abs().transpose(-1, -2)).max()
    assert ((approx - exact).abs().max() / scale).item() < 2e-6


@pytest.mark.parametrize("R", [4, 3])
def test_split_kernel_lays_out_an_exact_fp16_hi_lo_split(R):
    """``_factors.split_rows`` (one Triton pass) writes [hi, hi, lo] (query) or [hi, lo, hi]
    (key) of the factor times its column scales, zero padded to 16 columns: hi is the fp16
    rounding of x = f * s (as torch rounds it) and hi + lo equals x to ~2^-22 (the GPU may fuse
    the remainder's multiply and subtraction, so lo is not compared bit for bit)."""
    from brainattn.kernels._factors import split_rows

    g = torch.Generator().manual_seed(8)
    f = torch.randn(2, 3, 300, R, generator=g) * 10 ** torch.randint(-3, 3, (R,), generator=g)
    s = torch.rand(R, generator=g) + 0.5
    x = f * s
    for query in (True, False):
        got = split_rows(f.to(DEV), s.to(DEV), 16, query).cpu()
        assert got.shape == (2, 3, 300, 16) and got.dtype == torch.float16
        first, second, third = (got[..., i * R:(i + 1) * R] for i in range(3))
        hi, lo = (first, third) if query else (first, second)
        assert torch.equal(hi, x.to(torch.float16))
        assert torch.equal(second if query else third, hi)
        err = (hi.double() + lo.double() - (f.double() * s.double())).abs()
        assert (err <= 2.0**-21 * x.double().abs() + 1e-7).all()
        assert not got[..., 3 * R:].any()


def test_prf_query_factor_kernels_match_torch_autograd():
    """The pRF query factor's Triton forward and backward (``_factors.PrfQueryFactor``, what
    ``prf_bias_factors`` runs on CUDA) against the torch formula and its autograd in float64,
    with the upstream gradient a row-padded view (as the fused pass hands it back)."""
    from brainattn.kernels._factors import PrfQueryFactor

    g = torch.Generator().manual_seed(9)
    mu = (torch.rand(3, 500, 2, generator=g) * 2 - 1).to(DEV).requires_grad_()
    sigma = (torch.rand(3, 500, generator=g) * 0.4 + 0.05).to(DEV).requires_grad_()
    up = torch.randn(3, 500, 8, generator=g)[..., :4]
    qb = PrfQueryFactor.apply(mu, sigma)
    qb.backward(up.to(DEV))
    m64 = mu.detach().cpu().double().requires_grad_()
    s64 = sigma.detach().cpu().double().requires_grad_()
    inv = 1.0 / (2.0 * s64**2)
    ref = torch.stack([2 * inv * m64[..., 0], 2 * inv * m64[..., 1], -inv,
                       -inv * (m64**2).sum(-1)], dim=-1)
    ref.backward(up.double())
    assert _rel(qb, ref) < 1e-6
    assert _rel(mu.grad, m64.grad) < 1e-6 and _rel(sigma.grad, s64.grad) < 1e-6


@triton.jit
def _split_kernel(F, OUT, n, s_r, s_c, RANK: tl.constexpr, GW: tl.constexpr, ROWS: tl.constexpr):
    """Stores ``factor_tile``'s (ROWS, GW) tile of the (n, RANK) factor F."""
    rows = tl.arange(0, ROWS)
    t = factor_tile(F, 0, rows, rows < n, s_r, s_c, RANK, GW)
    tl.store(OUT + rows[:, None] * GW + tl.arange(0, GW)[None, :], t)


def test_factor_tile_splits_into_an_exact_tf32_high_part_and_its_remainder():
    """The low-rank gradient's right operand: columns [0, R) the factor with its 13 low mantissa
    bits cleared (exact in tf32, which keeps 10), columns [GW/2, GW/2 + R) the remainder, zeros
    elsewhere; high + remainder is the factor exactly, and the remainder is below 2^-10 of it."""
    g = torch.Generator().manual_seed(3)
    R, GW, n = 4, 16, 13
    f = (torch.randn(n, R, generator=g) * torch.logspace(-3, 3, R)).t().contiguous().t()
    out = torch.full((16, GW), 7.0)
    f, out = f.to(DEV), out.to(DEV)
    _split_kernel[(1,)](f, out, n, f.stride(0), f.stride(1), RANK=R, GW=GW, ROWS=16)
    out = out.cpu()
    hi, lo = out[:n, :R], out[:n, GW // 2:GW // 2 + R]
    pad = torch.cat([out[:, R:GW // 2], out[:, GW // 2 + R:]], 1)
    f = f.cpu()
    assert torch.all(hi.view(torch.int32) & 0x1FFF == 0)
    assert torch.equal(hi + lo, f)
    assert torch.all(lo.abs() <= f.abs() * 2.0**-10)
    assert torch.all(pad == 0) and torch.all(out[n:] == 0)


@triton.jit
def _grad_kernel(DS, F, OUT, n, s_r, s_c, X: tl.constexpr, RANK: tl.constexpr,
                 GW: tl.constexpr, ROWS: tl.constexpr):
    """Stores fold(ds @ factor_tile(F)) (X, GW/2) for ds (X, ROWS) and the (n, RANK) factor F."""
    rows = tl.arange(0, ROWS)
    ds = tl.load(DS + tl.arange(0, X)[:, None] * ROWS + rows[None, :])
    acc = lr_grad(tl.zeros([X, GW], tl.float32), ds, F, 0, rows, rows < n, s_r, s_c, RANK,
                  "ieee", GW)
    tl.store(OUT + tl.arange(0, X)[:, None] * (GW // 2) + tl.arange(0, GW // 2)[None, :],
             fold(acc, GW))


@pytest.mark.parametrize("R", [1, 3, 4, 8])
def test_folded_low_rank_gradient_is_ds_times_the_factor(R):
    """The gradient dot on the split factor, its two column halves folded in registers: the
    first R columns are ds @ factor (to fp32 rounding), the columns after them zero."""
    g = torch.Generator().manual_seed(R)
    X, ROWS, n = 16, 32, 29
    GW = max(16, 1 << (2 * R - 1).bit_length())
    f = torch.randn(n, R, generator=g) * torch.logspace(-2, 2, R)
    ds = torch.randn(X, ROWS, generator=g)
    out = torch.full((X, GW // 2), 7.0)
    f, ds, out = f.to(DEV), ds.to(DEV), out.to(DEV)
    _grad_kernel[(1,)](ds, f, out, n, f.stride(0), f.stride(1), X=X, RANK=R, GW=GW, ROWS=ROWS)
    ref = ds[:, :n].double().cpu() @ f.double().cpu()
    out = out.cpu()
    assert _rel(out[:, :R], ref) < 1e-6
    assert torch.all(out[:, R:] == 0)


def test_triton_partial_gradients_and_fully_masked_keys():
    """Only some inputs need gradients (the other passes are skipped); a key masked by a -inf
    bias gets zero weight and zero gradient."""
    q, k, v, bias, *_ = _make("perbatch-q-dense-d48", torch.float32, seed=9)
    q, k, v, bias = (t.detach().clone() for t in (q, k, v, bias))
    bias[:, :, 3] = -math.inf
    qq = q.clone().requires_grad_()
    out = attention(qq, k, v, bias=bias)
    rout, _ = reference_attention(q.cpu(), k.cpu(), v.cpu(), bias=bias.cpu())
    assert _rel(out, rout) < 1e-5
    out.square().sum().backward()
    assert qq.grad is not None and k.grad is None and v.grad is None
    vv = v.clone().requires_grad_()
    attention(q, k, vv, bias=bias).sum().backward()
    assert torch.all(vv.grad[:, :, 3] == 0) and vv.grad.abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["float32", "float16"])
def test_triton_unsplit_broadcast_dq_matches_reference(dtype, monkeypatch):
    """With the batch not split (a card 'full' of query blocks), the dq pass of broadcast queries
    sums the whole batch in registers and stores dq (and the factor gradients) directly."""
    from brainattn.kernels import _plan

    q, k, v, bias, qb, kb = _make("bcast-q-prf-d32", dtype, seed=3)
    monkeypatch.setitem(_plan._SMS, q.device, 0)  # -> one batch split
    out, lse = attention(q, k, v, bias=bias, q_bias=qb, k_bias=kb, return_lse=True)
    g = torch.Generator().manual_seed(4)
    gout = torch.randn(out.shape, generator=g, dtype=torch.float64).to(DEV)
    ((out.double() * gout).sum() + lse.double().sum()).backward()
    ref = [t.detach().double().cpu().requires_grad_() for t in (q, k, v, qb, kb)]
    rout, rlse = reference_attention(ref[0], ref[1], ref[2], q_bias=ref[3], k_bias=ref[4])
    ((rout * gout.cpu()).sum() + rlse.sum()).backward()
    for name, a, r in zip(["q", "k", "v", "q_bias", "k_bias"], (q, k, v, qb, kb), ref,
                          strict=True):
        err = _rel(a.grad, r.grad)
        assert err <= TOL[dtype], f"d{name}: relative error {err:.2e}"


def test_triton_query_factor_gradient_alone():
    """k_bias built from fixed token positions needs no gradient (the encoders' pRF case): only
    q's side of the low-rank gradient runs, and it matches the reference."""
    q, k, v, bias, qb, kb = _make("bcast-q-prf-d32", torch.float16, seed=11)
    kb = kb.detach()
    out = attention(q, k, v, q_bias=qb, k_bias=kb)
    gout = torch.randn(out.shape, generator=torch.Generator().manual_seed(12),
                       dtype=torch.float64)
    (out.double() * gout.to(DEV)).sum().backward()
    ref = [t.detach().double().cpu().requires_grad_() for t in (q, k, v, qb)]
    rout, _ = reference_attention(*ref[:3], q_bias=ref[3], k_bias=kb.double().cpu())
    (rout * gout).sum().backward()
    assert kb.grad is None
    for a, r in zip((q, k, v, qb), ref, strict=True):
        assert _rel(a.grad, r.grad) <= 1e-2


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="needs a CUDA device")
def test_gpu_direct_launch_repeats_and_realigns():
    """Repeated calls go through the direct launch (after the tuning and capture calls) and
    give bitwise the same result; inputs at another alignment are captured anew and stay exact."""
    from brainattn.kernels import _launch

    ins = _make("bcast-q-tail-dense-d64", torch.bfloat16, seed=3)
    B, H, Lk, D = ins[1].shape

    def run(q, k, v, bias):
        leaves = [t.detach().clone().requires_grad_() for t in (q, k, v, bias)]
        out = attention(*leaves[:3], bias=leaves[3])
        out.float().square().sum().backward()
        return [out.detach()] + [t.grad for t in leaves]

    first = run(*ins[:4])
    for _ in range(3):
        for a, b in zip(run(*ins[:4]), first, strict=True):
            assert torch.equal(a, b)
    if _launch._driver() is not None:
        assert any(e is not None for e in _launch.FAST.values()), "direct launch never captured"
    # k and v 2 bytes off a 16-byte boundary (a view into a larger buffer)
    shifted = []
    for t in ins[1:3]:
        buf = torch.empty(t.numel() + 1, device=t.device, dtype=t.dtype)
        view = buf[1:].view(t.shape)
        view.copy_(t.detach())
        assert view.data_ptr() % 16 != 0
        shifted.append(view)
    for _ in range(3):
        got = run(ins[0], *shifted, ins[3])
        for a, b in zip(got, first, strict=True):
            assert _rel(a, b) <= 1e-2
    ref = [t.detach().double().cpu().requires_grad_() for t in ins[:4]]
    rout, _ = reference_attention(*ref[:3], bias=ref[3])
    rout.square().sum().backward()
    assert _rel(got[0], rout) <= 1e-2
    for a, r in zip(got[1:], ref, strict=True):
        assert _rel(a, r.grad) <= 2e-2


@pytest.mark.slow
@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="needs a CUDA device")
def test_gpu_step_captured_in_a_cuda_graph_matches_eager():
    """fwd+bwd with broadcast queries over batch splits (the dq pass's in-kernel reduction and
    its counters) captured in a CUDA graph: replays equal the eager step, twice."""
    B, H, Lq, Lk, D = 64, 4, 50, 130, 48  # few query blocks: the dq pass splits the batch
    leaves, gout = _cuda_bcast_inputs(B, H, Lq, Lk, D, seed=7)
    ref_out, ref, out, graph = _eager_then_captured(leaves, gout)
    for _ in range(2):
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(out, ref_out)
        for a, b in zip(leaves, ref, strict=True):
            assert torch.equal(a.grad, b)


def _cuda_bcast_inputs(B, H, Lq, Lk, D, seed):
    """bf16 leaves q (1, H, Lq, D), k, v (B, H, Lk, D) on the GPU, and an upstream gradient."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randn(1, H, Lq, D, device="cuda", dtype=torch.bfloat16, generator=g)
    k = torch.randn(B, H, Lk, D, device="cuda", dtype=torch.bfloat16, generator=g)
    v = torch.randn(B, H, Lk, D, device="cuda", dtype=torch.bfloat16, generator=g)
    gout = torch.randn(B, H, Lq, D, device="cuda", dtype=torch.bfloat16, generator=g)
    return [t.requires_grad_() for t in (q, k, v)], gout


def _eager_then_captured(leaves, gout):
    """Three eager fwd+bwd steps on a side stream (they compile and tune, as ``brainattn fit``'s
    warm-up does), then the step captured in a CUDA graph (not yet replayed). Returns the last
    eager output and gradients, the graph's output tensor and the graph."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            for t in leaves:
                t.grad = None
            ref_out = attention(*leaves)
            ref_out.backward(gout)
    torch.cuda.current_stream().wait_stream(side)
    ref = [t.grad.clone() for t in leaves]
    graph = torch.cuda.CUDAGraph()
    for t in leaves:
        t.grad = None
    with torch.cuda.graph(graph):
        out = attention(*leaves)
        out.backward(gout)
    return ref_out.detach(), ref, out, graph


@pytest.mark.parametrize("scale", [0.37, -0.37, 0.0], ids=["positive", "negative", "zero"])
@pytest.mark.parametrize("case,dtype", [("bcast-q-nobias-d16", torch.float32),
                                        ("bcast-q-prf-d32", torch.float16)],
                         ids=["nobias-float32", "prf-float16"])
def test_triton_scale_sign(scale, case, dtype):
    """Without a dense bias the forward takes the row max of the raw q k^T (plus the low-rank
    term, whose split factors carry 1/scale) times a positive scale; a negative scale takes the
    general path, and a zero scale (nothing to fold 1/scale into) exact fp32 factor products.
    All match the reference, gradients too."""
    ins = _make(case, dtype, seed=9)
    q, k, v, _, qb, kb = ins
    out, lse = attention(q, k, v, q_bias=qb, k_bias=kb, scale=scale, return_lse=True)
    gout = torch.randn(out.shape, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    ((out.double() * gout.to(DEV)).sum() + lse.double().sum()).backward()
    leaves = [t for t in (q, k, v, qb, kb) if t is not None]
    ref = [t.detach().double().cpu().requires_grad_() for t in leaves]
    rout, rlse = reference_attention(*ref[:3], q_bias=ref[3] if qb is not None else None,
                                     k_bias=ref[4] if qb is not None else None, scale=scale)
    ((rout * gout).sum() + rlse.sum()).backward()
    tol = TOL[dtype]
    assert _rel(out, rout) <= tol and _rel(lse, rlse) <= tol
    for a, r in zip(leaves, ref, strict=True):
        assert _rel(a.grad, r.grad) <= tol


def _record_launches(monkeypatch) -> list:
    """The kernels ``_launch`` is handed from now on, in order (the launches still run)."""
    from brainattn.kernels import _host

    seen = []
    launch = _host.launch

    def spy(kernel, *a, **kw):
        seen.append(kernel)
        return launch(kernel, *a, **kw)

    monkeypatch.setattr(_host, "launch", spy)
    return seen


def _interpreted_descriptor_reduce(self, kind, desc, value, indices):
    """A TMA reduction (``tensor_descriptor.atomic_add``) for Triton's interpreter, which has
    none: the box's in-bounds elements added in place (programs run one at a time there)."""
    from triton._C.libtriton import ir

    assert kind == ir.DESCRIPTOR_REDUCE_KIND.ADD
    ptrs, mask = desc.materialize_pointers(indices)
    old = self.create_masked_load(ptrs, mask, None, None, None, False)
    new = type(value)(old.data + value.data.astype(old.data.dtype), value.dtype)
    return self.create_masked_store(ptrs, new, mask, None, None)


@pytest.mark.skipif(GPU, reason="the GPU runs the fused pass itself (the test below)")
@pytest.mark.parametrize("lowrank", ["prf", "factors", None])
def test_interpreted_fused_dq_matches_reference(lowrank, monkeypatch):
    """The dk/dv pass with dq and dq_bias fused in (TMA reductions into fp32 (H, Lq, D) and
    (H, Lq, R) buffers; on the GPU only on sm_90+), run in the interpreter with its
    descriptor reduction emulated: the query factor's gradient, folded from the split factor's
    two column halves in registers before each reduction, and dq, dk, dv match the float64
    reference. 150 queries are 2 full 64-query steps and a clipped one; 98 keys end in a 32- and
    a 16-wide program; "factors": R = 3 (the 8-column box clipped to 3) with a learned
    per-batch key factor."""
    from triton.runtime import interpreter

    from brainattn.kernels import _bwd_dq, _bwd_kv, _plan

    monkeypatch.setattr(interpreter.InterpreterBuilder, "create_descriptor_reduce",
                        _interpreted_descriptor_reduce, raising=False)
    monkeypatch.setattr(_plan, "fused_dq", lambda *a: True)
    B, H, Lq, Lk, D = 3, 2, 150, 98, 32
    g = torch.Generator().manual_seed(4)
    ins = [torch.randn(1, H, Lq, D, generator=g), torch.randn(B, H, Lk, D, generator=g),
           torch.randn(B, H, Lk, D, generator=g)]
    learn = [True, True, True]
    if lowrank == "prf":
        mu = torch.rand(H, Lq, 2, generator=g) * 2 - 1
        sigma = torch.rand(H, Lq, generator=g) * 0.4 + 0.3
        lin = torch.linspace(-1, 1, 10)
        pos = torch.stack(torch.meshgrid(lin, lin, indexing="ij"), -1).reshape(-1, 2)[:Lk]
        ins += list(prf_bias_factors(mu, sigma, pos))
        learn += [True, False]
    elif lowrank == "factors":
        ins += [torch.randn(1, H, Lq, 3, generator=g) * 0.5,
                torch.randn(B, H, Lk, 3, generator=g) * 0.5]
        learn += [True, True]
    gout = torch.randn(B, H, Lq, D, generator=g, dtype=torch.float64)
    seen = _record_launches(monkeypatch)
    leaves = [t.to(torch.float16 if i < 3 else t.dtype, copy=True).requires_grad_(w)
              for i, (t, w) in enumerate(zip(ins, learn, strict=True))]
    out = attention(*leaves[:3], q_bias=leaves[3] if lowrank else None,
                    k_bias=leaves[4] if lowrank else None)
    (out.double() * gout).sum().backward()
    assert _bwd_kv.bwd_kv_dq in seen and _bwd_dq.bwd_q not in seen
    ref = [t.double().requires_grad_(w) for t, w in zip(ins, learn, strict=True)]
    rout, _ = reference_attention(*ref[:3], q_bias=ref[3] if lowrank else None,
                                  k_bias=ref[4] if lowrank else None)
    (rout * gout).sum().backward()
    for name, a, r in zip("q k v q_bias k_bias".split(), leaves, ref, strict=False):
        if r.requires_grad:
            assert a.grad.shape == r.shape
            err = _rel(a.grad, r.grad)
            assert err <= TOL[torch.float16], f"d{name}: relative error {err:.2e}"


@pytest.mark.parametrize("scales", [(1e-12, 1e-12), (1e12, 1e12), (1e-12, 0.0)],
                         ids=["1e-12", "1e12", "1e-12-and-none"])
def test_fused_dq_bias_keeps_its_precision_at_any_gradient_scale(scales, monkeypatch):
    """The fused pass forms dq_bias with an fp16 dot: dS enters it times a power of two per
    (head, query), the smallest the pre-pass's bound on |dS| gives over the batch, so an
    upstream gradient 1e-12 or 1e12 times the usual one (a loss averaged over many vertices, or
    summed) neither flushes to zero nor overflows fp16, and a batch without gradient does not
    set the scale of one with a small one: the pRF factor's gradient keeps the error it has at
    scale 1 (batch b's upstream gradient times scales[b]). On sm_90+ as the encoders train
    (bf16 inputs); interpreted on the CPU (the descriptor reduction emulated, the fused pass
    forced) in float32, whose upstream gradient itself can be that small or large (the
    interpreter's bf16 is not exact)."""
    from brainattn.kernels import _bwd_kv, _plan

    if GPU:
        if torch.cuda.get_device_capability()[0] < 9 or not _plan.tma_reduce_available():
            pytest.skip("the fused dq needs TMA (sm_90+) and a Triton with descriptor reductions")
    else:
        from triton.runtime import interpreter

        monkeypatch.setattr(interpreter.InterpreterBuilder, "create_descriptor_reduce",
                            _interpreted_descriptor_reduce, raising=False)
        monkeypatch.setattr(_plan, "fused_dq", lambda *a: True)
    B, H, Lq, Lk, D = 2, 1, 2050 if GPU else 130, 65, 64
    dtype = torch.bfloat16 if GPU else torch.float32
    g = torch.Generator().manual_seed(5)
    q = torch.randn(1, H, Lq, D, generator=g)
    k, v = torch.randn(B, H, Lk, D, generator=g), torch.randn(B, H, Lk, D, generator=g)
    mu = torch.rand(H, Lq, 2, generator=g) * 2 - 1
    sigma = torch.rand(H, Lq, generator=g) * 0.3 + 0.1
    lin = torch.linspace(-1, 1, 8)
    pos = torch.cat([torch.zeros(1, 2),
                     torch.stack(torch.meshgrid(lin, lin, indexing="ij"), -1).reshape(-1, 2)])
    qb, kb = prf_bias_factors(mu, sigma, pos)
    gout = torch.randn(B, H, Lq, D, generator=g, dtype=torch.float64)
    seen = _record_launches(monkeypatch)
    errs = []
    for s in ([float(x > 0) for x in scales], scales):  # the same batches at scale 1 first
        gs = gout * torch.tensor(s, dtype=torch.float64)[:, None, None, None]
        ref = qb.double().requires_grad_()
        rout, _ = reference_attention(q.double(), k.double(), v.double(), q_bias=ref,
                                      k_bias=kb.double())
        (rout * gs).sum().backward()
        leaf = qb.detach().to(DEV, copy=True).requires_grad_()
        # q, k, v learned too: the fused pass runs when dq and dk/dv are wanted
        qkv = [t.to(DEV, dtype).requires_grad_() for t in (q, k, v)]
        out = attention(*qkv, q_bias=leaf, k_bias=kb.to(DEV))
        (out.double() * gs.to(DEV)).sum().backward()
        errs.append(_rel(leaf.grad, ref.grad))
    assert _bwd_kv.bwd_kv_dq in seen
    assert errs[0] <= TOL[torch.bfloat16], errs  # fp16 dS: ~1e-4 even from float32 inputs
    assert errs[1] <= 1.5 * errs[0], errs


_BF, _FP = torch.bfloat16, torch.float16


@pytest.mark.slow
@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="needs a CUDA device")
@pytest.mark.parametrize(("D", "dtype", "lowrank"), [
    (64, _BF, None), (64, _FP, None), (64, _BF, "prf"), (64, _FP, "prf"), (64, _FP, "factors"),
    (64, _BF, "factors"), (64, _BF, "lse"), (48, _BF, "prf"), (128, _FP, None)],
    ids=lambda x: str(x).split(".")[-1])
def test_gpu_fused_dq_matches_reference_and_the_separate_pass(D, dtype, lowrank, monkeypatch):
    """Many broadcast queries without a dense bias: on sm_90+ dq is added inside the dk/dv pass
    by TMA reductions (no separate dq pass), and with a low-rank bias so is dq_bias = dS k_bias.
    Lq = 2050 is not a multiple of any block (the TMA clips the last block's rows).
    "prf": the pRF factors, the query factor learned (1, H, Lq, 4), the key factor fixed;
    "factors": R = 3 (the dq_bias box clipped to 3 of its 16 columns), a query factor shared
    by the heads (1, 1, Lq, 3) and a learned per-batch key factor (B, H, Lk, 3); "lse": no
    bias, the loss also reads the log-sum-exp (dlse enters the pre-pass's delta). The
    gradients match the float64 reference, and the separate pass; with deterministic
    algorithms requested the separate (bitwise repeatable) pass runs. Head dims 48 and 128
    keep the separate pass (the fused one was slower there)."""
    from brainattn.kernels import _bwd_dq, _bwd_kv, _plan

    if torch.cuda.get_device_capability()[0] < 9 or not _plan.tma_reduce_available():
        pytest.skip("the fused dq needs TMA (sm_90+) and a Triton with descriptor reductions")
    B, H, Lq, Lk = 3, 2, 2050, 130
    g = torch.Generator().manual_seed(11)
    ins = [torch.randn(1, H, Lq, D, generator=g), torch.randn(B, H, Lk, D, generator=g),
           torch.randn(B, H, Lk, D, generator=g)]
    learn = [True, True, True]
    if lowrank == "prf":
        mu = torch.rand(H, Lq, 2, generator=g) * 2 - 1
        sigma = torch.rand(H, Lq, generator=g) * 0.4 + 0.3
        side = math.ceil(math.sqrt(Lk))
        lin = torch.linspace(-1, 1, side)
        pos = torch.stack(torch.meshgrid(lin, lin, indexing="ij"), -1).reshape(-1, 2)[:Lk]
        ins += list(prf_bias_factors(mu, sigma, pos))
        learn += [True, False]
    elif lowrank == "factors":
        ins += [torch.randn(1, 1, Lq, 3, generator=g) * 0.5,
                torch.randn(B, H, Lk, 3, generator=g) * 0.5]
        learn += [True, True]
    gout = torch.randn(B, H, Lq, D, generator=g, dtype=torch.float64)
    glse = torch.randn(B, H, Lq, generator=g, dtype=torch.float64)
    lr = lowrank in ("prf", "factors")
    seen = _record_launches(monkeypatch)

    def loss(out, lse):
        s = (out.double() * gout.to(out.device)).sum()
        return s + (lse.double() * glse.to(out.device)).sum() if lowrank == "lse" else s

    def grads():
        leaves = [t.to(DEV, dtype if i < 3 else t.dtype).requires_grad_(w)
                  for i, (t, w) in enumerate(zip(ins, learn, strict=True))]
        out, lse = attention(*leaves[:3], q_bias=leaves[3] if lr else None,
                             k_bias=leaves[4] if lr else None, return_lse=True)
        loss(out, lse).backward()
        return [t.grad for t, w in zip(leaves, learn, strict=True) if w]

    fused = grads()
    assert (_bwd_kv.bwd_kv_dq in seen) == (D == 64) and (_bwd_dq.bwd_q in seen) == (D != 64)
    ref = [t.double().requires_grad_(w) for t, w in zip(ins, learn, strict=True)]
    out, lse = reference_attention(*ref[:3], q_bias=ref[3] if lr else None,
                                   k_bias=ref[4] if lr else None)
    loss(out, lse).backward()
    names = [n for n, w in zip(["q", "k", "v", "q_bias", "k_bias"][:len(learn)], learn,
                               strict=True) if w]
    for name, a, r in zip(names, fused, [t for t in ref if t.requires_grad], strict=True):
        assert a.shape == r.shape
        err = _rel(a, r.grad)
        assert err <= TOL[dtype], f"d{name}: relative error {err:.2e}"
    seen.clear()
    torch.use_deterministic_algorithms(True)
    try:
        sep = grads()
        again = grads()
    finally:
        torch.use_deterministic_algorithms(False)
    assert _bwd_dq.bwd_q in seen and _bwd_kv.bwd_kv_dq not in seen
    for name, a, b, c in zip(names, fused, sep, again, strict=True):
        assert torch.equal(b, c), name
        assert _rel(a, b) <= 2e-3, name


@pytest.mark.slow
@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="needs a CUDA device")
def test_gpu_fused_dq_step_captured_in_a_cuda_graph(monkeypatch):
    """The fused dq (TMA reductions, descriptors in Triton's launch-time scratch) in a CUDA graph
    after eager warm-up steps (as ``brainattn fit`` does): the capture runs the fused pass the
    warm-up tuned, and replays match the eager step (to rounding: the reductions' order varies)."""
    from brainattn.kernels import _bwd_dq, _bwd_kv, _plan

    if torch.cuda.get_device_capability()[0] < 9 or not _plan.tma_reduce_available():
        pytest.skip("the fused dq needs TMA (sm_90+) and a Triton with descriptor reductions")
    leaves, gout = _cuda_bcast_inputs(4, 2, 2100, 98, 64, seed=5)
    seen = _record_launches(monkeypatch)
    ref_out, ref, out, graph = _eager_then_captured(leaves, gout)
    # three eager steps and the captured one, each with the fused pass
    assert seen.count(_bwd_kv.bwd_kv_dq) == 4 and _bwd_dq.bwd_q not in seen
    for _ in range(2):
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(out, ref_out)
        for a, b in zip(leaves, ref, strict=True):
            assert _rel(a.grad, b) <= 4e-3
