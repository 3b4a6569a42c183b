"""The scorer: a Faust app that scores every transaction and stores it in PostgreSQL,
and stores every verdict of the `labels` topic (a second agent, `scorer.labels`).

    faust -A scorer.app worker -l info        # or: fraudstream scorer

Each worker reads its share of the `transactions` partitions in batches of raw bytes and,
per batch, in order: decodes and validates the events, scores them with one call of the
ensemble, writes rows, scores and alerts in one idempotent statement, publishes the
alerts and the dead letters, and only then acknowledges the batch's offsets
(`scorer.worker`; the error policy is `scorer.failures`, the batching and ordering
`scorer.batches`). No event can stop it: an event that PostgreSQL or the model refuses is
isolated and dead-lettered with its kind, the rest of its batch is stored; only the
sink being away (transient) holds the offsets, and then the worker says it is stalled
(`/health`, `fraudstream_scorer_stalled`, its `scorer_workers` row). How that is safe
against the known Faust traps:

- offsets: `noack_take` hands us the events (one per chunk of records, `scorer.transport`)
  unacknowledged and we ack them after the batch is durable, so neither a crash, a
  SIGKILL, a rebalance nor a cancelled task (a write in flight is cancelled
  unacknowledged) can commit an offset past an unstored event (plain `take` acks the
  buffer when the generator is closed, even if the batch was never stored);
- agent concurrency is 1, and one write at a time, so acknowledgements are in order;
- a batch never waits to fill up (what has arrived is the batch), so a quiet topic never stalls;
- the PostgreSQL write is idempotent and alerts wait in an outbox until the broker has
  them (Faust's exactly-once covers Kafka only);
- an error the worker does not understand ends the process (non-zero) instead of leaving
  an agent that silently stopped: its batch was not acknowledged and comes again;
- group join, session and rebalance timeouts are short, so a restarted worker does not
  sit out a long rebalance.

Garbage collection: once the model and Faust are loaded, the worker's heap holds millions
of long-lived objects (torch, xgboost, Faust), and every full collection walked them all:
measured, 30-40 pauses of 0.3-0.85 s per worker over a 285k-event replay, the whole p99.
`freeze_startup_heap` moves them out of the collector's sight and makes young collections
rarer, so the short-lived objects of a batch mostly die before they are ever promoted.
"""

from __future__ import annotations

import gc
import logging
import os
from functools import partial

import faust
import orjson

from core.db.urls import asyncpg_dsn
from core.kafka import ensure_topics, scorer_group_id
from core.runtime.stack import resolve_database_url, resolve_endpoints, topic_partitions
from core.settings import Settings, get_settings
from scorer.batches import ChunkBatch, InOrderWrites, event_batches, full_batches
from scorer.faults import Fault
from scorer.health import OK, WorkerHealth
from scorer.heartbeat import WorkerMonitor
from scorer.labels import LabelWorker, LabelWorkerConfig
from scorer.metrics import ScorerMetrics
from scorer.transport import RecordChunkSchema, ScorerApp
from scorer.worker import ScorerWorker, WorkerConfig

log = logging.getLogger(__name__)

#: Young-generation threshold: a batch allocates tens of thousands of short-lived objects.
GC_GEN0_THRESHOLD = 50_000

#: Prometheus text format 0.0.4 (aiohttp wants the charset apart from the content type).
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4"

#: Exit status of a worker that met an error it cannot handle (a supervisor restarts it).
EXIT_ON_UNEXPECTED_ERROR = 70


def group_id(settings: Settings) -> str:
    """The consumer group (= Faust app id): one group per transactions topic (`core.kafka`)."""
    return scorer_group_id(settings.topic_transactions)


def broker_urls(bootstrap_servers: str) -> list[str]:
    return [f"kafka://{server.strip()}" for server in bootstrap_servers.split(",") if server.strip()]


def database_dsn() -> str:
    """The database, resolved anew each time a connection is made (an embedded one may have moved)."""
    return asyncpg_dsn(resolve_database_url(settings))


settings = get_settings()
endpoints = resolve_endpoints(settings)
metrics = ScorerMetrics()
health = WorkerHealth(stall_seconds=settings.scorer_stall_seconds)
datadir = settings.state_dir / "scorer"
datadir.mkdir(parents=True, exist_ok=True)  # Faust creates its folder inside, not the parents

app = ScorerApp(
    group_id(settings),
    broker=broker_urls(endpoints.bootstrap_servers),
    autodiscover=False,
    key_serializer="raw",
    value_serializer="raw",
    topic_partitions=settings.topic_partitions,
    datadir=str(datadir),
    consumer_auto_offset_reset="earliest",
    # Throughput: big polls and buffers (DESIGN.md: ~9,600/s with defaults, ~15,400/s so tuned).
    broker_max_poll_records=20_000,
    consumer_max_fetch_size=16 << 20,
    stream_buffer_maxsize=40_000,
    # Commit acknowledged offsets often: less to redeliver after a crash.
    broker_commit_interval=0.5,
    # Fast joins and fast recovery when a worker dies: its partitions move after ~6 s.
    broker_session_timeout=6.0,
    broker_heartbeat_interval=1.0,
    broker_rebalance_timeout=6.0,
    broker_request_timeout=30.0,
    web_bind=settings.host,
    web_host=settings.host,
    web_port=settings.scorer_web_port,
)

#: Records per chunk: one Faust event (and one acknowledgement) per chunk (`scorer.transport`).
RECORDS_PER_CHUNK = max(1, settings.scorer_batch_size // 8)

transactions_topic = app.topic(
    settings.topic_transactions, schema=RecordChunkSchema(), partitions=settings.topic_partitions
)
app.deliver_in_chunks(transactions_topic, RECORDS_PER_CHUNK)
alerts_topic = app.topic(settings.topic_alerts, key_type=bytes, value_type=bytes, value_serializer="raw")
dead_letters_topic = app.topic(
    settings.topic_dead_letters, key_type=bytes, value_type=bytes, value_serializer="raw", partitions=1
)
labels_topic = app.topic(
    settings.topic_labels,
    key_type=bytes,
    value_type=bytes,
    key_serializer="raw",
    value_serializer="raw",
    partitions=settings.topic_partitions,
)


def consumer_lag() -> dict[int, int] | None:
    """Per assigned partition of the transactions topic: end offset minus the next offset to acknowledge.

    The end offset is the one the last fetch saw; the next offset is after this worker's
    last acknowledgement, or the group's committed offset before it has acknowledged
    anything on that partition (Faust's own record of it).
    """
    consumer = app.consumer
    committed = getattr(consumer, "_committed_offset", {})
    lag: dict[int, int] = {}
    for tp in consumer.assignment():
        if tp.topic != settings.topic_transactions:
            continue
        end = consumer.highwater(tp)
        position = health.next_offsets.get(tp.partition)
        if position is None:
            position = committed.get(tp)
        if end is not None and position is not None:
            lag[tp.partition] = max(0, end - position)
    return lag


monitor = WorkerMonitor(health, metrics, dsn=database_dsn, lag=consumer_lag)


def freeze_startup_heap() -> None:
    """Exclude everything allocated so far from garbage collection; collect young objects rarely."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)


async def create_topics() -> None:
    await ensure_topics(endpoints.bootstrap_servers, topic_partitions(settings))


def worker_config() -> WorkerConfig:
    return WorkerConfig(
        model_path=str(settings.model_path),
        dsn=database_dsn,
        bootstrap_servers=endpoints.bootstrap_servers,
        alerts_topic=alerts_topic.get_topic_name(),
        dead_letters_topic=dead_letters_topic.get_topic_name(),
        metrics=metrics,
        health=health,
        monitor=monitor,
        fault=Fault.parse(settings.scorer_fault),
        prepare_broker=create_topics,
        retention_days=settings.retention_days,
        maintenance_seconds=settings.maintenance_seconds,
        rollup_fold_seconds=settings.rollup_fold_seconds,
    )


async def acknowledge(stream: faust.StreamT, batch: ChunkBatch) -> None:
    """Acknowledge every chunk of a written batch (Faust commits the offsets soon after)."""
    for event in batch.events:
        await stream.ack(event)


@app.agent(transactions_topic, concurrency=1)
async def score_transactions(stream: faust.StreamT) -> None:
    """Take a full batch, prepare it, write it, then acknowledge it: in order, never the other way round."""
    try:
        async with ScorerWorker.running(worker_config()) as worker, InOrderWrites() as writes:
            freeze_startup_heap()
            batches = full_batches(stream, settings.scorer_batch_size, on_taken=health.taken)
            async for batch in batches:
                prepared = await worker.prepare(batch.records, batch.stamps())
                write = worker.write_then(
                    prepared, batch.origin, partial(acknowledge, stream, batch), batch.next_offsets()
                )
                await writes.submit(write)
    except Exception:
        log.critical("the scorer met an error it cannot handle; exiting so that it restarts", exc_info=True)
        logging.shutdown()
        os._exit(EXIT_ON_UNEXPECTED_ERROR)


def label_worker_config() -> LabelWorkerConfig:
    return LabelWorkerConfig(
        dsn=database_dsn,
        bootstrap_servers=endpoints.bootstrap_servers,
        alerts_topic=alerts_topic.get_topic_name(),
        dead_letters_topic=dead_letters_topic.get_topic_name(),
        metrics=metrics,
        health=health,
        fault=Fault.parse(settings.scorer_fault),
    )


@app.agent(labels_topic, concurrency=1)
async def store_verdicts(stream: faust.StreamT) -> None:
    """Take a batch of verdicts, store it, then acknowledge it (`scorer.labels`)."""
    try:
        async with LabelWorker.running(label_worker_config()) as worker:
            size, within = settings.scorer_batch_size, settings.scorer_batch_timeout
            async for events in event_batches(stream, size, within, on_taken=_ignore):
                await worker.write_then_ack(events, stream.ack)
    except Exception:
        log.critical(
            "the labels agent met an error it cannot handle; exiting so that it restarts", exc_info=True
        )
        logging.shutdown()
        os._exit(EXIT_ON_UNEXPECTED_ERROR)


def _ignore(_count: int) -> None:
    """The labels agent's taken events are not the transactions' pending work (`WorkerHealth`)."""


@app.page("/metrics")
async def prometheus_metrics(web: faust.web.Web, request: faust.web.Request) -> faust.web.Response:
    """The scorer's counters in Prometheus' text format."""
    monitor.refresh()
    return web.bytes(metrics.exposition(), content_type=METRICS_CONTENT_TYPE)


@app.page("/health")
async def worker_health(web: faust.web.Web, request: faust.web.Request) -> faust.web.Response:
    """200 `{"status": "ok", ...}` while the worker makes progress; 503 with the reason otherwise."""
    state, reason = monitor.refresh()
    body = {
        "status": state,
        "reason": reason,
        "worker_id": monitor.worker_id,
        "pending_events": health.pending,
        "lag": health.total_lag,
        "assigned_partitions": sorted(health.partitions),
        "last_store_at": health.last_store_at,
        "model_version": health.model_version,
        "shadow_version": health.shadow_version,
        "shadow_problem": health.shadow_problem,
        "maintenance_at": health.maintenance_at,
        "maintenance_problem": health.maintenance_problem,
    }
    return web.bytes(orjson.dumps(body), content_type="application/json", status=200 if state == OK else 503)


@app.on_partitions_assigned.connect
async def count_partitions(sender: faust.App, assigned: set, **kwargs: object) -> None:
    mine = {tp.partition for tp in assigned if tp.topic == settings.topic_transactions}
    metrics.assigned_partitions.set(len(mine))
    health.ready(mine)
    log.info("reading %d partitions of %s", len(mine), settings.topic_transactions)


if __name__ == "__main__":
    app.main()
