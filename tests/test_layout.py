"""The floors of the layout, read from the source: who may import whom.

The benchmarks import every service together, so nothing outside `bench/` may import
them; `core/` imports no service; training imports no service.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SERVICES = ("producer", "scorer", "api", "dashboard", "training")


def _imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def _offenders(package: str, forbidden: set[str]) -> list[str]:
    return [
        f"{path.relative_to(ROOT)} imports {sorted(_imported_packages(path) & forbidden)}"
        for path in sorted((ROOT / package).rglob("*.py"))
        if _imported_packages(path) & forbidden
    ]


@pytest.mark.parametrize("package", ["core", *SERVICES, "fraudstream"])
def test_nothing_outside_bench_imports_it(package: str) -> None:
    assert _offenders(package, {"bench"}) == []


def test_core_imports_no_service_and_training_imports_none() -> None:
    assert _offenders("core", {*SERVICES, "fraudstream"}) == []
    assert _offenders("training", {"producer", "scorer", "api", "dashboard", "fraudstream"}) == []


def test_the_check_sees_an_import(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("import bench.machine\nfrom bench import tables\nfrom . import local\n")
    assert _imported_packages(module) == {"bench"}
