"""Encoders section: accuracy per ROI, the fsaverage5 surface map, attention maps, training.

Reads the run folders ``brainattn fit`` writes (see :mod:`brainattn.encoders`):

- ``scores.nc``: ``score`` (vertex, metric) with ``metric`` in ``pearson_r``, ``r2``,
  ``noise_normalized`` (percent of the noise ceiling); vertex coords ``hemisphere``
  (``"lh"``/``"rh"``), ``hemi_vertex``, ``roi_<family>`` and, for the surface map,
  ``fsaverage_index`` (+ attr ``fsaverage_mesh``; when absent, taken from the run's data set by
  ``hemi_vertex``); optional ``roi_median`` (roi, metric) with coords ``roi_family``,
  ``roi_name`` (recomputed from ``score`` when absent);
- ``attention.nc``: ``attention`` (image, query, row, col) -- any two trailing spatial dims,
  or one square ``token`` dim (a leading CLS token is dropped) -- with coords ``query``
  (``lh:FFA-1``...), ``image`` (row of the data set) and ``image_id``; the images come from a
  ``pixels`` variable (image, y, x[, channel]), an ``image_path`` coord, or the data set the run
  was fitted to (``config.json``'s ``data``/``subject``, or the demo's ``data/`` folder);
- ``history.csv``: one row per epoch with ``epoch`` and any of ``train_loss``, ``val_loss``,
  ``val_mean_r``;
- ``config.json``: ``model`` names the model.

The surface is nilearn's bundled fsaverage5 (inflated, sulcal depth as background; nothing is
downloaded). Results on a finer fsaverage mesh (fsaverage6, fsaverage) are drawn through their
first 10,242 vertices, which are the fsaverage5 vertices in FreeSurfer's icosahedral order.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from brainattn.report.discovery import Run
from brainattn.report.figures import Section, load_result, provenance_of, render, slug

N_FSAVERAGE5 = 10242
_MESH_SIZE = {"fsaverage4": 2562, "fsaverage5": 10242, "fsaverage6": 40962, "fsaverage7": 163842,
              "fsaverage": 163842}
#: ROI queries drawn by default when present (one per family), matched by ROI name
DEFAULT_QUERIES = ("V1v", "V1", "FFA-1", "FFA", "EBA", "PPA", "VWFA-1", "VWFA", "OPA", "OFA")
HEMI_NAMES = {"lh": "left", "rh": "right"}
#: page order of ROI families and of the ROIs inside them (others follow in file order)
FAMILY_ORDER = ("prf-visualrois", "floc-faces", "floc-bodies", "floc-places", "floc-words",
                "streams")
ROI_ORDER = ("V1v", "V1d", "V2v", "V2d", "V3v", "V3d", "hV4", "OFA", "FFA-1", "FFA-2", "mTL-faces",
             "aTL-faces", "EBA", "FBA-1", "FBA-2", "mTL-bodies", "OPA", "PPA", "RSC", "OWFA",
             "VWFA-1", "VWFA-2", "mfs-words", "mTL-words")


def _order(items, canonical):
    rank = {n: i for i, n in enumerate(canonical)}
    items = list(dict.fromkeys(items))
    return sorted(items, key=lambda n: (rank.get(n, len(rank)), items.index(n)))

TEXT = (
    "Encoding models fitted to held-out images: accuracy is the Pearson r between predicted and "
    "measured responses per vertex, and the noise-normalised accuracy is 100 r\u00b2 / noise "
    "ceiling (the Algonauts-2023 score, r < 0 counted as 0). Bars are ROI medians per model; "
    "the surface shows the best model's noise-normalised accuracy on the inflated fsaverage5 "
    "cortex; attention maps show where each ROI query of the transformer looks in held-out "
    "images; the curves show training and validation loss and validation r per epoch."
)


# --------------------------------------------------------------------------------------------
# tables


def roi_table(scores, metric: str = "pearson_r"):
    """ROI medians of one metric as a DataFrame (``family``, ``roi``, ``value``, ``n_vertices``).

    Uses ``roi_median`` when the file has it, else the median over each ROI's finite vertices.
    The ``Unknown`` label (unlabelled vertices) is left out.
    """
    import pandas as pd

    rows = []
    if "roi_median" in scores and "metric" in scores["roi_median"].dims:
        rm = scores["roi_median"].sel(metric=metric)
        fam = scores["roi_family"].values if "roi_family" in scores.coords else [""] * rm.size
        name = scores["roi_name"].values if "roi_name" in scores.coords else scores["roi"].values
        nv = scores["roi_n_vertices"].values if "roi_n_vertices" in scores.coords else [-1] * rm.size
        for f, n, v, c in zip(fam, name, rm.values, nv, strict=False):
            rows.append({"family": str(f), "roi": str(n), "value": float(v), "n_vertices": int(c)})
    else:
        vals = scores["score"].sel(metric=metric).values
        from brainattn.data.rois import roi_labels

        for family, labels in roi_labels(scores).items():
            for n in dict.fromkeys(labels):
                sel = vals[labels == n]
                sel = sel[np.isfinite(sel)]
                rows.append({"family": family, "roi": n,
                             "value": float(np.median(sel)) if sel.size else float("nan"),
                             "n_vertices": int(sel.size)})
    df = pd.DataFrame(rows, columns=["family", "roi", "value", "n_vertices"])
    return df[df["roi"] != "Unknown"].reset_index(drop=True)


def summary_table(scores_by_model: dict):
    """One row per model: mean/median r and median noise-normalised accuracy per ROI family."""
    import pandas as pd

    rows = []
    for model, ds in scores_by_model.items():
        r = ds["score"].sel(metric="pearson_r").values
        row = {"model": model, "vertices": int(r.size),
               "undefined r": int((~np.isfinite(r)).sum()),
               "mean r": float(np.nanmean(r)) if np.isfinite(r).any() else float("nan"),
               "median r": float(np.nanmedian(r)) if np.isfinite(r).any() else float("nan")}
        if "noise_normalized" in ds["metric"].values:
            t = roi_table(ds, "noise_normalized")
            for fam, g in t.groupby("family", sort=False):
                row[f"{fam} (% NC)"] = float(np.nanmedian(g["value"])) if g["value"].notna().any() \
                    else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------
# figures


def plot_roi_accuracy(scores_by_model: dict, metric: str = "pearson_r"):
    """Bar chart of the ROI medians of ``metric``, one bar per model, one panel per ROI family.

    Each bar's ``gid`` is ``"roi-bar:<model>:<family>/<roi>"``.
    """
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    frames = []
    for model, ds in scores_by_model.items():
        t = roi_table(ds, metric)
        t["model"] = model
        frames.append(t)
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    fams = _order(df["family"], FAMILY_ORDER) if len(df) else []
    models = list(scores_by_model)
    widths = [max(1, df[df.family == f]["roi"].nunique()) for f in fams] or [1]
    fig, axes = plt.subplots(1, len(widths), figsize=(min(18, 1.6 + 0.55 * sum(widths) * max(1, len(models)) ** 0.5), 3.6),
                             sharey=True, squeeze=False, width_ratios=widths, layout="constrained")
    palette = dict(zip(models, sns.color_palette("colorblind", len(models)), strict=False))
    for ax, fam in zip(axes[0], fams, strict=False):
        sub = df[df.family == fam]
        rois = _order(sub["roi"], ROI_ORDER)
        n = len(models)
        w = 0.8 / max(1, n)
        for i, model in enumerate(models):
            m = sub[sub.model == model].set_index("roi").reindex(rois)
            x = np.arange(len(rois)) - 0.4 + w * (i + 0.5)
            bars = ax.bar(x, m["value"].to_numpy(dtype=float), width=w, color=palette[model],
                          label=model)
            for b, roi in zip(bars, rois, strict=False):
                b.set_gid(f"roi-bar:{model}:{fam}/{roi}")
        ax.set_xticks(np.arange(len(rois)), rois, rotation=60, ha="right", fontsize=8)
        ax.set_title(fam, fontsize=10)
        ax.axhline(0, color="0.3", lw=0.6)
        sns.despine(ax=ax)
    axes[0][0].set_ylabel({"pearson_r": "median Pearson r", "noise_normalized":
                           "median % of noise ceiling", "r2": "median r\u00b2"}.get(metric, metric))
    if models:
        fig.legend(*axes[0][0].get_legend_handles_labels(), title="model", fontsize=8,
                   frameon=False, loc="outside right upper")
    return fig


def surface_values(scores, metric: str = "noise_normalized", *, significant_only: bool = False):
    """Per-hemisphere arrays over the fsaverage5 mesh (NaN where no vertex was scored, and with
    ``significant_only`` where scores.nc's ``significant`` is False).

    Returns ``({"lh": (10242,), "rh": (10242,)}, note)``; ``note`` says why the map cannot be
    drawn (then the dict is empty).
    """
    vals = scores["score"].sel(metric=metric).values.astype(float)
    if significant_only:
        if "significant" not in scores:
            return {}, "scores.nc has no 'significant' variable (fit with --permutations > 0)"
        vals = np.where(scores["significant"].values.astype(bool), vals, np.nan)
    if "hemisphere" not in scores.coords:
        return {}, "scores.nc has no 'hemisphere' coordinate; surface map skipped"
    hemi = scores["hemisphere"].values.astype(str)
    mesh = str(scores.attrs.get("fsaverage_mesh", ""))
    if "fsaverage_index" in scores.coords:
        index = scores["fsaverage_index"].values.astype(np.int64)
    elif "hemi_vertex" in scores.coords and all(
        (hemi == h).sum() in (N_FSAVERAGE5, 0) for h in HEMI_NAMES
    ):
        index = scores["hemi_vertex"].values.astype(np.int64)
    else:
        return {}, ("scores.nc has no 'fsaverage_index' coordinate (and the vertices do not cover "
                    "the whole fsaverage5 mesh); surface map skipped")
    if mesh and _MESH_SIZE.get(mesh, N_FSAVERAGE5) < 2562:
        return {}, f"scores.nc is on mesh {mesh!r}; only fsaverage meshes can be drawn"
    out = {}
    for h in HEMI_NAMES:
        sel = hemi == h
        if not sel.any():
            continue
        full = np.full(N_FSAVERAGE5, np.nan)
        idx, v = index[sel], vals[sel]
        keep = (idx >= 0) & (idx < N_FSAVERAGE5)  # finer meshes: the first 10,242 are fsaverage5
        full[idx[keep]] = v[keep]
        out[h] = full
    if not out:
        return {}, "scores.nc has no 'lh'/'rh' vertices; surface map skipped"
    return out, ""


def plot_surface(values: dict, *, title: str = "", unit: str = "% of noise ceiling",
                 views=("lateral", "medial", "ventral"), cmap: str = "inferno"):
    """The inflated fsaverage5 surface coloured by ``values`` (hemisphere -> (10242,) array).

    The colour range is the finite range of the values drawn (``vmin``/``vmax`` of the colour
    bar). nilearn colours faces, not vertices: a face takes the mean of its scored vertices
    (``np.nanmean``; with the default mean a face touching one unscored vertex would be blank,
    hiding scattered or thin ROIs). The mesh polygons are rasterised so the SVG stays small.
    """
    import matplotlib.pyplot as plt
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from nilearn import datasets, plotting

    fs = datasets.load_fsaverage("fsaverage5")
    try:
        sulc = datasets.load_fsaverage_data(mesh="fsaverage5", mesh_type="inflated",
                                            data_type="sulcal")
        bg = {h: np.asarray(sulc.data.parts[HEMI_NAMES[h]]) for h in HEMI_NAMES}
    except Exception:  # pragma: no cover - bundled with nilearn; keep drawing without it
        bg = {h: None for h in HEMI_NAMES}
    finite = np.concatenate([v[np.isfinite(v)] for v in values.values()])
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if vmax <= vmin:
        vmax = vmin + 1e-6
    hemis = list(values)
    fig, axes = plt.subplots(len(hemis), len(views), figsize=(3.2 * len(views), 2.9 * len(hemis)),
                             subplot_kw={"projection": "3d"}, squeeze=False)
    for r, h in enumerate(hemis):
        for c, view in enumerate(views):
            ax = axes[r][c]
            with warnings.catch_warnings():  # nanmean of an all-NaN face: "Mean of empty slice"
                warnings.simplefilter("ignore", RuntimeWarning)
                plotting.plot_surf_stat_map(
                    fs["inflated"].parts[HEMI_NAMES[h]], values[h], bg_map=bg[h],
                    hemi=HEMI_NAMES[h], view=view, cmap=cmap, vmin=vmin, vmax=vmax,
                    symmetric_cbar=False, colorbar=False, axes=ax, figure=fig,
                    avg_method="nanmean", title=f"{h} {view}",
                )
            for coll in ax.collections:
                coll.set_rasterized(True)
                coll.set_gid(f"surface:{h}:{view}")
    if title:
        fig.suptitle(title, fontsize=11)
    # 3-D panels are costly to draw: lay out by hand so rendering needs no extra "tight" pass
    fig.subplots_adjust(left=0.0, right=0.9, bottom=0.0, top=0.9 if title else 0.96,
                        wspace=0.0, hspace=0.08)
    cax = fig.add_axes([0.92, 0.12, 0.015, 0.7])
    sm = ScalarMappable(norm=Normalize(vmin=vmin, vmax=vmax), cmap=cmap)
    fig.colorbar(sm, cax=cax, format="%.3g").set_label(unit, fontsize=9)
    cax.set_gid("surface-colorbar")
    fig._brainattn_tight = False
    return fig


def _attention_array(att):
    """(image, query, ny, nx) weights from an attention dataset (flexible about names)."""
    var = "attention" if "attention" in att.data_vars else next(iter(att.data_vars))
    a = att[var]
    if "image" not in a.dims or "query" not in a.dims:
        raise ValueError(f"attention.nc: variable {var!r} needs dims 'image' and 'query', has {a.dims}")
    rest = [d for d in a.dims if d not in ("image", "query")]
    a = a.transpose("image", "query", *rest)
    arr = np.asarray(a.values, dtype=float)
    if arr.ndim == 3:
        n = int(round(np.sqrt(arr.shape[2])))
        if n * n != arr.shape[2]:  # e.g. a CLS token first
            n = int(round(np.sqrt(arr.shape[2] - 1)))
            arr = arr[:, :, 1:]
        arr = arr.reshape(arr.shape[0], arr.shape[1], n, n)
    return arr


def _images_of(att, run_dir: Path):
    """Pixel arrays of the attention images, or ``None`` for each image that is not available."""
    n = att.sizes["image"]
    for name in ("pixels", "image_pixels", "images"):
        if name in att.data_vars and "image" in att[name].dims:
            px = np.asarray(att[name].transpose("image", ...).values)
            return [px[i] for i in range(n)]
    out = [None] * n
    if "image_path" in att.coords:
        from PIL import Image

        for i, p in enumerate(att["image_path"].values.astype(str)):
            path = Path(p) if Path(p).is_absolute() else run_dir / p
            try:
                with Image.open(path) as im:
                    out[i] = np.asarray(im.convert("RGB"))
            except OSError:
                pass
    return out


def choose_queries(names, wanted=DEFAULT_QUERIES, k: int = 4) -> list[int]:
    """Indices of up to ``k`` queries to draw: left-hemisphere ones matching ``wanted`` first."""
    names = [str(n) for n in names]
    base = [n.split("/")[-1].split(":")[-1] for n in names]
    picked = []
    for w in wanted:
        cand = [i for i, b in enumerate(base) if b == w and i not in picked]
        cand.sort(key=lambda i: (not names[i].startswith("lh"), i))
        if cand and all(base[j] != w for j in picked):
            picked.append(cand[0])
        if len(picked) == k:
            return picked
    for i in range(len(names)):
        if len(picked) == k:
            break
        if i not in picked:
            picked.append(i)
    return picked


def plot_attention(att, run_dir: str | Path = ".", *, queries=None, n_images: int = 4):
    """Attention maps of chosen ROI queries over held-out images (rows: images, cols: queries).

    Each map is upsampled over its image (bilinear) with its own colour range (min to max of
    that map: where the query looks, whatever its contrast); its ``gid`` is
    ``"attention:<query>:<image_id>"``. The caption of a row gives the image id.
    """
    import matplotlib.pyplot as plt

    arr = _attention_array(att)
    qnames = [str(q) for q in att["query"].values] if "query" in att.coords else \
        [f"query {i}" for i in range(arr.shape[1])]
    ids = [str(x) for x in att["image_id"].values] if "image_id" in att.coords else \
        [str(i) for i in range(arr.shape[0])]
    qidx = choose_queries(qnames) if queries is None else [qnames.index(q) for q in queries]
    imgs = _images_of(att, Path(run_dir))
    rows = list(range(min(n_images, arr.shape[0])))
    ncol = len(qidx) + 1
    fig, axes = plt.subplots(len(rows), ncol, figsize=(1.9 * ncol, 1.9 * len(rows)),
                             squeeze=False, layout="constrained")
    for r, i in enumerate(rows):
        img = imgs[i]
        ext = (0, 1, 1, 0)
        ax = axes[r][0]
        if img is not None:
            ax.imshow(img, extent=ext, cmap="gray" if img.ndim == 2 else None)
        ax.set_title(f"image {ids[i]}", fontsize=8)
        for c, q in enumerate(qidx, start=1):
            ax = axes[r][c]
            if img is not None:
                ax.imshow(img, extent=ext, cmap="gray" if img.ndim == 2 else None)
            m = arr[i, q]
            lo, hi = float(np.nanmin(m)), float(np.nanmax(m))
            im = ax.imshow(m, extent=ext, cmap="magma", alpha=0.6 if img is not None else 1.0,
                           interpolation="bilinear", vmin=lo, vmax=hi if hi > lo else lo + 1e-12)
            im.set_gid(f"attention:{qnames[q]}:{ids[i]}")
            if r == 0:
                ax.set_title(qnames[q], fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlim(0, 1)
        ax.set_ylim(1, 0)
    return fig


def read_history(path: str | Path):
    """``history.csv`` as a DataFrame (``epoch`` column required)."""
    import pandas as pd

    from brainattn.errors import DataError

    try:
        df = pd.read_csv(path)
    except Exception as exc:
        raise DataError(f"{path}: not a readable CSV ({exc}); expected one row per epoch") from exc
    if "epoch" not in df.columns:
        raise DataError(f"{path}: no 'epoch' column; expected columns epoch, train_loss, val_loss, "
                        "val_mean_r")
    return df


def plot_training(histories: dict):
    """Loss (train/validation) and validation mean r per epoch, one line style per model.

    Line ``gid``: ``"curve:<model>:<column>"``.
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.3), layout="constrained")
    colors = dict(zip(histories, sns.color_palette("colorblind", len(histories)), strict=False))
    for model, df in histories.items():
        ep = df["epoch"].to_numpy()
        for col, ls in (("train_loss", "-"), ("val_loss", "--")):
            if col in df:
                (ln,) = ax1.plot(ep, df[col], ls, color=colors[model], marker="o", ms=3,
                                 label=f"{model} {col.split('_')[0]}")
                ln.set_gid(f"curve:{model}:{col}")
        if "val_mean_r" in df:
            (ln,) = ax2.plot(ep, df["val_mean_r"], color=colors[model], marker="o", ms=3,
                             label=model)
            ln.set_gid(f"curve:{model}:val_mean_r")
    ax1.set(xlabel="epoch", ylabel="MSE loss", title="loss")
    losses = [ln.get_ydata() for ln in ax1.lines]
    if losses:  # models with losses of very different size (e.g. unscaled targets): log axis
        lo = min(float(np.nanmin(y)) for y in losses)
        hi = max(float(np.nanmax(y)) for y in losses)
        if lo > 0 and hi / lo > 20:
            ax1.set_yscale("log")
    ax2.set(xlabel="epoch", ylabel="mean Pearson r", title="validation accuracy")
    from matplotlib.ticker import MaxNLocator

    for ax in (ax1, ax2):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if ax.lines:
            ax.legend(fontsize=8, frameon=False)
        sns.despine(ax=ax)
    return fig


# --------------------------------------------------------------------------------------------
# the data set a run was fitted to (for fsaverage indices and images the run files lack)


def _read_json(path: Path) -> dict:
    import json

    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return obj if isinstance(obj, dict) else {}


def run_dataset(run_dir: str | Path):
    """The data set of a run (``config.json``'s ``data`` + ``subject``, or a demo's ``data/``),
    opened lazily with :func:`brainattn.data.open_algonauts`; ``None`` when not found."""
    run_dir = Path(run_dir)
    cfg = _read_json(run_dir / "config.json")
    subject = str(cfg.get("subject") or "subj01")
    cands = []
    if cfg.get("data"):
        p = Path(str(cfg["data"]))
        cands.append(p if p.is_absolute() else run_dir / p)
    for up in (run_dir.parent, run_dir.parent.parent):  # demo: OUT/encoders/<model>, OUT/data
        cands.append(up / "data")
    for root in cands:
        if not root.is_dir():
            continue
        try:
            from brainattn.data import open_algonauts

            return open_algonauts(root, subject)
        except Exception:  # not a data set (or not this subject): try the next candidate
            continue
    return None


def add_fsaverage_index(scores, data):
    """Copy ``fsaverage_index`` from the data set onto ``scores`` (matched by hemisphere and
    ``hemi_vertex``); returns ``scores`` unchanged when that is impossible."""
    if data is None or "fsaverage_index" not in data.coords or "hemi_vertex" not in scores.coords:
        return scores
    idx = np.full(scores.sizes["vertex"], -1, dtype=np.int64)
    s_h = scores["hemisphere"].values.astype(str)
    s_v = scores["hemi_vertex"].values.astype(np.int64)
    d_h = data["hemisphere"].values.astype(str)
    d_v = data["hemi_vertex"].values.astype(np.int64)
    d_i = data["fsaverage_index"].values.astype(np.int64)
    for h in HEMI_NAMES:
        lut = dict(zip(d_v[d_h == h].tolist(), d_i[d_h == h].tolist(), strict=True))
        sel = np.flatnonzero(s_h == h)
        idx[sel] = [lut.get(int(v), -1) for v in s_v[sel]]
    if (idx < 0).all():
        return scores
    out = scores.assign_coords(fsaverage_index=("vertex", idx))
    if "fsaverage_mesh" in data.attrs:
        out.attrs["fsaverage_mesh"] = data.attrs["fsaverage_mesh"]
    return out


def attach_images(att, data):
    """Add ``image_path`` to ``att`` from the data set (by ``image_id``, else the ``image`` row)."""
    if data is None or "image_path" in att.coords or "pixels" in att.data_vars:
        return att
    paths = data["image_path"].values.astype(str) if "image_path" in data.coords else None
    if paths is None:
        return att
    if "image_id" in att.coords and "image_id" in data.coords:
        lut = dict(zip(data["image_id"].values.astype(str).tolist(), paths.tolist(), strict=True))
        found = [lut.get(str(i), "") for i in att["image_id"].values]
    elif "image" in att.coords:
        rows = att["image"].values.astype(np.int64)
        found = [paths[r] if 0 <= r < len(paths) else "" for r in rows]
    else:
        return att
    return att.assign_coords(image_path=("image", np.asarray(found, dtype=str)))


def attention_check(att, scores, data):
    """Where the data set is the synthetic cortex: per category, the share of (held-out image,
    ROI query) pairs whose attention peak lies inside an object box of the query's category
    (:func:`brainattn.encoders.synthcheck.attention_in_box`). ``None`` when not applicable."""
    if data is None or scores is None or "query_roi" not in att.coords:
        return None
    try:
        import pandas as pd

        from brainattn.data.synth import load_ground_truth
        from brainattn.encoders.synthcheck import attention_in_box

        gt = load_ground_truth(data.attrs["root"], str(data.attrs.get("subject", "subj01")))
        from brainattn.data.rois import roi_labels

        roi = {f: np.unique(v) for f, v in roi_labels(scores).items()}
        res = attention_in_box(att, gt, roi)
    except Exception:  # no ground truth (real data) or an older format: nothing to check
        return None
    rows = [{"category": k, "attention peak inside the object": v[0], "pairs": v[1]}
            for k, v in res.items() if isinstance(v, tuple) and len(v) == 2]
    return pd.DataFrame(rows) if rows else None


# --------------------------------------------------------------------------------------------
# the section


def _best_model(scores_by_model: dict, metric: str) -> str:
    def key(m):
        v = scores_by_model[m]["score"].sel(metric=metric).values
        return float(np.nanmedian(v)) if np.isfinite(v).any() else -np.inf

    return max(scores_by_model, key=key)


def build_section(runs: list[Run], missing: list[str] | None = None, *, svg: bool = True) -> Section:
    """Draw every encoder run (one per model) into one section."""
    sec = Section("encoders", "Encoders", TEXT, missing=list(missing or []), tables_first=True)
    scores, histories, atts, checks = {}, {}, {}, []
    for run in runs:
        label = run.label
        while label in scores or label in histories or label in atts:
            label = label + "'"
        sec.missing.extend(run.missing)
        data = None
        if "scores.nc" in run.files:
            ds = load_result(run.files["scores.nc"])
            if "fsaverage_index" not in ds.coords:
                data = run_dataset(run.path)
                ds = add_fsaverage_index(ds, data)
            scores[label] = ds
            sec.provenance.append(provenance_of(ds, run.files["scores.nc"]))
        if "history.csv" in run.files:
            histories[label] = read_history(run.files["history.csv"])
        if "attention.nc" in run.files:
            att = load_result(run.files["attention.nc"])
            if "pixels" not in att.data_vars and "image_path" not in att.coords:
                data = data if data is not None else run_dataset(run.path)
                att = attach_images(att, data)
            atts[label] = (att, run.path)
            check = attention_check(att, scores.get(label), data)
            if check is not None:
                checks.append((f"Synthetic ground truth ({label}): share of (held-out image, "
                               "category ROI query) pairs whose attention peak lies inside an "
                               "object of the query's category", check))
    if scores:
        sec.tables.append(("Accuracy on held-out images per model (medians over vertices; "
                           "% NC = noise-normalised accuracy)", summary_table(scores)))
    sec.tables.extend(checks)
    if scores:
        sec.figures.append(render(plot_roi_accuracy(scores, "pearson_r"), "encoders-roi-accuracy",
                                  "Median Pearson r per ROI for each model (held-out images).",
                                  svg=svg))
        metric = "noise_normalized"
        have_nc = all(metric in ds["metric"].values and
                      np.isfinite(ds["score"].sel(metric=metric).values).any()
                      for ds in scores.values())
        if have_nc:
            sec.figures.append(render(plot_roi_accuracy(scores, metric),
                                      "encoders-roi-noise-normalised",
                                      "Median noise-normalised accuracy (% of the noise ceiling) "
                                      "per ROI for each model.", svg=svg))
        else:
            sec.missing.append("no noise ceiling in scores.nc: noise-normalised accuracy not drawn; "
                               "the surface shows Pearson r")
            metric = "pearson_r"
        best = _best_model(scores, metric)
        sig = "significant" in scores[best]  # only vertices that pass the FDR-controlled test
        vals, note = surface_values(scores[best], metric, significant_only=sig)
        if vals:
            unit = "% of noise ceiling" if metric == "noise_normalized" else "Pearson r"
            which = ""
            if sig:
                n_sig = int(scores[best]["significant"].sum())
                which = (f" Only the {n_sig} of {scores[best].sizes['vertex']} vertices whose "
                         "held-out r is significant (permutation test, Benjamini-Hochberg q <= "
                         f"{scores[best].attrs.get('fdr_alpha', 0.05):g}) are coloured.")
            sec.figures.append(render(
                plot_surface(vals, title=f"{best}: {unit} per vertex"
                             + (" (significant vertices)" if sig else ""), unit=unit),
                f"encoders-surface-{best}",
                f"{unit} of the {best} model on the inflated fsaverage5 surface (grey: no data; "
                f"colour range = range of the scores).{which}", svg=svg))
        else:
            sec.missing.append(note)
    else:
        sec.missing.append("no scores.nc in any encoder run: accuracy figures not drawn")
    for label, (att, path) in atts.items():
        sec.figures.append(render(plot_attention(att, path), f"encoders-attention-{slug(label)}",
                                  f"Attention of chosen ROI queries of the {label} model over "
                                  "held-out images (brighter = more weight).", svg=svg))
    if not atts and any(r.label == "transformer" for r in runs):
        sec.missing.append("the transformer run has no attention.nc: attention maps not drawn")
    from brainattn.report.analyses import analysis_figures

    figs, prov = analysis_figures(  # layer sweeps, variance partitioning
        runs, svg=svg,
        order=lambda items, kind: _order(items, FAMILY_ORDER if kind == "family" else ROI_ORDER))
    sec.figures.extend(figs)
    sec.provenance.extend(prov)
    if histories:
        sec.figures.append(render(plot_training(histories), "encoders-training",
                                  "Training curves: loss per epoch (solid: train, dashed: "
                                  "validation) and validation mean r.", svg=svg))
    return sec
