"""One batch from raw messages to durable rows: the I/O around `scorer.pipeline`.

`BatchScorer.prepare(messages)` decodes, scores and explains a batch; `commit(prepared)`
returns only when the batch's transactions and scores are committed in PostgreSQL and its
alerts and dead letters are acknowledged by the broker; the agent acknowledges the Kafka
offsets after that and never before. While PostgreSQL or the broker is unavailable it
retries with backoff, so offsets do not advance and nothing is skipped; the write is
idempotent, so a batch redelivered after a crash or a rebalance makes no second row.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import asyncpg
from aiokafka import AIOKafkaProducer

from core.db.store import ScoredRows, store_scored
from core.db.urls import asyncpg_dsn
from core.ensemble import Ensemble
from core.events import DeadLetter, EventBatch
from core.kafka import make_producer
from core.models import EnsembleResolver
from scorer.metrics import ScorerMetrics
from scorer.pipeline import (
    alert_messages,
    by_model,
    dead_letter_message,
    decode,
    score_batch,
    split_unknown_runs,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

FIRST_BACKOFF = 0.1
MAX_BACKOFF = 5.0
#: How often the worker asks the registry whether another model version became active.
MODEL_REFRESH_SECONDS = 5.0


async def retry_forever(
    operation: Callable[[], Awaitable[T]],
    *,
    what: str,
    on_failure: Callable[[], None] = lambda: None,
    first: float = FIRST_BACKOFF,
    cap: float = MAX_BACKOFF,
) -> T:
    """Run `operation` until it succeeds, sleeping first, 2*first, ... up to `cap` between tries.

    Cancellation (a worker stopping, a rebalance) goes through at once: the batch is then
    simply not acknowledged and will be delivered again.
    """
    delay = first
    while True:
        try:
            return await operation()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # any failure of the sink means "not stored yet": wait and retry
            on_failure()
            log.warning("%s failed (%s: %s); retrying in %.1f s", what, type(exc).__name__, exc, delay)
            await asyncio.sleep(delay)
            delay = min(cap, delay * 2)


@dataclass(frozen=True, slots=True)
class PreparedBatch:
    """A scored batch waiting to be written: per model group the rows and their alert messages."""

    consumed: int
    groups: list[tuple[ScoredRows, list[tuple[bytes, bytes]]]]
    dead: list[DeadLetter]
    seconds: float  # time spent preparing, for the batch latency histogram


@dataclass
class BatchScorer:
    """The worker's resources (models, database pool, producer) and the batch handler."""

    models: EnsembleResolver
    pool: asyncpg.Pool
    producer: AIOKafkaProducer
    metrics: ScorerMetrics
    alerts_topic: str
    dead_letters_topic: str
    _closed: bool = field(default=False, init=False)
    _watcher: asyncio.Task | None = field(default=None, init=False)

    @property
    def ensemble(self) -> Ensemble:
        """The active model: what live events are scored with."""
        return self.models.active

    @classmethod
    async def open(
        cls,
        *,
        model_path: str,
        database_url: str,
        bootstrap_servers: str,
        alerts_topic: str,
        dead_letters_topic: str,
        metrics: ScorerMetrics,
    ) -> BatchScorer:
        """Load the ensemble once and connect; waits (with backoff) for a database that is down."""
        ensemble = Ensemble.load(model_path)
        log.info("loaded model %s (threshold %.4f) from %s", ensemble.version, ensemble.threshold, model_path)
        pool = await retry_forever(
            lambda: asyncpg.create_pool(asyncpg_dsn(database_url), min_size=1, max_size=2),
            what="connecting to PostgreSQL",
            on_failure=metrics.store_retries.inc,
        )
        producer = make_producer(bootstrap_servers, linger_ms=1)
        try:
            await producer.start()
        except BaseException:  # no broker: close what is open before the worker reports it
            await producer.stop()
            await pool.close()
            raise
        scorer = cls(EnsembleResolver(ensemble), pool, producer, metrics, alerts_topic, dead_letters_topic)
        scorer._watcher = asyncio.create_task(scorer.watch_models())
        return scorer

    async def watch_models(self, every: float = MODEL_REFRESH_SECONDS) -> None:
        """Hot reload: switch to the registry's active model version when it changes.

        Batches run on the same event loop, so a switch lands between two batches, never
        inside one; a registry that cannot be read just leaves the current model in place.
        """
        while True:
            try:
                async with self.pool.acquire() as conn:
                    if await self.models.refresh_active(conn):
                        self.metrics.model_reloads.inc()
            except Exception as error:  # noqa: BLE001 - hot reload must outlive any one failure
                log.warning("could not check the active model version: %s", error)
            await asyncio.sleep(every)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._watcher is not None:
            self._watcher.cancel()
        try:
            await self.producer.stop()
        finally:
            await self.pool.close()

    async def _resolve_models(
        self, messages: Sequence[bytes], batch: EventBatch, dead: list[DeadLetter]
    ) -> tuple[EventBatch, dict[str | None, Ensemble]]:
        """Find each backtest run's model; live events get the active one.

        Events of a run id that no backtest registered cannot be scored as asked: they go
        to the dead-letter topic rather than be mixed in with another model's scores.
        """
        run_ids = {run_id for run_id in batch.run_ids if run_id is not None}
        models: dict[str | None, Ensemble] = {None: self.models.active}
        if not run_ids:
            return batch, models

        async def lookup() -> dict[str, Ensemble | None]:
            async with self.pool.acquire() as conn:
                return await self.models.for_runs(conn, run_ids)

        runs = await retry_forever(
            lookup, what="looking up backtest runs", on_failure=self.metrics.store_retries.inc
        )
        unknown = {run_id for run_id, ensemble in runs.items() if ensemble is None}
        models.update((run_id, ensemble) for run_id, ensemble in runs.items() if ensemble is not None)
        if unknown:
            batch, refused = split_unknown_runs(messages, batch, unknown)
            dead.extend(refused)
        return batch, models

    async def prepare(self, messages: Sequence[bytes]) -> PreparedBatch:
        """Decode, validate, score and explain a batch: the CPU part, nothing written yet.

        The agent prepares batch n+1 while batch n is being written (`commit`), so the
        worker's CPU and PostgreSQL's work overlap instead of taking turns.
        """
        started = time.perf_counter()
        self.metrics.consumed.inc(len(messages))
        batch, dead = decode(messages)
        batch, models = await self._resolve_models(messages, batch, dead)
        groups = []
        for ensemble, part in by_model(models.__getitem__, batch):
            rows = score_batch(ensemble, part)
            self.metrics.scored.inc(len(part))
            groups.append((rows, alert_messages(ensemble, rows)))
        return PreparedBatch(len(messages), groups, dead, time.perf_counter() - started)

    async def commit(self, prepared: PreparedBatch) -> None:
        """Store the batch, then publish its alerts and dead letters; retries until done."""
        started = time.perf_counter()
        outgoing: list[tuple[str, bytes | None, bytes, list[tuple[str, bytes]] | None]] = []
        for rows, alerts in prepared.groups:
            new = await retry_forever(
                lambda rows=rows: store_scored(self.pool, rows),
                what=f"storing a batch of {len(rows.ids)}",
                on_failure=self.metrics.store_retries.inc,
            )
            self.metrics.stored.inc(new)
            stored_at = time.time()
            for produced in rows.produced_at:
                if produced is not None:
                    self.metrics.end_to_end_seconds.observe(max(0.0, stored_at - produced))
            outgoing.extend((self.alerts_topic, key, value, None) for key, value in alerts)
        for letter in prepared.dead:
            value, headers = dead_letter_message(letter)
            outgoing.append((self.dead_letters_topic, None, value, headers))
        if outgoing:
            await retry_forever(
                lambda: self._publish(outgoing),
                what=f"publishing {len(outgoing)} alerts/dead letters",
                on_failure=self.metrics.publish_retries.inc,
            )
        self.metrics.alerts.inc(sum(len(alerts) for _, alerts in prepared.groups))
        for letter in prepared.dead:
            self.metrics.dead_letters.labels(letter.kind).inc()
        if prepared.dead:
            log.warning(
                "%d malformed events sent to %s, e.g.: %s",
                len(prepared.dead),
                self.dead_letters_topic,
                prepared.dead[0].reason,
            )
        self.metrics.batch_size.observe(prepared.consumed)
        self.metrics.batch_seconds.observe(prepared.seconds + time.perf_counter() - started)

    async def _publish(self, outgoing: Sequence[tuple[str, bytes | None, bytes, list | None]]) -> None:
        futures = [
            await self.producer.send(topic, value, key=key, headers=headers)
            for topic, key, value, headers in outgoing
        ]
        await asyncio.gather(*futures)
