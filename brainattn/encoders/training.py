"""The training loop shared by the gradient-trained encoders, as plain functions.

``train_epoch(model, loader, opt, ...)`` and ``evaluate(model, loader, ...)`` take any
``nn.Module`` mapping a token batch ``(B, L, C)`` to z-scored predictions ``(B, V)``; a loader is
anything iterable over ``(x, y)`` batches with ``set_epoch(epoch)`` (like
``torch.utils.data.DistributedSampler``), so data parallelism can wrap the model and shard the
loader (``rank``/``world_size`` of :class:`brainattn.encoders.loader.ArrayLoader`) without
changing this file.

:func:`fit_loop` adds deterministic epochs, per-epoch checkpoints (``ckpt-<epoch>.safetensors``
holding model, optimizer and RNG tensors, then ``state.json`` pointing at it, both atomic), the
best model by validation mean Pearson r (``best.safetensors``), early stopping, ``resume``
(same result as an uninterrupted run) and Ctrl-C handling (the last completed epoch stays on
disk; the message says how to continue).
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from brainattn.errors import BrainAttnError, ConfigError
from brainattn.io import atomic_path, atomic_write_json
from brainattn.utils import progress


def autocast(device, amp: bool, *, cache_enabled: bool = True):
    """bf16 autocast on CUDA when ``amp``; a no-op elsewhere. ``cache_enabled=False`` for
    code that is captured in a CUDA graph (the weight-cast cache must not outlive a step)."""
    dev = torch.device(device)
    if amp and dev.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=cache_enabled)
    return contextlib.nullcontext()


def _oom_message(exc, batch_size) -> BrainAttnError:
    return BrainAttnError(
        f"out of GPU memory at batch size {batch_size} ({str(exc).splitlines()[0][:80]}); lower "
        "--batch-size, or use --queries rois instead of vertices, or a smaller --width"
    )


def _step(model, opt, x, y, *, device, amp: bool, grad_clip, extra_loss,
          set_to_none: bool = True, cache_enabled: bool = True) -> torch.Tensor:
    """One optimisation step on (x, y): MSE (+ ``extra_loss``), backward, clip, optimizer
    step. Returns the loss, detached (0-d, on the device, not synchronised; holding the
    autograd graph past the step would keep its AccumulateGrad nodes on this step's stream)."""
    inner = getattr(model, "module", model)  # DDP wraps the model; extra_loss wants the module
    with autocast(device, amp, cache_enabled=cache_enabled):
        pred = model(x)
        loss = torch.mean((pred.float() - y) ** 2)
        if extra_loss is not None:
            loss = loss + extra_loss(inner)
    opt.zero_grad(set_to_none=set_to_none)
    loss.backward()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    return loss.detach()


def prepare_graph_optimizer(opt, device) -> None:
    """Make ``opt`` (Adam/AdamW/SGD-like) replayable in a CUDA graph: ``capturable=True``,
    each group's ``lr`` a 0-d float32 tensor on ``device`` (set it with :func:`set_lr`, in
    place, so a captured step sees the new value), ``step`` counters on the device."""
    device = torch.device(device)
    for g in opt.param_groups:
        if "capturable" in g:
            g["capturable"] = True
        if not torch.is_tensor(g["lr"]):
            g["lr"] = torch.tensor(float(g["lr"]), dtype=torch.float32, device=device)
    for st in opt.state.values():
        step = st.get("step")
        if torch.is_tensor(step) and step.device != device:
            st["step"] = step.to(device=device, dtype=torch.float32)


def set_lr(group: dict, value: float) -> None:
    """Set a parameter group's learning rate (in place when it is a tensor)."""
    if torch.is_tensor(group["lr"]):
        group["lr"].fill_(float(value))
    else:
        group["lr"] = float(value)


#: DDP-enabled eager steps before a capture (PyTorch's CUDA-graph notes: DDP samples runtime
#: statistics, with host synchronisations, during its first 10 iterations)
DDP_WARMUP = 11


class CudaGraphStep:
    """The whole training step (bf16 forward, loss, backward, gradient clipping, optimizer
    step) captured once as a CUDA graph and replayed for every full-size batch.

    The first ``warmup`` full batches are ordinary eager steps on a side stream (Triton kernels
    compile and autotune, the optimizer creates its state); the next one is captured, and from
    then on a step is two copies into static input buffers plus one graph replay: a handful of
    launches instead of hundreds. Dropout stays random across replays (torch's graph-safe
    philox offsets); the learning rate is read from the optimizer's ``lr`` tensors, so
    :func:`set_lr` between epochs takes effect. Batches of another shape (the partial last
    batch) run eagerly with the same optimizer (gradients are zeroed in place: the graph keeps
    writing into the same ``.grad`` tensors).

    Data parallelism (``dist``, a :class:`~brainattn.encoders.distributed.DistContext` whose
    ``graphs`` is true; ``model`` the DDP-wrapped module, built on ``stream`` by
    :meth:`~brainattn.encoders.distributed.DistContext.wrap`): the graph holds DDP's gradient
    all-reduce too, warm-up is at least :data:`DDP_WARMUP` steps, and after the capture the
    ranks agree before replaying: if any rank failed to capture, all of them train eagerly
    (auto mode) or raise (``strict``). ``batch_size`` is this rank's shard of a batch.

    ``opt`` must have gone through :func:`prepare_graph_optimizer`. ``strict``: a capture that
    fails raises; otherwise it warns and the remaining steps run eagerly. ``stream``: the side
    stream of the eager steps and the capture (default: a new one). ``status`` says what
    happened: ``"warm-up"``, ``"captured"`` or ``"eager (capture failed...)"``.
    """

    def __init__(self, model, opt, *, device, amp: bool, grad_clip, extra_loss,
                 batch_size: int, warmup: int = 3, strict: bool = True, dist=None,
                 stream=None, log=None):
        self.model, self.opt = model, opt
        self.device = torch.device(device)
        self.kw = {"device": self.device, "amp": amp, "grad_clip": grad_clip,
                   "extra_loss": extra_loss}
        self.batch_size = int(batch_size)
        self.dist = dist if dist is not None and dist.world_size > 1 else None
        self.warmup = int(warmup) if self.dist is None else max(int(warmup), DDP_WARMUP)
        self.strict = strict
        self.n_warm = 0
        self.graph = None
        self.disabled = False
        self.status = "warm-up"
        self.static_x = self.static_y = self.static_loss = None
        self._side = stream
        self._log = log or (lambda msg: None)

    def accepts(self, x, y) -> bool:
        """Whether (x, y) goes through the graph (full-size batch of the captured shape)."""
        if self.disabled or y is None:
            return False
        if self.static_x is None:
            return x.shape[0] == self.batch_size
        return (x.shape == self.static_x.shape and y.shape == self.static_y.shape
                and x.dtype == self.static_x.dtype and y.dtype == self.static_y.dtype)

    def _on_side(self, x, y, **kw) -> torch.Tensor:
        """One eager step on the side stream (ordered after, and before, the current stream's
        work): the stream DDP's gradient accumulators are bound to."""
        cur = torch.cuda.current_stream(self.device)
        if self._side is None:
            self._side = torch.cuda.Stream(self.device)
        self._side.wait_stream(cur)
        with torch.cuda.stream(self._side):
            loss = _step(self.model, self.opt, x, y, **kw, **self.kw)
        cur.wait_stream(self._side)
        return loss

    def eager(self, x, y) -> torch.Tensor:
        """One eager step with the same optimizer (after capture: gradients zeroed in place)."""
        return self._on_side(x, y, set_to_none=self.graph is None)

    def step(self, x, y) -> torch.Tensor:
        """One training step on a full-size batch; returns the loss tensor (0-d, on the device;
        after capture a static buffer, overwritten by the next replay)."""
        if self.graph is not None:
            self.static_x.copy_(x, non_blocking=True)
            self.static_y.copy_(y, non_blocking=True)
            self.graph.replay()
            return self.static_loss
        if self.n_warm < self.warmup:
            loss = self._on_side(x, y, cache_enabled=False)
            self.n_warm += 1
            return loss
        return self._capture(x, y)

    def _capture(self, x, y) -> torch.Tensor:
        import warnings

        self.static_x = torch.empty_like(x)
        self.static_y = torch.empty_like(y)
        self.static_x.copy_(x)
        self.static_y.copy_(y)
        self.opt.zero_grad(set_to_none=True)  # .grad is allocated from the graph's pool
        if self._side is None:
            self._side = torch.cuda.Stream(self.device)
        graph = torch.cuda.CUDAGraph()
        why = None
        try:
            # thread_local: a streaming loader's prefetch thread (and NCCL's watchdog) may use
            # CUDA meanwhile; the capture runs on the stream of the warm-up steps (and of DDP)
            with torch.cuda.graph(graph, stream=self._side, capture_error_mode="thread_local"):
                loss = _step(self.model, self.opt, self.static_x, self.static_y,
                             cache_enabled=False, **self.kw)
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as exc:
            why = (str(exc).splitlines() or [type(exc).__name__])[0][:120]
            torch.cuda.synchronize(self.device)
            if self.strict and self.dist is None:
                raise BrainAttnError(f"cuda_graph: capturing the training step failed ({why}); "
                                     "train with cuda_graph=False") from exc
        if self.dist is not None and not self.dist.all_true(why is None):
            # a graph holding an all-reduce may only be replayed by all ranks together
            why = why or "it failed on another rank"
            if self.strict:
                raise BrainAttnError(f"cuda_graph: capturing the training step failed on rank "
                                     f"{self.dist.rank} or another ({why}); train with "
                                     "cuda_graph=False")
        if why is not None:
            warnings.warn(f"CUDA-graph capture of the training step failed ({why}); training "
                          "eagerly", stacklevel=2)
            self.disabled = True
            self.status = f"eager (capture failed: {why})"
            self.static_x = self.static_y = None
            del graph
            return self._on_side(x, y)
        self.graph, self.static_loss = graph, loss
        self.status = "captured"
        self._log(f"training step captured as a CUDA graph after {self.n_warm} eager steps"
                  + (f" (with DDP's all-reduce, {self.dist.world_size} ranks)"
                     if self.dist is not None else ""))
        graph.replay()  # capturing ran nothing: this is the step of this batch
        return loss


def train_epoch(model, loader, opt, *, device="cpu", amp: bool = False,
                grad_clip: float | None = None, extra_loss=None, desc: str = "train",
                graph: CudaGraphStep | None = None) -> float:
    """One pass over ``loader`` minimising MSE (+ ``extra_loss(model)``); returns the mean loss.

    ``graph``: run full-size batches through this :class:`CudaGraphStep` (same model and
    optimizer), the others eagerly."""
    model.train()
    total, count = torch.zeros((), dtype=torch.float64, device=device), 0
    n_steps = len(loader)
    bar = progress(loader, desc=desc, total=n_steps)
    kw = {"device": device, "amp": amp, "grad_clip": grad_clip, "extra_loss": extra_loss}
    for i, (x, y) in enumerate(bar):
        try:
            if graph is None:
                loss = _step(model, opt, x, y, **kw)
            elif graph.accepts(x, y):
                loss = graph.step(x, y)
            else:
                loss = graph.eager(x, y)
        except torch.cuda.OutOfMemoryError as exc:
            raise _oom_message(exc, loader.batch_size) from exc
        # the loss stays on the device (a float() per step would stall the GPU queue); it is
        # checked for divergence every 64 steps and at the end
        total += loss.detach() * len(x)
        count += len(x)
        if (i % 64 == 63 or i == n_steps - 1) and not math.isfinite(float(total)):
            raise BrainAttnError(
                "training diverged (loss is NaN/Inf); lower --lr or check the features for NaN"
            )
    return float(total) / max(count, 1)


@torch.no_grad()
def predict_loader(model, loader, *, device="cpu", amp: bool = False,
                   keep_device: bool = False) -> torch.Tensor:
    """Concatenated model outputs over ``loader`` (float32; on the CPU, or where the batches
    are with ``keep_device``: no host copy, no synchronisation per batch)."""
    model.eval()
    outs = []
    for x, _ in loader:
        try:
            with autocast(device, amp):
                out = model(x).float()
        except torch.cuda.OutOfMemoryError as exc:
            raise _oom_message(exc, loader.batch_size) from exc
        outs.append(out if keep_device else out.cpu())
    return torch.cat(outs, 0)


@torch.no_grad()
def evaluate(model, loader, *, device="cpu", amp: bool = False, dist=None) -> dict:
    """Validation MSE and mean/median Pearson r over vertices (NaN vertices skipped).

    With ``dist`` (data parallelism) each rank predicts its shard of ``loader`` and the
    predictions of all ranks are gathered, so every rank scores the whole validation set.
    Scores are computed in float64 where the loader's targets are (on the GPU for a CUDA
    loader: at Algonauts size the CPU pass over 984 x 39,548 values took a large part of an
    epoch of CUDA-graph training).
    """
    y = loader._Yd if loader._Yd is not None else loader._Y
    dev = y.device
    if len(loader):
        pred = predict_loader(model, loader, device=device, amp=amp, keep_device=True).to(dev)
    else:
        pred = torch.zeros((0, y.shape[1]), device=dev)
    if dist is not None and dist.world_size > 1:
        mine = loader.batches()
        pos = torch.from_numpy(np.concatenate(mine) if mine else np.zeros(0, np.int64))
        full = torch.full((len(loader.indices), y.shape[1]), float("nan"), device=dev)
        rows = torch.cat(dist.gather_rows(pos.to(dist._comm_device()), keep_device=True))
        full[rows.to(dev)] = torch.cat(dist.gather_rows(pred, keep_device=True)).to(dev)
        pred = full
    from brainattn.encoders.metrics import pearson_per_column

    mse = float(((pred.double() - y.double()) ** 2).mean())
    r = pearson_per_column(pred, y)  # float64 where the targets are
    r = r[torch.isfinite(r)]
    return {"val_loss": mse, "val_mean_r": float(r.mean()) if len(r) else float("nan"),
            "val_median_r": float(r.median()) if len(r) else float("nan")}


# --------------------------------------------------------------------------------------------
# checkpoints


def _flat_optimizer(opt) -> tuple[dict, dict]:
    sd = opt.state_dict()
    # a tensor learning rate (CUDA-graph training) is stored as a plain number
    groups = [{k: (float(v) if torch.is_tensor(v) and v.numel() == 1 else v)
               for k, v in g.items()} for g in sd["param_groups"]]
    tensors, meta = {}, {"param_groups": groups, "state": {}}
    for idx, st in sd["state"].items():
        meta["state"][str(idx)] = []
        for name, val in st.items():
            if torch.is_tensor(val):
                tensors[f"optim.{idx}.{name}"] = val.detach().cpu().contiguous()
                meta["state"][str(idx)].append(name)
    return tensors, meta


#: optimizer options that say how the update is computed, not what it is: a checkpoint keeps
#: the loading optimizer's (a run saved on a GPU with fused/capturable AdamW resumes on a CPU)
_IMPL_KEYS = ("foreach", "fused", "capturable", "differentiable")


def _load_optimizer(opt, tensors: dict, meta: dict) -> None:
    state = {}
    for idx, names in meta["state"].items():
        state[int(idx)] = {n: tensors[f"optim.{idx}.{n}"] for n in names}
    groups = []
    for saved, cur in zip(meta["param_groups"], opt.param_groups, strict=False):
        groups.append({**saved, **{k: cur[k] for k in _IMPL_KEYS if k in cur}})
    groups += meta["param_groups"][len(groups):]  # a count mismatch: load_state_dict says so
    lrs = [g["lr"] if torch.is_tensor(g["lr"]) else None for g in opt.param_groups]
    opt.load_state_dict({"state": state, "param_groups": groups})
    for g, t in zip(opt.param_groups, lrs, strict=True):  # keep tensor LRs (captured graphs)
        if t is not None:
            t.fill_(float(g["lr"]))
            g["lr"] = t


def save_module(path, model) -> None:
    """Model parameters and buffers as safetensors, atomically."""
    from safetensors.torch import save_file

    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(sd, str(tmp))


def load_module(path, model) -> None:
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(path)))


def save_checkpoint(ckpt_dir, *, model, opt, state: dict) -> None:
    """Write ``ckpt-<epoch>.safetensors`` (model + optimizer + RNG) then ``state.json``."""
    from safetensors.torch import save_file

    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    opt_t, opt_meta = _flat_optimizer(opt)
    tensors.update(opt_t)
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    name = f"ckpt-{state['epoch']:04d}.safetensors"
    with atomic_path(ckpt_dir / name) as tmp:
        save_file(tensors, str(tmp))
    atomic_write_json(ckpt_dir / "state.json", {**state, "checkpoint": name, "optimizer": opt_meta})
    for old in ckpt_dir.glob("ckpt-*.safetensors"):
        if old.name != name:
            old.unlink(missing_ok=True)


def load_checkpoint(ckpt_dir, *, model, opt) -> dict:
    from safetensors.torch import load_file

    ckpt_dir = Path(ckpt_dir)
    st_path = ckpt_dir / "state.json"
    if not st_path.is_file():
        raise BrainAttnError(f"--resume: {ckpt_dir} holds no checkpoint (no state.json)")
    state = json.loads(st_path.read_text())
    tensors = load_file(str(ckpt_dir / state["checkpoint"]))
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    _load_optimizer(opt, tensors, state.pop("optimizer"))
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    return state


def config_diff(a: dict, b: dict, ignore=("device", "cuda_graph")) -> list[str]:
    """Keys whose values differ between two configs (JSON-normalised)."""
    a = json.loads(json.dumps(a, default=str))
    b = json.loads(json.dumps(b, default=str))
    keys = sorted(set(a) | set(b))
    return [k for k in keys if k not in ignore and a.get(k) != b.get(k)]


def lr_factor(epoch: int, *, schedule: str, epochs: int, warmup: int = 0,
              step_size: int = 5, gamma: float = 0.5) -> float:
    """Learning-rate multiplier of ``epoch`` (0-based): 'cosine', 'step' or 'constant'."""
    if warmup and epoch < warmup:
        return (epoch + 1) / (warmup + 1)
    if schedule == "cosine":
        t = (epoch - warmup) / max(1, epochs - warmup)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t))
    if schedule == "step":
        return gamma ** (epoch // step_size)
    if schedule == "constant":
        return 1.0
    raise ConfigError(f"schedule {schedule!r}: expected 'cosine', 'step' or 'constant'")


def _use_graph(cuda_graph: bool | None, device, dist) -> bool:
    """Resolve ``cuda_graph`` (None = auto) for this device and process group: auto is on for
    a CUDA device, with one process or data-parallel over NCCL started graph-ready
    (``dist.graphs``, see :func:`brainattn.encoders.distributed.init_distributed`)."""
    dev = torch.device(device)
    dist_ok = dist is None or bool(getattr(dist, "graphs", False))
    if cuda_graph is None:
        return dev.type == "cuda" and dist_ok
    if not cuda_graph:
        return False
    if dev.type != "cuda":
        raise ConfigError(f"cuda_graph=True: CUDA graphs need a CUDA device, training runs on "
                          f"{dev.type}; use cuda_graph=None (auto) or False")
    if not dist_ok:
        from brainattn.encoders.distributed import NCCL_GRAPH_MIN, nccl_version

        why = (f"the {dist.backend} backend" if dist.backend != "nccl" else
               f"NCCL {'.'.join(map(str, nccl_version()))} (needs >= "
               f"{'.'.join(map(str, NCCL_GRAPH_MIN))})" if nccl_version() < NCCL_GRAPH_MIN else
               "a process group started with NCCL's async error handling on "
               "(init_distributed(cuda_graph=False))")
        raise ConfigError(f"cuda_graph=True: data-parallel training (world size "
                          f"{dist.world_size}) cannot capture its all-reduce with {why}; use "
                          "cuda_graph=None (auto) or False")
    return True


def fit_loop(model, opt, train_loader, val_loader, *, epochs: int, config: dict,
             ckpt_dir=None, resume: bool = False, device="cpu", amp: bool = False,
             grad_clip: float | None = None, patience: int | None = None,
             schedule: str = "cosine", warmup: int = 0, extra_loss=None, log=None,
             stop_after: int | None = None, dist=None, cuda_graph: bool | None = None) -> dict:
    """Train for up to ``epochs`` epochs, keep the best model by validation mean r.

    Returns the final state dict (``history``: one dict per epoch with ``epoch``, ``lr``,
    ``train_loss``, ``val_loss``, ``val_mean_r``, ``val_median_r``, ``seconds``;
    ``train_seconds``: per epoch, the part spent training, without validation;
    ``best_epoch``, ``best_val_mean_r``); the model holds the best weights on return.
    ``stop_after`` ends the call after that many epochs as if killed (tests of ``resume``).
    ``dist``: a :class:`~brainattn.encoders.distributed.DistContext` (default: the one torchrun
    set up, if any): data-parallel training, rank-0 checkpoints (see that module).
    ``cuda_graph``: replay the training step as a CUDA graph (:class:`CudaGraphStep`; makes
    ``opt`` capturable with tensor learning rates; with data parallelism the graph holds DDP's
    all-reduce). ``None`` (auto): on for a CUDA ``device`` (with any number of NCCL processes),
    eager if the capture fails (a warning; every rank falls back together); ``True``: a failed
    capture raises, and a CPU device or a process group that cannot capture is refused
    (:class:`~brainattn.errors.ConfigError`); ``False``: eager steps. The returned state's
    ``cuda_graph`` says what happened (``off``, ``captured``, ``eager (capture failed...)``).
    """
    from brainattn.encoders import distributed as D

    dist = dist if dist is not None else D.current()
    if dist is not None and dist.world_size <= 1:
        dist = None
    main = dist is None or dist.is_main
    log = (log if main else None) or (lambda msg: None)
    train_model = model
    if dist is not None:
        train_loader.shard(dist.rank, dist.world_size)
        val_loader.shard(dist.rank, dist.world_size)
    use_graph = _use_graph(cuda_graph, device, dist)
    base_lrs = [float(g["lr"]) for g in opt.param_groups]
    state = {"epoch": -1, "best_epoch": -1, "best_val_mean_r": -float("inf"), "bad_epochs": 0,
             "history": [], "config": config, "done": False}
    saved = None
    if ckpt_dir is not None and resume:
        saved = json.loads((Path(ckpt_dir) / "state.json").read_text()) \
            if (Path(ckpt_dir) / "state.json").is_file() else None
        if saved is None:  # stopped before the first epoch ended: the fit starts over, which
            # is what the uninterrupted run did
            log("no checkpoint yet: starting from the first epoch")
    if saved is not None:
        diff = config_diff(saved.get("config", {}), config)
        if diff:
            raise ConfigError(
                f"--resume: the run in {ckpt_dir} was made with a different config (keys differ: "
                f"{', '.join(diff)}); rerun with the same options or start a new --out folder"
            )
        state = load_checkpoint(ckpt_dir, model=model, opt=opt)
        log(f"resumed after epoch {state['epoch']} (best val mean r {state['best_val_mean_r']:.4f})")
    # the eager steps, the capture and (for DDP) the DDP constructor share one side stream
    side = torch.cuda.Stream(torch.device(device)) if use_graph else None
    if dist is not None:  # after a resume: DDP starts from the loaded weights
        train_model = dist.wrap(model, stream=side)
        log(f"data-parallel over {dist.world_size} processes ({dist.backend}), "
            f"{train_loader.batch_size // dist.world_size} images per process and step")
    graph = None
    if use_graph:  # after a resume: the loaded optimizer state is what gets captured
        prepare_graph_optimizer(opt, device)
        world = 1 if dist is None else dist.world_size
        graph = CudaGraphStep(train_model, opt, device=device, amp=amp, grad_clip=grad_clip,
                              extra_loss=extra_loss, batch_size=train_loader.batch_size // world,
                              strict=cuda_graph is True, dist=dist, stream=side, log=log)
    best_path = None if ckpt_dir is None else Path(ckpt_dir) / "best.safetensors"
    best_mem = None
    if state["done"]:
        epochs_left = []
    else:
        epochs_left = range(state["epoch"] + 1, epochs)
    ran = 0
    for epoch in epochs_left:
        if stop_after is not None and ran >= stop_after:
            break
        t0 = time.perf_counter()
        f = lr_factor(epoch, schedule=schedule, epochs=epochs, warmup=warmup)
        for g, lr0 in zip(opt.param_groups, base_lrs, strict=True):
            set_lr(g, lr0 * f)
        train_loader.set_epoch(epoch)
        where = f"{ckpt_dir}" if ckpt_dir is not None else "nowhere (no checkpoint folder)"
        try:
            loss = train_epoch(train_model, train_loader, opt, device=device, amp=amp,
                               grad_clip=grad_clip, extra_loss=extra_loss,
                               desc=f"epoch {epoch + 1}/{epochs}", graph=graph)
            if dist is not None:
                loss = dist.all_reduce_mean(loss)
            t_train = time.perf_counter() - t0  # train_epoch ends with a host read: synced
            metrics = evaluate(model, val_loader, device=device, amp=amp, dist=dist)
        except KeyboardInterrupt:
            print(f"interrupted in epoch {epoch + 1}; the checkpoint of epoch {epoch} is in "
                  f"{where}; continue with --resume", file=sys.stderr)
            raise
        except (D.PeerFailure, RuntimeError) as exc:
            if dist is None or not (isinstance(exc, D.PeerFailure) or D.is_comm_error(exc)):
                raise
            raise D.PeerFailure(f"{str(exc).rstrip('.')}; stopped in epoch {epoch + 1}: the "
                                f"checkpoint of epoch {epoch} in {where} is intact; continue "
                                "with --resume (any number of processes)") from exc
        row = {"epoch": epoch, "lr": base_lrs[0] * f, "train_loss": loss, **metrics,
               "seconds": time.perf_counter() - t0}
        state["history"].append(row)
        # outside the history (its CSV keeps its columns across a resume): training seconds
        state.setdefault("train_seconds", []).append(round(t_train, 4))
        state["epoch"] = epoch
        log(f"epoch {epoch + 1}/{epochs} loss {loss:.4f} val r {metrics['val_mean_r']:.4f} "
            f"({row['seconds']:.1f} s)")
        if metrics["val_mean_r"] > state["best_val_mean_r"]:
            state["best_val_mean_r"] = metrics["val_mean_r"]
            state["best_epoch"] = epoch
            state["bad_epochs"] = 0
            if best_path is not None and main:
                save_module(best_path, model)
            else:
                best_mem = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            state["bad_epochs"] += 1
        if patience is not None and state["bad_epochs"] >= patience:
            state["done"] = True
            log(f"early stop after epoch {epoch + 1} (best epoch {state['best_epoch'] + 1})")
        if epoch == epochs - 1:
            state["done"] = True
        if ckpt_dir is not None and main:
            save_checkpoint(ckpt_dir, model=model, opt=opt, state=state)
        if dist is not None:
            dist.barrier()  # the checkpoint is on disk before anyone goes on
        ran += 1
        if state["done"]:
            break
    if best_path is not None and best_path.is_file():
        load_module(best_path, model)
    elif best_mem is not None:
        model.load_state_dict(best_mem)
    state["cuda_graph"] = "off" if graph is None else graph.status
    return state
