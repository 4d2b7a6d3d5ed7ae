"""Layer sweeps: which layer of a backbone predicts which ROI and which vertex best.

:func:`layer_sweep_summary` takes the ``scores.nc`` of one fit per layer (same data, split and
model; see :mod:`brainattn.encoders`) and returns the score of every layer per ROI and per
vertex, the best layer per ROI and per vertex, and the median over each ROI family (the
"score against depth" curve Brain-Score and Net2Brain users read).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from brainattn.errors import ConfigError, ShapeError


def _best(values: np.ndarray, layers: np.ndarray) -> np.ndarray:
    """Layer of the highest finite value along axis 0; -1 where every layer is NaN."""
    filled = np.where(np.isfinite(values), values, -np.inf)
    best = layers[np.argmax(filled, axis=0)]
    return np.where(np.isfinite(values).any(0), best, -1)


def layer_sweep_summary(scores_by_layer: Mapping[int, object], *, metric: str = "pearson_r"):
    """Summarise a layer sweep.

    Parameters
    ----------
    scores_by_layer : ``{layer: scores Dataset}``, each as written to ``scores.nc`` (``score``
        (vertex, metric), ``roi_median`` (roi, metric)), over the same vertices and ROIs.
    metric : which metric to compare (``pearson_r``, ``r2`` or ``noise_normalized``).

    Returns
    -------
    xarray.Dataset with dims ``layer`` (sorted), ``vertex``, ``roi``, ``family``:
    ``vertex_score`` (layer, vertex), ``best_layer`` (vertex) int (-1 where undefined) and
    ``best_vertex_score`` (vertex); ``roi_score`` (layer, roi) the ROI medians,
    ``best_layer_roi`` (roi); ``family_score`` (layer, family) the median over the family's
    labelled vertices, ``best_layer_family`` (family). Vertex and ROI coordinates are kept.
    """
    import xarray as xr

    if len(scores_by_layer) < 1:
        raise ConfigError("a layer sweep needs the scores of at least one layer")
    layers = np.asarray(sorted(int(k) for k in scores_by_layer), dtype=np.int64)
    sets = [scores_by_layer[k] for k in sorted(scores_by_layer, key=int)]
    first = sets[0]
    if metric not in [str(m) for m in first["metric"].values]:
        raise ConfigError(f"metric {metric!r}: expected one of {list(first['metric'].values)}")
    for ly, ds in zip(layers, sets, strict=True):
        if ds.sizes["vertex"] != first.sizes["vertex"] or ds.sizes.get("roi", 0) != first.sizes.get("roi", 0):
            raise ShapeError(f"layer {ly}: scores over {ds.sizes['vertex']} vertices / "
                             f"{ds.sizes.get('roi', 0)} ROIs, layer {layers[0]} over "
                             f"{first.sizes['vertex']} / {first.sizes.get('roi', 0)}; a sweep "
                             "compares the same vertices")
    vs = np.stack([ds["score"].sel(metric=metric).values for ds in sets])
    vcoords = {k: ("vertex", first[k].values) for k in first.coords
               if k != "vertex" and first[k].dims == ("vertex",)}
    out = xr.Dataset(
        {"vertex_score": (("layer", "vertex"), vs),
         "best_layer": (("vertex",), _best(vs, layers)),
         "best_vertex_score": (("vertex",), np.where(np.isfinite(vs).any(0),
                                                      np.nanmax(np.where(np.isfinite(vs), vs, -np.inf), 0),
                                                      np.nan))},
        coords={"layer": layers, "vertex": first["vertex"].values, **vcoords})
    if first.sizes.get("roi", 0):
        rs = np.stack([ds["roi_median"].sel(metric=metric).values for ds in sets])
        rcoords = {k: ("roi", first[k].values) for k in first.coords if first[k].dims == ("roi",)}
        out = out.assign_coords(roi=first["roi"].values, **{k: v for k, v in rcoords.items() if k != "roi"})
        out["roi_score"] = ("layer", "roi"), rs, {"long_name": f"median {metric} over the ROI"}
        out["best_layer_roi"] = ("roi",), _best(rs, layers)
    fam_keys = [k for k in first.coords if k.startswith("roi_") and first[k].dims == ("vertex",)]
    if fam_keys:
        fams = [k[4:] for k in fam_keys]
        fs = np.full((layers.size, len(fams)), np.nan)
        for j, k in enumerate(fam_keys):
            inside = np.asarray(first[k].values).astype(str) != "Unknown"
            for i in range(layers.size):
                v = vs[i, inside]
                v = v[np.isfinite(v)]
                fs[i, j] = np.median(v) if v.size else np.nan
        out = out.assign_coords(family=("family", np.asarray(fams, dtype=str)))
        out["family_score"] = ("layer", "family"), fs, {
            "long_name": f"median {metric} over the labelled vertices of the ROI family"}
        out["best_layer_family"] = ("family",), _best(fs, layers)
    out.attrs.update({"metric": metric, "layers": layers.tolist(),
                      **{k: first.attrs[k] for k in ("model", "subject", "backbone")
                         if k in first.attrs}})
    return out
