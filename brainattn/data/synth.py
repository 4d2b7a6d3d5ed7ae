"""The embedded synthetic visual cortex: a ground-truth data set in the Algonauts layout.

``generate(out, subjects=2, images=2000, seed=0)`` writes::

    out/synth.json                          generator parameters (seed, sizes, version)
    out/subjXX/...                          Algonauts layout (see brainattn.data.algonauts), with
                                            {lh,rh}_repeats_fmri.npy + repeats_image_index.npy
                                            and the fsaverage5 vertex masks
    out/subjXX/synth_ground_truth.nc        ground truth (NetCDF, variables below)

``brainattn.data.open_algonauts(out, "subj01")`` opens it; the noise ceiling then comes from the
repeats. All subjects see the same images (like NSD's shared images); pRFs, tuning, vertex
sets and noise differ per subject. Same seed -> byte-identical data files.

Model
-----
*Stimuli* (:mod:`brainattn.data.synth_images`): ``images`` training images (with betas) and
``max(4, images // 20)`` test images (no betas), 224 px RGB, textured backgrounds with 0-3 objects
(faces, bodies, places, words) at random positions and sizes.

*Vertices*: both fsaverage5 hemispheres (nilearn's bundled sphere, no download). Around the
occipital pole, early visual ROIs ``V1v V1d V2v V2d V3v V3d hV4`` are wedges of a cap, laid out
retinotopically: distance from the pole sets eccentricity, the angle around the pole sets the
polar angle (V1 / V2 / V3 alternate between horizontal and vertical meridians; ventral areas
see the upper field, dorsal the lower one; each hemisphere sees the contralateral half-image).
Category ROIs (floc-faces ``OFA FFA-1 FFA-2 mTL-faces aTL-faces``, floc-bodies ``EBA FBA-1
FBA-2 mTL-bodies``, floc-places ``OPA PPA RSC``, floc-words ``OWFA VWFA-1 VWFA-2 mfs-words
mTL-words``; ~``n_category_roi`` vertices each) are patches further anterior -- OFA, EBA, OPA,
OWFA lateral occipital, RSC medial, the others ventral temporal -- and a band of unlabelled
vertices surrounds them. Other fsaverage5 vertices are not written. Roughly 3,500
vertices per hemisphere.

*Responses* (clean signal per image, then z-scored over the training images):

- early visual: ``sqrt(sum_cells G(prf) * E)``, the pRF-weighted local contrast energy ``E``
  (band-pass luminance energy on a 56 x 56 grid), compressive exponent 0.5; hV4 pools colour
  instead: ``E`` is the local opponent saturation ``|R - G| + |B - (R + G) / 2|``
  (:func:`~brainattn.data.synth_images.chroma_energy`). This plants which stage of the
  embedded backbone drives which ROIs (``driving_stage``): hV4 its colour stage (0), V1-V3
  its Gabor-energy stage (1), which sees luminance contrast but not colour; a layer sweep
  should find them there;
- category ROIs: position-tolerant. Per object ``o`` of category ``c``:
  ``a_o = w[c] * exp(-(ln size_o - ln preferred_size)^2 / (2 * size_tuning_width^2)) *
  (1 + ecc_slope * (ecc_o - 0.25))``; the response is ``1 - exp(-1.5 * sum_o a_o)`` (saturating)
  plus ``0.3 * contrast_weight`` times the image's mean contrast energy (z-scored over images).
  ``w`` (``category_weight``) is 1 for the preferred category, 0.15-0.3 between faces and bodies,
  0-0.1 otherwise. ``ecc_o`` is the object centre's distance from the image centre. The object's position enters only through
  the weak eccentricity term, so a model must find the object wherever it is;
- unlabelled: a weak random mix of mean contrast energy and category presence.

*Betas*: ``(ncsnr * z + noise) / sqrt(1 + ncsnr^2)`` per trial (unit variance like NSD's z-scored
betas), noise = 60% independent + 30% spatially smooth on the mesh + 10% global per trial (in
variance). ``ncsnr`` is drawn per vertex so that the noise ceiling of single trials (n = 1) is
40-80% (early visual, category ROIs) or 5-35% (unlabelled). The training betas are single trials;
a subset of ``max(20, images // 6)`` images has 3 trials in ``*_repeats_fmri.npy`` (trial 0 is the
training beta).

Ground truth (``synth_ground_truth.nc``; load with :func:`load_ground_truth`)
------------------------------------------------------------------------------
Dims: ``vertex`` (same order as ``open_algonauts``'s betas), ``image`` (training rows),
``test_image``, ``object`` (3 slots), ``category`` (faces, bodies, places, words), ``box``
(x0, y0, x1, y1). All positions and sizes in normalised image coordinates: x right, y down, in
[0, 1]; size = object diameter / image width.

Per vertex: coords ``hemisphere``, ``hemi_vertex``, ``fsaverage_index``; ``roi`` (str, ROI name or
"Unknown"), ``roi_family`` (str or "none"), ``vertex_kind`` ("prf", "category", "unlabelled"),
``prf_x``, ``prf_y``, ``prf_size`` (Gaussian sd), ``prf_ecc`` (distance from the image centre),
``prf_angle`` (polar angle, deg, counter-clockwise from the right horizontal) -- NaN outside the
early visual ROIs; ``category_weight`` (vertex, category); ``preferred_category`` (str or "none");
``preferred_size``, ``size_tuning_width`` (ln units), ``ecc_slope`` -- NaN outside category ROIs;
``contrast_weight``; ``driving_feature`` (str: ``colour``, ``energy``, ``objects``, ``mixed``)
and ``driving_stage`` (int: the embedded backbone's stage that carries that feature, 0 colour,
1 energy; -1 for objects and mixtures, which no single stage carries); ``ncsnr``; ``noise_ceiling`` (true NC in percent for n = 1); ``signal_sd``
and ``noise_sd`` (betas units).

Per image (``image``, coords ``image_id``) and per test image (``test_image``, coords
``test_image_id``; variable names prefixed ``test_``): ``n_objects``; ``object_category``
(image, object; "none" for empty slots); ``object_x``, ``object_y``, ``object_size`` (NaN for empty
slots); ``object_box`` (image, object, box); ``category_count`` (image, category) number of
objects; ``category_area`` (image, category) summed box area as a fraction of the image;
``contrast_energy`` (image) mean local contrast energy. ``test_response`` (test_image, vertex)
is the noise-free response in betas units (the best any model can predict).

:func:`object_masks` turns the object boxes into per-category masks on a token grid, the
routing target of each category ROI (which image region drives it).
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import xarray as xr

from brainattn.data.synth_images import (
    CATEGORIES,
    ENERGY_GRID,
    chroma_energy,
    contrast_energy,
    render_image,
)
from brainattn.errors import ConfigError, DataError
from brainattn.io import atomic_dir, check_output_dir, load_netcdf
from brainattn.utils import progress

GROUND_TRUTH_FILE = "synth_ground_truth.nc"
#: the embedded backbone's stage (``brainattn.encoders.backbones.GABOR_STAGES``) that carries
#: each planted driving feature; objects and mixtures have none
DRIVING_STAGE = {"colour": 0, "energy": 1, "objects": -1, "mixed": -1}
MANIFEST_FILE = "synth.json"
N_OBJECT_SLOTS = 3
N_TRIALS = 3

ROI_FAMILIES: dict[str, list[str]] = {
    "prf-visualrois": ["V1v", "V1d", "V2v", "V2d", "V3v", "V3d", "hV4"],
    "floc-bodies": ["EBA", "FBA-1", "FBA-2", "mTL-bodies"],
    "floc-faces": ["OFA", "FFA-1", "FFA-2", "mTL-faces", "aTL-faces"],
    "floc-places": ["OPA", "PPA", "RSC"],
    "floc-words": ["OWFA", "VWFA-1", "VWFA-2", "mfs-words", "mTL-words"],
}
FAMILY_CATEGORY = {
    "floc-bodies": "bodies", "floc-faces": "faces", "floc-places": "places", "floc-words": "words"
}

# Early visual wedges: angle psi around the occipital pole (deg, 0 = medial, + = superior) ->
# (ROI, psi range, visual polar angle at the range's ends (deg)). Dorsal = lower visual field.
_EV_WEDGES = [
    ("V1d", (0, 30), (0, -90)), ("V2d", (30, 55), (-90, 0)), ("V3d", (55, 80), (0, -90)),
    ("V1v", (-30, 0), (90, 0)), ("V2v", (-55, -30), (0, 90)), ("V3v", (-80, -55), (90, 0)),
    ("hV4", (-125, -80), (-90, 90)),
]
_PRF_SIZE = {"V1": (0.012, 0.08), "V2": (0.018, 0.12), "V3": (0.025, 0.17), "hV4": (0.04, 0.25)}
# Category ROI seeds: (psi deg, distance from the pole in units of the early-visual cap radius).
_CAT_SEEDS = {  # lateral occipital (psi ~ 180) vs ventral temporal (psi ~ -90 .. -130)
    "OFA": (170, 1.2), "FFA-1": (-118, 1.4), "FFA-2": (-122, 1.7), "mTL-faces": (-128, 2.0),
    "aTL-faces": (-132, 2.35), "EBA": (150, 1.3), "FBA-1": (-103, 1.45), "FBA-2": (-105, 1.75),
    "mTL-bodies": (-110, 2.05), "OPA": (125, 1.3), "PPA": (-85, 1.5), "RSC": (40, 1.35),
    "OWFA": (-165, 1.3), "VWFA-1": (-135, 1.5), "VWFA-2": (-140, 1.8), "mfs-words": (-95, 2.0),
    "mTL-words": (-145, 2.2),
}
_PREF_SIZE = {"faces": 0.22, "bodies": 0.3, "places": 0.4, "words": 0.2}
_ECC_SLOPE = {"faces": -0.8, "bodies": 0.0, "places": 0.8, "words": -0.8}
_CROSS = {  # weight of the non-preferred categories (faces and bodies cross-respond)
    "faces": {"bodies": 0.3}, "bodies": {"faces": 0.3}, "places": {}, "words": {"faces": 0.1},
}


def _fsaverage5_sphere(hemi: str) -> tuple[np.ndarray, np.ndarray]:
    """Sphere coordinates (10242, 3) and faces of nilearn's bundled fsaverage5 (no download)."""
    import nibabel as nib
    import nilearn

    name = {"lh": "left", "rh": "right"}[hemi]
    path = Path(nilearn.__file__).parent / "datasets" / "data" / "fsaverage5" / f"sphere_{name}.gii.gz"
    if path.is_file():
        g = nib.load(str(path))
        return np.asarray(g.darrays[0].data, dtype=np.float64), np.asarray(g.darrays[1].data)
    from nilearn import datasets  # pragma: no cover - older/newer nilearn layouts

    mesh = datasets.load_fsaverage("fsaverage5")["sphere"].parts[name]  # pragma: no cover
    return np.asarray(mesh.coordinates, float), np.asarray(mesh.faces)  # pragma: no cover


def _layout_hemisphere(hemi: str, rng: np.random.Generator, n_ev_roi: int, n_category_roi: int,
                       n_unlabelled: int) -> dict:
    """Choose the written vertices of one hemisphere and their ROI, pRF and tuning."""
    xyz, faces = _fsaverage5_sphere(hemi)
    v = xyz / np.linalg.norm(xyz, axis=1, keepdims=True)
    lat = -1.0 if hemi == "lh" else 1.0  # lateral direction along x
    pole = np.array([0.25 * lat, -1.0, -0.15]) + rng.normal(0, 0.03, 3)
    pole /= np.linalg.norm(pole)
    up = np.array([0.0, 0.0, 1.0])
    up = up - up.dot(pole) * pole
    up /= np.linalg.norm(up)
    med = np.array([-lat, 0.0, 0.0])
    med = med - med.dot(pole) * pole - med.dot(up) * up
    med /= np.linalg.norm(med)
    d = np.arccos(np.clip(v @ pole, -1, 1))  # rad from the pole
    t = v - np.outer(v @ pole, pole)
    psi = np.degrees(np.arctan2(t @ up, t @ med))  # 0 = medial, +90 = superior

    in_wedges = (psi > -125) & (psi < 80)
    n_cap_target = int(n_ev_roi * len(_EV_WEDGES) * 1.0)
    order = np.argsort(np.where(in_wedges, d, np.inf))
    cap_radius = float(d[order[n_cap_target - 1]])
    n_vert = v.shape[0]
    roi = np.full(n_vert, "", dtype=object)
    family = np.full(n_vert, "", dtype=object)
    prf = np.full((n_vert, 4), np.nan)  # x, y, size, angle
    for name, (p0, p1), (a0, a1) in _EV_WEDGES:
        sel = np.flatnonzero((d <= cap_radius) & (psi >= min(p0, p1)) & (psi < max(p0, p1)))
        roi[sel], family[sel] = name, "prf-visualrois"
        frac = (psi[sel] - p0) / (p1 - p0)
        angle = a0 + frac * (a1 - a0)
        rel = d[sel] / cap_radius
        ecc = 0.48 * (np.exp(1.6 * rel) - 1) / (np.exp(1.6) - 1) + 0.01
        ecc = ecc * np.exp(rng.normal(0, 0.05, sel.size))
        angle = np.clip(angle + rng.normal(0, 4, sel.size), -90, 90)  # contralateral field
        side = 1.0 if hemi == "lh" else -1.0  # lh sees the right half of the image
        x = np.clip(0.5 + side * ecc * np.cos(np.radians(angle)), 0.005, 0.995)
        y = np.clip(0.5 - ecc * np.sin(np.radians(angle)), 0.005, 0.995)
        a, b = _PRF_SIZE[name[:-1] if name != "hV4" else "hV4"]
        size = (a + b * ecc) * np.exp(rng.normal(0, 0.1, sel.size))
        prf[sel] = np.column_stack([x, y, size, np.degrees(np.arctan2(0.5 - y, x - 0.5))])

    # category ROIs: nearest free vertices around each seed
    free = roi == ""
    for fam, names in ROI_FAMILIES.items():
        if fam == "prf-visualrois":
            continue
        for name in names:
            ps, dd = _CAT_SEEDS[name]
            ps = np.radians(ps + rng.normal(0, 3))
            dd = (dd + rng.normal(0, 0.03)) * cap_radius
            dirn = np.cos(ps) * med + np.sin(ps) * up
            seed = np.cos(dd) * pole + np.sin(dd) * dirn
            k = int(round(n_category_roi * np.exp(rng.normal(0, 0.15))))
            dist = np.where(free, np.arccos(np.clip(v @ seed, -1, 1)), np.inf)
            sel = np.argsort(dist, kind="stable")[:k]
            roi[sel], family[sel] = name, fam
            free[sel] = False
    labelled = ~free
    # unlabelled band: the free vertices closest to any labelled vertex
    lab_v = v[labelled]
    closeness = np.full(n_vert, -np.inf)
    for s in range(0, n_vert, 2048):
        closeness[s : s + 2048] = (v[s : s + 2048] @ lab_v.T).max(axis=1)
    closeness[labelled] = -np.inf
    unl = np.argsort(-closeness, kind="stable")[:n_unlabelled]
    keep = np.sort(np.concatenate([np.flatnonzero(labelled), unl]))
    return {
        "fsaverage_index": keep, "roi": roi[keep], "family": family[keep], "prf": prf[keep],
        "faces": faces, "n_mesh": n_vert, "xyz": v,
    }


def _smoothing_operator(faces: np.ndarray, n_mesh: int, rows: np.ndarray, steps: int = 3):
    """Sparse (len(rows), n_mesh) operator averaging over mesh neighbours ``steps`` times,
    scaled so that it maps white noise to unit-variance smooth noise."""
    import scipy.sparse as sp

    i = np.concatenate([faces[:, 0], faces[:, 1], faces[:, 2], faces[:, 1], faces[:, 2], faces[:, 0]])
    j = np.concatenate([faces[:, 1], faces[:, 2], faces[:, 0], faces[:, 0], faces[:, 1], faces[:, 2]])
    a = sp.coo_matrix((np.ones(i.size), (i, j)), shape=(n_mesh, n_mesh)).tocsr()
    a.data[:] = 1.0
    a = a + sp.identity(n_mesh, format="csr")
    a = sp.diags(1.0 / np.asarray(a.sum(axis=1)).ravel()) @ a
    m = a[rows]
    for _ in range(steps - 1):
        m = m @ a
    m = m.tocsr()
    norm = np.sqrt(np.asarray(m.multiply(m).sum(axis=1)).ravel())
    return sp.diags(1.0 / norm) @ m


def _nc_to_ncsnr(nc: np.ndarray) -> np.ndarray:
    return np.sqrt(nc / (100.0 - nc))


def _render_chunk(args):
    seeds, size = args
    from threadpoolctl import threadpool_limits

    out = []
    with threadpool_limits(1):
        for s in seeds:
            img, objs = render_image(s, size)
            out.append((_png_bytes(img), contrast_energy(img), objs, chroma_energy(img)))
    return out


def _png_bytes(img: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img, mode="RGB").save(buf, format="PNG", compress_level=2)
    return buf.getvalue()


def _render_all(seeds, size: int, n_jobs: int):
    chunks = [seeds[i : i + 32] for i in range(0, len(seeds), 32)]
    results = []
    bar = progress(total=len(seeds), desc="synth images")
    if n_jobs > 1 and len(chunks) > 1:
        import multiprocessing as mp

        ctx = mp.get_context("fork") if hasattr(os, "fork") else None
        with ProcessPoolExecutor(max_workers=n_jobs, mp_context=ctx) as ex:
            for res in ex.map(_render_chunk, [(c, size) for c in chunks]):
                results.extend(res)
                bar.update(len(res))
    else:
        for c in chunks:
            res = _render_chunk((c, size))
            results.extend(res)
            bar.update(len(res))
    bar.close()
    return results


def _object_table(objs_list) -> dict[str, np.ndarray]:
    n = len(objs_list)
    cat = np.full((n, N_OBJECT_SLOTS), "none", dtype=object)
    xys = np.full((n, N_OBJECT_SLOTS, 3), np.nan)
    box = np.full((n, N_OBJECT_SLOTS, 4), np.nan)
    count = np.zeros((n, len(CATEGORIES)), dtype=np.int64)
    area = np.zeros((n, len(CATEGORIES)))
    for i, objs in enumerate(objs_list):
        for k, o in enumerate(objs):
            cat[i, k] = o.category
            xys[i, k] = (o.x, o.y, o.size)
            box[i, k] = o.box
            c = CATEGORIES.index(o.category)
            count[i, c] += 1
            area[i, c] += (o.box[2] - o.box[0]) * (o.box[3] - o.box[1])
    return {
        "n_objects": np.array([len(o) for o in objs_list], dtype=np.int64),
        "object_category": cat.astype(str), "object_x": xys[..., 0], "object_y": xys[..., 1],
        "object_size": xys[..., 2], "object_box": box, "category_count": count,
        "category_area": area,
    }


def _subject_model(rng: np.random.Generator, n_ev_roi: int, n_category_roi: int,
                   n_unlabelled: int) -> dict:
    lay = {h: _layout_hemisphere(h, rng, n_ev_roi, n_category_roi, n_unlabelled) for h in ("lh", "rh")}
    roi = np.concatenate([lay[h]["roi"] for h in lay])
    fam = np.concatenate([lay[h]["family"] for h in lay])
    n = roi.size
    kind = np.where(fam == "prf-visualrois", "prf", np.where(fam == "", "unlabelled", "category"))
    cw = np.zeros((n, len(CATEGORIES)))
    pref_cat = np.full(n, "none", dtype=object)
    pref_size = np.full(n, np.nan)
    size_w = np.full(n, np.nan)
    ecc_slope = np.full(n, np.nan)
    contrast_w = np.zeros(n)
    nc = np.zeros(n)
    for i in range(n):
        if kind[i] == "category":
            c = FAMILY_CATEGORY[fam[i]]
            pref_cat[i] = c
            cw[i, CATEGORIES.index(c)] = 1.0
            for other, w in _CROSS[c].items():
                cw[i, CATEGORIES.index(other)] = w * rng.uniform(0.5, 1.0)
            for j in range(len(CATEGORIES)):
                if cw[i, j] == 0:
                    cw[i, j] = rng.uniform(0.0, 0.08)
            pref_size[i] = _PREF_SIZE[c] * np.exp(rng.normal(0, 0.2))
            size_w[i] = rng.uniform(0.45, 0.7)
            ecc_slope[i] = _ECC_SLOPE[c] * rng.uniform(0.5, 1.0)
            contrast_w[i] = rng.uniform(0.05, 0.2)
            nc[i] = rng.uniform(40, 75)
        elif kind[i] == "prf":
            nc[i] = rng.uniform(45, 80)
        else:
            cw[i] = rng.uniform(0, 0.3, len(CATEGORIES))
            contrast_w[i] = rng.uniform(0.2, 1.0)
            nc[i] = rng.uniform(5, 35)
    return {
        "lay": lay, "roi": roi, "family": fam, "kind": kind,
        "prf": np.concatenate([lay[h]["prf"] for h in lay]),
        "category_weight": cw, "preferred_category": pref_cat, "preferred_size": pref_size,
        "size_tuning_width": size_w, "ecc_slope": ecc_slope, "contrast_weight": contrast_w,
        "noise_ceiling": nc, "ncsnr": _nc_to_ncsnr(nc),
        "hemisphere": np.concatenate([np.full(lay[h]["roi"].size, h) for h in lay]),
        "hemi_vertex": np.concatenate([np.arange(lay[h]["roi"].size) for h in lay]),
        "fsaverage_index": np.concatenate([lay[h]["fsaverage_index"] for h in lay]),
    }


def _clean_responses(model: dict, energy: np.ndarray, objs_list, n_train: int,
                     chroma: np.ndarray) -> np.ndarray:
    """(n_stimuli, n_vertices) z-scored noise-free responses (z over the first n_train)."""
    n_img = energy.shape[0]
    n_v = model["roi"].size
    g = energy.shape[1]
    centres = (np.arange(g) + 0.5) / g
    resp = np.zeros((n_img, n_v))
    e_flat = energy.reshape(n_img, -1).astype(np.float64)
    mean_e = e_flat.mean(axis=1)
    mean_e_z = (mean_e - mean_e[:n_train].mean()) / (mean_e[:n_train].std() + 1e-12)
    ev = np.flatnonzero(model["kind"] == "prf")
    px, py, ps = model["prf"][ev, 0], model["prf"][ev, 1], model["prf"][ev, 2]
    gx = np.exp(-((centres[None, :] - px[:, None]) ** 2) / (2 * ps[:, None] ** 2))
    gy = np.exp(-((centres[None, :] - py[:, None]) ** 2) / (2 * ps[:, None] ** 2))
    gx /= gx.sum(axis=1, keepdims=True)
    gy /= gy.sum(axis=1, keepdims=True)
    w = (gy[:, :, None] * gx[:, None, :]).reshape(ev.size, -1)  # (n_ev, g*g), rows y then x
    resp[:, ev] = np.sqrt(np.maximum(e_flat @ w.T, 0.0))
    colour = model["roi"][ev] == "hV4"  # planted: hV4 pools colour, not luminance contrast
    c_flat = chroma.reshape(n_img, -1).astype(np.float64)
    resp[:, ev[colour]] = np.sqrt(np.maximum(c_flat @ w[colour].T, 0.0))

    # per-object drive, vectorised over vertices
    cat_idx = {c: i for i, c in enumerate(CATEGORIES)}
    cv = np.flatnonzero(model["kind"] == "category")
    drive = np.zeros((n_img, cv.size))
    lpref = np.log(model["preferred_size"][cv])
    width = model["size_tuning_width"][cv]
    slope = model["ecc_slope"][cv]
    cw = model["category_weight"][cv]
    for i, objs in enumerate(objs_list):
        for o in objs:
            ecc = np.hypot(o.x - 0.5, o.y - 0.5)
            size_t = np.exp(-((np.log(o.size) - lpref) ** 2) / (2 * width**2))
            drive[i] += cw[:, cat_idx[o.category]] * size_t * (1 + slope * (ecc - 0.25))
    resp[:, cv] = 1 - np.exp(-1.5 * drive) + model["contrast_weight"][cv] * 0.3 * mean_e_z[:, None]

    un = np.flatnonzero(model["kind"] == "unlabelled")
    present = np.zeros((n_img, len(CATEGORIES)))
    for i, objs in enumerate(objs_list):
        for o in objs:
            present[i, cat_idx[o.category]] = 1.0
    resp[:, un] = present @ model["category_weight"][un].T + (
        model["contrast_weight"][un] * 0.5 * mean_e_z[:, None]
    )
    mu = resp[:n_train].mean(axis=0)
    sd = resp[:n_train].std(axis=0)
    sd[sd < 1e-12] = 1.0
    return (resp - mu) / sd


def _noise(rng, model, n_trials: int, smoothers) -> np.ndarray:
    """(n_trials, n_vertices) float32 unit-variance noise: independent + mesh-smooth + global."""
    n_v = model["roi"].size
    out = rng.standard_normal((n_trials, n_v), dtype=np.float32)
    out *= np.float32(np.sqrt(0.6))
    col = 0
    for h, sm in smoothers.items():
        n_h = sm.shape[0]
        smf = (sm * np.sqrt(0.3)).astype(np.float32)
        for s in range(0, n_trials, 512):  # bounded memory: 512 trials of white mesh noise
            white = rng.standard_normal((min(512, n_trials - s), model["lay"][h]["n_mesh"]),
                                        dtype=np.float32)
            out[s : s + white.shape[0], col : col + n_h] += np.asarray((smf @ white.T).T)
        col += n_h
    out += np.float32(np.sqrt(0.1)) * rng.standard_normal((n_trials, 1), dtype=np.float32)
    return out


def _check_args(subjects: int, images: int, image_size: int, seed: int) -> None:
    for name, val, lo in (("subjects", subjects, 1), ("images", images, 8), ("image_size", image_size, 32)):
        if not isinstance(val, (int, np.integer)) or isinstance(val, bool) or val < lo:
            raise ConfigError(f"{name}: expected an integer >= {lo}, got {val!r}")
    if subjects > 99:
        raise ConfigError(f"subjects: at most 99, got {subjects}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed: expected a non-negative integer, got {seed!r}")


def generate(
    out: str | os.PathLike,
    subjects: int = 2,
    images: int = 2000,
    seed: int = 0,
    image_size: int = 224,
    overwrite: bool = False,
    *,
    test_images: int | None = None,
    n_ev_roi: int = 150,
    n_category_roi: int = 100,
    n_unlabelled: int = 700,
    n_jobs: int | None = None,
) -> Path:
    """Write the synthetic visual cortex (see the module docstring) into ``out``.

    Parameters
    ----------
    out : output folder; refused if it exists and is not empty, unless ``overwrite``.
    subjects : number of subjects ``subj01``...; images : training images (with betas).
    seed : same seed -> byte-identical data files.
    image_size : image side in pixels.
    test_images : images without betas (default ``max(4, images // 20)``).
    n_ev_roi, n_category_roi, n_unlabelled : approximate vertices per early visual ROI, per
        category ROI and unlabelled vertices, per hemisphere.
    n_jobs : processes rendering images (default: up to 2).

    Returns the output folder.
    """
    _check_args(subjects, images, image_size, seed)
    check_output_dir(out, overwrite=overwrite)  # refuse before minutes of work, not after
    n_test = max(4, images // 20) if test_images is None else int(test_images)
    n_jobs = n_jobs or min(2, os.cpu_count() or 1)
    ss = np.random.SeedSequence(int(seed))
    img_ss, *subj_ss = ss.spawn(1 + subjects)
    n_stim = images + n_test
    rendered = _render_all(img_ss.spawn(n_stim), image_size, n_jobs)
    pngs = [r[0] for r in rendered]
    energy = np.stack([r[1] for r in rendered])
    chroma = np.stack([r[3] for r in rendered])
    objs_list = [r[2] for r in rendered]
    width = max(4, len(str(n_stim)))
    names = [f"train-{i + 1:0{width}d}_synth-{i:0{width + 1}d}.png" for i in range(images)]
    test_names = [
        f"test-{i + 1:0{width}d}_synth-{images + i:0{width + 1}d}.png" for i in range(n_test)
    ]
    table = _object_table(objs_list)
    out = Path(out)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        from brainattn import __version__

        manifest = {
            "generator": "brainattn.data.synth", "brainattn_version": __version__,
            "seed": int(seed), "subjects": int(subjects), "images": int(images),
            "test_images": int(n_test), "image_size": int(image_size),
            "n_trials_repeats": N_TRIALS, "mesh": "fsaverage5",
        }
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        first_img_dirs = None
        for s in range(subjects):
            subject = f"subj{s + 1:02d}"
            sub = tmp / subject
            img_dirs = (sub / "training_split" / "training_images", sub / "test_split" / "test_images")
            for d in img_dirs:
                d.mkdir(parents=True)
            if first_img_dirs is None:
                for d, nm, lo in ((img_dirs[0], names, 0), (img_dirs[1], test_names, images)):
                    for k, n in enumerate(nm):
                        (d / n).write_bytes(pngs[lo + k])
                first_img_dirs = img_dirs
            else:  # same images for every subject: hard links where possible
                for src, dst in zip(first_img_dirs, img_dirs, strict=True):
                    for f in sorted(src.iterdir()):
                        try:
                            os.link(f, dst / f.name)
                        except OSError:
                            (dst / f.name).write_bytes(f.read_bytes())
            _write_subject(sub, subject, subj_ss[s], energy, objs_list, table, images, n_test,
                           names, test_names, n_ev_roi, n_category_roi, n_unlabelled, seed,
                           chroma=chroma)
    return out


def _write_subject(sub, subject, ss, energy, objs_list, table, n_train, n_test, names, test_names,
                   n_ev_roi, n_category_roi, n_unlabelled, seed, *, chroma) -> None:
    rng = np.random.default_rng(ss)
    model = _subject_model(rng, n_ev_roi, n_category_roi, n_unlabelled)
    z = _clean_responses(model, energy, objs_list, n_train, chroma)
    ncsnr = model["ncsnr"]
    scale = 1.0 / np.sqrt(1.0 + ncsnr**2)
    signal = z * (ncsnr * scale)[None, :]
    smoothers = {
        h: _smoothing_operator(model["lay"][h]["faces"], model["lay"][h]["n_mesh"],
                               model["lay"][h]["fsaverage_index"])
        for h in ("lh", "rh")
    }
    n_rep = min(n_train, max(20, n_train // 6))
    rep_idx = np.sort(rng.choice(n_train, size=n_rep, replace=False))
    noise = _noise(rng, model, n_train + (N_TRIALS - 1) * n_rep, smoothers) * scale[None, :]
    betas = (signal[:n_train] + noise[:n_train]).astype(np.float32)
    extra = noise[n_train:].reshape(N_TRIALS - 1, n_rep, -1).transpose(1, 0, 2)
    repeats = np.concatenate([betas[rep_idx][:, None], (signal[rep_idx][:, None] + extra)], axis=1)
    repeats = repeats.astype(np.float32)

    hemi = model["hemisphere"]
    fmri = sub / "training_split" / "training_fmri"
    fmri.mkdir(parents=True)
    roi_dir = sub / "roi_masks"
    roi_dir.mkdir()
    for h in ("lh", "rh"):
        m = hemi == h
        # C order like Algonauts' files: a memory-mapped row (one image) is contiguous
        np.save(fmri / f"{h}_training_fmri.npy", np.ascontiguousarray(betas[:, m]), allow_pickle=False)
        np.save(fmri / f"{h}_repeats_fmri.npy", np.ascontiguousarray(repeats[:, :, m]),
                allow_pickle=False)
        mask = np.zeros(model["lay"][h]["n_mesh"], dtype=bool)
        mask[model["lay"][h]["fsaverage_index"]] = True
        np.save(roi_dir / f"{h}.all-vertices_fsaverage_space.npy", mask, allow_pickle=False)
    np.save(fmri / "repeats_image_index.npy", rep_idx.astype(np.int64), allow_pickle=False)
    for fam, rois in ROI_FAMILIES.items():
        mapping = {0: "Unknown", **{i + 1: r for i, r in enumerate(rois)}}
        lab_of = {r: i + 1 for i, r in enumerate(rois)}
        labels = np.array(
            [lab_of.get(r, 0) if f == fam else 0 for r, f in zip(model["roi"], model["family"], strict=True)],
            dtype=np.int32,
        )
        for h in ("lh", "rh"):
            np.save(roi_dir / f"{h}.{fam}_challenge_space.npy", labels[hemi == h], allow_pickle=False)
        np.save(roi_dir / f"mapping_{fam}.npy", mapping, allow_pickle=True)

    gt = _ground_truth(model, table, energy, signal, n_train, n_test, names, test_names, scale,
                       subject, seed, n_rep)
    _save_ground_truth(gt, sub / GROUND_TRUTH_FILE)


def _save_ground_truth(ds: xr.Dataset, path: Path) -> None:
    # Like brainattn.io.save_netcdf, but with deterministic provenance (no clock, no torch
    # import): the ground truth is a pure function of the seed and the package version.
    from brainattn import __version__
    from brainattn.io import _netcdf_safe_attrs, atomic_path

    ds.attrs["brainattn_version"] = __version__
    ds.attrs = _netcdf_safe_attrs(dict(ds.attrs))
    with atomic_path(path) as tmp:
        ds.to_netcdf(tmp, engine="h5netcdf", invalid_netcdf=True)


def _ground_truth(model, table, energy, signal, n_train, n_test, names, test_names, scale,
                  subject, seed, n_rep) -> xr.Dataset:
    tr, te = slice(0, n_train), slice(n_train, n_train + n_test)
    roi = np.where(model["roi"] == "", "Unknown", model["roi"]).astype(str)
    fam = np.where(model["family"] == "", "none", model["family"]).astype(str)
    prf = model["prf"]
    ecc = np.hypot(prf[:, 0] - 0.5, prf[:, 1] - 0.5)
    ds = xr.Dataset(
        coords={
            "vertex": np.arange(roi.size),
            "hemisphere": ("vertex", model["hemisphere"].astype(str)),
            "hemi_vertex": ("vertex", model["hemi_vertex"]),
            "fsaverage_index": ("vertex", model["fsaverage_index"]),
            "image": np.arange(n_train),
            "image_id": ("image", np.array([n[:-4] for n in names], dtype=str)),
            "test_image": np.arange(n_test),
            "test_image_id": ("test_image", np.array([n[:-4] for n in test_names], dtype=str)),
            "category": np.array(CATEGORIES, dtype=str),
            "box": np.array(["x0", "y0", "x1", "y1"], dtype=str),
            "object": np.arange(N_OBJECT_SLOTS),
        }
    )
    v = ("vertex",)
    ds["roi"] = v, roi
    ds["roi_family"] = v, fam
    ds["vertex_kind"] = v, model["kind"].astype(str)
    ds["prf_x"] = v, prf[:, 0], {"units": "image width (0 left, 1 right)"}
    ds["prf_y"] = v, prf[:, 1], {"units": "image height (0 top, 1 bottom)"}
    ds["prf_size"] = v, prf[:, 2], {"units": "image width", "long_name": "Gaussian pRF sd"}
    ds["prf_ecc"] = v, ecc, {"units": "image width"}
    ds["prf_angle"] = v, prf[:, 3], {"units": "deg"}
    ds["category_weight"] = ("vertex", "category"), model["category_weight"]
    ds["preferred_category"] = v, model["preferred_category"].astype(str)
    ds["preferred_size"] = v, model["preferred_size"], {"units": "image width (object diameter)"}
    ds["size_tuning_width"] = v, model["size_tuning_width"], {"units": "ln size"}
    ds["ecc_slope"] = v, model["ecc_slope"], {"units": "1 / image width"}
    ds["contrast_weight"] = v, model["contrast_weight"]
    feature = np.where(model["kind"] == "category", "objects",
                       np.where(model["kind"] == "unlabelled", "mixed",
                                np.where(roi == "hV4", "colour", "energy"))).astype(str)
    ds["driving_feature"] = v, feature
    ds["driving_stage"] = v, np.asarray([DRIVING_STAGE[f] for f in feature], dtype=np.int64), {
        "long_name": "stage of the embedded gabor backbone carrying the driving feature"}
    ds["ncsnr"] = v, model["ncsnr"]
    ds["noise_ceiling"] = v, model["noise_ceiling"], {"units": "percent", "n_trials": 1}
    ds["signal_sd"] = v, model["ncsnr"] * scale
    ds["noise_sd"] = v, scale
    for prefix, sl, dim in (("", tr, "image"), ("test_", te, "test_image")):
        for k, arr in table.items():
            dims = {1: (dim,), 2: (dim, "object" if k.startswith("object") else "category"),
                    3: (dim, "object", "box")}[arr.ndim]
            ds[prefix + k] = dims, arr[sl]
        ds[prefix + "contrast_energy"] = (dim,), energy[sl].reshape(energy[sl].shape[0], -1).mean(axis=1)
    ds["test_response"] = ("test_image", "vertex"), signal[te].astype(np.float32), {
        "long_name": "noise-free response", "units": "betas"
    }
    ds.attrs.update(
        subject=subject, seed=int(seed), categories=list(CATEGORIES), n_repeat_images=int(n_rep),
        n_trials_repeats=N_TRIALS, energy_grid=ENERGY_GRID,
        coordinates="normalised image coordinates: x right, y down, in [0, 1]",
        command=f"brainattn.data.synth.generate(seed={int(seed)})",
    )
    return ds


def load_ground_truth(root: str | os.PathLike, subject: str = "subj01") -> xr.Dataset:
    """Load ``root/subject/synth_ground_truth.nc`` (variables: see the module docstring)."""
    path = Path(root) / subject / GROUND_TRUTH_FILE
    if not path.is_file():
        raise DataError(f"{path}: no such file (not a synthetic data set written by brainattn)")
    return load_netcdf(path)


def object_masks(gt: xr.Dataset, grid: int = 16, *, split: str = "train") -> xr.DataArray:
    """Per-category object masks on a ``grid x grid`` token grid: the routing targets.

    Returns (image, category, y, x) float32: the fraction of each grid cell covered by the
    boxes of that category's objects (clipped to 1). ``split``: "train" or "test".
    """
    if split not in ("train", "test"):
        raise ConfigError(f"split: expected 'train' or 'test', got {split!r}")
    p = "" if split == "train" else "test_"
    dim = "image" if split == "train" else "test_image"
    cats = list(gt["category"].values)
    box = gt[p + "object_box"].values  # (n, slot, 4)
    cat = gt[p + "object_category"].values.astype(str)
    edges = np.arange(grid + 1) / grid
    lo, hi = edges[:-1], edges[1:]
    out = np.zeros((box.shape[0], len(cats), grid, grid), dtype=np.float32)
    for i in range(box.shape[0]):
        for k in range(box.shape[1]):
            if cat[i, k] not in cats:
                continue
            x0, y0, x1, y1 = box[i, k]
            fx = np.clip(np.minimum(hi, x1) - np.maximum(lo, x0), 0, None) * grid
            fy = np.clip(np.minimum(hi, y1) - np.maximum(lo, y0), 0, None) * grid
            c = cats.index(cat[i, k])
            out[i, c] = np.minimum(1.0, out[i, c] + fy[:, None] * fx[None, :])
    return xr.DataArray(
        out, dims=(dim, "category", "y", "x"),
        coords={dim: gt[dim].values, "category": cats, "y": (lo + hi) / 2, "x": (lo + hi) / 2},
        name=p + "object_mask",
    )
