"""Row tables partitioned by data day (migration 0013), retention and the maintenance task, against
the real embedded PostgreSQL: where rows land, what a pass does, and what it never touches."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import httpx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.db.partitions import (
    DAY_SECONDS,
    MAINTENANCE_LOCK,
    PARTITIONED,
    day_table,
    default_table,
    maintain,
)
from core.db.store import ScoredRows, ShadowScores, store_new, stored_rows
from tests.api_fixtures import api_settings, serve
from tests.old_schema import store_unpartitioned

ROOT = Path(__file__).resolve().parents[1]
ROLLUPS = (
    "rollup_minutes",
    "rollup_hours",
    "rollup_latency",
    "rollup_histograms",
    "rollup_score_hours",
    "rollup_drift",
    "run_totals",
)


def _rows(ids: list[str], days: list[float], run_id: str | None = None, seed: int = 0) -> ScoredRows:
    """Rows with data time `day * 86400 + a few hours` each; scores spread so some alert."""
    n = len(ids)
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(n, 30))
    features[:, 0] = np.asarray(days, dtype=float) * DAY_SECONDS + rng.uniform(0, 20 * 3600, n)
    features[:, 29] = rng.uniform(0, 500, n)
    score = rng.uniform(0, 1, n)
    return ScoredRows(
        ids=ids,
        features=features,
        labels=[int(i % 3 == 0) for i in range(n)],
        run_ids=[run_id] * n,
        produced_at=[time.time()] * n,
        model_version="v-part",
        score=score,
        recon_error=rng.uniform(0, 2, n),
        alert=score > 0.7,
    )


def _shadow(rows: ScoredRows) -> ShadowScores:
    n = len(rows)
    return ShadowScores("v-shadow", np.full(n, 0.5), np.full(n, 0.1), np.zeros(n, bool), np.ones(n, bool))


async def _connect(url: str) -> asyncpg.Connection:
    return await asyncpg.connect(url)


async def _children(conn: asyncpg.Connection, parent: str) -> set[str]:
    rows = await conn.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = $1::regclass",
        parent,
    )
    return {row["relname"] for row in rows}


async def _where(conn: asyncpg.Connection, table: str) -> dict[str, int]:
    """Rows of `table` per partition (leaf table) they are stored in."""
    rows = await conn.fetch(f"SELECT tableoid::regclass::text AS part, count(*) AS n FROM {table} GROUP BY 1")
    return {row["part"]: row["n"] for row in rows}


_YOUNGER_TOTALS = ("backlog", "first_scored_at", "last_scored_at")


async def _snapshot(conn: asyncpg.Connection, tables: tuple[str, ...] = ROLLUPS) -> dict[str, list]:
    """The tables' rows; the rollups after a fold (every committed score in them, migration 0014).
    Not `run_totals`' columns younger than the partitions (0013), which the snapshots of an
    older schema lack: the review backlog (0019), a count of the queue as it is now, and the
    run's first / last scored_at (0020; `tests/test_rollups.py` checks them)."""
    if tables == ROLLUPS and await conn.fetchval("SELECT to_regprocedure('rollup_fold()') IS NOT NULL"):
        await conn.fetchval("SELECT rollup_fold()")  # (before 0014 the trigger kept every rollup)
    return {
        table: sorted(
            tuple(v for k, v in r.items() if k not in _YOUNGER_TOTALS)
            for r in await conn.fetch(f"SELECT * FROM {table}")
        )
        for table in tables
    }


async def _folded_then_undone(conn: asyncpg.Connection) -> dict[str, list]:
    """The rollups as a fold would make them now, the fold rolled back: the rows stay unfolded."""
    transaction = conn.transaction()
    await transaction.start()
    try:
        return await _snapshot(conn)
    finally:
        await transaction.rollback()


def test_data_day_is_the_floor_of_data_time_in_days(database_url: str) -> None:
    async def run(times: list[float]) -> list[int]:
        conn = await _connect(database_url)
        try:
            return list(
                await conn.fetchval(
                    "SELECT array_agg(data_day(t) ORDER BY o) FROM unnest($1::float8[]) "
                    "WITH ORDINALITY AS x(t, o)",
                    times,
                )
            )
        finally:
            await conn.close()

    # Negative times never pass validation; below 0 PostgreSQL's floor is exact (-5e-324 is day -1).
    edges = [0.0, 5e-324, 86_399.999, 86_400.0, 172_799.0, 1e9, -5e-324, -86_400.0, -86_400.5]
    assert asyncio.run(run(edges)) == [0, 0, 0, 1, 1, 11_574, -1, -1, -2]

    @settings(max_examples=30, deadline=None)
    @given(st.lists(st.floats(min_value=0, max_value=1e9, allow_nan=False), min_size=1, max_size=50))
    def agrees(times: list[float]) -> None:
        assert asyncio.run(run(times)) == [int(np.floor(t / 86_400.0)) for t in times]

    agrees()


def test_partitions_exist_after_migrate_and_a_write_spanning_two_days_lands_in_two(database_url: str) -> None:
    async def run() -> dict:
        conn = await _connect(database_url)
        try:
            out = {t: await _children(conn, t) for t in PARTITIONED}
            out["live"] = {t: await _children(conn, f"{t}_live") for t in PARTITIONED}
            rows = _rows(["a", "b", "c"], [0, 1, 1])
            out["again"] = await store_new(conn, rows, {}, _shadow(rows))
            backtest = _rows(["a", "z"], [0, 5], run_id="bt-1")
            await store_new(conn, backtest, {})
            out["where"] = {t: await _where(conn, t) for t in PARTITIONED}
            out["keys"] = sorted(tuple(r) for r in await conn.fetch("SELECT * FROM transaction_keys"))
            return out
        finally:
            await conn.close()

    out = asyncio.run(run())
    for table in PARTITIONED:
        assert out[table] == {f"{table}_live", f"{table}_runs"}
        assert out["live"][table] == {default_table(table), *(day_table(table, d) for d in range(4))}
    assert out["again"] == []
    assert out["where"]["transactions"] == {
        "transactions_day_0": 1,
        "transactions_day_1": 2,
        "transactions_runs": 2,
    }
    assert out["where"]["scores"] == {"scores_day_0": 1, "scores_day_1": 2, "scores_runs": 2}
    assert out["where"]["shadow_scores"] == {"shadow_scores_day_0": 1, "shadow_scores_day_1": 2}
    assert out["keys"] == [("", "a", 0), ("", "b", 1), ("", "c", 1), ("bt-1", "a", 0), ("bt-1", "z", 5)]


def test_redelivery_is_silent_and_another_day_is_a_conflict(database_url: str) -> None:
    async def run() -> dict:
        conn = await _connect(database_url)
        try:
            first = _rows(["a", "b"], [0, 1])
            await store_new(conn, first, {1: b'{"id":"b"}'})
            out = {"redelivered": await store_new(conn, first, {1: b"never"})}
            out["same"] = await stored_rows(conn, first, out["redelivered"])
            moved = first.features.copy()
            moved[:, 0] += np.array([DAY_SECONDS, 2 * DAY_SECONDS])  # the next day, two days later
            later = dataclasses.replace(first, features=moved)
            out["later"] = await store_new(conn, later, {0: b"never", 1: b"never"}, _shadow(later))
            out["conflict"] = await stored_rows(conn, later, out["later"])
            out["where"] = {t: await _where(conn, t) for t in PARTITIONED}
            out["outbox"] = [tuple(r) for r in await conn.fetch("SELECT id, payload FROM alert_outbox")]
            return out
        finally:
            await conn.close()

    out = asyncio.run(run())
    assert out["redelivered"] == [0, 1]
    assert [out["same"][i].same for i in (0, 1)] == [True, True]
    assert out["same"][1].pending_alert == b'{"id":"b"}'
    assert out["later"] == [0, 1]  # known ids: already stored, whatever day the copy claims
    assert [out["conflict"][i].same for i in (0, 1)] == [False, False]
    assert out["where"]["transactions"] == {"transactions_day_0": 1, "transactions_day_1": 1}
    assert out["where"]["scores"] == {"scores_day_0": 1, "scores_day_1": 1}
    assert out["where"]["shadow_scores"] == {}  # the conflicting copies wrote nothing, not even a shadow row
    assert out["outbox"] == [("b", b'{"id":"b"}')]


async def _live_and_backtest(conn: asyncpg.Connection) -> None:
    """Live rows on data days 0..4 (alerts included), a backtest run on the same days."""
    days = [d for d in range(5) for _ in range(40)]
    live = _rows([f"l{i}" for i in range(len(days))], days, seed=1)
    await store_new(conn, live, {i: b"{}" for i in range(len(days)) if live.alert[i]}, _shadow(live))
    await store_new(conn, _rows([f"l{i}" for i in range(len(days))], days, run_id="bt-keep", seed=2), {})


def test_retention_drops_exactly_the_old_live_days_and_nothing_else(
    infra, database_url: str, model_bundle: Path, tmp_path: Path
) -> None:
    async def before() -> dict:
        conn = await _connect(database_url)
        try:
            await _live_and_backtest(conn)
            return {
                # the drop must fold the dropped days' rows itself (none folded before it)
                "rollups": await _folded_then_undone(conn),
                "runs": await _snapshot(conn, ("transactions_runs", "scores_runs")),
                "queue": await conn.fetchval("SELECT count(*) FROM review_queue"),
            }
        finally:
            await conn.close()

    async def retain(days: int) -> dict:
        conn = await _connect(database_url)
        try:
            report = await maintain(conn, days)
            return {
                "report": report,
                "live": {t: await _children(conn, f"{t}_live") for t in PARTITIONED},
                "where": await _where(conn, "transactions"),
                "rollups": await _snapshot(conn),
                "runs": await _snapshot(conn, ("transactions_runs", "scores_runs")),
                "keys": await conn.fetchval("SELECT count(*) FROM transaction_keys WHERE run_id = ''"),
                "key_days": sorted(
                    r["day"]
                    for r in await conn.fetch("SELECT DISTINCT day FROM transaction_keys WHERE run_id = ''")
                ),
                "queue_days": sorted(
                    {
                        r["day"]
                        for r in await conn.fetch(
                            "SELECT k.day FROM review_queue q JOIN transaction_keys k "
                            "ON k.run_id = '' AND k.id = q.transaction_id"
                        )
                    }
                ),
                "queue": await conn.fetchval("SELECT count(*) FROM review_queue"),
                "backlog": await conn.fetchval("SELECT backlog FROM run_totals WHERE run_id = ''"),
                "alert_keys": [
                    tuple(r) for r in await conn.fetch("SELECT run_id, id, day FROM alert_keys ORDER BY 1, 2")
                ],
                "alerts": [
                    tuple(r)
                    for r in await conn.fetch("SELECT run_id, id, day FROM scores WHERE alert ORDER BY 1, 2")
                ],
                "queue_orphans": await conn.fetchval(
                    "SELECT count(*) FROM review_queue q WHERE NOT EXISTS "
                    "(SELECT 1 FROM transaction_keys k WHERE k.run_id = '' AND k.id = q.transaction_id)"
                ),
                "dropped": [
                    tuple(r) for r in await conn.fetch("SELECT day, transactions FROM data_days_dropped")
                ],
                "state": dict(await conn.fetchrow("SELECT newest_day, dropped FROM maintenance_state")),
                "sampled": {
                    (r["run_id"], r["day"])
                    for r in await conn.fetch("SELECT run_id, day FROM scatter_sample")
                },
                "sample_groups": {
                    (r["run_id"], r["day"])
                    for r in await conn.fetch("SELECT run_id, day FROM scatter_sample_state")
                },
            }
        finally:
            await conn.close()

    api = api_settings(infra, database_url, model_bundle, tmp_path, api_analytics_cache_seconds=0)
    with serve(api) as url:
        first = asyncio.run(before())
        assert first["queue"] > 0
        amounts = httpx.get(f"{url}/api/distributions/amount", timeout=60).json()
        kept = asyncio.run(maintain_with(database_url, None))
        assert kept.dropped == []  # retention unset: keep everything
        after = asyncio.run(retain(2))
        assert httpx.get(f"{url}/api/distributions/amount", timeout=60).json() == amounts
        review = httpx.post(
            f"{url}/api/alerts/l0/review",  # a row of data day 0
            json={"verdict": "fraud"},
            headers={"X-Fraudstream-Reviewer": "ann"},
            timeout=60,
        )
        listed = httpx.get(f"{url}/api/transactions", params={"time_to": 2 * DAY_SECONDS}, timeout=60)
        kept_page = httpx.get(
            f"{url}/api/transactions", params={"time_to": 5 * DAY_SECONDS, "limit": 1000}, timeout=60
        )

    report = after["report"]
    assert report.newest_day == 4 and report.dropped_days == [0, 1, 2]
    for table in PARTITIONED:  # days 0..2 gone from every table; 3, 4 and the days ahead kept
        assert after["live"][table] == {default_table(table), *(day_table(table, d) for d in range(3, 8))}
    assert after["where"] == {"transactions_day_3": 40, "transactions_day_4": 40, "transactions_runs": 200}
    assert after["runs"] == first["runs"]  # the backtest run: every row as it was
    assert after["rollups"] == first["rollups"]  # rollups and run totals: untouched by a partition drop
    assert after["keys"] == 80 and after["key_days"] == [3, 4]
    assert after["queue_orphans"] == 0 and set(after["queue_days"]) <= {3, 4}
    assert 0 < after["queue"] < first["queue"] and after["backlog"] == after["queue"]
    assert after["alert_keys"] == after["alerts"] and {
        day for run, _, day in after["alerts"] if run == ""
    } <= {3, 4}
    assert after["dropped"] == [(0, 40), (1, 40), (2, 40)]
    assert after["state"] == {"newest_day": 4, "dropped": 9}
    # the scatter's sample (0022): the dropped days' share gone with them, the backtest's kept
    kept_days = {("", 3), ("", 4), *(("bt-keep", d) for d in range(5))}
    assert after["sampled"] == after["sample_groups"] == kept_days
    assert review.status_code == 404 and "beyond retention" in review.json()["detail"]
    assert "data day 3" in review.json()["detail"]
    assert listed.status_code == 404 and "beyond retention" in listed.json()["detail"]
    assert kept_page.status_code == 200 and len(kept_page.json()["items"]) == 80  # days 3 and 4


async def maintain_with(database_url: str, retention_days: int | None):  # noqa: ANN201
    conn = await _connect(database_url)
    try:
        return await maintain(conn, retention_days)
    finally:
        await conn.close()


def test_a_day_without_a_partition_goes_to_the_default_and_the_task_moves_it(database_url: str) -> None:
    async def run() -> dict:
        conn = await _connect(database_url)
        try:
            await store_new(conn, _rows(["early"], [1]), {})
            rows = _rows(["far-1", "far-2", "farther"], [9, 9, 10], seed=3)
            await store_new(conn, rows, {}, _shadow(rows))
            out = {
                "before": {t: await _where(conn, t) for t in PARTITIONED},
                "rollups": await _snapshot(conn),
            }
            out["report"] = await maintain(conn, None)
            out["after"] = {t: await _where(conn, t) for t in PARTITIONED}
            out["rollups_after"] = await _snapshot(conn)
            out["default"] = {
                t: await conn.fetchval(f"SELECT count(*) FROM {default_table(t)}") for t in PARTITIONED
            }
            out["live"] = await _children(conn, "transactions_live")
            out["again"] = await maintain(conn, None)
            return out
        finally:
            await conn.close()

    out = asyncio.run(run())
    assert out["before"]["transactions"] == {"transactions_day_1": 1, "transactions_live_default": 3}
    assert out["before"]["shadow_scores"] == {"shadow_scores_live_default": 3}
    report = out["report"]
    assert report.moved == {
        "transactions_day_9": 2,
        "transactions_day_10": 1,
        "scores_day_9": 2,
        "scores_day_10": 1,
        "shadow_scores_day_9": 2,
        "shadow_scores_day_10": 1,
    }
    assert out["after"]["transactions"] == {
        "transactions_day_1": 1,
        "transactions_day_9": 2,
        "transactions_day_10": 1,
    }
    assert out["after"]["scores"] == {"scores_day_1": 1, "scores_day_9": 2, "scores_day_10": 1}
    assert out["default"] == dict.fromkeys(PARTITIONED, 0)
    assert out["rollups_after"] == out["rollups"]  # a move is not a new row: nothing counted twice
    assert report.newest_day == 10
    assert {day_table("transactions", d) for d in range(10, 14)} <= out["live"]  # the days ahead
    assert out["again"].moved == {} and out["again"].created == [] and out["again"].dropped == []


def test_a_stray_far_day_does_not_make_retention_drop_the_real_days(database_url: str) -> None:
    async def run():  # noqa: ANN202
        conn = await _connect(database_url)
        try:
            await store_new(conn, _rows([f"r{i}" for i in range(6)], [0, 0, 1, 1, 2, 2]), {})
            await store_new(conn, _rows(["wild"], [9_000]), {})  # a valid event from a wrong clock
            report = await maintain(conn, 2)
            return report, await _where(conn, "transactions")
        finally:
            await conn.close()

    report, where = asyncio.run(run())
    assert report.newest_day == 2 and report.dropped_days == [0]
    assert where == {"transactions_day_1": 2, "transactions_day_2": 2, "transactions_day_9000": 1}


def test_one_pass_at_a_time_and_the_command_prints_what_it_did(database_url: str) -> None:
    async def held() -> bool:
        holder = await _connect(database_url)
        try:
            assert await holder.fetchval("SELECT pg_try_advisory_lock($1)", MAINTENANCE_LOCK)
            report = await maintain_with(database_url, 1)
            return report.acted
        finally:
            await holder.close()

    assert asyncio.run(held()) is False

    async def fill() -> None:
        conn = await _connect(database_url)
        try:
            await store_new(conn, _rows(["a", "b", "c"], [0, 1, 6]), {})
        finally:
            await conn.close()

    asyncio.run(fill())
    env = {**os.environ, "FRAUDSTREAM_DATABASE_URL": database_url, "FRAUDSTREAM_RETENTION_DAYS": "1"}
    env["PYTHONPATH"] = str(ROOT)
    result = subprocess.run(
        [sys.executable, "-m", "fraudstream", "maintenance", "--once"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "retention: 1 data days" in out
    assert "moved 1 rows out of the default partition into transactions_day_6" in out
    assert "newest live data day: 6" in out
    for table in PARTITIONED:
        assert f"dropped {day_table(table, 0)}" in out and f"dropped {day_table(table, 3)}" in out
        assert f"created {day_table(table, 9)}" in out


def test_migration_moves_existing_rows_into_partitions_and_back(database_url: str) -> None:
    from core.db.migrate import downgrade, upgrade

    downgrade(database_url, "0012")

    async def fill() -> dict:
        conn = await _connect(database_url)
        try:
            await store_unpartitioned(conn, _rows([f"m{i}" for i in range(30)], [i % 3 for i in range(30)]))
            await store_unpartitioned(conn, _rows(["m0", "b1"], [0, 7], run_id="bt-old", seed=4))
            await conn.execute(
                "INSERT INTO shadow_scores (run_id, id, model_version, time, score, recon_error, would_alert) "
                "SELECT run_id, id, 'v-shadow', time, 0.5, 0.1, false FROM transactions WHERE run_id = ''"
            )
            return await _contents(conn)
        finally:
            await conn.close()

    async def read(partitioned: bool) -> tuple[dict, dict]:
        conn = await _connect(database_url)
        try:
            where = {t: await _where(conn, t) for t in PARTITIONED} if partitioned else {}
            return await _contents(conn), where
        finally:
            await conn.close()

    stored = asyncio.run(fill())
    upgrade(database_url)
    migrated, where = asyncio.run(read(True))
    assert migrated == stored
    assert where["transactions"] == {
        "transactions_day_0": 10,
        "transactions_day_1": 10,
        "transactions_day_2": 10,
        "transactions_runs": 2,
    }
    assert where["scores"] == {"scores_day_0": 10, "scores_day_1": 10, "scores_day_2": 10, "scores_runs": 2}
    assert where["shadow_scores"] == {
        "shadow_scores_day_0": 10,
        "shadow_scores_day_1": 10,
        "shadow_scores_day_2": 10,
    }

    async def keys() -> int:
        conn = await _connect(database_url)
        try:
            again = await store_new(conn, _rows([f"m{i}" for i in range(30)], [i % 3 for i in range(30)]), {})
            assert again == list(range(30))  # every moved row is known by its key
            return await conn.fetchval("SELECT count(*) FROM transaction_keys")
        finally:
            await conn.close()

    assert asyncio.run(keys()) == 32
    downgrade(database_url, "0012")
    assert asyncio.run(read(False))[0] == stored
    upgrade(database_url)
    assert asyncio.run(read(True))[0] == stored


async def _contents(conn: asyncpg.Connection) -> dict[str, list]:
    """Every row of the three tables and the rollups, without the day, the scores' inserting
    transaction (0014) and their fraud flag (0016, tested in test_store): the form every schema shares."""
    out = {}
    for table in PARTITIONED:
        columns = [
            r["attname"]
            for r in await conn.fetch(
                "SELECT attname FROM pg_attribute WHERE attrelid = $1::regclass AND attnum > 0 "
                "AND NOT attisdropped AND attname NOT IN ('day', 'xid', 'fraud') ORDER BY attname",
                table,
            )
        ]
        out[table] = sorted(tuple(r) for r in await conn.fetch(f"SELECT {', '.join(columns)} FROM {table}"))
    out.update(await _snapshot(conn))
    return out


@pytest.mark.parametrize("retention", [None, 0])
def test_no_retention_keeps_every_day(database_url: str, retention: int | None) -> None:
    async def run():  # noqa: ANN202
        conn = await _connect(database_url)
        try:
            await store_new(conn, _rows([f"k{i}" for i in range(4)], [0, 1, 2, 3]), {})
            return await maintain(conn, retention), await _where(conn, "transactions")
        finally:
            await conn.close()

    report, where = asyncio.run(run())
    assert report.dropped == [] and len(where) == 4


async def _until(check, seconds: float = 60.0) -> None:  # noqa: ANN001
    """Wait until `check()` holds (generous: the machine may be busy), failing after `seconds`."""
    for _ in range(int(seconds / 0.05)):
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the maintenance loop never got there")


def test_the_scorers_task_says_when_it_last_ran_and_why_it_failed(database_url: str) -> None:
    """The loop every scorer worker runs: its metrics and health say when a pass last acted, and a
    failing pass is counted and reported, never raised into the worker."""
    from scorer.health import WorkerHealth
    from scorer.maintenance import MaintenanceLoop
    from scorer.metrics import ScorerMetrics

    metrics, health = ScorerMetrics(), WorkerHealth(stall_seconds=30)

    async def run() -> dict:
        pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
        try:
            await store_new(pool, _rows(["a", "b"], [0, 5]), {})
            loop = MaintenanceLoop(pool, 1, 0.05, metrics, health)
            task = asyncio.create_task(loop.forever())
            await _until(lambda: health.maintenance_at is not None)
            out = {"at": health.maintenance_at, "where": await _where(pool, "transactions")}
            await pool.execute("DROP TABLE maintenance_state")  # the next pass fails on it
            await _until(lambda: health.maintenance_problem is not None)
            out["problem"] = health.maintenance_problem
            out["running"] = not task.done()
            task.cancel()
            return out
        finally:
            await pool.close()

    out = asyncio.run(asyncio.wait_for(run(), 120))
    samples = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in metrics.exposition().decode().splitlines()
        if line.startswith("fraudstream_maintenance")
    }
    assert out["where"] == {"transactions_day_5": 1}  # moved out of the default; days 0..4 beyond retention
    assert samples["fraudstream_maintenance_last_run_timestamp_seconds"] >= out["at"] > 0
    assert samples['fraudstream_maintenance_partitions_total{action="dropped"}'] == 12  # days 0..3, 3 tables
    assert samples["fraudstream_maintenance_rows_moved_total"] == 2  # the row and its score
    assert "maintenance_state" in out["problem"] and out["running"]
    assert samples["fraudstream_maintenance_failures_total"] >= 1
