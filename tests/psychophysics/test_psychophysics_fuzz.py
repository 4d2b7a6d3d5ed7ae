"""Property-based tests of the trial-table readers and ``brainattn scale fit`` on them: any
file, however malformed, is read or refused with a :class:`BrainAttnError` (one line on the
CLI), never a traceback."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from brainattn.cli import main
from brainattn.errors import BrainAttnError
from brainattn.psychophysics.design import Trials, read_long_table, read_mlds_csv

_CELL = st.one_of(
    st.integers(-3, 15).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["", "NA", "nan", "1.0", "1e308", "-0", "TRUE", "x", '"', "1,2", "٣"]),
    st.text(max_size=4),
)
_HEADER = st.lists(st.sampled_from(["resp", "S1", "S2", "S3", "S4", "s1", "Resp", "", "junk", "S1"]),
                   min_size=0, max_size=6)


@st.composite
def tables(draw) -> bytes:
    """CSV/TSV-like bytes: a plausible header, ragged rows of odd cells, sometimes cut short
    or replaced by binary garbage."""
    kind = draw(st.sampled_from(["table", "table", "table", "bytes"]))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    sep = draw(st.sampled_from([",", ";", "\t", " "]))
    header = draw(_HEADER)
    ncol = max(1, len(header))
    rows = draw(st.lists(st.lists(_CELL, min_size=max(0, ncol - 1), max_size=ncol + 1), max_size=12))
    text = "\n".join([sep.join(header)] + [sep.join(r) for r in rows]) + "\n"
    data = text.encode("utf-8", errors="surrogatepass")
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return data


@st.composite
def valid_ish(draw) -> bytes:
    """A well-formed triad table with a few cells broken: the most useful near-misses."""
    n_levels = draw(st.integers(3, 6))
    n = draw(st.integers(1, 30))
    rows = []
    for _ in range(n):
        s = sorted(draw(st.lists(st.integers(1, n_levels), min_size=3, max_size=3)))
        rows.append([str(draw(st.integers(0, 1))), *map(str, s)])
    for _ in range(draw(st.integers(0, 3))):
        if rows:
            i, j = draw(st.integers(0, len(rows) - 1)), draw(st.integers(0, 3))
            rows[i][j] = draw(_CELL)
    return ("resp,S1,S2,S3\n" + "\n".join(",".join(r) for r in rows) + "\n").encode("utf-8", "surrogatepass")


_SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@_SETTINGS
@given(data=st.one_of(tables(), valid_ish()))
def test_trial_readers_read_or_refuse(data, tmp_path):
    p = tmp_path / "trials.csv"
    p.write_bytes(data)
    for reader in (read_mlds_csv, read_long_table):
        try:
            tr = reader(p)
        except BrainAttnError as exc:
            assert str(p) in str(exc) and "\n" not in str(exc)
            continue
        assert isinstance(tr, Trials)
        assert np.all(np.isin(tr.resp, (0, 1)))
        assert tr.stim.min() >= 1 and tr.stim.max() <= tr.n_levels


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(valid_ish(), tables()))
def test_scale_fit_cli_never_gives_a_traceback(data, tmp_path, capsys):
    p = tmp_path / "trials.csv"
    p.write_bytes(data)
    out = tmp_path / "out"
    rc = main(["scale", "fit", str(p), "-o", str(out), "--overwrite"])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if rc == 0:
        assert (out / "scale.nc").is_file()
    else:
        lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
        assert rc == 2 and len(lines) == 1, err
        assert not out.exists()
