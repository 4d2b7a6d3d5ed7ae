"""Write one topic's section of benchmarks/RESULTS.md, the one record of measured numbers.

A topic's section lies between ``<!-- section: NAME -->`` and ``<!-- /section: NAME -->`` lines;
a benchmark script replaces (or appends to) its own section and leaves every other byte of the
file as it was, so hand-written sections and scripted ones live in one file.
"""

from __future__ import annotations

import re
from pathlib import Path

RESULTS = Path(__file__).resolve().with_name("RESULTS.md")


def write_section(name: str, text: str, *, append: bool = False, path: Path = RESULTS) -> Path:
    """Replace section ``name`` by ``text`` (``append=True``: add ``text`` at its end).

    A section not yet in the file is added at the end of the file, with its markers.
    """
    from brainattn.io import atomic_write_text

    begin, end = f"<!-- section: {name} -->", f"<!-- /section: {name} -->"
    doc = path.read_text() if path.exists() else "# Benchmark results\n"
    text = text.strip("\n")
    m = re.search(rf"^{re.escape(begin)}\n(.*?)^{re.escape(end)}$", doc, re.M | re.S)
    if m is None:
        doc = f"{doc.rstrip()}\n\n{begin}\n{text}\n{end}\n"
    else:
        old = m.group(1).rstrip("\n")
        new = f"{old}\n\n{text}" if append and old else text
        doc = f"{doc[:m.start(1)]}{new}\n{doc[m.end(1):]}"
    return atomic_write_text(path, doc)
