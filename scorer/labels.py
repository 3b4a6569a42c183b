"""The labels agent's work (I/O): store a batch of verdicts, dead-letter the refused, then acknowledge.

    async with LabelWorker.running(config) as worker:
        await worker.write_then_ack(events, ack)   # decode, store, dead letters, then ack

Each batch of the `labels` topic, in order:

1. decode and validate it against the label contract (`core.labels.decode_labels`): a
   malformed verdict becomes a dead letter with its kind;
2. store the verdicts with the statement the API uses too (`core.db.labels.store_labels`):
   the history (`label_events`, by `label_id`) and the latest per source (`feedback`). A
   repeat of a `label_id` within the batch is stored in a later round, so it is judged
   like a repeat from any other batch. Transient failures wait and retry (holding the
   offsets); content PostgreSQL refuses is isolated and dead-lettered;
3. verdicts that were already stored are read back: the same verdict again (a redelivery,
   a replay, the API's own write of a review) is silent; another verdict under a used id
   is a `conflict` (the stored one is kept) and dead-lettered;
4. publish the dead letters through the scorer's dead-letter path (`BatchWriter`), then
   acknowledge the batch. So nothing is acknowledged before it is durable, and no single
   bad verdict stops the agent.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import asyncpg
import faust

from core.db.labels import store_labels, stored_labels
from core.events import DeadLetter, DeadLetterKind
from core.labels import LabelBatch, LabelEvent, decode_labels
from scorer.failures import describe, isolate_refused, retry_forever
from scorer.faults import Fault, FaultInjector
from scorer.health import WorkerHealth
from scorer.metrics import ScorerMetrics
from scorer.pipeline import Origin, occurrence_rounds
from scorer.resources import Resources
from scorer.worker import CLOSE_TIMEOUT, origin_of, run_to_the_end
from scorer.writer import BatchWriter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LabelWorkerConfig:
    dsn: Callable[[], str]
    bootstrap_servers: str
    alerts_topic: str
    dead_letters_topic: str
    metrics: ScorerMetrics
    health: WorkerHealth
    fault: Fault


@dataclass
class _Stored:
    """What storing one round did, by position in the round."""

    already: set[int]
    refused: list[tuple[int, BaseException]]


@dataclass
class LabelWriter:
    pool: asyncpg.Pool
    letters: BatchWriter  # the scorer's dead-letter path (publish, retry, park)
    metrics: ScorerMetrics
    health: WorkerHealth
    faults: FaultInjector

    async def write(self, messages: Sequence[bytes], origin: Callable[[int], Origin]) -> None:
        """Store the batch's verdicts and send its dead letters; return when all are accounted for."""
        self.metrics.labels_consumed.inc(len(messages))
        batch, letters = decode_labels(messages)
        ids = [event.label_id for event in batch.events]
        for rows in occurrence_rounds([None] * len(ids), ids):
            letters += await self._store_round(messages, batch, rows)
        await self.letters.send_dead_letters(letters, origin)

    async def _store_round(
        self, messages: Sequence[bytes], batch: LabelBatch, rows: list[int]
    ) -> list[DeadLetter]:
        events = [batch.events[row] for row in rows]
        outcome = _Stored(set(), [])

        async def attempt(subset: Sequence[int]) -> None:
            already = await store_labels(self.pool, [events[i] for i in subset])
            self.health.write_succeeded()
            self.faults.after_store()
            outcome.already.update(subset[i] for i in already)

        outcome.refused = await retry_forever(
            lambda: isolate_refused(list(range(len(events))), attempt),
            what=f"storing {len(events)} verdicts",
            on_failure=self._write_failed,
        )
        letters = []
        for i, error in outcome.refused:
            position = batch.positions[rows[i]]
            reason = f"PostgreSQL refused this verdict ({describe(error)})"
            log.warning("verdict %r: %s", events[i].label_id, reason)
            letters.append(DeadLetter(messages[position], DeadLetterKind.DATABASE_REFUSED, reason, position))
        refused = {i for i, _ in outcome.refused}
        stored_new = len(events) - len(outcome.already) - len(refused)
        self.metrics.labels_stored.inc(stored_new)
        letters += await self._conflicts(messages, batch, rows, events, sorted(outcome.already - refused))
        return letters

    async def _conflicts(
        self,
        messages: Sequence[bytes],
        batch: LabelBatch,
        rows: list[int],
        events: list[LabelEvent],
        already: list[int],
    ) -> list[DeadLetter]:
        """Among verdicts already stored: the same ones are redeliveries, other ones conflicts."""
        if not already:
            return []
        stored = await retry_forever(
            lambda: stored_labels(self.pool, [events[i].label_id for i in already]),
            what=f"reading {len(already)} verdicts stored before",
            on_failure=self._write_failed,
        )
        letters = []
        for i in already:
            event = events[i]
            found = stored.get(event.label_id)
            if found is not None and found.same_verdict(event):
                self.metrics.labels_redelivered.inc()
                continue
            position = batch.positions[rows[i]]
            reason = (
                f"verdict {event.label_id!r} is already stored with other content (transaction, run, label, "
                "source, who or note): the stored one is kept"
            )
            letters.append(DeadLetter(messages[position], DeadLetterKind.CONFLICT, reason, position))
        self.metrics.label_conflicts.inc(len(letters))
        return letters

    def _write_failed(self, error: BaseException) -> None:
        self.metrics.store_retries.inc()
        self.health.write_failed(describe(error))


@dataclass
class LabelWorker:
    resources: Resources
    writer: LabelWriter

    @classmethod
    @asynccontextmanager
    async def running(cls, config: LabelWorkerConfig) -> AsyncIterator[LabelWorker]:
        """Open its own pool and producer (the transactions agent's are busy with their batches)."""

        def failed(error: BaseException) -> None:
            config.metrics.store_retries.inc()
            config.health.write_failed(describe(error))

        resources = await Resources.open(
            dsn=config.dsn, bootstrap_servers=config.bootstrap_servers, on_failure=failed
        )
        try:
            letters = BatchWriter(
                resources.pool,
                resources.producer,
                config.alerts_topic,
                config.dead_letters_topic,
                config.metrics,
                config.health,
                FaultInjector(Fault()),
            )
            writer = LabelWriter(
                resources.pool,
                letters,
                config.metrics,
                config.health,
                FaultInjector(config.fault.for_labels()),
            )
            yield cls(resources, writer)
        finally:
            await run_to_the_end(_close(resources))

    async def write_then_ack(
        self, events: Sequence[faust.EventT], ack: Callable[[faust.EventT], Awaitable[bool]]
    ) -> None:
        """Store the batch, then acknowledge its events: never the other way round."""
        messages = [event.value or b"" for event in events]
        await self.writer.write(messages, lambda position: origin_of(events[position]))
        for event in events:
            await ack(event)


async def _close(resources: Resources) -> None:
    try:
        await asyncio.wait_for(resources.close(), CLOSE_TIMEOUT)
    except Exception as error:  # noqa: BLE001 - closing: say so and go on stopping
        log.warning("closing the labels agent's producer and pool: %s", describe(error))
        resources.pool.terminate()
