"""The shared write path: idempotent, one statement per batch, against real PostgreSQL."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import numpy as np

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

    from core.db.schema import metadata
    from core.db.urls import sqlalchemy_url

    async def diff() -> list:
        engine = create_async_engine(sqlalchemy_url(database_url))
        try:
            async with engine.connect() as conn:
                return await conn.run_sync(
                    lambda sync: compare_metadata(MigrationContext.configure(sync), metadata)
                )
        finally:
            await engine.dispose()

    assert asyncio.run(diff()) == []
