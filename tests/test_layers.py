"""simcli's packages form layers: a module imports only from its own layer's package or from lower layers, and
no two modules import each other, directly or round a cycle. Lazy imports inside functions count too: they are
how a lower layer would reach up unnoticed. And no function grows past 80 lines."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "simcli"

#: Bottom first. A module may import from its own entry's package and from the entries above it in this list.
LAYERS = [
    {"simcli.errors", "simcli.types"},
    {"simcli.io", "simcli.vectors", "simcli.manifest", "simcli.heap"},
    {"simcli.models", "simcli.store"},
    {"simcli.whitening", "simcli.paraphrase", "simcli.evaluate"},
    {"simcli.index", "simcli.training"},
    {"simcli.retrieval", "simcli.scale"},
    {"simcli.serve"},
    {"simcli.cli", "simcli.__main__"},
]
#: `from simcli import __version__`: the package root's metadata, importable from anywhere.
ROOT_NAMES = {"__version__"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The simcli modules a file imports, at any depth of the file."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("simcli.")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                stem = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*stem, base] if base else stem)
            if base == "simcli" and all(a.name in ROOT_NAMES for a in node.names):
                continue
            if base.startswith("simcli"):
                out |= {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names}
    return out - {name}


def _graph() -> dict[str, set[str]]:
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: _imports(path, set(paths)) for name, path in paths.items()}


def _layer(module: str) -> int | None:
    for i, layer in enumerate(LAYERS):
        if any(module == top or module.startswith(top + ".") for top in layer):
            return i
    return None


def test_every_module_has_a_layer() -> None:
    unplaced = sorted(m for m in _graph() if m != "simcli" and _layer(m) is None)
    assert unplaced == []


def test_no_import_reaches_a_higher_layer() -> None:
    upward = sorted(
        f"{a} imports {b}"
        for a, targets in _graph().items()
        for b in targets
        if a != "simcli" and (la := _layer(a)) is not None and ((lb := _layer(b)) is None or lb > la)
    )
    assert upward == []


def test_no_import_cycle() -> None:
    graph = _graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph:
                continue
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state and node != "simcli":
            visit(node, [node])
    assert cycles == []


def test_no_function_is_longer_than_80_lines() -> None:
    """Long functions are split along their steps (decorators and signature count): a longer one is named here."""
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                lines = (node.end_lineno or node.lineno) - first + 1
                if lines > 80:
                    long.append(
                        f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({lines} lines)"
                    )
    assert long == []
