"""The training loop shared by the gradient-trained encoders, as plain functions.

``train_epoch(model, loader, opt, ...)`` and ``evaluate(model, loader, ...)`` take any
``nn.Module`` mapping a token batch ``(B, L, C)`` to z-scored predictions ``(B, V)``; a loader is
anything iterable over ``(x, y)`` batches with ``set_epoch(epoch)`` (like
``torch.utils.data.DistributedSampler``), so data parallelism can wrap the model and shard the
loader (``rank``/``world_size`` of :class:`ArrayLoader`) without changing this file.

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


class ArrayLoader:
    """Mini-batches of (features, targets) from arrays, reproducible per epoch.

    Parameters
    ----------
    X : (N, L, C) array or memmap (float16/32); rows ``indices`` are used.
    Y : (N, V) float array (z-scored targets) or None (prediction only).
    indices : int array of the rows to iterate over.
    batch_size : per process.
    shuffle : reshuffle every epoch with ``seed + epoch`` (set by :meth:`set_epoch`).
    rank, world_size : shard every epoch's order across processes (data parallelism).
    preload : hold the selected rows in memory as float16 (default: when they take < 2 GB).
    """

    def __init__(self, X, Y, indices, *, batch_size: int = 16, shuffle: bool = False,
                 seed: int = 0, rank: int = 0, world_size: int = 1, device="cpu",
                 preload: bool | None = None):
        self.indices = np.asarray(indices, dtype=np.int64)
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size {batch_size}: expected a positive integer")
        self.shuffle = shuffle
        self.seed = int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        self.device = torch.device(device)
        self.epoch = 0
        nbytes = len(self.indices) * int(np.prod(X.shape[1:])) * 2
        if preload is None:
            preload = nbytes < (2 << 30)
        if preload:
            order = np.argsort(self.indices)
            buf = np.empty((len(self.indices), *X.shape[1:]), dtype=np.float16)
            buf[order] = np.asarray(X[self.indices[order]], dtype=np.float16)
            self._X = torch.from_numpy(buf)
            self._local = True
        else:
            self._X = X
            self._local = False
        self._Y = None if Y is None else torch.as_tensor(np.asarray(Y)[self.indices], dtype=torch.float32)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _order(self) -> np.ndarray:
        n = len(self.indices)
        pos = np.arange(n)
        if self.shuffle:
            pos = np.random.default_rng([self.seed, self.epoch]).permutation(n)
        return pos[self.rank :: self.world_size]

    def __len__(self) -> int:
        n = len(self._order())
        return (n + self.batch_size - 1) // self.batch_size

    def __iter__(self):
        order = self._order()
        for s in range(0, len(order), self.batch_size):
            pos = order[s : s + self.batch_size]
            if self._local:
                x = self._X[torch.from_numpy(pos)]
            else:
                rows = self.indices[pos]
                srt = np.argsort(rows)
                xb = np.empty((len(rows), *self._X.shape[1:]), dtype=np.float16)
                xb[srt] = np.asarray(self._X[rows[srt]], dtype=np.float16)
                x = torch.from_numpy(xb)
            x = x.to(self.device, non_blocking=True).float()
            y = None if self._Y is None else self._Y[torch.from_numpy(pos)].to(self.device)
            yield x, y


def autocast(device, amp: bool):
    """bf16 autocast on CUDA when ``amp``; a no-op elsewhere."""
    dev = torch.device(device)
    if amp and dev.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _oom_message(exc, batch_size) -> BrainAttnError:
    return BrainAttnError(
        f"out of GPU memory at batch size {batch_size} ({str(exc).splitlines()[0][:80]}); lower "
        "--batch-size, or use --queries rois instead of vertices, or a smaller --width"
    )


def train_epoch(model, loader, opt, *, device="cpu", amp: bool = False,
                grad_clip: float | None = None, extra_loss=None, desc: str = "train") -> float:
    """One pass over ``loader`` minimising MSE (+ ``extra_loss(model)``); returns the mean loss."""
    model.train()
    total, count = 0.0, 0
    bar = progress(loader, desc=desc, total=len(loader))
    for x, y in bar:
        try:
            with autocast(device, amp):
                pred = model(x)
                loss = torch.mean((pred.float() - y) ** 2)
                if extra_loss is not None:
                    loss = loss + extra_loss(model)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            opt.step()
        except torch.cuda.OutOfMemoryError as exc:
            raise _oom_message(exc, loader.batch_size) from exc
        if not math.isfinite(float(loss)):
            raise BrainAttnError(
                "training diverged (loss is NaN/Inf); lower --lr or check the features for NaN"
            )
        total += float(loss) * len(x)
        count += len(x)
    return total / max(count, 1)


@torch.no_grad()
def predict_loader(model, loader, *, device="cpu", amp: bool = False) -> torch.Tensor:
    """Concatenated model outputs over ``loader`` (float32, on the CPU)."""
    model.eval()
    outs = []
    for x, _ in loader:
        try:
            with autocast(device, amp):
                outs.append(model(x).float().cpu())
        except torch.cuda.OutOfMemoryError as exc:
            raise _oom_message(exc, loader.batch_size) from exc
    return torch.cat(outs, 0)


@torch.no_grad()
def evaluate(model, loader, *, device="cpu", amp: bool = False) -> dict:
    """Validation MSE and mean/median Pearson r over vertices (NaN vertices skipped)."""
    pred = predict_loader(model, loader, device=device, amp=amp).double()
    y = loader._Y.double()
    mse = float(((pred - y) ** 2).mean())
    p = pred - pred.mean(0)
    t = y - y.mean(0)
    r = (p * t).sum(0) / torch.sqrt((p * p).sum(0) * (t * t).sum(0))
    r = r[torch.isfinite(r)]
    return {"val_loss": mse, "val_mean_r": float(r.mean()) if len(r) else float("nan"),
            "val_median_r": float(r.median()) if len(r) else float("nan")}


# --------------------------------------------------------------------------------------------
# checkpoints


def _flat_optimizer(opt) -> tuple[dict, dict]:
    sd = opt.state_dict()
    tensors, meta = {}, {"param_groups": sd["param_groups"], "state": {}}
    for idx, st in sd["state"].items():
        meta["state"][str(idx)] = []
        for name, val in st.items():
            if torch.is_tensor(val):
                tensors[f"optim.{idx}.{name}"] = val.detach().cpu().contiguous()
                meta["state"][str(idx)].append(name)
    return tensors, meta


def _load_optimizer(opt, tensors: dict, meta: dict) -> None:
    state = {}
    for idx, names in meta["state"].items():
        state[int(idx)] = {n: tensors[f"optim.{idx}.{n}"] for n in names}
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


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


def config_diff(a: dict, b: dict, ignore=("device",)) -> list[str]:
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


def fit_loop(model, opt, train_loader, val_loader, *, epochs: int, config: dict,
             ckpt_dir=None, resume: bool = False, device="cpu", amp: bool = False,
             grad_clip: float | None = None, patience: int | None = None,
             schedule: str = "cosine", warmup: int = 0, extra_loss=None, log=None,
             stop_after: int | None = None) -> dict:
    """Train for up to ``epochs`` epochs, keep the best model by validation mean r.

    Returns the final state dict (``history``: one dict per epoch with ``epoch``, ``lr``,
    ``train_loss``, ``val_loss``, ``val_mean_r``, ``val_median_r``, ``seconds``;
    ``best_epoch``, ``best_val_mean_r``); the model holds the best weights on return.
    ``stop_after`` ends the call after that many epochs as if killed (tests of ``resume``).
    """
    log = log or (lambda msg: None)
    base_lrs = [g["lr"] for g in opt.param_groups]
    state = {"epoch": -1, "best_epoch": -1, "best_val_mean_r": -float("inf"), "bad_epochs": 0,
             "history": [], "config": config, "done": False}
    if ckpt_dir is not None and resume:
        saved = json.loads((Path(ckpt_dir) / "state.json").read_text()) \
            if (Path(ckpt_dir) / "state.json").is_file() else None
        if saved is None:
            raise BrainAttnError(f"--resume: {ckpt_dir} holds no checkpoint (no state.json)")
        diff = config_diff(saved.get("config", {}), config)
        if diff:
            raise ConfigError(
                f"--resume: the run in {ckpt_dir} was made with a different config (keys differ: "
                f"{', '.join(diff)}); rerun with the same options or start a new --out folder"
            )
        state = load_checkpoint(ckpt_dir, model=model, opt=opt)
        log(f"resumed after epoch {state['epoch']} (best val mean r {state['best_val_mean_r']:.4f})")
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
            g["lr"] = lr0 * f
        train_loader.set_epoch(epoch)
        try:
            loss = train_epoch(model, train_loader, opt, device=device, amp=amp,
                               grad_clip=grad_clip, extra_loss=extra_loss,
                               desc=f"epoch {epoch + 1}/{epochs}")
            metrics = evaluate(model, val_loader, device=device, amp=amp)
        except KeyboardInterrupt:
            where = f"{ckpt_dir}" if ckpt_dir is not None else "nowhere (no checkpoint folder)"
            print(f"interrupted in epoch {epoch + 1}; the checkpoint of epoch {epoch} is in "
                  f"{where}; continue with --resume", file=sys.stderr)
            raise
        row = {"epoch": epoch, "lr": base_lrs[0] * f, "train_loss": loss, **metrics,
               "seconds": time.perf_counter() - t0}
        state["history"].append(row)
        state["epoch"] = epoch
        log(f"epoch {epoch + 1}/{epochs} loss {loss:.4f} val r {metrics['val_mean_r']:.4f} "
            f"({row['seconds']:.1f} s)")
        if metrics["val_mean_r"] > state["best_val_mean_r"]:
            state["best_val_mean_r"] = metrics["val_mean_r"]
            state["best_epoch"] = epoch
            state["bad_epochs"] = 0
            if best_path is not None:
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
        if ckpt_dir is not None:
            save_checkpoint(ckpt_dir, model=model, opt=opt, state=state)
        ran += 1
        if state["done"]:
            break
    if best_path is not None and best_path.is_file():
        load_module(best_path, model)
    elif best_mem is not None:
        model.load_state_dict(best_mem)
    return state
