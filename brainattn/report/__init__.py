"""Figures and the HTML run report.

``build_report(run_dirs, out=None, overwrite=False) -> Path`` finds what each folder holds (a
demo folder with stage subfolders ``data/``, ``encoders/``, ``psychophysics/``,
``theory/<name>/``, or one run folder of ``brainattn fit``, ``brainattn scale fit`` or
``brainattn simulate``), draws each section with matplotlib/seaborn (surface maps with nilearn's
bundled fsaverage5) and writes ONE self-contained HTML file (figures as base64 PNG, inline CSS,
nothing external) plus every figure as PNG and SVG in ``figures/`` beside it.

Modules: :mod:`~brainattn.report.discovery` (what a folder holds),
:mod:`~brainattn.report.encoders`, :mod:`~brainattn.report.psychophysics`,
:mod:`~brainattn.report.theory`, :mod:`~brainattn.report.dataset` (one section each; their
``plot_*`` functions return matplotlib figures and can be used on their own),
:mod:`~brainattn.report.html` (the page), :mod:`~brainattn.report.browser` (headless Chromium).

Bad input: a folder that is no run raises :class:`~brainattn.errors.DataError` naming the files
looked for; a result written by a brainattn of another major version is refused, naming the file
and both versions; an interrupted run is drawn as far as it goes and the page marks what is
missing. An existing report is never replaced without ``overwrite``.

Example::

    brainattn report demo-out                 # -> demo-out/report.html, demo-out/figures/
    brainattn report runs/ridge runs/transformer --out cmp.html
"""

from __future__ import annotations

__all__ = ["build_report", "discover"]


def __getattr__(name):  # keep ``import brainattn.report`` light (no matplotlib/xarray)
    if name == "build_report":
        from brainattn.report.build import build_report

        return build_report
    if name == "discover":
        from brainattn.report.discovery import discover

        return discover
    raise AttributeError(f"module 'brainattn.report' has no attribute {name!r}")
