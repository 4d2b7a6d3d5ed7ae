"""Figures of the encoding analyses, drawn inside the encoders section.

Found beside the encoder runs given to the report (:func:`analysis_figures`):

- ``layer_sweep*.nc`` in a run folder's parent or a sibling folder (``brainattn fit --layer
  a,b,c``; the demo's ``encoders/sweep/``): score against
  depth, the median over each ROI family's vertices per layer (:func:`plot_layer_sweep`);
- ``partition.nc`` in a run folder (``brainattn partition``): the variance parts per ROI, as
  stacked bars of median held-out R^2 (:func:`plot_partition`).

Ensembles (``brainattn ensemble``) are runs (``scores.nc``, ``config.json`` with ``model:
ensemble``) and appear with the other models; significance (``significant`` in ``scores.nc``)
masks the surface map.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from brainattn.report.figures import load_result, provenance_of, render, slug


def plot_layer_sweep(summary, *, title: str = ""):
    """Median score per ROI family against layer; a marker on each family's best layer.

    Line ``gid``: ``"layer-sweep:<family>"``.
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

    layers = np.asarray(summary["layer"].values)
    fig, ax = plt.subplots(figsize=(5.4, 3.4), layout="constrained")
    colours = sns.color_palette("colorblind", summary.sizes.get("family", 1))
    for k, fam in enumerate(summary["family"].values if "family" in summary.dims else []):
        y = summary["family_score"].values[:, k]
        (line,) = ax.plot(layers, y, "-o", ms=4, color=colours[k], label=str(fam))
        line.set_gid(f"layer-sweep:{fam}")
        best = int(summary["best_layer_family"].values[k])
        if best >= 0:
            ax.plot([best], [y[list(layers).index(best)]], "*", ms=12, color=colours[k])
    ax.set_xticks(layers, [str(x) for x in layers])
    ax.set_xlabel("layer (stage / block)")
    ax.set_ylabel(f"median {summary.attrs.get('metric', 'pearson_r')}")
    ax.axhline(0, color="0.3", lw=0.6)
    ax.legend(fontsize=8, frameon=False, loc="center left", bbox_to_anchor=(1.0, 0.5))
    if title:
        ax.set_title(title, fontsize=10)
    sns.despine(ax=ax)
    return fig


def plot_partition(part, *, title: str = "", order=None):
    """Stacked bars of the median variance parts (unique per space, shared) per ROI;
    ``order(names, "family" | "roi")`` sorts families and ROIs (default: file order).

    Bar ``gid``: ``"partition:<part>:<family>/<roi>"``.
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

    from brainattn.data.rois import UNKNOWN, roi_labels

    order = order or (lambda items, kind: list(items))
    parts = [str(p) for p in part["part"].values]
    rows = []
    labels_of = roi_labels(part)
    for fam in order(list(labels_of), "family"):
        labels = labels_of[fam]
        for name in order(list(dict.fromkeys(labels.tolist())), "roi"):
            if name != UNKNOWN:
                sel = labels == name
                rows.append((f"{fam}/{name}", name,
                             [float(np.nanmedian(part["partition"].values[k, sel]))
                              for k in range(len(parts))]))
    fig, ax = plt.subplots(figsize=(min(16, 2 + 0.35 * len(rows)), 3.6), layout="constrained")
    colours = sns.color_palette("colorblind", len(parts))
    pos = np.zeros(len(rows))
    neg = np.zeros(len(rows))
    x = np.arange(len(rows))
    for k, p in enumerate(parts):
        v = np.asarray([r[2][k] for r in rows])
        base = np.where(v >= 0, pos, neg)
        bars = ax.bar(x, v, bottom=base, color=colours[k], label=p, width=0.8)
        for b, r in zip(bars, rows, strict=True):
            b.set_gid(f"partition:{p}:{r[0]}")
        pos += np.clip(v, 0, None)
        neg += np.clip(v, None, 0)
    ax.set_xticks(x, [r[1] for r in rows], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("median held-out R\u00b2")
    ax.axhline(0, color="0.3", lw=0.6)
    ax.legend(fontsize=8, frameon=False, loc="center left", bbox_to_anchor=(1.0, 0.5))
    if title:
        ax.set_title(title, fontsize=10)
    sns.despine(ax=ax)
    return fig


def analysis_figures(runs, *, svg: bool = True, order=None) -> tuple[list, list[dict]]:
    """Rendered figures (and provenance rows) of the sweeps and partitions beside ``runs``
    (``order``: see :func:`plot_partition`)."""
    figs, prov = [], []
    sweeps = []
    for run in runs:  # beside the run folders, or in a sweep folder beside them (the demo's)
        parent = Path(run.path).parent
        for p in [*sorted(parent.glob("layer_sweep*.nc")), *sorted(parent.glob("*/layer_sweep*.nc"))]:
            if p not in sweeps:
                sweeps.append(p)
    for p in sweeps:
        summary = load_result(p)
        prov.append(provenance_of(summary, p))
        what = p.stem.removeprefix("layer_sweep").strip("_").replace("__", ", ") or \
            f"{summary.attrs.get('subject', '')}, {summary.attrs.get('backbone', '')}"
        figs.append(render(plot_layer_sweep(summary, title=f"layer sweep ({what})"),
                           f"analyses-{slug(p.stem)}",
                           "Score against depth: median held-out r over each ROI family's "
                           "vertices for each fitted layer (star: the family's best layer).",
                           svg=svg))
    for run in runs:
        p = Path(run.path) / "partition.nc"
        if p.is_file():
            part = load_result(p)
            prov.append(provenance_of(part, p))
            figs.append(render(plot_partition(part, title=f"variance partitioning ({run.label})",
                                              order=order),
                               f"analyses-partition-{slug(run.path.name)}",
                               "Variance partitioning of the banded ridge: median held-out R\u00b2 "
                               "explained uniquely by each feature space and shared by them, per "
                               "ROI.", svg=svg))
    return figs, prov
