"""No event can stop scoring: poison events against a real worker, the real broker and PostgreSQL.

For each kind of poison, one poison event followed by good ones on the same partition:
every good one is stored, the poison is on the dead-letter topic with its kind, its reason
and the key, topic, partition and offset it came from, within seconds. Then a property
test throws arbitrary JSON at decode -> score -> store (the worker's own code, in this
process, against the real PostgreSQL and broker): every event ends stored exactly as sent
or dead-lettered with a kind, and nothing raises.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import asyncpg
import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.dataset import SAMPLE_PATH, load_csv
from core.ensemble import Ensemble
from core.events import DeadLetterKind, build_event, encode_event
from core.features import EVENT_FEATURES
from core.kafka import ensure_topics
from core.models import EnsembleResolver
from core.runtime.broker import EmbeddedBroker
from core.runtime.processes import wait_until
from scorer.faults import Fault, FaultInjector
from scorer.health import WorkerHealth
from scorer.metrics import ScorerMetrics
from scorer.pipeline import (
    KEY_HEADER,
    KIND_HEADER,
    OFFSET_HEADER,
    PARTITION_HEADER,
    REASON_HEADER,
    TOPIC_HEADER,
)
from scorer.resolution import ModelResolution
from scorer.resources import Resources
from scorer.worker import ScorerWorker
from scorer.writer import BatchWriter
from tests.streaming_fixtures import fetch, publish, read_topic

Kind = DeadLetterKind
NOW = time.time()
ROWS = load_csv(SAMPLE_PATH).raw[:2000]

#: A trigger that makes PostgreSQL refuse one id with a data exception: content that passes
#: every check of the contract and still cannot be stored (what isolation is for).
REFUSE_IN_POSTGRESQL = """
CREATE FUNCTION refuse_test_poison() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.id LIKE 'pg-refuses-%' THEN
        RAISE EXCEPTION 'this test refuses %', NEW.id USING ERRCODE = 'numeric_value_out_of_range';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER refuse_test_poison BEFORE INSERT ON transactions
    FOR EACH ROW EXECUTE FUNCTION refuse_test_poison();
"""


def _good(i: int, prefix: str) -> dict:
    return build_event(ROWS[i].tolist(), event_id=f"{prefix}-{i}", label=0, produced_at=time.time())


def _poisons() -> list[tuple[str, Kind, bytes, str]]:
    """(name, expected kind, bytes, a word of the reason)."""
    base = build_event(ROWS[0].tolist(), event_id="base", label=1, produced_at=NOW)
    stored_first = build_event(ROWS[1].tolist(), event_id="stored-first", label=0, produced_at=NOW)
    return [
        ("nul id", Kind.INVALID_TEXT, orjson.dumps({**base, "id": "nul\x00id"}), "NUL"),
        (
            "milliseconds",
            Kind.BAD_TIMESTAMP,
            orjson.dumps({**base, "id": "ms", "produced_at": NOW * 1000}),
            "produced_at",
        ),
        ("overflow", Kind.OUT_OF_RANGE, orjson.dumps({**base, "id": "big", "V14": 3e38}), "V14"),
        ("bad json", Kind.INVALID_JSON, b'{"schema_version": 1, "id": "x", ', "invalid JSON"),
        ("not an object", Kind.NOT_AN_OBJECT, b"[1, 2, 3]", "JSON object"),
        (
            "unknown run",
            Kind.UNKNOWN_RUN,
            encode_event({**base, "id": "stray", "run_id": "bt-nobody"}),
            "bt-nobody",
        ),
        (
            "postgresql refuses",
            Kind.DATABASE_REFUSED,
            encode_event({**base, "id": "pg-refuses-1"}),
            "NumericValueOutOfRange",
        ),
        (
            "conflict",
            Kind.CONFLICT,
            encode_event({**stored_first, "V3": stored_first["V3"] + 1.0}),
            "already stored",
        ),
    ]


@pytest.fixture
def refusing_database(settings) -> str:
    async def install() -> None:
        conn = await asyncpg.connect(settings.database_url)
        try:
            await conn.execute(REFUSE_IN_POSTGRESQL)
        finally:
            await conn.close()

    asyncio.run(install())
    return settings.database_url


def test_one_poison_of_each_kind_never_stops_its_partition(settings, workers, refusing_database) -> None:
    worker = workers()
    worker.wait_partitions(4)
    bootstrap, topic = settings.kafka_bootstrap_servers, settings.topic_transactions
    stored_first = build_event(ROWS[1].tolist(), event_id="stored-first", label=0, produced_at=NOW)
    asyncio.run(publish(bootstrap, topic, [(b"stored-first", encode_event(stored_first), 0)]))
    wait_until(
        lambda: _ids(settings.database_url) == {"stored-first"}, timeout=60, what="the first copy stored"
    )

    poisons = _poisons()
    expected_good: set[str] = {"stored-first"}
    sent_letters: dict[tuple[int, int], tuple[str, Kind, str, bytes, bytes]] = {}
    for n, (name, kind, value, word) in enumerate(poisons):
        key = f"poison-{n}".encode()
        partition = n % 4
        goods = [_good(100 * n + i, f"good{n}") for i in range(20)]
        sent = asyncio.run(
            publish(
                bootstrap,
                topic,
                [(key, value, partition), *((key, encode_event(g), partition) for g in goods)],
            )
        )
        sent_letters[sent[0]] = (name, kind, word, key, value)
        expected_good |= {g["id"] for g in goods}
    # an identical redelivery of a stored event: silently idempotent (no dead letter, no second row)
    asyncio.run(publish(bootstrap, topic, [(b"stored-first", encode_event(stored_first), 2)]))

    wait_until(
        lambda: _ids(settings.database_url) == expected_good, timeout=60, what="every good event stored"
    )
    letters = asyncio.run(read_topic(bootstrap, settings.topic_dead_letters, len(poisons), timeout=30))
    assert len(letters) == len(poisons), [dict(h).get(REASON_HEADER) for _, _, h in letters]
    for key, value, headers in letters:
        headers = dict(headers)
        origin = (int(headers[PARTITION_HEADER]), int(headers[OFFSET_HEADER]))
        name, kind, word, sent_key, sent_value = sent_letters.pop(origin)
        assert headers[KIND_HEADER].decode() == kind.value, name
        assert word in headers[REASON_HEADER].decode(), (name, headers[REASON_HEADER])
        assert headers[TOPIC_HEADER].decode() == topic and headers[KEY_HEADER] == sent_key == key, name
        assert value == sent_value, name
    assert not sent_letters
    assert worker.metric("fraudstream_dead_letters_total") == len(poisons)
    assert worker.metric("fraudstream_conflicts_total") == 1
    count = asyncio.run(fetch(settings.database_url, "SELECT count(*) AS n FROM scores"))[0]["n"]
    assert count == len(expected_good)
    status, body = worker.health()
    assert status == 200 and body["status"] == "ok"


def _ids(database_url: str) -> set[str]:
    return {r["id"] for r in asyncio.run(fetch(database_url, "SELECT id FROM scores"))}


# --------------------------------------------------------------------------- property


_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=5,
)
_ids_pool = st.sampled_from(["a", "b", "c", "a\x00", "ü", "x" * 128, "x" * 129, ""])
_value = st.one_of(
    st.floats(-5, 5),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0, 1e9, -1e9, 1e9 + 1, 2**64 - 1, -1, "1", True, None]),
)


@st.composite
def _events(draw: st.DrawFn) -> bytes:
    choice = draw(st.integers(0, 9))
    if choice == 0:
        return draw(st.binary(max_size=30))
    if choice == 1:
        return orjson.dumps(draw(_json))
    row = ROWS[draw(st.integers(0, len(ROWS) - 1))].tolist()
    event = build_event(
        row, event_id=draw(_ids_pool), label=draw(st.sampled_from([0, 1, None])), produced_at=NOW
    )
    for name in draw(st.lists(st.sampled_from(EVENT_FEATURES), max_size=3)):
        event[name] = draw(_value)
    if draw(st.booleans()):
        event["produced_at"] = draw(st.one_of(st.floats(allow_nan=False), st.just(NOW * 1e9), st.none()))
    if draw(st.integers(0, 5)) == 0:
        event["run_id"] = draw(st.one_of(st.text(max_size=3), st.just("r\x00")))
    return orjson.dumps(event)


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.Runner]:
    with asyncio.Runner() as runner:
        yield runner


@pytest.fixture
def in_process_worker(loop, settings, model_bundle) -> Iterator[ScorerWorker]:
    """The worker's own parts, in this process, on this test's database and topics."""
    metrics, health = ScorerMetrics(), WorkerHealth(stall_seconds=30)

    async def open_() -> ScorerWorker:
        resources = await Resources.open(
            dsn=lambda: settings.database_url,
            bootstrap_servers=settings.kafka_bootstrap_servers,
            on_failure=print,
        )
        ensemble = Ensemble.load(model_bundle)
        models = ModelResolution(EnsembleResolver(ensemble), resources.pool, metrics, health, print)
        writer = BatchWriter(
            resources.pool,
            resources.producer,
            settings.topic_alerts,
            settings.topic_dead_letters,
            metrics,
            health,
            FaultInjector(Fault()),
        )
        return ScorerWorker(resources, models, writer, metrics, health)

    worker = loop.run(open_())
    yield worker
    loop.run(worker.resources.close())


class _Event:
    """What the agent hands the worker: a value and where it came from."""

    def __init__(self, value: bytes, offset: int) -> None:
        self.value = value
        self.message = type("M", (), {"topic": "t", "partition": 0, "offset": offset, "key": b"k"})()


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(batches=st.lists(st.lists(_events(), min_size=1, max_size=8), min_size=1, max_size=3))
def test_arbitrary_events_are_stored_exactly_or_dead_lettered_and_nothing_raises(
    loop, in_process_worker, settings, batches
) -> None:
    worker = in_process_worker

    async def run() -> None:
        conn = await asyncpg.connect(settings.database_url)
        try:
            await conn.execute("TRUNCATE transactions, scores, alert_outbox, dead_letters")
            firsts: dict[tuple[str, str], tuple[list[float], int | None]] = {}
            unaccounted: list[bytes] = []
            for batch in batches:
                events = [_Event(value, i) for i, value in enumerate(batch)]
                prepared = await worker.prepare(events)
                acked: list[_Event] = []

                async def ack(event: _Event, acked: list[_Event] = acked) -> bool:
                    acked.append(event)
                    return True

                await worker.write_then_ack(prepared, events, ack)
                assert acked == events  # every event accounted for
                for letter in prepared.refused:
                    assert letter.kind in set(Kind) and letter.reason and letter.raw == batch[letter.position]
                    # the contract closes every hole: nothing it lets through is refused further on
                    assert letter.kind not in (Kind.MODEL_REFUSED, Kind.DATABASE_REFUSED), letter.reason
                assert worker.metrics.dead_letters.labels(Kind.DATABASE_REFUSED.value)._value.get() == 0
                accounted = {letter.position for letter in prepared.refused}
                for group in prepared.groups:
                    accounted.update(group.positions)
                    for row, key in enumerate(zip(group.rows.keys(), group.rows.ids, strict=True)):
                        firsts.setdefault(key, (group.rows.features[row].tolist(), group.rows.labels[row]))
                unaccounted += [value for i, value in enumerate(batch) if i not in accounted]
            rows = await conn.fetch(
                f"SELECT run_id, id, label, {', '.join(n.lower() for n in EVENT_FEATURES)} FROM transactions"
            )
            stored = {
                (r["run_id"], r["id"]): ([float(r[n.lower()]) for n in EVENT_FEATURES], r["label"])
                for r in rows
            }
            # every row that went to the store is there exactly as it was first sent, nothing else is
            assert stored == {key: (values, label) for key, (values, label) in firsts.items()}
            for value in unaccounted:  # neither stored nor refused: an identical repeat of a stored event
                event = orjson.loads(value)
                assert (event.get("run_id") or "", event["id"]) in stored
            scored = await conn.fetchval("SELECT count(*) FROM scores")
            assert scored == len(stored)
            assert await conn.fetchval("SELECT count(*) FROM alert_outbox") == 0  # every alert published
            assert np.isfinite(await conn.fetchval("SELECT coalesce(sum(score), 0) FROM scores"))
        finally:
            await conn.close()

    loop.run(run())


def test_a_broker_that_takes_nothing_blocks_nothing_and_loses_nothing(
    settings, model_bundle, tmp_path
) -> None:
    """Publishing fails for good: the write still returns (bounded retries), the dead letters are kept
    in PostgreSQL with where they came from, the alerts wait in the outbox; the sweep sends them later."""
    broker = EmbeddedBroker(tmp_path / "broker.log")
    bootstrap = broker.start()
    topics = {"alerts-x": 1, "dlq-x": 1}
    asyncio.run(ensure_topics(bootstrap, topics))
    metrics, health = ScorerMetrics(), WorkerHealth(stall_seconds=30)
    good = [encode_event(_good(i, "kept")) for i in range(5)]
    bad = [b"{not json", orjson.dumps({**_good(9, "x"), "id": "nul\x00"})]
    events = [_Event(value, offset) for offset, value in enumerate([*good, *bad])]

    async def run() -> None:
        resources = await Resources.open(
            dsn=lambda: settings.database_url, bootstrap_servers=bootstrap, on_failure=print
        )
        try:
            ensemble = Ensemble.load(model_bundle).with_threshold(0.0)  # every stored row alerts
            models = ModelResolution(EnsembleResolver(ensemble), resources.pool, metrics, health, print)
            writer = BatchWriter(
                resources.pool,
                resources.producer,
                "alerts-x",
                "dlq-x",
                metrics,
                health,
                FaultInjector(Fault()),
                publish_attempts=3,
                publish_timeout=1.0,
            )
            worker = ScorerWorker(resources, models, writer, metrics, health)
            prepared = await worker.prepare(events)
            broker.stop()
            acked: list[_Event] = []

            async def ack(event: _Event) -> bool:
                acked.append(event)
                return True

            await worker.write_then_ack(prepared, events, ack)
            assert acked == events
            conn = await asyncpg.connect(settings.database_url)
            try:
                parked = await conn.fetch(
                    "SELECT kind, value, source_topic, source_partition, source_offset, key, headers FROM dead_letters "
                    "ORDER BY source_offset"
                )
                assert [(r["kind"], r["value"], r["source_offset"]) for r in parked] == [
                    ("invalid_json", bad[0], 5),
                    ("invalid_text", bad[1], 6),
                ]
                assert all(r["source_topic"] == "t" and r["key"] == b"k" for r in parked)
                assert "fraudstream.error.reason" in parked[0]["headers"]
                waiting = {r["id"] for r in await conn.fetch("SELECT id FROM alert_outbox")}
                assert waiting == {orjson.loads(value)["id"] for value in good}
                assert await conn.fetchval("SELECT count(*) FROM scores") == 5
                assert metrics.dead_letters_parked._value.get() == 2
                assert metrics.alerts_deferred._value.get() == 5
                assert (
                    metrics.publish_retries.labels("dead_letter")._value.get() == 2 * 2
                )  # 2 letters, 2 retries
                broker.start()  # back (empty), and the sweep sends what waited
                await ensure_topics(bootstrap, topics)
                assert await writer.sweep_outbox(older_than=0) == 5
                assert await conn.fetchval("SELECT count(*) FROM alert_outbox") == 0
            finally:
                await conn.close()
        finally:
            await resources.close()

    try:
        asyncio.run(run())
        alerts = asyncio.run(read_topic(bootstrap, "alerts-x", 5))
        assert {key.decode() for key, _, _ in alerts} == {orjson.loads(value)["id"] for value in good}
    finally:
        broker.stop()


def test_repeats_within_a_batch_are_judged_against_what_is_stored(loop, in_process_worker, settings) -> None:
    """The same id in one batch: an identical copy is a silent redelivery, another content a conflict,
    whether the stored one came earlier in the batch or from an earlier batch."""
    worker = in_process_worker
    x, y = _good(1, "x"), _good(2, "y")
    earlier = [encode_event(y)]
    batch = [
        encode_event(y),  # identical to the stored y: nothing to say
        encode_event({**y, "label": 1}),  # y with another label: conflict with the stored y
        encode_event(x),  # new: stored
        # x with other features: a conflict with the x stored just before it
        encode_event({**x, "V5": x["V5"] * 2 + 1}),
        encode_event({**x, "produced_at": x["produced_at"] + 5}),  # x again (a retry): nothing to say
    ]

    async def ack(event: _Event) -> bool:
        return True

    async def run() -> list:
        for messages in (earlier, batch):
            events = [_Event(value, offset) for offset, value in enumerate(messages)]
            await worker.write_then_ack(await worker.prepare(events), events, ack)
        return [
            tuple(r)
            for r in await fetch(settings.database_url, "SELECT id, label FROM transactions ORDER BY id")
        ]

    rows = loop.run(run())
    letters = asyncio.run(read_topic(settings.kafka_bootstrap_servers, settings.topic_dead_letters, 2))
    refused = sorted((int(dict(h)[OFFSET_HEADER]), dict(h)[KIND_HEADER].decode()) for _, _, h in letters)
    assert refused == [(1, "conflict"), (3, "conflict")]
    assert {value for _, value, _ in letters} == {batch[1], batch[3]}
    assert rows == [("x-1", 0), ("y-2", 0)]
    assert worker.metrics.conflicts._value.get() == 2


def test_a_copy_with_another_data_day_is_a_conflict_not_a_second_row(
    loop, in_process_worker, settings
) -> None:
    """Rows are partitioned by data day and the primary key holds the day: an event with a stored
    id and a time on another day would land in another partition. It must still be a conflict,
    dead-lettered, whether the stored copy came in an earlier batch or earlier in this one."""
    worker = in_process_worker
    x, y = _good(1, "x"), _good(2, "y")
    assert x["time"] < 86_400 and y["time"] < 86_400  # data day 0
    earlier = [encode_event(y)]
    batch = [
        encode_event({**y, "time": y["time"] + 86_400}),  # y a day later: conflict with the stored y
        encode_event(x),  # new: stored, day 0
        encode_event({**x, "time": x["time"] + 3 * 86_400}),  # x three days later: conflict
        encode_event(x),  # x again: a redelivery, nothing to say
    ]

    async def ack(event: _Event) -> bool:
        return True

    async def run() -> tuple[list, int, list]:
        for messages in (earlier, batch):
            events = [_Event(value, offset) for offset, value in enumerate(messages)]
            await worker.write_then_ack(await worker.prepare(events), events, ack)
        url = settings.database_url
        rows = [tuple(r) for r in await fetch(url, "SELECT id, time, day FROM transactions ORDER BY id")]
        (scores,) = await fetch(url, "SELECT count(*) FROM scores")
        partitions = await fetch(
            url, "SELECT tableoid::regclass::text AS part, count(*) FROM transactions GROUP BY 1 ORDER BY 1"
        )
        return rows, scores[0], [tuple(p) for p in partitions]

    rows, scores, partitions = loop.run(run())
    letters = asyncio.run(read_topic(settings.kafka_bootstrap_servers, settings.topic_dead_letters, 2))
    refused = sorted((int(dict(h)[OFFSET_HEADER]), dict(h)[KIND_HEADER].decode()) for _, _, h in letters)
    assert refused == [(0, "conflict"), (2, "conflict")]
    assert {value for _, value, _ in letters} == {batch[0], batch[2]}
    assert rows == [("x-1", x["time"], 0), ("y-2", y["time"], 0)]
    assert scores == 2
    assert partitions == [("transactions_day_0", 2)]
    assert worker.metrics.conflicts._value.get() == 2
