"""``brainattn demo``: every capability of brainattn on embedded synthetic data, and its report.

No data or weights of your own are needed. The demo is a list of stages (:func:`stages`), each
a function ``stage(ctx) -> str`` taking a :class:`DemoContext` and returning a one-line result
for the final summary table. Each stage writes into its own subfolder of ``OUT``, in exactly the
format the corresponding command writes, so the demo is also the worked example for them:

==========================  ===================================================================
``OUT/data/``               ``brainattn data synth`` -- the synthetic visual cortex, one subject
``OUT/encoders/<model>/``   ``brainattn fit OUT/data --model transformer|ridge|factorized``
``OUT/encoders/sweep/``     ``brainattn fit OUT/data --model ridge --layer 0,1,3`` (layer sweep
                            over the gabor stages, ``layer_sweep.nc``)
``OUT/encoders/ensemble/``  ``brainattn ensemble OUT/encoders/<model>...``
``OUT/encoders/banded-ridge/`` ``brainattn partition OUT/data --layer 0,1`` (variance
                            partitioning, colour vs energy stage)
``OUT/psychophysics/``      ``brainattn scale fit`` -- a simulated difference-scaling experiment
                            along mode spatial frequency (``trials.csv`` beside ``scale.nc``)
``OUT/theory/<name>/``      ``brainattn simulate pavlovian|semiotics|consciousness --scale quick``
``OUT/report.html``         ``brainattn report OUT`` (figures in ``OUT/figures/``)
==========================  ===================================================================

A progress line before each stage gives the stage, the time spent and an estimate of the time
left (per-stage estimates, rescaled by how fast the finished stages ran on this machine).
``--quick`` runs a small version of everything (a few minutes), for a smoke test.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import typer

DEMO_IMAGES = 2000
QUICK_IMAGES = 200

#: sizes of the full demo and of ``--quick`` (tests shrink these further)
MODELS = ("transformer", "ridge", "factorized")
#: encoder options of the full demo unless the encoders define ``run.DEMO_OPTIONS`` (fewer
#: transformer epochs than ``brainattn fit``'s default, to keep the demo within 15 minutes)
FULL_ENCODER_OPTIONS = {"transformer": {"epochs": 3}}
FULL = {"images": DEMO_IMAGES, "image_size": 224, "epochs": None, "bootstrap": 1000,
        "models": MODELS, "encoder_options": FULL_ENCODER_OPTIONS, "theory_scale": "quick",
        "simulations": None, "estimate_scale": 1.0}
QUICK = {"images": QUICK_IMAGES, "image_size": 224, "epochs": 2, "bootstrap": 200,
         "models": MODELS, "theory_scale": "quick", "simulations": None, "estimate_scale": 0.3}

#: stimulus levels of the simulated difference-scaling experiment (mode spatial frequency, c/cm)
#: gabor stages the demo's layer sweep fits (colour, energy, projection)
ANALYSIS_LAYERS = (0, 1, 3)

PSY_LEVELS = 13
PSY_RANGE = (1.0, 5.0)
PSY_MODEL = "mode-frequency"


@dataclass
class DemoContext:
    out: Path
    quick: bool = False
    overwrite: bool = False
    seed: int = 0
    results: dict = field(default_factory=dict)

    @property
    def size(self) -> dict:
        """The sizes in force (:data:`QUICK` or :data:`FULL`)."""
        return QUICK if self.quick else FULL

    @property
    def data_dir(self) -> Path:
        return self.out / "data"


def _echo(msg: str) -> None:
    typer.echo(msg)


# --------------------------------------------------------------------------------------------
# stages


def stage_data(ctx: DemoContext) -> str:
    """Generate the synthetic visual cortex (one subject) into ``OUT/data`` and summarise it."""
    from brainattn.data.info import format_summary, summarize
    from brainattn.data.synth import generate

    generate(ctx.data_dir, subjects=1, images=ctx.size["images"], seed=ctx.seed,
             image_size=ctx.size["image_size"], overwrite=ctx.overwrite)
    summary = summarize(ctx.data_dir)
    ctx.results["data"] = summary
    _echo(format_summary(summary))
    s = summary["subjects"][0]
    nc = s.get("nc_median")
    return (f"{s['n_train']} images, {s['n_lh'] + s['n_rh']} vertices"
            + (f", median noise ceiling {nc:.0f}%" if nc is not None else ""))


def encoder_options(model: str, size: dict) -> dict:
    """Options of :func:`brainattn.encoders.run.fit_run` for ``model`` in the demo.

    The demo size's ``encoder_options[model]`` (a fallback), overridden by the encoders' own
    demo preset (``brainattn.encoders.run.DEMO_OPTIONS[model]``) when it exists, and the size's
    ``epochs`` (``--quick``) over both.
    """
    options: dict = {"model": model}
    options.update((size.get("encoder_options") or {}).get(model, {}))
    try:
        from brainattn.encoders import run as _run

        options.update((getattr(_run, "DEMO_OPTIONS", None) or {}).get(model, {}))
    except ImportError:  # pragma: no cover - part of the package
        pass
    if size.get("epochs") is not None and model != "ridge":
        options["epochs"] = size["epochs"]
    return options


def _stage_encoder(model: str) -> Callable[[DemoContext], str]:
    def stage(ctx: DemoContext) -> str:
        from brainattn.encoders.run import fit_run
        from brainattn.io import load_netcdf

        options = encoder_options(model, ctx.size)
        options["seed"] = ctx.seed
        out = ctx.out / "encoders" / model
        fit_run(ctx.data_dir, out, overwrite=ctx.overwrite, echo=False, **options)
        scores = load_netcdf(out / "scores.nc")
        ctx.results[f"encoder-{model}"] = scores
        return f"test mean r {scores.attrs['mean_r']:.3f}, median r {scores.attrs['median_r']:.3f}"

    stage.__doc__ = f"Fit the {model} encoder on ``OUT/data`` into ``OUT/encoders/{model}``."
    return stage


def stage_analyses(ctx: DemoContext) -> str:
    """The encoding analyses on the demo's data: a ridge layer sweep over the gabor stages
    (colour, energy, projection; one backbone pass), an ensemble of the fitted encoders and
    variance partitioning of the colour vs the energy stage (significance is in every
    scores.nc already)."""
    import numpy as np

    from brainattn.analyses import runs as A
    from brainattn.encoders.multifit import fit_name
    from brainattn.encoders.run import fit_run

    base = ctx.out / "encoders"
    quiet = lambda m: None  # noqa: E731 - the demo prints one line per stage
    sweep = base / "sweep"
    fits = [{"subject": "subj01", "backbone": "gabor", "layer": x} for x in ANALYSIS_LAYERS]
    common = {"model": "ridge", "pool": "pca", "n_components": 64, "seed": ctx.seed}
    A.prefill_layer_sweep(ctx.data_dir, fits, common, log=quiet)
    for f in fits:
        fit_run(ctx.data_dir, sweep / fit_name(f["subject"], f["backbone"], f["layer"]),
                overwrite=ctx.overwrite, echo=False, **common, **f)
    (summary_path,) = A.summarise_layer_sweep(sweep, fits, log=quiet)
    from brainattn.io import load_netcdf

    summary = load_netcdf(summary_path)
    # the planted question is colour (stage 0) vs energy (stage 1); stage 3, a random projection
    # of every stage's features, carries both and may predict either kind best
    pure = summary["roi_score"].sel(layer=[0, 1])
    best = dict(zip(summary["roi_name"].values,
                    np.asarray([0, 1])[np.nanargmax(np.nan_to_num(pure.values, nan=-np.inf), 0)],
                    strict=True))
    ev = [int(best[r]) for r in ("V1v", "V1d", "V2v", "V2d", "V3v", "V3d") if r in best]
    members = [base / m for m in ctx.size.get("models", MODELS) if (base / m / "scores.nc").is_file()]
    ens_line = ""
    if len(members) >= 2:
        A.ensemble_runs(members, base / "ensemble", overwrite=ctx.overwrite, log=quiet)
        ens = load_netcdf(base / "ensemble" / "scores.nc")
        ens_line = (f"; ensemble of {len(members)} models mean r {ens.attrs['mean_r']:.3f} (best "
                    f"member {float(np.max(ens['member_mean_r'].values)):.3f})")
    A.partition_run(ctx.data_dir, base / "banded-ridge", layers=(0, 1), pool="pca",
                    n_components=32, n_iter=ctx.size.get("partition_iter", 10), seed=ctx.seed,
                    overwrite=ctx.overwrite, log=quiet)
    return (f"colour (0) vs energy (1) stage by layer sweep: V1-V3 "
            f"{max(set(ev), key=ev.count) if ev else '-'}, hV4 {int(best.get('hV4', -1))} "
            f"(planted 1 and 0){ens_line}")


def stage_psychophysics(ctx: DemoContext) -> str:
    """Simulate an observer whose scale follows the Fisher prediction, fit MLDS, bootstrap."""
    import numpy as np
    import pandas as pd

    from brainattn.io import atomic_dir, atomic_write_text, check_output_dir
    from brainattn.psychophysics.design import make_design, read_mlds_csv
    from brainattn.psychophysics.fisher import compare_scales, predicted_scale
    from brainattn.psychophysics.mlds import fit_mlds
    from brainattn.psychophysics.observer import SimulatedObserver

    out = ctx.out / "psychophysics"
    check_output_dir(out, overwrite=ctx.overwrite)
    s = np.linspace(*PSY_RANGE, PSY_LEVELS)
    pred = predicted_scale(PSY_MODEL, s)
    obs = SimulatedObserver(pred, sigma=0.1, stimulus=s)
    rng = np.random.default_rng(ctx.seed)
    design = make_design(PSY_LEVELS, "triad", max_gap=3, repeats=5, swap_pairs=0.5,
                         seed=int(rng.integers(2**31)))
    resp = obs.respond(design, rng)
    # the trials as an experiment logs them (R MLDS columns, descending trials included)
    csv = pd.DataFrame({"resp": resp, **{f"S{j + 1}": design[:, j] for j in range(3)}})
    text = csv.to_csv(index=False)
    # the folder is built whole beside OUT/psychophysics and moved into place: a demo stopped
    # at any point leaves either no folder or scale.nc, summary.txt, scale.png and trials.csv
    with atomic_dir(out, overwrite=ctx.overwrite) as tmp:
        atomic_write_text(tmp / "trials.csv", text)
        trials = read_mlds_csv(tmp / "trials.csv", s)
        trials.source = str(out / "trials.csv")  # where the file will be, not the temporary
        res = fit_mlds(trials, "glm", "probit", bootstrap=ctx.size["bootstrap"],
                       diagnostics=ctx.size["bootstrap"], seed=ctx.seed)
        res.prediction = compare_scales(res.psi, pred, s, bootstrap=res.boot_psi, model=PSY_MODEL)
        res.save(tmp, overwrite=True, seed=ctx.seed)  # replaces tmp by the saved folder
        atomic_write_text(tmp / "trials.csv", text)
    ctx.results["psychophysics"] = res
    p = res.prediction
    return (f"{len(resp)} triads over {PSY_LEVELS} levels; measured vs predicted area match "
            f"{p['area_match']:.3f} [{p['area_match_lower']:.3f}, {p['area_match_upper']:.3f}]")


def _stage_theory(name: str) -> Callable[[DemoContext], str]:
    def stage(ctx: DemoContext) -> str:
        from brainattn.theory.cli import run_simulation

        ds = run_simulation(name, scale=ctx.size["theory_scale"], seed=ctx.seed, out=ctx.out / "theory" / name,
                            overwrite=ctx.overwrite, echo=lambda m: None)
        ctx.results[f"theory-{name}"] = ds
        try:
            return theory_headline(name, ds)
        except Exception:  # a format change must not fail the demo after the work is done
            dims = ", ".join(f"{k} {v}" for k, v in ds.sizes.items())
            return f"results.nc ({dims})"

    stage.__doc__ = f"Run the {name} simulation at quick size into ``OUT/theory/{name}``."
    return stage


def theory_headline(name: str, ds) -> str:
    """One line of a simulation's main result (from its module's ``summary(ds)``)."""
    import importlib

    table = importlib.import_module(f"brainattn.theory.{name}").summary(ds)
    if name == "pavlovian":
        exp = table[table["quantity"].str.startswith("exponent")].set_index("setting")
        return ("capacity ~ d_k^a: a = {:.2f} average case (theory {:.2f}), {:.2f} error-free "
                "(theory {:.2f})").format(exp.loc["average case", "simulation"],
                                          exp.loc["average case", "theory"],
                                          exp.loc["error-free", "simulation"],
                                          exp.loc["error-free", "theory"])
    if name == "semiotics":
        r0 = table.iloc[0]
        yes = [int(r) for r, ok in zip(table["R"], table["claim_reproduced"], strict=True) if ok]
        return (f"R={int(r0['R'])}: stochastic - raw accuracy {r0['stochastic_minus_base']:+.3f} "
                f"[{r0['stochastic_ci_low']:+.3f}, {r0['stochastic_ci_high']:+.3f}]; paper's "
                f"claim reproduced at R in {yes or 'none'}")
    if name == "consciousness":
        dense = table[table["k"] == 0].iloc[0]
        best = table[table["k"] > 0].sort_values("error_ood").iloc[0]
        return (f"top-{int(best['k'])}: true parents selected in {100 * best['selection_exact']:.0f}% "
                f"of cases, OOD error {best['error_ood']:.4f} vs dense {dense['error_ood']:.4f}")
    raise KeyError(name)


def stage_report(ctx: DemoContext) -> str:
    """Draw everything into ``OUT/report.html`` (figures in ``OUT/figures``)."""
    from brainattn.report import build_report

    path = build_report(ctx.out, overwrite=True)
    ctx.results["report"] = path
    return str(path)


def stages(size: dict | None = None) -> list[tuple[str, Callable[[DemoContext], str], float]]:
    """(name, function, estimated seconds on a 2-core CPU at demo size), in running order."""
    from brainattn.theory.cli import available_simulations

    size = FULL if size is None else size
    sims = available_simulations() if size.get("simulations") is None else size["simulations"]
    # the estimates: the stage times of README's measured demo run (2-core CPU), rounded up
    stages = [("synthetic data", stage_data, 15.0)]
    est_fit = {"transformer": 90.0, "ridge": 10.0, "factorized": 30.0}
    for model in size.get("models", MODELS):
        est = est_fit.get(model, 60.0)
        stages.append((f"encoder: {model}", _stage_encoder(model), est))
    stages.append(("encoder analyses", stage_analyses, 360.0))
    stages.append(("difference scaling", stage_psychophysics, 5.0))
    est_sim = {"pavlovian": 10.0, "semiotics": 50.0, "consciousness": 10.0}
    for name in sims:
        stages.append((f"theory: {name}", _stage_theory(name), est_sim.get(name, 60.0)))
    stages.append(("report", stage_report, 20.0))
    return stages


def _fmt(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60:d}:{seconds % 60:02d}"


def run_demo(out: str | Path = "demo-out", *, quick: bool = False, overwrite: bool = False,
             seed: int = 0) -> DemoContext:
    """Run every stage in order; returns the context with each stage's results.

    Refuses a non-empty ``out`` unless ``overwrite``. A stage that fails stops the demo (what
    earlier stages wrote stays, and ``brainattn report OUT`` draws it).
    """
    from brainattn.io import check_output_dir

    ctx = DemoContext(Path(out), quick=quick, overwrite=overwrite, seed=seed)
    check_output_dir(ctx.out, overwrite=overwrite)
    if overwrite:
        _clear_earlier_run(ctx.out)
    todo = stages(ctx.size)
    est = [e * ctx.size["estimate_scale"] for _, _, e in todo]
    rows = []
    t_start = time.perf_counter()
    for i, (name, fn, _) in enumerate(todo):
        spent = time.perf_counter() - t_start
        done_est = sum(est[:i])
        speed = spent / done_est if done_est > 0 and spent > 0 else 1.0
        left = sum(est[i:]) * speed
        _echo(f"[{i + 1}/{len(todo)}] {name}  (elapsed {_fmt(spent)}, about {_fmt(left)} left)")
        t0 = time.perf_counter()
        result = fn(ctx)
        dt = time.perf_counter() - t0
        rows.append((name, dt, result))
        _echo(f"      {name}: {dt:.1f} s -- {result}")
    total = time.perf_counter() - t_start
    ctx.results["timings"] = {name: dt for name, dt, _ in rows}
    _echo("")
    _echo(_table(rows, total))
    _echo(f"\nreport: {ctx.results.get('report')}")
    return ctx


#: what a demo writes into OUT (removed by --overwrite before a new run; nothing else is touched)
DEMO_OUTPUTS = ("data", "encoders", "psychophysics", "theory", "figures", "report.html")


def _clear_earlier_run(out: Path) -> None:
    """Remove an earlier demo's outputs so the new report shows only this run's results."""
    import shutil

    for name in DEMO_OUTPUTS:
        p = out / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()


def _table(rows, total: float) -> str:
    w = max(len(r[0]) for r in rows)
    lines = [f"{'stage':{w}s}  {'time':>7s}  result", "-" * (w + 40)]
    for name, dt, result in rows:
        lines.append(f"{name:{w}s}  {_fmt(dt):>7s}  {result}")
    lines.append(f"{'total':{w}s}  {_fmt(total):>7s}")
    return "\n".join(lines)


def register(app: typer.Typer) -> None:
    from brainattn.options import seed_option, writable

    @app.command("demo")
    def demo_cmd(
        out: Path = typer.Option(Path("demo-out"), "--out", callback=writable, help="Output folder."),
        quick: bool = typer.Option(False, "--quick", help="Small, fast version of every stage."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace earlier demo output."),
        seed: int = seed_option(0, "Seed of every stage."),
    ):
        """Run every capability on embedded synthetic data and write OUT/report.html."""
        run_demo(out, quick=quick, overwrite=overwrite, seed=seed)
