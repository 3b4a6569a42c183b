"""The worker's health, told (I/O): Prometheus gauges, a log line on every change, its `scorer_workers` row.

`WorkerMonitor.refresh()` reads the consumer's lag, asks `WorkerHealth` what it means and
sets the gauges; the `/health` and `/metrics` pages call it, and so does `run()` every
second, which also upserts the worker's row every `HEARTBEAT_SECONDS`. The row goes
through the monitor's own connection with a short statement timeout, so it keeps coming
while the worker's writes are stuck (that is when it matters), and a database that hangs
delays it by two seconds at most.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import asyncpg

from core.db.workers import WorkerBeat, forget_gone_workers, upsert_worker
from scorer.failures import describe
from scorer.health import STALLED, WorkerHealth
from scorer.metrics import ScorerMetrics

log = logging.getLogger(__name__)

#: How often the row is upserted (the API counts a worker silent for ~15 s as gone).
HEARTBEAT_SECONDS = 3.0
#: How often lag and the gauges are refreshed, and the stall rule checked.
REFRESH_SECONDS = 1.0
#: The heartbeat connection's bound on one statement (ms) and on connecting (s).
STATEMENT_TIMEOUT_MS = 2_000
CONNECT_TIMEOUT = 5.0


def worker_id() -> str:
    """Unique per process, readable: host, pid and a random suffix (pids are reused)."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@dataclass
class WorkerMonitor:
    health: WorkerHealth
    metrics: ScorerMetrics
    dsn: Callable[[], str]
    lag: Callable[[], Mapping[int, int] | None]  # per partition; None while the consumer cannot say
    worker_id: str = field(default_factory=worker_id)
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    _state: str | None = field(default=None, init=False)
    _conn: asyncpg.Connection | None = field(default=None, init=False)
    _lag_labels: set[int] = field(default_factory=set, init=False)

    def refresh(self) -> tuple[str, str | None]:
        """Read the lag, update the gauges, log a change of state; the (state, reason) now."""
        lag = self._read_lag()
        if lag is not None:
            self.health.observe_lag(lag)
            for partition in self._lag_labels - lag.keys():
                self.metrics.consumer_lag.remove(str(partition))
            for partition, value in lag.items():
                self.metrics.consumer_lag.labels(str(partition)).set(value)
            self._lag_labels = set(lag)
        state, reason = self.health.status()
        self.metrics.stalled.set(1 if state == STALLED else 0)
        self.metrics.pending_events.set(self.health.pending)
        self.metrics.last_store_timestamp.set(self.health.last_store_at or 0)
        if state != self._state:
            if state == STALLED:
                log.error("scorer worker %s is stalled: %s", self.worker_id, reason)
            elif self._state == STALLED:
                log.warning("scorer worker %s is %s again", self.worker_id, state)
            self._state = state
        return state, reason

    def _read_lag(self) -> Mapping[int, int] | None:
        try:
            return self.lag()
        except Exception as error:  # noqa: BLE001 - the consumer may be between assignments
            log.debug("consumer lag not available: %s", describe(error))
            return None

    def beat(self, state: str, reason: str | None) -> WorkerBeat:
        return WorkerBeat(
            worker_id=self.worker_id,
            host=self.host,
            pid=self.pid,
            state=state,
            reason=reason,
            last_store_at=self.health.last_store_at,
            pending_events=self.health.pending,
            assigned_partitions=len(self.health.partitions),
            lag=self.health.total_lag,
            model_version=self.health.model_version,
        )

    async def run(self) -> None:
        """Refresh every second, upsert the row every few; forever (cancel to stop)."""
        last_beat = 0.0
        first = True
        while True:
            state, reason = self.refresh()
            if time.monotonic() - last_beat >= HEARTBEAT_SECONDS:
                last_beat = time.monotonic()
                if await self._upsert(self.beat(state, reason)) and first:
                    first = False
                    await self._housekeeping()
            await asyncio.sleep(REFRESH_SECONDS)

    async def stop(self) -> None:
        """The last heartbeat: `stopped`; then the connection closes."""
        self.health.stopped()
        state, reason = self.refresh()
        try:
            await asyncio.wait_for(self._upsert(self.beat(state, reason)), CONNECT_TIMEOUT)
        except TimeoutError:
            log.warning("the last heartbeat of %s (stopped) was not written in time", self.worker_id)
        finally:
            await self._close()

    async def _upsert(self, beat: WorkerBeat) -> bool:
        try:
            if self._conn is None or self._conn.is_closed():
                self._conn = await asyncpg.connect(
                    self.dsn(),
                    timeout=CONNECT_TIMEOUT,
                    command_timeout=STATEMENT_TIMEOUT_MS / 1000 + 1,
                    server_settings={
                        "statement_timeout": str(STATEMENT_TIMEOUT_MS),
                        "application_name": "fraudstream-scorer-heartbeat",
                    },
                )
            await upsert_worker(self._conn, beat)
            return True
        except asyncio.CancelledError:
            raise
        except Exception as error:  # noqa: BLE001 - a missed heartbeat must not stop the next one
            log.warning("heartbeat of %s not written: %s", self.worker_id, describe(error))
            await self._close()
            return False

    async def _housekeeping(self) -> None:
        if self._conn is None:
            return
        try:
            await forget_gone_workers(self._conn)
        except Exception as error:  # noqa: BLE001 - housekeeping only
            log.warning("could not forget old scorer_workers rows: %s", describe(error))

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()  # never waits on a database that hangs
