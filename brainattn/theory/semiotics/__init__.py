"""Semiotic "perceptualized" networks (Kupeev & Nitzany, arXiv 2310.05212).

An agent *observes* an image by encoding it (``E``) and *sees* it by decoding the code (``D``).
Perception iterates ``x <- D(E(x))`` towards an attractor of the autoencoder trained on the
agent's (small) experience. The *perceptualized* classifier is an ordinary classifier trained
and tested on perceived images instead of raw ones; the paper reports that, with a stochastic
loop, it beats the same classifier on raw images when few images per class are available.

Pieces, usable on their own (all importable from ``brainattn.theory.semiotics``):

- :mod:`~brainattn.theory.semiotics.data`: :func:`load_digits_pool` (scikit-learn's 8x8
  digits, shipped), :func:`read_idx` / :func:`write_idx` / :func:`load_mnist` (MNIST IDX files
  the user already has; never downloads), :func:`restricted_split` (R images per class for
  training, the rest for testing);
- :mod:`~brainattn.theory.semiotics.networks`: :class:`CosMinusX` (the published activation
  ``cos(x) - x``), :class:`StridedConv`, :class:`ConvEncoder`, :class:`ConvDecoder`,
  :func:`build_autoencoder`, :class:`MLP`;
- :mod:`~brainattn.theory.semiotics.training`: :func:`fit_stacked` (many models at once,
  ``torch.func.vmap`` over stacked parameters: same optimisation, fewer small operations),
  :func:`train_autoencoder` / :func:`train_autoencoders`, :func:`train_mlp` /
  :func:`train_mlps`, :func:`classifier_accuracy` (same architecture, same initialisation and
  schedule for raw and perceived inputs);
- :mod:`~brainattn.theory.semiotics.loops`: :func:`vanilla_loop` (deterministic iteration to
  an attractor, with convergence statistics), :func:`augment` and :func:`stochastic_loop`
  (augmentation of strength ``decay**-n`` at step ``n``, many copies averaged: the *perceived*
  image), :func:`two_agent_loop` (agent A's "seen" is agent B's "observed");
- :mod:`~brainattn.theory.semiotics.stats`: :func:`paired_comparison` (paired differences over
  seeds, paired t-test, Wilcoxon signed-rank test, percentile-bootstrap interval);
- :mod:`~brainattn.theory.semiotics.experiment`: :func:`validate_config`, :func:`run_R`,
  :func:`simulate`, :func:`summary`; the presets :data:`QUICK`, :data:`FULL` and their checks
  live in :mod:`brainattn.theory._config`, the figure :func:`plot` in
  :mod:`brainattn.report.theory_figures`.

On 8x8 images the convolutions run as one matrix product with a dense operator gathered from
the kernel (:class:`StridedConv`), much faster on a CPU than PyTorch's convolutions at this
size; tests check it against ``torch.nn.functional.conv2d`` / ``conv_transpose2d``.

Architecture scaled to small images. The published autoencoder has 5 stride-2 3x3 convolutions
of 256 channels on 28x28 MNIST (28 -> 14 -> 7 -> 4 -> 2 -> 1) and a mirrored decoder. Here the
number of stride-2 layers is ``ceil(log2(size))`` so the code is always 1x1 spatially: 3 layers
for the 8x8 digits (8 -> 4 -> 2 -> 1), 5 layers for 28x28 MNIST (the published net). Every
layer is followed by ``cos(x) - x`` except the decoder's last, followed by a sigmoid so that
images stay in [0, 1]. The width is the ``channels`` config key (256 published and in
:data:`FULL`; 32 in :data:`QUICK` to fit a 2-core CPU). The classifier is scaled from the
published 784-500-100-10 MLP to ``n_pixels``-``mlp_hidden``-10 (64-128-64-10 for digits).
"""

from brainattn.report.theory_figures import plot_semiotics as plot
from brainattn.theory._config import SEMIOTICS_FULL as FULL
from brainattn.theory._config import SEMIOTICS_QUICK as QUICK
from brainattn.theory.semiotics.data import (
    load_dataset,
    load_digits_pool,
    load_mnist,
    read_idx,
    restricted_split,
    write_idx,
)
from brainattn.theory.semiotics.experiment import (
    CONTRASTS,
    METHODS,
    run_R,
    simulate,
    summary,
    validate_config,
)
from brainattn.theory.semiotics.loops import (
    AugmentParams,
    LoopResult,
    augment,
    stochastic_loop,
    two_agent_loop,
    vanilla_loop,
)
from brainattn.theory.semiotics.networks import (
    MLP,
    ConvDecoder,
    ConvEncoder,
    CosMinusX,
    StridedConv,
    build_autoencoder,
)
from brainattn.theory.semiotics.stats import paired_comparison
from brainattn.theory.semiotics.training import (
    classifier_accuracy,
    fit_stacked,
    train_autoencoder,
    train_autoencoders,
    train_mlp,
    train_mlps,
)

__all__ = [
    "CONTRASTS",
    "METHODS",
    "QUICK",
    "FULL",
    "AugmentParams",
    "CosMinusX",
    "ConvEncoder",
    "ConvDecoder",
    "LoopResult",
    "MLP",
    "StridedConv",
    "augment",
    "build_autoencoder",
    "classifier_accuracy",
    "load_dataset",
    "load_digits_pool",
    "load_mnist",
    "paired_comparison",
    "run_R",
    "plot",
    "read_idx",
    "restricted_split",
    "simulate",
    "stochastic_loop",
    "summary",
    "train_autoencoder",
    "train_autoencoders",
    "fit_stacked",
    "train_mlp",
    "train_mlps",
    "two_agent_loop",
    "vanilla_loop",
    "validate_config",
    "write_idx",
]
