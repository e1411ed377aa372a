"""The package's shape, measured from its import graph: the layers of
``docs/architecture.md`` import only downwards, there are no import cycles, and
the sans-I/O cores import neither asyncio nor aiohttp, transitively.

The graph is read from the source with ``ast`` (module-level imports, and those
under ``if``/``try``, ``if TYPE_CHECKING:`` included: a cycle that only the type
checker follows is still two modules that cannot be understood one without the
other). The last tests import the cores in a fresh interpreter and look at
``sys.modules``, which is what "transitively" means at run time (the package's
``__init__`` included). Size is not checked: a module is as long as its one
concept needs (``docs/architecture.md``).
"""

from __future__ import annotations

import ast
import functools
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "ratatoskr_client"
NAME = "ratatoskr_client"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(path: Path) -> tuple[set[str], set[str]]:
    """(modules of this package, top-level names of everything else) that
    ``path`` imports at module level."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text(), str(path))
    ours: set[str] = set()
    theirs: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith(NAME):
                        ours.add(alias.name)
                    else:
                        theirs.add(alias.name.split(".")[0])
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    target = ".".join([*base, *([node.module] if node.module else [])])
                else:
                    target = node.module or ""
                if not target.startswith(NAME):
                    theirs.add(target.split(".")[0])
                    continue
                for alias in node.names:  # `from . import x` may name a submodule
                    candidate = f"{target}.{alias.name}"
                    ours.add(candidate if candidate in MODULES else target)
            elif isinstance(node, ast.If | ast.Try):
                visit(node.body)
                visit(getattr(node, "orelse", []))
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)

    visit(tree.body)
    ours.discard(name)
    return ours, theirs


@functools.cache
def _imports_of_every_module() -> dict[str, tuple[set[str], set[str]]]:
    # Read when a test first asks, not at collection (every pytest-xdist
    # worker collects; one runs these tests).
    return {name: imports(path) for name, path in MODULES.items()}


@functools.cache
def graph() -> dict[str, set[str]]:
    """Module -> the modules of this package it imports."""
    return {name: ours for name, (ours, _) in _imports_of_every_module().items()}


@functools.cache
def external() -> dict[str, set[str]]:
    """Module -> the top-level names of everything else it imports."""
    return {name: theirs for name, (_, theirs) in _imports_of_every_module().items()}


#: The layers, lowest first (docs/architecture.md, "The layers"). A module
#: belongs to the first prefix that matches it, longest prefixes first.
LAYERS: dict[str, int] = {
    f"{NAME}._version": 0,
    f"{NAME}._libc": 0,
    f"{NAME}.errors": 0,
    f"{NAME}.status": 0,
    f"{NAME}.backoff": 0,
    f"{NAME}.protocol": 1,
    f"{NAME}.core": 2,
    f"{NAME}.events": 3,
    f"{NAME}.server.config": 2,
    f"{NAME}.server.core": 3,
    f"{NAME}.asyncio": 4,
    f"{NAME}.server.cluster": 4,
    f"{NAME}.server.asyncio": 5,
    f"{NAME}.server": 6,
    f"{NAME}.sync": 6,
    f"{NAME}.locust": 7,
    f"{NAME}.testing": 7,
    f"{NAME}.cli": 8,
    f"{NAME}.__main__": 9,
    NAME: 9,
}

#: The client's stack and the relay's are apart: neither imports the other's
#: parts (the CLI, the pytest plugin and the package's face sit above both).
APART = [
    (f"{NAME}.core", f"{NAME}.server"),
    (f"{NAME}.asyncio", f"{NAME}.server"),
    (f"{NAME}.sync", f"{NAME}.server"),
    (f"{NAME}.server", f"{NAME}.core"),
    (f"{NAME}.server", f"{NAME}.asyncio"),
    (f"{NAME}.server", f"{NAME}.sync"),
]


def layer(name: str) -> int:
    for prefix in sorted(LAYERS, key=len, reverse=True):
        if name == prefix or name.startswith(prefix + "."):
            return LAYERS[prefix]
    raise AssertionError(f"{name} is in no layer: add it to LAYERS (and to architecture.md)")


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def closure(name: str) -> set[str]:
    """Every module of the package that ``name`` reaches, itself included."""
    seen = {name}
    todo = [name]
    while todo:
        for target in graph().get(todo.pop(), ()):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def test_every_module_has_a_layer():
    assert sorted(MODULES) and all(layer(name) >= 0 for name in MODULES)


def test_no_import_cycles():
    # Depth-first search; a module on the current path reached again is a cycle.
    state: dict[str, str] = {}
    cycles: list[list[str]] = []

    def visit(name: str, path: list[str]) -> None:
        state[name] = "open"
        for target in sorted(graph().get(name, ())):
            if state.get(target) == "open":
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[name] = "done"

    for name in sorted(graph()):
        if name not in state:
            visit(name, [name])
    assert len(graph()) > 50
    assert cycles == []


def test_layers_import_only_downwards():
    upward = [
        f"{name} (layer {layer(name)}) -> {target} (layer {layer(target)})"
        for name, targets in sorted(graph().items())
        for target in sorted(targets)
        # A package's __init__ may hand on its own submodules' names.
        if layer(target) > layer(name) and not within(target, name)
    ]
    assert upward == []


def test_the_client_and_the_relay_are_apart():
    crossing = [
        f"{name} -> {target}"
        for name, targets in sorted(graph().items())
        for target in sorted(targets)
        for low, high in APART
        if within(name, low) and within(target, high)
    ]
    assert crossing == []


@pytest.mark.parametrize("core", [f"{NAME}.core", f"{NAME}.server.core", f"{NAME}.protocol"])
def test_a_core_reaches_neither_asyncio_nor_aiohttp_in_its_import_graph(core: str):
    modules = [name for name in MODULES if within(name, core)]
    assert modules
    reached = set().union(*(closure(name) for name in modules))
    io = {m: external()[m] & {"asyncio", "aiohttp", "pyee", "redis"} for m in reached}
    assert {m: found for m, found in io.items() if found} == {}


@pytest.mark.parametrize(
    "module", [f"{NAME}.core", f"{NAME}.server.core", f"{NAME}.protocol", f"{NAME}.core.client"]
)
def test_importing_a_core_loads_neither_asyncio_nor_aiohttp(module: str):
    # What a user (or a test) of the sans-I/O layer really gets: the package's
    # own __init__ runs first, so it must not pull the I/O layers in either.
    code = (
        "import sys; import importlib; importlib.import_module(sys.argv[1]); "
        "print(sorted(m for m in ('asyncio', 'aiohttp', 'pyee', 'redis') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, module], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == "[]", out.stdout
