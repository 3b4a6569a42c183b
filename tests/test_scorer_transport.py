"""The scorer's consumer: the delivery fast path, and delivery in chunks of records.

`LowLatencyConsumer.wait_first` runs a delivery one step; when it has to wait, `_Resumed`
carries the rest of it into Faust's `wait_first`. It must behave exactly like awaiting the
coroutine: same result, same exception, and a cancellation must reach the coroutine.

A chunked topic's records come as one Faust message per chunk; acknowledging a chunk must
commit exactly what acknowledging each of its records through Faust would (Faust's own
per-record path is the reference, on a consumer of the same kind), and the offsets inside a
chunk are never taken for a gap. End to end, on the real broker, `tests/test_scorer_*.py`.
"""

from __future__ import annotations

import asyncio

import pytest
from aiokafka.structs import ConsumerRecord
from faust.types import TP
from hypothesis import given, settings
from hypothesis import strategies as st

from scorer.transport import ChunkMessage, RecordChunk, RecordChunkSchema, ScorerApp, _Resumed


def _step(coro):
    """Run `coro` one step, as the fast path does: (finished, its value or what it waits on)."""
    try:
        return False, coro.send(None)
    except StopIteration as done:
        return True, done.value


def test_a_delivery_that_does_not_wait_finishes_in_one_step() -> None:
    async def deliver() -> str:
        return "delivered"

    async def main() -> None:
        finished, value = _step(deliver())
        assert finished and value == "delivered"

    asyncio.run(main())


def test_a_waiting_delivery_finishes_in_a_task_with_its_values_and_its_result() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        first, second = loop.create_future(), loop.create_future()

        async def deliver() -> int:
            a = await first
            await asyncio.sleep(0)  # a bare yield on the way, too
            b = await second
            return a + b

        coro = deliver()
        finished, pending = _step(coro)
        assert not finished and pending is first
        task = asyncio.ensure_future(_Resumed(coro, pending))
        loop.call_soon(first.set_result, 1)
        loop.call_later(0.01, second.set_result, 2)
        assert await task == 3

    asyncio.run(main())


def test_a_waiting_delivery_raises_its_exception() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        gate = loop.create_future()

        async def deliver() -> None:
            await gate
            raise ValueError("bad message")

        coro = deliver()
        _, pending = _step(coro)
        task = asyncio.ensure_future(_Resumed(coro, pending))
        gate.set_result(None)
        with pytest.raises(ValueError, match="bad message"):
            await task

    asyncio.run(main())


def test_cancelling_the_task_cancels_the_waiting_delivery() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        gate = loop.create_future()
        cleaned_up = []

        async def deliver() -> None:
            try:
                await gate
            finally:
                cleaned_up.append(True)

        coro = deliver()
        _, pending = _step(coro)
        task = asyncio.ensure_future(_Resumed(coro, pending))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert cleaned_up == [True]
        assert gate.cancelled()  # the future the delivery waited on was cancelled with it

    asyncio.run(main())


# -- chunks: one Faust message per chunk of records, acknowledged as all its records ------


def _record(offset: int, topic: str = "tx", partition: int = 0) -> ConsumerRecord:
    return ConsumerRecord(
        topic, partition, offset, 1_700_000_000_000, 0, b"k%d" % offset, b"v", None, 2, 1, []
    )


async def _chunked_app(name: str, per_chunk: int = 3):
    app = ScorerApp(name, broker="kafka://127.0.0.1:9", autodiscover=False)  # never connects
    topic = app.topic("tx", schema=RecordChunkSchema(), partitions=1)
    app.deliver_in_chunks(topic, per_chunk)
    app.topics.add(topic)
    await app.topics._update_indices()  # what the conductor does when the agent subscribes
    return app, topic


def _commit(consumer, tp: TP) -> int | None:
    """What Faust's commit does with one partition: the offset it would commit, then remember it."""
    offset = consumer._new_offset(tp)
    if offset is not None and consumer._should_commit(tp, offset):
        consumer._committed_offset[tp] = offset
    return consumer._committed_offset[tp]


def test_a_chunk_event_carries_its_records_and_no_key() -> None:
    async def main() -> None:
        app, topic = await _chunked_app("chunks-decode")
        tp = TP("tx", 0)
        chunk = RecordChunk("tx", 0, [_record(o) for o in range(5, 8)])
        message = app.consumer._to_message(tp, chunk)
        assert isinstance(message, ChunkMessage)
        assert (message.first_offset, message.offset) == (5, 7)
        event = await topic.decode(message)
        assert event.value is chunk and event.key is None

    asyncio.run(main())


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_acknowledging_chunks_commits_exactly_what_acknowledging_each_record_would(data) -> None:
    """Faust's own per-record acknowledgements are the reference: same commits, in any order of acks."""
    sizes = data.draw(st.lists(st.integers(1, 6), min_size=1, max_size=8), label="chunk sizes")
    start = data.draw(st.integers(0, 3), label="first offset")
    bounds = [start]
    for size in sizes:
        bounds.append(bounds[-1] + size)
    chunks = [list(range(a, b)) for a, b in zip(bounds, bounds[1:], strict=False)]
    order = data.draw(st.permutations(range(len(chunks))), label="ack order")
    acked = data.draw(st.integers(0, len(chunks)), label="chunks acknowledged")
    commit_after = data.draw(st.lists(st.booleans(), min_size=acked, max_size=acked), label="commits")

    async def main() -> None:
        chunked_app, _ = await _chunked_app("chunks-a")
        reference_app, _ = await _chunked_app("chunks-b")
        chunked, reference = chunked_app.consumer, reference_app.consumer
        tp = TP("tx", 0)
        for consumer in (chunked, reference):
            consumer._committed_offset[tp] = start or None  # the group's committed offset
        for i, commit in zip(order[:acked], commit_after, strict=True):
            records = [_record(offset) for offset in chunks[i]]
            taken = chunked.ack(ChunkMessage(RecordChunk("tx", 0, records), tp, 1))
            # Faust's own path, record by record (an offset below the committed one is not taken)
            assert taken == any([reference.ack(reference._to_message(tp, record)) for record in records])
            if commit:
                assert _commit(chunked, tp) == _commit(reference, tp)
        assert _commit(chunked, tp) == _commit(reference, tp)
        assert chunked._n_acked == reference._n_acked

    asyncio.run(main())


def test_a_chunk_acknowledged_twice_counts_once() -> None:
    async def main() -> None:
        app, _ = await _chunked_app("chunks-twice")
        tp = TP("tx", 0)
        message = ChunkMessage(RecordChunk("tx", 0, [_record(o) for o in range(0, 3)]), tp, 1)
        assert app.consumer.ack(message) is True
        assert app.consumer.ack(message) is False
        assert _commit(app.consumer, tp) == 3

    asyncio.run(main())


def test_the_offsets_inside_a_chunk_are_no_gap_but_missing_offsets_before_it_are() -> None:
    async def main() -> None:
        app, _ = await _chunked_app("chunks-gap")
        consumer, tp = app.consumer, TP("tx", 0)
        consumer._committed_offset[tp] = 1
        # read up to 2; the next chunk holds 3..5: the fetch loop calls _add_gap(tp, 3, 5)
        consumer._to_message(tp, RecordChunk("tx", 0, [_record(o) for o in range(3, 6)]))
        await consumer._add_gap(tp, 3, 5)
        assert not consumer._gap[tp]
        # read up to 5; the next chunk starts at 9 (6..8 compacted away): 6..8 are a gap
        consumer._to_message(tp, RecordChunk("tx", 0, [_record(o) for o in range(9, 11)]))
        await consumer._add_gap(tp, 6, 10)
        assert sorted((i.begin, i.end) for i in consumer._gap[tp]) == [(6, 9)]

    asyncio.run(main())


def test_fetched_records_become_chunks_and_records_already_read_are_dropped() -> None:
    class Thread:  # the fetch's answer, as Faust's consumer thread returns it
        def __init__(self, records: dict) -> None:
            self.records = records

        async def getmany(self, active_partitions, timeout):
            return dict(self.records)

    async def main() -> None:
        app, _ = await _chunked_app("chunks-fetch", per_chunk=3)
        other = app.topic("labels", partitions=1)  # a topic delivered record by record
        consumer, tp, tp_other = app.consumer, TP("tx", 0), TP("labels", 0)
        consumer._read_offset[tp] = 2  # read up to 2: a fetch that raced a seek brings 0..1 again
        consumer._thread = Thread(
            {tp: [_record(o) for o in range(0, 10)], tp_other: [_record(0, "labels"), _record(1, "labels")]}
        )
        fetched = await consumer._getmany({tp, tp_other}, 1.0)
        assert [[r.offset for r in chunk.records] for chunk in fetched[tp]] == [[2, 3, 4], [5, 6, 7], [8, 9]]
        assert all(isinstance(chunk, RecordChunk) and chunk.partition == 0 for chunk in fetched[tp])
        assert [r.offset for r in fetched[tp_other]] == [0, 1]
        assert other.get_topic_name() == "labels"

    asyncio.run(main())
