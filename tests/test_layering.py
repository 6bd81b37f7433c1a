"""The architecture as imports: no module imports another that imports it back (at any depth, lazy
imports included, type-only ones not), and the runtime reaches nothing of export, quant or bench."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SKIPPED = {"tests", "js", "build", "examples", "edgeinfer-demo"}


def _modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[0] in SKIPPED or parts[0].startswith(".") or any(p.endswith(".egg-info") for p in parts):
            continue
        name = ".".join(("edgeinfer", *parts))
        found[name.removesuffix(".__init__")] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    type_only = {id(node) for block in ast.walk(tree) if isinstance(block, ast.If)
                 and getattr(block.test, "id", "") == "TYPE_CHECKING" for node in ast.walk(block)}
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in type_only or not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in modules)
            continue
        base = package
        for _ in range(node.level - 1):
            base = base.rsplit(".", 1)[0]
        target = (f"{base}.{node.module}" if node.module else base) if node.level else node.module or ""
        for alias in node.names:
            found.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in modules else target)
    return {m for m in found if m in modules and m not in (name, "edgeinfer")}  # `from .. import __version__`


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while group[-1:] != [v]:
                group.append(stack.pop())
            if len(group) > 1:
                groups.append(sorted(group))

    for v in graph:
        if v not in index:
            visit(v)
    return groups


def test_no_module_imports_one_that_imports_it_back():
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert "edgeinfer.runtime.encoder.session" in graph and graph["edgeinfer.runtime.encoder.session"]
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_runtime_reaches_nothing_of_export_quant_or_bench():
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    for name in (m for m in graph if m.startswith("edgeinfer.runtime")):
        outside = [m for m in graph[name] if m.split(".")[1] in ("export", "quant", "bench")]
        assert outside == [], f"{name} imports {outside}"


RUNTIME_ENTRANCES = {"edgeinfer.runtime.load", "edgeinfer.runtime.describe"}  # they open either room


def test_the_encoder_and_decoder_runtimes_keep_to_their_rooms():
    """Each room may use the shared runtime below it, never the other room; the shared modules use
    neither (only the entrances, which dispatch to both, may)."""
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    rooms = ("edgeinfer.runtime.encoder", "edgeinfer.runtime.decoder")
    assert all(any(m.startswith(room + ".") for m in graph) for room in rooms)
    for name in (m for m in graph if m.startswith("edgeinfer.runtime")):
        own = next((room for room in rooms if name == room or name.startswith(room + ".")), None)
        if name in RUNTIME_ENTRANCES:
            continue
        reached = [m for m in graph[name] for room in rooms if room != own and m.startswith(room + ".")]
        assert reached == [], f"{name} imports {reached}"
