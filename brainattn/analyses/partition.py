"""Banded ridge over several feature spaces, and variance partitioning.

* :func:`banded_ridge`: one regression from several feature spaces (layers, backbones) to every
  vertex, each space with its own regularisation, chosen per vertex by cross-validation
  (himalaya's ``BandedRidgeCV``, primal, when there are fewer features than training images;
  ``MultipleKernelRidgeCV`` on linear kernels otherwise -- the same model in its dual form).
  The held-out R^2 is split into one part per space with the product measure (Nunez-Elizalde
  et al. 2019, himalaya's ``r2_score_split``): ``R2_k = sum_i (2 y_i yhat_ki - yhat_ki
  sum_j yhat_ji) / sum_i y_i^2``, the parts sum to the joint R^2.
* :func:`variance_partition`: the set-theoretic partition (de Heer et al. 2017): one model per
  non-empty subset ``S`` of the spaces gives ``R2(S)``; the variance explained by exactly the
  spaces in ``T`` and by none of the others (``C`` = the rest) is
  ``sum_{W subset of T} (-1)^(|W| + 1) R2(W u C)`` (with ``R2(empty) = 0``): for two spaces
  ``unique:A = R2(AB) - R2(B)``, ``shared:A+B = R2(A) + R2(B) - R2(AB)``.

Features are z-scored with training statistics, responses centred with training means; held-out
R^2 is computed on test responses and predictions centred over the test images (what the split
requires). Negative R^2 (worse than the test mean) is kept, not clipped.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping

import numpy as np

from brainattn.errors import ConfigError, ShapeError

#: more spaces than this make 2^k - 1 fits; refuse rather than run for hours
MAX_SPACES = 5


def _check_spaces(spaces: Mapping[str, np.ndarray], Y) -> tuple[list[str], list[np.ndarray], np.ndarray]:
    if not isinstance(spaces, Mapping) or len(spaces) < 1:
        raise ConfigError("spaces: expected a mapping {name: features (n_images, n_features)}")
    Y = np.asarray(Y, dtype=np.float32)
    if Y.ndim != 2:
        raise ShapeError(f"Y: expected (n_images, n_vertices), got shape {Y.shape}")
    names, Xs = [], []
    for name, X in spaces.items():
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[0] != Y.shape[0]:
            raise ShapeError(f"feature space {name!r}: expected ({Y.shape[0]}, n_features) like "
                             f"Y's images, got {X.shape}")
        if "+" in str(name):
            raise ConfigError(f"feature space {name!r}: '+' joins space names; choose another name")
        names.append(str(name))
        Xs.append(X)
    if not np.isfinite(Y).all() or not all(np.isfinite(X).all() for X in Xs):
        raise ShapeError("features and responses must be finite")
    return names, Xs, Y


def _split_index(n: int, train_idx, test_idx) -> tuple[np.ndarray, np.ndarray]:
    tr, te = np.asarray(train_idx, dtype=np.int64), np.asarray(test_idx, dtype=np.int64)
    if tr.size < 4 or te.size < 2:
        raise ShapeError(f"need >= 4 training and >= 2 test images, got {tr.size} and {te.size}")
    if tr.min() < 0 or te.min() < 0 or max(tr.max(), te.max()) >= n:
        raise ShapeError(f"train/test indices must lie in 0..{n - 1}")
    if np.intersect1d(tr, te).size:
        raise ShapeError("train and test images overlap; held-out scores need disjoint sets")
    return tr, te


def split_r2(y, preds) -> np.ndarray:
    """Product-measure split of R^2: ``(k, v)`` parts summing to the joint R^2 of
    ``preds.sum(0)``. ``y`` (n, v) and ``preds`` (k, n, v) are centred over n here."""
    y = np.asarray(y, np.float64)
    preds = np.asarray(preds, np.float64)
    y = y - y.mean(0)
    preds = preds - preds.mean(1, keepdims=True)
    total = preds.sum(0)
    sst = (y**2).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return ((2 * y[None] * preds - preds * total[None]).sum(1)) / sst


def _fit_predict(Xs_tr, Xs_te, Ytr, *, n_iter, alphas, cv, seed, n_targets_batch, dev, form):
    """Banded ridge fit on the training rows; per-space predictions of the test rows
    (k, n_test, v) float64 and the chosen per-space log-weights ``deltas`` (k, v)."""
    from himalaya.backend import get_backend, set_backend

    old = get_backend()
    backend = set_backend("torch_cuda" if dev.type == "cuda" else "torch", on_error="warn")
    try:
        params = {"n_iter": int(n_iter), "alphas": np.asarray(alphas, dtype=np.float64),
                  "progress_bar": False}
        if n_targets_batch:
            params["n_targets_batch"] = int(n_targets_batch)
        n_tr = Ytr.shape[0]
        dual = form == "dual" or (form == "auto" and sum(X.shape[1] for X in Xs_tr) > n_tr)
        if dual:
            from himalaya.kernel_ridge import MultipleKernelRidgeCV

            # linear kernels, each normalised by its feature count so that the spaces start on
            # an equal footing and the solver's weights carry the comparison
            Ks = np.stack([X @ X.T / X.shape[1] for X in Xs_tr])
            Ks_te = np.stack([Xte @ X.T / X.shape[1] for X, Xte in zip(Xs_tr, Xs_te, strict=True)])
            model = MultipleKernelRidgeCV(kernels="precomputed", solver="random_search",
                                          solver_params=params, cv=cv, random_state=seed)
            model.fit(Ks, Ytr)
            pred = model.predict(Ks_te, split=True)
        else:
            from himalaya.ridge import BandedRidgeCV

            model = BandedRidgeCV(groups="input", solver="random_search", solver_params=params,
                                  cv=cv, random_state=seed)
            model.fit([X / np.sqrt(X.shape[1]) for X in Xs_tr], Ytr)
            pred = model.predict([X / np.sqrt(X.shape[1]) for X in Xs_te], split=True)
        pred = np.asarray(backend.to_numpy(pred), dtype=np.float64)
        deltas = np.asarray(backend.to_numpy(model.deltas_), dtype=np.float64)
    finally:
        set_backend(old)
    return pred, deltas, ("MultipleKernelRidgeCV" if dual else "BandedRidgeCV")


def banded_ridge(spaces: Mapping[str, np.ndarray], Y, train_idx, test_idx, *, n_iter: int = 30,
                 alphas=None, cv: int = 5, seed: int = 0, device: str = "auto",
                 n_targets_batch: int | None = None, vertex_coords: Mapping | None = None,
                 form: str = "auto"):
    """Fit one banded ridge on ``train_idx`` and score it on ``test_idx``.

    Parameters
    ----------
    spaces : ``{name: features (n_images, n_features_k)}``, e.g. pooled tokens of each layer.
    Y : (n_images, n_vertices) responses.
    train_idx, test_idx : disjoint image rows.
    n_iter : random-search candidates of the per-space weights (himalaya's ``n_iter``).
    alphas : global regularisation grid (default ``logspace(-2, 6, 17)``).
    cv : folds of the inner cross-validation.
    device : ``"auto"`` runs himalaya's ``torch_cuda`` backend on a GPU.
    n_targets_batch : vertices per solver batch (memory knob).
    form : ``"primal"`` (BandedRidgeCV), ``"dual"`` (MultipleKernelRidgeCV on linear kernels)
        or ``"auto"``: dual when the spaces hold more features than there are training images.

    Returns
    -------
    xarray.Dataset: ``r2`` (vertex) joint held-out R^2, ``split_r2`` (space, vertex) its
    per-space parts (they sum to ``r2``), ``log_weight`` (space, vertex) the chosen log
    kernel weights (himalaya's ``deltas_``), ``prediction`` (test_image, vertex) the joint
    model's held-out predictions (coord ``test_image`` = the rows ``test_idx``); attrs
    ``solver``, ``n_train``, ``n_test``...
    """
    import xarray as xr

    from brainattn.utils import resolve_device

    if form not in ("auto", "primal", "dual"):
        raise ConfigError(f"form {form!r}: expected 'auto', 'primal' or 'dual'")
    names, Xs, Y = _check_spaces(spaces, Y)
    tr, te = _split_index(Y.shape[0], train_idx, test_idx)
    dev = resolve_device(device)
    alphas = np.logspace(-2, 6, 17) if alphas is None else np.asarray(alphas, dtype=np.float64)
    cv = int(min(cv, tr.size))
    if cv < 2:
        raise ConfigError(f"cv: expected >= 2 folds, got {cv}")
    Xs_tr, Xs_te = [], []
    for X in Xs:
        mu, sd = X[tr].mean(0), X[tr].std(0) + 1e-6
        Xs_tr.append(((X[tr] - mu) / sd).astype(np.float32))
        Xs_te.append(((X[te] - mu) / sd).astype(np.float32))
    Ytr = (Y[tr] - Y[tr].mean(0)).astype(np.float32)
    pred, deltas, solver = _fit_predict(Xs_tr, Xs_te, Ytr, n_iter=n_iter, alphas=alphas, cv=cv,
                                        seed=seed, n_targets_batch=n_targets_batch, dev=dev,
                                        form=form)
    parts = split_r2(Y[te], pred)
    v = Y.shape[1]
    coords = {"vertex": np.arange(v), "space": np.asarray(names, dtype=str)}
    for k, c in (vertex_coords or {}).items():
        c = np.asarray(c)
        if c.shape != (v,):
            raise ShapeError(f"vertex coordinate {k!r} has shape {c.shape}; expected ({v},)")
        coords[k] = ("vertex", c.astype(str) if c.dtype.kind in "OUS" else c)
    return xr.Dataset(
        {"r2": (("vertex",), parts.sum(0), {"long_name": "held-out R^2 of the joint banded ridge"}),
         "prediction": (("test_image", "vertex"), pred.sum(0).astype(np.float32) + Y[tr].mean(0),
                        {"long_name": "held-out prediction of the joint model (response units)"}),
         "split_r2": (("space", "vertex"), parts,
                      {"long_name": "product-measure part of the held-out R^2 per space"}),
         "log_weight": (("space", "vertex"), deltas,
                        {"long_name": "log kernel weight per space (himalaya deltas_)"})},
        coords={**coords, "test_image": te},
        attrs={"solver": solver, "n_iter": int(n_iter), "cv": cv, "seed": int(seed),
               "n_train": int(tr.size), "n_test": int(te.size), "spaces": names},
    )


def partition_from_subsets(r2: Mapping[frozenset, np.ndarray], names: list[str]
                           ) -> dict[frozenset, np.ndarray]:
    """Venn-diagram atoms from the R^2 of every non-empty subset of ``names``.

    ``r2[S]`` is the held-out R^2 of the model on the spaces in ``S``. Returns ``{T: part}`` for
    every non-empty ``T``: the variance explained by all spaces in ``T`` and by no other.
    """
    everything = frozenset(names)

    def g(s):
        return 0.0 if not s else r2[frozenset(s)]

    out = {}
    for size in range(1, len(names) + 1):
        for T in itertools.combinations(names, size):
            T = frozenset(T)
            C = everything - T
            total = 0.0
            for wsize in range(0, len(T) + 1):
                for W in itertools.combinations(sorted(T), wsize):
                    total = total + (-1) ** (wsize + 1) * g(frozenset(W) | C)
            out[T] = total
    return out


def variance_partition(spaces: Mapping[str, np.ndarray], Y, train_idx, test_idx, *,
                       n_iter: int = 30, alphas=None, cv: int = 5, seed: int = 0,
                       device: str = "auto", n_targets_batch: int | None = None,
                       vertex_coords: Mapping | None = None, form: str = "auto"):
    """Variance partitioning of held-out R^2 over the feature spaces.

    Fits :func:`banded_ridge` on every non-empty subset of the spaces (``2^k - 1`` fits,
    ``k <= 5``) with the same split and settings.

    Returns
    -------
    xarray.Dataset: everything :func:`banded_ridge` returns for the joint model (``r2``,
    ``split_r2``, ``log_weight``), plus ``r2_subset`` (subset, vertex) the held-out R^2 of each
    subset's model (``subset`` names like ``A+B``) and ``partition`` (part, vertex) the variance
    explained by exactly the spaces of the part (``part`` names ``unique:A`` or
    ``shared:A+B``; coord ``part_spaces``).
    """
    names = [str(n) for n in spaces]
    if len(names) < 2:
        raise ConfigError("variance partitioning needs at least 2 feature spaces")
    if len(names) > MAX_SPACES:
        raise ConfigError(f"{len(names)} feature spaces make {2 ** len(names) - 1} fits; at most "
                          f"{MAX_SPACES} spaces")
    kw = dict(n_iter=n_iter, alphas=alphas, cv=cv, seed=seed, device=device,
              n_targets_batch=n_targets_batch, form=form)
    joint = banded_ridge(spaces, Y, train_idx, test_idx, vertex_coords=vertex_coords, **kw)
    r2 = {frozenset(names): joint["r2"].values}
    subsets = [frozenset(c) for size in range(1, len(names))
               for c in itertools.combinations(names, size)]
    for S in subsets:
        sub = {n: spaces[n] for n in names if n in S}
        r2[S] = banded_ridge(sub, Y, train_idx, test_idx, **kw)["r2"].values
    atoms = partition_from_subsets(r2, names)
    order = [*subsets, frozenset(names)]

    def label(s):
        return "+".join(n for n in names if n in s)

    parts = list(atoms)
    ds = joint.assign_coords(
        subset=np.asarray([label(s) for s in order], dtype=str),
        part=np.asarray([("unique:" if len(t) == 1 else "shared:") + label(t) for t in parts],
                        dtype=str),
    )
    ds = ds.assign_coords(part_spaces=("part", np.asarray([label(t) for t in parts], dtype=str)))
    ds["r2_subset"] = (("subset", "vertex"), np.stack([r2[s] for s in order]),
                       {"long_name": "held-out R^2 of the banded ridge on each subset of spaces"})
    ds["partition"] = (("part", "vertex"), np.stack([atoms[t] for t in parts]),
                       {"long_name": "held-out R^2 explained by exactly these spaces (Venn atom)"})
    ds.attrs["method"] = ("variance partitioning (de Heer et al. 2017): one banded ridge per "
                          "subset of spaces, Venn atoms by inclusion-exclusion")
    return ds
