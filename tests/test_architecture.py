"""The arrows between packages run one way: meshscope -> dashboard -> collector -> meshcore, router -> meshcore."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("meshcore", "router", "collector", "dashboard", "meshscope")
# what each package may import of the others (the rest of the world is not restricted here)
ALLOWED = {
    "meshcore": set(),
    "router": {"meshcore"},
    "collector": {"meshcore"},
    "dashboard": {"meshcore", "collector"},
    "meshscope": {"meshcore", "router", "collector", "dashboard", "bench"},
}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
    return out


@pytest.mark.parametrize("package", PACKAGES)
def test_package_imports_only_what_is_below_it(package: str) -> None:
    wrong = {}
    for path in sorted((ROOT / package).glob("*.py")):
        bad = (imported_packages(path) & (set(PACKAGES) | {"bench"})) - ALLOWED[package] - {package}
        if bad:
            wrong[path.name] = sorted(bad)
    assert wrong == {}, f"{package} imports packages above it: {wrong}"
