"""The package's shape: no import cycles, no module over about 500 lines, and
the client's layers importing only downwards.

Read from the source with ``ast``, not by importing anything. Imports under
``if TYPE_CHECKING:`` count too: a cycle that only the type checker follows is
still two modules that cannot be understood one without the other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "ratatoskr_client"
MAX_LINES = 520  # "about 500"
#: Modules the client's own work may not grow; being split elsewhere.
TOO_LONG_ELSEWHERE: set[str] = set()


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> set[str]:
    """Modules of this package that ``path`` imports (at module level)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith("ratatoskr_client"))
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    target = ".".join([*base, *([node.module] if node.module else [])])
                else:
                    target = node.module or ""
                if not target.startswith("ratatoskr_client"):
                    continue
                for alias in node.names:  # `from . import x` may name a submodule
                    candidate = f"{target}.{alias.name}"
                    found.add(candidate if candidate in MODULES else target)
            elif isinstance(node, ast.If | ast.Try):
                visit(node.body)
                visit(getattr(node, "orelse", []))

    visit(tree.body)
    found.discard(name)
    return found


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}
GRAPH = {name: imports(path) for name, path in MODULES.items()}


def test_no_import_cycles():
    # Depth-first search; a module on the current path reached again is a cycle.
    state: dict[str, str] = {}
    cycles: list[list[str]] = []

    def visit(name: str, path: list[str]) -> None:
        state[name] = "open"
        for target in sorted(GRAPH.get(name, ())):
            if state.get(target) == "open":
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[name] = "done"

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [name])
    assert cycles == []


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_over_about_500_lines(name: str):
    lines = len(MODULES[name].read_text().splitlines())
    if name in TOO_LONG_ELSEWHERE:
        pytest.skip(f"{name}: {lines} lines, split by other work")
    assert lines <= MAX_LINES, f"{name} has {lines} lines"


def test_the_client_layers_import_downwards_only():
    # The core knows nothing of asyncio, aiohttp or the layers above it.
    core = [n for n in MODULES if n.split(".")[-1] in CORE_MODULES]
    for name in core:
        source = MODULES[name].read_text()
        assert "import asyncio" not in source, name
        assert "import aiohttp" not in source, name
        assert not GRAPH[name] & {
            "ratatoskr_client._driver",
            "ratatoskr_client._socket",
            "ratatoskr_client.client",
            "ratatoskr_client._views",
        }, name
    assert "ratatoskr_client.client" not in GRAPH["ratatoskr_client._driver"]


CORE_MODULES = {
    "_core",
    "_incoming",
    "_liveness",
    "_sending",
    "_outgoing",
    "_documents",
    "_sharing",
    "_peer_to_peer",
    "_waiters",
    "_effects",
    "_settings",
    "membership",
    "peer_state",
    "pacing",
    "backoff",
    "status",
}
