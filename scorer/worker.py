"""One scorer worker's parts, put together: what the agent's loop calls.

    async with ScorerWorker.running(config) as worker:
        prepared = await worker.prepare(events)             # decode, resolve models, score (+ shadow)
        await worker.write_then_ack(prepared, events, ack)  # store, publish, then acknowledge

`write_then(prepared, origin, acknowledge, next_offsets)` is the same for a batch taken in
chunks of records: one acknowledgement for the whole batch.

Each part has one job: `Resources` (connections), `ModelResolution` (which model scores
what), `BatchWriter` (PostgreSQL then the broker), `WorkerMonitor` (health, told), and
the plain functions of `scorer.pipeline` in between. Background tasks: the heartbeat, the
hot reload of the active model, the alert-outbox sweep and the maintenance task
(`scorer.maintenance`: partitions by data day, retention; the rollup fold); they stop with
the worker.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import faust

from core.models import EnsembleResolver
from scorer.failures import describe
from scorer.faults import Fault, FaultInjector
from scorer.health import WorkerHealth
from scorer.heartbeat import WorkerMonitor
from scorer.maintenance import MaintenanceLoop, RollupFoldLoop
from scorer.metrics import ScorerMetrics
from scorer.pipeline import Origin, by_model, decode, score_group
from scorer.resolution import ModelResolution
from scorer.resources import Resources
from scorer.stages import BatchStamps
from scorer.writer import BatchWriter, PreparedBatch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerConfig:
    """What a worker needs to open: where things are, and the objects the app's pages read."""

    model_path: str
    dsn: Callable[[], str]
    bootstrap_servers: str
    alerts_topic: str
    dead_letters_topic: str
    metrics: ScorerMetrics
    health: WorkerHealth
    monitor: WorkerMonitor
    fault: Fault
    prepare_broker: Callable[[], Awaitable[None]]  # e.g. create missing topics
    retention_days: int | None = None  # live data days kept (`core.db.partitions`); None/0 keep all
    maintenance_seconds: float = 60.0
    rollup_fold_seconds: float = 1.0  # how often this worker folds new scores into the wide rollups


def origin_of(event: faust.EventT) -> Origin:
    message = event.message
    return Origin(message.topic, message.partition, message.offset, message.key)


#: Longest the worker waits for its producer and pool to close on the way out (s).
CLOSE_TIMEOUT = 10.0


async def run_to_the_end(cleanup: Coroutine[Any, Any, None]) -> None:
    """Await `cleanup` even if this task is cancelled meanwhile (Faust cancels a stopping agent,
    sometimes more than once), then pass the cancellation on. `cleanup` bounds itself."""
    task = asyncio.ensure_future(cleanup)
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError


async def _close(
    background: list[asyncio.Task],
    resources: Resources | None,
    heartbeat: asyncio.Task,
    monitor: WorkerMonitor,
) -> None:
    """Stop the background tasks, close the connections, then write the last heartbeat (`stopped`)."""
    for task in background:
        task.cancel()
    await asyncio.gather(*background, return_exceptions=True)
    if resources is not None:
        try:
            await asyncio.wait_for(resources.close(), CLOSE_TIMEOUT)
        except Exception as error:  # noqa: BLE001 - closing: say so and go on stopping
            log.warning("closing the producer and the pool: %s", describe(error))
            resources.pool.terminate()
    heartbeat.cancel()
    await asyncio.gather(heartbeat, return_exceptions=True)
    await monitor.stop()


@dataclass
class ScorerWorker:
    resources: Resources
    models: ModelResolution
    writer: BatchWriter
    metrics: ScorerMetrics
    health: WorkerHealth
    maintenance: MaintenanceLoop | None = None

    @classmethod
    @asynccontextmanager
    async def running(cls, config: WorkerConfig) -> AsyncIterator[ScorerWorker]:
        """Open everything, run the background tasks, and close it all on the way out."""
        heartbeat = asyncio.create_task(config.monitor.run(), name="scorer-heartbeat")
        background: list[asyncio.Task] = []
        resources: Resources | None = None
        try:
            await config.prepare_broker()

            def failed(error: BaseException) -> None:
                config.metrics.store_retries.inc()
                config.health.write_failed(describe(error))

            resources = await Resources.open(
                dsn=config.dsn, bootstrap_servers=config.bootstrap_servers, on_failure=failed
            )
            # The registry's champion (and shadow); the configured bundle only when none is registered.
            async with resources.pool.acquire() as conn:
                resolver = await EnsembleResolver.open(conn, fallback_path=config.model_path)
            ensemble = resolver.active
            log.info("scoring with model %s (threshold %.4f)", ensemble.version, ensemble.threshold)
            models = ModelResolution(resolver, resources.pool, config.metrics, config.health, failed)
            writer = BatchWriter(
                resources.pool,
                resources.producer,
                config.alerts_topic,
                config.dead_letters_topic,
                config.metrics,
                config.health,
                FaultInjector(config.fault),
            )
            background.append(asyncio.create_task(models.watch(), name="scorer-model-watch"))
            background.append(asyncio.create_task(writer.sweep_outbox_forever(), name="scorer-outbox-sweep"))
            maintenance = MaintenanceLoop(
                resources.pool,
                config.retention_days,
                config.maintenance_seconds,
                config.metrics,
                config.health,
            )
            background.append(asyncio.create_task(maintenance.forever(), name="scorer-maintenance"))
            folding = RollupFoldLoop(resources.pool, config.rollup_fold_seconds, config.metrics)
            background.append(asyncio.create_task(folding.forever(), name="scorer-rollup-fold"))
            yield cls(resources, models, writer, config.metrics, config.health, maintenance)
        finally:
            await run_to_the_end(_close(background, resources, heartbeat, config.monitor))

    async def prepare(self, events: Sequence[Any], stamps: BatchStamps | None = None) -> PreparedBatch:
        """Decode, validate, resolve models, score and explain a batch, and score its live rows
        with the shadow too when the registry names one: nothing written yet.

        `events` are anything with the raw bytes in `.value`: Faust events, or the Kafka
        records of the chunks the agent takes (`scorer.transport.RecordChunk`). The agent
        prepares batch n+1 while batch n is being written, so the worker's CPU and
        PostgreSQL's work overlap instead of taking turns. `stamps` carries the batch's
        fetch and take times (`scorer.stages`); the rest are stamped on its way.
        """
        started = time.perf_counter()
        messages = [event.value or b"" for event in events]
        self.metrics.consumed.inc(len(messages))
        batch, refused = decode(messages)
        batch, models, unknown = await self.models.for_batch(messages, batch)
        refused += unknown
        groups = []
        scored_at = time.time()
        for ensemble, part in by_model(models, batch):
            group, letters = score_group(ensemble, part, messages, scored_at=scored_at)
            self.metrics.scored.inc(len(part))
            groups.append(group)
            refused += letters
        groups = self.models.shadow.attach(groups)
        stamps = BatchStamps() if stamps is None else stamps
        stamps.scored = time.time()
        return PreparedBatch(messages, groups, refused, time.perf_counter() - started, stamps)

    async def write_then_ack(
        self,
        prepared: PreparedBatch,
        events: Sequence[faust.EventT],
        ack: Callable[[faust.EventT], Awaitable[bool]],
    ) -> None:
        """Write the batch, then acknowledge its events one by one: never the other way round."""

        async def acknowledge() -> None:
            for event in events:
                await ack(event)

        next_offsets = {event.message.partition: event.message.offset + 1 for event in events}
        await self.write_then(
            prepared, lambda position: origin_of(events[position]), acknowledge, next_offsets
        )

    async def write_then(
        self,
        prepared: PreparedBatch,
        origin: Callable[[int], Origin],
        acknowledge: Callable[[], Awaitable[object]],
        next_offsets: Mapping[int, int],
    ) -> None:
        """Write the batch, then `acknowledge()` it (ack the events, commit the offsets): in that order.

        `origin(position)` names where the batch's message at `position` came from (for
        dead letters); `next_offsets` is partition -> the offset after the batch's last.
        """
        stamps = prepared.stamps
        stamps.write_started = time.time()
        await self.writer.write(prepared, origin)
        await acknowledge()
        stamps.acked = time.time()
        self.health.acked(len(prepared.messages), next_offsets)
        self.metrics.stages.observe_batch(
            stamps, ((group.rows.produced_at, group.positions) for group in prepared.groups)
        )
