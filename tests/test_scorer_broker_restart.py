"""The embedded broker restarted empty on the same port under a running worker.

Tansu keeps nothing on disk: after a restart the topics and the group's committed offsets
are gone, and offsets start again at 0. The worker must never hang silently on that: it
either carries on by itself or exits with a clear message and a non-zero status, so that
the supervisor starts it again; either way, what is published after the restart is
scored, and what was stored before is neither lost nor stored twice.

The test runs its own broker (not the session's), so restarting it disturbs no other test.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import pytest

from core.dataset import SAMPLE_PATH
from core.kafka import ensure_topics
from core.runtime.broker import EmbeddedBroker
from core.runtime.processes import wait_until
from producer.replay import read_rows, replay, select_rows
from tests.streaming_fixtures import fetch

pytestmark = pytest.mark.slow


def _stored(database_url: str) -> set[str]:
    return {r["id"] for r in asyncio.run(fetch(database_url, "SELECT id FROM scores"))}


def test_a_broker_restarted_empty_never_leaves_the_worker_hanging(settings, workers, tmp_path: Path) -> None:
    broker = EmbeddedBroker(tmp_path / "broker.log")
    bootstrap = broker.start()
    suffix = uuid.uuid4().hex[:8]
    topics = {f"transactions-{suffix}": 4, f"alerts-{suffix}": 4, f"transactions-dlq-{suffix}": 1}
    mine = {
        "kafka_bootstrap_servers": bootstrap,
        "topic_transactions": f"transactions-{suffix}",
        "topic_alerts": f"alerts-{suffix}",
        "topic_dead_letters": f"transactions-dlq-{suffix}",
    }
    transactions = mine["topic_transactions"]
    try:
        asyncio.run(ensure_topics(bootstrap, topics))
        worker = workers(**mine)
        worker.wait_partitions(4)
        before = list(select_rows(read_rows(SAMPLE_PATH), [], limit=2000))
        split_time = before[-1].values[0] + 1
        after = list(select_rows(read_rows(SAMPLE_PATH), [], time_from=split_time, limit=2000))
        asyncio.run(
            replay(SAMPLE_PATH, bootstrap_servers=bootstrap, topic=transactions, limit=2000, progress=False)
        )
        wait_until(
            lambda: len(_stored(settings.database_url)) >= 2000, timeout=60, what="the first rows stored"
        )

        broker.stop()
        broker.start()  # the same port, nothing in it
        asyncio.run(ensure_topics(bootstrap, topics))  # as the supervisor does
        asyncio.run(
            replay(
                SAMPLE_PATH,
                bootstrap_servers=bootstrap,
                topic=transactions,
                time_from=split_time,
                limit=2000,
                progress=False,
            )
        )
        expected = {row.event_id for row in before} | {row.event_id for row in after}
        deadline = time.monotonic() + 120
        restarts = 0
        while time.monotonic() < deadline and _stored(settings.database_url) != expected:
            if worker.process.poll() is not None:  # exited: it must say why, and not with success
                assert worker.process.returncode != 0
                log = worker.log_path.read_text()
                assert "exiting so that it restarts" in log, log[-3000:]
                restarts += 1
                worker = workers(**mine)
            time.sleep(0.5)
        assert _stored(settings.database_url) == expected, (restarts, worker.log_path.read_text()[-3000:])
        count = asyncio.run(fetch(settings.database_url, "SELECT count(*) AS n FROM scores"))[0]["n"]
        assert count == len(expected)
    finally:
        broker.stop()
