"""Atomic writes, NetCDF results with provenance, safe loading of user files.

Every artefact brainattn writes goes through :func:`atomic_path` (or a helper built on it):
the content is written to a temporary file in the destination folder and renamed into place,
so an interrupted run never leaves a half-written file behind.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import glob
import io as _io
import json
import os
import pickle
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from brainattn.errors import DataError, OutputError, OutputExistsError, UnsafeFileError

# --------------------------------------------------------------------------------------------
# atomic writes


#: errno values of an output that cannot be written (as opposed to a bug in brainattn)
_WRITE_ERRNOS = {errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT, errno.EFBIG,
                 errno.EIO}


def write_error(exc: BaseException, path: str | os.PathLike, tmp: str | os.PathLike | None = None,
                *, creating: bool = False) -> OutputError | None:
    """The :class:`OutputError` for ``exc`` raised while writing ``path`` (or ``tmp``), else None.

    The message names the file the user asked for (the temporary name ``tmp`` in the OS error
    is mapped back onto ``path``) and the cause (``Read-only file system``, ``No space left on
    device``, ...). HDF5 reports a full disk or a refused file as an ``OSError`` without an
    errno; its first line is the cause then. ``creating``: the error came from making the
    folder or temporary file, so any OS error is about the output. Errors about other files
    (an input read inside the ``with`` block) are left alone.
    """
    if not isinstance(exc, OSError) or isinstance(exc, BrokenPipeError):
        return None
    where = str(exc.filename) if exc.filename else str(path)
    ours = str(path) if tmp is None else str(tmp)
    if not creating:
        if exc.errno is not None and exc.errno not in _WRITE_ERRNOS:
            return None
        if exc.filename and not (where.startswith(ours) or where.startswith(str(path))):
            return None
    if tmp is not None and where.startswith(str(tmp)):
        where = str(path) + where[len(str(tmp)):]
    elif Path(where).name.startswith(f".{Path(path).name}.") and where.endswith(".tmp"):
        where = str(path)  # the temporary file or folder could not be made
    text = str(exc)
    cause = exc.strerror or (text.splitlines()[0] if text else type(exc).__name__)
    if exc.errno is None and "requested and" in cause and "written" in cause:
        cause = f"No space left on device ({cause})"  # numpy's short-write report
    return OutputError(f"cannot write {where}: {cause} (choose another output location, or free "
                       "space or grant permission there)")


def _tmp_prefix(path: Path) -> str:
    # the writer's pid in the name lets a later run remove what a killed one left (kill -9)
    return f".{path.name}.{os.getpid()}."


def _remove_stale_tmp(path: Path) -> None:
    """Remove temporary siblings of ``path`` left by a process that no longer runs."""
    try:
        entries = list(path.parent.glob(f".{glob.escape(path.name)}.*.tmp"))
    except OSError:
        return
    for p in entries:
        pid = p.name[len(path.name) + 2:].split(".", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid() or _alive(int(pid)):
            continue
        with contextlib.suppress(OSError):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    On any exception the temporary file is removed and ``path`` is untouched; an OS error
    (read-only file system, permission denied, disk full) becomes an :class:`OutputError`
    naming ``path`` and the cause. Temporary files of killed runs are removed.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_tmp(path)
        fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(path), suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise write_error(exc, path, creating=True) from exc
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; outputs follow the umask
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        err = write_error(exc, path, tmp_path)
        if err is not None:
            raise err from exc
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def atomic_save_npy(path: str | os.PathLike, array: np.ndarray) -> Path:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, np.asarray(array), allow_pickle=False)
    return Path(path)


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"cannot serialise {type(o).__name__} to JSON")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Build a whole output folder in a temporary sibling, then move it into place.

    Refuses an existing non-empty ``path`` unless ``overwrite``; on failure nothing is left, and
    an OS error while writing becomes an :class:`OutputError` naming the file and the cause.
    """
    path = Path(path)
    check_output_dir(path, overwrite=overwrite)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_tmp(path)
        tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(path), suffix=".tmp", dir=path.parent))
    except OSError as exc:
        raise write_error(exc, path, creating=True) from exc
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; outputs follow the umask
        yield tmp
        if path.exists():
            # the old folder moves aside first: a crash between the two renames leaves it in a
            # temporary sibling (removed by the next run), never a mix of old and new files
            old = Path(tempfile.mkdtemp(prefix=_tmp_prefix(path), suffix=".tmp", dir=path.parent))
            os.replace(path, old / path.name)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        err = write_error(exc, path, tmp)
        if err is not None:
            raise err from exc
        raise


def check_output_dir(path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Refuse an output folder that exists and is not empty, unless ``overwrite``, or that
    cannot be written (see :func:`check_writable`)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputExistsError(f"output {path}: exists and is not a folder")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise OutputExistsError(
            f"output folder {path} exists and is not empty; choose another folder or pass --overwrite"
        )
    check_writable(path)
    return path


def check_writable(path: str | os.PathLike) -> Path:
    """Refuse, before any work, an output ``path`` whose folder cannot be written.

    Probes with a temporary file in the nearest existing ancestor of ``path`` (``os.access``
    is not enough: it answers yes to root on a mount that refuses writes for other reasons).
    Raises :class:`OutputError` naming ``path`` and the cause.
    """
    path = Path(path)
    probe_dir = path.parent
    while not probe_dir.exists() and probe_dir != probe_dir.parent:
        probe_dir = probe_dir.parent
    try:
        fd, probe = tempfile.mkstemp(prefix=_tmp_prefix(path), suffix=".tmp", dir=probe_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        cause = exc.strerror or str(exc)
        raise OutputError(f"cannot write {path}: {cause} in {probe_dir} (choose another output "
                          "location, or free space or grant permission there)") from exc
    return path


# --------------------------------------------------------------------------------------------
# provenance and NetCDF


def provenance(seed: int | None = None, **extra: Any) -> dict[str, Any]:
    """Attributes stamped on every saved result: version, command line, seed, UTC time, device."""
    from brainattn import __version__

    attrs: dict[str, Any] = {
        "brainattn_version": __version__,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else "",
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if seed is not None:
        attrs["seed"] = int(seed)
    try:
        import torch

        attrs["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
        attrs["torch_version"] = torch.__version__
    except Exception:  # pragma: no cover
        attrs["device"] = "cpu"
    for k, v in extra.items():
        attrs[k] = v
    return attrs


def _netcdf_safe_attrs(attrs: dict) -> dict:
    out = {}
    for k, v in attrs.items():
        if v is None:
            continue
        if isinstance(v, bool):
            v = int(v)
        elif isinstance(v, str):
            v = str(v)  # str subclasses (torch's TorchVersion) confuse h5py
        elif isinstance(v, (dict, list, tuple)) and not (
            isinstance(v, (list, tuple)) and all(isinstance(x, (int, float)) for x in v) and len(v) > 0
        ):
            v = json.dumps(v, default=_json_default)
        elif isinstance(v, Path):
            v = str(v)
        out[k] = v
    return out


def save_netcdf(ds, path: str | os.PathLike, *, seed: int | None = None, **extra: Any) -> Path:
    """Save an ``xarray.Dataset`` atomically (h5netcdf engine) with provenance attrs added."""
    ds = ds.copy()
    attrs = dict(ds.attrs)
    for k, v in provenance(seed=seed, **extra).items():
        attrs.setdefault(k, v)
    ds.attrs = _netcdf_safe_attrs(attrs)
    for name in list(ds.variables):
        ds[name].attrs = _netcdf_safe_attrs(dict(ds[name].attrs))
    with atomic_path(path) as tmp:
        ds.to_netcdf(tmp, engine="h5netcdf", invalid_netcdf=True)
    return Path(path)


def load_netcdf(path: str | os.PathLike):
    """Load a NetCDF file fully into memory (the file is closed on return)."""
    import xarray as xr

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file (expected a NetCDF file written by brainattn)")
    with xr.open_dataset(path, engine="h5netcdf") as ds:
        return ds.load()


# --------------------------------------------------------------------------------------------
# safe loading of user files


def read_json(path: str | os.PathLike, *, what: str = "a JSON file", hint: str = "") -> Any:
    """Read a JSON file; a missing, unreadable or invalid file is a :class:`DataError` that
    names the file, says what it should hold and what to do (``hint``)."""
    path = Path(path)
    tail = f"; {hint}" if hint else ""
    if not path.is_file():
        raise DataError(f"{path}: missing (expected {what}){tail}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, OSError) as exc:  # JSONDecodeError is a ValueError
        raise DataError(f"{path}: damaged, not valid JSON ({exc}; expected {what}){tail}") from exc



def load_npy(path: str | os.PathLike, *, mmap: bool = False) -> np.ndarray:
    """Load a ``.npy`` array without ever unpickling (object arrays are refused)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except ValueError as exc:
        if "allow_pickle" in str(exc) or "Object arrays" in str(exc) or "object" in str(exc).lower():
            raise UnsafeFileError(
                f"{path}: holds pickled Python objects; brainattn only reads plain numeric .npy arrays"
            ) from exc
        raise DataError(f"{path}: not a readable .npy array ({exc})") from exc
    except Exception as exc:  # noqa: BLE001 - numpy raises EOFError, OSError, SyntaxError,
        # tokenize.TokenError, ... for an empty or cut-short file or a damaged header
        what = "empty" if path.stat().st_size == 0 else f"{type(exc).__name__}: {exc}"
        raise DataError(f"{path}: not a readable .npy array ({what}; the file is damaged or "
                        "not a .npy file)") from exc


_PLAIN_BUILTINS = {"dict", "int", "str", "float", "bool", "list", "tuple", "set", "frozenset", "complex"}


class _PlainUnpickler(pickle.Unpickler):
    """Unpickler that only rebuilds plain data; any global lookup is refused.

    Dicts, ints, strings, floats and None are pickled with opcodes that need no global, so any
    ``find_class`` call means the file asks for code or a class: refused. The only exceptions
    are NumPy scalars (``numpy.int64`` keys written by numpy), rebuilt from raw bytes.
    """

    def __init__(self, fh, source: str):
        super().__init__(fh)
        self._source = source

    def find_class(self, module, name):  # noqa: D401 - pickle API
        if module == "builtins" and name in _PLAIN_BUILTINS:
            return getattr(__import__("builtins"), name)
        if module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            if name == "scalar":
                return _np_scalar
            if name == "_reconstruct":
                return _np_reconstruct
        if module == "numpy" and name == "dtype":
            return _np_dtype
        if module == "numpy" and name == "ndarray":
            return np.ndarray
        raise UnsafeFileError(
            f"{self._source}: refuses to load '{module}.{name}'; the file must hold only a plain "
            "dict of int/str/float/None (a pickle naming code or classes is never executed)"
        )


def _np_scalar(dtype, data):
    if not isinstance(dtype, np.dtype) or dtype.kind not in "biuf" or not isinstance(data, bytes):
        raise UnsafeFileError("refuses a numpy scalar that is not a plain number")
    return np.frombuffer(data, dtype=dtype)[0].item()


def _np_reconstruct(subtype, shape, dtype_code):
    # np.save(path, dict) stores a 0-d object ndarray; numpy rebuilds it with _reconstruct and
    # then fills it through ndarray.__setstate__ (numpy's own code; the items are still
    # unpickled by this restricted unpickler and checked afterwards).
    if subtype is not np.ndarray:
        raise UnsafeFileError(f"refuses to rebuild an array of type {subtype!r}")
    return np.ndarray.__new__(np.ndarray, shape, dtype_code)


def _np_dtype(spec, align=False, copy=False):
    if not isinstance(spec, str) or spec.lstrip("<>|=") not in {
        "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f4", "f8", "b1", "O8", "O4",
    }:
        raise UnsafeFileError(f"refuses numpy dtype {spec!r}")
    return np.dtype(spec)


def _check_plain(obj, source: str, depth: int = 0):
    if depth > 20:
        raise UnsafeFileError(f"{source}: nested too deeply")
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            _check_plain(k, source, depth + 1)
            _check_plain(v, source, depth + 1)
        return
    raise UnsafeFileError(
        f"{source}: holds a {type(obj).__name__}; expected only a dict of int/str/float/None"
    )


def load_plain_pickle(path_or_bytes: str | os.PathLike | bytes, *, source: str | None = None) -> dict:
    """Read a pickled dict of plain values (e.g. Algonauts ``mapping_*.npy``) without running code.

    Handles both a raw pickle and the ``.npy`` wrapping numpy gives a pickled 0-d object array
    (``np.save(path, dict)``), which is how the Algonauts mapping files are stored: the object
    array's payload is itself a pickle, read here with the same restricted unpickler.
    """
    if isinstance(path_or_bytes, (bytes, bytearray)):
        raw = bytes(path_or_bytes)
        source = source or "<bytes>"
    else:
        p = Path(path_or_bytes)
        source = source or str(p)
        if not p.is_file():
            raise DataError(f"{p}: no such file")
        raw = p.read_bytes()
    if raw[:6] == b"\x93NUMPY":
        raw = _npy_object_payload(raw, source)
    try:
        obj = _PlainUnpickler(_io.BytesIO(raw), source).load()
    except UnsafeFileError:
        raise
    except Exception as exc:
        raise DataError(f"{source}: not a readable pickled dict ({type(exc).__name__}: {exc})") from exc
    if isinstance(obj, np.ndarray) and obj.dtype == object and obj.ndim == 0:
        obj = obj.item()
    if not isinstance(obj, dict):
        raise UnsafeFileError(f"{source}: holds a {type(obj).__name__}; expected a dict label -> name")
    _check_plain(obj, source)
    return obj


def _npy_object_payload(raw: bytes, source: str) -> bytes:
    """Return the pickle payload of an ``.npy`` file holding a 0-d object array."""
    import ast

    if len(raw) < 12:
        raise DataError(f"{source}: truncated .npy file ({len(raw)} bytes)")
    major = raw[6]
    if major == 1:
        hlen = int.from_bytes(raw[8:10], "little")
        start = 10
    else:
        hlen = int.from_bytes(raw[8:12], "little")
        start = 12
    header = raw[start : start + hlen].decode("latin1")
    try:
        meta = ast.literal_eval(header)
    except Exception as exc:  # noqa: BLE001 - literal_eval raises many types on garbage
        raise DataError(f"{source}: malformed .npy header") from exc
    if not isinstance(meta, dict):
        raise DataError(f"{source}: malformed .npy header")
    if meta.get("descr") != "|O":
        raise DataError(f"{source}: expected a pickled dict, found a numeric array ({meta.get('descr')})")
    return raw[start + hlen :]
