"""CLI verbs ``brainattn data synth`` and ``brainattn data info``."""

from __future__ import annotations

from pathlib import Path

import typer

from brainattn.options import existing_dir, seed_option, writable

data_app = typer.Typer(
    help="fMRI data sets: the synthetic visual cortex and data set summaries.",
    no_args_is_help=True,
)


@data_app.command("synth")
def synth_cmd(
    out: Path = typer.Option(..., "--out", callback=writable,
                             help="Output folder (refused if not empty, see --overwrite)."),
    subjects: int = typer.Option(2, "--subjects", min=1, max=99, help="Number of subjects."),
    images: int = typer.Option(2000, "--images", min=8, max=100_000, help="Training images (with betas)."),
    seed: int = seed_option(0, "Random seed: same seed, identical files."),
    image_size: int = typer.Option(224, "--image-size", min=32, max=1024, help="Image side in pixels."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty --out folder."),
):
    """Generate the embedded synthetic visual cortex in the Algonauts layout."""
    from brainattn.data.info import format_summary, summarize
    from brainattn.data.synth import generate

    generate(out, subjects=subjects, images=images, seed=seed, image_size=image_size,
             overwrite=overwrite)
    typer.echo(format_summary(summarize(out)))


@data_app.command("info")
def info_cmd(
    root: Path = typer.Argument(..., help="Data set folder (holding subjXX folders) or a subject folder.",
                                callback=existing_dir("an Algonauts-layout data set root")),
    check_finite: bool = typer.Option(
        False, "--check-finite", help="Read all betas and count NaN/Inf values."
    ),
):
    """Summarise a data set: subjects, images, vertices, ROIs, noise ceiling."""
    from brainattn.data.info import format_summary, summarize

    typer.echo(format_summary(summarize(root, check_finite=check_finite)))


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
