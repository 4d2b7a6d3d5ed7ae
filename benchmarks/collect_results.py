"""Assemble benchmarks/RESULTS.md from the per-benchmark result sections.

Each benchmark script writes its own section (``results_<topic>.md``) with the card, date,
versions and the peers measured in the same run; this script puts them together in a fixed
order under one header. Run it after any benchmark: ``python benchmarks/collect_results.py``.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
ORDER = ["kernels", "encoders", "scale", "mlds", "theory"]

HEADER = """# Benchmark results

Every number here was measured by a script in `benchmarks/` against the peer named beside it,
in the same run, on the same machine (GPU figures: the card named in each section; CPU figures:
the project's 2-core machine). Targets that were missed say by how much and what limits them.
Sections are written by the scripts into `benchmarks/results_<topic>.md` and collected here by
`python benchmarks/collect_results.py`.
"""


def collect() -> str:
    parts = [HEADER]
    names = sorted(p.stem.removeprefix("results_") for p in HERE.glob("results_*.md"))
    for name in [n for n in ORDER if n in names] + [n for n in names if n not in ORDER]:
        parts.append((HERE / f"results_{name}.md").read_text().strip() + "\n")
    return "\n".join(parts)


if __name__ == "__main__":
    (HERE / "RESULTS.md").write_text(collect())
    print(f"wrote {HERE / 'RESULTS.md'}")
