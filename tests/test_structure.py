"""The package's shape: the import graph has no cycle, and the loop never imports the recipes, the report or the API.

Every import statement counts, a function-local one too: a late import hides a cycle, it does not remove it.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "selfplay"


def _module(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _top(module: str) -> str:
    """The sub-package or module right under selfplay ('loop' for selfplay.loop.driver)."""
    return module.split(".")[1] if "." in module else ""


def _graph() -> dict[str, set[str]]:
    modules = {_module(p): p for p in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            deps |= {t for t in targets if t in modules and t != name}
        graph[name] = deps
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            # A package's __init__ re-exporting its own submodules is not a cycle between parts.
            if m.startswith(n + "."):
                continue
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (found := visit(m)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_the_import_graph_has_no_cycle():
    assert _cycle(_graph()) is None, " -> ".join(_cycle(_graph()) or [])


def test_the_loop_does_not_import_recipes_reporting_or_the_api():
    graph = _graph()
    upward = {(a, b) for a, deps in graph.items() if _top(a) == "loop"
              for b in deps if _top(b) in ("recipes", "reporting", "api", "cli")}
    assert not upward, sorted(upward)


def test_the_parts_do_not_import_each_other():
    # tasks, generation, verifiers, filters, training and guards share only records, interfaces and helpers.
    parts = {"tasks", "generation", "verifiers", "filters", "training", "guards"}
    graph = _graph()
    crossing = {(a, b) for a, deps in graph.items() for b in deps
                if _top(a) in parts and _top(b) in parts and _top(a) != _top(b)}
    assert not crossing, sorted(crossing)
