"""Reader and writer for the Algonauts-2023 / NSD layout.

Layout of one subject (``root/subjXX``)::

    training_split/training_fmri/{lh,rh}_training_fmri.npy     (n_images, n_vertices_h) betas
    training_split/training_fmri/{lh,rh}_noise_ceiling.npy     optional, (n_vertices_h,) percent
    training_split/training_fmri/{lh,rh}_repeats_fmri.npy      optional, (n_repeat, n_trials,
                                                                n_vertices_h) single-trial betas
    training_split/training_fmri/repeats_image_index.npy       optional, (n_repeat,) int rows of
                                                                the training images repeated
    training_split/training_images/*.png                       one image per betas row, in
                                                                sorted file-name order
    test_split/test_images/*.png                               images without betas
    roi_masks/{lh,rh}.<family>_challenge_space.npy             (n_vertices_h,) int label
    roi_masks/mapping_<family>.npy                             pickled dict label -> ROI name
    roi_masks/{lh,rh}.all-vertices_fsaverage_space.npy         optional, bool mask over the
                                                                fsaverage mesh (gives coord
                                                                ``fsaverage_index``)

The ``*_noise_ceiling.npy`` and ``*_repeats_fmri.npy`` files are brainattn's additions (the
public Algonauts release has neither): a noise-ceiling file is used as it is; otherwise the noise
ceiling is computed from the repeats with NSD's ncsnr for single-trial betas (n = 1, see
:mod:`brainattn.data.noise_ceiling`). Mapping files are read with a restricted unpickler
(:func:`brainattn.io.load_plain_pickle`) that never runs code.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import xarray as xr

from brainattn.data._lazy import count_nonfinite, lazy_betas
from brainattn.errors import DataError, ShapeError
from brainattn.io import atomic_dir, load_npy, load_plain_pickle

HEMIS = ("lh", "rh")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_FSAVERAGE_MESHES = {2562: "fsaverage4", 10242: "fsaverage5", 40962: "fsaverage6", 163842: "fsaverage"}


def subject_dir(root: str | os.PathLike, subject: str) -> Path:
    """``root/subject``, or ``root`` itself when it already is a subject folder."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such folder (expected an Algonauts-layout data set root)")
    sub = root / subject
    if sub.is_dir():
        return sub
    if (root / "training_split").is_dir() and root.name == subject:
        return root
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name.startswith("subj"))
    raise DataError(
        f"{sub}: no such subject folder (found: {', '.join(found) or 'no subjXX folders'})"
    )


def list_subjects(root: str | os.PathLike) -> list[str]:
    """Names of the ``subjXX`` folders under ``root`` holding a ``training_split``."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such folder (expected an Algonauts-layout data set root)")
    return sorted(
        p.name for p in root.iterdir() if p.is_dir() and (p / "training_split").is_dir()
    )


def _list_images(folder: Path, what: str, required: bool = True) -> list[str]:
    """Sorted file names of the images in ``folder`` (plain strings: fast for 10,000 files)."""
    if not folder.is_dir():
        if required:
            raise DataError(f"{folder}: missing {what} folder")
        return []
    return sorted(n for n in os.listdir(folder) if os.path.splitext(n)[1].lower() in IMAGE_SUFFIXES)


def _roi_families(roi_dir: Path) -> list[str]:
    fams = []
    for p in sorted(roi_dir.glob("mapping_*.npy")):
        fams.append(p.name[len("mapping_") : -len(".npy")])
    return fams


def _load_labels_npy(path: Path, n: int, mapping: dict, mapping_path: Path) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"{path}: missing ROI mask file (its mapping {mapping_path.name} exists)")
    lab = load_npy(path)
    if lab.ndim != 1:
        raise ShapeError(f"{path}: ROI mask must be 1-D (one label per vertex), got shape {lab.shape}")
    if lab.shape[0] != n:
        raise ShapeError(
            f"{path}: ROI mask has {lab.shape[0]} vertices but the betas of this hemisphere have {n}"
        )
    if lab.dtype.kind == "f":
        if not np.all(np.isfinite(lab)) or np.any(lab != np.round(lab)):
            raise DataError(f"{path}: ROI labels must be integers")
    lab = lab.astype(np.int64)
    unknown = sorted(set(np.unique(lab).tolist()) - set(mapping) - {0})
    if unknown:
        raise DataError(
            f"{path}: labels {unknown[:5]} are not in {mapping_path.name} (keys {sorted(mapping)[:8]})"
        )
    return lab


def _load_mapping(path: Path) -> dict[int, str]:
    raw = load_plain_pickle(path)
    out: dict[int, str] = {}
    for k, v in raw.items():
        if isinstance(k, bool) or not isinstance(k, (int, float)) or int(k) != k:
            raise DataError(f"{path}: mapping keys must be integer labels, got {k!r}")
        if not isinstance(v, str):
            raise DataError(f"{path}: mapping values must be ROI names (str), got {v!r} for {k}")
        out[int(k)] = v
    return out


def open_algonauts(
    root: str | os.PathLike,
    subject: str = "subj01",
    *,
    drop_nonfinite: bool = False,
    allow_empty_rois: bool = False,
) -> xr.Dataset:
    """Open one subject of an Algonauts-2023 / NSD layout data set, memory-mapped and lazy.

    Parameters
    ----------
    root : the data set folder holding ``subjXX`` folders (or a subject folder itself).
    subject : e.g. ``"subj01"``.
    drop_nonfinite : scan the betas (reads them once) and drop vertices holding NaN/Inf; their
        count goes into ``attrs["n_dropped_nonfinite"]``. Without it nothing is read at open and
        any read that meets NaN/Inf raises :class:`~brainattn.errors.DataError` with counts.
    allow_empty_rois : accept ROIs named in a mapping file that have no vertex in either
        hemisphere (listed in ``attrs["empty_rois"]``); by default they are an error.

    Returns
    -------
    xarray.Dataset with dims ``image`` (training images) and ``vertex`` (lh vertices, then rh):

    - ``betas`` (image, vertex) float32, lazily indexed memory maps (read on access);
    - ``noise_ceiling`` (vertex) float32 percent 0-100, when the data set has one;
    - ``repeats`` (repeat, trial, vertex) single-trial betas of repeated images, when present,
      with coord ``repeat_image`` (repeat) = row of the repeated training image;
    - coords ``image`` (0..n-1), ``image_id`` (file stem), ``image_path`` (str), ``hemisphere``
      ("lh"/"rh"), ``hemi_vertex`` (index within its hemisphere), ``roi_<family>`` per ROI family
      (ROI name, the mapping's name for label 0 -- normally "Unknown" -- where unlabelled; the
      mapping dict is in the coord's ``attrs["mapping"]``), ``fsaverage_index`` when the
      ``all-vertices_fsaverage_space`` masks exist;
    - attrs ``subject``, ``root``, ``roi_families``, ``test_image_paths`` (list of str).
    """
    sub = subject_dir(root, subject)
    train = sub / "training_split"
    fmri_dir = train / "training_fmri"
    if not fmri_dir.is_dir():
        raise DataError(f"{fmri_dir}: missing folder (expected {{lh,rh}}_training_fmri.npy inside)")
    parts, names = [], []
    for h in HEMIS:
        p = fmri_dir / f"{h}_training_fmri.npy"
        if not p.is_file():
            raise DataError(f"{p}: missing betas file")
        arr = load_npy(p, mmap=True)
        if arr.ndim != 2:
            raise ShapeError(f"{p}: betas must be 2-D (images, vertices), got shape {arr.shape}")
        if arr.dtype.kind != "f":
            raise DataError(f"{p}: betas must be floating point, got {arr.dtype}")
        parts.append(arr)
        names.append(str(p))
    if parts[0].shape[0] != parts[1].shape[0]:
        raise ShapeError(
            f"{names[0]} has {parts[0].shape[0]} images but {names[1]} has {parts[1].shape[0]}"
        )
    img_dir = train / "training_images"
    images = _list_images(img_dir, "training images")
    if len(images) != parts[0].shape[0]:
        raise ShapeError(
            f"{names[0]}: betas have {parts[0].shape[0]} images (rows) but "
            f"{train / 'training_images'} holds {len(images)} images; they must match one to one"
        )
    test_dir = sub / "test_split" / "test_images"
    test_images = _list_images(test_dir, "test images", required=False)
    n_h = [int(a.shape[1]) for a in parts]
    n_img = parts[0].shape[0]

    coords: dict[str, tuple] = {
        "image": ("image", np.arange(n_img)),
        "image_id": ("image", np.array([os.path.splitext(n)[0] for n in images], dtype=str)),
        "image_path": ("image", np.char.add(str(img_dir) + os.sep, np.array(images, dtype=str))),
        "hemisphere": ("vertex", np.repeat(np.array(HEMIS), n_h)),
        "hemi_vertex": ("vertex", np.concatenate([np.arange(n) for n in n_h])),
    }

    roi_dir = sub / "roi_masks"
    families: list[str] = []
    roi_attrs: dict[str, dict] = {}
    empty: list[str] = []
    if roi_dir.is_dir():
        for fam in _roi_families(roi_dir):
            mpath = roi_dir / f"mapping_{fam}.npy"
            mapping = _load_mapping(mpath)
            labs = [
                _load_labels_npy(roi_dir / f"{h}.{fam}_challenge_space.npy", n, mapping, mpath)
                for h, n in zip(HEMIS, n_h, strict=True)
            ]
            lab = np.concatenate(labs)
            if not np.any(lab != 0):
                raise DataError(
                    f"{roi_dir}/{{lh,rh}}.{fam}_challenge_space.npy: ROI family '{fam}' labels no "
                    "vertex at all (every label is 0); remove the family or fix the masks"
                )
            for k, name in mapping.items():
                if k != 0 and not np.any(lab == k):
                    empty.append(f"{fam}/{name}")
            lut = dict(mapping)
            lut.setdefault(0, "Unknown")
            uniq, inv = np.unique(lab, return_inverse=True)
            name_of = np.array([lut[int(u)] for u in uniq], dtype=str)
            coords[f"roi_{fam}"] = ("vertex", name_of[inv])
            roi_attrs[f"roi_{fam}"] = {"mapping": dict(sorted(mapping.items()))}
            families.append(fam)
    if empty and not allow_empty_rois:
        raise DataError(
            f"{roi_dir}: ROI {empty[0]} has no vertex in either hemisphere"
            + (f" (and {len(empty) - 1} more)" if len(empty) > 1 else "")
            + "; pass allow_empty_rois=True to accept empty ROIs"
        )

    fs_masks = [roi_dir / f"{h}.all-vertices_fsaverage_space.npy" for h in HEMIS]
    fsaverage_mesh = None
    if all(p.is_file() for p in fs_masks):
        idx = []
        for p, n in zip(fs_masks, n_h, strict=True):
            m = load_npy(p)
            if m.ndim != 1 or int(np.count_nonzero(m)) != n:
                raise ShapeError(
                    f"{p}: fsaverage mask selects {int(np.count_nonzero(m))} vertices but the betas "
                    f"of this hemisphere have {n}"
                )
            idx.append(np.flatnonzero(m))
            fsaverage_mesh = _FSAVERAGE_MESHES.get(int(m.shape[0]))
        coords["fsaverage_index"] = ("vertex", np.concatenate(idx))

    data_vars: dict[str, xr.Variable] = {
        "betas": xr.Variable(
            ("image", "vertex"), lazy_betas(parts, names), attrs={"long_name": "fMRI betas"}
        )
    }
    nc = _load_noise_ceiling(fmri_dir, n_h)
    repeats = _load_repeats(fmri_dir, n_h, n_img)
    if repeats is not None:
        rep, rep_idx = repeats
        data_vars["repeats"] = xr.Variable(
            ("repeat", "trial", "vertex"), rep, attrs={"long_name": "single-trial betas of repeats"}
        )
        coords["repeat_image"] = ("repeat", rep_idx)
        if nc is None:
            from brainattn.data.noise_ceiling import ncsnr, noise_ceiling

            with np.errstate(all="ignore"):
                nc = noise_ceiling(ncsnr(rep.astype(np.float64), check=False), n=1).astype(np.float32)
    if nc is not None:
        data_vars["noise_ceiling"] = xr.Variable(
            ("vertex",), nc, attrs={"units": "percent", "long_name": "noise ceiling (n = 1 trial)"}
        )

    ds = xr.Dataset(data_vars, coords=coords)
    for k, a in roi_attrs.items():
        ds[k].attrs.update(a)
    ds.attrs.update(
        subject=subject,
        root=str(Path(root)),
        roi_families=families,
        test_image_paths=[os.path.join(test_dir, n) for n in test_images],
    )
    if fsaverage_mesh:
        ds.attrs["fsaverage_mesh"] = fsaverage_mesh
    if empty:
        ds.attrs["empty_rois"] = empty
    if drop_nonfinite:
        bad = np.concatenate([count_nonfinite(a) for a in parts])
        if repeats is not None:
            bad = bad + (~np.isfinite(ds["repeats"].values)).sum(axis=(0, 1))
        keep = bad == 0
        ds = ds.isel(vertex=np.flatnonzero(keep))
        ds.attrs["n_dropped_nonfinite"] = int((~keep).sum())
        ds.attrs["n_nonfinite_values"] = int(bad.sum())
    return ds


def _load_noise_ceiling(fmri_dir: Path, n_h: list[int]) -> np.ndarray | None:
    paths = [fmri_dir / f"{h}_noise_ceiling.npy" for h in HEMIS]
    present = [p.is_file() for p in paths]
    if not any(present):
        return None
    if not all(present):
        missing = paths[present.index(False)]
        raise DataError(f"{missing}: missing (the other hemisphere has a noise-ceiling file)")
    out = []
    for p, n in zip(paths, n_h, strict=True):
        a = load_npy(p)
        if a.shape != (n,):
            raise ShapeError(f"{p}: noise ceiling has shape {a.shape}, expected ({n},) like the betas")
        out.append(a.astype(np.float32))
    return np.concatenate(out)


def _load_repeats(fmri_dir: Path, n_h: list[int], n_img: int):
    paths = [fmri_dir / f"{h}_repeats_fmri.npy" for h in HEMIS]
    ipath = fmri_dir / "repeats_image_index.npy"
    present = [p.is_file() for p in paths]
    if not any(present):
        return None
    if not all(present) or not ipath.is_file():
        missing = ([*paths, ipath])[([*present, ipath.is_file()]).index(False)]
        raise DataError(f"{missing}: missing (other repeats files exist)")
    idx = load_npy(ipath)
    if idx.ndim != 1 or idx.dtype.kind not in "iu" or (idx.size and (idx.min() < 0 or idx.max() >= n_img)):
        raise DataError(f"{ipath}: expected 1-D integer rows of training images in [0, {n_img})")
    reps = []
    for p, n in zip(paths, n_h, strict=True):
        a = load_npy(p)
        if a.ndim != 3 or a.shape[0] != idx.size or a.shape[2] != n or a.shape[1] < 2:
            raise ShapeError(
                f"{p}: repeats have shape {a.shape}, expected ({idx.size}, n_trials >= 2, {n})"
            )
        reps.append(a)
    if reps[0].shape[1] != reps[1].shape[1]:
        raise ShapeError(f"{paths[0]} and {paths[1]}: different numbers of trials")
    return np.concatenate(reps, axis=2), idx.astype(np.int64)


# ----------------------------------------------------------------------------------------------
# writer


def _image_name(path: str, image_id: str) -> str:
    suffix = Path(path).suffix or ".png"
    return f"{image_id}{suffix}"


def make_dataset(
    lh_betas,
    rh_betas,
    image_paths,
    *,
    rois: dict[str, tuple] | None = None,
    noise_ceiling=None,
    test_image_paths=(),
    subject: str = "subj01",
) -> xr.Dataset:
    """Build an in-memory data set like :func:`open_algonauts`'s from arrays (for the writer).

    Parameters
    ----------
    lh_betas, rh_betas : (n_images, n_vertices_h) arrays.
    image_paths : n_images existing image files, in betas-row order (their stems become
        ``image_id`` and must sort in that order).
    rois : ``{family: (lh_labels, rh_labels, mapping)}`` with integer labels per vertex and a
        dict label -> name (0 = unlabelled).
    noise_ceiling : optional (n_vertices_lh + n_vertices_rh,) percent.
    """
    lh, rh = np.asarray(lh_betas), np.asarray(rh_betas)
    if lh.ndim != 2 or rh.ndim != 2 or lh.shape[0] != rh.shape[0]:
        raise ShapeError(f"betas: expected (images, vertices) arrays with equal image counts, "
                         f"got {lh.shape} and {rh.shape}")
    paths = [str(p) for p in image_paths]
    if len(paths) != lh.shape[0]:
        raise ShapeError(f"image_paths: {len(paths)} paths for {lh.shape[0]} betas rows")
    n_h = [lh.shape[1], rh.shape[1]]
    coords = {
        "image": ("image", np.arange(lh.shape[0])),
        "image_id": ("image", np.array([Path(p).stem for p in paths], dtype=str)),
        "image_path": ("image", np.array(paths, dtype=str)),
        "hemisphere": ("vertex", np.repeat(np.array(HEMIS), n_h)),
        "hemi_vertex": ("vertex", np.concatenate([np.arange(n) for n in n_h])),
    }
    ds = xr.Dataset({"betas": (("image", "vertex"), np.concatenate([lh, rh], axis=1))}, coords=coords)
    for fam, (l_lab, r_lab, mapping) in (rois or {}).items():
        lab = np.concatenate([np.asarray(l_lab), np.asarray(r_lab)]).astype(np.int64)
        if lab.shape != (sum(n_h),):
            raise ShapeError(f"rois[{fam!r}]: labels have {lab.shape} entries, betas {sum(n_h)} vertices")
        lut = {int(k): str(v) for k, v in mapping.items()}
        lut.setdefault(0, "Unknown")
        missing = sorted(set(np.unique(lab).tolist()) - set(lut))
        if missing:
            raise DataError(f"rois[{fam!r}]: labels {missing[:5]} are not in its mapping")
        ds.coords[f"roi_{fam}"] = ("vertex", np.array([lut[int(k)] for k in lab], dtype=str))
        ds[f"roi_{fam}"].attrs["mapping"] = dict(sorted(lut.items()))
    if noise_ceiling is not None:
        ds["noise_ceiling"] = ("vertex", np.asarray(noise_ceiling, dtype=np.float32))
    ds.attrs.update(subject=subject, roi_families=list(rois or {}),
                    test_image_paths=[str(p) for p in test_image_paths])
    return ds


def write_algonauts(
    ds: xr.Dataset | dict,
    root: str | os.PathLike,
    subject: str | None = None,
    *,
    overwrite: bool = False,
    chunk_images: int = 1024,
) -> Path:
    """Write a data set (as returned by :func:`open_algonauts`) in the Algonauts layout.

    The subject folder ``root/subject`` is built in a temporary sibling and moved into place, so
    an error leaves nothing behind; an existing non-empty subject folder is refused unless
    ``overwrite``. Image files are copied from ``image_path`` (named ``<image_id><suffix>``),
    test images from ``attrs["test_image_paths"]``; ROI labels are written with the mapping in
    each ``roi_<family>`` coord's ``attrs["mapping"]`` (or labels 1..k in sorted name order, 0 for
    "Unknown", when there is none); ``noise_ceiling`` and ``repeats`` are written when present.
    Reading the result back gives the same values, coordinates and ROI labels (exact round trip).

    ``ds`` may also be a dict of :func:`make_dataset`'s arguments.

    Returns the subject folder.
    """
    if isinstance(ds, dict):
        ds = make_dataset(**ds)
    if not isinstance(ds, xr.Dataset) or "betas" not in ds:
        raise DataError("write_algonauts: expected an xarray.Dataset with a 'betas' variable")
    if ds["betas"].dims != ("image", "vertex"):
        raise ShapeError(f"betas: expected dims ('image', 'vertex'), got {ds['betas'].dims}")
    subject = subject or ds.attrs.get("subject") or "subj01"
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", subject):
        raise DataError(f"subject: {subject!r} is not a valid folder name")
    hemi = np.asarray(ds["hemisphere"].values).astype(str)
    if not set(hemi) <= set(HEMIS):
        raise DataError(f"hemisphere: values must be 'lh'/'rh', got {sorted(set(hemi))}")
    sel = {h: np.flatnonzero(hemi == h) for h in HEMIS}
    image_paths = [str(p) for p in np.asarray(ds["image_path"].values)] if "image_path" in ds.coords else []
    image_ids = [str(i) for i in np.asarray(ds["image_id"].values)] if "image_id" in ds.coords else []
    n_img = ds.sizes["image"]
    if len(image_paths) != n_img or len(image_ids) != n_img:
        raise DataError("write_algonauts: the data set needs image_id and image_path coords (image)")
    names = [_image_name(p, i) for p, i in zip(image_paths, image_ids, strict=True)]
    if sorted(names) != names:
        raise DataError(
            "write_algonauts: image_id values must sort in image order (the layout pairs betas rows "
            "with the sorted image files)"
        )
    if len(set(names)) != len(names):
        raise DataError("write_algonauts: image_id values are not unique")
    for p in image_paths:
        if not Path(p).is_file():
            raise DataError(f"{p}: image file missing (image_path coord)")
    test_paths = [str(p) for p in ds.attrs.get("test_image_paths", [])]
    for p in test_paths:
        if not Path(p).is_file():
            raise DataError(f"{p}: test image file missing (attrs test_image_paths)")

    target = Path(root) / subject
    with atomic_dir(target, overwrite=overwrite) as tmp:
        fmri = tmp / "training_split" / "training_fmri"
        fmri.mkdir(parents=True)
        betas = ds["betas"].variable
        for h in HEMIS:
            out = np.lib.format.open_memmap(
                fmri / f"{h}_training_fmri.npy", mode="w+", dtype=betas.dtype,
                shape=(n_img, sel[h].size),
            )
            for s in range(0, n_img, chunk_images):
                out[s : s + chunk_images] = betas[s : s + chunk_images, sel[h]].values
            out.flush()
            del out
        if "noise_ceiling" in ds:
            nc = np.asarray(ds["noise_ceiling"].values)
            for h in HEMIS:
                np.save(fmri / f"{h}_noise_ceiling.npy", nc[sel[h]], allow_pickle=False)
        if "repeats" in ds:
            rep = np.asarray(ds["repeats"].values)
            for h in HEMIS:
                np.save(fmri / f"{h}_repeats_fmri.npy", rep[:, :, sel[h]], allow_pickle=False)
            np.save(
                fmri / "repeats_image_index.npy",
                np.asarray(ds["repeat_image"].values).astype(np.int64),
                allow_pickle=False,
            )
        img_dir = tmp / "training_split" / "training_images"
        img_dir.mkdir(parents=True)
        for p, n in zip(image_paths, names, strict=True):
            shutil.copyfile(p, img_dir / n)
        if test_paths:
            tdir = tmp / "test_split" / "test_images"
            tdir.mkdir(parents=True)
            for p in test_paths:
                shutil.copyfile(p, tdir / Path(p).name)
        roi_dir = tmp / "roi_masks"
        roi_dir.mkdir()
        for fam in ds.attrs.get("roi_families", []):
            coord = ds[f"roi_{fam}"]
            roi_names = np.asarray(coord.values).astype(str)
            mapping = coord.attrs.get("mapping")
            if not mapping:
                others = sorted(set(roi_names) - {"Unknown"})
                mapping = {0: "Unknown", **{i + 1: n for i, n in enumerate(others)}}
            mapping = {int(k): str(v) for k, v in mapping.items()}
            label_of: dict[str, int] = {}
            for k, v in sorted(mapping.items()):
                label_of.setdefault(v, k)
            label_of.setdefault("Unknown", 0)
            missing = sorted(set(roi_names) - set(label_of))
            if missing:
                raise DataError(f"roi_{fam}: ROI names {missing[:5]} are not in the coord's mapping")
            labels = np.array([label_of[n] for n in roi_names], dtype=np.int64)
            dtype = np.int32 if labels.max(initial=0) < 2**31 else np.int64
            for h in HEMIS:
                np.save(
                    roi_dir / f"{h}.{fam}_challenge_space.npy", labels[sel[h]].astype(dtype),
                    allow_pickle=False,
                )
            # np.save of a dict pickles it, exactly like the Algonauts mapping files.
            np.save(roi_dir / f"mapping_{fam}.npy", mapping, allow_pickle=True)
        if "fsaverage_index" in ds.coords:
            n_mesh = {v: k for k, v in _FSAVERAGE_MESHES.items()}.get(ds.attrs.get("fsaverage_mesh", ""))
            fsi = np.asarray(ds["fsaverage_index"].values)
            for h in HEMIS:
                n = n_mesh or int(fsi[sel[h]].max(initial=-1)) + 1
                m = np.zeros(n, dtype=bool)
                m[fsi[sel[h]]] = True
                np.save(roi_dir / f"{h}.all-vertices_fsaverage_space.npy", m, allow_pickle=False)
    return target
