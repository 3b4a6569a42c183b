"""The explanation memo answers exactly what TreeSHAP answers, per model version and row."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import numpy as np

from api.explain import ExplanationMemo, contributions
from core.dataset import SAMPLE_PATH, load_csv
from core.ensemble import Ensemble


def _rows(n: int) -> tuple[list[str], np.ndarray]:
    raw = load_csv(SAMPLE_PATH).raw[:n]
    return [f"t{i}" for i in range(n)], raw


def test_memo_equals_treeshap_for_any_top_and_keeps_versions_and_runs_apart(model_bundle: Path) -> None:
    ensemble = Ensemble.load(model_bundle)
    ids, raw = _rows(12)
    expected, _ = contributions(ensemble, raw)
    memo = ExplanationMemo(rows=100)

    async def scenario() -> None:
        first = await memo.top(ensemble, "", ids[:8], raw[:8], 3)
        assert first == [row[:3] for row in expected[:8]]
        assert (memo.hits, memo.misses) == (0, 8)
        # overlapping rows, another `top`, rows in another order: the kept rows are sliced again
        order = [9, 2, 11, 0, 5]
        again = await memo.top(ensemble, "", [ids[i] for i in order], raw[order], 40)
        assert again == [expected[i] for i in order]
        assert (memo.hits, memo.misses) == (3, 8 + 2)  # rows 2, 0 and 5 kept
        # the same ids in a backtest run, or under another version, are other rows
        other = replace(ensemble, version="another-version")
        await memo.top(other, "", ids[:2], raw[:2], 3)
        await memo.top(ensemble, "bt-1", ids[:2], raw[:2], 3)
        assert memo.misses == 10 + 4

    asyncio.run(scenario())


def test_memo_is_bounded_and_drops_the_least_recently_used(model_bundle: Path) -> None:
    ensemble = Ensemble.load(model_bundle)
    ids, raw = _rows(6)
    memo = ExplanationMemo(rows=4)

    async def scenario() -> None:
        await memo.top(ensemble, "", ids[:4], raw[:4], 2)
        await memo.top(ensemble, "", ids[:1], raw[:1], 2)  # t0 used again: t1 is now the oldest
        await memo.top(ensemble, "", ids[4:6], raw[4:6], 2)  # two more: t1 and t2 go
        misses = memo.misses
        await memo.top(ensemble, "", [ids[0], ids[3], ids[4], ids[5]], raw[[0, 3, 4, 5]], 2)
        assert memo.misses == misses  # all kept
        await memo.top(ensemble, "", ids[1:3], raw[1:3], 2)
        assert memo.misses == misses + 2  # dropped, explained again

    asyncio.run(scenario())
    assert len(memo._kept) == 4
