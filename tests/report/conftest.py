"""Fixtures of the report tests: ``fakes`` (the builders in ``fakes_report.py``) and a fake
theory module ``brainattn.theory.fakesim`` registered for every test."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "brainattn_tests_report_fakes", Path(__file__).with_name("fakes_report.py"))
_fakes = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_fakes)


@pytest.fixture(scope="session")
def fakes():
    return _fakes


@pytest.fixture(autouse=True)
def fake_theory_module(monkeypatch):
    monkeypatch.setitem(sys.modules, "brainattn.theory.fakesim", _fakes.fake_module())


@pytest.fixture(scope="session")
def demo_report(tmp_path_factory):
    """A fake demo folder rendered once (SVG included): (root, report path, html text)."""
    from brainattn.report import build_report

    root = tmp_path_factory.mktemp("demo")
    _fakes.make_demo(root)
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "brainattn.theory.fakesim", _fakes.fake_module())
        out = build_report(root)
    return root, out, out.read_text(encoding="utf-8")
