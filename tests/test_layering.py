"""The layering as a checked contract: which part of hotswapd may import which.

The tree follows the data flow (see docs/design.md). These rules keep it that way:
a client command that drags in the supervisor, or a pre-fork module that grows a
dependency on the event loop, fails here instead of rotting silently.

Imports are read from the source with `ast`, including imports inside functions (a
lazy import is still a dependency); imports under `if TYPE_CHECKING:` are not
dependencies and are skipped.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.helpers import REPO

PACKAGE = REPO / "hotswapd"

# What each part may import (besides itself and the standard library / third parties).
# A part is a subpackage (`hotswapd.core`) or a top-level module (`hotswapd.errors`).
ALLOWED: dict[str, set[str]] = {
    "hotswapd": set(),  # __init__: the version only
    "hotswapd.__main__": {"hotswapd.cli"},
    "hotswapd.errors": set(),
    "hotswapd.log": set(),
    "hotswapd.host": {"hotswapd.errors"},
    "hotswapd.steer": set(),
    "hotswapd.boot": {
        "hotswapd.errors",
        "hotswapd.host",
        "hotswapd.steer",
        "hotswapd.gates",  # the notify socket is made before generation 1 is spawned
        "hotswapd.serve",  # boot/run.py's single hand-off after the first fork
    },
    "hotswapd.gates": {"hotswapd.errors", "hotswapd.host", "hotswapd.boot", "hotswapd.steer"},
    "hotswapd.core": {
        "hotswapd.errors",
        "hotswapd.host",
        "hotswapd.boot",
        "hotswapd.gates",
        "hotswapd.steer",
        "hotswapd.log",
    },
    "hotswapd.watch": {
        "hotswapd.errors",
        "hotswapd.host",
        "hotswapd.boot",
        "hotswapd.gates",
        "hotswapd.log",
    },
    "hotswapd.control": {
        "hotswapd.errors",
        "hotswapd.host",
        "hotswapd.boot",
        "hotswapd.gates",
        "hotswapd.core",
        "hotswapd.steer",
        "hotswapd.log",
    },
    # Client commands talk to a running hotswapd over its socket: nothing of the server.
    "hotswapd.client": {
        "hotswapd",
        "hotswapd.errors",
        "hotswapd.host",
        "hotswapd.boot",
        "hotswapd.gates",
    },
    # doctor predicts the runtime by calling the runtime's own rules, never the core.
    "hotswapd.doctor": {
        "hotswapd.errors",
        "hotswapd.host",
        "hotswapd.boot",
        "hotswapd.gates",
        "hotswapd.watch",
        "hotswapd.steer",
    },
    "hotswapd.serve": {
        "hotswapd.errors",
        "hotswapd.boot",
        "hotswapd.core",
        "hotswapd.watch",
        "hotswapd.control",
        "hotswapd.log",
    },
    "hotswapd.cli": {
        "hotswapd",
        "hotswapd.errors",
        "hotswapd.boot",
        "hotswapd.client",
        "hotswapd.doctor",
    },
}

# Third-party modules that cost a client or a pre-fork path its speed.
HEAVY = {"aiohttp", "psutil", "structlog", "prometheus_client", "asyncio"}
NO_HEAVY = {"hotswapd.client", "hotswapd.host", "hotswapd.steer", "hotswapd.errors"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def part_of(module: str) -> str:
    """The contract part a module belongs to: its subpackage, or itself at top level."""
    pieces = module.split(".")
    if len(pieces) == 1:
        return "hotswapd"
    candidate = ".".join(pieces[:2])
    return candidate


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(path: Path) -> set[str]:
    """Every module `path` imports at run time (top level or inside functions)."""
    tree = ast.parse(path.read_text(), str(path))
    this = module_name(path)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for other in child.orelse:
                    visit(other)
                continue
            if isinstance(child, ast.Import):
                found.update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - (child.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                found.add(base)
                # `from hotswapd.core import supervisor` imports a module, not a name
                found.update(f"{base}.{alias.name}" for alias in child.names)
            visit(child)

    visit(tree)
    return found


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def internal(imported: set[str]) -> set[str]:
    return {name for name in imported if name in MODULES}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_follow_the_layering(module: str) -> None:
    """Each module imports only the parts its layer may use (client commands: no core)."""
    part = part_of(module)
    assert part in ALLOWED, f"{module}: a new part of the tree; add it to ALLOWED in this test"
    allowed = ALLOWED[part] | {part, "hotswapd"}  # the package __init__ holds the version only
    bad = sorted(
        name for name in internal(imports_of(MODULES[module])) if part_of(name) not in allowed
    )
    assert not bad, f"{module} ({part}) may not import {bad}; allowed: {sorted(allowed)}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if part_of(m) in NO_HEAVY))
def test_light_parts_import_nothing_heavy(module: str) -> None:
    """Clients, host facts and the selector load no event loop, HTTP stack or psutil."""
    heavy = sorted(name for name in imports_of(MODULES[module]) if name.split(".")[0] in HEAVY)
    assert not heavy, f"{module} imports {heavy}"


def test_no_import_cycles_between_modules() -> None:
    """No two hotswapd modules import each other, directly or through others."""
    graph = {name: internal(imports_of(path)) - {name} for name, path in MODULES.items()}
    # A package's __init__ is imported by its submodules implicitly; that is not a cycle.
    for name in graph:
        graph[name] = {dep for dep in graph[name] if not name.startswith(dep + ".")}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def walk(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append([*path[path.index(dep) :], dep] if dep in path else [node, dep])
            elif dep not in state:
                walk(dep, [*path, dep])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            walk(name, [name])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_contract_covers_every_part() -> None:
    """Every part named in ALLOWED exists, so a rename cannot silently void a rule."""
    parts = {part_of(name) for name in MODULES}
    assert set(ALLOWED) - parts == set(), "ALLOWED names parts that no longer exist"
