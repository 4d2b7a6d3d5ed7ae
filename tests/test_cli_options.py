"""Every verb's options are checked while the command line is parsed: numeric ranges, input
paths, writable outputs; every ``--option`` a message or help text names exists; a bad
option is answered before torch, xarray or pandas are imported."""

from __future__ import annotations

import ast
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import brainattn
from brainattn.cli import app, main

PACKAGE = Path(brainattn.__file__).parent
#: options of other programs that brainattn passes on or mentions (chromium, torchrun)
FOREIGN = {"--nproc_per_node"}
UNWRITABLE = "/dev/null/out"  # its parent is a file: refused by every --out check, instantly


def _commands():
    root = typer.main.get_command(app)

    def walk(cmd, path):
        subs = getattr(cmd, "commands", None)
        if subs:
            for name, sub in subs.items():
                yield from walk(sub, (*path, name))
        else:
            yield path, cmd

    return list(walk(root, ()))


COMMANDS = _commands()


def _numeric(cmd):
    for p in cmd.params:
        ann = getattr(getattr(p, "type_descriptor", None), "annotation", None)
        if ann in (int, float) and p.opts[0].startswith("--"):
            yield p, ann


NUMERIC = [(path, p.opts[0], ann) for path, cmd in COMMANDS for p, ann in _numeric(cmd)]


def _required_args(path, tmp: Path) -> list[str]:
    """Arguments that pass every parse-time check, so the verb's own options decide."""
    csv = tmp / "trials.csv"
    csv.write_text("resp,S1,S2,S3\n1,1,2,3\n")
    return {("scale", "fit"): [str(csv)], ("fit",): [str(tmp)], ("partition",): [str(tmp)]}.get(
        tuple(path), [])


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    return lines[0]


def test_every_numeric_option_is_checked_at_the_door():
    unchecked = [f"{' '.join(path)} {opt}" for path, cmd in COMMANDS for p, _ in _numeric(cmd)
                 if p.min is None and p.max is None and p.callback is None
                 for opt in p.opts[:1]]
    assert not unchecked, f"numeric options without a range: {unchecked}"


@pytest.mark.parametrize("path,opt,ann", NUMERIC, ids=[f"{' '.join(p)} {o}" for p, o, _ in NUMERIC])
def test_out_of_range_and_garbage_values_are_one_line(path, opt, ann, tmp_path, capsys):
    cmd = dict(COMMANDS)[path]
    param = next(p for p in cmd.params if p.opts[0] == opt)
    bad = ["abc", "", "1,2"] + (["nan", "inf", "-inf"] if ann is float else ["1.5", "1e3"])
    if param.min is not None:
        bad.append(str(param.min - 1))
    if param.max is not None:
        bad.append(str(param.max + 1))
    for value in bad:
        rc = main([*path, opt, value, "--out", UNWRITABLE, *_required_args(path, tmp_path)])
        line = _one_error_line(capsys)
        assert rc == 2 and f"'{opt}'" in line, (value, line)
        if param.min is not None or param.max is not None:
            assert "accepted:" in line or "number in" in line, line


_TEXT = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["nan", "-0", "0x10", "1_000", " 3", "1e-400", "٣", "+5", "--", "-"]),
    st.text(max_size=8),
)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(option=st.sampled_from(NUMERIC), value=_TEXT)
def test_fuzzed_numeric_values_never_give_a_traceback(option, value, tmp_path, capsys):
    """Any text for any numeric option: one ``error:`` line, exit 2; a value in range passes
    the option's check, and the unwritable ``--out`` is what is refused."""
    path, opt, ann = option
    cmd = dict(COMMANDS)[path]
    param = next(p for p in cmd.params if p.opts[0] == opt)
    if value.startswith("-") and not re.fullmatch(r"-[\d.e+-]+|-inf|-nan", value):
        value = " " + value  # an option-like value would be parsed as an option name
    rc = main([*path, f"{opt}={value}", "--out", UNWRITABLE, *_required_args(path, tmp_path)])
    line = _one_error_line(capsys)
    assert rc == 2
    try:
        number = ann(value)
    except (ValueError, OverflowError):
        return
    if ann is int and value.strip() != str(number):
        return  # '1_000', ' 3' and the like: the parser may take or refuse them
    in_range = (math.isfinite(number)
                and (param.min is None or number >= param.min)
                and (param.max is None or number <= param.max))
    if not in_range:
        assert f"'{opt}'" in line, (value, line)
    elif param.callback is None:
        assert "'--out'" in line, (value, line)


def _help_texts(cmd) -> list[str]:
    texts = [cmd.help or ""]
    texts += [p.help or "" for p in cmd.params]
    return texts


def _dashed(text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])--[a-z][a-z0-9_-]*[a-z0-9]", text)) - FOREIGN


def _opts(cmd) -> set[str]:
    names = {o for p in cmd.params for o in (*p.opts, *getattr(p, "secondary_opts", ()))}
    return names | {"--help", "--debug", "--version"}


@pytest.mark.parametrize("path,cmd", COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_options_named_in_help_exist_on_the_verb(path, cmd):
    """An option in a verb's help is the verb's own, unless the text names another verb right
    before it (``scale predict --model texture-path``): then it is that verb's."""
    by_name = {" ".join(p): c for p, c in COMMANDS}
    missing = set()
    for text in _help_texts(cmd):
        text = " ".join(text.split())
        for name, other in sorted(by_name.items(), key=lambda kv: -len(kv[0])):
            for m in re.finditer(rf"{re.escape(name)}((?: [^\s`;.]+)*)", text):
                missing |= _dashed(m.group(1)) - _opts(other)
                text = text.replace(m.group(0), "")
        missing |= _dashed(text) - _opts(cmd)
    assert not missing, f"brainattn {' '.join(path)}: help names {sorted(missing)}"


def test_options_named_in_any_message_exist_on_some_verb():
    """Every ``--option`` in a string of the package (error messages, hints, docstrings) is an
    option of a verb; chromium's flags in report/browser.py are passed to chromium."""
    known = set().union(*(_opts(cmd) for _, cmd in COMMANDS))
    missing = {}
    for f in PACKAGE.rglob("*.py"):
        if f.name == "browser.py":
            continue
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                for opt in _dashed(node.value) - known:
                    missing.setdefault(opt, set()).add(str(f.relative_to(PACKAGE)))
    assert not missing, f"options that no verb has: {missing}"


def test_hints_for_data_problems_point_at_fit_options():
    fit = dict(COMMANDS)[("fit",)]
    assert {"--drop-nonfinite", "--allow-empty-rois"} <= _opts(fit)


@pytest.mark.parametrize("argv", [
    ["--help"],
    ["fit", "--help"],
    ["scale", "fit", "missing.csv"],
    ["fit", "/no/such/data", "--out", "x"],
    ["data", "synth", "--out", "x", "--images", "-1"],
    ["simulate", "pavlovian", "--out", "x", "--seed", "-1"],
    ["report", "/no/such/run"],
    ["demo", "--seed", "nan"],
])
def test_help_and_argument_errors_import_nothing_heavy(argv):
    """``--help`` and argument errors are answered before torch, xarray or pandas load (what
    makes them take ~0.2 s instead of 1-3 s on a 2-core machine)."""
    code = ("import sys; from brainattn.cli import main; rc = main(sys.argv[1:]); "
            "print(sorted(m for m in ('torch', 'xarray', 'pandas', 'scipy', 'matplotlib') "
            "if m in sys.modules), rc)")
    res = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True)
    assert res.stdout.strip().splitlines()[-1] in ("[] 0", "[] 2"), (res.stdout[-300:], res.stderr)
