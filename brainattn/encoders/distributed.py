"""Data-parallel training of the encoders across processes (torchrun + DistributedDataParallel).

``torchrun --nproc_per_node=N -m brainattn fit DATA ...`` starts N copies of the CLI; each finds
``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` in its environment and calls :func:`init_distributed`,
which joins the process group (NCCL on CUDA, gloo on the CPU or when NCCL is missing, with a
warning) and binds the process to GPU ``LOCAL_RANK``. From then on
:func:`brainattn.encoders.training.fit_loop` picks the context up (:func:`current`) and

* splits every *global* batch of ``--batch-size`` images into ``world_size`` equal shards, one
  per rank (so ``--batch-size`` means the same thing on 1 or N GPUs, and a step on N processes
  equals one step of one process on the concatenated batch; the batch must divide by N);
* wraps the model in DDP (gradients averaged across ranks), all-reduces the training loss and
  gathers the validation predictions of all ranks before scoring, so every rank takes the same
  early-stopping decisions;
* writes checkpoints from rank 0 only (atomically; the others wait at a barrier), so
  ``--resume`` works with any number of processes: the checkpoint holds no trace of the world
  size and the global batch order depends only on the seed and the epoch.

CUDA graphs (``fit_loop(cuda_graph=None)``, on for CUDA devices) replay the whole training step
of every rank -- forward, backward with DDP's gradient all-reduce, clipping, optimizer step --
as one graph (PyTorch's recipe for DistributedDataParallel, NCCL >= 2.9.6): NCCL's asynchronous
error handling is switched off before the process group starts
(``TORCH_NCCL_ASYNC_ERROR_HANDLING=0``, :func:`init_distributed`), DDP is built on the side
stream that also runs the eager warm-up steps and the capture (:meth:`DistContext.wrap`), and
11 DDP steps run eagerly before the capture. Every rank captures the same step and the ranks
agree (:meth:`DistContext.all_true`) before any graph is replayed, so a capture that fails on one
rank sends all of them back to eager steps.

Failures: a rank that dies makes the collectives of the others fail (gloo: at once; NCCL with
error handling on: after ``BRAINATTN_DIST_TIMEOUT`` seconds, default 900) or torchrun ends them
with SIGTERM; either way they stop with :class:`PeerFailure`, whose message says the last
checkpoint is intact and how to continue. With CUDA graphs (NCCL error handling off) a survivor
waits inside NCCL until torchrun's SIGTERM, and when that finds it blocked in a GPU wait,
torchrun's SIGKILL 30 s later, ends it: the exit is not clean, but checkpoints are written
atomically by rank 0 after an epoch, so the last one is intact and ``--resume`` continues (use
``cuda_graph=False`` with ``init_distributed(cuda_graph=False)`` to keep NCCL's own error
handling). At most ``world_size - 1`` images of the last (partial) training batch of each epoch
are left out so that shards stay equal (one process leaves none out).

This module is the low level: process groups, collectives, batch shards. It imports nothing
above it; running several fits (one per GPU, or one after another data-parallel) is
:mod:`brainattn.encoders.multifit`, which calls this module and the run folders.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import signal
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from brainattn.errors import BrainAttnError, ConfigError

#: torchrun's environment variables
ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")

#: NCCL's asynchronous error handling (old and new names); off for CUDA-graph capture
ASYNC_ERROR_KEYS = ("TORCH_NCCL_ASYNC_ERROR_HANDLING", "NCCL_ASYNC_ERROR_HANDLING")

#: the first NCCL that allows collectives inside a CUDA graph
NCCL_GRAPH_MIN = (2, 9, 6)

_CURRENT: DistContext | None = None


class PeerFailure(BrainAttnError):
    """Another rank died or hung, or torchrun stopped this one."""


@dataclass(frozen=True)
class DistContext:
    """This process's place in the process group.

    Attributes: ``rank``, ``world_size``, ``local_rank`` (GPU index on this machine),
    ``backend`` (``nccl`` | ``gloo``), ``device`` (torch.device of this rank), ``graphs``
    (whether the training step may be captured as a CUDA graph: NCCL >= 2.9.6 and its
    asynchronous error handling off when the group started; see :func:`init_distributed`).
    """

    rank: int
    world_size: int
    local_rank: int
    backend: str
    device: torch.device
    graphs: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        with collective_errors(self, "barrier"):
            if self.backend == "nccl":
                torch.distributed.barrier(device_ids=[self.device.index or 0])
            else:
                torch.distributed.barrier()

    def _comm_device(self) -> torch.device:
        return self.device if self.backend == "nccl" else torch.device("cpu")

    def all_true(self, flag: bool) -> bool:
        """Whether ``flag`` is true on every rank (every rank gets the same answer)."""
        t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=self._comm_device())
        with collective_errors(self, "all_reduce"):
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MIN)
        return bool(t.item())

    def all_reduce_mean(self, value: float) -> float:
        """Mean of a Python float over ranks (every rank gets it)."""
        t = torch.tensor([float(value)], dtype=torch.float64, device=self._comm_device())
        with collective_errors(self, "all_reduce"):
            torch.distributed.all_reduce(t)
        return float(t.item()) / self.world_size

    def gather_rows(self, t: torch.Tensor, *, keep_device: bool = False) -> list[torch.Tensor]:
        """Every rank's ``t`` (rows may differ in number; trailing dims equal), in rank order,
        on the CPU (``keep_device``: where the collective ran, the GPU for NCCL). Rows are
        padded to the longest for the all-gather and trimmed after."""
        dev = self._comm_device()
        n = torch.tensor([t.shape[0]], dtype=torch.int64, device=dev)
        sizes = [torch.zeros_like(n) for _ in range(self.world_size)]
        with collective_errors(self, "all_gather"):
            torch.distributed.all_gather(sizes, n)
            sizes = [int(s.item()) for s in sizes]
            m = max(sizes)
            pad = torch.zeros((m, *t.shape[1:]), dtype=t.dtype, device=dev)
            pad[: t.shape[0]] = t.to(dev)
            out = [torch.empty_like(pad) for _ in range(self.world_size)]
            torch.distributed.all_gather(out, pad)
        return [o[:s] if keep_device else o[:s].cpu() for o, s in zip(out, sizes, strict=True)]

    def wrap(self, module: torch.nn.Module, *, stream=None) -> torch.nn.Module:
        """``module`` inside DistributedDataParallel (buffers are constant: not re-broadcast;
        gradients are views of DDP's all-reduce buckets, so their addresses never change).

        ``stream``: a CUDA side stream to build DDP on -- the stream that later runs the eager
        warm-up steps and the CUDA-graph capture. DDP keeps the parameters' gradient
        accumulators alive, and each one stays bound to the stream it was made on; built on the
        default stream, the backward of a capture on a side stream would wait on the default
        stream, which a capture cannot do.
        """
        import inspect

        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [self.device.index or 0] if self.device.type == "cuda" else None
        params = inspect.signature(DDP.__init__).parameters
        # newer torch renamed the knob; buffers are identical on every rank from the start
        kw = {"forward_sync_buffers": False} if "forward_sync_buffers" in params else \
            {"broadcast_buffers": False}
        ctx = contextlib.nullcontext()
        if stream is not None:
            stream.wait_stream(torch.cuda.current_stream(self.device))
            ctx = torch.cuda.stream(stream)
        with collective_errors(self, "DDP setup"), ctx:
            ddp = DDP(module, device_ids=ids, gradient_as_bucket_view=True, **kw)
        if stream is not None:
            torch.cuda.current_stream(self.device).wait_stream(stream)
        return ddp


# --------------------------------------------------------------------------------------------
# set-up


def env_world() -> tuple[int, int, int] | None:
    """``(rank, world_size, local_rank)`` from torchrun's variables, or None when not set."""
    if not all(k in os.environ for k in ENV_KEYS):
        return None
    try:
        rank, world, local = (int(os.environ[k]) for k in ENV_KEYS)
    except ValueError as exc:
        raise ConfigError(f"torchrun variables {ENV_KEYS}: expected integers ({exc})") from exc
    if not 0 <= rank < world:
        raise ConfigError(f"RANK={rank} is outside 0..WORLD_SIZE-1={world - 1}")
    return rank, world, local


def choose_backend(device_type: str, requested: str | None = None) -> str:
    """``nccl`` for CUDA when NCCL is available, else ``gloo`` (with a warning if CUDA)."""
    requested = requested or os.environ.get("BRAINATTN_DIST_BACKEND") or None
    if requested is not None:
        if requested not in ("nccl", "gloo"):
            raise ConfigError(f"BRAINATTN_DIST_BACKEND={requested!r}: expected 'nccl' or 'gloo'")
        if requested == "nccl" and device_type != "cuda":
            raise ConfigError("BRAINATTN_DIST_BACKEND=nccl needs CUDA devices; use gloo on CPUs")
        return requested
    if device_type != "cuda":
        return "gloo"
    if not torch.distributed.is_nccl_available():
        warnings.warn("NCCL is not available in this torch build; falling back to gloo (slower "
                      "gradient all-reduce). Install a CUDA build of torch with NCCL to fix.",
                      RuntimeWarning, stacklevel=2)
        return "gloo"
    return "nccl"


def timeout_seconds() -> float:
    raw = os.environ.get("BRAINATTN_DIST_TIMEOUT", "900")
    try:
        val = float(raw)
    except ValueError:
        val = -1.0
    if not val > 0:
        raise ConfigError(f"BRAINATTN_DIST_TIMEOUT={raw!r}: expected a positive number of seconds")
    return val


def nccl_version() -> tuple[int, ...]:
    """NCCL's version as a tuple (``()`` when torch has no NCCL)."""
    try:
        v = torch.cuda.nccl.version()
    except Exception:  # a build without NCCL
        return ()
    return tuple(v) if isinstance(v, tuple) else (v // 1000, v // 100 % 10, v % 100)


def init_distributed(device: str = "auto", *, backend: str | None = None,
                     cuda_graph: bool | None = None) -> DistContext | None:
    """Join torchrun's process group when ``WORLD_SIZE > 1``; None for a single process.

    ``device``: ``auto``/``cuda`` bind rank to ``cuda:LOCAL_RANK`` when CUDA is present, ``cpu``
    trains on the CPU with gloo. ``cuda_graph``: unless False, an NCCL group (>= 2.9.6) starts
    with NCCL's asynchronous error handling off (``TORCH_NCCL_ASYNC_ERROR_HANDLING=0``, which
    torchrun sets to 1), as CUDA-graph capture of DDP's all-reduce requires; a dead peer is then
    noticed through torchrun's SIGTERM (module docstring). Idempotent: a second call returns
    the same context.
    """
    global _CURRENT
    if _CURRENT is not None:
        return _CURRENT
    world = env_world()
    if world is None or world[1] <= 1:
        return None
    rank, world_size, local = world
    want_cuda = device in (None, "auto", "cuda") or str(device).startswith("cuda")
    if want_cuda and torch.cuda.is_available():
        n = torch.cuda.device_count()
        if local >= n:
            raise ConfigError(f"LOCAL_RANK={local} but this machine has {n} GPUs; start at most "
                              f"--nproc_per_node={n} processes per node")
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    elif str(device).startswith("cuda"):
        raise ConfigError(f"--device {device}: no CUDA device is available to rank {rank}")
    else:
        dev = torch.device("cpu")
    be = choose_backend(dev.type, backend)
    kw = {"device_id": dev} if be == "nccl" else {}
    graphs = be == "nccl" and cuda_graph is not False and nccl_version() >= NCCL_GRAPH_MIN
    if graphs:  # read when the NCCL process group is created; the old name only where set
        for key in ASYNC_ERROR_KEYS:  # (torch warns that it is deprecated)
            if key == ASYNC_ERROR_KEYS[0] or key in os.environ:
                os.environ[key] = "0"
    try:
        torch.distributed.init_process_group(
            be, rank=rank, world_size=world_size,
            timeout=datetime.timedelta(seconds=timeout_seconds()), **kw)
    except (RuntimeError, ValueError) as exc:
        raise PeerFailure(f"rank {rank}: could not join the process group ({be}) at "
                          f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
                          f": {str(exc).splitlines()[0][:160]}") from exc
    _CURRENT = DistContext(rank, world_size, local, be, dev, graphs)
    _install_sigterm(rank)
    return _CURRENT


def current() -> DistContext | None:
    """The context set by :func:`init_distributed` (None when training on one process)."""
    return _CURRENT


def shutdown() -> None:
    """Leave the process group (end of a fit)."""
    global _CURRENT
    if _CURRENT is not None and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    _CURRENT = None


def _install_sigterm(rank: int) -> None:
    def handler(signum, frame):  # torchrun sends SIGTERM to the survivors when a rank fails
        raise PeerFailure(f"rank {rank}: stopped by SIGTERM (torchrun ends every rank when one "
                          "fails; its log names the failed rank)")

    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (e.g. inside a test runner thread)
        pass


_COMM_HINTS = ("gloo", "nccl", "connection closed", "connection reset", "timed out", "timeout",
               "processgroup", "broken pipe", "socket", "c10d")


def is_comm_error(exc: BaseException) -> bool:
    """Whether ``exc`` comes from a failed collective (peer gone, timeout) -- e.g. raised from
    DDP's gradient all-reduce inside ``backward``."""
    dist_err = getattr(torch.distributed, "DistError", None)
    if dist_err is not None and isinstance(exc, dist_err):
        return True
    msg = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(h in msg for h in _COMM_HINTS)


class collective_errors:
    """Turn a failed collective (peer died, hung, connection closed) into :class:`PeerFailure`."""

    def __init__(self, ctx: DistContext, what: str):
        self.ctx, self.what = ctx, what

    def __enter__(self):
        return self

    def __exit__(self, typ, exc, tb):
        if exc is None or isinstance(exc, BrainAttnError) or not isinstance(exc, RuntimeError):
            return False
        raise PeerFailure(
            f"rank {self.ctx.rank} of {self.ctx.world_size}: {self.what} failed -- another rank "
            f"died or hung ({str(exc).splitlines()[0][:120]})"
        ) from exc


# --------------------------------------------------------------------------------------------
# batches


def check_batch_divisible(batch_size: int, world_size: int) -> None:
    """The global batch must split into equal shards; the error says what to set."""
    if world_size > 1 and batch_size % world_size:
        lo = max(world_size, batch_size // world_size * world_size)
        hi = (batch_size // world_size + 1) * world_size
        divs = [d for d in range(2, batch_size + 1) if batch_size % d == 0 and d <= 16]
        raise ConfigError(
            f"--batch-size {batch_size} does not divide among {world_size} processes "
            f"(WORLD_SIZE={world_size}); set --batch-size to a multiple of {world_size} (e.g. "
            f"{lo} or {hi}) or start --nproc_per_node in {divs or [1]}"
        )


def shard_positions(batch: np.ndarray, rank: int, world_size: int, *,
                    drop_uneven: bool) -> np.ndarray:
    """This rank's part of one global batch (positions into the loader's rows).

    Training (``drop_uneven``): equal contiguous shards; the remainder ``len % world_size``
    (only in the last batch of an epoch) is left out, so every rank takes the same number of
    steps and the DDP gradient mean equals the mean over the kept images. Evaluation: the batch
    is split as evenly as possible (a shard may be empty), nothing is left out.
    """
    if world_size == 1:
        return batch
    if drop_uneven:
        per = len(batch) // world_size
        return batch[rank * per : (rank + 1) * per]
    return np.array_split(batch, world_size)[rank]
