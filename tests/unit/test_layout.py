"""The layout holds: the runtime package imports nothing of the repository's tooling (bench/,
tools/, harness/, tests/), and its modules import each other without cycles.

Imports are read with `ast` from every module under src/attachfs (Alembic's migrations aside),
including the imports inside functions: a cycle broken only by a late import is still a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
TOOLING = ("bench", "tools", "harness", "tests")


def _modules() -> dict[str, Path]:
    mods = {}
    for path in (SRC / "attachfs").rglob("*.py"):
        if "migrations" in path.parts:
            continue
        name = ".".join(path.relative_to(SRC).with_suffix("").parts)
        mods[name.removesuffix(".__init__")] = path
    return mods


def _imported(path: Path) -> set[str]:
    """Every absolute module name an import statement anywhere in `path` names (for `from M
    import x`: M, and M.x in case x is a module)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            nxt = next(edges, None)
            if nxt is not None:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_runtime_does_not_import_the_tooling() -> None:
    offending = {name: sorted(i for i in _imported(path) if i.split(".")[0] in TOOLING)
                 for name, path in _modules().items()}
    assert {k: v for k, v in offending.items() if v} == {}


def test_no_import_cycles() -> None:
    mods = _modules()
    graph = {name: (_imported(path) & mods.keys()) - {name} for name, path in mods.items()}
    assert _cycles(graph) == []


def test_cycle_finder_finds_cycles() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
