"""Checks the verbs run on their options while the command line is parsed, before any work.

typer's own ``min``/``max`` cover closed integer and float ranges (and refuse NaN, which no
comparison admits); the callbacks here cover what they cannot say: open bounds (a learning rate
``> 0``), finiteness, input paths that must exist and outputs that must be writable. Each raises
``typer.BadParameter``, which the ``brainattn`` command prints as one line ``error: Invalid value
for '--lapse': ...`` (the accepted range in the message) and exit status 2. Only typer is imported
here: a bad option is answered before torch, xarray or pandas load.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import typer

#: seeds every verb accepts: numpy's and torch's generators both take any integer in [0, 2**32)
SEED_MAX = 2**32 - 1


def seed_option(default: int | None = 0, help: str = "Random seed: same seed, same result."):
    """The ``--seed`` option of every verb: an integer in [0, 2**32 - 1]."""
    return typer.Option(default, "--seed", min=0, max=SEED_MAX, help=help)


def _finite(value: float | None) -> None:
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"Input should be a finite number, got {value}")


def finite(value: float | None) -> float | None:
    """Callback: any finite number (no NaN, no infinity)."""
    _finite(value)
    return value


def positive(value: float | None) -> float | None:
    """Callback: a finite number greater than 0."""
    _finite(value)
    if value is not None and not value > 0:
        raise typer.BadParameter(f"Input should be a finite number greater than 0, got {value}")
    return value


def in_range(low: float, high: float, *, low_open: bool = False,
             high_open: bool = False) -> Callable[[float | None], float | None]:
    """Callback: a number in the interval from ``low`` to ``high``, each end open or closed.

    For ranges typer's ``min``/``max`` cannot state, e.g. a lapse rate in [0, 1).
    """
    text = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"

    def check(value: float | None) -> float | None:
        if value is None:
            return value
        ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
        if not ok:  # NaN fails both comparisons
            raise typer.BadParameter(f"Input should be a number in {text}, got {value}")
        return value

    return check


def existing_file(expected: str) -> Callable[[Path | None], Path | None]:
    """Callback: ``value`` must name an existing file (``expected`` says what it holds)."""

    def check(value: Path | None) -> Path | None:
        if value is not None and not Path(value).is_file():
            what = "is a folder" if Path(value).is_dir() else "no such file"
            raise typer.BadParameter(f"{value}: {what} (expected {expected})")
        return value

    return check


def existing_dir(expected: str) -> Callable[[Path | None], Path | None]:
    """Callback: ``value`` must name an existing folder (``expected`` says what it holds)."""

    def check(value: Path | None) -> Path | None:
        if value is not None and not Path(value).is_dir():
            what = "is a file, not a folder" if Path(value).exists() else "no such folder"
            raise typer.BadParameter(f"{value}: {what} (expected {expected})")
        return value

    return check


def existing_dirs(expected: str) -> Callable[[list[Path] | None], list[Path] | None]:
    """Callback for a list argument: every entry an existing folder."""
    one = existing_dir(expected)

    def check(values):
        for v in values or ():
            one(v)
        return values

    return check


def writable(value: Path | None) -> Path | None:
    """Callback: an output ``value`` whose place can be written (see ``io.check_writable``)."""
    if value is not None:
        from brainattn.errors import OutputError
        from brainattn.io import check_writable

        try:
            check_writable(value)
        except OutputError as exc:
            raise typer.BadParameter(str(exc)) from None
    return value
