"""The code's shape: the function's package and the dev-stack scripts import without circles, and the
functional core imports nothing from the adapters (its I/O). Every import counts, also one inside a function."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO

#: The functional core: pure functions over bytes and rows. The adapters (S3, PostgreSQL, SNS) are the shell.
CORE = ("contract", "reading", "validation", "processing", "columnar", "lines", "headers", "patterns", "drafting")


def imports(root: Path, package: str) -> dict[str, set[str]]:
    """Module -> the modules of the same package it imports (dotted names below ``package``)."""
    graph: dict[str, set[str]] = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        module = ".".join(p for p in parts if p != "__init__")
        here = [package, *parts[:-1]]  # the package the module sits in
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here[: len(here) - node.level + 1]
                    target = ".".join([*base, *(node.module.split(".") if node.module else [])])
                else:
                    target = node.module or ""
                names = [f"{target}.{a.name}" for a in node.names] + [target]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                if name.startswith(package + "."):
                    inner = name.removeprefix(package + ".")
                    if (root / Path(*inner.split("."))).with_suffix(".py").exists() or (
                        root / Path(*inner.split(".")) / "__init__.py"
                    ).exists():
                        found.add(inner)
        graph[module] = found - {module}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each import circle once (as the path that closes it), by depth-first search."""
    found, state = [], dict.fromkeys(graph, 0)  # 0 unseen, 1 on the path, 2 done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                found.append([*path[path.index(nxt) :], nxt] if nxt in path else [node, nxt])
            elif state.get(nxt) == 0:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for start in sorted(graph):
        if state[start] == 0:
            visit(start, [start])
    return found


@pytest.mark.parametrize(
    ("root", "package"), [(REPO / "lambda" / "ingest", "ingest"), (REPO / "scripts" / "devstack", "devstack")]
)
def test_no_import_circles(root, package):
    graph = imports(root, package)
    assert len(graph) > 5
    assert cycles(graph) == []


def test_the_core_imports_nothing_from_the_adapters():
    graph = imports(REPO / "lambda" / "ingest", "ingest")
    reaches: dict[str, set[str]] = {}

    def closure(module: str) -> set[str]:
        if module not in reaches:
            reaches[module] = set()
            for nxt in graph.get(module, ()):
                reaches[module] |= {nxt, *closure(nxt)}
        return reaches[module]

    assert all(module in graph for module in CORE)
    leaks = {module: sorted(m for m in closure(module) if m.startswith("adapters")) for module in CORE}
    assert {m: found for m, found in leaks.items() if found} == {}


def test_the_check_finds_a_circle_and_a_leak():  # the tests above can fail
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert cycles(graph) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
