"""The package's layout stays one a newcomer can live in: no import circle between brainattn's
modules (read with ``ast``: nothing is imported), and no file of the package, its tests,
benchmarks or docs grown past ~800 lines unless it is listed below with the reason it earns its
length.

Two circle checks: through module-level imports (what Python runs at import time), and through
every import, deferred ones in functions included (a low-level module that imports back up
inside a function is still a circle in the design, only hidden from the interpreter)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "brainattn"

MAX_LINES = 800

#: files allowed past MAX_LINES: path relative to the repository root -> why
LONG_FILES: dict[str, str] = {
    "README.md": "the user manual: every CLI verb and library entry point with a command that "
                 "runs as written and its measured result, which a newcomer reads top to bottom",
    "benchmarks/RESULTS.md": "the one record of measured numbers (card, versions, peer of each), "
                             "sectioned with a contents list; the kernels section keeps every "
                             "tried change with its measurement so none is tried twice",
}


def _checked_files():
    """The package, its tests, benchmarks and docs: code, shell scripts and Markdown."""
    for folder in ("brainattn", "tests", "benchmarks", "docs"):
        for p in sorted((ROOT / folder).rglob("*")):
            if p.suffix in (".py", ".sh", ".md") and "__pycache__" not in p.parts:
                yield p
    yield from sorted(ROOT.glob("*.md"))

def _module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.Module, *, deferred: bool):
    """Import nodes of a module, without ``if TYPE_CHECKING:`` blocks; those in function bodies
    only when ``deferred`` (otherwise: what runs when the module is imported)."""
    todo = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if deferred:
                todo += node.body
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                todo += node.body
            todo += node.orelse
        elif isinstance(node, ast.Try):
            todo += node.body + node.orelse + node.finalbody
            for h in node.handlers:
                todo += h.body
        elif isinstance(node, (ast.With, ast.ClassDef, ast.For, ast.While)):
            todo += node.body + getattr(node, "orelse", [])


def import_graph(package: Path = PACKAGE, *, deferred: bool = False) -> dict[str, set[str]]:
    """module -> the brainattn modules its imports name (``from a import b`` names ``a.b`` when
    that is a module, else ``a``); module-level imports only unless ``deferred``."""
    files = {_module_name(p, package.parent): p for p in package.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        is_pkg = path.name == "__init__.py"
        edges = graph.setdefault(name, set())
        for node in _imports(ast.parse(path.read_text(encoding="utf-8")), deferred=deferred):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = name.split(".") if is_pkg else name.split(".")[:-1]
                    anchor = anchor[: len(anchor) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base
                           for a in node.names]
            for t in targets:
                while t and t not in files:  # `import a.b.c` of a name inside a module
                    t = t.rpartition(".")[0]
                if t and t != name:
                    edges.add(t)
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def test_cycle_finder_finds_a_planted_circle(tmp_path):
    pkg = tmp_path / "brainattn"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from brainattn.sub import a\n")
    (pkg / "sub" / "a.py").write_text("from . import b\n")
    (pkg / "sub" / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from brainattn.sub import c\n"
        "def f():\n    import brainattn.sub.a\nfrom brainattn.sub.c import X\n")
    (pkg / "sub" / "c.py").write_text("import brainattn.sub.a\n")
    graph, deferred = import_graph(pkg), import_graph(pkg, deferred=True)
    assert graph["brainattn.sub.b"] == {"brainattn.sub.c"}  # deferred and TYPE_CHECKING skipped
    assert deferred["brainattn.sub.b"] == {"brainattn.sub.a", "brainattn.sub.c"}
    assert graph["brainattn.sub"] == {"brainattn.sub.a"}
    assert import_cycles(graph) == [["brainattn.sub.a", "brainattn.sub.b", "brainattn.sub.c"]]
    (pkg / "sub" / "c.py").write_text("def g():\n    import brainattn.sub.a\n")
    graph, deferred = import_graph(pkg), import_graph(pkg, deferred=True)
    assert import_cycles(graph) == []
    assert import_cycles(deferred) == [["brainattn.sub.a", "brainattn.sub.b", "brainattn.sub.c"]]


def test_no_import_cycle():
    cycles = import_cycles(import_graph())
    assert not cycles, "import circles between brainattn modules: " + "; ".join(
        " <-> ".join(c) for c in cycles)


def test_no_import_cycle_through_deferred_imports():
    cycles = import_cycles(import_graph(deferred=True))
    assert not cycles, "import circles (deferred imports included): " + "; ".join(
        " <-> ".join(c) for c in cycles)


def test_no_file_past_the_line_limit_without_a_reason():
    long = {str(p.relative_to(ROOT)): n for p in _checked_files()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    unlisted = {p: n for p, n in long.items() if p not in LONG_FILES}
    assert not unlisted, (f"files over {MAX_LINES} lines: {unlisted}; split them by job, or "
                          "list them in LONG_FILES with the reason")
    # a listed file that is gone (split into others) is no reason to fail; one still there and
    # short again should leave the list
    stale = sorted(p for p in set(LONG_FILES) - set(long) if (ROOT / p).is_file())
    assert not stale, f"LONG_FILES lists files that are no longer long: {stale}"
    terse = [p for p, why in LONG_FILES.items() if len(why.split()) < 5]
    assert not terse, f"give the reason in a sentence for {terse}"
