"""Tile geometry of the Triton passes: ragged-end widths and the autotuner's config sets.

Host-side only (plain ints); the kernels receive the widths as constexprs through
``triton.heuristics``. Which configs a pass may run is decided when it is first launched for a
shape, not at import: interpreted kernels (``TRITON_INTERPRET=1`` when triton was imported) get
one small config, ``BRAINATTN_AUTOTUNE=0`` the untuned default (the GPU test script uses it to
skip tuning time), otherwise the tuned list, each pruned to what fits in shared memory.
"""

from __future__ import annotations

import os

import triton

#: shared memory a pass's pipelined tiles may take (an H100/H200 SM has 228 KiB)
SMEM_LIMIT = 224 * 1024


def cdiv(a: int, b: int) -> int:
    """Ceiling division on host ints (``triton.cdiv`` is a constexpr function, slow on the host)."""
    return -(-a // b)


def p2(n: int) -> int:
    """The smallest power of two >= n (host ints)."""
    return 1 << max(n - 1, 0).bit_length()


def tail(L: int, block: int) -> int:
    """Width of the step over the last ``L % block`` keys: the smallest power of two >= 16
    holding them (``block`` when L is a multiple of it). A ViT's 962 = 15 * 64 + 2 tokens would
    otherwise pad 2 keys to a 64-wide step."""
    r = L % block
    return block if r == 0 else min(block, max(16, 1 << (r - 1).bit_length()))


def tails(L: int, block: int) -> tuple[int, int]:
    """The dk/dv pass's programs for the last ``L % block`` keys: one tile of ``tail`` width,
    or two narrower ones when they cover less (66 keys of 128: 64 + 16 instead of 128; each
    program's work grows with its width, since it streams every query). (width, 0) for one."""
    one = tail(L, block)
    r = L % block
    if r == 0:
        return one, 0
    t1 = max(16, 1 << (r.bit_length() - 1))
    if t1 >= r:
        return one, 0
    t2 = max(16, 1 << (r - t1 - 1).bit_length())
    return (t1, t2) if t1 + t2 < one else (one, 0)


def kv_programs(L: int, block: int) -> int:
    """Programs along the keys in the dk/dv pass: full blocks, then one or two tail tiles."""
    _, t2 = tails(L, block)
    return L // block + (L % block > 0) + (t2 > 0)


def _config(m: int, n: int, warps: int, stages: int) -> triton.Config:
    return triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=warps, num_stages=stages)


def autotune_off() -> bool:
    """``BRAINATTN_AUTOTUNE=0``: run each pass's default config untuned (read at tuning time)."""
    return os.environ.get("BRAINATTN_AUTOTUNE", "1").strip() == "0"


def interpreted(kernel) -> bool:
    """Whether a (possibly autotuned) kernel runs in Triton's interpreter."""
    while kernel is not None:
        if type(kernel).__name__ == "InterpretedFunction":
            return True
        kernel = getattr(kernel, "fn", None)
    return False


class ConfigSet:
    """The configs (BLOCK_M, BLOCK_N, num_warps, num_stages) one pass may run.

    ``tuned``: what the autotuner times (trimmed to past winners and their neighbours, so a
    fresh process tunes quickly); ``default`` (then two small fallbacks): the untuned choice;
    ``interp``: the interpreter's. ``configs`` holds them all for ``triton.autotune``;
    ``prune`` (its ``early_config_prune``) picks the set when a shape is first tuned.
    """

    def __init__(self, tuned, default, interp=(32, 32, 4, 1)):
        self.tuned = [_config(*c) for c in tuned]
        self.default = [_config(*c) for c in (default, (64, 32, 4, 2), (32, 32, 4, 1))]
        self.interp = [_config(*interp)]
        self.configs = self.tuned + self.default + self.interp
        self.kernel = None  # set by ``bind``: decides whether the interpreter's config applies

    def bind(self, kernel):
        self.kernel = kernel
        return kernel

    def prune(self, configs, named_args, **kwargs):
        """The configs to time for this launch: the set that applies, less those whose
        pipelined tiles would not fit in shared memory (fp32 at head dim 128 is the tight case);
        untuned, the first that fits."""
        if self.kernel is not None and interpreted(self.kernel):
            return self.interp
        d = kwargs.get("BLOCK_D", named_args.get("BLOCK_D", 64))
        elt = named_args["Q"].element_size()

        def smem(c):
            m, n = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]
            return (m + n) * 2 * max(c.num_stages, 1) * d * elt

        off = autotune_off()
        chosen = self.default if off else self.tuned
        ok = [c for c in chosen if smem(c) <= SMEM_LIMIT] or [min(chosen, key=smem)]
        return ok[:1] if off else ok

    def autotune(self, key, **kw):
        """``triton.autotune`` over this set, keyed by ``key``."""
        return triton.autotune(configs=self.configs, key=key,
                               prune_configs_by={"early_config_prune": self.prune}, **kw)
