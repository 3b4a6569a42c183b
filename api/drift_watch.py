"""The drift gauges: the champion's last complete hour of data against its reference, kept fresh.

Computed in the API because that is where the data are: every scorer worker sees only its
own partitions, while PostgreSQL holds every stored row. Every
`FRAUDSTREAM_DRIFT_REFRESH_SECONDS` the watcher counts the champion's rows of the last
complete hour of data (the hour before the latest stored row's) through
`core.db.drift.drift_counts` (one hour of the drift rollups: bounded work) and sets

- `fraudstream_drift_psi{quantity}`: PSI of each input, `recon_error` and `score` (absent
  while the hour has too few rows, `core.drift.MIN_ROWS_FOR_PSI`);
- `fraudstream_drift_hour`: which hour of data that is;
- `fraudstream_drift_major_hours_total`: hours this process found with a major shift
  (PSI >= 0.25) in any quantity, each hour counted once.

A failure (the database away, a bundle without a reference) is logged and tried again at
the next refresh: the gauges are never worth a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable

import asyncpg

from api.metrics import ApiMetrics
from core.db.drift import SECONDS_PER_HOUR, drift_counts
from core.db.schema import LIVE_RUN
from core.drift import hour_drift
from core.ensemble import Ensemble

log = logging.getLogger(__name__)


class DriftWatch:
    """Refreshes the drift gauges in the background from the pool, for the served champion."""

    def __init__(
        self,
        gauges: ApiMetrics,
        pool: asyncpg.Pool,
        champion: Callable[[], Ensemble | None],
        every: float,
    ) -> None:
        self._pool, self._champion, self._every = pool, champion, every
        self._task: asyncio.Task | None = None
        self._counted: set[tuple[str, int]] = set()
        self.psi, self.hour, self.major_hours = gauges.drift_psi, gauges.drift_hour, gauges.drift_major_hours

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="drift-watch")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        while True:
            try:
                await self.refresh()
            except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
                log.warning("drift gauges not refreshed: %s", error)
            except Exception:  # a malformed reference, say: logged, never the end of the watcher
                log.exception("drift gauges not refreshed")
            await asyncio.sleep(self._every)

    async def refresh(self) -> None:
        """Count the last complete hour and set the gauges (nothing to do without a champion or rows)."""
        champion = self._champion()
        reference = champion.manifest.get("reference") if champion is not None else None
        if champion is None or not reference:
            return
        async with self._pool.acquire() as conn:
            latest = await conn.fetchval("SELECT max(time) FROM transactions WHERE run_id = $1", LIVE_RUN)
            if latest is None:
                return
            hour = math.floor(latest / SECONDS_PER_HOUR) - 1
            if hour < 0:
                return
            counted = await drift_counts(
                conn,
                version=champion.version,
                reference=reference,
                time_from=hour * SECONDS_PER_HOUR,
                time_to=(hour + 1) * SECONDS_PER_HOUR,
            )
        self.hour.set(hour)
        self.psi.clear()
        if not counted:
            return
        report = hour_drift(reference, counted[0].counts, counted[0].rows, counted[0].alerts)
        for name, value in report["psi"].items():
            if value is not None:
                self.psi.labels(quantity=name).set(value)
        key = (champion.version, hour)
        if "major" in report["level"].values() and key not in self._counted:
            self._counted.add(key)
            self.major_hours.inc()
