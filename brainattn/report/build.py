"""``build_report``: discover the runs, draw every section, write the HTML and the figures."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from brainattn.errors import BrainAttnError, ConfigError, DataError, OutputExistsError
from brainattn.report.discovery import STAGES, Discovery, discover
from brainattn.report.figures import Section, check_version

TITLES = {"data": "Data", "encoders": "Encoders", "psychophysics": "Psychophysics",
          "theory": "Theory"}


def default_output(run_dirs) -> Path:
    """``RUN_DIR/report.html`` for one folder, ``./report.html`` for several."""
    dirs = [Path(p) for p in run_dirs]
    return dirs[0] / "report.html" if len(dirs) == 1 else Path("report.html")


def figures_dir(out: Path) -> Path:
    """``figures/`` beside ``report.html``; ``<stem>_figures/`` beside any other name."""
    return out.parent / ("figures" if out.stem == "report" else f"{out.stem}_figures")


def _check_outputs(out: Path, overwrite: bool) -> Path:
    if out.suffix.lower() not in (".html", ".htm"):
        raise ConfigError(f"--out {out}: expected a file name ending in .html")
    if out.is_dir():
        raise OutputExistsError(f"--out {out}: is a folder; expected an .html file name")
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out} exists; pass --overwrite to replace the report")
    figs = figures_dir(out)
    if figs.exists() and not figs.is_dir():
        raise OutputExistsError(f"{figs} exists and is not a folder; remove it or choose --out")
    if figs.is_dir() and any(figs.iterdir()) and not overwrite:
        raise OutputExistsError(f"{figs} exists and is not empty; pass --overwrite to replace it")
    return figs


def _precheck(found: Discovery) -> None:
    """Refuse incompatible versions before drawing; unreadable files become 'missing' notes."""
    import xarray as xr

    for run in found.runs:
        for name in [n for n in run.files if n.endswith(".nc")]:
            path = run.files[name]
            try:
                with xr.open_dataset(path, engine="h5netcdf") as ds:
                    attrs = dict(ds.attrs)
            except Exception as exc:
                del run.files[name]
                run.missing.append(f"{path} is unreadable ({type(exc).__name__}); not drawn -- "
                                   "re-run the command that writes it")
                continue
            check_version(attrs, path)


def _draw(kind: str, runs, missing, svg: bool) -> Section:
    from brainattn.report import dataset, encoders, psychophysics, theory

    mod = {"data": dataset, "encoders": encoders, "psychophysics": psychophysics,
           "theory": theory}[kind]
    try:
        return mod.build_section(runs, missing, svg=svg)
    except BrainAttnError:
        raise
    except Exception as exc:  # a drawing bug must not lose the other sections
        if os.environ.get("BRAINATTN_DEBUG") == "1":
            raise
        print(f"warning: report: the {kind} section could not be drawn "
              f"({type(exc).__name__}: {exc})", file=sys.stderr)
        sec = Section(kind, TITLES[kind], "", missing=list(missing or []))
        sec.missing.append(f"this section could not be drawn ({type(exc).__name__}: {exc}); "
                           "run with --debug for the traceback")
        return sec


def draw_sections(found: Discovery, *, svg: bool = True, log=None) -> list[Section]:
    """One :class:`Section` per stage that has runs or missing notes, in page order.

    Figures are drawn with matplotlib's default style whatever the caller's (a style set
    earlier in the process, e.g. by a theory module, does not change the report), and the
    caller's style is left as it was.
    """
    import matplotlib as mpl

    with mpl.rc_context():
        mpl.rcdefaults()
        return _draw_sections(found, svg=svg, log=log)


def _draw_sections(found: Discovery, *, svg: bool, log) -> list[Section]:
    sections = []
    for kind in STAGES:
        runs = found.of_kind(kind)
        missing = found.missing.get(kind, [])
        if not runs and not missing:
            continue
        t0 = time.perf_counter()
        sections.append(_draw(kind, runs, missing, svg))
        if log:
            log(f"{kind}: {len(sections[-1].figures)} figures ({time.perf_counter() - t0:.1f} s)")
    seen: set[str] = set()
    for sec in sections:  # figure names are file names: keep them unique
        for fig in sec.figures:
            base, i = fig.name, 2
            while fig.name in seen:
                fig.name, i = f"{base}-{i}", i + 1
            seen.add(fig.name)
    return sections


def build_report(run_dirs, out=None, overwrite: bool = False, *, svg: bool = True,
                 title: str | None = None, log=None) -> Path:
    """Write one self-contained HTML report of the given run or demo folders.

    Parameters
    ----------
    run_dirs : folder or list of folders -- a demo folder (stage subfolders ``data/``,
        ``encoders/``, ``psychophysics/``, ``theory/<name>/``), a single run folder of any
        command, or a folder of run folders.
    out : the HTML file; default ``RUN_DIR/report.html`` (one folder) or ``./report.html``.
    overwrite : replace an existing report (and its figures folder); refused otherwise.
    svg : also save each figure as SVG (PNG always).

    Every figure is also written to ``figures/`` beside the HTML (``<stem>_figures/`` when the
    file is not called ``report.html``) as ``<name>.png`` and ``<name>.svg``. Both the figures
    folder and the HTML are written atomically.

    Returns the path of the HTML file.
    """
    from brainattn.io import atomic_dir, atomic_path
    from brainattn.report.html import page

    if isinstance(run_dirs, (str, os.PathLike)):
        run_dirs = [run_dirs]
    run_dirs = [Path(p) for p in run_dirs]
    out = Path(out) if out is not None else default_output(run_dirs)
    figs = _check_outputs(out, overwrite)
    found = discover(run_dirs)
    _precheck(found)
    if not found.runs:
        notes = "; ".join(n for v in found.missing.values() for n in v)
        raise DataError(f"{', '.join(map(str, run_dirs))}: no results to draw ({notes})")
    sections = draw_sections(found, svg=svg, log=log)
    html = page(sections, title=title or _title(found), roots=[str(p) for p in run_dirs])
    with atomic_dir(figs, overwrite=True) as tmp:
        for sec in sections:
            for fig in sec.figures:
                (tmp / f"{fig.name}.png").write_bytes(fig.png)
                if fig.svg is not None:
                    (tmp / f"{fig.name}.svg").write_bytes(fig.svg)
    with atomic_path(out) as tmp:
        tmp.write_text(html, encoding="utf-8")
    return out


def _title(found: Discovery) -> str:
    kinds = [k for k in STAGES if found.of_kind(k)]
    if len(kinds) > 1:
        return "brainattn report"
    return f"brainattn report: {kinds[0]}" if kinds else "brainattn report"
