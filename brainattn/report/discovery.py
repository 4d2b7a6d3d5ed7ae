"""Find out what a folder holds: a demo folder with stage subfolders, or one command's run.

A *run* is recognised by its result files:

========================  ==================================================================
kind                      files (``*`` = required for the section to be complete)
========================  ==================================================================
``encoders``              ``scores.nc``\\*, ``config.json``, ``history.csv`` (trained models),
                          ``attention.nc`` (transformer)
``psychophysics``         ``scale.nc``\\*, ``summary.txt``
``theory``                ``results.nc``\\*, ``config.json``, ``figure.png``
``data``                  ``subjXX/training_split`` (Algonauts layout)
========================  ==================================================================

A *demo folder* holds stage subfolders ``data/``, ``encoders/`` (one run folder per model, or a
single run), ``psychophysics/`` and ``theory/<name>/``. Missing stages or files (an interrupted
run) are recorded in :attr:`Run.missing` and drawn as "missing" notes, never as errors; a folder
that holds none of the above is refused with a message listing the files looked for.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from brainattn.errors import DataError

#: stage subfolders of a demo folder, in page order
STAGES = ("data", "encoders", "psychophysics", "theory")

#: the file that makes a folder a run of each kind
MAIN_FILE = {"encoders": "scores.nc", "psychophysics": "scale.nc", "theory": "results.nc"}

#: files each run kind normally holds besides its main file
OPTIONAL_FILES = {
    "encoders": ("config.json", "history.csv", "attention.nc"),
    "psychophysics": ("summary.txt",),
    "theory": ("config.json", "figure.png"),
}


@dataclass
class Run:
    """One run folder to draw.

    Attributes
    ----------
    kind : ``"encoders"``, ``"psychophysics"``, ``"theory"`` or ``"data"``.
    path : the run folder.
    label : short name shown in the page (model name, simulation name, folder name).
    files : name -> path of the result files present.
    missing : human-readable notes on what an interrupted run lacks (shown in the page).
    """

    kind: str
    path: Path
    label: str
    files: dict[str, Path] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)


@dataclass
class Discovery:
    """All runs found under the folders given to the report, plus stage-level gaps."""

    runs: list[Run] = field(default_factory=list)
    missing: dict[str, list[str]] = field(default_factory=dict)  # kind -> notes
    roots: list[Path] = field(default_factory=list)

    def of_kind(self, kind: str) -> list[Run]:
        return [r for r in self.runs if r.kind == kind]

    def note_missing(self, kind: str, note: str) -> None:
        self.missing.setdefault(kind, []).append(note)


def _read_config(path: Path) -> dict:
    p = path / "config.json"
    if not p.is_file():
        return {}
    try:
        obj = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(
            f"{p}: not valid JSON ({exc}); expected the config.json a brainattn run writes"
        ) from exc
    return obj if isinstance(obj, dict) else {}


def _is_algonauts(path: Path) -> bool:
    if (path / "training_split").is_dir():
        return True
    try:
        return any(p.is_dir() and (p / "training_split").is_dir() for p in path.iterdir())
    except OSError:
        return False


def classify(path: str | os.PathLike) -> Run | None:
    """The run kind of a single folder, or ``None`` when it is not a run of any command.

    A folder with only a ``config.json`` naming a model or simulation counts as an interrupted
    run of that kind (its main file is then listed in :attr:`Run.missing`).
    """
    path = Path(path)
    present = {p.name: p for p in path.iterdir() if p.is_file()} if path.is_dir() else {}
    kind = None
    for k, main in MAIN_FILE.items():
        if main in present:
            kind = k
            break
    cfg = None
    if kind is None and "config.json" in present:
        cfg = _read_config(path)
        if "model" in cfg:
            kind = "encoders"
        elif "simulation" in cfg or path.parent.name == "theory":
            kind = "theory"
        elif path.parent.name in MAIN_FILE:
            kind = path.parent.name
    if kind is None and "summary.txt" in present and path.parent.name == "psychophysics":
        kind = "psychophysics"
    if kind is None and ("history.csv" in present or "attention.nc" in present):
        kind = "encoders"
    if kind is None:
        if _is_algonauts(path):
            return Run("data", path, path.name, files={})
        return None
    files = {name: present[name] for name in (MAIN_FILE[kind], *OPTIONAL_FILES[kind]) if name in present}
    run = Run(kind, path, _label(kind, path, cfg if cfg is not None else _read_config(path)), files)
    main = MAIN_FILE[kind]
    if main not in files:
        run.missing.append(
            f"{path / main} is missing (the run was interrupted or is still running); "
            "drawing what exists"
        )
    return run


def _label(kind: str, path: Path, cfg: dict) -> str:
    if kind == "encoders":
        return str(cfg.get("model") or path.name)
    if kind == "theory":
        return str(cfg.get("simulation") or cfg.get("name") or path.name)
    return path.name


def discover(run_dirs) -> Discovery:
    """Walk the folders given to ``brainattn report`` and list the runs to draw.

    Raises :class:`~brainattn.errors.DataError` for a folder that does not exist or holds no
    run at all (naming the files looked for).
    """
    if isinstance(run_dirs, (str, os.PathLike)):
        run_dirs = [run_dirs]
    run_dirs = [Path(p) for p in run_dirs]
    if not run_dirs:
        raise DataError("report: no run folder given; expected one or more RUN_DIR arguments")
    found = Discovery(roots=run_dirs)
    for root in run_dirs:
        if not root.exists():
            raise DataError(f"{root}: no such folder (expected a brainattn run or demo folder)")
        if not root.is_dir():
            raise DataError(f"{root}: is a file; expected a run folder (the folder holding it)")
        run = classify(root)
        stage_dirs = [root / s for s in STAGES if (root / s).is_dir()]
        if run is not None and run.kind != "data":
            found.runs.append(run)
            continue
        if stage_dirs:
            _discover_demo(root, found)
            continue
        if run is not None:  # a bare data set
            found.runs.append(run)
            continue
        # a folder of run folders (e.g. encoders/ with one subfolder per model)
        subruns = [classify(p) for p in sorted(root.iterdir()) if p.is_dir()]
        subruns = [r for r in subruns if r is not None and r.kind != "data"]
        if subruns:
            found.runs.extend(subruns)
            continue
        raise DataError(
            f"{root}: not a brainattn run: no scores.nc (encoders), scale.nc (psychophysics) or "
            "results.nc (theory) found, and no demo stage folders "
            f"({', '.join(s + '/' for s in STAGES)})"
        )
    return found


def _discover_demo(root: Path, found: Discovery) -> None:
    for stage in STAGES:
        d = root / stage
        if not d.is_dir():
            found.note_missing(
                stage, f"{d} is missing: the demo did not reach this stage (interrupted?)"
            )
            continue
        if stage == "data":
            if _is_algonauts(d):
                found.runs.append(Run("data", d, d.name))
            else:
                found.note_missing("data", f"{d} holds no data set (no subjXX/training_split)")
            continue
        run = classify(d)
        if run is not None and run.kind == stage:
            found.runs.append(run)
            continue
        subruns = [classify(p) for p in sorted(d.iterdir()) if p.is_dir()]
        subruns = [r for r in subruns if r is not None and r.kind == stage]
        if not subruns:
            found.note_missing(
                stage, f"{d} holds no {stage} results ({MAIN_FILE[stage]} not found)"
            )
        found.runs.extend(subruns)
