"""The package's layers, read from its imports (no module is run): what runs
in the ingress never imports what runs in a model replica or the reverse,
the bottom imports nothing of ours, and no import closes a circle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "deployments"


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """The package's modules ``path`` imports when it runs (not those only a
    type checker reads)."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            node.body = []  # (ast.walk has not visited them yet)
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return found


GRAPH = {_module(p): _imports(p) for p in PACKAGE.rglob("*.py")}
MODULES = set(GRAPH)


def _ours(name: str) -> set[str]:
    return {m for m in GRAPH[name] if m in MODULES and m != name}


def _side(name: str) -> str | None:
    for side in ("ingress", "replica"):
        if name.startswith(f"deployments.{side}"):
            return side
    return None


@pytest.mark.parametrize("name", sorted(m for m in MODULES if _side(m)))
def test_the_ingress_and_the_replica_import_nothing_of_each_other(name: str):
    side = _side(name)
    crossing = sorted(m for m in _ours(name) if _side(m) not in (None, side))
    assert not crossing, f"{name} imports {crossing}"


WIRING = ("deployments.app", "deployments.tfserving_app")


@pytest.mark.parametrize("name", sorted(m for m in MODULES if not _side(m)
                                        and m not in WIRING))
def test_what_both_sides_share_imports_neither_side(name: str):
    """Only ``app.py`` and ``tfserving_app.py`` (the CLI's applications),
    which wire the two deployments, see both."""
    assert not sorted(m for m in _ours(name) if _side(m)), name


@pytest.mark.parametrize("name", ["deployments.errors", "deployments.types"])
def test_the_bottom_imports_nothing_of_ours(name: str):
    assert not _ours(name)


def test_no_import_closes_a_circle():
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            pytest.fail("import circle: " + " → ".join([*path[path.index(name):], name]))
        if name in done:
            return
        for child in sorted(_ours(name)):
            visit(child, [*path, name])
        done.add(name)

    for name in sorted(MODULES):
        visit(name, [])
