"""Fixtures of the report tests: ``fakes`` (the builders in ``fakes_report.py``) and a fake
theory simulation ``fakesim`` (figure and summary) registered for every test."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "brainattn_tests_report_fakes", Path(__file__).with_name("fakes_report.py"))
_fakes = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_fakes)


@pytest.fixture(scope="session")
def fakes():
    return _fakes


def _register_fakesim(mp: pytest.MonkeyPatch) -> None:
    from brainattn.report.theory import SUMMARIES
    from brainattn.report.theory_figures import FIGURES

    plot, summary = _fakes.fake_simulation()
    mp.setitem(FIGURES, "fakesim", plot)
    mp.setitem(SUMMARIES, "fakesim", summary)


@pytest.fixture(autouse=True)
def fake_theory_simulation(monkeypatch):
    _register_fakesim(monkeypatch)


@pytest.fixture(scope="session")
def demo_report(tmp_path_factory):
    """A fake demo folder rendered once (SVG included): (root, report path, html text)."""
    from brainattn.report import build_report

    root = tmp_path_factory.mktemp("demo")
    _fakes.make_demo(root)
    with pytest.MonkeyPatch.context() as mp:
        _register_fakesim(mp)
        out = build_report(root)
    return root, out, out.read_text(encoding="utf-8")
