"""``brainattn report RUN_DIR... [--out FILE] [--overwrite] [--no-svg] [--screenshot PNG]``."""

from __future__ import annotations

from pathlib import Path

import typer

from brainattn.options import existing_dirs, writable


def report(
    run_dirs: list[Path] = typer.Argument(
        ..., help="Run folders (brainattn fit/scale fit/simulate outputs) or a demo folder.",
        callback=existing_dirs("a brainattn run or demo folder"),
    ),
    out: Path = typer.Option(
        None, "--out", "-o", callback=writable,
        help="HTML file to write (default: RUN_DIR/report.html; ./report.html for several folders)."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing report."),
    svg: bool = typer.Option(True, "--svg/--no-svg", help="Also save every figure as SVG."),
    screenshot: Path = typer.Option(
        None, "--screenshot", callback=writable, help="Also save a PNG screenshot of the page (needs chromium)."
    ),
):
    """Draw every result in RUN_DIR... into one self-contained HTML report (opens offline)."""
    from brainattn.report.build import build_report, figures_dir

    path = build_report(run_dirs, out, overwrite=overwrite, svg=svg,
                        log=lambda m: typer.echo(f"  {m}", err=True))
    typer.echo(f"report: {path}")
    typer.echo(f"figures: {figures_dir(path)}")
    if screenshot is not None:
        from brainattn.report.browser import open_in_browser

        res = open_in_browser(path, screenshot=screenshot)
        typer.echo(f"screenshot: {res.screenshot}")


def register(app: typer.Typer) -> None:
    app.command("report")(report)
