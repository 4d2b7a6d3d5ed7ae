"""Small shared helpers: seeding, device choice, progress bars."""

from __future__ import annotations

import os
import random
from collections.abc import Iterable

import numpy as np

from brainattn.errors import ConfigError


def seed_everything(seed: int) -> np.random.Generator:
    """Seed Python, NumPy and torch (CPU and CUDA) and return a NumPy ``Generator``.

    One helper for every command: the same seed gives the same files and the same fit.
    """
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed: expected a non-negative integer, got {seed!r}")
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return np.random.default_rng(seed)


def resolve_device(device: str = "auto"):
    """``"auto"`` picks CUDA when present, else CPU; anything else is passed to ``torch.device``."""
    import torch

    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"device: cannot parse {device!r}; expected 'auto', 'cpu' or 'cuda[:N]'") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: {device!r} asked for but no CUDA device is available; use 'cpu' or 'auto'")
    return dev


def progress(iterable: Iterable | None = None, *, desc: str = "", total: int | None = None, **kw):
    """A tqdm progress bar that stays quiet when ``BRAINATTN_PROGRESS=0`` (tests, pipes)."""
    from tqdm.auto import tqdm

    disable = os.environ.get("BRAINATTN_PROGRESS", "1") == "0"
    return tqdm(iterable, desc=desc, total=total, disable=disable, leave=False, dynamic_ncols=True, **kw)
