"""The scorer as it runs: worker processes against the real broker and PostgreSQL.

Each test starts `python -m scorer.cli` processes on its own topics and database, replays
a few thousand rows of the sample, and checks PostgreSQL: every transaction stored exactly
once, after a SIGKILL (with every alert on the alerts topic), a PostgreSQL outage (reported on
/health while it lasts), malformed events, or with two workers.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import numpy as np
import orjson
from aiokafka import AIOKafkaProducer

from core.dataset import SAMPLE_PATH, load_csv
from core.ensemble import Ensemble
from core.events import build_event, encode_event
from core.prometheus import read_metric
from core.runtime.processes import wait_until
from core.settings import Settings
from producer.replay import ReplayReport, read_rows, replay, select_rows
from scorer.pipeline import KIND_HEADER, REASON_HEADER
from tests.streaming_fixtures import alerts_check, fetch, read_topic, register_run

ROOT = Path(__file__).resolve().parents[1]


def expected_ids(limit: int) -> set[str]:
    return {row.event_id for row in select_rows(read_rows(SAMPLE_PATH), [], limit=limit)}


def stored(database_url: str) -> tuple[int, int, int]:
    """(transactions, scores, distinct ids)."""
    row = asyncio.run(
        fetch(
            database_url,
            "SELECT (SELECT count(*) FROM transactions) AS t, (SELECT count(*) FROM scores) AS s, "
            "(SELECT count(DISTINCT id) FROM scores) AS d",
        )
    )[0]
    return row["t"], row["s"], row["d"]


def wait_stored(database_url: str, count: int, timeout: float = 90) -> None:
    wait_until(lambda: stored(database_url)[1] >= count, timeout=timeout, what=f"{count} rows stored")


def replay_now(settings: Settings, **options) -> ReplayReport:
    """Replay the sample onto this test's transactions topic and wait until it is sent."""
    return asyncio.run(
        replay(
            SAMPLE_PATH,
            bootstrap_servers=settings.kafka_bootstrap_servers,
            topic=settings.topic_transactions,
            progress=False,
            **options,
        )
    )


def replay_in_background(settings: Settings, **options) -> tuple[threading.Thread, dict]:
    result: dict = {}

    def run() -> None:
        result["report"] = replay_now(settings, **options)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


def assert_exactly_once(database_url: str, limit: int) -> None:
    ids = {r["id"] for r in asyncio.run(fetch(database_url, "SELECT id FROM scores"))}
    assert ids == expected_ids(limit)
    assert stored(database_url) == (limit, limit, limit)


def test_sigkill_mid_replay_loses_and_duplicates_nothing(settings, workers, model_bundle) -> None:
    limit = 6000
    scores = Ensemble.load(model_bundle).score(load_csv(SAMPLE_PATH).raw[:limit]).score
    run_id = asyncio.run(  # a third of the rows alert: every batch has alerts to lose
        register_run(settings.database_url, model_bundle, float(np.quantile(scores, 0.66)))
    )
    first = workers()
    first.wait_partitions(4)
    thread, _ = replay_in_background(settings, rate=1500, limit=limit, run_id=run_id)
    wait_until(lambda: stored(settings.database_url)[1] >= 1500, timeout=60, what="first rows stored")
    first.kill()
    assert stored(settings.database_url)[1] < limit, "the kill must land in the middle of the replay"
    second = workers()
    thread.join(timeout=60)
    wait_stored(settings.database_url, limit)
    time.sleep(1.0)  # anything redelivered late would show up now
    assert_exactly_once(settings.database_url, limit)
    assert second.metric("fraudstream_consumed_total") > 0
    asyncio.run(alerts_check(settings.kafka_bootstrap_servers, settings.topic_alerts, settings.database_url))


def test_postgres_outage_under_load_loses_nothing_and_health_says_so(settings, workers, infra) -> None:
    limit = 5000
    worker = workers()
    worker.wait_partitions(4)
    thread, _ = replay_in_background(settings, rate=1000, limit=limit)
    wait_until(lambda: stored(settings.database_url)[1] >= 1000, timeout=60, what="first rows stored")
    assert worker.health()[0] == 200
    infra.postgres.stop()
    try:
        wait_until(
            lambda: worker.metric("fraudstream_store_retries_total") > 0, timeout=30, what="store retries"
        )
        wait_until(lambda: worker.health()[0] == 503, timeout=30, what="the worker saying it is stalled")
        status, body = worker.health()
        assert body["status"] == "stalled" and "writes keep failing" in body["reason"], body
        assert worker.metric("fraudstream_scorer_stalled") == 1
    finally:
        infra.postgres.start()
    thread.join(timeout=60)
    wait_stored(settings.database_url, limit)
    assert_exactly_once(settings.database_url, limit)
    assert worker.process.poll() is None, "the worker kept running through the outage"
    wait_until(lambda: worker.health()[0] == 200, timeout=30, what="the worker healthy again")
    assert worker.metric("fraudstream_scorer_stalled") == 0


def test_malformed_events_go_to_the_dead_letter_topic(settings, workers, infra) -> None:
    worker = workers()
    worker.wait_partitions(4)
    good = build_event([1.0] * 30, event_id="good-after-bad", label=0)
    missing = dict(good)
    del missing["V9"]
    bad = [
        b"{not json",
        b"NaN",
        encode_event(good).replace(b'"V2":1.0', b'"V2":1e999'),
        orjson.dumps(missing),
        orjson.dumps({**good, "amount": "a lot"}),
        orjson.dumps({**good, "schema_version": 2}),
        b"[]",
    ]

    async def publish() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=infra.bootstrap_servers)
        await producer.start()
        try:
            for value in [*bad, encode_event(good)]:
                await producer.send_and_wait(settings.topic_transactions, value, key=b"k")
        finally:
            await producer.stop()

    asyncio.run(publish())
    asyncio.run(
        replay(
            SAMPLE_PATH,
            bootstrap_servers=infra.bootstrap_servers,
            topic=settings.topic_transactions,
            limit=3000,
            progress=False,
        )
    )
    wait_stored(settings.database_url, 3001)
    letters = asyncio.run(read_topic(infra.bootstrap_servers, settings.topic_dead_letters, len(bad)))
    assert sorted(value for _, value, _ in letters) == sorted(bad)
    kinds = set()
    for _, _, headers in letters:
        headers = dict(headers)
        assert headers[REASON_HEADER]
        kinds.add(headers[KIND_HEADER].decode())
    assert {"invalid_json", "missing_field", "not_a_number", "schema_version", "not_an_object"} <= kinds
    assert worker.metric("fraudstream_dead_letters_total") == len(bad)

    alerts_in_db = asyncio.run(fetch(settings.database_url, "SELECT id FROM scores WHERE alert"))
    assert alerts_in_db, "the replayed rows hold frauds: some must alert"
    alerts = asyncio.run(read_topic(infra.bootstrap_servers, settings.topic_alerts, len(alerts_in_db)))
    assert {key.decode() for key, _, _ in alerts} == {r["id"] for r in alerts_in_db}
    assert all(len(orjson.loads(value)["top_features"]) == 3 for _, value, _ in alerts)

    asyncio.run(  # replaying the same rows again makes no second row
        replay(
            SAMPLE_PATH,
            bootstrap_servers=infra.bootstrap_servers,
            topic=settings.topic_transactions,
            limit=3000,
            progress=False,
        )
    )
    wait_until(
        lambda: worker.metric("fraudstream_consumed_total") >= 3000 * 2 + len(bad) + 1,
        timeout=60,
        what="the second replay consumed",
    )
    assert stored(settings.database_url) == (3001, 3001, 3001)
    assert worker.metric("fraudstream_stored_total") == 3001


def test_two_workers_share_the_partitions(settings, workers) -> None:
    limit = 4000
    pair = [workers(), workers()]
    for worker in pair:
        worker.wait_partitions(2)
    replay_now(settings, limit=limit)
    wait_stored(settings.database_url, limit)
    time.sleep(1.0)
    assert_exactly_once(settings.database_url, limit)
    consumed = [worker.metric("fraudstream_consumed_total") for worker in pair]
    assert all(count > 0 for count in consumed) and sum(consumed) == limit
    # Every stored row passed every stage once, on the worker that stored it (`scorer.stages`).
    pages = [f"http://127.0.0.1:{worker.port}/metrics" for worker in pair]
    for stage in ("fetched", "taken", "scored", "write_started", "stored", "acked"):
        counts = [read_metric(page, "fraudstream_stage_seconds_count", stage=stage) for page in pages]
        assert counts == consumed, stage
    # Both run the maintenance task (partitions by data day) at start; each pass that acted is
    # on its /health and /metrics, and the database keeps the last one.
    passes = [worker.health()[1].get("maintenance_at") for worker in pair]
    assert any(at is not None for at in passes), passes
    assert all(worker.health()[1].get("maintenance_problem") is None for worker in pair)
    assert max(worker.metric("fraudstream_maintenance_last_run_timestamp_seconds") for worker in pair) > 0
    (state,) = asyncio.run(fetch(settings.database_url, "SELECT last_run_at FROM maintenance_state"))
    assert state["last_run_at"] is not None
    # The workers fold the stored scores into the wide rollups by themselves (nobody reads
    # them here): every row once, between the two of them (migration 0014).
    folded = "SELECT coalesce(sum(n), 0) AS n FROM rollup_histograms WHERE run_id = '' AND quantity = 'score'"
    wait_until(
        lambda: sum(worker.metric("fraudstream_rollup_folded_rows_total") for worker in pair) >= limit,
        timeout=60,
        what="every stored row folded by the workers",
    )
    assert sum(worker.metric("fraudstream_rollup_folded_rows_total") for worker in pair) == limit
    assert asyncio.run(fetch(settings.database_url, folded))[0]["n"] == limit
    assert all(worker.metric("fraudstream_rollup_fold_failures_total") == 0 for worker in pair)


def test_a_backlog_is_scored_in_full_batches_never_above_the_batch_size(settings, workers) -> None:
    """Events already waiting are gathered into batches of up to scorer_batch_size, no more."""
    limit, batch_size = 12_000, 4000
    replay_now(settings, limit=limit)  # the whole backlog is on the topic before the worker starts
    worker = workers(scorer_batch_size=batch_size)
    wait_stored(settings.database_url, limit)
    time.sleep(1.0)
    assert_exactly_once(settings.database_url, limit)
    page = f"http://127.0.0.1:{worker.port}/metrics"
    batches = read_metric(page, "fraudstream_batch_size_count")
    assert batches is not None and batches >= limit / batch_size
    assert read_metric(page, "fraudstream_batch_size_bucket", le=f"{batch_size:.1f}") == batches
    # One `take` yields what arrived within 20 ms (~600-1,500 events here); over 2,000 means gathered.
    assert read_metric(page, "fraudstream_batch_size_bucket", le="2000.0") < batches, "no batch was gathered"
