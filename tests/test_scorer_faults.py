"""Faults that test the worker's promises, against worker processes, the real broker and PostgreSQL.

- a kill between the database commit and the acknowledgement (injected, not a random sleep):
  nothing lost, nothing duplicated, every alert published (from the outbox) exactly as stored;
- a rebalance while batches are in flight: a second worker joins mid-replay, later the first
  leaves; the exact ids in PostgreSQL and in `alerts` against what was produced;
- a write path that hangs (a lock held on `transactions`): the worker says it is stalled, on
  /health, in its gauge and in its `scorer_workers` row, which keeps being written.

The replays carry a backtest run id whose threshold makes about a third of the rows alert, so
every batch has alerts to lose.
"""

from __future__ import annotations

import asyncio
import threading
import time

import asyncpg
import numpy as np
import pytest

from core.dataset import SAMPLE_PATH, load_csv
from core.ensemble import Ensemble
from core.runtime.processes import wait_until
from scorer.faults import FAULT_EXIT_CODE
from tests.streaming_fixtures import alerts_check, fetch, read_topic, register_run
from tests.test_scorer_worker import expected_ids, replay_in_background, replay_now, stored

pytestmark = pytest.mark.slow


def alerting_run(database_url: str, bundle, rows: int) -> str:
    """A run whose threshold makes the top third of these rows' scores alert."""
    scores = Ensemble.load(bundle).score(load_csv(SAMPLE_PATH).raw[:rows]).score
    return asyncio.run(register_run(database_url, bundle, float(np.quantile(scores, 0.66))))


def assert_exactly_once(database_url: str, limit: int) -> None:
    ids = [r["id"] for r in asyncio.run(fetch(database_url, "SELECT id FROM scores"))]
    assert len(ids) == len(set(ids)) and set(ids) == expected_ids(limit)
    assert stored(database_url) == (limit, limit, limit)


def test_a_kill_between_the_write_and_the_ack_loses_no_row_and_no_alert(
    settings, workers, model_bundle
) -> None:
    limit, batch = 3000, 500
    run_id = alerting_run(settings.database_url, model_bundle, limit)
    replay_now(settings, limit=limit, run_id=run_id)  # a backlog: the batches are full
    doomed = workers(scorer_batch_size=batch, scorer_fault="exit-after-store:3")
    assert doomed.wait_exit(timeout=120) == FAULT_EXIT_CODE
    at_crash = stored(settings.database_url)[1]
    assert 0 < at_crash < limit, at_crash
    unsent = {
        r["id"] for r in asyncio.run(fetch(settings.database_url, "SELECT id FROM alert_outbox"))
    }  # the third batch's alerts: stored with their rows, never published
    assert unsent, "the batch the worker died after must have alerts waiting"
    published = asyncio.run(
        read_topic(settings.kafka_bootstrap_servers, settings.topic_alerts, 10**6, timeout=3)
    )
    assert unsent.isdisjoint(key.decode() for key, _, _ in published)

    survivor = workers(scorer_batch_size=batch)
    wait_until(lambda: stored(settings.database_url)[1] >= limit, timeout=120, what="every row stored")
    wait_until(
        lambda: survivor.metric("fraudstream_alerts_recovered_total") >= len(unsent),
        timeout=30,
        what="the unsent alerts published from the outbox",
    )
    time.sleep(1.0)  # anything redelivered late would show up now
    assert_exactly_once(settings.database_url, limit)
    asyncio.run(alerts_check(settings.kafka_bootstrap_servers, settings.topic_alerts, settings.database_url))


def test_a_worker_joining_and_one_leaving_mid_replay_lose_and_duplicate_nothing(
    settings, workers, model_bundle
) -> None:
    limit = 9000  # at 150/s: a minute of replay, time for a worker to start and another to leave
    run_id = alerting_run(settings.database_url, model_bundle, limit)
    first = workers()
    first.wait_partitions(4)
    thread, _ = replay_in_background(settings, rate=150, limit=limit, run_id=run_id)
    wait_until(lambda: stored(settings.database_url)[1] >= 500, timeout=60, what="first rows stored")
    second = workers()  # joins: a rebalance while batches are in flight
    second.wait_partitions(2, timeout=90)
    wait_until(
        lambda: second.metric("fraudstream_stored_total") > 0, timeout=60, what="the second worker storing"
    )
    middle = stored(settings.database_url)[1]
    assert middle < limit, "the rebalance must happen while the replay runs"
    first.stop()  # leaves: another rebalance, its partitions move to the second worker
    second.wait_partitions(4, timeout=90)
    thread.join(timeout=120)
    wait_until(lambda: stored(settings.database_url)[1] >= limit, timeout=120, what="every row stored")
    time.sleep(1.0)
    assert_exactly_once(settings.database_url, limit)
    asyncio.run(alerts_check(settings.kafka_bootstrap_servers, settings.topic_alerts, settings.database_url))
    rows = asyncio.run(
        fetch(settings.database_url, "SELECT pid, state FROM scorer_workers ORDER BY started_at")
    )
    assert [(r["pid"], r["state"]) for r in rows] == [
        (first.process.pid, "stopped"),
        (second.process.pid, "ok"),
    ]


def hold_lock(database_url: str, taken: threading.Event, release: threading.Event) -> threading.Thread:
    """Hold an exclusive lock on `transactions` from another thread until `release` is set."""

    async def run() -> None:
        conn = await asyncpg.connect(database_url)
        try:
            async with conn.transaction():
                await conn.execute("LOCK TABLE transactions IN ACCESS EXCLUSIVE MODE")
                taken.set()
                await asyncio.to_thread(release.wait, 120)
        finally:
            await conn.close()

    thread = threading.Thread(target=asyncio.run, args=(run(),), daemon=True)
    thread.start()
    return thread


def _worker_row(database_url: str) -> asyncpg.Record | None:
    rows = asyncio.run(
        fetch(
            database_url,
            "SELECT state, reason, pending_events, lag, extract(epoch FROM now() - heartbeat_at) AS age "
            "FROM scorer_workers",
        )
    )
    return rows[0] if rows else None


def test_a_hanging_write_path_is_reported_as_stalled_and_the_heartbeat_keeps_coming(
    settings, workers
) -> None:
    worker = workers(scorer_stall_seconds=3.0)
    worker.wait_partitions(4)
    replay_now(settings, limit=200)
    wait_until(lambda: stored(settings.database_url)[1] >= 200, timeout=60, what="first rows stored")
    wait_until(lambda: worker.health()[0] == 200, timeout=20, what="a healthy worker")
    wait_until(
        lambda: (_worker_row(settings.database_url) or {}).get("state") == "ok",
        timeout=20,
        what="an ok heartbeat",
    )

    taken, release = threading.Event(), threading.Event()
    holder = hold_lock(settings.database_url, taken, release)
    assert taken.wait(timeout=30)
    try:
        replay_now(settings, limit=1000)  # 800 new events (and 200 redelivered) that cannot be written
        wait_until(lambda: worker.health()[0] == 503, timeout=30, what="the worker reporting itself stalled")
        status, body = worker.health()
        assert body["status"] == "stalled" and "no batch done" in body["reason"]
        assert body["pending_events"] > 0 and body["lag"] > 0
        assert worker.metric("fraudstream_scorer_stalled") == 1
        assert worker.metric("fraudstream_scorer_pending_events") > 0
        assert worker.metric("fraudstream_consumer_lag") > 0

        def row_stalled() -> bool:
            row = _worker_row(settings.database_url)
            return row["state"] == "stalled" and row["age"] < 5 and row["pending_events"] > 0

        wait_until(row_stalled, timeout=20, what="the heartbeat row saying stalled, fresh")
        assert "no batch done" in _worker_row(settings.database_url)["reason"]
        time.sleep(4)  # still stuck, and the heartbeat still comes
        assert _worker_row(settings.database_url)["age"] < 5
        # `scores` only: counting `transactions` would wait for the lock this test holds
        assert asyncio.run(fetch(settings.database_url, "SELECT count(*) AS n FROM scores"))[0]["n"] == 200
    finally:
        release.set()
        holder.join(timeout=30)
    wait_until(lambda: stored(settings.database_url)[1] >= 1000, timeout=60, what="the rest stored")
    wait_until(lambda: worker.health()[0] == 200, timeout=20, what="healthy again")
    assert worker.metric("fraudstream_scorer_stalled") == 0
    assert worker.metric("fraudstream_scorer_last_store_timestamp_seconds") > time.time() - 60
    wait_until(
        lambda: _worker_row(settings.database_url)["state"] == "ok", timeout=20, what="the row ok again"
    )
    worker.stop()
    assert _worker_row(settings.database_url)["state"] == "stopped"
