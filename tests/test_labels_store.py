"""Verdicts in PostgreSQL: stored once, the latest per source wins, history kept whole, the known
label defined once, and the review queue kept by triggers. Against the real PostgreSQL."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import numpy as np
import pytest

from core.db.labels import known_label_rows, store_labels, stored_labels
from core.db.store import ScoredRows, store_scored
from core.labels import LabelSource, build_label

NOW = 1_764_086_400.0


def verdict(tx: str, label: int, source: str = "analyst", *, at: float, who: str = "alice", **extra):
    return build_label(transaction_id=tx, label=label, source=source, who=who, decided_at=at, **extra)


def scored(ids: list[str], *, alerts: list[bool], labels: list[int | None] | None = None, run_id=None):
    n = len(ids)
    rng = np.random.default_rng(len(ids))
    return ScoredRows(
        ids=ids,
        features=rng.normal(size=(n, 30)).clip(0, None),
        labels=labels if labels is not None else [None] * n,
        run_ids=[run_id] * n,
        produced_at=[time.time()] * n,
        model_version="v-test",
        score=np.linspace(0.99, 0.5, n),
        recon_error=np.ones(n),
        alert=np.array(alerts),
    )


async def _with(database_url: str, work):
    conn = await asyncpg.connect(database_url)
    try:
        return await work(conn)
    finally:
        await conn.close()


def run(database_url: str, work):
    return asyncio.run(_with(database_url, work))


def test_a_verdict_is_stored_once_and_redelivery_changes_nothing(database_url: str) -> None:
    first = verdict("t1", 1, at=NOW, note="stolen card")
    replayed_chargeback = verdict("t2", 0, "chargeback", at=NOW, label_id="cb-x", who="network")

    async def work(conn):
        assert await store_labels(conn, [first, replayed_chargeback]) == []
        # the same verdicts again (a redelivery), the chargeback re-sent later by a second replay
        later = verdict("t2", 0, "chargeback", at=NOW + 50, label_id="cb-x", who="network")
        assert await store_labels(conn, [first, later]) == [0, 1]
        back = await stored_labels(conn, ["cb-x", first.label_id, "nope"])
        events = await conn.fetch("SELECT label_id, decided_at FROM label_events ORDER BY label_id")
        feedback = await conn.fetch("SELECT transaction_id, source, label_id FROM feedback ORDER BY 1")
        return back, events, feedback

    back, events, feedback = run(database_url, work)
    assert set(back) == {"cb-x", first.label_id}
    assert back[first.label_id].same_verdict(first) and abs(back[first.label_id].decided_at - NOW) < 1e-3
    assert back["cb-x"].decided_at == pytest.approx(NOW)  # the first one stored is kept
    assert len(events) == 2
    assert [tuple(r) for r in feedback] == [("t1", "analyst", first.label_id), ("t2", "chargeback", "cb-x")]


def test_the_latest_verdict_per_source_wins_whatever_the_order(database_url: str) -> None:
    early = verdict("t1", 1, at=NOW, who="alice")
    late = verdict("t1", 0, at=NOW + 60, who="bob", note="customer confirmed")
    chargeback = verdict("t1", 1, "chargeback", at=NOW + 30, who="network")

    async def work(conn):
        await store_labels(conn, [late])  # the newer one first
        await store_labels(conn, [early, chargeback])  # then an older one, and another source
        tie_a = verdict("t9", 1, at=NOW, label_id="a-tie")
        tie_b = verdict("t9", 0, at=NOW, label_id="b-tie")
        await store_labels(conn, [tie_b, tie_a])  # one statement, same time: the greater id wins
        rows = await conn.fetch("SELECT transaction_id, source, label, who, note FROM feedback ORDER BY 1, 2")
        history = await conn.fetchval("SELECT count(*) FROM label_events WHERE transaction_id = 't1'")
        return rows, history

    rows, history = run(database_url, work)
    assert [tuple(r) for r in rows] == [
        ("t1", "analyst", 0, "bob", "customer confirmed"),
        ("t1", "chargeback", 1, "network", None),
        ("t9", "analyst", 0, "alice", None),
    ]
    assert history == 3  # every verdict kept


def test_the_history_cannot_be_rewritten(database_url: str) -> None:
    async def work(conn):
        await store_labels(conn, [verdict("t1", 1, at=NOW)])
        refused = []
        for sql in ("UPDATE label_events SET label = 0", "DELETE FROM label_events", "TRUNCATE label_events"):
            try:
                await conn.execute(sql)
            except asyncpg.RaiseError as error:
                refused.append(str(error))
        return refused, await conn.fetchval("SELECT count(*) FROM label_events")

    refused, count = run(database_url, work)
    assert len(refused) == 3 and all("append-only" in r for r in refused) and count == 1


def test_known_labels_prefer_the_latest_review_or_chargeback_over_replayed_labels(database_url: str) -> None:
    async def work(conn):
        await store_scored(
            conn, scored(["a", "b", "c", "d", "e"], alerts=[True] * 5, labels=[0, 0, 1, None, 1])
        )
        await store_labels(
            conn,
            [
                verdict("a", 1, at=NOW),  # a review over the inline 0
                verdict("b", 1, at=NOW),
                verdict("b", 0, "chargeback", at=NOW + 10, who="network"),  # the later one wins
                verdict("c", 0, "replay", at=NOW, who="replay"),  # an explicit replayed label over inline
                verdict("d", 1, "chargeback", at=NOW, who="network"),  # known only by chargeback
                verdict("z", 1, "chargeback", at=NOW, who="network"),  # before its transaction
            ],
        )
        before = await conn.fetch("SELECT id, label, source FROM known_labels ORDER BY id")
        as_of = await conn.fetch(
            "SELECT id, label, source FROM known_labels_as_of(to_timestamp($1)) ORDER BY id", NOW + 5
        )
        await store_scored(conn, scored(["z"], alerts=[False]))  # the transaction arrives: it joins
        rows = await known_label_rows(conn, "")
        return before, as_of, rows

    before, as_of, rows = run(database_url, work)
    assert [tuple(r) for r in before] == [
        ("a", 1, "analyst"),
        ("b", 0, "chargeback"),
        ("c", 0, "replay"),
        ("d", 1, "chargeback"),
        ("e", 1, "replay"),  # the inline label: nothing else is known
        ("z", 1, "chargeback"),
    ]
    # as of before the chargeback, b's review was what was known
    assert [tuple(r) for r in as_of][:2] == [("a", 1, "analyst"), ("b", 1, "analyst")]
    assert len(rows) == 6 and sorted(rows.labels.tolist()) == [0, 0, 1, 1, 1, 1]


def test_the_review_queue_follows_alerts_and_analyst_verdicts(database_url: str) -> None:
    async def work(conn):
        await store_labels(conn, [verdict("early", 0, at=NOW)])  # a review that came before its alert
        await store_scored(
            conn, scored(["q1", "q2", "q3", "early", "calm"], alerts=[True, True, True, True, False])
        )
        await store_scored(conn, scored(["q1", "bt"], alerts=[True, True], run_id="bt-1"))  # backtests: never
        queued = await _queue_and_backlog(conn)
        await store_labels(
            conn,
            [
                verdict("q1", 1, "chargeback", at=NOW, who="network"),  # not an analyst: stays queued
                verdict("q2", 1, at=NOW),
            ],
        )
        after = await _queue_and_backlog(conn)
        await conn.execute("DELETE FROM scores WHERE run_id = '' AND id = 'q3'")
        deleted = await _queue_and_backlog(conn)
        await conn.execute("TRUNCATE review_queue")
        return queued, after, deleted, await _queue_and_backlog(conn)

    queued, after, deleted, truncated = run(database_url, work)
    assert queued == (["q1", "q2", "q3"], 3)
    assert after == (["q1", "q3"], 2)
    assert deleted == (["q1"], 1)
    assert truncated == ([], 0)


async def _queue_and_backlog(conn: asyncpg.Connection) -> tuple[list[str], int]:
    """The queued alerts, and the backlog counter (migration 0019) beside them."""
    queued = [
        r["transaction_id"] for r in await conn.fetch("SELECT transaction_id FROM review_queue ORDER BY 1")
    ]
    return queued, await conn.fetchval("SELECT backlog FROM run_totals WHERE run_id = ''")


@pytest.mark.parametrize("first", ["alert", "verdict"])
def test_a_verdict_given_while_its_alert_is_written_never_stays_queued(database_url: str, first: str) -> None:
    """Neither side sees the other's uncommitted row: without a lock both go ahead, and the
    reviewed alert stays queued and counted. Whichever commits second must see the first."""
    alert, review = scored(["racing"], alerts=[True]), verdict("racing", 1, at=NOW)

    async def work(conn):
        other = await asyncpg.connect(database_url)
        try:
            holder, waiter = (conn, other) if first == "alert" else (other, conn)
            async with holder.transaction():
                if first == "alert":
                    await store_scored(holder, alert)
                    second = asyncio.create_task(store_labels(waiter, [review]))
                else:
                    await store_labels(holder, [review])
                    second = asyncio.create_task(store_scored(waiter, alert))
                await asyncio.sleep(0.5)
                blocked = not second.done()
            await second
        finally:
            await other.close()
        return blocked, await _queue_and_backlog(conn)

    blocked, (queued, backlog) = run(database_url, work)
    assert blocked, "the second writer went ahead while the first had not committed"
    assert (queued, backlog) == ([], 0)


def test_a_refused_source_never_reaches_the_table(database_url: str) -> None:
    """The contract refuses it first; the database's own check is the last line."""

    async def work(conn):
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute(
                "INSERT INTO label_events (label_id, transaction_id, label, source, who, decided_at) "
                "VALUES ('x', 't', 1, 'guess', 'me', now())"
            )

    run(database_url, work)
    assert LabelSource("chargeback") is LabelSource.CHARGEBACK
