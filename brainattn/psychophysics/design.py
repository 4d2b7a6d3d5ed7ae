"""Difference-scaling designs and trial tables (the R MLDS column convention).

A trial shows either a *triad* ``(a, b, c)`` -- is ``(b, c)`` more different than ``(a, b)``? --
or a *quadruple* ``(a, b; c, d)`` -- is ``(c, d)`` more different than ``(a, b)``?  Levels are
1-based indices into the ``p`` stimulus values, as in the R package MLDS (Knoblauch & Maloney):
columns ``resp, S1, S2, S3[, S4]`` with ``resp = 1`` when the *second* pair looks more different.

Trials presented in descending order are put back in ascending order with the response
flipped (R's ``SwapOrder``): within a pair the order does not matter (``|psi_b - psi_a|``), and
when the first pair lies above the second the two pairs are swapped and ``resp`` becomes
``1 - resp``.  The model then reads ``P(resp = 1) = F(X psi / sigma)`` with design weights
``+1, -2, +1`` (triads) or ``+1, -1, -1, +1`` (quadruples) on ``S1..S3[4]``.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from brainattn.errors import ConfigError, DataError

__all__ = [
    "Trials",
    "all_triads",
    "all_quadruples",
    "make_design",
    "as_trials",
    "read_mlds_csv",
    "read_long_table",
    "parse_responses",
]

_TRUE = {"true", "1"}
_FALSE = {"false", "0"}


@dataclass
class Trials:
    """A validated difference-scaling data set, stored in canonical (ascending) order.

    Attributes
    ----------
    resp : (n_trials,) int8, 1 when the second pair looked more different.
    stim : (n_trials, 3 | 4) int64, 1-based level indices (S1..S3 or S1..S4), ascending order.
    stimulus : (n_levels,) float, the physical stimulus value of each level (units are the
        user's; ``1..p`` when unknown).
    swapped : (n_trials,) bool, True where the trial was reordered and its response flipped.
    source : where the trials came from (file name or ``"<array>"``), used in error messages.
    """

    resp: np.ndarray
    stim: np.ndarray
    stimulus: np.ndarray
    swapped: np.ndarray = field(default=None)  # type: ignore[assignment]
    source: str = "<array>"

    def __post_init__(self):
        if self.swapped is None:
            self.swapped = np.zeros(len(self.resp), dtype=bool)

    @property
    def n_trials(self) -> int:
        return int(self.resp.shape[0])

    @property
    def n_levels(self) -> int:
        return int(self.stimulus.shape[0])

    @property
    def kind(self) -> str:
        """``"triad"`` or ``"quadruple"``."""
        return "triad" if self.stim.shape[1] == 3 else "quadruple"

    def design_matrix(self, drop_first: bool = True) -> np.ndarray:
        """The difference design matrix, (n_trials, n_levels - 1) (or n_levels), float64.

        Row ``i`` holds the weights of each level in ``(psi_d - psi_c) - (psi_b - psi_a)``
        (quadruples) or ``(psi_c - psi_b) - (psi_b - psi_a)`` (triads).
        """
        return design_matrix(self.stim, self.n_levels, drop_first=drop_first)

    def with_responses(self, resp: np.ndarray) -> Trials:
        """A copy holding other responses (same stimuli), e.g. a bootstrap replicate."""
        return Trials(np.asarray(resp, dtype=np.int8), self.stim, self.stimulus,
                      self.swapped, self.source)

    def to_frame(self):
        """A pandas DataFrame in the R MLDS column convention (``resp, S1, S2, S3[, S4]``)."""
        import pandas as pd

        cols = {"resp": self.resp.astype(int)}
        for j in range(self.stim.shape[1]):
            cols[f"S{j + 1}"] = self.stim[:, j].astype(int)
        return pd.DataFrame(cols)

    def to_csv(self, path: str | os.PathLike) -> Path:
        """Write the trials atomically as an R-MLDS CSV file."""
        from brainattn.io import atomic_write_text

        return atomic_write_text(path, self.to_frame().to_csv(index=False))


# --------------------------------------------------------------------------------------------
# designs


def _check_levels(n_levels) -> int:
    if isinstance(n_levels, bool) or not isinstance(n_levels, (int, np.integer)) or n_levels < 3:
        raise ConfigError(f"n_levels: expected an integer >= 3, got {n_levels!r}")
    return int(n_levels)


def _check_gap(max_gap) -> int | None:
    if max_gap is None:
        return None
    if isinstance(max_gap, bool) or not isinstance(max_gap, (int, np.integer)) or max_gap < 1:
        raise ConfigError(f"max_gap: expected a positive integer or None, got {max_gap!r}")
    return int(max_gap)


def all_triads(n_levels: int, max_gap: int | None = None) -> np.ndarray:
    """All triads ``a < b < c`` of ``n_levels`` levels, (n, 3) int, 1-based.

    ``max_gap`` keeps only triads whose both gaps ``b - a`` and ``c - b`` are ``<= max_gap``
    (13 levels with ``max_gap=3`` give the 81 triads of Vacher & Mamassian).
    """
    p = _check_levels(n_levels)
    k = _check_gap(max_gap)
    out = [t for t in itertools.combinations(range(1, p + 1), 3)
           if k is None or (t[1] - t[0] <= k and t[2] - t[1] <= k)]
    return np.asarray(out, dtype=np.int64).reshape(-1, 3)


def all_quadruples(n_levels: int, max_gap: int | None = None) -> np.ndarray:
    """All quadruples ``a < b < c < d`` of ``n_levels`` levels, (n, 4) int, 1-based.

    ``max_gap`` keeps those whose two intervals ``b - a`` and ``d - c`` are ``<= max_gap``.
    11 levels give ``C(11, 4) = 330`` quadruples.
    """
    p = _check_levels(n_levels)
    if p < 4:
        raise ConfigError(f"n_levels: quadruples need at least 4 levels, got {p}")
    k = _check_gap(max_gap)
    out = [q for q in itertools.combinations(range(1, p + 1), 4)
           if k is None or (q[1] - q[0] <= k and q[3] - q[2] <= k)]
    return np.asarray(out, dtype=np.int64).reshape(-1, 4)


def make_design(
    n_levels: int,
    kind: str = "quadruple",
    *,
    max_gap: int | None = None,
    repeats: int = 1,
    shuffle: bool = True,
    swap_pairs: float = 0.0,
    seed: int | None = None,
) -> np.ndarray:
    """A full experiment: every triad/quadruple ``repeats`` times, in random presentation order.

    Parameters
    ----------
    kind : ``"triad"`` or ``"quadruple"``.
    swap_pairs : probability that a trial is *presented* with its pairs in descending order
        (``(c, d, a, b)`` or ``(c, b, a)``); readers put such trials back in ascending order.

    Returns
    -------
    (n_trials, 3 | 4) int64 array of 1-based level indices in presentation order.
    """
    kinds = {"triad": all_triads, "triads": all_triads,
             "quadruple": all_quadruples, "quadruples": all_quadruples}
    if kind not in kinds:
        raise ConfigError(f"kind: expected 'triad' or 'quadruple', got {kind!r}")
    if isinstance(repeats, bool) or not isinstance(repeats, (int, np.integer)) or repeats < 1:
        raise ConfigError(f"repeats: expected a positive integer, got {repeats!r}")
    if not 0.0 <= float(swap_pairs) <= 1.0:
        raise ConfigError(f"swap_pairs: expected a probability in [0, 1], got {swap_pairs!r}")
    base = kinds[kind](n_levels, max_gap)
    design = np.tile(base, (int(repeats), 1))
    rng = np.random.default_rng(seed)
    if shuffle:
        design = design[rng.permutation(len(design))]
    if swap_pairs > 0:
        flip = rng.random(len(design)) < swap_pairs
        design = design.copy()
        design[flip] = design[flip][:, ::-1] if design.shape[1] == 3 else design[flip][:, [2, 3, 0, 1]]
    return design


def design_matrix(stim: np.ndarray, n_levels: int, drop_first: bool = True) -> np.ndarray:
    """Difference design matrix for canonical trials, (n, p - 1) if ``drop_first`` else (n, p)."""
    stim = np.asarray(stim)
    n = stim.shape[0]
    X = np.zeros((n, n_levels), dtype=np.float64)
    rows = np.arange(n)
    w = (1.0, -2.0, 1.0) if stim.shape[1] == 3 else (1.0, -1.0, -1.0, 1.0)
    for j, wj in enumerate(w):
        np.add.at(X, (rows, stim[:, j] - 1), wj)
    return X[:, 1:] if drop_first else X


# grouping identical design rows: every fit and every batch of replicates works on the groups


def _grouped(X: np.ndarray, y: np.ndarray):
    """Identical design rows grouped: (unique rows (R, k), inverse (n,), trials m (R,), successes (R,)).

    Rows are sorted by two random projections and split where neighbours differ exactly
    (much faster than ``np.unique(axis=0)``; a projection tie can only split a group, which
    leaves the likelihood unchanged).
    """
    X = np.asarray(X, dtype=np.float64)
    n = len(X)
    keys = X @ np.random.default_rng(12345).standard_normal((X.shape[1], 2))
    order = np.lexsort((keys[:, 1], keys[:, 0]))
    Xs = X[order]
    new = np.r_[True, np.any(Xs[1:] != Xs[:-1], axis=1)] if n else np.zeros(0, dtype=bool)
    inv = np.empty(n, dtype=np.int64)
    inv[order] = np.cumsum(new) - 1
    Xu = Xs[new]
    m = np.bincount(inv, minlength=len(Xu)).astype(float)
    k = np.bincount(inv, weights=np.asarray(y, dtype=float), minlength=len(Xu))
    return Xu, inv, m, k


def _group_sum(Y: np.ndarray, inv: np.ndarray, n_groups: int) -> np.ndarray:
    """Sum the (b, n) 0/1 responses over trials sharing a design row -> (b, n_groups)."""
    order = np.argsort(inv, kind="stable")
    starts = np.r_[0, np.flatnonzero(np.diff(inv[order])) + 1]
    return np.add.reduceat(Y[:, order].astype(np.float64), starts, axis=1)


# --------------------------------------------------------------------------------------------
# validation and readers


def parse_responses(values, *, column: str = "resp", source: str = "<array>") -> np.ndarray:
    """Responses as int8 0/1; accepts 0/1 numbers, booleans and 'True'/'False' strings.

    Anything else (2, 0.5, 'yes', missing) raises :class:`DataError` naming the row.
    """
    vals = list(values) if not isinstance(values, np.ndarray) else values.tolist()
    out = np.empty(len(vals), dtype=np.int8)
    for i, v in enumerate(vals):
        r = _parse_one_response(v)
        if r is None:
            what = "missing" if _is_missing(v) else f"{v!r}"
            raise DataError(
                f"{source}: column '{column}' row {i + 1} is {what}; expected 0/1, "
                "True/False or 'True'/'False'"
            )
        out[i] = r
    return out


def _is_missing(v) -> bool:
    if v is None:
        return True
    if isinstance(v, float) and np.isnan(v):
        return True
    return isinstance(v, str) and v.strip() in ("", "NA", "nan", "NaN")


def _parse_one_response(v):
    if isinstance(v, (bool, np.bool_)):
        return int(v)
    if isinstance(v, (int, np.integer)):
        return int(v) if v in (0, 1) else None
    if isinstance(v, (float, np.floating)):
        return int(v) if v in (0.0, 1.0) else None
    if isinstance(v, str):
        s = v.strip()
        if s in ("True", "TRUE", "true", "1"):
            return 1
        if s in ("False", "FALSE", "false", "0"):
            return 0
    return None


#: far above any experiment's number of levels; a larger index is a corrupt cell, not a level
_MAX_LEVEL = 100_000


def _parse_levels(col, name: str, source: str) -> np.ndarray:
    out = np.empty(len(col), dtype=np.int64)
    for i, v in enumerate(col):
        if _is_missing(v):
            raise DataError(f"{source}: column '{name}' row {i + 1} is missing; expected a level index")
        if isinstance(v, (bool, np.bool_)):
            raise DataError(f"{source}: column '{name}' row {i + 1} is {v!r}; expected an integer level index")
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise DataError(
                f"{source}: column '{name}' row {i + 1} is {v!r}; expected an integer level index"
            ) from None
        if not np.isfinite(f) or f != np.floor(f):
            raise DataError(
                f"{source}: column '{name}' row {i + 1} is {v!r}; expected an integer level index"
            )
        if abs(f) > _MAX_LEVEL:
            raise DataError(f"{source}: column '{name}' row {i + 1} is {v!r}; expected a level "
                            f"index of at most {_MAX_LEVEL}")
        out[i] = int(f)
    return out


def as_trials(
    resp,
    stim,
    stimulus=None,
    *,
    n_levels: int | None = None,
    source: str = "<array>",
    reorder: bool = True,
) -> Trials:
    """Validate responses and 1-based level indices and return canonical :class:`Trials`.

    Parameters
    ----------
    resp : (n,) 0/1 responses (booleans and 'True'/'False' strings accepted).
    stim : (n, 3 | 4) 1-based level indices in presentation order.
    stimulus : (p,) stimulus values of the levels; default ``1..p``.
    n_levels : number of levels ``p`` (default: ``len(stimulus)`` or the largest index).
    reorder : put descending trials in ascending order and flip their response (R's SwapOrder).
    """
    stim_arr = np.asarray(stim, dtype=object)
    if stim_arr.ndim != 2 or stim_arr.shape[1] not in (3, 4):
        raise DataError(
            f"{source}: stimulus columns have shape {stim_arr.shape}; expected 3 (triads S1..S3) "
            "or 4 (quadruples S1..S4) columns"
        )
    m = stim_arr.shape[1]
    names = [f"S{j + 1}" for j in range(m)]
    r = parse_responses(resp, source=source)
    if len(r) != stim_arr.shape[0]:
        raise DataError(f"{source}: {len(r)} responses but {stim_arr.shape[0]} trials")
    if len(r) == 0:
        raise DataError(f"{source}: no trials")
    if len(r) == 1:
        raise DataError(f"{source}: a single trial; a difference scale needs many trials (every level in "
                        "several triads or quadruples)")
    S = np.stack([_parse_levels(stim_arr[:, j], names[j], source) for j in range(m)], axis=1)
    if stimulus is not None:
        stimulus = np.asarray(stimulus, dtype=np.float64).ravel()
        if not np.all(np.isfinite(stimulus)):
            raise DataError(f"{source}: stimulus values must be finite numbers")
        if n_levels is not None and n_levels != len(stimulus):
            raise DataError(f"{source}: n_levels={n_levels} but {len(stimulus)} stimulus values given")
        p = len(stimulus)
    else:
        p = int(n_levels) if n_levels is not None else int(S.max())
    if p < 3:
        raise DataError(f"{source}: {p} levels; difference scaling needs at least 3 levels")
    if m == 4 and p < 4:
        raise DataError(f"{source}: quadruples need at least 4 levels, found {p}")
    for j in range(m):
        bad = np.flatnonzero((S[:, j] < 1) | (S[:, j] > p))
        if bad.size:
            i = bad[0]
            raise DataError(
                f"{source}: column '{names[j]}' row {i + 1} is {S[i, j]}; expected a level index in 1..{p}"
            )
    if stimulus is None:
        stimulus = np.arange(1, p + 1, dtype=np.float64)
    elif np.any(np.diff(stimulus) <= 0):
        raise DataError(f"{source}: stimulus values must be strictly increasing, got {stimulus.tolist()}")
    S, r, swapped = _canonical(S, r, source, reorder=reorder)
    # the smallest unused level is at most (number of distinct levels + 1): no mask of size p
    present = np.unique(S)
    missing = np.setdiff1d(np.arange(1, min(p, present.size + 1) + 1), present)
    if missing.size:
        raise DataError(
            f"{source}: level {missing[0]} never appears in {', '.join(names)}; every level 1..{p} "
            "must be used (drop unused stimulus values or renumber the levels)"
        )
    return Trials(r, S, stimulus, swapped, source)


def _canonical(S: np.ndarray, r: np.ndarray, source: str, *, reorder: bool):
    S = S.copy()
    r = r.copy()
    n, m = S.shape
    if m == 3:
        desc = S[:, 0] > S[:, 2]
        if reorder:
            S[desc] = S[desc][:, ::-1]
            r[desc] = 1 - r[desc]
        else:
            desc = np.zeros(n, dtype=bool)
        bad = np.flatnonzero(~((S[:, 0] < S[:, 1]) & (S[:, 1] < S[:, 2])))
        if bad.size:
            i = bad[0]
            raise DataError(
                f"{source}: row {i + 1} triad ({', '.join(map(str, S[i]))}) is not ordered; expected "
                "S1 < S2 < S3 (or S1 > S2 > S3, which is reordered with the response flipped)"
            )
        return S, r, desc
    # quadruples: order within each pair, then put the lower pair first
    lo1, hi1 = np.minimum(S[:, 0], S[:, 1]), np.maximum(S[:, 0], S[:, 1])
    lo2, hi2 = np.minimum(S[:, 2], S[:, 3]), np.maximum(S[:, 2], S[:, 3])
    bad = np.flatnonzero((lo1 == hi1) | (lo2 == hi2))
    if bad.size:
        i = bad[0]
        raise DataError(
            f"{source}: row {i + 1} quadruple ({', '.join(map(str, S[i]))}) has a pair of identical "
            "levels; expected S1 != S2 and S3 != S4"
        )
    within = (S[:, 0] > S[:, 1]) | (S[:, 2] > S[:, 3])
    if not reorder and within.any():
        i = np.flatnonzero(within)[0]
        raise DataError(f"{source}: row {i + 1} has a pair in descending order; expected S1 < S2, S3 < S4")
    desc = (lo1 > lo2) | ((lo1 == lo2) & (hi1 > hi2)) if reorder else np.zeros(n, dtype=bool)
    out = np.stack([lo1, hi1, lo2, hi2], axis=1)
    out[desc] = out[desc][:, [2, 3, 0, 1]]
    r[desc] = 1 - r[desc]
    return out, r, desc


def _read_table(path: str | os.PathLike):
    import pandas as pd

    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: no such file (expected a CSV of trials)")
    try:
        df = pd.read_csv(p, sep=None, engine="python", dtype=str, keep_default_na=False)
    except Exception as exc:  # pandas raises many types for unreadable files
        raise DataError(f"{p}: not a readable CSV/TSV table ({type(exc).__name__}: {exc})") from exc
    df.columns = [str(c).strip() for c in df.columns]
    _check_row_lengths(p, len(df.columns))
    return df


def _check_row_lengths(p: Path, n_names: int) -> None:
    """Every row must hold as many values as the header has names: pandas would otherwise take
    the surplus first value as a row index and shift every column's meaning by one."""
    import csv

    text = p.read_text(encoding="utf-8", errors="replace")
    try:
        dialect = csv.Sniffer().sniff(text[:4096], delimiters=",;\t ")
    except csv.Error:
        dialect = csv.excel
    rows = [r for r in csv.reader(text.splitlines(), dialect) if r and any(v.strip() for v in r)]
    for i, row in enumerate(rows[1:], start=2):
        if len(row) != n_names:
            raise DataError(f"{p}: line {i} has {len(row)} values but the header names {n_names} columns "
                            f"({', '.join(rows[0])}); every row needs one value per column")


def read_mlds_csv(path: str | os.PathLike, stimulus=None, *, reorder: bool = True) -> Trials:
    """Read trials in the R MLDS column convention: ``resp, S1, S2, S3[, S4]``.

    Column names are matched case-insensitively; an unnamed first index column (as written by
    R's ``write.csv``) is ignored. Level indices are 1-based.
    """
    return _mlds_frame(_read_table(path), str(path), stimulus, reorder=reorder)


def _mlds_frame(df, src: str, stimulus=None, *, reorder: bool = True) -> Trials:
    cols = {c.lower(): c for c in df.columns}
    if "resp" not in cols:
        raise DataError(f"{src}: no 'resp' column; expected columns resp,S1,S2,S3[,S4], found {list(df.columns)}")
    names = ["s1", "s2", "s3"] + (["s4"] if "s4" in cols else [])
    for nm in names:
        if nm not in cols:
            raise DataError(f"{src}: no '{nm.upper()}' column; expected columns resp,S1,S2,S3[,S4]")
    stim = np.stack([df[cols[nm]].to_numpy(dtype=object) for nm in names], axis=1)
    return as_trials(df[cols["resp"]].to_numpy(dtype=object), stim, stimulus, source=src, reorder=reorder)


def read_long_table(
    path: str | os.PathLike,
    *,
    resp: str = "resp",
    columns: tuple[str, ...] | None = None,
    reorder: bool = True,
) -> Trials:
    """Read a table whose stimulus columns hold stimulus *values* (e.g. ``s1..s4`` in c/deg).

    The distinct values across the stimulus columns become the levels (sorted ascending).
    ``columns`` names the 3 or 4 stimulus columns (default: ``s1, s2, s3[, s4]``,
    case-insensitive).
    """
    return _long_frame(_read_table(path), str(path), resp=resp, columns=columns, reorder=reorder)


def _long_frame(df, src: str, *, resp: str = "resp", columns=None, reorder: bool = True) -> Trials:
    cols = {c.lower(): c for c in df.columns}
    if resp.lower() not in cols:
        raise DataError(f"{src}: no '{resp}' column; found {list(df.columns)}")
    if columns is None:
        columns = tuple(c for c in ("s1", "s2", "s3", "s4") if c in cols)
    if len(columns) not in (3, 4):
        raise DataError(f"{src}: expected 3 or 4 stimulus-value columns (s1..s4), found {list(columns)}")
    values = []
    for c in columns:
        if c.lower() not in cols:
            raise DataError(f"{src}: no '{c}' column; found {list(df.columns)}")
        col = df[cols[c.lower()]].to_numpy(dtype=object)
        v = np.empty(len(col))
        for i, x in enumerate(col):
            try:
                v[i] = float(x)
            except (TypeError, ValueError):
                v[i] = np.nan
            if not np.isfinite(v[i]):
                what = "missing" if _is_missing(x) else repr(x)
                raise DataError(f"{src}: column '{c}' row {i + 1} is {what}; expected a finite stimulus value")
        values.append(v)
    V = np.stack(values, axis=1)
    levels = np.unique(V)
    idx = np.searchsorted(levels, V) + 1
    return as_trials(df[cols[resp.lower()]].to_numpy(dtype=object), idx, levels, source=src, reorder=reorder)


def _used_columns(df, table: str) -> set[str]:
    names = {"resp", "s1", "s2", "s3", "s4"}
    return {c for c in df.columns if c.lower() in names or c == "" or c.lower().startswith("unnamed")}


def read_trial_tables(path: str | os.PathLike, table: str = "mlds", stimulus=None, *, by: str | None = None):
    """Read a trial table (``table``: ``"mlds"`` level indices or ``"long"`` stimulus values),
    split by the values of column ``by`` when given.

    Returns ``(groups, ignored)``: ``groups`` a list of ``(label, Trials)`` (label None without
    ``by``, else ``"<by>-<value>"``), ``ignored`` the other columns the fit does not use, as
    ``(name, number of distinct values)`` (e.g. an observer column that would pool observers).
    """
    import re

    df = _read_table(path)
    src = str(path)
    read = _mlds_frame if table == "mlds" else _long_frame
    kw = {"stimulus": stimulus} if table == "mlds" else {}
    used = _used_columns(df, table)
    if by is not None:
        if by not in df.columns:
            raise DataError(f"{src}: --by column {by!r} not found; columns are {list(df.columns)}")
        used.add(by)
    ignored = [(c, int(df[c].nunique())) for c in df.columns if c not in used]
    if by is None:
        return [(None, read(df, src, **kw))], ignored
    groups = []
    for value, part in df.groupby(by, sort=True):
        label = f"{by}-{re.sub(r'[^A-Za-z0-9._-]+', '_', str(value))}"
        groups.append((label, read(part.reset_index(drop=True), f"{src} ({by} = {value})", **kw)))
    return groups, ignored
