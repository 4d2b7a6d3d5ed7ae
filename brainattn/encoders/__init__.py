"""Encoding models of fMRI responses to images: backbones and feature cache, the transformer
brain encoder, the ridge and factorized baselines, the training loop and metrics.

Public API::

    TransformerBrainEncoder, SpatialFeatureEncoder, RidgeEncoder   (scikit-learn estimators)
    QueryAssignment, assign_queries, CPU_PRESET                      (vertex -> query map; small size)
    split_images, Rows                                               (the image splitter; row views)
    GaborBackbone, TimmViTBackbone, make_backbone, get_features      (tokens, cache)
    pearson_per_column, noise_normalized, roi_medians, score_table   (metrics)
    brainattn.encoders.synthcheck: attention_in_box, roi_group_medians, demo_fit (ground truth)
    fit_run = prepare_run + fit_prepared + write_run, evaluate_run,  (run folders, the CLI's core)
    predict_run
    brainattn.encoders.multifit: fit_many (several fits over the GPUs)

Run-folder files the report draws
---------------------------------
``scores.nc`` (held-out test images; written by :func:`score_table`)
    dims ``vertex``, ``metric``, ``roi``.
    ``score`` (vertex, metric) float64, ``metric`` = ``pearson_r`` | ``r2`` |
    ``noise_normalized`` (percent of explainable variance: ``100 * max(r, 0)**2 / (NC / 100)``
    with NC in percent, capped at 100; NaN without a noise ceiling). ``status`` (vertex) str: ``ok``, ``constant_target``, ``constant_prediction``,
    ``nonfinite`` -- r is NaN unless ``ok``. ``noise_ceiling`` (vertex, percent) when the data
    set has one. ``roi_median`` (roi, metric): median over the ROI's valid vertices.
    Vertex coords: ``hemisphere`` (lh/rh), ``hemi_vertex``, ``roi_<family>`` (str ROI name,
    ``Unknown`` for unlabelled). ROI coords: ``roi`` (``family/name``), ``roi_family``,
    ``roi_name``, ``roi_n_vertices``. attrs: ``model``, ``subject``, ``backbone``,
    ``n_test_images``, ``mean_r``, ``median_r``, ``n_undefined_vertices``, ``fit_seconds`` and
    provenance; ``challenge_score`` (the Algonauts-2023 score) with a noise ceiling.
    Significance (``--permutations N``, default 1,000; :mod:`brainattn.analyses.significance`):
    ``p_value``, ``q_value`` (vertex) float64, ``significant`` (vertex) bool (``q <= --fdr``),
    ``roi_median_ci`` (roi, bound) the 95 % bootstrap interval of the ROI median r, ``bound`` =
    ``low``/``high``; attrs ``n_permutations``, ``n_bootstrap``, ``fdr_alpha``,
    ``n_significant``.
``attention.nc`` (transformer runs)
    ``attention`` (image, query, row, col) float32: head-mean attention of each query on the
    token grid, last decoder layer, sums to 1 per (image, query); coords ``image`` (row index of
    the data set), ``image_id`` (image), ``query`` (``lh:FFA-1``...), ``query_hemisphere``,
    ``query_roi`` (query), ``row``, ``col``; attrs ``grid_rows``, ``grid_cols``. Row 0 is the top
    of the image. Per-vertex queries (``vertices``/``hybrid`` modes) are averaged over each ROI.
``history.csv``
    one row per epoch: ``epoch, lr, train_loss, val_loss, val_mean_r, val_median_r, seconds``.
``config.json``, ``split.json`` (train/val/test image indices), ``model.safetensors`` +
``model.json``, ``fit.log``.
"""

from __future__ import annotations

_LAZY = {
    "TransformerBrainEncoder": "brainattn.encoders.transformer",
    "assign_queries": "brainattn.encoders.transformer",
    "QueryAssignment": "brainattn.encoders.transformer",
    "CPU_PRESET": "brainattn.encoders.transformer",
    "split_images": "brainattn.encoders._base",
    "Rows": "brainattn.encoders.cache",
    "SpatialFeatureEncoder": "brainattn.encoders.factorized",
    "RidgeEncoder": "brainattn.encoders.ridge",
    "GaborBackbone": "brainattn.encoders.backbones",
    "TimmViTBackbone": "brainattn.encoders.backbones",
    "make_backbone": "brainattn.encoders.backbones",
    "get_features": "brainattn.encoders.cache",
    "pearson_per_column": "brainattn.encoders.metrics",
    "noise_normalized": "brainattn.encoders.metrics",
    "roi_medians": "brainattn.encoders.metrics",
    "score_table": "brainattn.encoders.metrics",
    "fit_run": "brainattn.encoders.run",
    "prepare_run": "brainattn.encoders.run",
    "fit_prepared": "brainattn.encoders.run",
    "write_run": "brainattn.encoders.run",
    "evaluate_run": "brainattn.encoders.run",
    "predict_run": "brainattn.encoders.run",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'brainattn.encoders' has no attribute {name!r}")
