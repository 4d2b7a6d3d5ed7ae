r"""The consciousness prior as a reusable attention bottleneck, and a sparse factor-graph test bed.

Bengio's consciousness prior (arXiv 1709.08568): a large representation state ``h`` (a set
of elements) is read by an attention mechanism that lets only a few elements into a small
*conscious state* ``c``; a verifier/predictor uses ``c`` to predict a future abstract state.
The prior pays off when the world is a *sparse factor graph*: each high-level variable depends
on few others, so a handful of selected elements suffices to predict it.

Pieces
------
:class:`ConsciousnessBottleneck` (``torch.nn.Module``)
    ``n_queries`` learned queries score every element (scaled dot product); each query lets
    only its top-``k`` elements into the conscious state. ``mode``:

    - ``"straight_through"``: the forward pass uses hard 0/1 weights on the top-k elements, the
      backward pass the gradient of the softmax over all elements (straight-through
      estimator), so elements that are *not* selected still learn whether they should be;
    - ``"soft"``: a softmax restricted to the top-k elements (a sparse relaxation,
      differentiable within the selection);
    - ``"dense"``: ordinary softmax attention over all elements (the baseline; same
      parameters, no bottleneck), computed with :func:`brainattn.kernels.attention` when it
      is importable, else torch's scaled-dot-product attention.

    The conscious state is, per query, the weighted sum of the selected elements' value
    projections (width ``d_model``) read out to ``d_state`` dims, ``(B, n_queries, d_state)``; an MLP predictor (the verifier) maps it to the
    predicted future value(s).

:class:`FactorGraphWorld`
    ``n`` scalar variables; variable ``i``'s next value follows its own factor over 2-3
    parent variables, :math:`x_i' = \sum_{p \in P(i)} w_{ip} x_p + \sigma\varepsilon` with
    :math:`|w| \in [0.5, 1.5]` and random signs. The target variable's factor has exactly
    ``factor_size`` parents. States :math:`x \sim N(0, I)` are observed as a *set* of elements,
    one per variable, ``[e_i, x_i e_i]`` (identity embedding ``e_i`` and the value bound to
    it), shuffled together with distractor elements of other identities. In distribution the
    distractors' identities come from a training pool and their values are ``N(0, 1)``; out of
    distribution their values are shifted,
    ``N(ood_shift, ood_scale^2)`` (``ood_novel_types``: their identities are also new).

The task: predict the target's next value. Errors are relative mean squared errors
(MSE / Var(target)); the analytic floor is the noise, :math:`\sigma^2 / (\sum_p w_p^2 + \sigma^2)`.
The recovered selection (the variables of the elements that enter the conscious state) is
compared with the true parents of the target: *exact* when the selected set equals the parent
set, *precision* = parents among the selected / k, *recall* = parents selected / factor size.
For dense attention the "selection" is its ``factor_size`` largest weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from brainattn.errors import ConfigError, ShapeError
from brainattn.report.theory_figures import plot_consciousness as plot
from brainattn.theory._config import CONSCIOUSNESS_FULL as FULL
from brainattn.theory._config import CONSCIOUSNESS_QUICK as QUICK
from brainattn.theory._config import validate_consciousness as validate_config

MODES = ("straight_through", "soft", "dense")

# --------------------------------------------------------------------------------------------
# the bottleneck module


@dataclass
class BottleneckOutput:
    """What :meth:`ConsciousnessBottleneck.forward` returns.

    prediction ``(B, d_out)``; state ``(B, n_queries, d_state)`` (the conscious state);
    weights ``(B, n_queries, n_elements)`` (forward weights: 0/1 for straight-through);
    selected ``(B, n_queries, k)`` indices of the elements let in (top-k scores; for dense the
    k largest weights); scores ``(B, n_queries, n_elements)`` attention logits.
    """

    prediction: torch.Tensor
    state: torch.Tensor
    weights: torch.Tensor
    selected: torch.Tensor
    scores: torch.Tensor


class ConsciousnessBottleneck(nn.Module):
    """Learned queries select the top-k of a set of elements into a small conscious state.

    Parameters
    ----------
    d_in : width of each element.
    k : elements let in per query (``1 <= k``; at most the set size at call time).
    n_queries : learned queries (slots of the conscious state).
    d_model : width of queries and keys.
    d_state : width of each slot of the conscious state.
    hidden : width of the predictor MLP.
    d_out : predicted future values.
    mode : ``"straight_through"``, ``"soft"`` or ``"dense"`` (see the module docstring).
    temperature : divides the attention logits.
    key_dims : when given, keys are computed from the first ``key_dims`` features of each
        element only (e.g. its identity: *which* element, not *what it says*); values always
        see all features. ``None``: keys from all features.
    """

    def __init__(
        self,
        d_in: int,
        *,
        k: int = 2,
        n_queries: int = 1,
        d_model: int = 32,
        d_state: int = 16,
        hidden: int = 64,
        d_out: int = 1,
        mode: str = "straight_through",
        temperature: float = 1.0,
        key_dims: int | None = None,
    ):
        super().__init__()
        if mode not in MODES:
            raise ConfigError(f"mode: {mode!r} is not one of {', '.join(MODES)}")
        for name, v in (("d_in", d_in), ("k", k), ("n_queries", n_queries), ("d_model", d_model),
                        ("d_state", d_state), ("hidden", hidden), ("d_out", d_out)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name}: expected an integer >= 1, got {v!r}")
        if not temperature > 0:
            raise ConfigError(f"temperature: expected > 0, got {temperature!r}")
        if key_dims is not None and not (isinstance(key_dims, int) and 1 <= key_dims <= d_in):
            raise ConfigError(f"key_dims: expected an integer in [1, d_in={d_in}], got {key_dims!r}")
        self.key_dims = key_dims
        self.k, self.mode, self.temperature = k, mode, float(temperature)
        self.d_model = d_model
        self.queries = nn.Parameter(torch.randn(n_queries, d_model) / math.sqrt(d_model))
        self.key = nn.Linear(key_dims or d_in, d_model)
        self.value = nn.Linear(d_in, d_model)
        # the slot readout is linear, so it commutes with the weighted sum over elements
        self.readout = nn.Linear(d_model, d_state, bias=False)
        self.predictor = nn.Sequential(
            nn.Linear(n_queries * d_state, hidden), nn.GELU(), nn.Linear(hidden, d_out),
        )

    def attend(self, elements: torch.Tensor, relax: float = 0.0):
        """Scores, forward weights, selected indices and the conscious state.

        ``elements`` ``(B, n, d_in)`` -> (state ``(B, Q, d_state)``, weights ``(B, Q, n)``,
        selected ``(B, Q, k)``, scores ``(B, Q, n)``). ``relax`` in [0, 1] blends the top-k
        weights with the full softmax, ``(1 - relax) top-k + relax softmax``: training anneals
        it from 1 to 0 so that the predictor first sees every element and the hard selection
        does not lock onto the first elements it happens to pick.
        """
        if elements.dim() != 3:
            raise ShapeError(f"elements: expected (batch, n_elements, d_in), got {tuple(elements.shape)}")
        n = elements.shape[1]
        if self.mode != "dense" and self.k > n:
            raise ConfigError(f"k: {self.k} is larger than the number of elements ({n})")
        key_in = elements if self.key_dims is None else elements[..., : self.key_dims]
        keys = self.key(key_in)  # (B, n, d_model)
        vals = self.value(elements)  # (B, n, d_model)
        scale = 1.0 / (math.sqrt(self.d_model) * self.temperature)
        scores = torch.einsum("qd,bnd->bqn", self.queries, keys) * scale
        soft = torch.softmax(scores, dim=-1)
        kk = min(self.k, n)
        selected = scores.topk(kk, dim=-1).indices
        if self.mode == "dense":
            from brainattn.theory.pavlovian.memory import _attention_fn

            q = self.queries.expand(elements.shape[0], -1, -1)
            pooled = _attention_fn()(q[:, None], keys[:, None], vals[:, None], scale=scale)[:, 0]
            return self.readout(pooled), soft, selected, scores
        mask = torch.zeros_like(scores).scatter_(-1, selected, 1.0)
        if self.mode == "straight_through":
            weights = mask + (soft - soft.detach())  # exactly 0/1 forward, softmax backward
        else:  # soft: softmax restricted to the top-k
            weights = torch.softmax(scores.masked_fill(mask == 0, float("-inf")), dim=-1)
        if relax > 0:
            weights = (1.0 - relax) * weights + relax * soft
        return self.readout(weights @ vals), weights, selected, scores

    def verify(self, elements: torch.Tensor, future: torch.Tensor) -> torch.Tensor:
        """Verifier score of a candidate future: ``-||prediction - future||^2`` per item, ``(B,)``.

        ``future`` ``(B, d_out)`` or ``(B,)``; higher means the conscious state predicts it better.
        """
        pred = self(elements).prediction
        future = future.reshape(pred.shape)
        return -((pred - future) ** 2).sum(-1)

    def forward(self, elements: torch.Tensor, relax: float = 0.0) -> BottleneckOutput:
        """``elements`` ``(B, n, d_in)`` -> :class:`BottleneckOutput` (``relax``: see :meth:`attend`)."""
        state, weights, selected, scores = self.attend(elements, relax)
        pred = self.predictor(state.flatten(1))
        return BottleneckOutput(pred, state, weights, selected, scores)


# --------------------------------------------------------------------------------------------
# the sparse factor-graph world


class FactorGraphWorld:
    """A random sparse factor graph over ``n_variables`` scalars, observed as sets of elements.

    Parameters
    ----------
    n_variables : number of high-level variables (>= 2).
    factor_size : parents of the target's factor (1 .. n_variables - 1).
    n_distractor_types : distractor identities seen in training (a disjoint pool of the same
        size is kept for out-of-distribution tests).
    d_id : width of the identity embeddings (elements are ``2 * d_id`` wide).
    noise : standard deviation of the factor noise.
    seed : seeds the graph, weights and embeddings.

    Attributes: ``parents`` (list of int arrays, one per variable), ``weights`` (list of float
    arrays), ``target`` (int), ``embeddings`` ``(n_variables + 2 n_distractor_types, d_id)``.
    """

    def __init__(self, n_variables: int, factor_size: int, n_distractor_types: int, d_id: int,
                 noise: float, seed: int):
        rng = np.random.default_rng(seed)
        self.n_variables, self.factor_size, self.noise = n_variables, factor_size, float(noise)
        self.n_distractor_types, self.d_id = n_distractor_types, d_id
        self.target = int(rng.integers(n_variables))
        self.parents, self.weights = [], []
        for i in range(n_variables):
            others = np.delete(np.arange(n_variables), i)
            size = factor_size if i == self.target else int(rng.integers(2, 4))
            size = min(size, others.size)
            self.parents.append(np.sort(rng.choice(others, size=size, replace=False)))
            self.weights.append(rng.uniform(0.5, 1.5, size) * rng.choice([-1.0, 1.0], size))
        n_emb = n_variables + 2 * n_distractor_types
        emb = rng.standard_normal((n_emb, d_id)) / math.sqrt(d_id)
        self.embeddings = torch.as_tensor(emb, dtype=torch.float32)

    @property
    def target_parents(self) -> np.ndarray:
        return self.parents[self.target]

    @property
    def target_variance(self) -> float:
        w = self.weights[self.target]
        return float((w**2).sum() + self.noise**2)

    @property
    def oracle_error(self) -> float:
        """Relative MSE of the best possible predictor (the factor noise)."""
        return self.noise**2 / self.target_variance

    def step(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Next state of every variable, ``x`` ``(B, n_variables)`` -> ``(B, n_variables)``."""
        out = torch.empty_like(x)
        for i in range(self.n_variables):
            w = torch.as_tensor(self.weights[i], dtype=x.dtype, device=x.device)
            out[:, i] = x[:, self.parents[i]] @ w
        eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return out + self.noise * eps

    def sample(self, batch: int, n_distractors: int, *, generator: torch.Generator,
               ood: bool = False, ood_shift: float = 3.0, ood_scale: float = 2.0,
               novel_types: bool = False, device=None):
        """Observations and the target's next value.

        Returns ``elements`` ``(B, n_variables + n_distractors, 2 d_id)``, ``element_var``
        ``(B, n_elements)`` (the variable each element shows, -1 for a distractor) and ``y``
        ``(B,)``. ``ood`` shifts the distractors' values to ``N(ood_shift, ood_scale^2)``;
        with ``novel_types`` they also take identities never seen in training.
        """
        nv, d = self.n_variables, self.d_id
        x = torch.randn(batch, nv, generator=generator, device=device)
        w = torch.as_tensor(self.weights[self.target], dtype=x.dtype, device=x.device)
        y = x[:, self.target_parents] @ w
        y = y + self.noise * torch.randn(batch, generator=generator, device=device)
        first = nv + (self.n_distractor_types if ood and novel_types else 0)
        types = torch.randint(first, first + self.n_distractor_types, (batch, n_distractors),
                              generator=generator, device=device)
        dval = torch.randn(batch, n_distractors, generator=generator, device=device)
        if ood:
            dval = ood_shift + ood_scale * dval
        ids = torch.cat([torch.arange(nv, device=device).expand(batch, nv), types], dim=1)
        vals = torch.cat([x, dval], dim=1)
        perm = torch.rand(ids.shape, generator=generator, device=device).argsort(dim=1)
        ids, vals = ids.gather(1, perm), vals.gather(1, perm)
        emb = self.embeddings.to(device)[ids]  # (B, n, d)
        elements = torch.cat([emb, vals[..., None] * emb], dim=-1)
        element_var = torch.where(ids < nv, ids, torch.full_like(ids, -1))
        assert elements.shape[-1] == 2 * d
        return elements, element_var, y


# --------------------------------------------------------------------------------------------
# training and evaluation


def train_model(model: nn.Module, world: FactorGraphWorld, *, steps: int, batch_size: int,
                lr: float, n_distractors: int, generator: torch.Generator,
                anneal_fraction: float = 0.5, device=None) -> list[float]:
    """Adam on the relative MSE of the target's next value; returns the loss of every step.

    The bottleneck's ``relax`` goes linearly from 1 to 0 over the first ``anneal_fraction`` of
    the steps (soft-to-hard annealing), then stays 0 (pure top-k).
    """
    n_anneal = int(round(anneal_fraction * steps))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    scale = 1.0 / world.target_variance
    losses = []
    model.train()
    for step in range(steps):
        el, _, y = world.sample(batch_size, n_distractors, generator=generator, device=device)
        relax = max(0.0, 1.0 - step / n_anneal) if n_anneal > 0 else 0.0
        pred = model(el, relax=relax).prediction[:, 0]
        loss = ((pred - y) ** 2).mean() * scale
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


@torch.no_grad()
def evaluate_model(model: ConsciousnessBottleneck, world: FactorGraphWorld, *, n_test: int,
                   n_distractors: int, generator: torch.Generator, ood: bool, ood_shift: float,
                   ood_scale: float, novel_types: bool = False, device=None) -> dict[str, Any]:
    """Relative MSE and the recovered selection on ``n_test`` fresh observations.

    Returns ``error`` (MSE / Var(target)), ``exact``, ``precision``, ``recall`` (fractions of
    test cases / means), ``freq`` ``(n_variables,)`` (how often each variable is selected) and
    ``distractor_freq`` (mean number of distractors selected per case / k).
    """
    model.eval()
    el, var, y = world.sample(n_test, n_distractors, generator=generator, ood=ood,
                              ood_shift=ood_shift, ood_scale=ood_scale, novel_types=novel_types,
                              device=device)
    out = model(el)
    err = float(((out.prediction[:, 0] - y) ** 2).mean()) / world.target_variance
    parents = torch.as_tensor(world.target_parents, device=var.device)
    if model.mode == "dense":
        sel = out.weights.topk(min(world.factor_size, el.shape[1]), dim=-1).indices
    else:
        sel = out.selected
    sel_var = var.gather(1, sel.flatten(1))  # (B, Q*k): variable of each selected element
    nv = world.n_variables
    chosen = torch.zeros(n_test, nv + 1, dtype=torch.bool, device=var.device)
    chosen.scatter_(1, torch.where(sel_var < 0, nv, sel_var), True)  # union over queries
    chosen_vars = chosen[:, :nv]
    is_parent = torch.zeros(nv, dtype=torch.bool, device=var.device)
    is_parent[parents] = True
    hits = (chosen_vars & is_parent).sum(1).float()
    n_sel = sel_var.shape[1]
    exact = ((chosen_vars == is_parent).all(1) & ~chosen[:, nv]).float()
    return {
        "error": err,
        "exact": float(exact.mean()),
        "precision": float((hits / n_sel).mean()),
        "recall": float((hits / parents.numel()).mean()),
        "freq": chosen_vars.float().mean(0).cpu().numpy(),
        "distractor_freq": float((sel_var < 0).float().sum(1).mean() / n_sel),
    }


# --------------------------------------------------------------------------------------------
# the driver


def _models(c) -> list[tuple[str, int, str]]:
    return [("dense", 0, "dense")] + [(f"top{k}", k, c["mode"]) for k in c["k_values"]]


def simulate(config: dict[str, Any], *, device=None):
    """Train the bottleneck (each k) and dense attention on ``n_seeds`` worlds; an ``xarray.Dataset``.

    Dimensions ``seed`` x ``model`` (``dense``, ``top1``, ...; coordinate ``k``, 0 for dense)
    and ``variable``. Variables: ``error_id`` / ``error_ood`` (relative MSE),
    ``error_oracle`` (the analytic noise floor), ``selection_exact`` / ``_precision`` /
    ``_recall`` in and out of distribution, ``selection_freq`` (how often each variable enters
    the conscious state), ``distractor_freq`` and ``true_parent`` (the factor graph's answer).
    """
    import xarray as xr

    from brainattn.utils import progress, resolve_device

    c = validate_config(config)
    dev = resolve_device(device if device is not None else "auto")
    models = _models(c)
    ns, nm, nv = c["n_seeds"], len(models), c["n_variables"]
    arr = {k: np.full((ns, nm), np.nan) for k in (
        "error_id", "error_ood", "exact_id", "exact_ood", "precision_id", "recall_id",
        "precision_ood", "recall_ood", "distractor_freq", "final_loss")}
    freq = np.zeros((ns, nm, nv))
    true_parent = np.zeros((ns, nv), dtype=bool)
    oracle = np.zeros(ns)
    targets = np.zeros(ns, dtype=np.int64)
    d_in = 2 * c["d_id"]
    from brainattn.theory._config import cpu_threads

    with progress(total=ns * nm, desc="consciousness") as bar, cpu_threads(dev):
        for s in range(ns):
            seed = c["seed"] * 1000 + s
            world = FactorGraphWorld(nv, c["factor_size"], c["n_distractor_types"], c["d_id"],
                                     c["noise"], seed)
            true_parent[s, world.target_parents] = True
            oracle[s] = world.oracle_error
            targets[s] = world.target
            for m, (_, k, mode) in enumerate(models):
                torch.manual_seed(seed * 31 + m)
                model = ConsciousnessBottleneck(
                    d_in, k=max(k, 1), n_queries=c["n_queries"], d_model=c["d_model"],
                    d_state=c["d_state"], hidden=c["hidden"], mode=mode,
                    key_dims=c["d_id"] if c["key_from_identity"] else None,
                ).to(dev)
                gen = torch.Generator(device=dev).manual_seed(seed)  # same stream for every model
                losses = train_model(model, world, steps=c["steps"], batch_size=c["batch_size"],
                                     lr=c["lr"], n_distractors=c["n_distractors"], generator=gen,
                                     anneal_fraction=c["anneal_fraction"], device=dev)
                arr["final_loss"][s, m] = float(np.mean(losses[-20:]))
                for ood in (False, True):
                    tg = torch.Generator(device=dev).manual_seed(10**6 + seed)
                    ev = evaluate_model(model, world, n_test=c["n_test"],
                                        n_distractors=c["n_distractors"], generator=tg, ood=ood,
                                        ood_shift=c["ood_shift"], ood_scale=c["ood_scale"],
                                        novel_types=c["ood_novel_types"], device=dev)
                    tag = "ood" if ood else "id"
                    arr[f"error_{tag}"][s, m] = ev["error"]
                    arr[f"exact_{tag}"][s, m] = ev["exact"]
                    arr[f"precision_{tag}"][s, m] = ev["precision"]
                    arr[f"recall_{tag}"][s, m] = ev["recall"]
                    if not ood:
                        freq[s, m] = ev["freq"]
                        arr["distractor_freq"][s, m] = ev["distractor_freq"]
                bar.update(1)

    sm = ("seed", "model")
    ds = xr.Dataset(
        {
            "error_id": (sm, arr["error_id"], {"long_name": "relative MSE, in distribution"}),
            "error_ood": (sm, arr["error_ood"], {"long_name": "relative MSE, shifted distractors"}),
            "error_oracle": ("seed", oracle, {"long_name": "analytic floor noise^2 / Var(target)"}),
            "selection_exact_id": (sm, arr["exact_id"]),
            "selection_exact_ood": (sm, arr["exact_ood"]),
            "selection_precision_id": (sm, arr["precision_id"]),
            "selection_recall_id": (sm, arr["recall_id"]),
            "selection_precision_ood": (sm, arr["precision_ood"]),
            "selection_recall_ood": (sm, arr["recall_ood"]),
            "selection_freq": (("seed", "model", "variable"), freq),
            "distractor_freq": (sm, arr["distractor_freq"]),
            "true_parent": (("seed", "variable"), true_parent),
            "target": ("seed", targets),
            "final_train_loss": (sm, arr["final_loss"]),
        },
        coords={
            "seed": ("seed", c["seed"] * 1000 + np.arange(ns)),
            "model": ("model", [m[0] for m in models]),
            "k": ("model", np.asarray([m[1] for m in models])),
            "variable": ("variable", np.arange(nv)),
        },
        attrs={
            "simulation": "consciousness",
            "factor_size": c["factor_size"],
            "mode": c["mode"],
            "n_elements": nv + c["n_distractors"],
            "sim_device": str(dev),
            "config": {k: config[k] for k in sorted(config)},
        },
    )
    return ds


def summary(ds):
    """Per model (``pandas.DataFrame``): errors in/out of distribution (mean over seeds), the paired
    OOD difference to dense attention with its 95% t interval, and the recovered selection."""
    import pandas as pd
    from scipy import stats

    dense_ood = ds["error_ood"].sel(model="dense").values
    rows = []
    for m in ds["model"].values:
        sel = ds.sel(model=m)
        diff = sel["error_ood"].values - dense_ood
        n = diff.size
        if m == "dense" or n < 2:
            lo = hi = np.nan
        else:
            half = stats.t.ppf(0.975, n - 1) * diff.std(ddof=1) / math.sqrt(n)
            lo, hi = diff.mean() - half, diff.mean() + half
        rows.append({
            "model": str(m), "k": int(sel["k"]),
            "error_id": float(sel["error_id"].mean()), "error_ood": float(sel["error_ood"].mean()),
            "ood_minus_dense": float(diff.mean()), "ci95_low": float(lo), "ci95_high": float(hi),
            "selection_exact": float(sel["selection_exact_id"].mean()),
            "selection_exact_ood": float(sel["selection_exact_ood"].mean()),
            "precision": float(sel["selection_precision_id"].mean()),
            "recall": float(sel["selection_recall_id"].mean()),
            "oracle_error": float(ds["error_oracle"].mean()),
        })
    return pd.DataFrame(rows)


__all__ = [
    "FULL", "MODES", "QUICK", "BottleneckOutput", "ConsciousnessBottleneck", "FactorGraphWorld",
    "evaluate_model", "plot", "simulate", "summary", "train_model", "validate_config",
]
