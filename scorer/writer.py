"""Writing one prepared batch (I/O): PostgreSQL first, then the broker; the agent acks after.

`BatchWriter.write(prepared, origin)` returns only when every event of the batch is
accounted for: stored (each new alerting row's alert published, or kept in the outbox),
an identical redelivery of a stored row, or a dead letter (published, or kept in
PostgreSQL when the dead-letter topic will not take it). Then, and only then, the agent
acknowledges the batch's offsets. In order:

1. store each model group with one statement (`core.db.store.store_new`): rows, scores,
   the new rows' alerts and the shadow's scores of the new live rows in one transaction. A
   transient failure waits and retries; content PostgreSQL refuses is isolated row by row
   (`failures.isolate_refused`) and dead-lettered. A statement PostgreSQL refuses while it
   carries shadow scores is tried once more without them: if that goes through, the shadow
   was the cause, and the group is stored without its shadow scores (counted, logged);
   the champion's rows never wait for, or fall with, the experiment beside them;
2. for rows that were already stored (a redelivery, a replay, another producer), one
   query: identical content is a silent redelivery; other content is a conflict (the
   stored row wins, the event is dead-lettered); an alert still in the outbox (its
   publisher died before the broker took it) is published now, from the stored bytes;
3. publish alerts and dead letters, each retried a bounded number of times. Alerts the
   broker still refuses stay in the outbox (a periodic sweep sends them later); dead
   letters it refuses go to the `dead_letters` table. Neither ever blocks the partition;
4. delete the published alerts from the outbox.

A crash anywhere loses nothing: before 1 nothing is written and the batch comes again;
between 1 and 4 the outbox still holds the alerts and the redelivery (or the sweep)
publishes them; a duplicate alert can only be the same stored bytes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import asyncpg
from aiokafka import AIOKafkaProducer

from core.db.store import (
    ParkedLetter,
    forget_alerts,
    park_dead_letters,
    store_new,
    stored_rows,
    unpublished_alerts,
)
from core.events import DeadLetter, DeadLetterKind
from scorer.failures import FIRST_BACKOFF, describe, is_statement_error, isolate_refused, retry_forever
from scorer.faults import FaultInjector
from scorer.health import WorkerHealth
from scorer.metrics import ScorerMetrics
from scorer.pipeline import Origin, ScoredGroup, dead_letter_headers, occurrence_rounds
from scorer.stages import BatchStamps

log = logging.getLogger(__name__)

#: Tries to publish one message before giving up on it (alerts stay in the outbox, dead
#: letters go to PostgreSQL); with the backoff, about 3 s of retrying plus the timeouts.
PUBLISH_ATTEMPTS = 5
#: Longest wait for the broker to acknowledge one round of sends (s).
PUBLISH_TIMEOUT = 5.0
#: The outbox sweep: how often, and how old an unpublished alert must be to be swept (s).
OUTBOX_SWEEP_SECONDS = 30.0
OUTBOX_SWEEP_AGE = 60.0
OUTBOX_SWEEP_LIMIT = 1000

#: (run_id as stored, id): the key of a stored row.
RowKey = tuple[str, str]


def _ignore_outcome(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()


@dataclass(frozen=True, slots=True)
class PreparedBatch:
    """A decoded and scored batch waiting to be written (`scorer.worker` prepares it)."""

    messages: Sequence[bytes]  # the raw values, by position
    groups: list[ScoredGroup]
    refused: list[DeadLetter]
    seconds: float  # time spent preparing, for the batch latency histogram
    stamps: BatchStamps = field(default_factory=BatchStamps)  # the wall clock at each stage


@dataclass(frozen=True, slots=True)
class Outgoing:
    topic: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]] | None = None


@dataclass
class _GroupWrite:
    """What storing one group did, by row: new, already stored, refused by PostgreSQL; and the
    new rows stored with their shadow score."""

    new: set[int] = field(default_factory=set)
    seen_stored: set[int] = field(default_factory=set)
    refused: list[tuple[int, BaseException]] = field(default_factory=list)
    shadowed: set[int] = field(default_factory=set)
    shadow_refused: bool = False  # PostgreSQL refused the shadow's rows: the rest goes without them

    @property
    def already_stored(self) -> list[int]:
        return sorted(self.seen_stored - self.new)  # stored by an earlier try of this very write: new


@dataclass
class BatchWriter:
    pool: asyncpg.Pool
    producer: AIOKafkaProducer
    alerts_topic: str
    dead_letters_topic: str
    metrics: ScorerMetrics
    health: WorkerHealth
    faults: FaultInjector
    publish_attempts: int = PUBLISH_ATTEMPTS
    publish_timeout: float = PUBLISH_TIMEOUT

    async def write(self, prepared: PreparedBatch, origin: Callable[[int], Origin]) -> None:
        """Store the batch, publish its alerts and dead letters; return when all are accounted for."""
        started = time.perf_counter()
        letters = list(prepared.refused)
        alerts: dict[RowKey, bytes] = {}  # one per row, whichever way it came
        recovered: set[RowKey] = set()  # alerts stored by an earlier delivery, never confirmed
        for whole in prepared.groups:
            rounds = occurrence_rounds(whole.rows.run_ids, whole.rows.ids)
            for group in [whole] if len(rounds) == 1 else [whole.take(rows) for rows in rounds]:
                outcome = await self._store(group)
                letters += self._refused_by_database(group, outcome, prepared.messages)
                conflicts, pending = await self._check_already_stored(group, outcome, prepared.messages)
                letters += conflicts
                recovered.update(key for key in pending if key not in alerts)
                alerts.update(pending)
                keys = group.rows.keys()
                for row in sorted(outcome.new & group.alerts.keys()):
                    alerts[(keys[row], group.rows.ids[row])] = group.alerts[row]
                self._count_stored(group, outcome)
        prepared.stamps.stored = time.time()  # every group committed: durable from here on
        await self._publish_alerts_and_letters(list(alerts.items()), letters, origin, recovered)
        self.metrics.batch_size.observe(len(prepared.messages))
        self.metrics.batch_seconds.observe(prepared.seconds + time.perf_counter() - started)

    async def send_dead_letters(self, letters: list[DeadLetter], origin: Callable[[int], Origin]) -> None:
        """Publish refusals of another agent (the labels agent) through the same dead-letter path:
        retried, parked in PostgreSQL when the broker will not take them, counted by kind."""
        await self._publish_alerts_and_letters([], letters, origin, set())

    # -- 1. store ---------------------------------------------------------------------

    async def _store(self, group: ScoredGroup) -> _GroupWrite:
        rows = group.rows
        outcome = _GroupWrite()

        async def attempt(subset: Sequence[int]) -> None:
            whole = len(subset) == len(rows)
            part = rows if whole else rows.take(subset)
            alerts = (
                group.alerts
                if whole
                else {i: group.alerts[row] for i, row in enumerate(subset) if row in group.alerts}
            )
            shadow = None
            if group.shadow is not None and not outcome.shadow_refused:
                shadow = group.shadow if whole else group.shadow.take(subset)
            try:
                positions = await store_new(self.pool, part, alerts, shadow)
            except Exception as error:
                if shadow is None or not shadow.count or not is_statement_error(error):
                    raise
                # Perhaps the shadow's rows are what PostgreSQL refuses: the same write without
                # them. If that fails too, its error is the one to act on (retry or isolate).
                positions = await store_new(self.pool, part, alerts)
                self._shadow_refused(shadow.model_version, error)
                outcome.shadow_refused, shadow = True, None
            already = {subset[i] for i in positions}
            self.health.write_succeeded()
            self.faults.after_store()
            outcome.seen_stored |= already
            outcome.new.update(row for row in subset if row not in already)
            if shadow is not None:
                outcome.shadowed.update(
                    row for i, row in enumerate(subset) if row not in already and shadow.scored[i]
                )

        outcome.refused = await retry_forever(
            lambda: isolate_refused(list(range(len(rows))), attempt),
            what=f"storing a batch of {len(rows)}",
            on_failure=self._write_failed,
        )
        return outcome

    def _shadow_refused(self, version: str, error: BaseException) -> None:
        self.metrics.shadow_failures.labels(version, "store").inc()
        log.error(
            "PostgreSQL refused the shadow %s's scores (%s): the batch was stored without them",
            version,
            describe(error),
        )

    def _write_failed(self, error: BaseException) -> None:
        self.metrics.store_retries.inc()
        self.health.write_failed(describe(error))

    def _refused_by_database(
        self, group: ScoredGroup, outcome: _GroupWrite, messages: Sequence[bytes]
    ) -> list[DeadLetter]:
        letters = []
        for row, error in outcome.refused:
            position = group.positions[row]
            reason = f"PostgreSQL refused this event ({describe(error)})"
            log.warning("transaction %r: %s", group.rows.ids[row], reason)
            letters.append(DeadLetter(messages[position], DeadLetterKind.DATABASE_REFUSED, reason, position))
        return letters

    # -- 2. rows that were already stored -----------------------------------------------

    async def _check_already_stored(
        self, group: ScoredGroup, outcome: _GroupWrite, messages: Sequence[bytes]
    ) -> tuple[list[DeadLetter], dict[RowKey, bytes]]:
        """Conflicts among the rows stored before, and their alerts still waiting in the outbox."""
        rows = group.rows
        positions = outcome.already_stored
        if not positions:
            return [], {}
        stored = await retry_forever(
            lambda: stored_rows(self.pool, rows, positions),
            what=f"reading {len(positions)} rows stored before",
            on_failure=self._write_failed,
        )
        keys = rows.keys()
        conflicts: list[DeadLetter] = []
        pending: dict[RowKey, bytes] = {}
        for row in positions:
            found = stored.get(row)
            if found is None:  # cannot happen while nothing deletes rows: say so, drop nothing silently
                log.error("transaction %r was reported stored but is not there", rows.ids[row])
                continue
            if found.pending_alert is not None:
                pending[(keys[row], rows.ids[row])] = found.pending_alert
            if not found.same:
                position = group.positions[row]
                reason = (
                    f"transaction {rows.ids[row]!r} (run {rows.run_ids[row]!r}) is already stored with "
                    "other features or label: the stored one is kept"
                )
                conflicts.append(DeadLetter(messages[position], DeadLetterKind.CONFLICT, reason, position))
        self.metrics.conflicts.inc(len(conflicts))
        return conflicts, pending

    def _count_stored(self, group: ScoredGroup, outcome: _GroupWrite) -> None:
        self.metrics.stored.inc(len(outcome.new))
        shadow = group.shadow
        if shadow is not None:
            version = shadow.model_version
            if outcome.shadowed:
                self.metrics.shadow_scored.labels(version).inc(len(outcome.shadowed))
            lost = sum(1 for row in outcome.new if shadow.scored[row] and row not in outcome.shadowed)
            if lost:
                self.metrics.shadow_skipped.labels(version, "store").inc(lost)

    # -- 3, 4. publish, then forget published alerts -------------------------------------

    async def _publish_alerts_and_letters(
        self,
        alerts: list[tuple[RowKey, bytes]],
        letters: list[DeadLetter],
        origin: Callable[[int], Origin],
        recovered: set[RowKey],
    ) -> None:
        if not alerts and not letters:
            return
        origins = [origin(letter.position) for letter in letters]
        outgoing = [Outgoing(self.alerts_topic, row_id.encode(), payload) for (_, row_id), payload in alerts]
        outgoing += [
            Outgoing(self.dead_letters_topic, where.key, letter.raw, dead_letter_headers(letter, where))
            for letter, where in zip(letters, origins, strict=True)
        ]
        delivered = await self.publish(outgoing)
        published = [key for (key, _), ok in zip(alerts, delivered, strict=False) if ok]
        if published:
            await retry_forever(
                lambda: forget_alerts(self.pool, published),
                what=f"marking {len(published)} alerts published",
                on_failure=self._write_failed,
            )
        self.metrics.alerts.inc(len(published))
        self.metrics.alerts_recovered.inc(sum(key in recovered for key in published))
        if len(published) < len(alerts):
            self.metrics.alerts_deferred.inc(len(alerts) - len(published))
            log.error(
                "%d alerts not taken by the broker: kept in alert_outbox, sent by the next sweep",
                len(alerts) - len(published),
            )
        parked = [
            ParkedLetter(
                letter.kind,
                letter.reason,
                where.topic,
                where.partition,
                where.offset,
                where.key,
                letter.raw,
                headers,
            )
            for letter, where, ok, headers in zip(
                letters,
                origins,
                delivered[len(alerts) :],
                (message.headers or [] for message in outgoing[len(alerts) :]),
                strict=True,
            )
            if not ok
        ]
        if parked:
            await retry_forever(
                lambda: park_dead_letters(self.pool, parked),
                what=f"keeping {len(parked)} dead letters in PostgreSQL",
                on_failure=self._write_failed,
            )
            self.metrics.dead_letters_parked.inc(len(parked))
            log.error("%d dead letters not taken by the broker: kept in the dead_letters table", len(parked))
        for letter in letters:
            self.metrics.dead_letters.labels(letter.kind.value).inc()
        if letters:
            log.warning(
                "%d events refused (e.g. %s: %s), sent to %s",
                len(letters),
                letters[0].kind.value,
                letters[0].reason,
                self.dead_letters_topic,
            )

    async def publish(self, outgoing: Sequence[Outgoing]) -> list[bool]:
        """Send each message; retry those the broker did not acknowledge, `publish_attempts` times at most.

        Returns which were acknowledged. Never raises for the broker's failures and never
        spins forever: the caller keeps what was not taken.
        """
        delivered = [False] * len(outgoing)
        todo = list(range(len(outgoing)))
        delay = FIRST_BACKOFF
        for attempt in range(1, self.publish_attempts + 1):
            sent: dict[int, asyncio.Future] = {}
            error: BaseException | None = None
            for i in todo:
                message = outgoing[i]
                try:
                    sent[i] = await self.producer.send(
                        message.topic, message.value, key=message.key, headers=message.headers
                    )
                except asyncio.CancelledError:
                    raise
                except Exception as failure:  # noqa: BLE001 - the broker's trouble: counted, retried, bounded
                    error = failure
            if sent:
                done, late = await asyncio.wait(sent.values(), timeout=self.publish_timeout)
                for future in late:  # given up on: whatever becomes of it is not an error to report
                    future.add_done_callback(_ignore_outcome)
                for i, future in sent.items():
                    if future in done and not future.cancelled() and future.exception() is None:
                        delivered[i] = True
                    elif future in done and not future.cancelled():
                        error = future.exception()
            todo = [i for i in todo if not delivered[i]]
            if not todo:
                break
            reason = (
                describe(error)
                if error is not None
                else f"no acknowledgement within {self.publish_timeout:g} s"
            )
            if attempt < self.publish_attempts:
                for i in todo:
                    role = "alert" if outgoing[i].topic == self.alerts_topic else "dead_letter"
                    self.metrics.publish_retries.labels(role).inc()
                log.warning(
                    "publishing %d messages failed (%s); retrying in %.1f s", len(todo), reason, delay
                )
                await asyncio.sleep(delay)
                delay *= 2
            else:
                log.error("publishing %d messages failed %d times (%s)", len(todo), attempt, reason)
        return delivered

    # -- the outbox sweep ------------------------------------------------------------

    async def sweep_outbox(self, older_than: float = OUTBOX_SWEEP_AGE) -> int:
        """Publish alerts left in the outbox for longer than `older_than` s; how many were sent.

        They are the alerts of rows whose batch will not come again (the broker lost the
        topic) or that the broker refused for a while. The rows are locked while this runs,
        so two workers never sweep the same alert.
        """
        async with self.pool.acquire() as conn, conn.transaction():
            entries = await unpublished_alerts(conn, older_than, OUTBOX_SWEEP_LIMIT)
            if not entries:
                return 0
            delivered = await self.publish(
                [Outgoing(self.alerts_topic, row_id.encode(), payload) for _, row_id, payload in entries]
            )
            published = [
                (run_id, row_id) for (run_id, row_id, _), ok in zip(entries, delivered, strict=True) if ok
            ]
            await forget_alerts(conn, published)
        self.metrics.alerts.inc(len(published))
        self.metrics.alerts_recovered.inc(len(published))
        log.warning("published %d alerts left in alert_outbox", len(published))
        return len(published)

    async def sweep_outbox_forever(self, every: float = OUTBOX_SWEEP_SECONDS) -> None:
        while True:
            await asyncio.sleep(every)
            try:
                await self.sweep_outbox()
            except Exception as error:  # noqa: BLE001 - the next sweep tries again
                log.warning("could not sweep alert_outbox: %s", describe(error))
