"""``brainattn demo``: a guided run of brainattn on the embedded synthetic data.

The demo is a list of stages (:data:`STAGES`); each is a function ``stage(ctx) -> None`` taking
a :class:`DemoContext` (output folder, quick flag, overwrite flag, a dict of results shared
between stages). Later capabilities append their stage; for now the demo generates a one-subject
synthetic visual cortex into ``OUT/data`` and prints its summary.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import typer

DEMO_IMAGES = 2000
QUICK_IMAGES = 200


@dataclass
class DemoContext:
    out: Path
    quick: bool = False
    overwrite: bool = False
    results: dict = field(default_factory=dict)

    @property
    def data_dir(self) -> Path:
        return self.out / "data"


def stage_data(ctx: DemoContext) -> None:
    """Generate the synthetic visual cortex (one subject) into ``OUT/data`` and summarise it."""
    from brainattn.data.info import format_summary, summarize
    from brainattn.data.synth import generate

    images = QUICK_IMAGES if ctx.quick else DEMO_IMAGES
    generate(ctx.data_dir, subjects=1, images=images, seed=0, overwrite=ctx.overwrite)
    summary = summarize(ctx.data_dir)
    ctx.results["data"] = summary
    typer.echo(format_summary(summary))


STAGES: list[tuple[str, Callable[[DemoContext], None]]] = [
    ("synthetic data", stage_data),
]


def run_demo(out: str | Path = "demo-out", *, quick: bool = False, overwrite: bool = False) -> DemoContext:
    """Run every stage in order; returns the context with each stage's results."""
    from brainattn.io import check_output_dir

    ctx = DemoContext(Path(out), quick=quick, overwrite=overwrite)
    check_output_dir(ctx.data_dir, overwrite=overwrite)
    for name, fn in STAGES:
        t0 = time.perf_counter()
        typer.echo(f"== {name}")
        fn(ctx)
        typer.echo(f"   ({name}: {time.perf_counter() - t0:.1f} s)")
    return ctx


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo_cmd(
        out: Path = typer.Option(Path("demo-out"), "--out", help="Output folder."),
        quick: bool = typer.Option(False, "--quick", help="Small, fast version (200 images)."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace earlier demo output."),
    ):
        """Run the demo on the embedded synthetic visual cortex (no data or weights needed)."""
        run_demo(out, quick=quick, overwrite=overwrite)
