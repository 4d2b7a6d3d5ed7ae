"""Shared pieces of the report: loading results, rendered figures, sections.

Figures are drawn with matplotlib/seaborn, rendered once to PNG (embedded in the HTML as a
base64 data URI) and SVG (saved beside the HTML for papers), then closed. Key artists carry a
``gid`` (e.g. ``"scale-estimate"``) so that tests -- and anyone post-editing the SVG -- can find
the drawn data again.
"""

from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from brainattn.errors import DataError

#: PNG resolution of the embedded figures (dots per inch)
PNG_DPI = 110


@dataclass
class RenderedFigure:
    """A figure rendered to bytes.

    ``name`` is the file stem (``figures/<name>.png``/``.svg``), ``caption`` one sentence shown
    under the image, ``size_px`` the PNG's (width, height).
    """

    name: str
    caption: str
    png: bytes
    svg: bytes | None
    size_px: tuple[int, int]


@dataclass
class Section:
    """One block of the page: a heading, a short text, figures, tables and notes."""

    kind: str
    title: str
    text: str
    figures: list[RenderedFigure] = field(default_factory=list)
    tables: list[tuple[str, str]] = field(default_factory=list)  # (caption, html)
    missing: list[str] = field(default_factory=list)
    provenance: list[dict] = field(default_factory=list)
    tables_first: bool = False  # summary tables above the figures (else below)


def slug(text: str) -> str:
    """A file-name-safe lower-case name: ``"lh/FFA-1"`` -> ``"lh-ffa-1"``."""
    s = re.sub(r"[^A-Za-z0-9]+", "-", str(text)).strip("-").lower()
    return s or "figure"


def render(fig, name: str, caption: str, *, svg: bool = True, dpi: int = PNG_DPI,
           tight: bool | None = None) -> RenderedFigure:
    """Render ``fig`` to PNG (and SVG) bytes and close it.

    ``tight`` crops to the drawn content (``bbox_inches="tight"``, which costs one more draw);
    by default it is on unless the figure says otherwise (``fig._brainattn_tight = False``, set
    by drawers of heavy figures that lay themselves out).
    """
    import matplotlib.pyplot as plt

    if tight is None:
        tight = getattr(fig, "_brainattn_tight", True)
    bbox = "tight" if tight else None
    try:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches=bbox, facecolor="white")
        png = buf.getvalue()
        svg_bytes = None
        if svg:
            buf = io.BytesIO()
            fig.savefig(buf, format="svg", bbox_inches=bbox, facecolor="white")
            svg_bytes = buf.getvalue()
    finally:
        plt.close(fig)
    return RenderedFigure(slug(name), caption, png, svg_bytes, png_size(png))


def png_size(png: bytes) -> tuple[int, int]:
    """(width, height) in pixels read from a PNG's IHDR chunk."""
    if png[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


# --------------------------------------------------------------------------------------------
# loading results


def major_version(version: str) -> int | None:
    m = re.match(r"\s*v?(\d+)", str(version))
    return int(m.group(1)) if m else None


def check_version(attrs: dict, path: str | os.PathLike) -> None:
    """Refuse a result written by a brainattn whose major version differs from this one."""
    from brainattn import __version__

    written = attrs.get("brainattn_version")
    if written is None:
        return
    ours, theirs = major_version(__version__), major_version(written)
    if theirs is None or ours is None or theirs != ours:
        raise DataError(
            f"{path}: written by brainattn {written}, which is incompatible with this brainattn "
            f"{__version__} (major version differs); re-run the command with this version or "
            f"install brainattn {theirs if theirs is not None else written}.x to draw it"
        )


def load_result(path: str | os.PathLike):
    """Load a result NetCDF written by brainattn (fully into memory), checking its version.

    Raises :class:`~brainattn.errors.DataError` naming the file when it is unreadable or was
    written by an incompatible version.
    """
    from brainattn.io import load_netcdf

    path = Path(path)
    try:
        ds = load_netcdf(path)
    except DataError:
        raise
    except Exception as exc:  # h5py/xarray errors on a truncated or foreign file
        raise DataError(
            f"{path}: not a readable NetCDF result ({type(exc).__name__}: {exc}); "
            "the file may be truncated -- re-run the command that wrote it"
        ) from exc
    check_version(dict(ds.attrs), path)
    return ds


PROVENANCE_KEYS = ("brainattn_version", "command", "seed", "created_utc", "device")


def provenance_of(ds, path: str | os.PathLike) -> dict:
    """The provenance attrs of a result (missing keys are left out), plus its file."""
    row = {"file": str(path)}
    for k in PROVENANCE_KEYS:
        if k in ds.attrs:
            row[k] = ds.attrs[k]
    return row
