import errno
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from brainattn.errors import DataError, OutputError, OutputExistsError, UnsafeFileError
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


# --------------------------------------------------------------------------------------------
# OS errors while writing: one OutputError naming the file and the cause, nothing left behind


def _raise(err):
    def f(*a, **k):
        raise err

    return f


@pytest.mark.parametrize("code,cause", [(errno.EROFS, "Read-only file system"),
                                        (errno.EACCES, "Permission denied"),
                                        (errno.ENOSPC, "No space left on device")])
def test_atomic_path_refused_folder_names_destination(tmp_path, monkeypatch, code, cause):
    target = tmp_path / "sub" / "out.nc"
    monkeypatch.setattr("tempfile.mkstemp", _raise(OSError(code, os.strerror(code),
                                                            str(tmp_path / "sub" / ".out.nc.1.x.tmp"))))
    with pytest.raises(OutputError) as ei:
        atomic_write_text(target, "x")
    assert str(ei.value).startswith(f"cannot write {target}: {cause}")


def test_disk_full_mid_write_removes_temporary_and_keeps_old(tmp_path, monkeypatch):
    target = tmp_path / "out.txt"
    atomic_write_text(target, "old")

    def full(self, data):
        with open(self, "wb") as fh:
            fh.write(data[:1])
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(OutputError, match=f"cannot write {target}: No space left on device"):
        atomic_write_text(target, "new content")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_atomic_dir_error_inside_names_the_file_in_the_destination(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(OutputError, match=f"cannot write {out}/a.bin: No space left on device"):
        with atomic_dir(out) as d:
            (d / "half").write_text("1")
            raise OSError(errno.ENOSPC, "No space left on device", str(d / "a.bin"))
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_leaves_errors_about_inputs_alone(tmp_path):
    with pytest.raises(FileNotFoundError):
        with atomic_dir(tmp_path / "run"):
            open(tmp_path / "missing-input.csv")  # noqa: SIM115
    assert list(tmp_path.iterdir()) == []


def test_check_output_dir_refuses_an_unwritable_place_before_work(tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.mkstemp", _raise(PermissionError(errno.EACCES, "Permission denied")))
    with pytest.raises(OutputError, match=f"cannot write {tmp_path}/a/b: Permission denied in {tmp_path}"):
        check_output_dir(tmp_path / "a" / "b")


def test_leftovers_of_a_killed_writer_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (tmp_path / f".run.{dead}.abc.tmp").mkdir()
    (tmp_path / f".run.{dead}.abc.tmp" / "half.nc").write_text("x")
    (tmp_path / f".out.nc.{dead}.def.tmp").write_text("x")
    alive = tmp_path / f".run.{os.getppid()}.ghi.tmp"  # a running writer's: kept
    alive.mkdir()
    with atomic_dir(tmp_path / "run") as d:
        (d / "a").write_text("1")
    atomic_write_text(tmp_path / "out.nc", "y")
    assert sorted(p.name for p in tmp_path.iterdir()) == [alive.name, "out.nc", "run"]


def test_overwrite_moves_the_old_folder_aside_and_removes_it(tmp_path):
    out = tmp_path / "run"
    with atomic_dir(out) as d:
        (d / "old").write_text("1")
    with atomic_dir(out, overwrite=True) as d:
        (d / "new").write_text("2")
    assert [p.name for p in out.iterdir()] == ["new"]
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def _small_tmpfs(script: str, size: str = "64k", ro: bool = False) -> subprocess.CompletedProcess:
    """Run ``script`` (sh) with $MNT a fresh tmpfs of ``size`` in a private mount namespace."""
    opts = f"size={size}" + (",ro" if ro else "")
    return subprocess.run(
        ["unshare", "-rm", "sh", "-c",
         f'MNT=$(mktemp -d) && mount -t tmpfs -o {opts} tmpfs "$MNT" && {script}'],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})


def _can_mount() -> bool:
    try:
        return _small_tmpfs("true").returncode == 0
    except (FileNotFoundError, OSError):
        return False


@pytest.mark.skipif(not _can_mount(), reason="needs unshare and mount (user namespaces)")
@pytest.mark.parametrize("ro", [False, True])
def test_cli_on_a_full_or_read_only_tmpfs(ro):
    cmd = (f'{sys.executable} -m brainattn data synth --out "$MNT/d" --subjects 1 --images 16 '
           '--image-size 32; echo "rc=$?"; ls -A "$MNT"')
    res = _small_tmpfs(cmd, size="200k", ro=ro)
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error")]
    assert len(lines) == 1, res.stderr
    cause = "Read-only file system" if ro else "No space left on device"
    assert lines[0].startswith("error: ") and "cannot write " in lines[0] and cause in lines[0], lines
    assert "Traceback" not in res.stderr
    out = res.stdout.splitlines()
    assert "rc=2" in out and out[-1] == "rc=2"  # nothing at all is left on the mount
