"""A sibling reader sees exactly its first connection's snapshot, and is never waited for."""

from __future__ import annotations

import asyncio

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from api.snapshot import sibling_reader
from core.db.urls import sqlalchemy_url

_COUNT = text("SELECT count(*) FROM sibling_probe")
_INSERT = text("INSERT INTO sibling_probe VALUES (1)")


def test_the_sibling_reads_the_first_connections_snapshot_not_later_commits(database_url: str) -> None:
    async def scenario() -> None:
        engine = create_async_engine(sqlalchemy_url(database_url), pool_size=3)
        try:
            async with engine.begin() as setup:
                await setup.execute(text("CREATE TABLE sibling_probe (x int)"))
                await setup.execute(_INSERT)
            async with engine.connect() as conn:
                conn = await conn.execution_options(isolation_level="REPEATABLE READ")
                before = (await conn.execute(_COUNT)).scalar_one()
                async with engine.begin() as writer:  # commits after the snapshot was taken
                    await writer.execute(_INSERT)
                    await writer.execute(_INSERT)
                async with sibling_reader(conn) as other:
                    assert other is not None
                    assert (await other.execute(_COUNT)).scalar_one() == before
                    # still in one snapshot after the two read at once
                    counts = await asyncio.gather(other.execute(_COUNT), conn.execute(_COUNT))
                    assert [c.scalar_one() for c in counts] == [before, before]
            async with engine.connect() as fresh:
                assert (await fresh.execute(_COUNT)).scalar_one() == before + 2
        finally:
            await engine.dispose()

    asyncio.run(scenario())


def test_no_sibling_when_the_pool_is_in_use_so_nothing_waits_for_one(database_url: str) -> None:
    async def scenario() -> None:
        engine = create_async_engine(sqlalchemy_url(database_url), pool_size=1, max_overflow=5)
        try:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
                async with sibling_reader(conn) as other:  # overflow exists, but is not taken
                    assert other is None
                assert engine.pool.checkedout() == 1
        finally:
            await engine.dispose()

    asyncio.run(scenario())
