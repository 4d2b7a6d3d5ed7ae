"""Summary of an Algonauts-layout data set: what ``brainattn data info DIR`` prints."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from brainattn.data._lazy import count_nonfinite
from brainattn.data.algonauts import list_subjects, open_algonauts
from brainattn.data.rois import roi_coord, roi_labels
from brainattn.errors import DataError


def summarize(root: str | os.PathLike, *, check_finite: bool = False) -> dict:
    """Summarise every subject of a data set.

    Returns a dict: ``root``, ``synthetic`` (the ``synth.json`` manifest or None) and
    ``subjects``: a list of dicts with ``subject``, ``n_train``, ``n_test``, ``n_lh``, ``n_rh``,
    ``nc_median`` (percent or None), ``rois`` ({family: {roi: (n_lh, n_rh)}}) and, with
    ``check_finite`` (reads all betas), ``n_nonfinite``.
    """
    root = Path(root)
    if (root / "training_split").is_dir():  # a subject folder
        root, subjects = root.parent, [root.name]
    else:
        subjects = list_subjects(root)
    if not subjects:
        raise DataError(f"{root}: no subjXX folders with a training_split (not an Algonauts layout)")
    manifest = None
    mpath = root / "synth.json"
    if mpath.is_file():
        try:
            manifest = json.loads(mpath.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            manifest = None
    out = []
    for s in subjects:
        ds = open_algonauts(root, s, allow_empty_rois=True)
        hemi = ds["hemisphere"].values
        rec = {
            "subject": s,
            "n_train": int(ds.sizes["image"]),
            "n_test": len(ds.attrs["test_image_paths"]),
            "n_lh": int((hemi == "lh").sum()),
            "n_rh": int((hemi == "rh").sum()),
            "nc_median": float(np.nanmedian(ds["noise_ceiling"].values)) if "noise_ceiling" in ds else None,
            "rois": {},
            "empty_rois": list(ds.attrs.get("empty_rois", [])),
        }
        for fam, names in roi_labels(ds, ds.attrs["roi_families"]).items():
            mapping = ds[roi_coord(fam)].attrs.get("mapping", {})
            order = [v for k, v in sorted(mapping.items()) if k != 0] or sorted(set(names) - {"Unknown"})
            rec["rois"][fam] = {
                r: (int(((names == r) & (hemi == "lh")).sum()), int(((names == r) & (hemi == "rh")).sum()))
                for r in order
            }
        if check_finite:
            parts = ds["betas"].variable._data.array.parts  # the memory maps, not loaded
            rec["n_nonfinite"] = int(sum(count_nonfinite(p).sum() for p in parts))
        out.append(rec)
    return {"root": str(root), "synthetic": manifest, "subjects": out}


def format_summary(summary: dict) -> str:
    """Plain-text tables of :func:`summarize`'s result."""
    lines = [f"data set: {summary['root']}"]
    m = summary.get("synthetic")
    if m:
        lines.append(
            f"synthetic visual cortex (seed {m.get('seed')}, {m.get('image_size')} px images, "
            f"{m.get('mesh')}; ground truth in subjXX/synth_ground_truth.nc)"
        )
    subs = summary["subjects"]
    has_nf = any("n_nonfinite" in s for s in subs)
    head = ["subject", "train images", "test images", "lh vertices", "rh vertices", "NC median %"]
    if has_nf:
        head.append("NaN/Inf")
    rows = []
    for s in subs:
        nc = "-" if s["nc_median"] is None else f"{s['nc_median']:.1f}"
        row = [s["subject"], str(s["n_train"]), str(s["n_test"]), str(s["n_lh"]), str(s["n_rh"]), nc]
        if has_nf:
            row.append(str(s.get("n_nonfinite", "-")))
        rows.append(row)
    lines += ["", *_table(head, rows)]
    fams: list[str] = []
    for s in subs:
        fams += [f for f in s["rois"] if f not in fams]
    if fams:
        head = ["family", "ROI"] + [f"{s['subject']} lh/rh" for s in subs]
        rows = []
        for f in fams:
            rois: list[str] = []
            for s in subs:
                rois += [r for r in s["rois"].get(f, {}) if r not in rois]
            for r in rois:
                cells = []
                for s in subs:
                    c = s["rois"].get(f, {}).get(r)
                    cells.append("-" if c is None else f"{c[0]}/{c[1]}")
                rows.append([f, r, *cells])
        lines += ["", "ROI vertex counts", *_table(head, rows)]
    for s in subs:
        if s.get("empty_rois"):
            lines.append(f"{s['subject']}: empty ROIs (no vertex): {', '.join(s['empty_rois'])}")
    return "\n".join(lines)


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    w = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:<{x}}}" for x in w)
    return [fmt.format(*head), fmt.format(*("-" * x for x in w)), *(fmt.format(*r) for r in rows)]
