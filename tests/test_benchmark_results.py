"""benchmarks/RESULTS.md is the one record of measured numbers: every topic's section is marked
once, and ``benchmarks/_results.py`` rewrites one section without touching another byte."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"


@pytest.fixture(scope="module")
def results():
    spec = importlib.util.spec_from_file_location("bench_results", BENCH / "_results.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_results_is_the_only_record():
    assert not list(BENCH.glob("results_*.md")), "per-topic results files: fold them into RESULTS.md"
    doc = (BENCH / "RESULTS.md").read_text()
    begins = re.findall(r"^<!-- section: (\w+) -->$", doc, re.M)
    ends = re.findall(r"^<!-- /section: (\w+) -->$", doc, re.M)
    assert begins == ends and len(set(begins)) == len(begins)
    # the sections the scripts write are there to be replaced
    assert {"mlds", "theory"} <= set(begins)


def test_write_section_replaces_appends_and_adds(results, tmp_path):
    path = tmp_path / "R.md"
    path.write_text("# T\n\nintro\n\n<!-- section: a -->\nold a\n<!-- /section: a -->\n\n"
                    "<!-- section: b -->\nold b\n<!-- /section: b -->\ntail\n")
    results.write_section("a", "new a\nline 2\n", path=path)
    results.write_section("b", "\nrun 2\n", append=True, path=path)
    results.write_section("c", "first c", path=path)
    assert path.read_text() == (
        "# T\n\nintro\n\n<!-- section: a -->\nnew a\nline 2\n<!-- /section: a -->\n\n"
        "<!-- section: b -->\nold b\n\nrun 2\n<!-- /section: b -->\ntail\n\n"
        "<!-- section: c -->\nfirst c\n<!-- /section: c -->\n")


def test_rewriting_a_section_with_its_own_text_changes_nothing(results, tmp_path):
    doc = (BENCH / "RESULTS.md").read_text()
    path = tmp_path / "RESULTS.md"
    path.write_text(doc)
    mlds = re.search(r"^<!-- section: mlds -->\n(.*?)^<!-- /section: mlds -->$", doc, re.M | re.S)
    results.write_section("mlds", mlds.group(1), path=path)
    assert path.read_text() == doc
