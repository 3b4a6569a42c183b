"""Two reads at once: one snapshot, never a wait for the second connection, errors as themselves."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from api.snapshot import run_together, sibling_reader
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


def test_run_together_raises_the_error_itself_after_the_other_stopped() -> None:
    """A failed read comes out as itself (the API maps a database error to 503, an
    ExceptionGroup would be a 500), and only once the other read is no longer running."""
    finished: list[str] = []

    async def fails() -> None:
        await asyncio.sleep(0.01)
        raise TimeoutError("statement timeout")

    async def slow() -> int:
        try:
            await asyncio.sleep(30)
            return 1
        finally:
            finished.append("slow")

    async def scenario() -> None:
        with pytest.raises(TimeoutError, match="statement timeout"):
            await run_together(slow(), fails())
        assert finished == ["slow"]
        assert await run_together(asyncio.sleep(0, "a"), asyncio.sleep(0, 2)) == ("a", 2)

    asyncio.run(scenario())
