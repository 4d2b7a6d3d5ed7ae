"""CLI verbs: ``brainattn scale fit|simulate|predict`` and ``brainattn stimuli texture|grating|interpolate``.

Thin shell: parse options, call :mod:`brainattn.psychophysics`, write outputs atomically.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer

from brainattn.errors import ConfigError
from brainattn.options import existing_file, finite, in_range, positive, seed_option, writable

scale_app = typer.Typer(help="Difference scaling (MLDS): fit, simulate and predict perceptual scales.",
                        no_args_is_help=True)
stimuli_app = typer.Typer(help="Stimuli: log-Gabor textures, gratings, OT texture interpolation (PNG + .npy).",
                          no_args_is_help=True)


def _floats(text: str | None, name: str) -> np.ndarray | None:
    if text is None:
        return None
    try:
        vals = np.array([float(v) for v in text.replace(";", ",").split(",") if v.strip()])
    except ValueError:
        raise ConfigError(f"{name}: expected comma-separated numbers, got {text!r}") from None
    if vals.size == 0:
        raise ConfigError(f"{name}: expected comma-separated numbers, got {text!r}")
    return vals


def _levels(stimulus: str | None, range_: str | None, n: int | None, name: str = "--stimulus"):
    if stimulus is not None:
        return _floats(stimulus, name)
    if range_ is not None:
        lo_hi = _floats(range_, "--range")
        if lo_hi.size != 2 or not lo_hi[1] > lo_hi[0]:
            raise ConfigError(f"--range: expected 'low,high' with low < high, got {range_!r}")
        if n is None or n < 3:
            raise ConfigError(f"--levels: expected an integer >= 3 with --range, got {n!r}")
        return np.linspace(lo_hi[0], lo_hi[1], n)
    return None


def _lapse(text: str | None):
    if text is None:
        return None
    if text in ("fit", "fit-both"):
        return text
    try:
        if "," in text:
            lo, up = (float(v) for v in text.split(","))
            return (lo, up)
        return float(text)
    except ValueError:
        raise ConfigError(f"--lapse: expected a number in [0, 0.5), 'lower,upper' asymptotes or 'fit', "
                          f"got {text!r}") from None


def _model_kw(model: str, bandwidth: float | None, images=None, spectra=None,
              noise: float | None = None) -> tuple[dict, dict]:
    """Keyword arguments of a Fisher model and the attrs that record them: ``(kw, attrs)``."""
    if model != "texture-path":
        for name, v in (("--images", images), ("--spectra", spectra), ("--noise", noise)):
            if v is not None:
                raise ConfigError(f"{name}: only used with the texture-path model")
        if model == "mode-frequency" and bandwidth is not None:
            return {"bandwidth": bandwidth}, {"bandwidth": bandwidth}
        return {}, {}
    from brainattn.psychophysics.stimuli import texture_pair

    if bandwidth is not None:
        raise ConfigError("--bandwidth: only used with the mode-frequency model")
    if images is None and spectra is None:
        raise ConfigError("texture-path: give the two end textures with --images A.png B.png or --spectra A.npy B.npy")
    S0, S1, _ = texture_pair(images, spectra)
    kw = {"spectra": (S0, S1)}
    if noise is not None:
        kw["noise"] = noise
    ends = {"images": [str(p) for p in images]} if images is not None else {"spectra": [str(p) for p in spectra]}
    return kw, {**ends, "noise": 0.01 if noise is None else noise}


def _path_t(s: np.ndarray) -> np.ndarray:
    """Levels as positions ``t`` on a texture path: the first level is texture A (t=0), the last B."""
    return (s - s[0]) / (s[-1] - s[0])


# --------------------------------------------------------------------------------------------
# scale


@scale_app.command("fit")
def scale_fit(
    trials: Path = typer.Argument(..., help="CSV of trials: resp,S1,S2,S3[,S4] (R MLDS) or a long table.",
                                  callback=existing_file("a CSV of trials")),
    out: Path = typer.Option(Path("scale-out"), "--out", "-o", callback=writable,
                             help="Output folder (scale.nc, summary.txt, scale.png)."),
    method: str = typer.Option("glm", help="glm (R's glm: psi_1=0, sigma=1), optim (R's optim: psi_1=0, psi_p=1, "
                               "interior values in [0, 1]), optim-unconstrained (the glm fit divided by psi_p) "
                               "or formula."),
    link: str = typer.Option("probit", help="probit, logit, cauchit, cloglog or loglog."),
    table: str = typer.Option("mlds", "--format", help="mlds (level indices) or long (stimulus values in s1..s4)."),
    stimulus: str = typer.Option(None, help="Comma-separated stimulus values of the levels (mlds format)."),
    lapse: str = typer.Option(None, help="Lapse rate in [0, 0.5), 'lower,upper' asymptotes, 'fit' or 'fit-both'."),
    firth: str = typer.Option(None, "--firth", help="Bias reduction, named as brglm2 names it: AS_mean "
                              "(mean-bias-reducing adjusted score, R's brglm of the MLDS vignette) or "
                              "MPL_Jeffreys (Jeffreys-penalised likelihood); finite for separated data."),
    formula: str = typer.Option(None, help="Scale for --method formula: power, log, saturating or an expression "
                                "in the stimulus s, e.g. '(s / max(s))^gamma' (R's '~ (sx/max(sx))^p[1]' too)."),
    p0: str = typer.Option(None, "--p0", help="Comma-separated start values of the formula's parameters [1 each]."),
    bootstrap: int = typer.Option(0, "--bootstrap", "-b", min=0, max=100_000,
                                  help="Parametric bootstrap replicates (0: Wald intervals)."),
    diagnostics: int = typer.Option(0, "--diagnostics", min=0, max=100_000,
                                    help="Simulations for binom.diagnostics (residual envelope, runs test) and the "
                                    "six-point test (0: none)."),
    diagnostics_refit: str = typer.Option("link", "--diagnostics-refit", help="link (refit simulations with the "
                                          "fit's link) or probit (R's binom.diagnostics as shipped)."),
    by: str = typer.Option(None, "--by", help="Fit each value of this column separately (e.g. an observer "
                           "column); one output folder per value under --out."),
    predict: str = typer.Option(None, help="Add a Fisher prediction: mode-frequency, frequency-bandwidth, orientation-bandwidth, texture-path."),
    bandwidth: float = typer.Option(None, callback=positive, help="Octave bandwidth for --predict mode-frequency [1]."),
    images: tuple[Path, Path] = typer.Option(None, "--images", help="texture-path: the two end textures A B (first and last level)."),
    spectra: tuple[Path, Path] = typer.Option(None, "--spectra", help="texture-path: their power spectra A.npy B.npy instead."),
    noise: float = typer.Option(None, callback=positive,
                                help="texture-path: observer noise variance / texture variance [0.01]."),
    seed: int = seed_option(0, "Random seed of the bootstrap and the diagnostics."),
    engine: str = typer.Option("numpy", help="glm solver: numpy (batched IRLS) or statsmodels."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty output folder."),
):
    """Fit a perceptual scale to difference-scaling trials and save scale.nc, summary.txt, scale.png."""
    from brainattn.io import check_output_dir
    from brainattn.psychophysics.design import read_trial_tables
    from brainattn.psychophysics.fisher import compare_scales, predicted_scale
    from brainattn.psychophysics.mlds import fit_mlds

    check_output_dir(out, overwrite=overwrite)
    if table not in ("mlds", "long"):
        raise ConfigError(f"--format: expected 'mlds' or 'long', got {table!r}")
    if table == "long" and stimulus is not None:
        raise ConfigError("--stimulus: not used with --format long (the table holds the values)")
    groups, ignored = read_trial_tables(trials, table, _floats(stimulus, "--stimulus"), by=by)
    if ignored:
        cols = ", ".join(f"'{c}' ({n} distinct values)" for c, n in ignored)
        typer.echo(f"note: column(s) {cols} not used: all rows are fitted together; fit each value "
                   "separately with --by COLUMN", err=True)
    start = None if p0 is None else _floats(p0, "--p0")
    results = []
    for label, tr in groups:
        res = fit_mlds(tr, method, link, lapse=_lapse(lapse), firth=firth or False, formula=formula, p0=start,
                       bootstrap=bootstrap, diagnostics=diagnostics, diagnostics_refit=diagnostics_refit,
                       seed=seed, engine=engine)
        if predict is not None:
            kw, _ = _model_kw(predict, bandwidth, images, spectra, noise)
            at = _path_t(np.asarray(tr.stimulus, float)) if predict == "texture-path" else tr.stimulus
            pred = predicted_scale(predict, at, **kw)
            res.prediction = compare_scales(res.psi, pred, tr.stimulus, bootstrap=res.boot_psi, model=predict)
        results.append((label, res))
    for label, res in results:
        where = out if label is None else out / label
        res.save(where, overwrite=overwrite, seed=seed)
        if label is not None:
            typer.echo(f"[{label}]")
        typer.echo(res.summary())
        typer.echo(f"wrote {where}/scale.nc, {where}/summary.txt, {where}/scale.png")


@scale_app.command("simulate")
def scale_simulate(
    out: Path = typer.Option(Path("trials.csv"), "--out", "-o", callback=writable,
                             help="CSV file to write (R MLDS columns)."),
    levels: int = typer.Option(11, min=3, max=1000, help="Number of stimulus levels."),
    design: str = typer.Option("quadruple", help="triad or quadruple."),
    repeats: int = typer.Option(1, min=1, max=10_000, help="Times each triad/quadruple is run."),
    max_gap: int = typer.Option(None, min=1, help="Keep trials whose intervals span at most this many steps."),
    scale: str = typer.Option("power:2", help="Observer scale: power:GAMMA, log, linear or values:v1,v2,..."),
    sigma: float = typer.Option(0.1, callback=positive, help="Decision noise sd (scale normalised to 0..1)."),
    lapse: float = typer.Option(0.0, callback=in_range(0, 1, high_open=True), help="Lapse rate (random guesses), in [0, 1)."),
    stimulus_range: str = typer.Option("1,5", "--range", help="low,high stimulus values (levels evenly spaced)."),
    swap: float = typer.Option(0.5, min=0, max=1, help="Probability a trial is presented in descending order."),
    seed: int = seed_option(0, "Random seed."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing file."),
):
    """Simulate an observer answering a full design; write its trials as an R-MLDS CSV."""
    import pandas as pd

    from brainattn.errors import OutputExistsError
    from brainattn.io import atomic_write_text
    from brainattn.psychophysics.design import make_design
    from brainattn.psychophysics.observer import SimulatedObserver

    if out.exists() and not overwrite:
        raise OutputExistsError(f"output {out} exists; choose another file or pass --overwrite")
    s = _levels(None, stimulus_range, levels)
    u = (s - s[0]) / (s[-1] - s[0])
    if scale.startswith("power:"):
        try:
            g = float(scale.split(":", 1)[1])
        except ValueError:
            raise ConfigError(f"--scale: expected power:GAMMA, got {scale!r}") from None
        psi = u**g
    elif scale == "linear":
        psi = u
    elif scale == "log":
        if s[0] <= 0:
            raise ConfigError("--scale log: needs positive stimulus values (--range)")
        psi = np.log(s / s[0]) / np.log(s[-1] / s[0])
    elif scale.startswith("values:"):
        psi = _floats(scale.split(":", 1)[1], "--scale values")
        if psi.size != levels:
            raise ConfigError(f"--scale values: {psi.size} values for {levels} levels")
    else:
        raise ConfigError(f"--scale: expected power:GAMMA, log, linear or values:..., got {scale!r}")
    obs = SimulatedObserver(psi, sigma=sigma, lapse=lapse, stimulus=s)
    rng = np.random.default_rng(seed)
    d = make_design(levels, design, max_gap=max_gap, repeats=repeats, swap_pairs=swap,
                    seed=int(rng.integers(2**31)))
    resp = obs.respond(d, rng)
    # written in presentation order (descending trials included), as an experiment logs them
    frame = pd.DataFrame({"resp": resp, **{f"S{j + 1}": d[:, j] for j in range(d.shape[1])}})
    atomic_write_text(out, frame.to_csv(index=False))
    typer.echo(f"wrote {len(d)} {design} trials over {levels} levels to {out}")
    typer.echo("stimulus values: " + ",".join(f"{v:g}" for v in s))


@scale_app.command("predict")
def scale_predict(
    model: str = typer.Option(..., "--model", "-m", help="mode-frequency, frequency-bandwidth, orientation-bandwidth or texture-path."),
    stimulus: str = typer.Option(None, help="Comma-separated stimulus values (texture-path: t in [0, 1])."),
    stimulus_range: str = typer.Option(None, "--range", help="low,high (with --levels)."),
    levels: int = typer.Option(None, min=2, max=10_000,
                               help="Number of evenly spaced levels in --range (texture-path: from t=0 to 1 [13])."),
    bandwidth: float = typer.Option(None, callback=positive, help="Octave bandwidth for mode-frequency [1]."),
    images: tuple[Path, Path] = typer.Option(None, "--images", help="texture-path: the two end textures A B (square images, same size)."),
    spectra: tuple[Path, Path] = typer.Option(None, "--spectra", help="texture-path: their power spectra A.npy B.npy instead."),
    noise: float = typer.Option(None, callback=positive,
                                help="texture-path: observer noise variance / texture variance [0.01]."),
    out: Path = typer.Option(None, "--out", "-o", callback=writable,
                             help="Folder for predicted.nc and predicted.csv."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty output folder."),
):
    """Predict a perceptual scale from the Fisher information of a stimulus model.

    texture-path: the scale along the optimal-transport path between two textures (from
    `stimuli interpolate`), t = 0 at the first and 1 at the second.
    """
    import xarray as xr

    from brainattn.io import atomic_dir, check_output_dir, save_netcdf
    from brainattn.psychophysics.fisher import FISHER_MODELS, predicted_scale

    if model == "texture-path" and stimulus is None and stimulus_range is None:
        s = np.linspace(0.0, 1.0, 13 if levels is None else levels)
        if levels is not None and levels < 2:
            raise ConfigError(f"--levels: expected at least 2, got {levels}")
    else:
        s = _levels(stimulus, stimulus_range, levels)
    if s is None:
        raise ConfigError("give the stimulus values: --stimulus v1,v2,... or --range low,high --levels N")
    if out is not None:
        check_output_dir(out, overwrite=overwrite)
    kw, attrs = _model_kw(model, bandwidth, images, spectra, noise)
    pred = predicted_scale(model, s, **kw)
    fisher = FISHER_MODELS[model](s, **kw)
    typer.echo(f"{'level':>5} {'stimulus':>12} {'fisher':>14} {'predicted':>10}")
    for i, (sv, fv, pv) in enumerate(zip(s, fisher, pred, strict=True)):
        typer.echo(f"{i + 1:>5} {sv:>12.5g} {fv:>14.6g} {pv:>10.5f}")
    if out is not None:
        ds = xr.Dataset({"stimulus": ("level", s), "predicted_scale": ("level", pred),
                         "fisher_information": ("level", fisher)},
                        coords={"level": np.arange(1, len(s) + 1)},
                        attrs={"prediction_model": model, **attrs})
        import pandas as pd

        with atomic_dir(out, overwrite=overwrite) as tmp:
            save_netcdf(ds, tmp / "predicted.nc")
            pd.DataFrame({"level": ds.level.values, "stimulus": s, "fisher_information": fisher,
                          "predicted_scale": pred}).to_csv(tmp / "predicted.csv", index=False)
        typer.echo(f"wrote {out}/predicted.nc, {out}/predicted.csv")


# --------------------------------------------------------------------------------------------
# stimuli


def _write_images(out: Path, frames: np.ndarray, names: list[str], overwrite: bool, meta: dict,
                  arrays: dict[str, np.ndarray] | None = None):
    from brainattn.io import atomic_dir, atomic_write_json
    from brainattn.psychophysics.stimuli import save_png

    with atomic_dir(out, overwrite=overwrite) as tmp:
        for img, nm in zip(frames, names, strict=True):
            save_png(img, tmp / f"{nm}.png")
        with open(tmp / "stimuli.npy", "wb") as fh:
            np.save(fh, np.asarray(frames, dtype=np.float32), allow_pickle=False)
        for nm, arr in (arrays or {}).items():
            with open(tmp / f"{nm}.npy", "wb") as fh:
                np.save(fh, np.asarray(arr, dtype=np.float64), allow_pickle=False)
        atomic_write_json(tmp / "stimuli.json", {**meta, "files": [f"{n}.png" for n in names]})
    typer.echo(f"wrote {len(names)} PNG file(s) and stimuli.npy to {out}")


@stimuli_app.command("texture")
def stimuli_texture(
    out: Path = typer.Option(Path("textures"), "--out", "-o", callback=writable, help="Output folder."),
    size: int = typer.Option(256, min=8, max=4096, help="Image size in pixels."),
    sf_mode: str = typer.Option("8", help="Mode spatial frequency(ies), cycles/unit, comma-separated."),
    sf_bandwidth: str = typer.Option("1", help="Octave bandwidth(s), comma-separated."),
    orientation: float = typer.Option(0.0, callback=finite, help="Orientation, deg."),
    orientation_bandwidth: str = typer.Option("10", help="Orientation bandwidth(s), deg ('inf': isotropic)."),
    contrast: float = typer.Option(0.2, min=0, max=1, help="RMS contrast."),
    pixels_per_unit: float = typer.Option(None, callback=positive, help="Pixels per unit [image width]."),
    seed: int = seed_option(0, "Noise seed (shared by all images)."),
    overwrite: bool = typer.Option(False, "--overwrite"),
):
    """Log-Gabor Gaussian random-field textures; one image per value of the varied parameter."""
    from brainattn.psychophysics.stimuli import gaussian_texture

    def vals(text, name):
        if text.strip() == "inf":
            return np.array([np.inf])
        return _floats(text, name)

    f0, bw, ob = vals(sf_mode, "--sf-mode"), vals(sf_bandwidth, "--sf-bandwidth"), vals(orientation_bandwidth, "--orientation-bandwidth")
    n = max(len(f0), len(bw), len(ob))
    for arr, nm in ((f0, "--sf-mode"), (bw, "--sf-bandwidth"), (ob, "--orientation-bandwidth")):
        if len(arr) not in (1, n):
            raise ConfigError(f"{nm}: give one value or {n} values (as many as the varied parameter)")
    f0, bw, ob = (np.resize(a, n) for a in (f0, bw, ob))
    frames = np.stack([gaussian_texture(size, f0[i], bw[i], orientation,
                                        None if np.isinf(ob[i]) else ob[i], contrast, pixels_per_unit, seed)
                       for i in range(n)])
    _write_images(out, frames, [f"texture_{i + 1:02d}" for i in range(n)], overwrite,
                  {"kind": "log-gabor texture", "size": size, "sf_mode": f0, "sf_bandwidth": bw,
                   "orientation": orientation, "orientation_bandwidth": [None if np.isinf(v) else v for v in ob],
                   "contrast": contrast, "pixels_per_unit": pixels_per_unit or size, "seed": seed})


@stimuli_app.command("grating")
def stimuli_grating(
    out: Path = typer.Option(Path("gratings"), "--out", "-o", callback=writable, help="Output folder."),
    size: int = typer.Option(256, min=8, max=4096, help="Image size in pixels."),
    frequency: str = typer.Option("8", help="Frequency(ies), cycles/unit, comma-separated."),
    orientation: float = typer.Option(0.0, callback=finite, help="Orientation, deg."),
    phase: float = typer.Option(0.0, callback=finite, help="Phase, deg."),
    contrast: float = typer.Option(0.5, min=0, max=1, help="Michelson contrast."),
    pixels_per_unit: float = typer.Option(None, callback=positive, help="Pixels per unit [image width]."),
    overwrite: bool = typer.Option(False, "--overwrite"),
):
    """Sinusoidal gratings, one per frequency."""
    from brainattn.psychophysics.stimuli import grating

    fs = _floats(frequency, "--frequency")
    frames = np.stack([grating(size, f, orientation, phase, contrast, pixels_per_unit) for f in fs])
    _write_images(out, frames, [f"grating_{i + 1:02d}" for i in range(len(fs))], overwrite,
                  {"kind": "grating", "size": size, "frequency": fs, "orientation": orientation,
                   "phase": phase, "contrast": contrast, "pixels_per_unit": pixels_per_unit or size})


@stimuli_app.command("interpolate")
def stimuli_interpolate(
    out: Path = typer.Option(Path("interpolation"), "--out", "-o", callback=writable, help="Output folder."),
    images: tuple[Path, Path] = typer.Option(None, "--images", help="Two texture images A B (square, same size): the path's ends."),
    spectra: tuple[Path, Path] = typer.Option(None, "--spectra", help="Two power spectra A.npy B.npy (square, FFT grid) instead."),
    size: int = typer.Option(None, min=8, max=4096, help="Image size in pixels, log-Gabor ends [256]."),
    levels: int = typer.Option(13, min=2, max=10_000, help="Number of frames from t=0 to t=1."),
    sf_mode: str = typer.Option(None, help="Mode frequencies of the two log-Gabor end textures: a,b [4,16]."),
    sf_bandwidth: str = typer.Option(None, help="Octave bandwidths of the two end textures: a,b [1,1]."),
    orientation: str = typer.Option(None, help="Orientations of the two end textures, deg: a,b [0,90]."),
    orientation_bandwidth: str = typer.Option(None, help="Orientation bandwidths, deg: a,b [10,10]."),
    contrast: float = typer.Option(0.2, min=0, max=1,
                                   help="RMS contrast of the first frame (same gain for all; not with --images)."),
    seed: int = seed_option(0, "Noise seed."),
    overwrite: bool = typer.Option(False, "--overwrite"),
):
    """Frames along the Gaussian optimal-transport path between two textures.

    The ends are two images (their power spectra, random phases), two power spectra, or two
    log-Gabor textures (the default). Writes frame_NN.png, stimuli.npy, stimuli.json and the
    two end spectra (spectrum_start.npy, spectrum_end.npy) that `scale predict --model
    texture-path --spectra` takes.
    """
    from brainattn.psychophysics.stimuli import (
        interpolate_textures,
        log_gabor_spectrum,
        ot_interpolation,
        texture_pair,
    )

    if levels < 2:
        raise ConfigError(f"--levels: expected at least 2 frames, got {levels}")
    ts = np.linspace(0, 1, levels)
    lg = {"--size": size, "--sf-mode": sf_mode, "--sf-bandwidth": sf_bandwidth, "--orientation": orientation,
          "--orientation-bandwidth": orientation_bandwidth}
    if images is not None or spectra is not None:
        given = [k for k, v in lg.items() if v is not None]
        if given:
            raise ConfigError(f"{given[0]}: sets a log-Gabor end texture; not used with --images/--spectra")
        S0, S1, ims = texture_pair(images, spectra)
        if ims is not None:
            frames = interpolate_textures(ims[0], ims[1], ts, seed=seed)
            ends = {"images": [str(p) for p in images]}
        else:
            frames = ot_interpolation(S0, S1, ts, seed=seed, contrast=contrast)
            ends = {"spectra": [str(p) for p in spectra], "contrast": contrast}
        meta = {"kind": "OT texture interpolation", "t": ts, **ends, "seed": seed, "size": S0.shape[0]}
    else:
        defaults = {"--sf-mode": "4,16", "--sf-bandwidth": "1,1", "--orientation": "0,90",
                    "--orientation-bandwidth": "10,10"}
        pars = [_floats(lg[k] if lg[k] is not None else d, k) for k, d in defaults.items()]
        if any(len(p) != 2 for p in pars):
            raise ConfigError("interpolate: each texture option takes two values 'a,b' (start, end)")
        size = 256 if size is None else size
        S0, S1 = (log_gabor_spectrum(size, pars[0][j], pars[1][j], pars[2][j], pars[3][j]) for j in (0, 1))
        frames = ot_interpolation(S0, S1, ts, seed=seed, contrast=contrast)
        meta = {"kind": "OT texture interpolation", "t": ts, "start": [p[0] for p in pars],
                "end": [p[1] for p in pars], "parameters": ["sf_mode", "sf_bandwidth", "orientation",
                                                            "orientation_bandwidth"],
                "contrast": contrast, "seed": seed, "size": size}
    _write_images(out, frames, [f"frame_{i + 1:02d}" for i in range(levels)], overwrite, meta,
                  arrays={"spectrum_start": S0, "spectrum_end": S1})


def register(app: typer.Typer) -> None:
    """Add the ``scale`` and ``stimuli`` verbs to the ``brainattn`` command."""
    app.add_typer(scale_app, name="scale")
    app.add_typer(stimuli_app, name="stimuli")
