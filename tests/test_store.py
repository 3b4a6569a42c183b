"""The shared write path: idempotent, one statement per batch, against real PostgreSQL."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import asyncpg
import numpy as np
import pytest

from core.db.store import ScoredRows, store_scored


def _rows(ids: list[str], run_id: str | None = None) -> ScoredRows:
    n = len(ids)
    rng = np.random.default_rng(0)
    return ScoredRows(
        ids=ids,
        features=rng.normal(size=(n, 30)),
        labels=[1 if i % 2 else 0 for i in range(n - 1)] + [None],
        run_ids=[run_id] * n,
        produced_at=[time.time()] * (n - 1) + [None],
        model_version="v-test",
        score=np.linspace(0, 1, n),
        recon_error=np.full(n, 0.5),
        alert=np.linspace(0, 1, n) > 0.5,
    )


async def _store_twice(database_url: str) -> tuple[int, int, int, int, list]:
    conn = await asyncpg.connect(database_url)
    try:
        first = await store_scored(conn, _rows(["a", "b", "c", "d"]))
        again = await store_scored(conn, _rows(["c", "d", "e", "e"]))
        in_run = await store_scored(conn, _rows(["a", "b"], run_id="run-1"))
        count = await conn.fetchval("SELECT count(*) FROM scores")
        rows = await conn.fetch(
            "SELECT t.run_id, t.id, t.label, s.model_version, s.alert, s.latency_ms IS NOT NULL AS timed "
            "FROM transactions t JOIN scores s USING (run_id, id) ORDER BY t.run_id, t.id"
        )
        return first, again, in_run, count, [tuple(r) for r in rows]
    finally:
        await conn.close()


def test_store_is_idempotent_and_run_scoped(database_url: str) -> None:
    first, again, in_run, count, rows = asyncio.run(_store_twice(database_url))
    assert (first, again, in_run) == (4, 1, 2)
    assert count == 7
    assert [(r[0], r[1]) for r in rows] == [
        ("", "a"),
        ("", "b"),
        ("", "c"),
        ("", "d"),
        ("", "e"),
        ("run-1", "a"),
        ("run-1", "b"),
    ]
    assert rows[0][2:5] == (0, "v-test", False)
    assert rows[3][2] is None and rows[3][5] is False  # no label, no producer timestamp: no latency
    assert rows[1][5] is True


def test_migrations_build_exactly_the_declared_schema(database_url: str) -> None:
    """core/db/schema.py and the Alembic migrations never drift apart."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlalchemy.ext.asyncio import create_async_engine

    from core.db.migrate import include_name
    from core.db.schema import metadata
    from core.db.urls import sqlalchemy_url

    async def diff() -> list:
        engine = create_async_engine(sqlalchemy_url(database_url))
        try:
            async with engine.connect() as conn:
                return await conn.run_sync(
                    lambda sync: compare_metadata(
                        MigrationContext.configure(sync, opts={"include_name": include_name}), metadata
                    )
                )
        finally:
            await engine.dispose()

    assert asyncio.run(diff()) == []


async def _store_new_twice(database_url: str) -> dict:
    from core.db.store import forget_alerts, store_new, stored_rows, unpublished_alerts

    conn = await asyncpg.connect(database_url)
    try:
        first = _rows(["a", "b", "c", "d"])
        alerts = {2: b'{"id":"c"}', 3: b'{"id":"d"}'}
        out = {"first": await store_new(conn, first, alerts)}
        again = _rows(["c", "x", "a", "y"])  # same seed: "c" and "a" carry other features now
        out["again"] = await store_new(conn, again, {0: b"never-stored", 1: b'{"id":"x"}'})
        out["stored"] = await stored_rows(conn, again, out["again"])
        # the first batch's own rows, sent again: the same, bit for bit (labels None included)
        out["same"] = await stored_rows(conn, first, [0, 1, 2, 3])
        relabelled = dataclasses.replace(first, labels=[0, 0, 0, 0])
        out["relabelled"] = await stored_rows(conn, relabelled, [0, 1, 2, 3])
        nudged = first.features.copy()
        nudged[3, 17] = np.nextafter(nudged[3, 17], np.inf)
        out["nudged"] = await stored_rows(conn, dataclasses.replace(first, features=nudged), [2, 3])
        out["outbox"] = sorted(tuple(r) for r in await conn.fetch("SELECT id, payload FROM alert_outbox"))
        out["young"] = await unpublished_alerts(conn, older_than=3600, limit=10)
        async with conn.transaction():
            out["old"] = sorted(await unpublished_alerts(conn, older_than=0, limit=10))
        await forget_alerts(conn, [("", "c"), ("", "x"), ("", "nothing")])
        out["left"] = [r["id"] for r in await conn.fetch("SELECT id FROM alert_outbox")]
        return out
    finally:
        await conn.close()


def test_store_new_answers_which_rows_were_already_stored_and_keeps_alerts_of_new_rows_only(
    database_url: str,
) -> None:
    out = asyncio.run(_store_new_twice(database_url))
    assert out["first"] == []
    assert out["again"] == [0, 2]  # "c" and "a"
    assert out["outbox"] == [("c", b'{"id":"c"}'), ("d", b'{"id":"d"}'), ("x", b'{"id":"x"}')]
    stored = out["stored"]
    assert set(stored) == {0, 2}
    assert stored[0].pending_alert == b'{"id":"c"}' and stored[2].pending_alert is None
    # "c" and "a" were stored from the first batch's content: the second batch's differ
    assert not stored[0].same and not stored[2].same
    assert [out["same"][i].same for i in range(4)] == [True] * 4
    assert [out["relabelled"][i].same for i in range(4)] == [True, False, True, False]  # stored 0, 1, 0, None
    assert [out["nudged"][i].same for i in (2, 3)] == [True, False]  # one ulp is a different event
    assert out["young"] == []
    assert [row[1] for row in out["old"]] == ["c", "d", "x"]
    assert out["left"] == ["d"]


def test_dead_letters_park_in_postgresql_whatever_their_bytes(database_url: str) -> None:
    from core.db.store import ParkedLetter, park_dead_letters

    letters = [
        ParkedLetter(
            kind="invalid_text",
            reason="field 'id' must not contain NUL \x00 \ud800",
            topic="transactions",
            partition=3,
            offset=2**40,
            key=b"k\x00\xff",
            value=b'{"id": "a\\u0000"}\xff',
            headers=[("fraudstream.error.key", b"k\x00\xff"), ("x\x00", b"\xfe")],
        ),
        ParkedLetter("invalid_json", "bad", "t", 0, 0, None, b"", []),
    ]

    async def run() -> list:
        conn = await asyncpg.connect(database_url)
        try:
            await park_dead_letters(conn, letters)
            return await conn.fetch(
                "SELECT kind, reason, source_topic, source_partition, source_offset, key, value, headers "
                "FROM dead_letters ORDER BY seq"
            )
        finally:
            await conn.close()

    first, second = asyncio.run(run())
    assert first["key"] == b"k\x00\xff" and first["value"] == letters[0].value  # the bytes as they came
    assert (first["source_topic"], first["source_partition"], first["source_offset"]) == (
        "transactions",
        3,
        2**40,
    )
    assert "\\x00" in first["reason"] and "fraudstream.error.key" in first["headers"]
    assert second["key"] is None and second["value"] == b""


def test_worker_heartbeats_upsert_one_row_per_worker(database_url: str) -> None:
    from core.db.workers import WorkerBeat, forget_gone_workers, upsert_worker

    async def run() -> list:
        conn = await asyncpg.connect(database_url)
        try:
            beat = WorkerBeat("w-1", "host", 42, "starting", None, None, 0, 0, None, None)
            await upsert_worker(conn, beat)
            await upsert_worker(
                conn, WorkerBeat("w-1", "host", 42, "stalled", "no store for 31 s", 1.7e9, 12, 4, 900, "v1")
            )
            await upsert_worker(conn, WorkerBeat("w-2", "host", 43, "ok", None, None, 0, 2, 0, "v1"))
            await conn.execute(
                "UPDATE scorer_workers SET heartbeat_at = now() - interval '2 days' WHERE worker_id = 'w-2'"
            )
            await forget_gone_workers(conn)
            return await conn.fetch(
                "SELECT worker_id, state, reason, extract(epoch FROM last_store_at) AS last, pending_events, "
                "assigned_partitions, lag, model_version FROM scorer_workers"
            )
        finally:
            await conn.close()

    (row,) = asyncio.run(run())
    assert tuple(row) == ("w-1", "stalled", "no store for 31 s", 1.7e9, 12, 4, 900, "v1")


def _shadow(rows: ScoredRows, version: str, scored: list[bool]):
    from core.db.store import ShadowScores

    n = len(rows)
    return ShadowScores(
        version,
        score=np.linspace(0.9, 0.1, n),
        recon_error=np.arange(n, dtype=float),
        would_alert=np.linspace(0.9, 0.1, n) > 0.5,
        scored=np.asarray(scored),
    )


def test_shadow_scores_commit_with_the_new_rows_only_and_never_twice(database_url: str) -> None:
    """The shadow's scores ride in the statement that stores the rows: a row already stored gets none
    (even from another shadow version), a row without a shadow score gets none, the values land by
    position; and a statement that fails writes neither the rows nor their shadow scores."""
    from core.db.store import store_new

    async def run() -> tuple[list, list, int, int]:
        conn = await asyncpg.connect(database_url)
        try:
            first = _rows(["a", "b", "c", "d"])
            await store_new(conn, first, {}, _shadow(first, "shadow-1", [True, True, False, True]))
            again = _rows(["c", "d", "e", "f"])  # "c", "d" were stored by the first batch
            already = await store_new(conn, again, {}, _shadow(again, "shadow-2", [True, True, True, True]))
            bad = _rows(["g", "h"])
            bad.features[1, 0] = np.inf  # PostgreSQL takes inf; a NUL in an id it refuses:
            refused = dataclasses.replace(bad, ids=["g", "h\x00"])
            try:
                await store_new(conn, refused, {}, _shadow(refused, "shadow-2", [True, True]))
            except (asyncpg.PostgresError, UnicodeError):
                pass
            rows = await conn.fetch(
                "SELECT id, model_version, time, score, recon_error, would_alert, scored_at IS NOT NULL AS at "
                "FROM shadow_scores ORDER BY id"
            )
            return (
                already,
                [tuple(r) for r in rows],
                await conn.fetchval("SELECT count(*) FROM transactions WHERE id = 'g'"),
                await conn.fetchval("SELECT count(*) FROM scores"),
            )
        finally:
            await conn.close()

    already, rows, g_stored, scores = asyncio.run(run())
    assert already == [0, 1]
    first, again = _rows(["a", "b", "c", "d"]), _rows(["c", "d", "e", "f"])
    assert rows == [
        ("a", "shadow-1", first.features[0, 0], 0.9, 0.0, True, True),
        ("b", "shadow-1", first.features[1, 0], pytest.approx(0.9 - 0.8 / 3), 1.0, True, True),
        # "c": not scored by shadow-1, and already stored when shadow-2 saw it: no shadow score
        ("d", "shadow-1", first.features[3, 0], 0.1, 3.0, False, True),
        ("e", "shadow-2", again.features[2, 0], pytest.approx(0.9 - 1.6 / 3), 2.0, False, True),
        ("f", "shadow-2", again.features[3, 0], pytest.approx(0.1), 3.0, False, True),
    ]
    assert (g_stored, scores) == (0, 6)  # the refused statement wrote nothing at all


async def _fraud_flags(conn: asyncpg.Connection) -> dict[tuple[str, str], bool]:
    rows = await conn.fetch("SELECT run_id, id, fraud FROM scores")
    return {(r["run_id"], r["id"]): r["fraud"] for r in rows}


def test_the_fraud_flag_of_scores_is_the_inline_label_through_store_migration_and_correction(
    database_url: str,
) -> None:
    """`scores.fraud` (migration 0016) is what the fraud lists page by: it must say label = 1
    for every score, whether stored by the write path, set by the migration for rows stored
    before it, or after a hand-corrected inline label."""
    from core.db.migrate import downgrade, upgrade

    async def store() -> dict:
        conn = await asyncpg.connect(database_url)
        try:
            await store_scored(conn, _rows(["a", "b", "c", "d", "e"]))  # labels 0, 1, 0, 1, None
            await store_scored(conn, _rows(["a", "b", "c"], run_id="run-1"))  # 0, 1, None
            return await _fraud_flags(conn)
        finally:
            await conn.close()

    async def correct() -> dict:
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute("UPDATE transactions SET label = 1 WHERE run_id = '' AND id IN ('a', 'e')")
            await conn.execute("UPDATE transactions SET label = NULL WHERE run_id = '' AND id = 'b'")
            await conn.execute("UPDATE transactions SET amount = amount + 1 WHERE run_id = 'run-1'")
            return await _fraud_flags(conn)
        finally:
            await conn.close()

    stored = asyncio.run(store())
    expected = {("", "a"): False, ("", "b"): True, ("", "c"): False, ("", "d"): True, ("", "e"): False}
    expected |= {("run-1", "a"): False, ("run-1", "b"): True, ("run-1", "c"): False}
    assert stored == expected
    downgrade(database_url, "0015")
    upgrade(database_url)
    assert asyncio.run(_with_conn(database_url, _fraud_flags)) == expected
    corrected = asyncio.run(correct())
    assert corrected == expected | {("", "a"): True, ("", "b"): False, ("", "e"): True}


async def _with_conn(database_url: str, read):
    conn = await asyncpg.connect(database_url)
    try:
        return await read(conn)
    finally:
        await conn.close()
