"""Replays as fast as possible pack their own producer batches: same records, same partitions.

`producer.replay.PartitionBatches` replaces `AIOKafkaProducer.send` per message when the
replay is unpaced. These tests check what the consumer of the topic sees: every event
once, each on the partition the producer's default partitioner gives its key, and a
replay stopped half-way delivers exactly what it reports as sent.
"""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaConsumer
from aiokafka.partitioner import DefaultPartitioner

from core.dataset import SAMPLE_PATH, iter_csv_rows
from producer.replay import replay, select_rows


async def _read_with_partitions(bootstrap_servers: str, topic: str, expected: int) -> list[tuple[int, bytes]]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap_servers,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    seen: list[tuple[int, bytes]] = []
    try:
        deadline = asyncio.get_running_loop().time() + 60
        while len(seen) < expected and asyncio.get_running_loop().time() < deadline:
            for tp, records in (await consumer.getmany(timeout_ms=200, max_records=50_000)).items():
                seen.extend((tp.partition, record.key) for record in records)
        for tp, records in (await consumer.getmany(timeout_ms=300)).items():  # nothing more may come
            seen.extend((tp.partition, record.key) for record in records)
    finally:
        await consumer.stop()
    return seen


def test_unpaced_replay_sends_every_event_once_on_its_keys_partition(infra, topics) -> None:
    limit = 12_000  # several full batches per partition, and partial ones
    report = asyncio.run(
        replay(
            SAMPLE_PATH,
            bootstrap_servers=infra.bootstrap_servers,
            topic=topics.transactions,
            limit=limit,
            progress=False,
        )
    )
    assert report.sent == limit
    seen = asyncio.run(_read_with_partitions(infra.bootstrap_servers, topics.transactions, limit))
    expected = [row.event_id.encode() for row in select_rows(iter_csv_rows(SAMPLE_PATH), [], limit=limit)]
    assert sorted(key for _, key in seen) == sorted(expected)
    partitions = list(range(topics.partitions))
    partition_of = DefaultPartitioner()
    assert all(partition == partition_of(key, partitions, partitions) for partition, key in seen)


class StopAfter(asyncio.Event):
    """A stop flag that turns itself on after `rows` checks (the replay checks once per row)."""

    def __init__(self, rows: int) -> None:
        super().__init__()
        self.left = rows

    def is_set(self) -> bool:
        self.left -= 1
        return self.left < 0 or super().is_set()


def test_a_stopped_unpaced_replay_delivers_what_it_reports(infra, topics) -> None:
    rows = 10_001  # mid-batch on every partition
    report = asyncio.run(
        replay(
            SAMPLE_PATH,
            bootstrap_servers=infra.bootstrap_servers,
            topic=topics.transactions,
            progress=False,
            stop=StopAfter(rows),
        )
    )
    assert report.interrupted and report.sent == rows
    seen = asyncio.run(_read_with_partitions(infra.bootstrap_servers, topics.transactions, rows))
    expected = [row.event_id.encode() for row in select_rows(iter_csv_rows(SAMPLE_PATH), [], limit=rows)]
    assert sorted(key for _, key in seen) == sorted(expected)
