"""How the agent takes batches and hands them on: full batches in, one write at a time, in order.

Two policies the agent's loop relies on, each small enough to read at once:

- `full_batches`: take the chunks of records (`scorer.transport.RecordChunk`, one Faust
  event each) one at a time, as soon as each is there, and cut the batch when no further
  chunk is waiting in the stream's queue or the batch is full (`pipeline.gather_more`):
  no timer holds a batch back to fill up (a backlog goes in full batches of at most
  `size` records; a stream that keeps up goes in what each fetch brought, or what
  arrived while the write before was in flight). Nothing taken here is acknowledged: the
  agent acknowledges after writing, the whole `ChunkBatch` at once.
- `InOrderWrites`: batch n+1 is prepared (decoded, scored) while batch n is written, but
  a write starts only when the one before it has finished, so acknowledgements stay in
  offset order; on the way out a write in flight is cancelled unacknowledged (its batch
  is delivered again, and the write is idempotent).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import faust
import numpy as np
from aiokafka.structs import ConsumerRecord

from scorer.pipeline import Origin, gather_more, keep_gathering
from scorer.stages import BatchStamps

#: How often an agent waiting for its first chunk wakes up (s): a stop ends the wait anyway.
IDLE_WAKE = 1.0


@dataclass(frozen=True, slots=True)
class ChunkBatch:
    """The chunk events of one batch, and their records in order: what is scored and then acknowledged."""

    events: list[faust.EventT]  # one per chunk; `event.value` is its RecordChunk
    records: list[ConsumerRecord]

    @classmethod
    def of(cls, events: Sequence[faust.EventT]) -> ChunkBatch:
        records: list[ConsumerRecord] = []
        for event in events:
            records.extend(event.value.records)
        return cls(list(events), records)

    def origin(self, position: int) -> Origin:
        """Where the record at `position` came from (topic, partition, offset, key)."""
        record = self.records[position]
        return Origin(record.topic, record.partition, record.offset, record.key)

    def stamps(self) -> BatchStamps:
        """The batch's stage stamps so far: each record's fetch time, and taken now."""
        fetched = np.repeat(
            np.asarray([event.value.fetched_at for event in self.events], dtype=np.float64),
            [len(event.value) for event in self.events],
        )
        return BatchStamps(fetched=fetched, taken=time.time())

    def next_offsets(self) -> dict[int, int]:
        """Partition -> the offset after the batch's last record there."""
        return {event.value.partition: event.value.last_offset + 1 for event in self.events}


async def full_batches(
    stream: faust.StreamT, size: int, *, on_taken: Callable[[int], None]
) -> AsyncIterator[ChunkBatch]:
    """Unacknowledged chunks in batches of at most `size` records; `on_taken(n)` as records are taken.

    A chunk is never split (its one acknowledgement covers all its records), so a batch
    is cut before a chunk that would take it past `size` (chunks hold fewer records than
    `size`). Chunks are taken one by one: `noack_take(1)` returns as soon as one is
    there, and its timeout (`IDLE_WAKE`) only wakes an idle agent, never delays an event.
    """
    gathered: list[faust.EventT] = []
    records = 0
    queue = stream.channel.queue
    async with aclosing(stream.noack_take(1, within=IDLE_WAKE)) as takes:
        async for events in takes:
            for event in events:
                count = len(event.value)
                on_taken(count)
                if gathered and records + count > size:
                    yield ChunkBatch.of(gathered)
                    gathered, records = [], 0
                gathered.append(event)
                records += count
            if gathered and not gather_more(records, _waiting_records(queue, 1), size):
                yield ChunkBatch.of(gathered)
                gathered, records = [], 0


async def event_batches(
    stream: faust.StreamT, size: int, within: float, *, on_taken: Callable[[int], None]
) -> AsyncIterator[list[faust.EventT]]:
    """`full_batches` for a topic delivered one record per event (the labels topic: small, rare).

    Unacknowledged events in batches of at most `size`, the rest of a batch taken too while
    it already waits in the stream's queue; `on_taken(n)` as events are taken.
    """
    gathered: list[faust.EventT] = []
    async with aclosing(stream.noack_take(size, within=within)) as takes:
        async for events in takes:
            on_taken(len(events))
            gathered.extend(events)
            while gathered and not keep_gathering(len(gathered), stream.channel.queue.qsize(), size):
                batch, gathered = gathered[:size], gathered[size:]
                yield batch


def _waiting_records(queue: Any, enough: int) -> int:
    """Records in the chunks waiting in the stream's queue, counted until `enough` are seen."""
    waiting = 0
    for event in queue._queue:  # asyncio.Queue's deque: read, never changed
        waiting += len(event.value)
        if waiting >= enough:
            break
    return waiting


class InOrderWrites:
    """At most one write in flight; each starts after the previous one finished (and raises its error)."""

    def __init__(self) -> None:
        self._writing: asyncio.Task | None = None

    async def submit(self, write: Coroutine[Any, Any, None]) -> None:
        """Wait for the write before, then start `write` in the background."""
        try:
            if self._writing is not None:
                await self._writing
        except BaseException:
            write.close()  # never started: its batch is not acknowledged and comes again
            raise
        self._writing = asyncio.create_task(write)

    async def __aenter__(self) -> InOrderWrites:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        writing, self._writing = self._writing, None
        if writing is None:
            return
        if kind is None:
            await writing
            return
        writing.cancel()  # not acknowledged: delivered again
        await asyncio.gather(writing, return_exceptions=True)
