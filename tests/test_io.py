import pickle

import numpy as np
import pytest
import xarray as xr

from brainattn.errors import DataError, OutputExistsError, UnsafeFileError
from brainattn.io import (
    atomic_dir,
    atomic_path,
    atomic_write_text,
    check_output_dir,
    load_netcdf,
    load_npy,
    load_plain_pickle,
    save_netcdf,
)


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_atomic_dir_and_overwrite(tmp_path):
    out = tmp_path / "run"
    with atomic_dir(out) as d:
        (d / "a").write_text("1")
    assert (out / "a").read_text() == "1"
    with pytest.raises(OutputExistsError, match="--overwrite"):
        check_output_dir(out)
    with pytest.raises(ValueError):
        with atomic_dir(out, overwrite=True) as d:
            (d / "b").write_text("2")
            raise ValueError
    assert sorted(p.name for p in out.iterdir()) == ["a"]
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_netcdf_roundtrip_with_provenance(tmp_path):
    ds = xr.Dataset({"r": (("vertex",), np.arange(5.0))}, coords={"vertex": np.arange(5)})
    ds.attrs["config"] = {"a": 1}
    path = save_netcdf(ds, tmp_path / "x.nc", seed=3)
    back = load_netcdf(path)
    np.testing.assert_array_equal(back["r"].values, ds["r"].values)
    assert back.attrs["seed"] == 3
    assert "brainattn_version" in back.attrs and "created_utc" in back.attrs


def test_plain_pickle_accepts_dicts_and_npy_wrapping(tmp_path):
    mapping = {0: "Unknown", 1: "V1v", 2: "V1d"}
    p = tmp_path / "mapping_prf-visualrois.npy"
    np.save(p, mapping, allow_pickle=True)
    assert load_plain_pickle(p) == mapping
    raw = tmp_path / "m.pkl"
    raw.write_bytes(pickle.dumps({np.int64(3): "FFA-1", 4: None, 5: 1.5}))
    assert load_plain_pickle(raw) == {3: "FFA-1", 4: None, 5: 1.5}


class _Evil:
    def __reduce__(self):
        return (open, ("/tmp/brainattn-pwned", "w"))


def test_plain_pickle_refuses_code(tmp_path):
    p = tmp_path / "mapping_evil.npy"
    p.write_bytes(pickle.dumps({1: _Evil()}))
    with pytest.raises(UnsafeFileError, match="refuses"):
        load_plain_pickle(p)
    import os

    assert not os.path.exists("/tmp/brainattn-pwned")
    q = tmp_path / "list.pkl"
    q.write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(UnsafeFileError, match="expected a dict"):
        load_plain_pickle(q)


def test_load_npy_refuses_object_arrays(tmp_path):
    p = tmp_path / "obj.npy"
    np.save(p, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(UnsafeFileError):
        load_npy(p)
    with pytest.raises(DataError, match="no such file"):
        load_npy(tmp_path / "missing.npy")


def test_atomic_outputs_follow_umask(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        f = atomic_write_text(tmp_path / "f.txt", "x")
        assert (f.stat().st_mode & 0o777) == 0o644
        with atomic_dir(tmp_path / "d") as d:
            (d / "a").write_text("1")
        assert ((tmp_path / "d").stat().st_mode & 0o777) == 0o755
    finally:
        os.umask(old)
