"""The direct-launch path of the Triton wrapper (``_launch.launch``), against fake kernels.

A GPU is not needed: the fakes lay out the launcher call the way ``JITFunction.run`` does
(grid, stream, function, packed metadata, launch metadata, hooks, then every argument in
signature order, constexprs last), so these tests check that the direct launch passes exactly
the arguments Triton's own path passes, re-captures when a specialisation changes, and falls
back to Triton's path when the layout is not the expected one, a launch hook is installed or
the Triton version is not one whose launch layout is known.
"""

import types

import pytest
import torch

pytest.importorskip("triton")
from brainattn.kernels import _launch as T  # noqa: E402
from brainattn.kernels import _tiling  # noqa: E402


class FakeCompiled:
    """Stands in for triton's CompiledKernel: a lazily created launcher behind ``run``."""

    def __init__(self):
        self._run = None
        self.function = object()
        self.packed_metadata = (4, 1, 0)
        self.calls = []

    @property
    def run(self):
        if self._run is None:
            self._run = self._launcher
        return self._run

    def _launcher(self, *a):
        self.calls.append(a)


class FakeJit:
    """Stands in for JITFunction (behind the autotuner): ``run`` binds and launches."""

    def __init__(self, layout="triton"):
        self.compiled = FakeCompiled()
        self.layout = layout
        self.slow = 0

    def run(self, *args, grid, warmup, **kw):
        if warmup:
            return self.compiled
        self.slow += 1
        g = grid(kw)
        tail = (kw["HEAD_D"], kw["BLOCK_M"])
        body = (*args, *tail) if self.layout == "triton" else (*tail, *args)
        self.compiled.run(g[0], g[1], g[2], "stream-0", self.compiled.function,
                          self.compiled.packed_metadata, {"meta": 1}, None, None, *body)
        return self.compiled


class FakeAutotuned:
    def __init__(self, fn):
        self.fn = fn
        self.best_config = types.SimpleNamespace(all_kwargs=lambda: {"BLOCK_M": 32, "num_warps": 4})

    def __getitem__(self, grid):
        return lambda *a, **kw: self.fn.run(*a, grid=grid, warmup=False, BLOCK_M=32, **kw)


@pytest.fixture
def fast(monkeypatch):
    monkeypatch.setattr(T, "_STATE", {"drv": (lambda: 0, lambda dev: f"stream-{dev}")})
    monkeypatch.setattr(T, "FAST", {})
    monkeypatch.setattr(T, "TUNED", {})


def _grid(meta):
    return (7, meta["BLOCK_M"] // 16, 3)


def _call(kernel, tensors, scalars=(5, 16, 1, 0.125)):
    T.launch(kernel, _grid, ("k", 1), tensors, scalars, {"HEAD_D": 64})


def test_direct_launch_passes_what_triton_passes(fast):
    fn = FakeJit()
    kernel = FakeAutotuned(fn)
    ts = (torch.zeros(8), torch.zeros(4, dtype=torch.float16))
    for _ in range(5):
        _call(kernel, ts)
    # autotune run, capture run, then three direct launches that skip fn.run
    assert fn.slow == 2
    calls = fn.compiled.calls
    assert len(calls) == 5
    ref = calls[1]
    for c in calls[2:]:
        assert c[:6] == ref[:6]  # grid, stream, function, packed metadata
        assert c[6:9] == (None, None, None)  # no launch metadata, no hooks
        assert c[9:] == (*ts, 5, 16, 1, 0.125, 64, 32)  # arguments, then constexprs
        assert all(x is y for x, y in zip(c[9:11], ts, strict=True))


def test_new_alignment_or_scalar_is_captured_again(fast):
    fn = FakeJit()
    kernel = FakeAutotuned(fn)
    buf = torch.zeros(64, dtype=torch.float16)
    aligned, shifted = buf[:32], buf[1:33]  # data pointers 2 bytes apart
    assert aligned.data_ptr() % 16 != shifted.data_ptr() % 16
    _call(kernel, (aligned,))
    _call(kernel, (aligned,))
    _call(kernel, (aligned,))
    assert fn.slow == 2
    _call(kernel, (shifted,))  # Triton would specialise differently: through fn.run again
    _call(kernel, (shifted,))
    assert fn.slow == 3
    _call(kernel, (aligned,), scalars=(5, 17, 1, 0.125))  # a stride that is no longer % 16
    assert fn.slow == 4
    assert fn.compiled.calls[-1][9:] == (aligned, 5, 17, 1, 0.125, 64, 32)


def test_unexpected_layout_or_hooks_fall_back_to_triton(fast, monkeypatch):
    fn = FakeJit(layout="other")
    kernel = FakeAutotuned(fn)
    ts = (torch.zeros(8),)
    for _ in range(4):
        _call(kernel, ts)
    assert fn.slow == 4  # the capture saw another layout: every launch through fn.run
    fn2 = FakeJit()
    kernel2 = FakeAutotuned(fn2)
    monkeypatch.setattr(T, "hooks_off", lambda: False)  # e.g. a profiler's launch hook
    for _ in range(3):
        T.launch(kernel2, _grid, ("k", 2), ts, (1,), {"HEAD_D": 64})
    assert fn2.slow == 3


@pytest.mark.parametrize(("version", "direct"), [
    ("3.6.0", True), ("3.8.0", True), ("3.8.1+git1234", True), ("3.3.1", False),
    ("3.7.0", False), ("3.9.0", False), ("4.0.0", False), ("nightly", False)])
def test_direct_launch_only_on_known_triton_versions(version, direct, monkeypatch):
    """The direct launch relies on a private layout of Triton's launcher call: on a version
    whose layout was not read, every launch goes through Triton's own ``run``."""
    assert T.direct_launch_supported(version) is direct
    monkeypatch.setattr(T, "_STATE", {})
    monkeypatch.setattr(T.triton, "__version__", version)
    monkeypatch.setattr(T.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(T, "_driver_getters", lambda: (lambda: 0, lambda dev: f"stream-{dev}"))
    got = T._driver()
    assert (got is not None) is direct
    if not direct:  # then the launch path is Triton's, every time
        monkeypatch.setattr(T, "FAST", {})
        monkeypatch.setattr(T, "TUNED", {})
        fn = FakeJit()
        kernel = FakeAutotuned(fn)
        for _ in range(4):
            _call(kernel, (torch.zeros(8),))
        assert fn.slow == 4 and T.FAST == {}


def test_interpreted_kernels_get_the_interpreter_config(monkeypatch):
    """Without a GPU (the interpreter) each pass runs its one small config; the tuned lists
    stay the GPU's (tuning on: ``BRAINATTN_AUTOTUNE=0``, as the GPU script sets, would keep one)."""
    from brainattn.kernels import _bwd_kv, _fwd

    monkeypatch.delenv("BRAINATTN_AUTOTUNE", raising=False)

    if not _tiling.interpreted(_fwd.fwd):
        pytest.skip("compiled kernels (a GPU machine)")
    cs = _bwd_kv.CONFIGS
    args = {"Q": torch.zeros(1, dtype=torch.float16), "BLOCK_D": 64}
    assert cs.prune(cs.configs, args) == cs.interp
    assert cs.interp[0].kwargs == {"BLOCK_M": 16, "BLOCK_N": 64}
    spare = _tiling.ConfigSet([(128, 128, 8, 3), (64, 64, 4, 3)], (64, 64, 4, 3))
    assert [c.kwargs["BLOCK_M"] for c in spare.prune(spare.configs, args)] == [128, 64]
    fp32 = {"Q": torch.zeros(1), "BLOCK_D": 128}  # none fits: the smallest
    assert [c.kwargs["BLOCK_M"] for c in spare.prune(spare.configs, fp32)] == [64]


def test_tail_width_and_host_helpers():
    import triton

    assert _tiling.tail(962, 64) == 16  # 15 full blocks + 2 keys in a 16-wide step
    assert _tiling.tail(962, 128) == 128  # 66 left: the full width
    assert _tiling.tail(960, 64) == 64
    assert _tiling.tail(37, 32) == 16 and _tiling.tail(20, 32) == 32 and _tiling.tail(50, 32) == 32
    # the dk/dv pass: 962 keys in 128-key programs = 7 full + a 64- and a 16-wide tile
    assert _tiling.tails(962, 128) == (64, 16) and _tiling.kv_programs(962, 128) == 9
    assert _tiling.tails(962, 64) == (16, 0) and _tiling.kv_programs(962, 64) == 16
    assert _tiling.tails(100, 128) == (128, 0) and _tiling.tails(960, 64) == (64, 0)
    assert _tiling.tails(20, 64) == (32, 0) and _tiling.kv_programs(20, 64) == 1
    for L in range(1, 400):  # the tiles cover every key, and a second tile is never empty
        for block in (16, 32, 64, 128):
            t1, t2 = _tiling.tails(L, block)
            rem = L % block
            assert 16 <= t1 <= block and (t2 == 0 or 16 <= t2 < t1), (L, block)
            assert (t1 if rem else 0) + t2 >= rem, (L, block)
            assert t2 == 0 or t1 < rem, (L, block)
            assert _tiling.kv_programs(L, block) == -(-L // block) + (t2 > 0)
    assert all(_tiling.p2(n) == triton.next_power_of_2(n) for n in range(1, 600))
    assert all(_tiling.cdiv(a, b) == triton.cdiv(a, b) for a in range(0, 200) for b in range(1, 70))
