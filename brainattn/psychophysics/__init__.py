"""Psychophysics: difference scaling (MLDS), Fisher-information perceptual scales, stimuli.

- :mod:`~brainattn.psychophysics.design` -- triad/quadruple designs, R-MLDS CSV and long-table
  readers (descending trials reordered with the response flipped).
- :mod:`~brainattn.psychophysics.glm` -- batched IRLS/Newton GLM solver, Firth fit, separation.
- :mod:`~brainattn.psychophysics.mlds` -- :func:`fit_mlds` / :class:`MLDS`: glm, optim and
  lapse fits (the conventions of the R package MLDS, and how each method relates to R's).
- :mod:`~brainattn.psychophysics.formula` -- the formula method (parametric scales, safe
  expression parsing).
- :mod:`~brainattn.psychophysics.bootstrap` -- the parametric bootstrap, all replicates together.
- :mod:`~brainattn.psychophysics.diagnostics` -- deviance residuals, binom.diagnostics (envelope,
  runs test), six-point test, pmc.
- :mod:`~brainattn.psychophysics.result` -- :class:`MLDSResult`, its summary and ``scale.nc``
  (layout documented there).
- :mod:`~brainattn.psychophysics.plots` -- the scale figure (one function, used by the result
  object and the report).
- :mod:`~brainattn.psychophysics.fisher` -- closed-form and autograd Fisher information,
  predicted scales, measured-vs-predicted comparison.
- :mod:`~brainattn.psychophysics.stimuli` -- log-Gabor Gaussian textures, gratings, OT paths.
- :mod:`~brainattn.psychophysics.observer` -- simulated observers.

Names are imported lazily so ``import brainattn.psychophysics`` stays light.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Trials": "design",
    "all_triads": "design",
    "all_quadruples": "design",
    "make_design": "design",
    "as_trials": "design",
    "read_mlds_csv": "design",
    "read_long_table": "design",
    "solve_mlds_glm": "glm",
    "detect_separation": "glm",
    "LapseLink": "glm",
    "MLDS": "mlds",
    "MLDSResult": "result",
    "fit_mlds": "mlds",
    "bootstrap_mlds": "bootstrap",
    "six_point_sets": "diagnostics",
    "six_point_test": "diagnostics",
    "binom_diagnostics": "diagnostics",
    "diagnose": "diagnostics",
    "parse_formula": "formula",
    "solve_as_mean": "glm",
    "SimulatedObserver": "observer",
    "simulate_experiment": "observer",
    "precision_by_repeats": "observer",
}
_FISHER = [
    "fisher_mode_frequency",
    "fisher_frequency_bandwidth",
    "fisher_orientation_bandwidth",
    "fisher_gaussian",
    "fisher_density",
    "bures_path",
    "fisher_bures_path",
    "fisher_texture_path",
    "predicted_scale",
    "compare_scales",
]
_STIMULI = ["log_gabor_spectrum", "gaussian_texture", "grating", "ot_interpolation",
            "interpolate_textures", "image_spectrum", "texture_pair", "save_png"]
_EXPORTS.update({n: "fisher" for n in _FISHER})
_EXPORTS.update({n: "stimuli" for n in _STIMULI})

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        mod = importlib.import_module(f"brainattn.psychophysics.{_EXPORTS[name]}")
        return getattr(mod, name)
    raise AttributeError(f"module 'brainattn.psychophysics' has no attribute {name!r}")


def __dir__():
    return __all__
