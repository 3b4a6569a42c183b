"""Docstring examples are promises: the modules (scoring core, bench helpers) that show one run it here."""

from __future__ import annotations

import doctest
import importlib

import pytest


@pytest.mark.parametrize(
    "module",
    [
        "core.bins",
        "core.comparison",
        "core.drift",
        "core.metrics",
        "core.scaler",
        "core.costs",
        "core.labels",
        "bench.machine",
        "bench.tables",
    ],
)
def test_docstring_examples_run(module: str) -> None:
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"{module} shows no example"
    assert result.failed == 0
