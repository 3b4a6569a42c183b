"""The maintenance tasks in every scorer worker (I/O): partitions ahead, the default emptied,
retention; and the fold of the wide rollups (`RollupFoldLoop`, about once a second).

It runs in the scorer because the scorer is what writes the rows: wherever rows arrive, a
worker is running, and with several workers any one of them can act (the pass takes an
advisory lock, so one acts at a time and the others skip) — no extra service to deploy,
supervise or forget, and a dead worker's turn passes to the next. `fraudstream
maintenance --once` runs the same pass by hand (`core.db.partitions.maintain`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import asyncpg

from core.db.partitions import MaintenanceReport, maintain
from core.db.rollups import fold_if_due
from scorer.failures import describe
from scorer.health import WorkerHealth
from scorer.metrics import ScorerMetrics

log = logging.getLogger(__name__)


@dataclass
class MaintenanceLoop:
    pool: asyncpg.Pool
    retention_days: int | None
    every: float
    metrics: ScorerMetrics
    health: WorkerHealth

    async def run_once(self) -> MaintenanceReport:
        async with self.pool.acquire() as conn:
            report = await maintain(conn, self.retention_days)
        if report.acted:
            self.health.maintenance_at = time.time()
            self.metrics.maintenance_last_run.set(self.health.maintenance_at)
            self.metrics.maintenance_actions.labels("created").inc(len(report.created))
            self.metrics.maintenance_actions.labels("dropped").inc(len(report.dropped))
            self.metrics.maintenance_actions.labels("deferred").inc(len(report.deferred))
            self.metrics.maintenance_rows_moved.inc(sum(report.moved.values()))
            if report.created or report.moved or report.dropped:
                log.info("maintenance: %s", "; ".join(report.lines()[1:]))
        return report

    async def forever(self) -> None:
        """A pass now, then every `every` seconds; a failed pass is logged, counted and tried again."""
        while True:
            try:
                await self.run_once()
                self.health.maintenance_problem = None
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 - the next pass tries again; writes never depend on it
                self.health.maintenance_problem = describe(error)
                self.metrics.maintenance_failures.inc()
                log.warning("maintenance pass failed: %s", self.health.maintenance_problem)
            await asyncio.sleep(self.every)


@dataclass
class RollupFoldLoop:
    """Fold the scores stored since the last fold into the wide rollups (`core.db.rollups`) about
    every `every` seconds: each worker looks every `every` / 2 seconds and folds only when no
    one folded for `every` seconds (the watermark row's `folded_at`), so N workers fold about
    once per period between them; a dead worker leaves nothing behind (the next fold takes its
    rows)."""

    pool: asyncpg.Pool
    every: float
    metrics: ScorerMetrics

    async def forever(self) -> None:
        while True:
            try:
                self.metrics.rollup_folded.inc(await fold_if_due(self.pool, self.every))
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 - the next fold takes these rows; writes never wait on it
                self.metrics.rollup_fold_failures.inc()
                log.warning("rollup fold failed: %s", describe(error))
            await asyncio.sleep(self.every / 2)
