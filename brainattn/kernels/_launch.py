"""Launching the autotuned passes: the tuned config cached per launch key, and a direct call of
the compiled kernel's launcher where this Triton's launch layout is known.

The first launch of a key runs the autotuner; the next one launches the tuned config through the
jitted function while recording what it hands the compiled kernel's launcher (``_capture``);
later launches with the same specialisation call that launcher directly, skipping Triton's
per-call binding, specialisation and cache-key work (tens of microseconds a launch, which is
what small, host-bound cases such as ``rois`` wait on).

The direct call relies on how ``JITFunction.run`` calls ``CompiledKernel.run`` (grid x3,
stream, function, packed metadata, launch metadata, enter hook, exit hook, then the arguments
in signature order, constexprs included), which is private to Triton. So it is used only on
the Triton versions whose source was read for that layout (``DIRECT_LAUNCH_VERSIONS``), only
when the recorded call has exactly that layout, and only while no launch hook (a profiler's) is
installed; otherwise every launch goes through Triton's own ``run``.
"""

from __future__ import annotations

import torch
import triton

#: (major, minor) of the Triton releases whose ``JITFunction.run`` calls the launcher as above:
#: 3.6 (torch 2.11; every GPU run) and 3.8 (torch 2.14; checked in its source)
DIRECT_LAUNCH_VERSIONS = ((3, 6), (3, 8))

TUNED: dict = {}  # launch key -> the tuned config's launch kwargs (num_warps, BLOCK_M, ...)
FAST: dict = {}  # (launch key, specialisation, device) -> launcher entry, or None: not direct
_STATE: dict = {}  # "drv": (current-device getter, current-stream getter), or None: no direct


def direct_launch_supported(version: str) -> bool:
    """Whether Triton ``version`` (``triton.__version__``) lays out the launcher call as
    ``_capture`` expects."""
    try:
        major, minor = (int(part) for part in version.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) in DIRECT_LAUNCH_VERSIONS


def _driver():
    """Triton's current-device and current-stream getters (what ``JITFunction.run`` uses), or
    None where the direct launch is not used: another Triton version, or no GPU (the
    interpreter)."""
    if "drv" not in _STATE:
        drv = None
        if direct_launch_supported(triton.__version__) and torch.cuda.is_available():
            try:
                drv = _driver_getters()
                drv[1](drv[0]())
            except Exception:  # noqa: BLE001 -- no usable driver: Triton's own launch path
                drv = None
        _STATE["drv"] = drv
    return _STATE["drv"]


def _driver_getters():
    from triton.runtime import driver

    return driver.active.get_current_device, driver.active.get_current_stream


def launch(kernel, grid, key, tensors, scalars, consts, direct: bool = True):
    """Launch an autotuned kernel for launch key ``key``.

    ``tensors`` are the kernel's pointer arguments and ``scalars`` the rest (every kernel takes
    them in that order); ``grid`` maps the config's kwargs (BLOCK_M, ...) to the launch grid.
    The direct launch's key holds what Triton specialises a launch on, conservatively: every
    scalar's value and every pointer's 16-byte alignment (dtypes follow from ``key``).
    ``direct=False`` always goes through Triton (kernels that take global scratch, which
    Triton allocates per launch)."""
    args = (*tensors, *scalars)
    fkey = None
    drv = _driver() if direct else None
    if drv is not None:
        fkey = (key, scalars, tuple([t.data_ptr() & 15 for t in tensors]), drv[0]())
        ent = FAST.get(fkey)
        if ent is not None and hooks_off():
            launcher, function, meta, tail, cfg = ent
            g = grid(cfg)
            launcher(g[0], g[1], g[2], drv[1](fkey[3]), function, meta, None, None, None,
                     *args, *tail)
            return
    cfg = TUNED.get(key)
    if cfg is None:
        kernel[grid](*args, **consts)
        TUNED[key] = kernel.best_config.all_kwargs()
        return
    if fkey is not None and fkey not in FAST and hooks_off():
        FAST[fkey] = _capture(kernel.fn, grid, args, consts, cfg)  # launches it once
        return
    kernel.fn.run(*args, grid=grid, warmup=False, **consts, **cfg)


def hooks_off() -> bool:
    """No launch hooks (profilers such as proton install them): the direct launch passes none.
    Triton 3.4+ keeps them as a ``HookChain`` that is empty unless a hook was added."""
    rt = getattr(getattr(triton, "knobs", None), "runtime", None)
    if rt is None:
        return True
    for hook in (rt.launch_enter_hook, rt.launch_exit_hook):
        if hook is not None and getattr(hook, "calls", True):
            return False
    return True


def _capture(fn, grid, args, consts, cfg):
    """Launch through ``fn.run`` (always exactly once), recording the arguments it hands the
    compiled kernel's launcher; return (launcher, function, packed metadata, the trailing
    constexpr arguments, cfg) for direct launches, or None where this Triton lays the call out
    differently (then the launch always goes through ``fn.run``)."""
    compiled = fn.run(*args, grid=grid, warmup=True, **consts, **cfg)
    prop = getattr(type(compiled), "run", None)
    if not isinstance(prop, property) or not hasattr(compiled, "_run"):
        fn.run(*args, grid=grid, warmup=False, **consts, **cfg)
        return None
    real = compiled.run  # initialises the launcher
    seen = []

    def record(*a):
        seen.append(a)
        return real(*a)

    compiled._run = record
    try:
        again = fn.run(*args, grid=grid, warmup=False, **consts, **cfg)
    finally:
        compiled._run = real
    n = len(args)
    if again is not compiled or len(seen) != 1:
        return None
    a = seen[0]
    ok = (len(a) >= 9 + n and a[4] is compiled.function and a[5] is compiled.packed_metadata
          and all(x is y for x, y in zip(a[9:9 + n], args, strict=True)))
    if not ok:
        return None
    return (real, compiled.function, compiled.packed_metadata, tuple(a[9 + n:]), cfg)
