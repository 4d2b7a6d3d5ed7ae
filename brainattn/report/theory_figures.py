"""The figures of the theory simulations, one function each, and the registry that names them.

:data:`FIGURES` maps a simulation name (``attrs["simulation"]`` of its ``results.nc``) to the
function that draws its Dataset; ``brainattn simulate`` (``figure.png``) and the report's theory
section both draw through it. Each function takes the Dataset ``simulate`` returned (or read
back from ``results.nc``) and returns a matplotlib figure.
"""

from __future__ import annotations

import numpy as np


def plot_semiotics(ds):
    """Figure: accuracy vs R per method, paired differences with intervals, example images."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    methods = [str(m) for m in ds["perception"].values]
    contrasts = [str(c) for c in ds["contrast"].values]
    acc = ds["accuracy"].to_dataframe().reset_index()
    diff = ds["diff"].to_dataframe().reset_index()
    Rs = [int(r) for r in ds["R"].values]
    fig = plt.figure(figsize=(13, 7.5), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[1.1, 1])
    ax1, ax2, ax3 = top.subplots(1, 3)
    sns.pointplot(data=acc, x="R", y="accuracy", hue="perception", hue_order=methods,
                  errorbar=("ci", 95), dodge=0.3, ax=ax1)
    ax1.set(xlabel="training images per class (R)", ylabel="test accuracy", title="MLP accuracy")
    sns.stripplot(data=diff, x="R", y="diff", hue="contrast", hue_order=contrasts,
                  palette=sns.color_palette()[1:3], dodge=True, alpha=0.4, ax=ax2, legend=False)
    pos = np.arange(len(Rs))
    for c, (name, color) in enumerate(zip(contrasts, sns.color_palette()[1:3], strict=True)):
        e = ds.sel(contrast=name)
        off = -0.2 if c == 0 else 0.2
        ax2.errorbar(pos + off, e["mean_diff"], yerr=[e["mean_diff"] - e["ci_low"], e["ci_high"] - e["mean_diff"]],
                     fmt="o", color=color, capsize=3, label=name)
    ax2.axhline(0, color="k", lw=0.8)
    ax2.set(xlabel="R", ylabel="accuracy difference (paired)", title="vs baseline (bootstrap CI)")
    ax2.legend(fontsize=8)
    conv = ds[["vanilla_converged", "agents_converged"]].to_dataframe().reset_index().melt(
        id_vars=["seed", "R"], var_name="loop", value_name="fraction converged")
    sns.pointplot(data=conv, x="R", y="fraction converged", hue="loop", dodge=0.3, ax=ax3)
    ax3.set(ylim=(0, 1.05), title="attractor reached (test images)")
    # example images for the smallest and largest R: raw / vanilla / stochastic
    pick = sorted({0, len(Rs) - 1})
    axes = bottom.subplots(3 * len(pick), 10, squeeze=False)
    for p, j in enumerate(pick):
        for v, view in enumerate(methods):
            for k in range(10):
                ax = axes[3 * p + v, k]
                ax.imshow(ds["examples"].values[j, v, k], cmap="gray", vmin=0, vmax=1)
                ax.set_xticks([])
                ax.set_yticks([])
                if k == 0:
                    ax.set_ylabel(f"R={Rs[j]}\n{'raw' if view == 'baseline' else view}", fontsize=7)
    fig.suptitle("Semiotic perceptualized classifier (Kupeev & Nitzany)")
    return fig


def plot_pavlovian(ds):
    """Six panels: SNR, capacity vs d_k, cosine; learning rules, error propagation, top-1."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="paper")
    fig, axes = plt.subplots(2, 3, figsize=(16, 8.5))
    pal = sns.color_palette("viridis", ds.sizes["d_k"])
    for ax, var, title in ((axes[0, 2], "cosine", "retrieval cosine vs 1/sqrt(1 + (N-1)/d_k)"),
                           (axes[1, 2], "top1", "top-1 identification (lines: approximation)")):
        for i, d in enumerate(ds["d_k"].values):
            sel = ds.sel(d_k=d)
            n = sel["n_pairs"].values
            ax.plot(n, sel[f"{var}_sim"].values, "o", color=pal[i], ms=4, label=f"d_k={d}")
            ax.plot(n, sel[f"{var}_theory"].values, "-", color=pal[i], lw=1)
        ax.set(xscale="log", xlabel="stored pairs N", ylabel=var, title=title, ylim=(-0.02, 1.02))
        ax.legend(fontsize=7)

    ax = axes[0, 0]
    for i, d in enumerate(ds["d_k"].values):
        sel = ds.sel(d_k=d)
        n = sel["n_pairs"].values
        ax.loglog(n, sel["snr_sim"].values, "o", color=pal[i], ms=4, label=f"d_k={d}")
        ax.loglog(n, sel["snr_theory"].values, "-", color=pal[i], lw=1)
    ax.set(xlabel="stored pairs N", ylabel="SNR", title="Hebbian SNR (dots) vs d_k/(N-1) (lines)")
    ax.legend(fontsize=7)

    ax = axes[0, 1]
    dks = ds["d_k"].values
    ax.loglog(dks, ds["capacity_avg_sim"], "o", color="C0",
              label=f"average, eps={ds.attrs['error_rate']:g} "
                    f"(slope {float(ds['exponent_avg_sim']):.2f})")
    ax.loglog(dks, ds["capacity_avg_theory"], "-", color="C0", lw=1)
    ax.loglog(dks, ds["capacity_wc_sim"], "s", color="C3",
              label=f"error-free (slope {float(ds['exponent_wc_sim']):.2f})")
    ax.loglog(dks, ds["capacity_wc_theory"], "-", color="C3", lw=1)
    ax.loglog(dks, ds["capacity_wc_ev_theory"], "--", color="C3", lw=1)
    ax.set(xlabel="d_k", ylabel="capacity (pairs)",
           title="capacity: O(d_k) vs O(sqrt d_k) (lines: theory, dashed: extreme value)")
    ax.legend(fontsize=7)

    ax = axes[1, 0]
    n = ds["rules_n"].values
    for i, r in enumerate(ds["rule"].values):
        sel = ds.sel(rule=r)
        ax.plot(n, sel["rule_bit_error_sim"], "o-", color=f"C{i}", ms=4, lw=1, label=r)
        ax.plot(n, sel["rule_bit_error_theory"], "--", color=f"C{i}", lw=1)
    ax.axvline(ds.attrs["rules_d_k"], color="k", lw=0.5)
    ax.set(xscale="log", xlabel="stored pairs N", ylabel="bit error",
           title=f"learning rules, d_k={ds.attrs['rules_d_k']} (dashed: theory)")
    ax.legend(fontsize=7)

    ax = axes[1, 1]
    pal = sns.color_palette("rocket", ds.sizes["heads"])
    for i, h in enumerate(ds["heads"].values):
        sel = ds.sel(heads=h)
        ax.semilogy(ds["layer"], sel["error_power_sim"], "o", color=pal[i], ms=4, label=f"H={h}")
        ax.semilogy(ds["layer"], sel["error_power_theory"], "-", color=pal[i], lw=1)
    ax.set(xlabel="layer", ylabel="error power E||v_hat - v||^2",
           title=f"propagation, d_k={ds.attrs['prop_d_k']}, N={ds.attrs['prop_n']}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_consciousness(ds):
    """Three panels: errors in/out of distribution per model, selection vs k, selection frequency
    of parents / other variables / distractors."""
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="paper")
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    rows = []
    for m in ds["model"].values:
        for s in ds["seed"].values:
            for tag, name in (("id", "in distribution"), ("ood", "shifted distractors")):
                rows.append({"model": str(m), "seed": int(s), "test": name,
                             "error": float(ds[f"error_{tag}"].sel(model=m, seed=s))})
    df = pd.DataFrame(rows)
    sns.pointplot(data=df, x="model", y="error", hue="test", ax=axes[0], dodge=0.3,
                  errorbar=("se", 2), linestyles="none")
    axes[0].axhline(float(ds["error_oracle"].mean()), color="k", lw=0.8, ls="--", label="noise floor")
    axes[0].set(yscale="log", ylabel="relative MSE", title="prediction error (mean +- 2 s.e. over seeds)")
    axes[0].legend(fontsize=7)

    sel_rows = []
    for m in ds["model"].values:
        if m == "dense":
            continue
        for s in ds["seed"].values:
            for q in ("exact", "precision", "recall"):
                sel_rows.append({"k": int(ds["k"].sel(model=m)), "measure": q,
                                 "value": float(ds[f"selection_{q}_id"].sel(model=m, seed=s))})
    sns.lineplot(data=pd.DataFrame(sel_rows), x="k", y="value", hue="measure", marker="o",
                 ax=axes[1], errorbar=("se", 2))
    axes[1].axvline(ds.attrs["factor_size"], color="k", lw=0.5, ls=":")
    axes[1].set(ylim=(-0.02, 1.02), title="recovered selection vs true parents")

    cat_rows = []
    tp = ds["true_parent"].values
    for m in ds["model"].values:
        f = ds["selection_freq"].sel(model=m).values  # (seed, variable)
        for s in range(f.shape[0]):
            cat_rows.append({"model": str(m), "element": "parents", "freq": f[s][tp[s]].mean()})
            cat_rows.append({"model": str(m), "element": "other variables",
                             "freq": f[s][~tp[s]].mean()})
            cat_rows.append({"model": str(m), "element": "distractors",
                             "freq": float(ds["distractor_freq"].sel(model=m).values[s])})
    sns.barplot(data=pd.DataFrame(cat_rows), x="model", y="freq", hue="element", ax=axes[2],
                errorbar=("se", 2))
    axes[2].set(ylabel="fraction of cases selected", title="what enters the conscious state")
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    return fig


#: simulation name -> figure function
FIGURES = {
    "pavlovian": plot_pavlovian,
    "semiotics": plot_semiotics,
    "consciousness": plot_consciousness,
}
