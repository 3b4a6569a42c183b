"""The fold of the wide rollups (migration 0014): the one way Python code brings them up to date.

`rollup_histograms`, `rollup_score_hours` and `rollup_drift` are not kept by the write
statement (at the stream's ~20-row batches that cost PostgreSQL ~15x the write itself): the
SQL function `rollup_fold()` adds every score of the transactions that ended since the last
fold, exactly once, and moves the watermark. Who calls it: the scorer's fold loop in every
worker (`FRAUDSTREAM_ROLLUP_FOLD_SECONDS`), and every reader of those rollups right before it
reads them (the API's distributions, model performance and drift), so an answer includes every
row committed before the read. A fold costs only the rows stored since the previous one.

Run it outside a REPEATABLE READ snapshot you mean to read with (a snapshot taken before the
fold does not see what it added), and not inside a transaction that waits on others.
"""

from __future__ import annotations

from typing import Protocol

#: Transaction-scoped advisory lock of the fold (exclusive) and of relabels (shared): frozen
#: in migration 0014 ("fraud" + 2; the maintenance pass's lock is "fraud" + 1).
ROLLUP_FOLD_LOCK = 0x6672_6175_6402

#: The statement: returns the rows folded (0 when nothing ended since the last fold).
FOLD_SQL = "SELECT rollup_fold()"


#: The fold, unless any process folded less than $1 seconds ago or is folding now (0 then): what
#: the scorers run, so N workers fold about once per period between them, not N times, and none
#: waits behind another's fold to fold again (migration 0015). Its cost follows the rows folded:
#: folding every 10 s instead of 1 s did not lower PostgreSQL's CPU at 2,000 tx/s (README).
FOLD_IF_DUE_SQL = "SELECT rollup_fold_if_due($1)"


class _Fetches(Protocol):
    async def fetchval(self, query: str, *args: object) -> object: ...


async def fold(conn: _Fetches) -> int:
    """Fold the scores of every transaction that ended since the last fold; the rows folded.

    On an asyncpg connection (or pool) outside an explicit transaction the fold commits at
    once; inside one it commits with it."""
    return int(await conn.fetchval(FOLD_SQL) or 0)


async def fold_if_due(conn: _Fetches, seconds: float) -> int:
    """`fold` unless a fold (by anyone) ran in the last `seconds` or is running; the rows folded
    (0 if skipped). Never waits for a lock: readers, who must see every committed row, use `fold`."""
    return int(await conn.fetchval(FOLD_IF_DUE_SQL, seconds) or 0)
