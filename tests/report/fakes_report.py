"""Small fake-but-valid result folders in the documented formats, with known numbers.

``make_demo(root)`` writes a demo folder: ``encoders/{transformer,ridge}`` (scores.nc,
attention.nc for the transformer, history.csv, config.json), ``psychophysics`` (scale.nc,
summary.txt) and ``theory/fakesim`` (results.nc of a fake simulation whose figure and summary
the tests register; ``fake_simulation``). Every number drawn is known to the tests.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import xarray as xr  # noqa: E402

from brainattn.io import save_netcdf  # noqa: E402

os.environ.setdefault("BRAINATTN_PROGRESS", "0")

METRICS = ["pearson_r", "r2", "noise_normalized"]
ROIS = {"prf-visualrois": ["V1v", "V2v"], "floc-faces": ["FFA-1"]}
N_PER_HEMI = 240
N_LEVELS = 11
GRID = 8


def make_scores(seed: int, offset: float):
    """scores.nc as ``brainattn.encoders.metrics.score_table`` writes it (+ fsaverage_index)."""
    rng = np.random.default_rng(seed)
    v = 2 * N_PER_HEMI
    hemi = np.array(["lh"] * N_PER_HEMI + ["rh"] * N_PER_HEMI)
    fs_index = np.concatenate([rng.choice(10242, N_PER_HEMI, replace=False) for _ in range(2)])
    r = np.clip(rng.uniform(-0.1, 0.8, v) + offset, -0.2, 0.95)
    nc = rng.uniform(40, 80, v)
    nn = np.minimum(100 * np.clip(r, 0, None) ** 2 / (nc / 100), 100)  # Algonauts score
    r[5] = np.nan  # a constant vertex: NaN, never drawn as 0
    nn[5] = np.nan
    table = np.stack([r, r**2, nn], axis=1)
    labels = {}
    for fam, names in ROIS.items():
        lab = np.array(["Unknown"] * v, dtype=object)
        k = 0
        for n in names:
            for h in range(2):
                start = h * N_PER_HEMI + k * 60
                lab[start:start + 60] = n
            k += 1
        labels[fam] = lab.astype(str)
    ds = xr.Dataset(
        {"score": (("vertex", "metric"), table), "noise_ceiling": ("vertex", nc)},
        coords={"vertex": np.arange(v), "metric": METRICS, "hemisphere": ("vertex", hemi),
                "hemi_vertex": ("vertex", np.tile(np.arange(N_PER_HEMI), 2)),
                "fsaverage_index": ("vertex", fs_index),
                **{f"roi_{f}": ("vertex", lab) for f, lab in labels.items()}},
        attrs={"fsaverage_mesh": "fsaverage5"},
    )
    rows, fam_of, name_of, cnt = [], [], [], []
    for fam, names in ROIS.items():
        for n in names:
            sel = labels[fam] == n
            rows.append([float(np.nanmedian(table[sel, i])) for i in range(3)])
            fam_of.append(fam)
            name_of.append(n)
            cnt.append(int(sel.sum()))
    ds["roi_median"] = (("roi", "metric"), np.array(rows))
    ds = ds.assign_coords(roi=("roi", [f"{f}/{n}" for f, n in zip(fam_of, name_of, strict=False)]),
                          roi_family=("roi", fam_of), roi_name=("roi", name_of),
                          roi_n_vertices=("roi", cnt))
    return ds


def make_attention(seed: int = 0):
    """attention.nc as ``brainattn fit`` writes it (3 images x 4 queries, 8x8 token grid, a
    planted peak per map), plus the images as ``pixels``."""
    rng = np.random.default_rng(seed)
    n_img, queries = 3, ["lh:V1v", "lh:FFA-1", "rh:FFA-1", "lh:other"]
    att = rng.uniform(0, 0.2, (n_img, len(queries), GRID, GRID))
    peaks = {}
    for i in range(n_img):
        for q in range(len(queries)):
            y, x = rng.integers(0, GRID, 2)
            att[i, q, y, x] = 5.0
            peaks[(i, q)] = (int(y), int(x))
    att /= att.sum(axis=(2, 3), keepdims=True)
    px = rng.integers(0, 255, (n_img, 32, 32, 3)).astype(np.uint8)
    ds = xr.Dataset(
        {"attention": (("image", "query", "row", "col"), att),
         "pixels": (("image", "y", "x", "channel"), px)},
        coords={"image": np.arange(n_img), "image_id": ("image", [f"img{i:03d}" for i in range(n_img)]),
                "query": queries, "row": np.arange(GRID), "col": np.arange(GRID)},
    )
    return ds, peaks


def make_scale(n_levels: int = N_LEVELS, seed: int = 0):
    """scale.nc in the layout of ``brainattn.psychophysics.result`` (triads, glm convention)."""
    rng = np.random.default_rng(seed)
    stim = np.linspace(1, 5, n_levels)
    truth = np.log(stim) / np.log(5) * 4.0
    est = truth + np.r_[0, rng.normal(0, 0.1, n_levels - 1)]
    se = np.r_[0, np.full(n_levels - 1, 0.15)]
    scale = np.stack([est, se, est - 1.96 * se, est + 1.96 * se], axis=1)
    triads = [(a, b, c) for a in range(1, n_levels + 1) for b in range(a + 1, n_levels + 1)
              for c in range(b + 1, n_levels + 1) if b - a <= 3 and c - b <= 3]
    stim_tab = np.array(triads * 2)
    n = len(stim_tab)
    resp = rng.integers(0, 2, n)
    res = rng.normal(0, 1, n)
    env = np.stack([np.sort(res) - 0.5, np.sort(res), np.sort(res) + 0.5], axis=1)
    ds = xr.Dataset(
        {"stimulus": ("level", stim),
         "scale": (("level", "stat"), scale),
         "scale_normalized": (("level", "stat"), scale / est[-1]),
         "sigma": ("stat", [1.0, 0.0, 1.0, 1.0]),
         "predicted_scale": ("level", np.log(stim) / np.log(5)),
         "deviance_residual": ("trial", res),
         "residual_sorted": ("rank", np.sort(res)),
         "envelope": (("rank", "bound"), env),
         "resp": ("trial", resp.astype(np.int8)),
         "S": (("trial", "position"), stim_tab.astype(np.int32))},
        coords={"level": np.arange(1, n_levels + 1), "stat": ["estimate", "se", "lower", "upper"],
                "trial": np.arange(n), "rank": np.arange(n), "position": ["S1", "S2", "S3"],
                "bound": ["lower", "median", "upper"]},
        attrs={"method": "glm", "link": "probit", "design": "triad", "n_trials": n,
               "n_levels": n_levels, "runs_p": 0.42, "runs_observed": 120,
               "envelope_outside": 0.0, "sigma_estimate": 1.0, "area_match": 0.93},
    )
    return ds


def make_theory():
    x = np.arange(1, 9)
    return xr.Dataset(
        {"simulated": ("n", 10.0 / x + 0.1), "predicted": ("n", 10.0 / x)},
        coords={"n": x}, attrs={"simulation": "fakesim", "config": {"trials": 3}},
    )


def fake_simulation():
    """The figure and summary functions of the fake simulation ``fakesim``."""

    def plot(ds):
        import matplotlib.pyplot as plt

        assert isinstance(ds.attrs["config"], dict)  # JSON attrs decoded for the figure
        plt.rcParams["axes.facecolor"] = "#ff0000"  # a figure restyling matplotlib globally
        fig, ax = plt.subplots()
        (ln,) = ax.plot(ds["n"], ds["simulated"], "o")
        ln.set_gid("fakesim-simulated")
        ax.plot(ds["n"], ds["predicted"], "-")
        return fig

    def summary(ds):
        return pd.DataFrame({"n": ds["n"].values, "simulated": ds["simulated"].values})

    return plot, summary


SEED = 7


def make_demo(root: Path, *, parts=("encoders", "psychophysics", "theory")) -> Path:
    root = Path(root)
    if "encoders" in parts:
        for model, off in (("transformer", 0.1), ("ridge", 0.0)):
            d = root / "encoders" / model
            d.mkdir(parents=True)
            save_netcdf(make_scores(1 if model == "ridge" else 2, off), d / "scores.nc", seed=SEED)
            (d / "config.json").write_text(json.dumps({"model": model, "seed": SEED}))
            pd.DataFrame({"epoch": [0, 1, 2], "train_loss": [1.0, 0.8, 0.7],
                          "val_loss": [1.1, 0.9, 0.85],
                          "val_mean_r": [0.2, 0.3, 0.35]}).to_csv(d / "history.csv", index=False)
        att, _ = make_attention()
        save_netcdf(att, root / "encoders" / "transformer" / "attention.nc", seed=SEED)
    if "psychophysics" in parts:
        d = root / "psychophysics"
        d.mkdir(parents=True)
        save_netcdf(make_scale(), d / "scale.nc", seed=SEED)
        (d / "summary.txt").write_text("MLDS fit: 11 levels, sigma 1\n")
    if "theory" in parts:
        d = root / "theory" / "fakesim"
        d.mkdir(parents=True)
        save_netcdf(make_theory(), d / "results.nc", seed=SEED)
        (d / "config.json").write_text(json.dumps({"trials": 3}))
    return root
