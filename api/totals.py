"""A run's totals and watermark: the one way the API reads them.

The counters (transactions, labelled, frauds, scored, alerts) and the first and last
`scored_at` are kept per run by triggers (migrations 0003, 0020), so reading them is one
primary-key probe, not a scan nor a probe per data-day partition. `/api/stats` reads them on every request (a
stored row counts at once, whoever stored it); the aggregates read them inside their own
snapshot to know whether a run has unlabelled rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncConnection

from api import queries


@dataclass(frozen=True, slots=True)
class RunTotals:
    transactions: int = 0
    labelled: int = 0
    frauds: int = 0
    scored: int = 0
    alerts: int = 0
    first: datetime | None = None  # first scored_at
    last: datetime | None = None  # last scored_at

    @property
    def unlabelled(self) -> int:
        return self.transactions - self.labelled


async def read_run_totals(conn: AsyncConnection, run_id: str) -> RunTotals:
    """The run's counters and first/last scored_at (zeros and None for a run with nothing stored)."""
    row = (await conn.execute(queries.run_totals(run_id))).one()
    return RunTotals(**row._mapping)


async def run_watermark(conn: AsyncConnection, run_id: str) -> object:
    """The run's newest scored_at: the result cache's "has anything changed" check (`api.cache`)."""
    return (await conn.execute(queries.watermark(run_id))).scalar()
