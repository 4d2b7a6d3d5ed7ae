"""The analyses encoding-model papers run on fitted encoders.

Plain functions on arrays first (the solvers), each returning a labelled ``xarray.Dataset``
with provenance ``attrs``; the CLI and the report call them.

Modules::

    significance  per-vertex permutation test of held-out r, Benjamini-Hochberg q-values,
                  bootstrap intervals of ROI medians          (permutation_pvalues, bh_qvalues,
                                                               bootstrap_roi_medians, significance_table)
    partition     banded ridge over several feature spaces (himalaya), per-space split scores,
                  variance partitioning into unique and shared parts
                                                              (banded_ridge, variance_partition)
    ensemble      average the predictions of several runs and score them like a run
                                                              (average_predictions, ensemble_scores)
    submission    the Algonauts-2023 challenge files and score (write_submission, challenge_score)
    layers        per-layer scores of a layer sweep, best layer per ROI and per vertex
                                                              (layer_sweep_summary)

Nothing here is imported by ``brainattn.encoders``' solvers; the analyses only read
:mod:`brainattn.encoders.metrics` (one Pearson r, one noise-normalised score).
"""

from __future__ import annotations

_LAZY = {
    "permutation_pvalues": "brainattn.analyses.significance",
    "bh_qvalues": "brainattn.analyses.significance",
    "bootstrap_roi_medians": "brainattn.analyses.significance",
    "significance_table": "brainattn.analyses.significance",
    "banded_ridge": "brainattn.analyses.partition",
    "variance_partition": "brainattn.analyses.partition",
    "average_predictions": "brainattn.analyses.ensemble",
    "ensemble_scores": "brainattn.analyses.ensemble",
    "write_submission": "brainattn.analyses.submission",
    "challenge_score": "brainattn.analyses.submission",
    "layer_sweep_summary": "brainattn.analyses.layers",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'brainattn.analyses' has no attribute {name!r}")
