"""The scorer: a Faust app that scores every transaction and stores it in PostgreSQL.

    faust -A scorer.app worker -l info        # or: fraudstream scorer

Each worker reads its share of the `transactions` partitions in batches of raw bytes,
and per batch: decodes and validates the events (bad ones go to the dead-letter topic),
scores them with one call of the ensemble (loaded once per worker), writes transactions
and scores in one idempotent statement, publishes alerts, and only then acknowledges the
batch's offsets. Batch n+1 is decoded and scored while batch n is being written, so the
worker's CPU and PostgreSQL's overlap; one write at a time keeps the acknowledgements in
order. How that is safe against the known Faust traps:

- offsets: `noack_take` hands us the events unacknowledged and we ack them after the batch
  is durable, so neither a crash, a SIGKILL, a rebalance nor a cancelled task (a write in
  flight is cancelled unacknowledged) can commit an offset past an unstored event (plain
  `take` acks the buffer when the generator is closed, even if the batch was never stored);
- agent concurrency is 1, so acknowledgements are in order per partition;
- `within` bounds how long a partial batch waits, so a quiet topic never stalls; under a
  backlog the agent gathers several takes into one batch (`keep_gathering`);
- the PostgreSQL write is idempotent (Faust's exactly-once covers Kafka only);
- group join, session and rebalance timeouts are short, so a restarted worker does not
  sit out a long rebalance.

Garbage collection: once the model and Faust are loaded, the worker's heap holds millions
of long-lived objects (torch, xgboost, Faust), and every full collection walked them all:
measured, 30-40 pauses of 0.3-0.85 s per worker over a 285k-event replay, the whole p99.
`freeze_startup_heap` moves them out of the collector's sight and makes young collections
rarer, so the short-lived objects of a batch mostly die before they are ever promoted.
"""

from __future__ import annotations

import asyncio
import gc
import logging

import faust

from core.kafka import ensure_topics
from core.runtime.stack import resolve_endpoints, topic_partitions
from core.settings import Settings, get_settings
from scorer.batches import BatchScorer, PreparedBatch
from scorer.metrics import ScorerMetrics
from scorer.pipeline import keep_gathering
from scorer.transport import ScorerApp

log = logging.getLogger(__name__)

#: Young-generation threshold: a batch allocates tens of thousands of short-lived objects.
GC_GEN0_THRESHOLD = 50_000

#: Prometheus text format 0.0.4 (aiohttp wants the charset apart from the content type).
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4"


def group_id(settings: Settings) -> str:
    """The consumer group (= Faust app id): one group per transactions topic."""
    base = "fraudstream-scorer"
    return base if settings.topic_transactions == "transactions" else f"{base}.{settings.topic_transactions}"


def broker_urls(bootstrap_servers: str) -> list[str]:
    return [f"kafka://{server.strip()}" for server in bootstrap_servers.split(",") if server.strip()]


settings = get_settings()
endpoints = resolve_endpoints(settings)
metrics = ScorerMetrics()
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

transactions_topic = app.topic(
    settings.topic_transactions,
    key_type=bytes,
    value_type=bytes,
    key_serializer="raw",
    value_serializer="raw",
    partitions=settings.topic_partitions,
)
alerts_topic = app.topic(settings.topic_alerts, key_type=bytes, value_type=bytes, value_serializer="raw")
dead_letters_topic = app.topic(
    settings.topic_dead_letters, key_type=bytes, value_type=bytes, value_serializer="raw", partitions=1
)


def freeze_startup_heap() -> None:
    """Exclude everything allocated so far from garbage collection; collect young objects rarely."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)


async def open_scorer() -> BatchScorer:
    await ensure_topics(endpoints.bootstrap_servers, topic_partitions(settings))
    return await BatchScorer.open(
        model_path=str(settings.model_path),
        database_url=endpoints.database_url,
        bootstrap_servers=endpoints.bootstrap_servers,
        alerts_topic=alerts_topic.get_topic_name(),
        dead_letters_topic=dead_letters_topic.get_topic_name(),
        metrics=metrics,
    )


@app.agent(transactions_topic, concurrency=1)
async def score_transactions(stream: faust.StreamT) -> None:
    """Score each batch of transactions, store it, then acknowledge it; never the other way round."""
    scorer = await open_scorer()
    freeze_startup_heap()

    async def commit_then_ack(prepared: PreparedBatch, events: list[faust.EventT]) -> None:
        await scorer.commit(prepared)
        for event in events:
            await stream.ack(event)

    size = settings.scorer_batch_size
    writing: asyncio.Task | None = None  # the previous batch's commit, at most one at a time
    gathered: list[faust.EventT] = []
    try:
        async for events in stream.noack_take(size, within=settings.scorer_batch_timeout):
            gathered.extend(events)
            # While the rest of a batch is already waiting in the queue, take it too.
            while gathered and not keep_gathering(len(gathered), stream.channel.queue.qsize(), size):
                batch, gathered = gathered[:size], gathered[size:]
                prepared = await scorer.prepare([event.value or b"" for event in batch])
                if writing is not None:
                    await writing  # in order: batch n is acknowledged before batch n+1 is written
                writing = asyncio.create_task(commit_then_ack(prepared, batch))
        if writing is not None:
            await writing
    finally:
        if writing is not None and not writing.done():
            writing.cancel()  # not acknowledged: the batch is delivered again (the write is idempotent)
            await asyncio.gather(writing, return_exceptions=True)
        await scorer.close()


@app.page("/metrics")
async def prometheus_metrics(web: faust.web.Web, request: faust.web.Request) -> faust.web.Response:
    """The scorer's counters in Prometheus' text format."""
    return web.bytes(metrics.exposition(), content_type=METRICS_CONTENT_TYPE)


@app.on_partitions_assigned.connect
async def count_partitions(sender: faust.App, assigned: set, **kwargs: object) -> None:
    mine = [tp for tp in assigned if tp.topic == settings.topic_transactions]
    metrics.assigned_partitions.set(len(mine))
    log.info("reading %d partitions of %s", len(mine), settings.topic_transactions)


if __name__ == "__main__":
    app.main()
