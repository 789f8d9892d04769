"""The package's layout is its data flow: imports go one way and never in a circle.

Every ``import`` of an ``edge_agent`` module is read from the source (those inside
functions too: a lazy import is still a dependency), so these tests fail on the
commit that adds a backward import, not when it first bites.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

PACKAGE = REPO / "edge_agent"

#: Lower layers never import higher ones. Modules of one layer may import each other
#: (without cycles, checked below).
LAYERS = (
    ("edge_agent", "edge_agent.errors", "edge_agent.frame", "edge_agent.jsonl", "edge_agent.logs"),
    ("edge_agent.signal",),
    ("edge_agent.models",),
    ("edge_agent.readers", "edge_agent.schema"),
    ("edge_agent.runtime",),
    ("edge_agent.mqtt", "edge_agent.report"),
    ("edge_agent.fleet",),
    ("edge_agent.service", "edge_agent.demo", "edge_agent.cli", "edge_agent.__main__"),
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports() -> dict[str, set[str]]:
    """``{module: {edge_agent modules it imports}}`` for every module of the package."""
    names = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in names.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            found |= {t for t in targets if t in names and t != name}
        graph[name] = found
    return graph


def layer(module: str) -> int:
    best = None
    for i, members in enumerate(LAYERS):
        for m in members:
            if module == m or module.startswith(m + ".") and m != "edge_agent":
                best = i
    assert best is not None, f"{module} belongs to no layer: add it to LAYERS"
    return best


def test_every_module_has_a_layer_and_imports_only_below_or_beside_it():
    backward = [f"{m} (layer {layer(m)}) imports {t} (layer {layer(t)})"
                for m, targets in imports().items() for t in targets if layer(t) > layer(m)]
    assert backward == []


def test_no_import_cycles():
    graph = imports()
    # a package's __init__ importing its own modules is not a cycle of the flow
    graph = {m: {t for t in ts if not m or not t.startswith(m + ".")} for m, ts in graph.items()}
    cycles, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_no_module_is_much_over_400_lines():
    long = {module_name(p): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 450}
    assert long == {}
