"""The `scorer_workers` table: each scorer worker's heartbeat, as the API's `/health` reads it.

Every worker upserts its row every few seconds (`upsert_worker`) from its own task and
connection, so the row keeps coming even while the worker's writes are stuck; a row
whose `heartbeat_at` is old belongs to a worker that is gone. `state` is one of
`starting`, `ok`, `stalled` (with `reason`) and `stopped` (a clean stop).
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

#: Rows of workers gone for longer than this are deleted when a worker starts (housekeeping).
FORGET_AFTER_SECONDS = 86_400.0

UPSERT_WORKER = """
INSERT INTO scorer_workers AS w (worker_id, host, pid, heartbeat_at, last_store_at, pending_events,
                                 assigned_partitions, lag, state, reason, model_version)
VALUES ($1, $2, $3, now(), to_timestamp($4), $5, $6, $7, $8, $9, $10)
ON CONFLICT (worker_id) DO UPDATE SET
    heartbeat_at = now(), last_store_at = EXCLUDED.last_store_at, pending_events = EXCLUDED.pending_events,
    assigned_partitions = EXCLUDED.assigned_partitions, lag = EXCLUDED.lag, state = EXCLUDED.state,
    reason = EXCLUDED.reason, model_version = EXCLUDED.model_version
"""

FORGET_GONE_WORKERS = """
DELETE FROM scorer_workers WHERE heartbeat_at < now() - make_interval(secs => $1)
"""


@dataclass(frozen=True, slots=True)
class WorkerBeat:
    """One heartbeat of one worker process."""

    worker_id: str
    host: str
    pid: int
    state: str  # starting | ok | stalled | stopped
    reason: str | None
    last_store_at: float | None  # epoch seconds of the last successful write
    pending_events: int  # consumed, not yet acknowledged
    assigned_partitions: int
    lag: int | None  # sum over its partitions; None while unknown
    model_version: str | None


async def upsert_worker(conn: asyncpg.Connection, beat: WorkerBeat) -> None:
    await conn.execute(
        UPSERT_WORKER,
        beat.worker_id,
        beat.host,
        beat.pid,
        beat.last_store_at,
        beat.pending_events,
        beat.assigned_partitions,
        beat.lag,
        beat.state,
        beat.reason,
        beat.model_version,
    )


async def forget_gone_workers(conn: asyncpg.Connection, older_than: float = FORGET_AFTER_SECONDS) -> None:
    await conn.execute(FORGET_GONE_WORKERS, float(older_than))
