"""ROI labels of a data set's vertices.

An opened data set (:func:`brainattn.data.open_algonauts`, :func:`brainattn.data.make_dataset`)
and the ``scores.nc`` of a run carry one coordinate ``roi_<family>`` on the ``vertex`` dimension
per ROI family: the ROI name of each vertex (``Unknown`` where the family does not label it).
These helpers are the one place that decodes those names; callers get ``{family: labels}``.
"""

from __future__ import annotations

import numpy as np

from brainattn.errors import DataError

#: name of the label of vertices that a family does not label
UNKNOWN = "Unknown"

_PREFIX = "roi_"


def roi_coord(family: str) -> str:
    """The coordinate that holds ``family``'s labels: ``roi_<family>``."""
    return f"{_PREFIX}{family}"


def roi_families(ds) -> list[str]:
    """ROI families of ``ds`` (coordinates ``roi_<family>`` on ``vertex``), in the data set's
    order."""
    return [str(k)[len(_PREFIX):] for k in ds.coords
            if str(k).startswith(_PREFIX) and tuple(ds[k].dims) == ("vertex",)]


def roi_labels(ds, families=None) -> dict[str, np.ndarray]:
    """``{family: (n_vertices,) str}``: each vertex's ROI name per family (``Unknown`` where
    unlabelled).

    ``families``: the families to return, in this order (a comma-separated string or a list;
    default: all of ``ds``); a family that ``ds`` lacks is a :class:`~brainattn.errors.DataError`
    that lists the ones it has.
    """
    have = roi_families(ds)
    if families is None:
        families = have
    elif isinstance(families, str):
        families = [f.strip() for f in families.split(",") if f.strip()]
    missing = [f for f in families if f not in have]
    if missing:
        raise DataError(f"ROI family {missing[0]!r} is not in the data set (it has: "
                        f"{', '.join(have) or 'none'})")
    return {f: np.asarray(ds[roi_coord(f)].values).astype(str) for f in families}


def vertex_coords(ds) -> dict[str, np.ndarray]:
    """The per-vertex coordinates a result keeps: ``hemisphere``, ``hemi_vertex`` (when
    present) and every ``roi_<family>``, as arrays keyed by coordinate name."""
    out = {k: np.asarray(ds[k].values) for k in ("hemisphere", "hemi_vertex") if k in ds.coords}
    out.update({roi_coord(f): v for f, v in roi_labels(ds).items()})
    return out
