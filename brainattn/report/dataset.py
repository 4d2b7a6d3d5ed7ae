"""Data section: what the encoders were fitted to (subjects, images, ROIs, noise ceiling).

Opens each subject of an Algonauts-layout folder with :func:`brainattn.data.open_algonauts`
(memory-mapped; only the coordinates and the noise ceiling are read), tabulates it, shows a few
training images and the noise ceiling on the fsaverage5 surface when the data set has one.
"""

from __future__ import annotations

import numpy as np

from brainattn.report.discovery import Run
from brainattn.report.figures import Section, render

TEXT = (
    "The data set the encoders were fitted to: images with one fMRI response per vertex of the "
    "fsaverage cortical surface, vertices labelled by visual ROI. The noise ceiling (percent of "
    "the response variance that repeats of the same image can explain) bounds the accuracy any "
    "model can reach."
)


def subject_table(ds):
    """One row per ROI family/ROI with its vertex count, plus a row of totals."""
    import pandas as pd

    from brainattn.data.rois import roi_families, roi_labels

    rows = []
    have = roi_families(ds)
    wanted = [f for f in ds.attrs.get("roi_families", []) or [] if f in have]
    for fam, labels in roi_labels(ds, wanted).items():
        for name in dict.fromkeys(labels):
            if name == "Unknown":
                continue
            rows.append({"family": fam, "roi": name, "vertices": int((labels == name).sum())})
    return pd.DataFrame(rows, columns=["family", "roi", "vertices"])


def plot_examples(ds, n: int = 6):
    """The first ``n`` training images."""
    import matplotlib.pyplot as plt
    from PIL import Image

    paths = [str(p) for p in ds["image_path"].values[:n]] if "image_path" in ds.coords else []
    fig, axes = plt.subplots(1, max(1, len(paths)), figsize=(1.8 * max(1, len(paths)), 2.0),
                             squeeze=False, layout="constrained")
    for ax, p in zip(axes[0], paths, strict=False):
        with Image.open(p) as im:
            ax.imshow(np.asarray(im.convert("RGB")))
        ax.set_title(p.rsplit("/", 1)[-1][:18], fontsize=7)
    for ax in axes.flat:
        ax.set_axis_off()
    return fig


def build_section(runs: list[Run], missing: list[str] | None = None, *, svg: bool = True) -> Section:
    from brainattn.report.encoders import plot_surface

    sec = Section("data", "Data", TEXT, missing=list(missing or []), tables_first=True)
    try:
        from brainattn.data import list_subjects, open_algonauts
    except ImportError as exc:  # pragma: no cover - the data layer is part of the package
        sec.missing.append(f"brainattn.data is not importable ({exc}); data section skipped")
        return sec
    import pandas as pd

    overview = []
    for run in runs:
        subjects = list_subjects(run.path) or [run.path.name]
        root = run.path if list_subjects(run.path) else run.path.parent
        for i, subj in enumerate(subjects):
            try:
                ds = open_algonauts(root, subj)
            except Exception as exc:
                sec.missing.append(f"{run.path / subj}: could not be opened ({exc})")
                continue
            hemi = ds["hemisphere"].values.astype(str)
            nc = ds["noise_ceiling"].values if "noise_ceiling" in ds else None
            overview.append({
                "subject": subj, "images (train)": int(ds.sizes["image"]),
                "images (test)": len(ds.attrs.get("test_image_paths", []) or []),
                "vertices lh": int((hemi == "lh").sum()), "vertices rh": int((hemi == "rh").sum()),
                "noise ceiling median (%)": float(np.nanmedian(nc)) if nc is not None else np.nan,
            })
            if i > 0:
                continue
            t = subject_table(ds)
            if len(t):
                sec.tables.append((f"ROIs of {subj} (vertices per ROI, both hemispheres)", t))
            try:
                sec.figures.append(render(plot_examples(ds), f"data-images-{subj}",
                                          f"The first training images of {subj}.", svg=svg))
            except OSError as exc:
                sec.missing.append(f"images of {subj} could not be read ({exc})")
            if nc is not None and "fsaverage_index" in ds.coords:
                idx = ds["fsaverage_index"].values.astype(np.int64)
                vals = {}
                for h in ("lh", "rh"):
                    sel = (hemi == h) & (idx < 10242)
                    if sel.any():
                        full = np.full(10242, np.nan)
                        full[idx[sel]] = np.asarray(nc, dtype=float)[sel]
                        vals[h] = full
                if vals:
                    sec.figures.append(render(
                        plot_surface(vals, title=f"{subj}: noise ceiling", unit="noise ceiling (%)",
                                     cmap="viridis"),
                        f"data-noise-ceiling-{subj}",
                        "Noise ceiling per vertex on the inflated fsaverage5 surface.", svg=svg))
    if overview:
        sec.tables.insert(0, ("Subjects", pd.DataFrame(overview)))
    return sec
