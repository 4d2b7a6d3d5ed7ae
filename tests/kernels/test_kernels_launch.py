"""The direct-launch path of the Triton wrapper (``_launch``), against fake kernels.

A GPU is not needed: the fakes lay out the launcher call the way ``JITFunction.run`` does
(grid, stream, function, packed metadata, launch metadata, hooks, then every argument in
signature order, constexprs last), so these tests check that the direct launch passes exactly
the arguments Triton's own path passes, re-captures when a specialisation changes, and falls
back to Triton's path when the layout is not the expected one or a launch hook is installed.
"""

import types

import pytest
import torch

pytest.importorskip("triton")
from brainattn.kernels import _triton as T  # noqa: E402


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
    monkeypatch.setattr(T, "_FAST_ON", True)
    monkeypatch.setattr(T, "_DRV", [lambda: 0, lambda dev: f"stream-{dev}"])
    monkeypatch.setattr(T, "_FAST", {})
    monkeypatch.setattr(T, "_TUNED", {})


def _grid(meta):
    return (7, meta["BLOCK_M"] // 16, 3)


def _call(kernel, tensors, scalars=(5, 16, 1, 0.125)):
    T._launch(kernel, _grid, ("k", 1), tensors, scalars, {"HEAD_D": 64})


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
    monkeypatch.setattr(T, "_hooks_off", lambda: False)  # e.g. a profiler's launch hook
    for _ in range(3):
        T._launch(kernel2, _grid, ("k", 2), ts, (1,), {"HEAD_D": 64})
    assert fn2.slow == 3


def test_tail_width_and_host_helpers():
    import triton

    assert T._tail(962, 64) == 16  # 15 full blocks + 2 keys in a 16-wide step
    assert T._tail(962, 128) == 128  # 66 left: the full width
    assert T._tail(960, 64) == 64
    assert T._tail(37, 32) == 16 and T._tail(20, 32) == 32 and T._tail(50, 32) == 32
    # the dk/dv pass: 962 keys in 128-key programs = 7 full + a 64- and a 16-wide tile
    assert T._tails(962, 128) == (64, 16) and T._kv_programs(962, 128) == 9
    assert T._tails(962, 64) == (16, 0) and T._kv_programs(962, 64) == 16
    assert T._tails(100, 128) == (128, 0) and T._tails(960, 64) == (64, 0)
    assert T._tails(20, 64) == (32, 0) and T._kv_programs(20, 64) == 1
    for L in range(1, 400):  # the tiles cover every key, and a second tile is never empty
        for block in (16, 32, 64, 128):
            t1, t2 = T._tails(L, block)
            rem = L % block
            assert 16 <= t1 <= block and (t2 == 0 or 16 <= t2 < t1), (L, block)
            assert (t1 if rem else 0) + t2 >= rem, (L, block)
            assert t2 == 0 or t1 < rem, (L, block)
            assert T._kv_programs(L, block) == -(-L // block) + (t2 > 0)
    assert all(T._p2(n) == triton.next_power_of_2(n) for n in range(1, 600))
    assert all(T._cdiv(a, b) == triton.cdiv(a, b) for a in range(0, 200) for b in range(1, 70))
