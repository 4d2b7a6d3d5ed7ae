"""Time brainattn's attention against its peers on the brain-encoder shapes (bf16, one GPU).

    PYTHONPATH=. python3 benchmarks/attention.py [--cases rois,vertices,prf,dense] [--out FILE]

For each case it times forward and forward+backward (median of ``triton.testing.do_bench``,
after warm-up) for brainattn and each peer that accepts the case: SDPA with the flash, cuDNN and
efficient backends (bias materialised and expanded where that is the only way), FlexAttention
under torch.compile with a ``score_mod`` reading the bias, and a plain eager implementation.
It also measures the card's dense bf16 matmul rate and device-to-device copy bandwidth, checks
brainattn's output against the eager/math result, and prints a markdown table (ms, TFLOP/s, peak
memory, ratio to the best peer), written to ``--out`` too.

Imports only torch, triton and brainattn.kernels (which imports only torch and triton).
"""

from __future__ import annotations

import argparse
import datetime
import math
import statistics
import sys
import time

import torch
import torch.nn.functional as F
import triton
from torch.nn.attention import SDPBackend, sdpa_kernel

from brainattn.kernels import attention, prf_bias_factors

DT = torch.bfloat16
CASES = {
    # name: (B, Bq, H, Lq, Lk, D, bias kind)
    "rois": (64, 1, 16, 50, 962, 48, None),
    "rois+bias": (64, 1, 16, 50, 962, 48, "dense"),
    "vertices": (16, 1, 12, 20000, 962, 64, None),
    "vertices+prf": (16, 1, 12, 20000, 962, 64, "prf"),
    "dense": (16, 16, 12, 4096, 962, 64, "dense"),
}
GROUPS = {"rois": ["rois", "rois+bias"], "vertices": ["vertices"], "prf": ["vertices+prf"],
          "dense": ["dense"]}


def bench(fn, warmup=100, rep=400) -> float:
    return triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median")


def ceilings() -> tuple[float, float]:
    """Dense bf16 matmul rate (TFLOP/s) and copy bandwidth (GB/s, read + write)."""
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=DT)
    b = torch.randn(n, n, device="cuda", dtype=DT)
    t = bench(lambda: a @ b, 50, 300)
    tflops = 2 * n**3 / t / 1e9
    x = torch.randn(2**30, device="cuda", dtype=DT)  # 2 GiB
    y = torch.empty_like(x)
    t = bench(lambda: y.copy_(x), 50, 300)
    gbs = 2 * x.numel() * 2 / t / 1e6
    return tflops, gbs


def make_case(name, seed=0):
    B, Bq, H, Lq, Lk, D, kind = CASES[name]
    g = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randn(Bq, H, Lq, D, device="cuda", dtype=DT, generator=g)
    k = torch.randn(B, H, Lk, D, device="cuda", dtype=DT, generator=g)
    v = torch.randn(B, H, Lk, D, device="cuda", dtype=DT, generator=g)
    extra = {}
    if kind == "dense":
        extra["bias"] = torch.randn(H, Lq, Lk, device="cuda", dtype=DT, generator=g)
    elif kind == "prf":
        side = math.ceil(math.sqrt(Lk - 1))
        lin = torch.linspace(-1, 1, side, device="cuda")
        pos = torch.stack(torch.meshgrid(lin, lin, indexing="ij"), -1).reshape(-1, 2)
        pos = torch.cat([torch.zeros(1, 2, device="cuda"), pos[: Lk - 1]])  # token 0: CLS
        tmask = torch.ones(Lk, dtype=torch.bool, device="cuda")
        tmask[0] = False
        mu = torch.rand(H, Lq, 2, device="cuda", generator=g) * 2 - 1
        sigma = torch.rand(H, Lq, device="cuda", generator=g) * 0.3 + 0.1
        extra["mu"], extra["sigma"], extra["pos"], extra["tmask"] = mu, sigma, pos, tmask
    return (B, H, Lq, Lk, D), q, k, v, extra


def prf_factors(ex):
    """The pRF factors for every implementation alike. sigma is positive by construction here
    (as with exp/softplus in a training loop), so the check that reads sigma back from the GPU
    (a host sync per step) is off."""
    return prf_bias_factors(ex["mu"], ex["sigma"], ex["pos"], token_mask=ex["tmask"],
                            validate=False)


def prf_bias(ex):
    """The pRF prior materialised, (1, H, Lq, Lk) in the benchmark's dtype: what the peers that
    take a bias tensor (SDPA efficient, flex, eager) are handed."""
    qb, kb = prf_factors(ex)
    return (qb @ kb.transpose(-1, -2)).to(DT)


def peers_for(name, q, k, v, extra, dims):
    """{peer name: callable(q, k, v, leaves) -> out (B, H, Lq, D)}."""
    B, H, Lq, Lk, D = dims
    scale = D**-0.5
    kind = CASES[name][6]
    out = {}

    def qx(q):
        return q.expand(B, H, Lq, D)

    def sdpa(backend, mask_fn=None):
        def f(q, k, v, ex):
            mask = None if mask_fn is None else mask_fn(ex)
            with sdpa_kernel([backend]):
                return F.scaled_dot_product_attention(qx(q), k, v, attn_mask=mask, scale=scale)
        return f

    def eager(q, k, v, ex):
        s = torch.matmul(qx(q), k.transpose(-1, -2)) * scale
        if kind == "dense":
            s = s + ex["bias"]
        elif kind == "prf":
            s = s + prf_bias(ex)
        return torch.matmul(torch.softmax(s.float(), -1).to(v.dtype), v)

    if kind is None:
        out["sdpa-flash"] = sdpa(SDPBackend.FLASH_ATTENTION)
        out["sdpa-cudnn"] = sdpa(SDPBackend.CUDNN_ATTENTION)
        out["sdpa-efficient"] = sdpa(SDPBackend.EFFICIENT_ATTENTION)
    elif kind == "dense":
        out["sdpa-efficient+bias"] = sdpa(
            SDPBackend.EFFICIENT_ATTENTION, lambda ex: ex["bias"].unsqueeze(0).expand(B, H, Lq, Lk))
    elif kind == "prf":
        out["sdpa-efficient+bias"] = sdpa(
            SDPBackend.EFFICIENT_ATTENTION, lambda ex: prf_bias(ex).expand(B, H, Lq, Lk))

        def folded(backend):
            def f(q, k, v, ex):  # bias folded into wider q/k: [q, qb/scale] . [k, kb]
                qb, kb = prf_factors(ex)
                pad = (-(D + 4)) % 16
                qw = torch.cat([qx(q), (qb / scale).to(DT).expand(B, H, Lq, 4),
                                q.new_zeros(1, 1, 1, pad).expand(B, H, Lq, pad)], -1)
                kw = torch.cat([k, kb.to(DT).expand(B, H, Lk, 4),
                                k.new_zeros(1, 1, 1, pad).expand(B, H, Lk, pad)], -1)
                vw = torch.cat([v, v.new_zeros(1, 1, 1, 4 + pad).expand(B, H, Lk, 4 + pad)], -1)
                with sdpa_kernel([backend]):
                    o = F.scaled_dot_product_attention(qw, kw, vw, scale=scale)
                return o[..., :D]
            return f
        out["folded-flash"] = folded(SDPBackend.FLASH_ATTENTION)
        out["folded-cudnn"] = folded(SDPBackend.CUDNN_ATTENTION)
        out["sdpa-flash (no bias)"] = sdpa(SDPBackend.FLASH_ATTENTION)
        out["sdpa-cudnn (no bias)"] = sdpa(SDPBackend.CUDNN_ATTENTION)
    if name in ("rois", "vertices", "dense", "rois+bias", "vertices+prf"):
        from torch.nn.attention.flex_attention import flex_attention
        flex = torch.compile(flex_attention, dynamic=False)

        def flex_fn(q, k, v, ex):
            if kind == "dense":
                bias = ex["bias"]

                def mod(score, b, h, i, j):
                    return score + bias[h, i, j]
                return flex(qx(q), k, v, score_mod=mod, scale=scale)
            if kind == "prf":  # the prior from (mu, sigma) itself, learned through flex
                # (one index per captured tensor: flex's learned-bias backward refuses two
                # indexings of one tensor, so the coordinates come as separate vectors)
                mu, sigma, tmask = ex["mu"], ex["sigma"], ex["tmask"]
                mux, muy = mu[..., 0].contiguous(), mu[..., 1].contiguous()
                px, py = ex["pos"][:, 0].contiguous(), ex["pos"][:, 1].contiguous()

                def mod(score, b, h, i, j):
                    dx = px[j] - mux[h, i]
                    dy = py[j] - muy[h, i]
                    s = sigma[h, i]
                    return score + torch.where(tmask[j], -(dx * dx + dy * dy) / (2 * s * s), 0.0)
                return flex(qx(q), k, v, score_mod=mod, scale=scale)
            return flex(qx(q), k, v, scale=scale)
        out["flex"] = flex_fn
        if kind == "prf":
            def flex_mat(q, k, v, ex):  # the bias materialised (H, Lq, Lk), read by score_mod
                bias = prf_bias(ex)[0]

                def mod(score, b, h, i, j):
                    return score + bias[h, i, j]
                return flex(qx(q), k, v, score_mod=mod, scale=scale)
            out["flex+bias"] = flex_mat
    out["eager"] = eager
    return out


def brainattn_fn(name):
    kind = CASES[name][6]

    def f(q, k, v, ex):
        if kind == "dense":
            return attention(q, k, v, bias=ex["bias"])
        if kind == "prf":
            qb, kb = prf_factors(ex)
            return attention(q, k, v, q_bias=qb, k_bias=kb)
        return attention(q, k, v)
    return f


def measure(fn, q, k, v, extra, dims, flops_fwd):
    """(fwd ms, fwd+bwd ms, peak GiB of one fwd+bwd beyond the inputs, output)."""
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    ex = {key: (t.detach().clone().requires_grad_() if t.is_floating_point() else t)
          for key, t in extra.items()}
    if "pos" in ex:
        ex["pos"].requires_grad_(False)
    with torch.no_grad():
        out = fn(q, k, v, extra)  # compile / autotune
    g = torch.randn_like(out)
    y = fn(*leaves, ex)
    y.backward(g)
    torch.cuda.synchronize()
    grads = [p for p in [*leaves, *ex.values()] if p.requires_grad]

    def fwd():
        with torch.no_grad():
            fn(q, k, v, extra)

    def fwdbwd():
        for p in grads:
            p.grad = None
        fn(*leaves, ex).backward(g)

    t_f = bench(fwd)
    t_fb = bench(fwdbwd)
    for p in grads:
        p.grad = None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fwdbwd()
    torch.cuda.synchronize()
    peak = (torch.cuda.max_memory_allocated() - base) / 2**30
    return t_f, t_fb, peak, out


def head_to_head(fns, q, k, v, extra, rounds=7):
    """fwd+bwd ms of each implementation, measured in alternating rounds (A, B, A, B, ...) and
    reduced to the median over rounds: clock and temperature drift during a run then hit every
    side alike, which one pass per implementation does not guarantee (see docs/kernels.md)."""
    steps = {}
    for impl, fn in fns.items():
        leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
        ex = {key: (t.detach().clone().requires_grad_() if t.is_floating_point() else t)
              for key, t in extra.items()}
        if "pos" in ex:
            ex["pos"].requires_grad_(False)
        g = torch.randn_like(fn(q, k, v, extra))
        grads = [p for p in [*leaves, *ex.values()] if p.requires_grad]

        def step(fn=fn, leaves=leaves, ex=ex, g=g, grads=grads):
            for p in grads:
                p.grad = None
            fn(*leaves, ex).backward(g)

        steps[impl] = step
    times = {impl: [] for impl in fns}
    for _ in range(rounds):
        for impl, step in steps.items():
            times[impl].append(bench(step, 25, 150))
    return {impl: statistics.median(ts) for impl, ts in times.items()}


def graphed(fn, q, k, v, extra):
    """fwd+bwd ms with the step captured in a CUDA graph (host launch cost removed): the GPU
    time of a step, for the launch-bound small cases."""
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    g = torch.randn_like(fn(q, k, v, extra))
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            for p in leaves:
                p.grad = None
            fn(*leaves, extra).backward(g)
    torch.cuda.current_stream().wait_stream(side)
    for p in leaves:
        p.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn(*leaves, extra).backward(g)
    return bench(graph.replay)


def breakdown(name, q, k, v, extra):
    """Milliseconds of each brainattn kernel on this case: fwd, bwd dk/dv side, bwd dq side,
    bwd dense-bias side (each backward pass includes the small delta pre-pass), and the host
    time to issue one forward+backward through each door of the Triton path: the eager
    autograd Function that ``attention`` uses, and the ``torch.library`` custom operator that
    ``torch.compile`` uses."""
    from brainattn.kernels import _host, _launch, _ops, _plan

    kind = CASES[name][6]
    bias = extra.get("bias")
    qb = kb = None
    if kind == "prf":
        qb, kb = prf_factors(extra)
    scale = q.shape[-1] ** -0.5
    out, lse, _ = _host.forward(q, k, v, bias, qb, kb, scale)
    dout = torch.randn_like(out)
    res = {"fwd": bench(lambda: _host.forward(q, k, v, bias, qb, kb, scale))}
    lr = qb is not None
    # "bwd dq" forms delta itself; "bwd dk/dv" alone runs the small delta pre-pass first;
    # "bwd dq+dk/dv (fused)": the dk/dv pass that also adds dq (broadcast queries on sm_90+,
    # see brainattn.kernels._plan.fused_dq), as the step runs it there
    masks = {"bwd dk/dv": (0, 1, 1, 0, 0, lr), "bwd dq": (1, 0, 0, 0, lr, 0)}
    probe = _plan.Plan(q, k, v, bias, qb, kb, scale)
    if _plan.fused_dq(q, qb, probe, (1, 1, 1, 0, lr, 0), bias is not None, _launch.TUNED):
        masks["bwd dq+dk/dv (fused)"] = (1, 1, 1, 0, lr, 0)
    if bias is not None:
        masks["bwd dbias"] = (0, 0, 0, 1, 0, 0)
    for label, needs in masks.items():
        res[label] = bench(lambda needs=needs: _host.backward(q, k, v, bias, qb, kb, out, lse,
                                                              dout, None, scale, needs))
    # host time to issue one forward+backward (no sync): launch-bound if ~ the GPU time
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]

    def through_op(q, k, v, ex):
        b = ex.get("bias")
        fb, fk = prf_factors(ex) if kind == "prf" else (None, None)
        return _ops.attention_fwd(q, k, v, b, fb, fk, scale)[0]

    for label, fn in (("host fwd+bwd (eager Function)", brainattn_fn(name)),
                      ("host fwd+bwd (custom op)", through_op)):
        for _ in range(3):  # this call's launch keys (gradients wanted) tuned and recorded first
            fn(*leaves, extra).backward(dout)
        torch.cuda.synchronize()
        samples = []
        for _ in range(5):  # the median of 5 bursts of 20 steps
            t0 = time.perf_counter()
            for _ in range(20):
                fn(*leaves, extra).backward(dout)
            samples.append((time.perf_counter() - t0) / 20 * 1e3)
            torch.cuda.synchronize()
        res[label] = statistics.median(samples)
    return res


def prf_grad_errors(q, k, v, extra):
    """Relative error (||x - ref|| / ||ref||) of d sigma and d mu after one forward+backward of
    the pRF case, for brainattn and the peers that learn the prior through a bias tensor,
    against a float64 reference computed head by head (the prior of head h touches only its
    own sigma and mu). Every implementation gets the same inputs and upstream gradient, and
    q, k, v need gradients too, so each runs the backward it runs in training."""
    from brainattn.kernels.reference import reference_attention

    name = "vertices+prf"
    g = torch.randn(k.shape[0], k.shape[1], q.shape[2], q.shape[3], device="cuda", dtype=DT,
                    generator=torch.Generator(device="cuda").manual_seed(5))
    B, H, Lk, D = k.shape
    ref_sigma = torch.empty(extra["sigma"].shape, dtype=torch.float64, device="cuda")
    ref_mu = torch.empty(extra["mu"].shape, dtype=torch.float64, device="cuda")
    for h in range(H):
        mu = extra["mu"][h:h + 1].double().requires_grad_()
        sigma = extra["sigma"][h:h + 1].double().requires_grad_()
        qb, kb = prf_bias_factors(mu, sigma, extra["pos"].double(), token_mask=extra["tmask"],
                                  validate=False)
        out, _ = reference_attention(q[:, h:h + 1], k[:, h:h + 1], v[:, h:h + 1], q_bias=qb,
                                     k_bias=kb)
        (out * g[:, h:h + 1].double()).sum().backward()
        ref_sigma[h], ref_mu[h] = sigma.grad[0], mu.grad[0]
        del out, qb, kb
        torch.cuda.empty_cache()
    impls = {"brainattn": brainattn_fn(name)}
    peers = peers_for(name, q, k, v, extra, (B, H, q.shape[2], Lk, D))
    for peer in ("sdpa-efficient+bias", "folded-cudnn"):
        impls[peer] = peers[peer]
    res = {}
    for impl, fn in impls.items():
        leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
        ex = dict(extra, mu=extra["mu"].detach().clone().requires_grad_(),
                  sigma=extra["sigma"].detach().clone().requires_grad_())
        fn(*leaves, ex).backward(g)
        torch.cuda.synchronize()
        res[impl] = tuple(((ex[key].grad.double() - ref).norm() / ref.norm()).item()
                          for key, ref in (("sigma", ref_sigma), ("mu", ref_mu)))
        del leaves, ex
        torch.cuda.empty_cache()
    return res


def profile_host(name, steps=50):
    """cProfile of the host side of brainattn's forward+backward on one case (no syncs inside the
    loop, so this is the Python/launch cost that the GPU waits on when the kernels are short)."""
    import cProfile
    import io
    import pstats

    dims, q, k, v, extra = make_case(name)
    fn = brainattn_fn(name)
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    g = torch.randn(dims[0], dims[1], dims[2], dims[4], device="cuda", dtype=DT)
    for _ in range(5):
        fn(*leaves, extra).backward(g)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        for p in leaves:
            p.grad = None
        fn(*leaves, extra).backward(g)
    plain = (time.perf_counter() - t0) / steps * 1e3
    torch.cuda.synchronize()
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    for _ in range(steps):
        for p in leaves:
            p.grad = None
        fn(*leaves, extra).backward(g)
    prof.disable()
    host = (time.perf_counter() - t0) / steps * 1e3
    torch.cuda.synchronize()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(22)
    print(f"--- host profile, {name}: {plain:.3f} ms per fwd+bwd issued (no sync), "
          f"{host:.3f} ms under cProfile", flush=True)
    print("\n".join(line[:150] for line in buf.getvalue().splitlines()[6:40]), flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", default="rois,rois+bias,vertices,prf,dense",
                    help="groups (rois, vertices, prf, dense) or case names (rois, rois+bias, "
                         "vertices, vertices+prf, dense); a name that is both means the case")
    ap.add_argument("--peers", default="",
                    help="only these peers (comma-separated: a peer's name, or CASE:NAME for "
                         "one case only, e.g. sdpa-cudnn,dense:flex); default: every peer that "
                         "accepts the case")
    ap.add_argument("--out", default=None)
    ap.add_argument("--profile", default="", help="cases whose host path to cProfile at the end")
    args = ap.parse_args(argv)
    torch.backends.cuda.matmul.allow_tf32 = False
    # flex is compiled once per case, shape and grad mode (and again by the head-to-head): more
    # than dynamo's default of 8 recompilations, after which it would run unfused
    from torch._dynamo import config as dynamo_config

    for knob in ("recompile_limit", "cache_size_limit"):
        if hasattr(dynamo_config, knob):
            setattr(dynamo_config, knob, 64)
    dev = torch.cuda.get_device_name()
    header = (f"card: {dev}; date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} "
              f"UTC; torch {torch.__version__}; triton {triton.__version__}; "
              f"cuDNN {torch.backends.cudnn.version()}")
    print(header, flush=True)
    mm, bw = ceilings()
    print(f"ceilings: dense bf16 matmul {mm:.0f} TFLOP/s; copy {bw:.0f} GB/s", flush=True)
    lines = [header, "",
             f"Ceilings measured in this run: dense bf16 matmul (8192^3) {mm:.0f} TFLOP/s; "
             f"device copy {bw:.0f} GB/s (read + write).", "",
             "TFLOP/s counts 4·B·H·Lq·Lk·D for the forward and 3.5× that for forward+backward "
             "(no recomputation counted). Peak: extra GiB allocated by one forward+backward. "
             "Ratio: best peer's fwd+bwd time / this row's (>1: faster than the best peer).", "",
             "| case | impl | fwd ms | fwd TFLOP/s | fwd+bwd ms | fwd+bwd TFLOP/s | peak GiB "
             "| ratio | rel. diff of output vs brainattn |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name in filter(None, args.profile.split(",")):
        profile_host(name)
    notes = []
    names = [c for tok in args.cases.split(",") for c in ([tok] if tok in CASES else GROUPS[tok])]
    keep = set(filter(None, args.peers.split(",")))

    def impls_for(name, q, k, v, extra, dims):
        peers = peers_for(name, q, k, v, extra, dims)
        return {"brainattn": brainattn_fn(name),
                **{p: f for p, f in peers.items()
                   if not keep or p in keep or f"{name}:{p}" in keep}}
    for name in names:
        dims, q, k, v, extra = make_case(name)
        B, H, Lq, Lk, D = dims
        flops = 4 * B * H * Lq * Lk * D
        rows = []
        ba_out = None
        impls = impls_for(name, q, k, v, extra, dims)
        for impl, fn in impls.items():
            t0 = time.time()
            try:
                tf, tfb, peak, out = measure(fn, q, k, v, extra, dims, flops)
            except Exception as exc:  # a peer that refuses the case or runs out of memory
                msg = f"{type(exc).__name__}: {str(exc).splitlines()[0][:80]}"
                print(f"{name:14s} {impl:22s} failed: {msg}", flush=True)
                rows.append((impl, None, None, None, None, msg))
                torch.cuda.empty_cache()
                continue
            if impl == "brainattn":
                ba_out = out.float()
                err = float("nan")
            elif ba_out is None:
                err = float("nan")
            else:
                err = ((out.float() - ba_out).norm() / out.float().norm()).item()
            rows.append((impl, tf, tfb, peak, err, None))
            print(f"{name:14s} {impl:22s} fwd {tf:8.3f} ms  fwd+bwd {tfb:8.3f} ms  "
                  f"peak {peak:6.2f} GiB  rel.diff vs brainattn {err:.1e}  "
                  f"({time.time() - t0:.0f} s)", flush=True)
            del out
            torch.cuda.empty_cache()
        peer_times = [r[2] for r in rows if r[0] != "brainattn" and r[2] is not None
                      and "no bias" not in r[0]]
        best = min(peer_times) if peer_times else float("nan")
        for impl, tf, tfb, peak, err, msg in rows:
            if tf is None:
                lines.append(f"| {name} | {impl} | – | – | – | – | – | – | {msg} |")
                continue
            lines.append(
                f"| {name} | {impl} | {tf:.3f} | {flops / tf / 1e9:.0f} | {tfb:.3f} | "
                f"{3.5 * flops / tfb / 1e9:.0f} | {peak:.2f} | {best / tfb:.2f} | "
                f"{'' if math.isnan(err) else f'{err:.1e}'} |")
        ok = [r for r in rows if r[2] is not None and r[0] != "brainattn" and "no bias" not in r[0]]
        rivals = sorted(ok, key=lambda r: r[2])[:1]  # the best peer of this first pass
        if name == "vertices+prf":  # the reference point: SDPA without the bias
            rivals += sorted([r for r in rows if r[2] is not None and "no bias" in r[0]],
                             key=lambda r: r[2])[:1]
        if rivals and rows[0][2] is not None:
            try:
                hh = head_to_head({"brainattn": impls["brainattn"],
                                   **{r[0]: impls[r[0]] for r in rivals}}, q, k, v, extra)
                txt = ", ".join(f"{impl} {t:.3f} ms" for impl, t in hh.items())
                ratios = ", ".join(f"{hh[r[0]] / hh['brainattn']:.2f}x vs {r[0]}" for r in rivals)
                print(f"{name:14s} head-to-head fwd+bwd (7 alternating rounds, median): {txt}; "
                      f"brainattn {ratios}", flush=True)
                notes.append(f"- {name}: head-to-head fwd+bwd (7 alternating rounds, median): "
                             f"{txt}; brainattn {ratios}")
            except Exception as exc:
                print(f"{name}: head-to-head failed: {exc}", flush=True)
        try:
            parts = breakdown(name, q, k, v, extra)
            txt = ", ".join(f"{key} {val:.3f} ms" for key, val in parts.items())
            print(f"{name:14s} brainattn kernels: {txt}", flush=True)
            notes.append(f"- {name}: brainattn kernels: {txt}")
        except Exception as exc:
            print(f"{name}: breakdown failed: {exc}", flush=True)
        if name == "vertices+prf":
            try:
                errs = prf_grad_errors(q, k, v, extra)
                base = errs["sdpa-efficient+bias"][0]
                txt = ", ".join(f"{impl} d sigma {es:.2e} ({es / base:.2f}x SDPA efficient), "
                                f"d mu {em:.2e}" for impl, (es, em) in errs.items())
                print(f"{name:14s} gradient error vs float64: {txt}", flush=True)
                notes.append(f"- {name}: relative error of the prior's gradients vs float64: "
                             f"{txt}")
            except Exception as exc:
                print(f"{name}: gradient errors failed: {exc}", flush=True)
        del q, k, v, extra
        torch.cuda.empty_cache()
        if args.out:  # after each case, so a run cut short keeps the finished cases
            with open(args.out, "w") as fh:
                fh.write("\n".join(lines + ["", "Per-kernel times (median):", *notes]) + "\n")
    # launch-bound cases: also the step captured as one CUDA graph (no host launch cost), at the
    # end so that a failed capture cannot disturb the other cases
    for name in [n for n in names if n.startswith("rois")]:
        dims, q, k, v, extra = make_case(name)
        impls = impls_for(name, q, k, v, extra, dims)
        for impl in ("brainattn", "sdpa-cudnn", "sdpa-flash", "sdpa-efficient+bias"):
            if impl in impls:
                try:
                    tg = graphed(impls[impl], q, k, v, extra)
                    notes.append(f"- {name}: {impl} fwd+bwd as one CUDA graph {tg:.3f} ms")
                    print(f"{name:14s} {impl:22s} graphed fwd+bwd {tg:8.3f} ms", flush=True)
                except Exception as exc:
                    print(f"{name} {impl}: graph capture failed: {exc}", flush=True)
    table = "\n".join(lines + ["", "Per-kernel times (median):", *notes])
    print("\n" + table)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
