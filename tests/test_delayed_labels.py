"""Delayed ground truth: `fraudstream replay --label-delay` holds each label back until the data
clock passes the row's time plus the delay, then publishes it as a stable chargeback."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from core.dataset import SAMPLE_PATH
from core.events import parse_event
from core.labels import LabelSource, chargeback_label_id, parse_label
from producer import cli
from producer.delayed_labels import CHARGEBACK_WHO, DelayedLabels
from producer.replay import read_rows, select_rows
from tests.streaming_fixtures import read_topic


def test_labels_come_out_when_the_data_clock_passes_their_time_plus_the_delay() -> None:
    held = DelayedLabels(10.0, run_id="bt-1")
    for tx, time, label in [("a", 0.0, 1), ("b", 3.0, 0), ("c", 3.0, None), ("d", 1.0, 1), ("e", 25.0, 0)]:
        held.hold(tx, time, label)  # rows need not come in time order
    assert len(held) == 4  # an unlabelled row holds nothing
    assert held.due(9.99) == []
    first = held.due(11.0)
    assert [e.transaction_id for e in first] == ["a", "d"]  # due at 10 and 11, earliest first
    assert [e.transaction_id for e in held.due(13.0)] == ["b"]
    assert held.due(13.0) == []  # released once
    (last,) = held.rest()
    assert (last.transaction_id, last.label, len(held)) == ("e", 0, 0)
    event = first[0]
    assert (event.source, event.who, event.run_id, event.label) == (
        LabelSource.CHARGEBACK,
        CHARGEBACK_WHO,
        "bt-1",
        1,
    )
    assert event.label_id == chargeback_label_id("a", "bt-1")  # stable: a second replay is a redelivery
    zero = DelayedLabels(0.0)
    zero.hold("x", 5.0, 1)
    assert [e.transaction_id for e in zero.due(5.0)] == ["x"]  # no delay: due with its own row
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            DelayedLabels(bad)


def test_replay_with_a_label_delay_publishes_labels_apart(
    monkeypatch, capsys, infra, topics, settings
) -> None:
    monkeypatch.setenv("FRAUDSTREAM_KAFKA_BOOTSTRAP_SERVERS", infra.bootstrap_servers)
    monkeypatch.setenv("FRAUDSTREAM_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("FRAUDSTREAM_TOPIC_TRANSACTIONS", topics.transactions)
    monkeypatch.setenv("FRAUDSTREAM_TOPIC_LABELS", topics.labels)
    monkeypatch.setenv("FRAUDSTREAM_STATE_DIR", str(settings.state_dir))
    rows = list(select_rows(read_rows(SAMPLE_PATH), [], time_to=60))
    for _ in (1, 2):  # twice: the same verdicts again
        assert cli.main(["--to", "60", "--label-delay", "30", "--quiet"]) == 0
        out = capsys.readouterr().out
        assert f"labels: {len(rows):,} published as delayed chargebacks" in out
    transactions = asyncio.run(read_topic(infra.bootstrap_servers, topics.transactions, 2 * len(rows)))
    assert len(transactions) == 2 * len(rows)
    assert all(parse_event(orjson.loads(value))[2] is None for _, value, _ in transactions)  # no inline label
    labels = asyncio.run(read_topic(infra.bootstrap_servers, topics.labels, 2 * len(rows)))
    events = [parse_label(orjson.loads(value)) for _, value, _ in labels]
    assert all(key == e.transaction_id.encode() for (key, _, _), e in zip(labels, events, strict=True))
    expected = {(row.event_id, row.label) for row in rows}
    assert {(e.transaction_id, e.label) for e in events} == expected
    assert {e.label_id for e in events} == {chargeback_label_id(row.event_id) for row in rows}
    assert all(e.source is LabelSource.CHARGEBACK and e.run_id == "" for e in events)
