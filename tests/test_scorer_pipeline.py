"""The scorer's plain parts without a broker: decode, duplicates, models, scoring, alerts, error policy, health.

The model is a real trained bundle; the failure classifier is tried on errors raised by the
real PostgreSQL and the real asyncpg driver.
"""

from __future__ import annotations

import asyncio
import dataclasses
import doctest
import importlib

import asyncpg
import numpy as np
import orjson
import pytest

from core.dataset import load_csv
from core.ensemble import Ensemble
from core.events import DeadLetterKind, build_event, encode_event, transaction_id
from core.runtime.processes import free_port
from scorer.batches import InOrderWrites
from scorer.failures import describe, is_permanent, isolate_refused, retry_forever
from scorer.faults import Fault
from scorer.health import OK, STALLED, STARTING, STOPPED, WorkerHealth
from scorer.metrics import ScorerMetrics
from scorer.pipeline import (
    KEY_HEADER,
    KIND_HEADER,
    OFFSET_HEADER,
    PARTITION_HEADER,
    REASON_HEADER,
    TOPIC_HEADER,
    Origin,
    by_model,
    dead_letter_headers,
    decode,
    drop_unknown_runs,
    gather_more,
    keep_gathering,
    occurrence_rounds,
    score_group,
)
from tests.streaming_fixtures import write_csv

NOW = 1_764_086_400.0
Kind = DeadLetterKind


@pytest.fixture(scope="module")
def ensemble(model_bundle) -> Ensemble:
    return Ensemble.load(model_bundle)


@pytest.fixture(scope="module")
def sample_rows(tmp_path_factory) -> tuple[np.ndarray, np.ndarray]:
    data = load_csv(write_csv(tmp_path_factory.mktemp("csv") / "rows.csv", 400))
    return data.raw, data.labels


def _messages(raw: np.ndarray, run_ids: list[str | None] | None = None) -> list[bytes]:
    run_ids = run_ids or [None] * len(raw)
    return [
        encode_event(build_event(row, event_id=transaction_id(row), label=0, run_id=run, produced_at=NOW))
        for row, run in zip(raw.tolist(), run_ids, strict=True)
    ]


def test_score_group_is_one_vectorised_call_in_event_order(ensemble, sample_rows) -> None:
    raw, _ = sample_rows
    messages = _messages(raw)
    batch, dead = decode(messages)
    assert not dead and len(batch) == len(raw)
    group, refused = score_group(ensemble, batch, messages, scored_at=NOW)
    expected = ensemble.score(raw)
    assert refused == []
    np.testing.assert_allclose(group.rows.score, expected.score)
    np.testing.assert_array_equal(group.rows.alert, expected.alert)
    assert group.rows.model_version == ensemble.version and list(group.rows.ids) == batch.ids
    assert group.positions == list(range(len(raw)))


def test_alerts_carry_the_stored_values_and_are_the_same_bytes_every_time(ensemble, sample_rows) -> None:
    raw, _ = sample_rows
    low = ensemble.with_threshold(float(np.quantile(ensemble.score(raw).score, 0.95)))
    messages = _messages(raw)
    batch, _ = decode(messages)
    group, _ = score_group(low, batch, messages, scored_at=NOW, top=3)
    rows = group.rows
    assert sorted(group.alerts) == np.flatnonzero(rows.alert).tolist() and group.alerts
    for row, value in group.alerts.items():
        alert = orjson.loads(value)
        assert alert["id"] == rows.ids[row] and alert["score"] == float(rows.score[row])
        assert alert["score"] >= alert["threshold"] == low.threshold
        assert alert["model_version"] == rows.model_version and alert["recon_error"] == float(
            rows.recon_error[row]
        )
        assert len(alert["top_features"]) == 3
        assert all(item["feature"] in low.feature_names for item in alert["top_features"])
    # the same rows in another batch (another order, other neighbours) give byte-identical alerts
    order = np.random.default_rng(1).permutation(len(raw))
    shuffled = [messages[i] for i in order]
    again, _ = score_group(low, decode(shuffled)[0], shuffled, scored_at=NOW, top=3)
    by_id = {again.rows.ids[row]: value for row, value in again.alerts.items()}
    assert {rows.ids[row]: value for row, value in group.alerts.items()} == by_id
    never = ensemble.with_threshold(1.1)
    assert score_group(never, batch, messages, scored_at=NOW)[0].alerts == {}


def test_rows_the_model_cannot_score_or_explain_are_refused_and_the_rest_scored(
    ensemble, sample_rows
) -> None:
    """A bundle whose scaler blows up V1 and V2: beyond float32 for one row, beyond TreeSHAP for another."""
    raw, _ = sample_rows
    center, scale = ensemble.scaler.center_.copy(), ensemble.scaler.scale_.copy()
    center[:2] = 0.0
    scale[0] = 1e-35  # V1 = 1e4 -> scaled 1e39: float32 infinity -> NaN reconstruction error
    scale[1] = 1e-26  # V2 = 1e4 -> scaled 1e30: scores, but TreeSHAP fails on the infinite input
    scaler = dataclasses.replace(ensemble.scaler, center_=center, scale_=scale)
    fragile = dataclasses.replace(ensemble, scaler=scaler).with_threshold(0.0)  # all alert: all explained
    rows = np.array(raw[:8])
    rows[:, 1:3] = 0.0
    rows[2, 1] = 1e4
    rows[5, 2] = 1e4
    messages = _messages(rows)
    batch, _ = decode(messages)
    with np.errstate(over="ignore"):  # the overflow is the point
        group, refused = score_group(fragile, batch, messages, scored_at=NOW)
    assert [(letter.position, letter.kind) for letter in refused] == [
        (2, Kind.MODEL_REFUSED),
        (5, Kind.MODEL_REFUSED),
    ]
    assert "non-finite" in refused[0].reason and "XGBoostError" in refused[1].reason
    assert refused[0].raw == messages[2]
    assert group.positions == [0, 1, 3, 4, 6, 7]
    assert np.all(np.isfinite(group.rows.score)) and sorted(group.alerts) == list(range(6))


class _Flaky:
    """A model that raises on any batch holding a marked row (the model's refusal by exception)."""

    version, threshold = "flaky", 2.0

    def __init__(self, marked: float) -> None:
        self.marked, self.calls = marked, 0

    def score(self, raw: np.ndarray):
        self.calls += 1
        if np.any(raw[:, 1] == self.marked):
            raise ValueError("cannot score this")
        n = len(raw)
        return type(
            "S", (), {"score": np.full(n, 0.5), "recon_error": np.ones(n), "alert": np.zeros(n, bool)}
        )


def test_a_model_that_raises_is_bisected_down_to_the_rows_it_refuses(sample_rows) -> None:
    raw, _ = sample_rows
    rows = np.array(raw[:64])
    rows[[9, 40], 1] = 123.25
    messages = _messages(rows)
    batch, _ = decode(messages)
    model = _Flaky(123.25)
    group, refused = score_group(model, batch, messages, scored_at=NOW)  # type: ignore[arg-type]
    assert [letter.position for letter in refused] == [9, 40]
    assert all("ValueError: cannot score this" in letter.reason for letter in refused)
    assert len(group.rows) == 62 and 9 not in group.positions and 40 not in group.positions
    assert model.calls <= 1 + 2 * 2 * 6  # about 2 k log2 n calls, not one per row


def test_the_same_id_twice_in_a_batch_is_stored_in_rounds(ensemble, sample_rows) -> None:
    """Repeats go to later rounds, so the store judges them as it judges a redelivery (see the worker tests)."""
    raw, _ = sample_rows
    a = build_event(raw[0].tolist(), event_id="a", label=0, produced_at=NOW)
    messages = [
        encode_event(a),
        encode_event({**a, "produced_at": NOW + 1}),  # a producer's retry: same content
        encode_event({**a, "V3": a["V3"] + 1}),  # other features
        encode_event({**a, "run_id": "bt-1"}),  # another run: another row
        encode_event(build_event(raw[1].tolist(), event_id="b", produced_at=NOW)),
    ]
    batch, _ = decode(messages)
    assert occurrence_rounds(batch.run_ids, batch.ids) == [[0, 3, 4], [1], [2]]
    assert occurrence_rounds(["x", None], ["a", "b"]) == [[0, 1]]
    group, _ = score_group(ensemble.with_threshold(0.0), batch, messages, scored_at=NOW)
    third = group.take([2, 4])
    assert list(third.rows.ids) == ["a", "b"] and third.positions == [2, 4]
    assert third.alerts == {0: group.alerts[2], 1: group.alerts[4]}
    np.testing.assert_array_equal(third.rows.features, group.rows.features[[2, 4]])


def test_batches_split_only_when_runs_use_different_models(ensemble, sample_rows) -> None:
    raw, _ = sample_rows
    batch, _ = decode(_messages(raw[:6], [None, "a", "b", None, "a", "b"]))
    same = list(by_model(lambda run: ensemble, batch))
    assert len(same) == 1 and same[0][1] is batch
    strict = ensemble.with_threshold(0.99)
    groups = list(by_model(lambda run: strict if run == "b" else ensemble, batch))
    assert sorted(len(part) for _, part in groups) == [2, 4]
    for model, part in groups:
        assert all((run == "b") == (model is strict) for run in part.run_ids)
        assert all(
            batch.run_ids[batch.positions.index(p)] == run
            for p, run in zip(part.positions, part.run_ids, strict=True)
        )


def test_unknown_run_events_become_dead_letters_with_their_positions() -> None:
    good = build_event([1.0] * 30, event_id="live", label=0)
    stray = build_event([1.0] * 30, event_id="stray", run_id="bt-missing")
    malformed_stray = {**stray, "id": "bad", "amount": -1.0}  # already refused for its amount
    messages = [encode_event(e) for e in (good, malformed_stray, stray)]
    batch, dead = decode(messages)
    assert batch.ids == ["live", "stray"] and [d.position for d in dead] == [1]
    kept, refused = drop_unknown_runs(messages, batch, {"bt-missing"})
    assert kept.ids == ["live"] and kept.positions == [0]
    assert [(letter.raw, letter.position, letter.kind) for letter in refused] == [
        (messages[2], 2, Kind.UNKNOWN_RUN)
    ]
    assert "unknown backtest run_id 'bt-missing'" in refused[0].reason


def test_dead_letter_headers_say_why_and_where_it_came_from() -> None:
    _, (letter,) = decode([b"{not json"])
    headers = dict(dead_letter_headers(letter, Origin("transactions", 3, 1234, b"k\x00")))
    assert headers[KIND_HEADER] == b"invalid_json" and headers[REASON_HEADER].startswith(b"invalid JSON")
    assert (headers[TOPIC_HEADER], headers[PARTITION_HEADER], headers[OFFSET_HEADER]) == (
        b"transactions",
        b"3",
        b"1234",
    )
    assert headers[KEY_HEADER] == b"k\x00"
    assert KEY_HEADER not in dict(dead_letter_headers(letter, Origin("t", 0, 0, None)))


def test_a_batch_waits_for_another_take_only_when_the_waiting_events_fill_it() -> None:
    assert keep_gathering(gathered=600, waiting=20_000, batch_size=4000)  # a backlog
    assert keep_gathering(gathered=600, waiting=3400, batch_size=4000)
    assert not keep_gathering(gathered=600, waiting=3399, batch_size=4000)  # would wait for new events
    assert not keep_gathering(gathered=40, waiting=0, batch_size=4000)  # keeping up: score now
    assert not keep_gathering(gathered=4000, waiting=20_000, batch_size=4000)  # full
    assert not keep_gathering(gathered=5000, waiting=20_000, batch_size=4000)


def test_a_chunk_batch_takes_only_chunks_already_waiting_and_never_waits_for_more() -> None:
    assert gather_more(gathered=40, waiting=1, batch_size=4000)  # fetched already: same batch
    assert gather_more(gathered=600, waiting=20_000, batch_size=4000)  # a backlog
    assert not gather_more(gathered=40, waiting=0, batch_size=4000)  # nothing waiting: score now
    assert not gather_more(gathered=4000, waiting=20_000, batch_size=4000)  # full


# --------------------------------------------------------------------------- error policy


async def _real_errors(database_url: str) -> dict[str, BaseException]:
    """Errors as the real PostgreSQL and driver raise them."""
    errors: dict[str, BaseException] = {}
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("CREATE TEMP TABLE positive (x int CHECK (x > 0))")
        for name, sql, args in [
            ("nul", "SELECT $1::text", ["a\x00b"]),
            ("surrogate", "SELECT $1::text", ["a\ud800"]),
            ("timestamp", "SELECT to_timestamp($1::float8)", [1e18]),
            ("int2", "SELECT $1::int2", [70_000]),
            ("numeric", "SELECT 10::numeric ^ 400000::numeric", []),
            ("check", "INSERT INTO positive VALUES ($1)", [-1]),
            ("undefined_table", "SELECT * FROM no_such_table", []),
            ("canceled", "SET statement_timeout = 1; SELECT pg_sleep(1)", []),
        ]:
            try:
                if args:
                    await conn.fetch(sql, *args)
                else:
                    await conn.execute(sql)
            except Exception as error:  # noqa: BLE001 - collected for the test
                errors[name] = error
            await conn.execute("SET statement_timeout = 0")
        other = await asyncpg.connect(database_url)
        pid = other.get_server_pid()
        await conn.execute("SELECT pg_terminate_backend($1)", pid)
        try:
            await other.fetch("SELECT 1")
        except Exception as error:  # noqa: BLE001
            errors["terminated"] = error
        finally:
            other.terminate()
    finally:
        await conn.close()
    try:
        await asyncpg.connect(f"postgresql://127.0.0.1:{free_port()}/none", timeout=5)
    except Exception as error:  # noqa: BLE001
        errors["refused_connection"] = error
    return errors


def test_failures_are_told_apart_on_real_postgresql_errors(database_url: str) -> None:
    errors = asyncio.run(_real_errors(database_url))
    permanent = {name for name, error in errors.items() if is_permanent(error)}
    assert permanent == {"nul", "surrogate", "timestamp", "int2", "numeric", "check"}, {
        name: describe(error) for name, error in errors.items()
    }
    assert isinstance(errors["nul"], asyncpg.CharacterNotInRepertoireError)
    assert {"undefined_table", "canceled", "terminated", "refused_connection"} <= errors.keys()


@pytest.mark.parametrize(
    ("error", "permanent"),
    [
        (asyncpg.CharacterNotInRepertoireError("invalid byte sequence"), True),
        (asyncpg.NumericValueOutOfRangeError("out of range"), True),
        (asyncpg.UntranslatableCharacterError("untranslatable"), True),
        (asyncpg.InvalidTextRepresentationError("bad input"), True),
        (asyncpg.DatetimeFieldOverflowError("timestamp out of range"), True),
        (asyncpg.NotNullViolationError("null"), True),
        (asyncpg.CheckViolationError("check"), True),
        (asyncpg.ProgramLimitExceededError("index row size"), True),
        (UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"), True),
        (asyncpg.CannotConnectNowError("starting up"), False),
        (asyncpg.AdminShutdownError("terminating"), False),
        (asyncpg.ConnectionDoesNotExistError("closed"), False),
        (asyncpg.InterfaceError("pool is closing"), False),
        (asyncpg.TooManyConnectionsError("too many"), False),
        (asyncpg.DiskFullError("disk full"), False),
        (asyncpg.DeadlockDetectedError("deadlock"), False),
        (asyncpg.QueryCanceledError("statement timeout"), False),
        (asyncpg.UndefinedTableError("no such table"), False),
        (asyncpg.InsufficientPrivilegeError("denied"), False),
        (TimeoutError(), False),
        (ConnectionRefusedError(111, "refused"), False),
        (OSError("network unreachable"), False),
    ],
)
def test_the_classifier_on_asyncpg_exception_classes(error: BaseException, permanent: bool) -> None:
    assert is_permanent(error) is permanent


def test_isolate_refused_finds_exactly_the_refused_items_and_lets_transient_errors_through() -> None:
    poison = {3, 17, 18, 99}
    written: list[int] = []
    calls = []

    async def attempt(items) -> None:
        calls.append(len(items))
        bad = poison.intersection(items)
        if bad:
            raise asyncpg.CharacterNotInRepertoireError(f"refuses {sorted(bad)}")
        written.extend(items)

    refused = asyncio.run(isolate_refused(list(range(100)), attempt))
    assert [item for item, _ in refused] == sorted(poison)
    assert sorted(written) == sorted(set(range(100)) - poison)  # every other item, once
    assert len(calls) < 60

    async def down(items) -> None:
        raise asyncpg.CannotConnectNowError("the database system is starting up")

    with pytest.raises(asyncpg.CannotConnectNowError):
        asyncio.run(isolate_refused(list(range(10)), down))


def test_retry_forever_retries_until_the_operation_succeeds() -> None:
    metrics = ScorerMetrics()
    attempts = []

    async def flaky() -> str:
        attempts.append(1)
        if len(attempts) < 3:
            raise ConnectionRefusedError("database down")
        return "stored"

    result = asyncio.run(
        retry_forever(flaky, what="store", on_failure=lambda error: metrics.store_retries.inc(), first=0.001)
    )
    assert result == "stored" and len(attempts) == 3
    assert b"fraudstream_store_retries_total 2.0" in metrics.exposition()


def test_writes_start_in_order_one_at_a_time_and_a_failed_write_stops_the_next() -> None:
    log: list[str] = []

    async def write(name: str, delay: float, fail: bool = False) -> None:
        log.append(f"start {name}")
        await asyncio.sleep(delay)
        if fail:
            raise RuntimeError(name)
        log.append(f"end {name}")

    async def main() -> None:
        async with InOrderWrites() as writes:
            await writes.submit(write("1", 0.05))
            log.append("prepared 2")  # the agent prepares n+1 while n is written
            await writes.submit(write("2", 0.01))
            await writes.submit(write("3", 0))
        assert log == ["prepared 2", "start 1", "end 1", "start 2", "end 2", "start 3", "end 3"]
        log.clear()
        with pytest.raises(RuntimeError, match="a"):
            async with InOrderWrites() as writes:
                await writes.submit(write("a", 0, fail=True))
                await writes.submit(write("b", 0))  # raises a's error; b never starts
        assert log == ["start a"]
        log.clear()
        with pytest.raises(KeyError):
            async with InOrderWrites() as writes:
                await writes.submit(write("c", 10))
                await asyncio.sleep(0.01)
                raise KeyError("the agent is stopping")
        assert log == ["start c"]  # cancelled in flight: never finished, never acknowledged

    asyncio.run(main())


# --------------------------------------------------------------------------- health


def test_health_is_stalled_only_with_work_waiting_and_no_progress() -> None:
    now = [0.0]
    health = WorkerHealth(
        stall_seconds=30, failures_to_stall=3, clock=lambda: now[0], wall=lambda: 1e9 + now[0]
    )
    assert health.status() == (STARTING, None)
    health.ready({0, 1})
    now[0] = 1000.0
    assert health.status() == (OK, None)  # idle for ever: fine
    health.taken(50)
    now[0] = 1029.0
    assert health.status()[0] == OK
    now[0] = 1031.0
    state, reason = health.status()
    assert state == STALLED and "50 events consumed" in reason and "31 s" in reason
    health.acked(50, {0: 7})
    assert health.status() == (OK, None) and health.next_offsets == {0: 7}
    health.observe_lag({0: 500, 7: 3})  # partition 7 is not ours
    assert health.total_lag == 500
    now[0] = 1062.0
    assert health.status()[0] == STALLED  # events wait on its partitions, nothing consumed for 31 s
    health.observe_lag({0: 0})
    assert health.status()[0] == OK
    for _ in range(3):
        health.write_failed("CannotConnectNowError: starting up")
    state, reason = health.status()
    assert state == STALLED and "3 attempts in a row" in reason and "CannotConnectNowError" in reason
    health.write_succeeded()
    assert health.status() == (OK, None) and health.last_store_at == 1e9 + 1062.0
    health.ready({2})
    assert health.next_offsets == {} and health.lag == {}
    health.stopped()
    assert health.status() == (STOPPED, None)


@pytest.mark.parametrize("module", ["scorer.pipeline", "scorer.failures", "scorer.health", "scorer.faults"])
def test_the_docstring_examples_run(module: str) -> None:
    assert doctest.testmod(importlib.import_module(module)).failed == 0


def test_the_fault_setting_is_parsed_strictly() -> None:
    assert Fault.parse("exit-after-store:12").exit_after_store == 12
    assert Fault.parse("").exit_after_store is None
    for bad in ("exit-after-store:0", "exit-after-store", "crash"):
        with pytest.raises(ValueError):
            Fault.parse(bad)
