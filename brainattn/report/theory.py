"""Theory section: each simulation's curves with the analytic prediction overlaid.

Reads ``results.nc`` written by ``brainattn simulate NAME``. The simulation is named by
``attrs["simulation"]`` (or the run's ``config.json``/folder name); the registries name what
draws and tabulates it: :data:`brainattn.report.theory_figures.FIGURES` (name -> figure
function) and :data:`SUMMARIES` (name -> the module's ``summary(ds)``). When no registered
function can draw it (an unknown simulation, or an error), the run's own ``figure.png`` is
embedded instead and the page says so.
"""

from __future__ import annotations

import importlib
import json

import numpy as np

from brainattn.report.discovery import Run
from brainattn.report.figures import (
    RenderedFigure,
    Section,
    load_result,
    png_size,
    provenance_of,
    render,
)
from brainattn.report.theory_figures import FIGURES
from brainattn.theory import SIMULATIONS

TEXT = (
    "Theory simulations, each with its analytic prediction beside the simulated curve: "
    "attention read as Pavlovian associative memory (retrieval signal-to-noise and capacity "
    "against d_k/N), semiotic perceptualized networks (classifier accuracy on perceived vs raw "
    "images), and the consciousness-prior bottleneck (top-k selection vs dense attention)."
)

DESCRIPTIONS = {
    "pavlovian": "Linear attention as Hebbian CS\u2013US memory: simulated retrieval quality "
                 "with the crosstalk theory (SNR \u2248 d_k/N) overlaid.",
    "semiotics": "Perceptualized classifier: MLP accuracy on raw, vanilla-loop and "
                 "stochastic-loop perceived digits, with paired differences and intervals.",
    "consciousness": "Consciousness-prior bottleneck: top-k attention vs dense attention in and "
                     "out of distribution, and the recovered factor-graph parents.",
}


def _decode_attrs(ds):
    """JSON strings in attrs (configs saved by ``save_netcdf``) back to dicts/lists."""
    ds = ds.copy()
    for k, v in list(ds.attrs.items()):
        if isinstance(v, str) and v[:1] in "{[":
            try:
                ds.attrs[k] = json.loads(v)
            except ValueError:
                pass
    return ds


def simulation_name(ds, run: Run) -> str:
    return str(ds.attrs.get("simulation") or ds.attrs.get("name") or run.label)


def _summary_of(name: str):
    def summary(ds):  # imported when a run of it is drawn: torch is not needed before
        return importlib.import_module(f"brainattn.theory.{name}").summary(ds)

    summary.__doc__ = f"``brainattn.theory.{name}.summary``"
    return summary


#: simulation name -> the table of its headline numbers (the module's ``summary``)
SUMMARIES = {name: _summary_of(name) for name in SIMULATIONS}


def plot_generic(ds):
    """Fallback: every 1-D numeric variable against its dimension, one panel per dimension."""
    import matplotlib.pyplot as plt

    by_dim: dict[str, list[str]] = {}
    for n, v in ds.data_vars.items():
        if v.ndim == 1 and np.issubdtype(v.dtype, np.number):
            by_dim.setdefault(v.dims[0], []).append(n)
    dims = list(by_dim) or ["(none)"]
    fig, axes = plt.subplots(1, len(dims), figsize=(4 * len(dims), 3.3), squeeze=False,
                             layout="constrained")
    for ax, d in zip(axes[0], dims, strict=False):
        for n in by_dim.get(d, []):
            x = ds[d].values if d in ds.coords else np.arange(ds.sizes[d])
            ax.plot(x, ds[n].values, marker="o", ms=3, label=n)
        ax.set_xlabel(d)
        if ax.lines:
            ax.legend(fontsize=7, frameon=False)
    return fig


def build_section(runs: list[Run], missing: list[str] | None = None, *, svg: bool = True) -> Section:
    """Draw each theory run with its registered figure (and summary as a table)."""
    sec = Section("theory", "Theory", TEXT, missing=list(missing or []))
    for run in runs:
        sec.missing.extend(run.missing)
        ds = None
        if "results.nc" in run.files:
            ds = load_result(run.files["results.nc"])
            sec.provenance.append(provenance_of(ds, run.files["results.nc"]))
        name = simulation_name(ds, run) if ds is not None else run.label
        caption = DESCRIPTIONS.get(name, f"Simulation {name}.")
        figure, table = FIGURES.get(name), SUMMARIES.get(name)
        drawn = False
        if ds is not None:
            dsd = _decode_attrs(ds)
            if figure is not None:
                import matplotlib.pyplot as plt

                try:
                    with plt.rc_context():  # a figure's seaborn theme must not restyle the page
                        fig = figure(dsd)
                        sec.figures.append(render(fig, f"theory-{name}", caption, svg=svg))
                    drawn = True
                except Exception as exc:  # a drawing bug must not lose the rest of the page
                    sec.missing.append(f"{name}: its figure failed ({type(exc).__name__}: {exc})")
            tabled = False
            if table is not None:
                try:
                    sec.tables.append((f"{name}: summary", table(dsd)))
                    tabled = True
                except Exception as exc:
                    sec.missing.append(f"{name}: summary failed ({type(exc).__name__}: {exc})")
            csv = run.path / "summary.csv"
            if not tabled and csv.is_file():  # the table `brainattn simulate` printed
                import pandas as pd

                try:
                    sec.tables.append((f"{name}: summary.csv", pd.read_csv(csv)))
                except Exception:  # an unreadable table is not worth losing the section
                    pass
        if not drawn and "figure.png" in run.files:
            png = run.files["figure.png"].read_bytes()
            try:
                size = png_size(png)
            except ValueError:
                size = None
            if size is not None:
                sec.figures.append(RenderedFigure(f"theory-{name}", caption +
                                                  " (the run's own figure.png)", png, None, size))
                drawn = True
        if not drawn and ds is not None:
            if figure is None:
                sec.missing.append(f"{name}: no figure registered for this simulation; drawn "
                                   "generically")
            sec.figures.append(render(plot_generic(ds), f"theory-{name}", caption, svg=svg))
    return sec
