"""Property-based test of the Algonauts reader: any one file of a subject replaced by an array
of another shape or dtype, a pickle, a truncated copy or random bytes is either read (and its
betas are finite numbers) or refused with a :class:`BrainAttnError` naming a file; the CLI
prints one line. Never a traceback."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from brainattn.cli import main
from brainattn.data import open_algonauts, synth
from brainattn.errors import BrainAttnError

TINY = dict(subjects=1, images=8, seed=3, image_size=32, test_images=2, n_ev_roi=6,
            n_category_roi=4, n_unlabelled=10)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fuzz") / "tiny"
    synth.generate(out, **TINY)
    return out


def _npy_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.npy"))


_DTYPES = ["<f4", "<f8", ">f4", "<f2", "<i1", "<i4", "<i8", "<u2", "|b1", "<c8", "<U3", "|V4",
           "object"]


@st.composite
def damage(draw):
    """(kind, parameters) of one change to one file."""
    kind = draw(st.sampled_from(["array", "array", "truncate", "bytes", "header", "nonfinite"]))
    if kind == "array":
        shape = tuple(draw(st.lists(st.integers(0, 9), min_size=0, max_size=3)))
        return kind, (shape, draw(st.sampled_from(_DTYPES)), draw(st.integers(0, 2**31)))
    if kind == "truncate":
        return kind, draw(st.floats(0, 0.999))
    if kind == "bytes":
        return kind, draw(st.binary(max_size=300))
    if kind == "header":
        return kind, (draw(st.integers(0, 127)), draw(st.integers(0, 255)))
    return kind, draw(st.sampled_from([np.nan, np.inf, -np.inf]))


def _apply(path: Path, kind: str, arg) -> None:
    original = path.read_bytes()
    path.unlink()  # the tree is hard-linked to the fixture: replace, never write through
    if kind == "array":
        shape, dtype, seed = arg
        rng = np.random.default_rng(seed)
        if dtype == "object":
            a = np.empty(shape, dtype=object)
            a.flat[:] = [{"x": 1}] * a.size
        elif dtype == "|V4":
            a = np.zeros(shape, dtype=[("a", "<i2"), ("b", "<i2")])
        else:
            a = (rng.standard_normal(shape) * 5).astype(dtype)
        buf = io.BytesIO()
        np.save(buf, a, allow_pickle=True)
        path.write_bytes(buf.getvalue())
    elif kind == "truncate":
        path.write_bytes(original[: int(len(original) * arg)])
    elif kind == "bytes":
        path.write_bytes(arg)
    elif kind == "header":
        i, b = arg
        data = bytearray(original)
        data[min(i, len(data) - 1)] = b
        path.write_bytes(bytes(data))
    else:
        try:
            a = np.load(io.BytesIO(original), allow_pickle=False)
        except ValueError:  # a pickled mapping: not numeric, leave it as it was
            path.write_bytes(original)
            return
        if a.dtype.kind == "f" and a.size:
            a = a.copy()
            a.flat[a.size // 2] = arg
        buf = io.BytesIO()
        np.save(buf, a)
        path.write_bytes(buf.getvalue())


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.integers(0, 10**6), change=damage())
def test_damaged_subject_is_read_or_refused(tiny, which, change, tmp_path_factory, capsys):
    root = tmp_path_factory.mktemp("case") / "data"
    shutil.copytree(tiny, root, copy_function=os.link)
    files = _npy_files(root)
    target = root / files[which % len(files)]
    _apply(target, *change)
    try:
        ds = open_algonauts(root, "subj01")
        betas = ds["betas"].values
        assert betas.ndim == 2 and np.isfinite(betas).all()
        ds.load()
    except BrainAttnError as exc:
        msg = str(exc)
        assert "\n" not in msg and ("/" in msg or "subj01" in msg), msg
    rc = main(["data", "info", str(root), "--check-finite"])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert rc == 0 or (rc == 2 and len(err.strip().splitlines()) == 1), err
