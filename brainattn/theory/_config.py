"""Config resolution shared by every theory simulation.

A config is a flat ``dict`` whose keys are exactly those of the module's ``QUICK`` preset
(``FULL`` has the same keys). :func:`resolve_config` starts from a preset, merges a user file
(JSON, or TOML read with :mod:`tomllib`) and explicit overrides, and refuses unknown keys or
values of the wrong kind with a one-line :class:`~brainattn.errors.ConfigError` naming the key.
Impossible *values* (``d_k < 1``, ``k`` larger than the set) are checked by each module's
``simulate``, which knows what they mean.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import json
import numbers
from pathlib import Path
from types import ModuleType
from typing import Any

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


__all__ = ["SCALES", "cpu_threads", "merge_config", "read_config_file", "resolve_config"]
