"""Checks of fitted encoders against the synthetic cortex's ground truth.

* :func:`attention_in_box` -- for every held-out image holding an object of category ``c`` and
  every ROI query of ``c``'s family (e.g. ``lh:FFA-1`` for faces), does the query's attention
  map peak on a token whose centre lies inside a box of a ``c`` object?
* :func:`science_table` -- median noise-normalised accuracy of each model in early-visual and
  category-selective ROIs, side by side (the issue's science targets).
"""

from __future__ import annotations

import numpy as np

FAMILY_CATEGORY = {"floc-bodies": "bodies", "floc-faces": "faces", "floc-places": "places",
                   "floc-words": "words"}


def attention_in_box(att, gt, roi_labels: dict, *, pad: float = 0.0) -> dict:
    """Fraction of (image, query) pairs whose attention peak falls inside an object box.

    Parameters
    ----------
    att : ``attention.nc`` Dataset (``attention`` (image, query, row, col), ``image`` = row index
        of the training images, ``query_roi``).
    gt : the synthetic ground truth (``object_category``, ``object_box`` (image, object, box)).
    roi_labels : ``{family: names}`` -- which ROI names belong to which category family.
    pad : boxes are grown by this many normalised units on every side.

    Returns ``{category: (hit_rate, n_pairs)}`` plus ``"all"``.
    """
    a = att["attention"].values  # (I, Q, R, C)
    n_img, n_q, rows, cols = a.shape
    img = np.asarray(att["image"].values)
    q_roi = np.asarray(att["query_roi"].values).astype(str)
    cats = np.asarray(gt["object_category"].values).astype(str)[img]  # (I, O)
    boxes = np.asarray(gt["object_box"].values)[img]  # (I, O, 4)
    peak = a.reshape(n_img, n_q, -1).argmax(-1)
    py = (peak // cols + 0.5) / rows
    px = (peak % cols + 0.5) / cols
    roi_cat = {}
    for fam, names in roi_labels.items():
        if fam in FAMILY_CATEGORY:
            for n in names:
                roi_cat[str(n)] = FAMILY_CATEGORY[fam]
    out, total_hit, total_n = {}, 0, 0
    for cat in FAMILY_CATEGORY.values():
        qs = [q for q in range(n_q) if roi_cat.get(q_roi[q]) == cat]
        hit = n = 0
        for i in range(n_img):
            sel = cats[i] == cat
            if not sel.any() or not qs:
                continue
            b = boxes[i][sel]
            for q in qs:
                inside = ((px[i, q] >= b[:, 0] - pad) & (px[i, q] <= b[:, 2] + pad)
                          & (py[i, q] >= b[:, 1] - pad) & (py[i, q] <= b[:, 3] + pad))
                hit += bool(inside.any())
                n += 1
        out[cat] = (hit / n if n else float("nan"), n)
        total_hit += hit
        total_n += n
    out["all"] = (total_hit / total_n if total_n else float("nan"), total_n)
    return out


def roi_group_medians(scores, metric: str = "noise_normalized") -> dict:
    """Median over all vertices of the early-visual ROIs (``prf-visualrois``) and of the
    category-selective ROIs (``floc-*``) of one ``scores.nc``."""
    from brainattn.data.rois import UNKNOWN, roi_labels

    vals = scores["score"].sel(metric=metric).values
    labels = roi_labels(scores)
    out = {}
    if "prf-visualrois" in labels:
        ev = labels["prf-visualrois"] != UNKNOWN
        out["early_visual"] = float(np.nanmedian(vals[ev])) if ev.any() else float("nan")
    cat = np.zeros(len(vals), bool)
    for fam in FAMILY_CATEGORY:
        if fam in labels:
            cat |= labels[fam] != UNKNOWN
    out["category"] = float(np.nanmedian(vals[cat])) if cat.any() else float("nan")
    return out


def science_table(scores_by_model: dict, metric: str = "noise_normalized") -> str:
    """Markdown table: model x (early visual, category) median ``metric``."""
    lines = ["| model | early-visual median | category median |", "|---|---|---|"]
    for name, sc in scores_by_model.items():
        g = roi_group_medians(sc, metric)
        lines.append(f"| {name} | {g.get('early_visual', float('nan')):.1f} | {g['category']:.1f} |")
    return "\n".join(lines)


def demo_fit(root, out, *, subject: str = "subj01", device: str = "auto", cache_dir=None,
             models=("ridge", "factorized", "transformer"), transformer: dict | None = None,
             factorized: dict | None = None, ridge: dict | None = None, echo: bool = False) -> dict:
    """Fit the three models on one subject of a synthetic cortex and check the science targets.

    Writes one run folder per model under ``out`` and returns ``{model: {"seconds",
    "early_visual", "category", "mean_r", ["attention_in_box"]}}`` (medians of the
    noise-normalised accuracy, percent).
    """
    import time
    from pathlib import Path

    from brainattn.data.rois import roi_labels
    from brainattn.data.synth import load_ground_truth
    from brainattn.encoders.run import fit_run
    from brainattn.io import load_netcdf

    extra = {"transformer": transformer or {}, "factorized": factorized or {},
             "ridge": ridge or {}}
    gt = load_ground_truth(root, subject)
    res = {}
    for m in models:
        t0 = time.perf_counter()
        run = fit_run(root, Path(out) / m, overwrite=True, cache_dir=cache_dir, echo=echo,
                      model=m, subject=subject, device=device, **extra[m])
        sc = load_netcdf(run / "scores.nc")
        row = {"seconds": time.perf_counter() - t0, **roi_group_medians(sc),
               "mean_r": sc.attrs["mean_r"]}
        if (run / "attention.nc").is_file():
            roi = {f: np.unique(v) for f, v in roi_labels(sc).items()}
            row["attention_in_box"] = attention_in_box(load_netcdf(run / "attention.nc"), gt, roi)
        res[m] = row
    return res
