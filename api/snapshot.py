"""A second connection that reads the same snapshot, so one answer's independent reads run at once.

An answer computed by the result cache reads one REPEATABLE READ snapshot on one connection
(`api.cache`), so its statements run one after another. Where an answer is two independent
reads of similar cost (the scatter plot's frauds and normal rows), PostgreSQL can run them in
two backends at once, on two cores, if the second connection imports the first one's snapshot
(`pg_export_snapshot` / `SET TRANSACTION SNAPSHOT`): both see exactly the same data, as one
connection would.

The second connection is taken only while fewer than the pool's size are in use (so the pool
hands out an idle one or opens one at once): a request never waits for a connection it could
do without, and answers holding one connection never wait on each other for a second one.
Otherwise the caller runs its reads on the first connection, one after the other.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from sqlalchemy import QueuePool, text
from sqlalchemy.ext.asyncio import AsyncConnection

#: What `pg_export_snapshot()` returns (e.g. `00000003-0000001B-1`); checked before it is
#: written into `SET TRANSACTION SNAPSHOT`, which takes no bind parameter.
_SNAPSHOT_ID = re.compile(r"[0-9A-F]+-[0-9A-F]+-[0-9]+")

A = TypeVar("A")
B = TypeVar("B")


@asynccontextmanager
async def sibling_reader(conn: AsyncConnection) -> AsyncIterator[AsyncConnection | None]:
    """A connection in a transaction reading `conn`'s snapshot, or None if the pool is busy.

    `conn` must be in a transaction (the snapshot is exported from it and stays valid while it
    is open); the sibling's transaction is rolled back on exit.
    """
    pool = conn.engine.pool
    if not isinstance(pool, QueuePool) or pool.checkedout() >= pool.size():
        yield None
        return
    snapshot = (await conn.execute(text("SELECT pg_export_snapshot()"))).scalar_one()
    if not _SNAPSHOT_ID.fullmatch(snapshot):
        raise ValueError(f"unexpected snapshot id {snapshot!r}")
    async with conn.engine.connect() as other:
        other = await other.execution_options(isolation_level="REPEATABLE READ")
        # The first statement of its transaction, as PostgreSQL requires.
        await other.execute(text(f"SET TRANSACTION SNAPSHOT '{snapshot}'"))
        yield other


async def run_together(first: Coroutine[Any, Any, A], second: Coroutine[Any, Any, B]) -> tuple[A, B]:
    """Both results; if one fails, the other is cancelled and awaited, and that error is raised.

    Neither is left running on its connection when this returns or raises, and the error comes
    as itself (a `TaskGroup` would wrap it in an `ExceptionGroup`), so the API's handlers still
    map it: a statement timeout or a lost database is a 503, never a 500.
    """
    tasks = (asyncio.ensure_future(first), asyncio.ensure_future(second))
    try:
        one, two = await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    return one, two
