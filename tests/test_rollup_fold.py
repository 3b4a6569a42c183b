"""The fold of the wide rollups (migration 0014): every stored score exactly once, whenever it commits.

`rollup_histograms`, `rollup_score_hours` and `rollup_drift` are filled by `rollup_fold()`
from the scores of transactions that have ended; `rollup_minutes`, `rollup_hours` and
`rollup_latency` stay with the write statement. Each step compares every rollup with numpy
over the rows PostgreSQL holds (`tests.test_rollups._check`, which folds first), and checks
what is folded and what waits by the fold's own count of rows.
"""

from __future__ import annotations

import asyncio

import asyncpg
import numpy as np
import pytest

from core.db.partitions import maintain
from core.db.rollups import ROLLUP_FOLD_LOCK, fold, fold_if_due
from core.db.store import store_new
from tests.test_rollups import REGISTERED, RUN, UNREGISTERED, _actual, _batch, _check, _manifest, _register

#: The open writer's run: writers of one run serialise on its `run_totals` row (0003), so two
#: transactions open at once write two runs, as the live run and a backtest do.
OTHER = "fold-other-run"
pytestmark = pytest.mark.timeout(300)


async def _setup(database_url: str, seed: int) -> tuple[asyncpg.Connection, dict, np.random.Generator]:
    rng = np.random.default_rng(seed)
    conn = await asyncpg.connect(database_url)
    return conn, {REGISTERED: await _register(conn, _manifest(rng))}, rng


async def _folded_rows(conn: asyncpg.Connection, run_id: str = RUN) -> int:
    """Rows of a run in the folded rollups: each score is in exactly one histogram bin per quantity."""
    return int(
        await conn.fetchval(
            "SELECT coalesce(sum(n), 0) FROM rollup_histograms WHERE run_id = $1 AND quantity = 'score'",
            run_id,
        )
    )


async def _wait_until_waiting_for_lock(conn: asyncpg.Connection, pid: int) -> None:
    for _ in range(600):
        if await conn.fetchval(
            "SELECT wait_event_type = 'Lock' AND wait_event = 'advisory' FROM pg_stat_activity WHERE pid = $1",
            pid,
        ):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the fold never waited for the label writer's lock")


def test_a_row_of_an_open_transaction_is_folded_later_and_once(database_url: str) -> None:
    """Two writers: one still open while the other commits and a fold runs. The fold takes only
    the rows of transactions below the oldest one still open; every row is folded once in the end."""

    async def scenario() -> None:
        conn, references, rng = await _setup(database_url, 41)
        first = await asyncpg.connect(database_url)
        second = await asyncpg.connect(database_url)
        try:
            # `first` gets the older xid and stays open; `second` (younger) commits
            early = first.transaction()
            await early.start()
            await first.fetchval("SELECT pg_current_xact_id()")
            await store_new(first, _batch(rng, [f"a{i}" for i in range(300)], REGISTERED, run_id=OTHER), {})
            await store_new(second, _batch(rng, [f"b{i}" for i in range(200)], REGISTERED), {})
            assert await fold(conn) == 0  # b's rows wait behind the open a: their xid is above it
            assert await _folded_rows(conn) == 0
            actual = await _actual(conn)
            assert sum(n for k, n in actual["hours"].items() if k[-1] == "scored") == 200  # exact at once
            await early.commit()
            assert await fold(conn) == 500
            assert await _folded_rows(conn) == 200 and await _folded_rows(conn, OTHER) == 300
            assert await fold(conn) == 0  # nothing new: a no-op
            before = await _actual(conn)
            assert await fold(conn) == 0
            assert await _actual(conn) == before

            # the other order: the younger transaction stays open while the older commits
            late = second.transaction()
            await late.start()
            await store_new(
                second, _batch(rng, [f"c{i}" for i in range(100)], UNREGISTERED, run_id=OTHER), {}
            )
            await store_new(first, _batch(rng, [f"d{i}" for i in range(150)], REGISTERED), {})
            assert await fold(conn) == 0  # d's transaction is younger than the open c
            await late.commit()
            assert await fold(conn) == 250
            counts = await _check(conn, references)
            assert counts["scored"] == 350 and await _folded_rows(conn) == 350
            assert await _folded_rows(conn, OTHER) == 400
        finally:
            for c in (conn, first, second):
                await c.close()

    asyncio.run(scenario())


def test_an_open_writer_younger_than_a_committed_one_does_not_hold_its_rows_back(database_url: str) -> None:
    async def scenario() -> None:
        conn, references, rng = await _setup(database_url, 42)
        older = await asyncpg.connect(database_url)
        younger = await asyncpg.connect(database_url)
        try:
            tx_older = older.transaction()
            await tx_older.start()
            await older.fetchval("SELECT pg_current_xact_id()")  # the older xid
            tx_younger = younger.transaction()
            await tx_younger.start()
            await store_new(younger, _batch(rng, [f"y{i}" for i in range(120)], REGISTERED, run_id=OTHER), {})
            await store_new(older, _batch(rng, [f"o{i}" for i in range(80)], REGISTERED), {})
            await tx_older.commit()
            assert await fold(conn) == 80  # the older one ended: its rows are complete
            await tx_younger.commit()
            assert await fold(conn) == 120
            await _check(conn, references)
            assert await _folded_rows(conn) == 80 and await _folded_rows(conn, OTHER) == 120
        finally:
            for c in (conn, older, younger):
                await c.close()

    asyncio.run(scenario())


def test_redelivered_rows_are_never_folded_twice(database_url: str) -> None:
    async def scenario() -> None:
        conn, references, rng = await _setup(database_url, 43)
        try:
            batch = _batch(rng, [f"r{i}" for i in range(400)], REGISTERED)
            assert await store_new(conn, batch, {}) == []
            assert await store_new(conn, batch, {}) == list(range(400))  # before its fold
            assert await fold(conn) == 400
            assert await store_new(conn, batch.take(range(100)), {}) == list(range(100))  # after it
            assert await fold(conn) == 0
            counts = await _check(conn, references)
            assert counts["scored"] == 400 and await _folded_rows(conn) == 400
        finally:
            await conn.close()

    asyncio.run(scenario())


def test_the_scorers_fold_skips_while_anyone_holds_the_fold_lock_or_folded_within_the_period(
    database_url: str,
) -> None:
    """`fold_if_due` (migration 0015) never waits behind a running fold to fold again: while another
    session holds the fold's lock it returns 0 at once (0014's form waited for that session's
    commit); within the period after a fold it skips; past it, it folds every pending row once."""

    async def scenario() -> None:
        conn, references, rng = await _setup(database_url, 47)
        holder = await asyncpg.connect(database_url)
        try:
            assert await store_new(conn, _batch(rng, [f"d{i}" for i in range(150)], REGISTERED), {}) == []
            async with holder.transaction():  # a fold (or a relabel) in progress elsewhere
                await holder.execute("SELECT pg_advisory_xact_lock($1)", ROLLUP_FOLD_LOCK)
                # a wait here would last until the holder commits below: the timeout only bounds a failure
                assert await asyncio.wait_for(fold_if_due(conn, 0.0), timeout=120) == 0
                assert await _folded_rows(conn) == 0
            assert await fold_if_due(conn, 3600.0) == 150  # nobody folded yet (folded_at is NULL)
            assert await store_new(conn, _batch(rng, [f"e{i}" for i in range(60)], REGISTERED), {}) == []
            assert await fold_if_due(conn, 3600.0) == 0  # folded within the hour: skipped
            assert await _folded_rows(conn) == 150
            assert await fold_if_due(conn, 0.0) == 60  # due: the pending rows, once
            assert await fold_if_due(conn, 0.0) == 0
            counts = await _check(conn, references)
            assert counts["scored"] == 210 and await _folded_rows(conn) == 210
        finally:
            await holder.close()
            await conn.close()

    asyncio.run(scenario())


def test_relabels_before_and_after_the_fold_count_each_row_once_in_its_new_class(database_url: str) -> None:
    async def scenario() -> None:
        conn, references, rng = await _setup(database_url, 44)
        labeller = await asyncpg.connect(database_url)
        watcher = await asyncpg.connect(database_url)
        try:
            await store_new(conn, _batch(rng, [f"x{i}" for i in range(300)], REGISTERED), {})
            flip = (
                "UPDATE transactions SET label = CASE WHEN label IS NULL THEN 1 WHEN label = 1 THEN 0 ELSE NULL END "
                "WHERE run_id = $1 AND id LIKE $2"
            )
            # before the fold: the fold counts the rows in their new class (nothing to move yet)
            await conn.execute(flip, RUN, "x1%")
            assert await fold(conn) == 300
            await _check(conn, references)
            # after the fold: the relabel moves the folded counts
            await conn.execute(flip, RUN, "x2%")
            await _check(conn, references)
            # mixed: some rows folded, new ones not yet, one relabel over both
            await store_new(conn, _batch(rng, [f"x3{i}" for i in range(60)], REGISTERED), {})
            await conn.execute(flip, RUN, "x3%")
            await _check(conn, references)

            # a relabel whose transaction is still open when a fold starts: the fold waits for it
            # (shared lock against the fold's exclusive one), then counts the new rows' new class
            await store_new(conn, _batch(rng, [f"z{i}" for i in range(90)], REGISTERED), {})
            tx = labeller.transaction()
            await tx.start()
            await labeller.execute(flip, RUN, "z%")
            folding = asyncio.create_task(fold(conn))
            await _wait_until_waiting_for_lock(watcher, conn.get_server_pid())
            assert not folding.done()
            await tx.commit()
            assert await folding == 90
            await _check(conn, references)
        finally:
            for c in (conn, labeller, watcher):
                await c.close()

    asyncio.run(scenario())


def test_a_retention_drop_folds_its_day_first_and_truncate_keeps_the_watermark(database_url: str) -> None:
    """Rows of a dropped live day not folded yet are in the folded rollups after the drop; a
    TRUNCATE empties every rollup and later rows are folded from the kept watermark."""

    async def scenario() -> None:
        conn, _, rng = await _setup(database_url, 45)
        try:
            old = _batch(rng, [f"l{i}" for i in range(200)], REGISTERED, run_id=None)
            old.features[:, 0] = rng.uniform(0.0, 86_000.0, 200)  # data day 0
            new = _batch(rng, [f"m{i}" for i in range(50)], REGISTERED, run_id=None)
            new.features[:, 0] = rng.uniform(5 * 86_400.0, 5 * 86_400.0 + 3600, 50)  # data day 5
            await store_new(conn, old, {})
            await store_new(conn, new, {})
            report = await maintain(conn, retention_days=2)
            assert 0 in report.dropped_days and not report.deferred, report
            assert await conn.fetchval("SELECT count(*) FROM scores WHERE run_id = ''") == 50
            live = (
                "SELECT coalesce(sum(n), 0) FROM rollup_histograms WHERE run_id = '' AND quantity = 'score'"
            )
            assert await conn.fetchval(live) == 200  # day 0's rows were folded before the drop
            assert await fold(conn) == 50
            assert await conn.fetchval(live) == 250  # ... and only then: once

            mark = await conn.fetchval("SELECT folded_below FROM rollup_fold_state")
            await conn.execute("TRUNCATE transactions, scores")
            assert not any((await _actual(conn)).values())
            assert await conn.fetchval("SELECT folded_below FROM rollup_fold_state") >= mark
            await store_new(conn, _batch(rng, [f"n{i}" for i in range(30)], REGISTERED), {})
            assert await fold(conn) == 30 and await _folded_rows(conn) == 30
        finally:
            await conn.close()

    asyncio.run(scenario())
