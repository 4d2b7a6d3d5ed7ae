"""Theory simulations: attention as Pavlovian associative memory, semiotic perceptualized
networks and the consciousness-prior bottleneck.

Each simulation module (``pavlovian``, ``semiotics``, ``consciousness``) exposes the same
contract:

- ``QUICK`` / ``FULL``: complete default configs (their keys are the schema);
- ``simulate(config, *, device=None) -> xarray.Dataset``: the figure's data, simulation and
  analytic prediction side by side;
- ``plot(ds) -> matplotlib.figure.Figure`` (the function registered for it in
  :data:`brainattn.report.theory_figures.FIGURES`) and ``summary(ds) -> pandas.DataFrame``.

Presets and their checks live in :mod:`brainattn.theory._config`, whose
:func:`~brainattn.theory._config.resolve_config` merges a scale preset, a JSON/TOML config file
and overrides; ``brainattn simulate NAME`` runs a module from the command line. Submodules are
imported on demand (nothing heavy here).
"""

SIMULATIONS = ("pavlovian", "semiotics", "consciousness")

__all__ = ["SIMULATIONS"]
