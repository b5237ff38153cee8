"""The import structure of ``src/vitq``: no cycles between sub-packages, and the layering rules.

Every module under ``src/vitq`` is parsed with :mod:`ast`; *all* of its imports count, including those
inside functions and methods (a function-level import hides a cycle from Python, not from the design).
Imports under ``if TYPE_CHECKING:`` are ignored (they never run). Relative imports are resolved.
Imports by computed name (``importlib.import_module(name)``, the model registries' plugin loading) are not
seen; today they stay within :mod:`vitq.models`.

Each module maps to its *node*: ``vitq.X`` for a sub-package ``vitq/X/`` or a top-level module
``vitq/X.py``, and ``vitq`` for the package's ``__init__.py``. Importing ``vitq.a.b`` counts as an edge to
the node of ``vitq.a.b`` only (not to the parent packages whose ``__init__`` Python also runs).

The checks:

- no cycle between nodes;
- layers: the building blocks ``vitq.quantizers`` and ``vitq.nn`` import none of the packages built on
  them; nothing but ``vitq.cli`` itself and ``vitq.__main__`` imports ``vitq.cli``;
- within ``vitq.data``, no cycle between its modules.

The source tree is ``src/vitq`` next to this file; ``VITQ_IMPORT_LAYERS_SRC=/path/to/src/vitq`` checks
another checkout (e.g. to see what an older tree violates).
"""

from __future__ import annotations

import ast
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(os.environ.get("VITQ_IMPORT_LAYERS_SRC") or Path(__file__).resolve().parents[1] / "src" / "vitq")
ROOT = "vitq"

#: node -> nodes it must not import (directly; a cycle check covers the indirect routes back)
FORBIDDEN = {
    "vitq.quantizers": {"vitq.calibration", "vitq.bench", "vitq.cli", "vitq.report", "vitq.export", "vitq.mp",
                        "vitq.peers"},
    "vitq.nn": {"vitq.calibration", "vitq.bench", "vitq.cli", "vitq.report", "vitq.export", "vitq.mp",
                "vitq.peers"},
    # recipes are data: every layer may read them, they execute nothing
    "vitq.recipes": {"vitq.calibration", "vitq.lifecycle", "vitq.nn", "vitq.quantizers", "vitq.models", "vitq.config",
                     "vitq.bench", "vitq.cli", "vitq.report", "vitq.export", "vitq.mp", "vitq.peers"},
    # the calibration engine runs below the lifecycle that calls it
    "vitq.calibration": {"vitq.lifecycle", "vitq.bench", "vitq.cli", "vitq.report", "vitq.export", "vitq.mp",
                         "vitq.peers"},
}
#: the only nodes allowed to import ``vitq.cli``
CLI_IMPORTERS = {"vitq.cli", "vitq.__main__"}


@dataclass(frozen=True)
class Import:
    source: str  # importing module, e.g. vitq.export.serialization
    target: str  # imported module, e.g. vitq.models.loading
    file: str  # path relative to the directory holding the package
    line: int
    text: str  # the import statement as written

    def where(self) -> str:
        return f"{self.file}:{self.line}: {self.text}"


def module_names(src: Path) -> dict[str, Path]:
    """``{dotted module name: file}`` of every module of the package at ``src``."""
    mods = {}
    for path in sorted(src.rglob("*.py")):
        parts = list(path.relative_to(src.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        mods[".".join(parts)] = path
    return mods


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST):
    """Every Import/ImportFrom of ``tree``, at any depth, except the bodies of ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)  # the else branch runs
            continue
        stack.extend(ast.iter_child_nodes(node))


def _known(name: str, modules: dict[str, Path]) -> str:
    """The longest prefix of ``name`` that is a module of the package (``name`` may name an attribute)."""
    parts = name.split(".")
    while parts and ".".join(parts) not in modules:
        parts.pop()
    return ".".join(parts) if parts else name


def imports_of(module: str, path: Path, modules: dict[str, Path], base_dir: Path) -> list[Import]:
    """The package-internal imports of one module, resolved to module names (``file`` relative to ``base_dir``)."""
    source = path.read_text()
    tree = ast.parse(source, filename=str(path))
    lines = source.splitlines()
    is_pkg = path.name == "__init__.py"
    rel = str(path.relative_to(base_dir))
    found = []
    for node in _import_nodes(tree):
        text = lines[node.lineno - 1].strip()
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            if node.level:
                base = module.split(".") if is_pkg else module.split(".")[:-1]
                if node.level > 1:
                    base = base[: len(base) - (node.level - 1)]
                stem = ".".join([*base, node.module] if node.module else base)
            else:
                stem = node.module or ""
            for alias in node.names:
                sub = f"{stem}.{alias.name}"
                targets.append(sub if sub in modules else stem)  # `from pkg import submodule` vs a name
        for t in targets:
            if t == ROOT or t.startswith(ROOT + "."):
                found.append(Import(module, _known(t, modules), rel, node.lineno, text))
    return sorted(set(found), key=lambda i: (i.line, i.target))  # one per statement and imported module


def all_imports(src: Path = SRC) -> list[Import]:
    modules = module_names(src)
    return [imp for mod, path in modules.items() for imp in imports_of(mod, path, modules, src.parent.parent)]


def node_of(module: str) -> str:
    """``vitq.X`` for anything in sub-package X or top-level module X; ``vitq`` for the package itself."""
    parts = module.split(".")
    return ".".join(parts[:2])


def graph(imports: list[Import], key) -> dict[tuple[str, str], list[Import]]:
    """``{(source node, target node): the imports making that edge}``, self-edges dropped."""
    edges: dict[tuple[str, str], list[Import]] = defaultdict(list)
    for imp in imports:
        a, b = key(imp.source), key(imp.target)
        if a != b:
            edges[a, b].append(imp)
    return edges


def strongly_connected(edges) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan), sorted."""
    succ: dict[str, set[str]] = defaultdict(set)
    for a, b in edges:
        succ[a].add(b)
        succ[b]
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    comps: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(succ[v]):
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
                comps.append(sorted(comp))

    for v in sorted(succ):
        if v not in index:
            visit(v)
    return sorted(comps)


def simple_cycles(edges, nodes: list[str], limit: int = 50) -> list[list[str]]:
    """Elementary cycles within ``nodes`` (each listed once, from its smallest node), at most ``limit``."""
    inside = set(nodes)
    succ: dict[str, list[str]] = defaultdict(list)
    for a, b in sorted(edges):
        if a in inside and b in inside:
            succ[a].append(b)
    cycles: list[list[str]] = []

    def walk(start: str, v: str, path: list[str]) -> None:
        for w in succ[v]:
            if len(cycles) >= limit:
                return
            if w == start:
                cycles.append([*path, start])
            elif w > start and w not in path:
                walk(start, w, [*path, w])

    for start in sorted(inside):
        walk(start, start, [start])
    return sorted(cycles, key=lambda c: (len(c), c))


def cycle_report(edges, what: str) -> str:
    """A readable report of every cycle in ``edges``; empty when there is none."""
    out = []
    for comp in strongly_connected(edges):
        out.append(f"{what} cycle among {{{', '.join(comp)}}}:")
        cycles = simple_cycles(edges, comp)
        for c in cycles:
            out.append("  cycle: " + " -> ".join(c))
        out.append("  imports making these edges (every one lies on a cycle):")
        for (a, b), imps in sorted(edges.items()):
            if a in comp and b in comp:
                out.append(f"    {a} -> {b}")
                out.extend(f"      {imp.where()}" for imp in imps)
    return "\n".join(out)


def layer_violations(edges) -> list[str]:
    out = []
    for (a, b), imps in sorted(edges.items()):
        if b in FORBIDDEN.get(a, ()):
            reason = f"{a} must not import {b}"
        elif b == "vitq.cli" and a not in CLI_IMPORTERS:
            reason = f"only {sorted(CLI_IMPORTERS)} may import vitq.cli, not {a}"
        else:
            continue
        out.append(reason + ":")
        out.extend(f"    {imp.where()}" for imp in imps)
    return out


@pytest.fixture(scope="module")
def imports() -> list[Import]:
    assert (SRC / "__init__.py").is_file(), f"no package at {SRC}"
    return all_imports(SRC)


def test_the_scan_sees_function_level_and_relative_imports(tmp_path):
    pkg = tmp_path / "vitq"
    (pkg / "a").mkdir(parents=True)
    (pkg / "b").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a" / "__init__.py").write_text("from .x import f\n")
    (pkg / "a" / "x.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from vitq.c import T\n"
        "def f():\n    from ..b import y\n    import vitq.b.y as yy\n    from vitq import b\n")
    (pkg / "b" / "__init__.py").write_text("")
    (pkg / "b" / "y.py").write_text("class K:\n    def m(self):\n        from vitq.a.x import f\n")
    (pkg / "c.py").write_text("T = 1\n")
    found = {(i.source, i.target, i.line) for i in all_imports(pkg)}
    assert found == {("vitq.a", "vitq.a.x", 1), ("vitq.a.x", "vitq.b.y", 5), ("vitq.a.x", "vitq.b.y", 6),
                     ("vitq.a.x", "vitq.b", 7), ("vitq.b.y", "vitq.a.x", 3)}
    edges = graph(all_imports(pkg), lambda m: node_of(m))
    assert strongly_connected(edges) == [["vitq.a", "vitq.b"]]
    assert "cycle: vitq.a -> vitq.b -> vitq.a" in cycle_report(edges, "test")


def test_the_scan_is_not_vacuous(imports):
    edges = graph(imports, node_of)
    assert ("vitq.__main__", "vitq.cli") in edges and ("vitq.nn", "vitq.quantizers") in edges
    assert len({node_of(i.source) for i in imports}) >= 15


def test_no_cycles_between_subpackages(imports):
    report = cycle_report(graph(imports, node_of), "sub-package")
    assert not report, "import cycles between vitq's sub-packages:\n" + report


def test_layers(imports):
    bad = layer_violations(graph(imports, node_of))
    assert not bad, "layer violations:\n" + "\n".join(bad)


def test_no_cycles_between_data_modules(imports):
    data = [i for i in imports if i.source.startswith("vitq.data") and i.target.startswith("vitq.data")]
    report = cycle_report(graph(data, lambda m: m), "vitq.data module")
    assert not report, "import cycles between the modules of vitq.data:\n" + report
