"""``brainattn ensemble`` and ``brainattn partition`` (the layer sweep is ``brainattn fit
--layer a,b,c``, the Algonauts files ``brainattn predict RUN --algonauts-submission DIR``)."""

from __future__ import annotations

from pathlib import Path

import typer

from brainattn.options import (
    existing_dir,
    existing_dirs,
    existing_file,
    in_range,
    seed_option,
    writable,
)


def _split(v) -> list[str]:
    return [x.strip() for x in str(v).split(",") if x.strip()]


def register(app: typer.Typer) -> None:
    @app.command("ensemble")
    def ensemble(
        runs: list[Path] = typer.Argument(..., help="Run folders written by brainattn fit (same "
                                          "data set, subject and test images).",
                                callback=existing_dirs("a run folder written by brainattn fit")),
        out: Path = typer.Option(..., "--out", callback=writable,
                                 help="Folder to write (scores.nc, config.json)."),
        weights: str = typer.Option(None, "--weights", help="Comma-separated weight per run "
                                    "(default: equal)."),
        data: Path = typer.Option(None, "--data", callback=existing_dir("an Algonauts-layout data set root"),
                                  help="Data set (default: the one fitted on)."),
        device: str = typer.Option("auto", "--device"),
        cache: Path = typer.Option(None, "--cache", help="Feature cache folder."),
        overwrite: bool = typer.Option(False, "--overwrite"),
    ):
        """Average the held-out predictions of several runs and score the ensemble like a run
        (scores.nc with significance; brainattn report draws it beside its members)."""
        from brainattn.analyses.runs import ensemble_runs
        from brainattn.errors import ConfigError

        w = None
        if weights is not None:
            try:
                w = [float(x) for x in _split(weights)]
            except ValueError as exc:
                raise ConfigError(f"--weights {weights!r}: expected numbers, comma-separated") from exc
            if len(w) != len(runs):
                raise ConfigError(f"--weights: {len(w)} weights for {len(runs)} runs")
        ensemble_runs(runs, out, data=data, weights=w, cache_dir=cache, device=device,
                      overwrite=overwrite, log=typer.echo)
        typer.echo(f"wrote {out}")

    @app.command("partition")
    def partition(
        data: Path = typer.Argument(..., help="Data set folder (Algonauts-2023 / NSD layout).",
                                    callback=existing_dir("an Algonauts-layout data set root")),
        out: Path = typer.Option(..., "--out", callback=writable,
                                 help="Folder to write (partition.nc, scores.nc)."),
        subject: str = typer.Option("subj01", "--subject"),
        backbone: str = typer.Option("gabor", "--backbone",
                                     help="Backbone(s), comma-separated: each is a feature space "
                                          "(times each --layer)."),
        layer: str = typer.Option(..., "--layer", help="Layers, comma-separated: each is a "
                                  "feature space (2 to 5 spaces in all)."),
        weights: Path = typer.Option(None, "--weights", callback=existing_file("a weights file"),
                                     help="Local weights of a timm backbone."),
        stream: str = typer.Option("block", "--stream", help="block | q"),
        image_size: int = typer.Option(None, "--image-size", min=16, max=4096),
        pool: str = typer.Option("mean", "--pool", help="Features per image: mean (over tokens) "
                                 "| pca (flattened tokens, --n-components PCs)"),
        n_components: int = typer.Option(64, "--n-components", min=1, max=100_000),
        n_iter: int = typer.Option(30, "--n-iter", min=1, max=100_000, help="Random-search candidates of the "
                                   "per-space weights (himalaya)."),
        test_fraction: float = typer.Option(0.1, "--test-fraction",
                                            callback=in_range(0, 0.5, low_open=True, high_open=True),
                                            help="Share of images held out for the test, in (0, 0.5)."),
        seed: int = seed_option(0, "Random seed of the split and the search."),
        permutations: int = typer.Option(1000, "--permutations", min=0, max=1_000_000,
                                         help="Permutation test of the joint model (0: none)."),
        device: str = typer.Option("auto", "--device"),
        cache: Path = typer.Option(None, "--cache", help="Feature cache folder."),
        overwrite: bool = typer.Option(False, "--overwrite"),
    ):
        """Banded ridge over several feature spaces (layers, backbones) and variance
        partitioning: per-vertex split R^2 per space, unique and shared variance."""
        from brainattn.analyses.runs import partition_run
        from brainattn.errors import ConfigError

        try:
            layers = [int(x) for x in _split(layer)]
        except ValueError as exc:
            raise ConfigError(f"--layer {layer!r}: expected integers, comma-separated") from exc
        if len(set(layers)) != len(layers):
            raise ConfigError(f"--layer {layer!r}: a layer is named twice")
        if n_iter < 1:
            raise ConfigError(f"--n-iter {n_iter}: expected an integer >= 1")
        partition_run(data, out, subject=subject, backbones=_split(backbone), layers=layers,
                      weights=weights, stream=stream, image_size=image_size, pool=pool,
                      n_components=n_components, test_fraction=test_fraction, seed=seed,
                      n_iter=n_iter, device=device, cache_dir=cache, permutations=permutations,
                      overwrite=overwrite, log=typer.echo)
        typer.echo(f"wrote {out}")
