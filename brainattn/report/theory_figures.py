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


#: simulation name -> figure function
FIGURES = {
    "semiotics": plot_semiotics,
}
