"""The measuring stick for Faust's overhead: the scorer's work in a plain aiokafka loop.

    python -m bench.plain_loop --group bench-plain-loop     # settings from FRAUDSTREAM_* like the scorer

One process of a consumer group on the transactions topic. It does exactly what a Faust
scorer worker does per batch, with the scorer's own parts (`ScorerWorker`: decode and
validate, one model call, the idempotent write with the alert outbox, alerts and dead
letters published, heartbeats), and commits the batch's offsets only after its write, one
write at a time and the next batch prepared meanwhile (`scorer.batches.InOrderWrites`),
as the agent does. What it lacks is Faust: no agent, no stream, no per-message events or
acknowledgements; records come from `getmany` and go straight into the batch.

`bench.stream` runs two of these and two Faust workers on the same pre-filled topic and
prints the ratio. It is not a product path: a benchmark's stick, kept out of the services.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from collections.abc import Sequence

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError

from core.db.urls import asyncpg_dsn
from core.kafka import ensure_topics
from core.runtime.stack import resolve_database_url, resolve_endpoints, topic_partitions
from core.settings import get_settings
from scorer.batches import InOrderWrites
from scorer.faults import Fault
from scorer.health import WorkerHealth
from scorer.heartbeat import WorkerMonitor
from scorer.metrics import ScorerMetrics
from scorer.pipeline import Origin
from scorer.stages import BatchStamps
from scorer.worker import ScorerWorker, WorkerConfig

log = logging.getLogger("bench.plain_loop")

#: What the scorer's Faust consumer is given too (`scorer.app`, `scorer.transport`).
FETCH_MAX_WAIT_MS = 20
MAX_PARTITION_FETCH_BYTES = 16 << 20


class _SayAssignment(ConsumerRebalanceListener):
    """Prints each assignment (`assigned N`), which `bench.stream` waits for before it opens the gate."""

    def __init__(self, health: WorkerHealth) -> None:
        self.health = health

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        pass

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.health.ready({tp.partition for tp in assigned})
        print(f"assigned {len(assigned)}", flush=True)


def _origin(records: Sequence) -> object:
    def origin(position: int) -> Origin:
        record = records[position]
        return Origin(record.topic, record.partition, record.offset, record.key)

    return origin


async def run(group: str) -> None:
    settings = get_settings()
    endpoints = resolve_endpoints(settings)
    metrics, health = ScorerMetrics(), WorkerHealth(stall_seconds=settings.scorer_stall_seconds)
    monitor = WorkerMonitor(
        health, metrics, dsn=lambda: asyncpg_dsn(resolve_database_url(settings)), lag=lambda: None
    )
    config = WorkerConfig(
        model_path=str(settings.model_path),
        dsn=lambda: asyncpg_dsn(resolve_database_url(settings)),
        bootstrap_servers=endpoints.bootstrap_servers,
        alerts_topic=settings.topic_alerts,
        dead_letters_topic=settings.topic_dead_letters,
        metrics=metrics,
        health=health,
        monitor=monitor,
        fault=Fault(),
        prepare_broker=lambda: ensure_topics(endpoints.bootstrap_servers, topic_partitions(settings)),
    )
    consumer = AIOKafkaConsumer(
        bootstrap_servers=endpoints.bootstrap_servers,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
        max_partition_fetch_bytes=MAX_PARTITION_FETCH_BYTES,
        session_timeout_ms=6_000,
        heartbeat_interval_ms=1_000,
        rebalance_timeout_ms=6_000,
    )
    async with ScorerWorker.running(config) as worker, InOrderWrites() as writes:
        consumer.subscribe([settings.topic_transactions], listener=_SayAssignment(health))
        await consumer.start()
        written = 0
        try:
            while True:
                fetched = await consumer.getmany(timeout_ms=1000, max_records=settings.scorer_batch_size)
                records = [record for part in fetched.values() for record in part]
                if not records:
                    continue
                health.taken(len(records))
                offsets = {tp: part[-1].offset + 1 for tp, part in fetched.items() if part}
                prepared = await worker.prepare(records, BatchStamps.fetched_together(len(records)))

                async def commit(offsets: dict = offsets) -> None:
                    try:
                        await consumer.commit(offsets)
                    except (CommitFailedError, IllegalStateError) as error:  # a rebalance took them
                        log.warning("offsets not committed (%s): delivered again elsewhere", error)

                next_offsets = {tp.partition: offset for tp, offset in offsets.items()}
                await writes.submit(worker.write_then(prepared, _origin(records), commit, next_offsets))
                written += 1
                print(
                    f"batches {written}", flush=True
                )  # `bench.stream` reads the last one (the one before is written)
        finally:
            await consumer.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.plain_loop", description=__doc__.splitlines()[0])
    parser.add_argument("--group", default="bench-plain-loop", help="consumer group id")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    async def main_task() -> None:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, task.cancel)
        try:
            await run(args.group)
        except asyncio.CancelledError:
            pass

    asyncio.run(main_task())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
