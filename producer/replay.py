"""Replay a Kaggle-format CSV onto the transactions topic, as the events of `core.events`.

    report = await replay(SAMPLE_PATH, bootstrap_servers="127.0.0.1:9092",
                          topic="transactions", rate=2000, limit=10_000)

Every good row becomes one event keyed by its stable id (`core.events.transaction_id`:
the values plus how many identical rows came before), so replaying the same file twice
publishes the same ids and the scorer stores each transaction once. Bad rows are skipped
and listed in the report with their row number and reason; nothing is dropped silently.

Stopping: set `stop` (the command does so on Ctrl-C or SIGTERM) and the replay stops at
the next row, waits until everything it sent is acknowledged by the broker, and reports
how far it got. That wait is bounded: `stop_grace` seconds after the stop (or at once
when `abandon` is set: a second Ctrl-C) the replay gives up on a broker that is gone or
frozen and reports how many events the broker may not have received (`unconfirmed`).
Cancelling the task also flushes before the cancellation goes on.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner
from tqdm import tqdm

from core.dataset import CsvRow, CsvSchemaError, iter_csv_rows, load_csv
from core.events import build_event, encode_event, transaction_id
from core.kafka import make_producer
from core.labels import LabelEvent, encode_label
from producer.delayed_labels import DelayedLabels
from producer.pacing import Pacing

#: Delivery futures awaited together: bounds memory, keeps the producer's batches full.
_INFLIGHT = 20_000
#: Give the event loop a turn this often when not pacing (heartbeats, Ctrl-C).
_YIELD_EVERY = 2_000
#: After a stop, how long the replay still waits on the broker by default (the command
#: passes FRAUDSTREAM_REPLAY_FLUSH_SECONDS). Healthy, it confirms the last 20,000 events in
#: well under a second; gone or frozen, aiokafka alone would wait out its 40 s request
#: timeout and retries, and a supervisor stopping the stack would have to kill us.
STOP_GRACE_SECONDS = 10.0
#: Closing the producer after giving up: its connections only, nothing left to wait for.
_CLOSE_SECONDS = 1.0


@dataclass(frozen=True)
class SelectedRow:
    """A row chosen for publishing, with its stable id."""

    row_number: int
    values: tuple[float, ...]
    label: int | None
    event_id: str


@dataclass(frozen=True)
class ReplayReport:
    """What a replay did: events sent, rows skipped (row number, reason), how fast."""

    sent: int
    skipped_rows: list[tuple[int, str]]
    elapsed: float
    rate_achieved: float
    interrupted: bool
    #: Wall clock (epoch seconds) when the first event was handed to the producer, after the
    #: file was read: where an end-to-end throughput measurement starts.
    first_sent_at: float | None = None
    last_row: int | None = None
    last_time: float | None = None
    pacing: str = field(default="as fast as possible")
    #: Events handed to the producer whose delivery the broker had not confirmed when the
    #: replay gave up waiting (an upper bound: the last confirmation point is counted).
    unconfirmed: int = 0
    #: With a label delay: labels published on the labels topic, and labels still held
    #: back when the replay was interrupted (not published; a later replay sends them).
    labels_sent: int = 0
    labels_held: int = 0


def read_rows(path: str | Path) -> Iterable[CsvRow]:
    """The rows of a CSV as `iter_csv_rows` yields them, read the fast way when the file is clean.

    A clean file is parsed at once by the vectorised strict reader (several times faster
    than row by row, which matters at 20,000 events/s); a file with any bad row makes that
    reader refuse, and we fall back to streaming it row by row so the bad rows are reported
    one by one and the good ones still go out. A wrong header fails either way.
    """
    try:
        data = load_csv(path)
    except CsvSchemaError:
        return iter_csv_rows(path)
    labels = data.labels.tolist()
    # Row by row: one `tolist()` of the whole array made 8.5 million floats at once, and
    # the collector walking them cost more than the conversion (0.8 s against 0.3 s).
    return (
        (number, tuple(values.tolist()), labels[number - 1], None)
        for number, values in enumerate(data.raw, start=1)
    )


def select_rows(
    rows: Iterable[CsvRow],
    skipped: list[tuple[int, str]],
    *,
    time_from: float | None = None,
    time_to: float | None = None,
    limit: int | None = None,
) -> Iterator[SelectedRow]:
    """Good rows inside [time_from, time_to), at most `limit`, each with its stable id.

    Bad rows are appended to `skipped` as they pass. Identical rows share their `Time`, so
    a time window holds all copies of a row or none: counting occurrences inside the
    window gives the same ids as counting over the whole file.
    """
    if limit is not None and limit <= 0:
        return
    seen: dict[str, int] = {}
    chosen = 0
    for row_number, values, label, error in rows:
        if error is not None or values is None:
            skipped.append((row_number, error or "unreadable row"))
            continue
        data_time = values[0]
        if time_from is not None and data_time < time_from:
            continue
        if time_to is not None and data_time >= time_to:
            continue
        first_id = transaction_id(values, 0)
        occurrence = seen.get(first_id, 0)
        seen[first_id] = occurrence + 1
        event_id = first_id if occurrence == 0 else transaction_id(values, occurrence)
        yield SelectedRow(row_number, values, label, event_id)
        chosen += 1
        if limit is not None and chosen >= limit:
            return


class PartitionBatches:
    """Messages packed per partition into the producer's own batches: one future per batch.

    `AIOKafkaProducer.send` costs a coroutine, a partition lookup and a delivery future per
    message, about a third of the replay's CPU at full speed. Packing the batches here
    sends the same records (same keys, values and partitions: the producer's default
    partitioner, murmur2 of the key) with one future per batch of up to `max_batch_size`.
    Used when replaying as fast as possible; paced replays send message by message, so
    each event leaves at once.
    """

    def __init__(self, producer: AIOKafkaProducer, topic: str, partitions: Iterable[int]) -> None:
        self.producer = producer
        self.topic = topic
        self.partitions = sorted(partitions)
        self.partitioner = DefaultPartitioner()
        self.open: dict[int, object] = {}

    async def add(self, key: bytes, value: bytes) -> asyncio.Future | None:
        """Add one message; when its partition's batch was full, send that batch and return its future."""
        partition = self.partitioner(key, self.partitions, self.partitions)
        builder = self.open.get(partition)
        if builder is None:
            builder = self.open[partition] = self.producer.create_batch()
        if builder.append(key=key, value=value, timestamp=None) is not None:
            return None
        sent = await self.producer.send_batch(builder, self.topic, partition=partition)
        builder = self.open[partition] = self.producer.create_batch()
        if builder.append(key=key, value=value, timestamp=None) is None:
            raise ValueError(f"a {len(value)}-byte message does not fit in an empty producer batch")
        return sent

    async def send_open(self) -> list[asyncio.Future]:
        """Send every batch that holds messages; their delivery futures."""
        futures = [
            await self.producer.send_batch(builder, self.topic, partition=partition)
            for partition, builder in self.open.items()
            if builder.record_count()
        ]
        self.open.clear()
        return futures


class StopGuard:
    """Cuts the replay's waits on the broker short once a stop is `grace` seconds old.

    After a stop the replay stops sending at the next row and delivers what it already
    handed to the producer. A broker that is gone or frozen would make that wait (or a
    send blocked on a full buffer, or the producer's start) last as long as aiokafka's
    timeouts and retries. So the guard cancels the replay's task when the stop is `grace`
    seconds old, or at once when `abandon` is set; the replay takes that cancellation as
    "give up", closes the producer without waiting and reports what was not confirmed.
    """

    def __init__(self, stop: asyncio.Event | None, abandon: asyncio.Event | None, grace: float) -> None:
        self.fired = False
        self._watch: asyncio.Task | None = None
        if stop is not None:
            self._watch = asyncio.create_task(
                self._cancel_when_due(asyncio.current_task(), stop, abandon, grace)
            )

    async def _cancel_when_due(
        self, task: asyncio.Task | None, stop: asyncio.Event, abandon: asyncio.Event | None, grace: float
    ) -> None:
        await stop.wait()
        try:
            async with asyncio.timeout(grace):
                await (abandon.wait() if abandon is not None else asyncio.Future())
        except TimeoutError:
            pass
        self.fired = True
        if task is not None:
            task.cancel()

    def absorbed(self) -> bool:
        """Call in `except CancelledError`: True (and the cancellation undone) when it was ours."""
        if not self.fired:
            return False
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
        return True

    def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()


async def replay(
    path: str | Path,
    *,
    bootstrap_servers: str,
    topic: str,
    rate: float | None = None,
    speed: float | None = None,
    time_from: float | None = None,
    time_to: float | None = None,
    limit: int | None = None,
    run_id: str | None = None,
    progress: bool = True,
    stop: asyncio.Event | None = None,
    abandon: asyncio.Event | None = None,
    stop_grace: float = STOP_GRACE_SECONDS,
    on_first_send: Callable[[], object] | None = None,
    label_delay: float | None = None,
    labels_topic: str | None = None,
) -> ReplayReport:
    """Publish the rows of `path` to `topic`; see the module docstring.

    `on_first_send` is called once, just before the first event goes out (benchmarks start
    their clocks there, after the file is read). With `label_delay` (seconds of data time),
    events go without their label and each label follows on `labels_topic` as a chargeback
    once the data clock passes the row's time plus the delay (`producer.delayed_labels`);
    labels still held when the file ends are published then, in due order.
    """
    pacing = Pacing(rate=rate, speed=speed)
    held: DelayedLabels | None = None
    if label_delay is not None:
        if not labels_topic:
            raise ValueError("a label delay needs the labels topic")
        held = DelayedLabels(label_delay, run_id)
    if time_from is not None and time_to is not None and time_to <= time_from:
        raise ValueError(f"empty time window: from {time_from} to {time_to}")
    rows = read_rows(path)  # reads and checks the file now: a wrong file fails before we connect
    skipped: list[tuple[int, str]] = []
    selected = select_rows(rows, skipped, time_from=time_from, time_to=time_to, limit=limit)

    producer = make_producer(bootstrap_servers)
    guard = StopGuard(stop, abandon, stop_grace)
    try:
        await producer.start()
        batches = (
            PartitionBatches(producer, topic, await producer.partitions_for(topic))
            if pacing.unlimited
            else None
        )
    except asyncio.CancelledError:
        await _close(producer, delivered=False)
        guard.close()
        if not guard.absorbed():
            raise
        return ReplayReport(0, skipped, 0.0, 0.0, interrupted=True, pacing=pacing.describe())
    except BaseException:  # a broker that is not there: release the client before reporting it
        guard.close()
        await producer.stop()
        raise
    bar = tqdm(
        total=limit,
        disable=not progress,
        unit=" tx",
        unit_scale=True,
        desc=f"replay → {topic}",
        smoothing=0.1,
        mininterval=0.5,
    )
    sent = 0
    last: SelectedRow | None = None
    interrupted = False
    pending: list[asyncio.Future] = []
    started = time.perf_counter()
    first_sent: float | None = None  # perf_counter and wall clock at the first event
    first_sent_at: float | None = None
    first_time: float | None = None
    shown = 0
    confirmed = 0  # events the broker acknowledged, as of the last settle
    delivered = False
    labels_sent = 0

    async def send_labels(events: list[LabelEvent]) -> None:
        nonlocal labels_sent
        for label in events:
            key = label.transaction_id.encode()
            pending.append(await producer.send(labels_topic, encode_label(label), key=key))
        labels_sent += len(events)

    try:
        for row in selected:
            if stop is not None and stop.is_set():
                interrupted = True
                break
            if first_time is None:
                first_time = row.values[0]
                if on_first_send is not None:
                    on_first_send()
                first_sent, first_sent_at = time.perf_counter(), time.time()
            if not pacing.unlimited:
                ahead = pacing.due(sent, row.values[0], first_time=first_time) - (
                    time.perf_counter() - started
                )
                if ahead > 0.001:
                    await asyncio.sleep(ahead)
                    if stop is not None and stop.is_set():
                        interrupted = True
                        break
            elif sent % _YIELD_EVERY == 0:
                if batches is not None:  # keep the pipeline moving: partial batches go out too
                    pending.extend(await batches.send_open())
                await asyncio.sleep(0)
            if held is not None:  # the data clock reads this row's time: release what is due
                await send_labels(held.due(row.values[0]))
                held.hold(row.event_id, row.values[0], row.label)
            label = None if held is not None else row.label
            event = build_event(row.values, event_id=row.event_id, label=label, run_id=run_id)
            value, key = encode_event(event), row.event_id.encode()
            if batches is None:
                pending.append(await producer.send(topic, value, key=key))
            elif (full := await batches.add(key, value)) is not None:
                pending.append(full)
            sent += 1
            last = row
            if sent % _INFLIGHT == 0:
                if batches is not None:
                    pending.extend(await batches.send_open())
                await _settle(producer, pending)
                confirmed = sent
            if sent - shown >= 1000:
                bar.update(sent - shown)
                shown = sent
        if held is not None and not interrupted:  # the data ran out: the rest are due now
            await send_labels(held.rest())
    except asyncio.CancelledError:
        if not guard.absorbed():
            raise
        interrupted = True  # stopped while waiting on the broker; nothing more is waited for
    finally:  # also on cancellation: what was handed to the producer is delivered first
        try:
            if not guard.fired:
                if batches is not None:
                    pending.extend(await batches.send_open())
                await _flush(producer, pending)
                delivered = True
                confirmed = sent
        except asyncio.CancelledError:
            if not guard.absorbed():
                raise
        finally:
            try:
                await _close(producer, delivered=delivered)
            except asyncio.CancelledError:
                if not guard.absorbed():
                    raise
            guard.close()
            bar.update(sent - shown)
            bar.close()
    finished = time.perf_counter()
    elapsed = finished - started
    sending = finished - first_sent if first_sent is not None else 0.0
    return ReplayReport(
        sent=sent,
        skipped_rows=skipped,
        elapsed=elapsed,
        rate_achieved=sent / sending if sending > 0 else 0.0,
        interrupted=interrupted,
        first_sent_at=first_sent_at,
        last_row=last.row_number if last else None,
        last_time=last.values[0] if last else None,
        pacing=pacing.describe(),
        unconfirmed=sent - confirmed,
        labels_sent=labels_sent,
        labels_held=len(held) if held is not None else 0,
    )


async def _close(producer: AIOKafkaProducer, *, delivered: bool) -> None:
    """Close the producer; after giving up on delivery, without waiting for its batches."""
    if delivered:
        await producer.stop()
        return
    try:
        async with asyncio.timeout(_CLOSE_SECONDS):  # stop() waits for undelivered batches
            await producer.stop()
    except TimeoutError:
        await producer.client.close()


async def _settle(producer, pending: list[asyncio.Future]) -> None:
    """Wait until every message in `pending` is acknowledged; raise the first failure.

    `producer.flush()` waits for the producer's batches, and a batch resolves all its
    messages' futures before its own waiters run, so afterwards each future only needs
    looking at. (Gathering 20,000 futures instead put a callback on each: a fifth of the
    replay's CPU.) A future still open, which the producer should never leave, is awaited.
    """
    if not pending:
        return
    batch = list(pending)
    pending.clear()
    await producer.flush()
    open_ = [future for future in batch if not future.done()]
    if open_:
        await asyncio.gather(*open_)
    for future in batch:
        future.result()  # the first failed delivery raises here, as gather did


async def _flush(producer, pending: list[asyncio.Future]) -> None:
    """Wait until every message handed to the producer is acknowledged (or failed)."""
    await _settle(producer, pending)
    await producer.flush()
