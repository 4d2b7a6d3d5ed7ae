"""Is a vertex predicted better than chance? Permutation p-values, FDR q-values, ROI intervals.

* :func:`permutation_pvalues`: one-sided permutation test of the held-out Pearson r of every
  vertex. The null pairs each prediction with the measured response to another test image: the
  rows (test images) of ``true`` are permuted, the same permutations for every vertex (so the
  spatial correlation of the noise is kept, as in fMRI practice). ``p = (1 + #{r_null >= r}) /
  (1 + n_permutations)`` -- never 0, and exactly valid for random permutations (Phipson &
  Smyth 2010). Vectorised in torch: columns are standardised once, each permutation is a row
  gather, ``r_null = sum_i p_i t_pi(i)``; batched over vertices and permutations so that memory
  stays within ``memory_mb``. On CUDA when present (float32), the same function on the CPU.
* :func:`bh_qvalues`: Benjamini-Hochberg adjusted p-values over the vertices with a defined r;
  ``q <= alpha`` controls the false discovery rate at ``alpha`` (independent or positively
  dependent tests).
* :func:`bootstrap_roi_medians`: percentile intervals of each ROI's median r, resampling test
  images with replacement (the images are the random sample; vertices are not resampled).
* :func:`significance`: all of it as an ``xarray.Dataset`` aligned with ``scores.nc``.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import numpy as np

from brainattn.errors import ConfigError, ShapeError

#: relative slack when counting null r >= observed r: both come from the same float32 sums,
#: so ties (e.g. two images with equal responses) must count as exceedances, not be lost to
#: rounding (which would make p too small)
_TIE_TOL = 1e-6


def _check_pair(pred, true) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred)
    true = np.asarray(true)
    if pred.ndim != 2 or true.ndim != 2:
        raise ShapeError(f"pred and true: expected 2-D arrays (n_images, n_vertices), got shapes "
                         f"{pred.shape} and {true.shape}")
    if pred.shape != true.shape:
        raise ShapeError(f"pred has shape {pred.shape} but true has {true.shape}; expected the "
                         "same (n_images, n_vertices)")
    if pred.shape[0] < 3:
        raise ShapeError(f"a permutation test needs at least 3 test images, got {pred.shape[0]}")
    return pred, true


def _check_count(name: str, value, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
        raise ConfigError(f"{name}: expected an integer >= {lo}, got {value!r}")
    return int(value)


def _device(device: str):
    from brainattn.utils import resolve_device

    return resolve_device(device)


def _standardise(a, dev):
    """float32 tensor (n, v) with zero-mean, unit-norm columns (constant columns stay 0)."""
    import torch

    t = torch.as_tensor(np.asarray(a, dtype=np.float32), device=dev)
    t = t - t.mean(0, keepdim=True)
    norm = torch.linalg.vector_norm(t, dim=0, keepdim=True)
    return t / torch.where(norm > 0, norm, torch.ones_like(norm))


def _batches(n: int, n_perm: int, n_vertices: int, memory_mb: float) -> tuple[int, int]:
    """(permutations, vertices) per chunk: the gathered (perm, n, vertex) float32 block and its
    product with the predictions (2 such blocks) fit in ``memory_mb``."""
    budget = max(1.0, float(memory_mb)) * 2**20 / (2 * 4 * n)  # perm x vertex cells per chunk
    vb = int(min(n_vertices, max(1, budget // min(n_perm, 256))))
    pb = int(min(n_perm, max(1, budget // vb)))
    return pb, vb


def permutations(n_images: int, n_permutations: int, seed: int = 0):
    """(n_permutations, n_images) int64 tensor of random permutations of the test images.

    Drawn on the CPU from ``seed`` so that the CPU and the GPU test the same permutations.
    """
    import torch

    g = torch.Generator().manual_seed(int(seed))
    return torch.argsort(torch.rand(n_permutations, n_images, generator=g), dim=1)


def permutation_pvalues(pred, true, *, n_permutations: int = 1000, seed: int = 0,
                        device: str = "auto", memory_mb: float | None = None
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Per-vertex one-sided permutation p-values of held-out Pearson r.

    Parameters
    ----------
    pred, true : array (n_images, n_vertices)
        Predicted and measured responses to the held-out test images.
    n_permutations : permutations of the test images (>= 1; 1,000 resolves p down to 1e-3).
    seed : seed of the permutations (same seed -> same p on CPU and GPU up to float ties).
    device : ``"auto"`` uses CUDA when present.
    memory_mb : working memory per chunk (default 2,048 on CUDA, 256 on the CPU).

    Returns
    -------
    r : float64 (n_vertices,) observed Pearson r (NaN where undefined, see
        :func:`brainattn.encoders.metrics.vertex_status`).
    p : float64 (n_vertices,) in ``[1 / (n_permutations + 1), 1]``; NaN where r is NaN.
    """
    import torch

    from brainattn.encoders.metrics import STATUS_OK, vertex_status

    pred, true = _check_pair(pred, true)
    n_perm = _check_count("n_permutations", n_permutations, 1)
    dev = _device(device)
    n, v = pred.shape
    if memory_mb is None:
        memory_mb = 2048 if dev.type == "cuda" else 256
    pb, vb = _batches(n, n_perm, v, memory_mb)
    perms = permutations(n, n_perm, seed).to(dev)
    ok = vertex_status(pred, true) == STATUS_OK
    r = np.full(v, np.nan)
    p = np.full(v, np.nan)
    for s in range(0, v, vb):
        e = min(v, s + vb)
        P = _standardise(pred[:, s:e], dev)
        T = _standardise(true[:, s:e], dev)
        r_obs = (P * T).sum(0)
        thresh = r_obs - _TIE_TOL * (1 + r_obs.abs())
        count = torch.zeros(e - s, dtype=torch.int64, device=dev)
        for b in range(0, n_perm, pb):
            null = (T[perms[b : b + pb]] * P).sum(1)  # (perm, vertex)
            count += (null >= thresh).sum(0)
        r[s:e] = r_obs.double().cpu().numpy()
        p[s:e] = ((1 + count).double() / (1 + n_perm)).cpu().numpy()
    r = np.clip(r, -1.0, 1.0)
    r[~ok] = np.nan
    p[~ok] = np.nan
    return r, p


def bh_qvalues(p) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values) of a 1-D array, NaN ignored.

    ``q_(i) = min_{j >= i} p_(j) m / j`` over the ``m`` finite p-values sorted ascending,
    capped at 1; NaN stays NaN. Rejecting ``q <= alpha`` controls the FDR at ``alpha``.
    """
    p = np.asarray(p, dtype=np.float64)
    if p.ndim != 1:
        raise ShapeError(f"p: expected a 1-D array of p-values, got shape {p.shape}")
    ok = np.isfinite(p)
    if np.any((p[ok] < 0) | (p[ok] > 1)):
        raise ConfigError("p: p-values must lie in [0, 1]")
    q = np.full(p.shape, np.nan)
    m = int(ok.sum())
    if m == 0:
        return q
    pv = p[ok]
    order = np.argsort(pv, kind="stable")
    ranked = pv[order] * m / np.arange(1, m + 1)
    ranked = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(ranked, 1.0)
    q[ok] = out
    return q


def resamples(n_images: int, n_bootstrap: int, seed: int = 0):
    """(n_bootstrap, n_images) int64 tensor: the test images drawn with replacement per
    resample (CPU, from ``seed``; a stream apart from :func:`permutations`' one)."""
    import torch

    g = torch.Generator().manual_seed(int(seed) + 1)
    return torch.randint(0, n_images, (n_bootstrap, n_images), generator=g)


def bootstrap_r(pred, true, *, n_bootstrap: int = 1000, seed: int = 0, device: str = "auto",
                memory_mb: float | None = None) -> np.ndarray:
    """Pearson r of every vertex on ``n_bootstrap`` resamples (with replacement) of the test
    images: float32 (n_bootstrap, n_vertices), NaN where a resample leaves a column constant.

    A resample is a vector of counts ``w`` (how often each image was drawn), so every sum r
    needs is one matrix product over the images -- ``w @ p``, ``w @ t``, ``w @ (p t)``, ``w @
    p^2``, ``w @ t^2`` for all resamples at once -- in float64, on columns centred and scaled
    over the whole test set first (so the one-pass variance formula loses no digits).
    """
    import torch

    pred, true = _check_pair(pred, true)
    n_boot = _check_count("n_bootstrap", n_bootstrap, 1)
    dev = _device(device)
    n, v = pred.shape
    if memory_mb is None:
        memory_mb = 2048 if dev.type == "cuda" else 256
    # five (resample, vertex) float64 sums and the (image, vertex) columns per chunk
    vb = int(min(v, max(1, float(memory_mb) * 2**20 // (8 * (5 * n_boot + 5 * n)))))
    idx = resamples(n, n_boot, seed)
    w = torch.zeros(n_boot, n, dtype=torch.float64).scatter_add_(
        1, idx, torch.ones(n_boot, n, dtype=torch.float64)).to(dev)
    out = np.empty((n_boot, v), dtype=np.float32)
    for s in range(0, v, vb):
        e = min(v, s + vb)
        cols = []
        for a in (pred, true):
            t = torch.as_tensor(np.asarray(a[:, s:e], dtype=np.float64), device=dev)
            t = t - t.mean(0, keepdim=True)
            sd = t.std(0, keepdim=True)
            cols.append(t / torch.where(sd > 0, sd, torch.ones_like(sd)))
        P, T = cols
        sp, st = w @ P / n, w @ T / n
        cov = w @ (P * T) / n - sp * st
        vp = w @ (P * P) / n - sp * sp
        vt = w @ (T * T) / n - st * st
        # a resample of identical values has zero variance up to rounding: undefined r
        tiny = 1e-12
        r = cov / (vp.clamp_min(0) * vt.clamp_min(0)).sqrt()
        r = torch.where((vp > tiny) & (vt > tiny), r, torch.full_like(r, float("nan")))
        out[:, s:e] = r.clamp(-1, 1).float().cpu().numpy()
    return out


def _roi_groups(roi_labels: Mapping[str, np.ndarray], n_vertices: int, unknown: str):
    """[(family, name, vertex indices)] in first-seen order, ``unknown`` skipped."""
    groups = []
    for fam, labels in roi_labels.items():
        labels = np.asarray(labels).astype(str)
        if labels.shape != (n_vertices,):
            raise ShapeError(f"ROI labels of {fam!r} have shape {labels.shape}; expected ({n_vertices},)")
        for name in dict.fromkeys(labels.tolist()):
            if name != unknown:
                groups.append((fam, name, np.flatnonzero(labels == name)))
    return groups


def bootstrap_roi_medians(pred, true, roi_labels: Mapping[str, np.ndarray], *,
                          n_bootstrap: int = 1000, ci: float = 0.95, seed: int = 0,
                          device: str = "auto", unknown: str = "Unknown",
                          r: np.ndarray | None = None):
    """Bootstrap percentile intervals of every ROI's median r over test images.

    Parameters
    ----------
    pred, true : (n_images, n_vertices) held-out predictions and responses.
    roi_labels : ``{family: labels (n_vertices,)}`` ROI name per vertex (``unknown`` skipped).
    ci : coverage of the interval (0.95 -> the 2.5th and 97.5th percentiles).
    r : the observed r per vertex when already computed (else computed here).

    Returns
    -------
    xarray.Dataset with dim ``roi`` (``family/name`` as in ``scores.nc``) and ``bound``
    (``low``, ``high``): ``roi_median_r`` (roi) observed median over the ROI's valid vertices,
    ``roi_median_r_ci`` (roi, bound); coords ``roi_family``, ``roi_name``, ``roi_n_vertices``.
    """
    import xarray as xr

    from brainattn.encoders.metrics import pearson_per_column

    if not 0 < ci < 1:
        raise ConfigError(f"ci: expected a coverage in (0, 1), got {ci!r}")
    pred, true = _check_pair(pred, true)
    v = pred.shape[1]
    groups = _roi_groups(roi_labels, v, unknown)
    r_obs = pearson_per_column(pred, true, device="cpu") if r is None else np.asarray(r, float)
    boot = bootstrap_r(pred, true, n_bootstrap=n_bootstrap, seed=seed, device=device)
    med = np.full(len(groups), np.nan)
    lohi = np.full((len(groups), 2), np.nan)
    count = np.zeros(len(groups), dtype=np.int64)
    q = [100 * (1 - ci) / 2, 100 * (1 + ci) / 2]
    for k, (_, _, idx) in enumerate(groups):
        valid = idx[np.isfinite(r_obs[idx])]
        count[k] = valid.size
        if not valid.size:
            continue
        med[k] = np.median(r_obs[valid])
        with warnings.catch_warnings():  # an all-NaN resample of a tiny ROI is expected
            warnings.simplefilter("ignore", RuntimeWarning)
            dist = np.nanmedian(boot[:, valid], axis=1)
        dist = dist[np.isfinite(dist)]
        if dist.size:
            lohi[k] = np.percentile(dist, q)
    return xr.Dataset(
        {"roi_median_r": (("roi",), med, {"long_name": "median r over the ROI's valid vertices"}),
         "roi_median_r_ci": (("roi", "bound"), lohi,
                             {"long_name": f"{100 * ci:g}% bootstrap percentile interval of the "
                                           "ROI median r (test images resampled)"})},
        coords={"roi": np.asarray([f"{f}/{n}" for f, n, _ in groups], dtype=str),
                "roi_family": ("roi", np.asarray([f for f, _, _ in groups], dtype=str)),
                "roi_name": ("roi", np.asarray([n for _, n, _ in groups], dtype=str)),
                "roi_n_vertices": ("roi", count), "bound": ["low", "high"]},
        attrs={"n_bootstrap": int(n_bootstrap), "ci": float(ci), "seed": int(seed)},
    )


def significance_table(pred, true, *, vertex_coords: Mapping[str, np.ndarray] | None = None,
                 n_permutations: int = 1000, n_bootstrap: int = 1000, alpha: float = 0.05,
                 ci: float = 0.95, seed: int = 0, device: str = "auto"):
    """Permutation p, BH q, significance at FDR ``alpha`` and ROI-median intervals.

    ``vertex_coords`` (``hemisphere``, ``hemi_vertex``, ``roi_<family>``, ...) are copied onto
    ``vertex``; every ``roi_<family>`` coordinate gets bootstrap intervals.

    Returns an ``xarray.Dataset``: ``pearson_r``, ``p_value``, ``q_value`` (vertex) float64,
    ``significant`` (vertex) bool (``q <= alpha``), and ``roi_median_r`` (roi),
    ``roi_median_r_ci`` (roi, bound) as :func:`bootstrap_roi_medians`; attrs name the test.
    """
    import xarray as xr

    if not 0 < alpha < 1:
        raise ConfigError(f"alpha: expected a false discovery rate in (0, 1), got {alpha!r}")
    pred, true = _check_pair(pred, true)
    n, v = pred.shape
    r, p = permutation_pvalues(pred, true, n_permutations=n_permutations, seed=seed, device=device)
    q = bh_qvalues(p)
    coords = {"vertex": np.arange(v)}
    rois = {}
    for k, c in (vertex_coords or {}).items():
        c = np.asarray(c)
        if c.shape != (v,):
            raise ShapeError(f"vertex coordinate {k!r} has shape {c.shape}; expected ({v},)")
        if k in ("roi_family", "roi_name", "roi_n_vertices"):
            raise ConfigError(f"vertex coordinate {k!r}: the name of an ROI coordinate of the "
                              "result; name the ROI family otherwise (roi_<family>)")
        coords[k] = ("vertex", c.astype(str) if c.dtype.kind in "OUS" else c)
        if k.startswith("roi_"):
            rois[k[4:]] = c
    ds = xr.Dataset(
        {"pearson_r": (("vertex",), r, {"long_name": "held-out Pearson r"}),
         "p_value": (("vertex",), p, {"long_name": "one-sided permutation p of r (test images "
                                                   "permuted)"}),
         "q_value": (("vertex",), q, {"long_name": "Benjamini-Hochberg adjusted p"}),
         "significant": (("vertex",), np.nan_to_num(q, nan=1.0) <= alpha,
                         {"long_name": f"q <= {alpha:g} (FDR {alpha:g})"})},
        coords=coords)
    ds = ds.merge(bootstrap_roi_medians(pred, true, rois, n_bootstrap=n_bootstrap, ci=ci,
                                        seed=seed, device=device, r=r))
    ds.attrs.update({
        "test": "one-sided permutation test of Pearson r: the test images of the responses are "
                "permuted against the predictions (the same permutations for every vertex); "
                "p = (1 + #{r_null >= r}) / (1 + n_permutations)",
        "fdr": "Benjamini-Hochberg over the vertices with a defined r",
        "n_permutations": int(n_permutations), "n_bootstrap": int(n_bootstrap),
        "alpha": float(alpha), "ci": float(ci), "seed": int(seed), "n_images": int(n),
        "n_significant": int(ds["significant"].sum()),
    })
    return ds


def add_to_scores(scores, pred, true, *, n_permutations: int = 1000, n_bootstrap: int = 1000,
                  alpha: float = 0.05, seed: int = 0, device: str = "auto"):
    """``scores`` (a ``scores.nc`` Dataset of the same held-out ``pred``/``true``) with the
    significance added: ``p_value``, ``q_value``, ``significant`` (vertex) and
    ``roi_median_ci`` (roi, bound) of the ROI medians of r; attrs ``n_permutations``,
    ``n_bootstrap``, ``fdr_alpha``, ``n_significant``. ``n_permutations=0`` adds nothing; with
    fewer than 3 test images there is no test (attrs say so)."""
    if n_permutations == 0:
        return scores
    if np.asarray(true).shape[0] < 3:
        scores = scores.copy()
        scores.attrs["significance"] = "not tested: fewer than 3 test images"
        return scores
    coords = {k: scores[k].values for k in scores.coords
              if k != "vertex" and scores[k].dims == ("vertex",)}
    sig = significance_table(pred, true, vertex_coords=coords, n_permutations=n_permutations,
                       n_bootstrap=n_bootstrap, alpha=alpha, seed=seed, device=device)
    out = scores.copy()
    for k in ("p_value", "q_value", "significant"):
        out[k] = ("vertex",), sig[k].values, sig[k].attrs
    if scores.sizes.get("roi", 0):
        ci = sig["roi_median_r_ci"].reindex(roi=scores["roi"].values)
        out["roi_median_ci"] = ("roi", "bound"), ci.values, {
            **sig["roi_median_r_ci"].attrs, "metric": "pearson_r"}
        out = out.assign_coords(bound=sig["bound"].values)
    out.attrs.update({"significance": sig.attrs["test"], "fdr": sig.attrs["fdr"],
                      "n_permutations": int(n_permutations), "n_bootstrap": int(n_bootstrap),
                      "fdr_alpha": float(alpha), "n_significant": sig.attrs["n_significant"]})
    return out
