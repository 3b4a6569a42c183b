"""The labels agent against a real scorer worker, the real broker and PostgreSQL.

Verdicts published on the labels topic are stored once (history and latest per source),
whatever comes with them: malformed ones, a conflicting reuse of an id, a repeat in the
same batch, a verdict for a transaction that arrives later, content PostgreSQL refuses;
the refused go to the dead-letter topic with their kind, the rest is stored. A worker that
dies after a write and before acknowledging loses nothing: the batch comes again and is
recognised as already stored.
"""

from __future__ import annotations

import asyncio
import time

import asyncpg
import orjson
import pytest

from core.dataset import SAMPLE_PATH, load_csv
from core.events import DeadLetterKind, build_event, encode_event
from core.labels import build_label, encode_label, label_dict
from core.runtime.processes import wait_until
from scorer.faults import FAULT_EXIT_CODE
from scorer.pipeline import KIND_HEADER, REASON_HEADER, TOPIC_HEADER
from tests.streaming_fixtures import fetch, publish, read_topic

pytestmark = pytest.mark.timeout(600)

NOW = time.time()
ROWS = load_csv(SAMPLE_PATH).raw[:50]

#: Makes PostgreSQL refuse one verdict that passes every check of the contract: what isolation is for.
REFUSE_MALLORY = """
CREATE FUNCTION refuse_mallory() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.who = 'mallory' THEN
        RAISE EXCEPTION 'this test refuses mallory' USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER refuse_mallory BEFORE INSERT ON label_events FOR EACH ROW EXECUTE FUNCTION refuse_mallory();
"""


def verdict(tx: str, label: int, *, at: float = NOW, **extra):
    extra.setdefault("who", "alice")
    extra.setdefault("source", "analyst")
    return build_label(transaction_id=tx, label=label, decided_at=at, **extra)


def message(event) -> tuple[bytes, bytes, None]:
    return event.transaction_id.encode(), encode_label(event), None


def count(database_url: str, sql: str) -> int:
    return asyncio.run(fetch(database_url, sql))[0][0]


def execute(database_url: str, sql: str) -> None:
    async def run() -> None:
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())


def test_verdicts_are_stored_once_and_the_refused_are_dead_lettered(
    infra, settings, topics, workers, database_url
) -> None:
    execute(database_url, REFUSE_MALLORY)
    first = verdict("tx-1", 1, note="stolen card")
    revised = verdict("tx-1", 0, at=NOW + 60, who="bob", note="customer confirmed")
    chargeback = verdict("tx-2", 1, source="chargeback", who="network", label_id="cb-tx-2")
    early = verdict("late-tx", 1, source="chargeback", who="network")  # before its transaction
    mallory = verdict("tx-3", 1, who="mallory")
    reused = {**label_dict(first), "label": 0}  # another verdict under a used id
    bad = [
        (b"k1", b"{not json", DeadLetterKind.INVALID_JSON),
        (b"k2", orjson.dumps({**label_dict(first), "label_id": "x\x00y"}), DeadLetterKind.INVALID_TEXT),
        (b"k3", orjson.dumps({**label_dict(first), "label_id": "ms", "decided_at": NOW * 1000}), None),
        (b"tx-1", orjson.dumps(reused), DeadLetterKind.CONFLICT),  # after `first`, on its partition
    ]
    worker = workers()
    worker.wait_partitions(topics.partitions)
    asyncio.run(
        publish(
            infra.bootstrap_servers,
            topics.labels,
            [
                message(first),
                message(first),  # a repeat in the same stream: a redelivery
                message(revised),
                message(chargeback),
                message(early),
                message(mallory),
                *((key, value, None) for key, value, _ in bad),
            ],
        )
    )
    letters = asyncio.run(read_topic(infra.bootstrap_servers, topics.dead_letters, 5, timeout=60))
    wait_until(
        lambda: count(database_url, "SELECT count(*) FROM label_events") == 4,
        timeout=60,
        what="verdicts stored",
    )
    kinds = sorted(dict(headers)[KIND_HEADER].decode() for _, _, headers in letters)
    assert kinds == sorted(["invalid_json", "invalid_text", "bad_timestamp", "conflict", "database_refused"])
    for key, value, headers in letters:
        assert dict(headers)[TOPIC_HEADER].decode() == topics.labels
        if dict(headers)[KIND_HEADER] == b"database_refused":
            assert key == b"tx-3" and b"mallory" in value
            assert b"refuses mallory" in dict(headers)[REASON_HEADER]
    stored = asyncio.run(fetch(database_url, "SELECT label_id FROM label_events ORDER BY label_id"))
    assert {r["label_id"] for r in stored} == {first.label_id, revised.label_id, "cb-tx-2", early.label_id}
    latest = asyncio.run(
        fetch(database_url, "SELECT transaction_id, source, label, who FROM feedback ORDER BY 1, 2")
    )
    assert [tuple(r) for r in latest] == [
        ("late-tx", "chargeback", 1, "network"),
        ("tx-1", "analyst", 0, "bob"),
        ("tx-2", "chargeback", 1, "network"),
    ]
    assert worker.metric("fraudstream_labels_redelivered_total") >= 1
    assert worker.metric("fraudstream_label_conflicts_total") == 1
    assert worker.metric("fraudstream_labels_stored_total") == 4

    # The transaction of the early verdict arrives: its known label is the chargeback's.
    event = build_event(ROWS[0].tolist(), event_id="late-tx", label=0, produced_at=time.time())
    asyncio.run(
        publish(infra.bootstrap_servers, topics.transactions, [(b"late-tx", encode_event(event), None)])
    )
    wait_until(
        lambda: count(database_url, "SELECT count(*) FROM scores WHERE id = 'late-tx'") == 1,
        timeout=60,
        what="the late transaction stored",
    )
    known = asyncio.run(fetch(database_url, "SELECT label, source FROM known_labels WHERE id = 'late-tx'"))
    assert [tuple(r) for r in known] == [(1, "chargeback")]  # not the inline 0


def test_a_worker_that_dies_before_acknowledging_loses_no_verdict(
    infra, settings, topics, workers, database_url
) -> None:
    events = [verdict(f"tx-{i}", i % 2, who="carol") for i in range(40)]
    dying = workers(scorer_fault="exit-after-label-store:1")
    dying.wait_partitions(topics.partitions)
    asyncio.run(publish(infra.bootstrap_servers, topics.labels, [message(e) for e in events]))
    assert dying.wait_exit(timeout=120) == FAULT_EXIT_CODE  # after its first committed write, before acking
    stored_before = count(database_url, "SELECT count(*) FROM label_events")
    assert 0 < stored_before <= len(events)
    survivor = workers()
    wait_until(
        lambda: count(database_url, "SELECT count(*) FROM label_events") == len(events),
        timeout=120,
        what="every verdict stored",
        process=survivor.process,
        log_path=survivor.log_path,
    )
    # The batch the first worker stored came again (it was never acknowledged) and was recognised.
    wait_until(
        lambda: survivor.metric("fraudstream_labels_redelivered_total") >= stored_before,
        timeout=60,
        what="the unacknowledged batch redelivered",
    )
    assert count(database_url, "SELECT count(*) FROM feedback") == len(events)
    assert survivor.metric("fraudstream_label_conflicts_total") == 0
