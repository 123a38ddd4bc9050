"""The package's floors (docs/architecture.md): a module imports only from its own floor or below,
imports sit at the top of modules, and no two public functions share a name."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "layerbench"

# Lowest first.  A module may import modules of its own floor or of a lower one.
FLOORS: list[tuple[str, ...]] = [
    ("__init__", "errors", "dtypes", "options"),
    ("layers",),
    ("sweep",),
    ("builders", "registry", "build_cache", "launch"),
    ("measure",),
    ("check",),
    ("results",),
    ("run",),
    ("analysis",),
    ("suites",),
    ("cli", "entry", "testing", "__main__"),
]
FLOOR_OF = {room: i for i, rooms in enumerate(FLOORS) for room in rooms}


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py"))


def _room(path: Path) -> str:
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def _imported_rooms(tree: ast.Module) -> set[str]:
    rooms = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            parts = node.module.split(".")
            if parts[0] == "layerbench":
                if len(parts) > 1:
                    rooms.add(parts[1])
                else:
                    rooms.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "layerbench" and len(parts) > 1:
                    rooms.add(parts[1])
    return rooms


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_go_down_the_floors(path: Path) -> None:
    room = _room(path)
    assert room in FLOOR_OF, f"{room} is on no floor: add it to FLOORS and docs/architecture.md"
    tree = ast.parse(path.read_text())
    upward = sorted(r for r in _imported_rooms(tree) if FLOOR_OF.get(r, -1) > FLOOR_OF[room])
    assert not upward, f"{path.name} ({room}) imports from a higher floor: {upward}"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_sit_at_the_top(path: Path) -> None:
    """A late import is allowed only where it must be late (an optional dependency, an environment
    variable to set first), marked ``# lazy:`` with the reason."""
    lines = path.read_text().splitlines()
    late = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for inner in ast.walk(node):
                if isinstance(inner, (ast.Import, ast.ImportFrom)) and "# lazy:" not in lines[inner.lineno - 1]:
                    late.append(inner.lineno)
    assert not late, f"{path.name}: imports inside functions at lines {late}"


def test_no_two_public_functions_share_a_name() -> None:
    where = defaultdict(list)
    for path in _modules():
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef) and not node.name.startswith("_") and node.name != "main":
                where[node.name].append(str(path.relative_to(PACKAGE)))
    shared = {name: paths for name, paths in where.items() if len(paths) > 1}
    assert not shared, shared
