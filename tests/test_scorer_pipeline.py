"""The scorer's batch steps without a broker: decode, group by model, score, alerts, dead letters."""

from __future__ import annotations

import asyncio

import numpy as np
import orjson
import pytest

from core.dataset import load_csv
from core.ensemble import Ensemble
from core.events import build_event, encode_event, transaction_id
from scorer.batches import retry_forever
from scorer.metrics import ScorerMetrics
from scorer.pipeline import (
    KIND_HEADER,
    REASON_HEADER,
    alert_messages,
    by_model,
    dead_letter_message,
    decode,
    keep_gathering,
    score_batch,
)
from tests.streaming_fixtures import write_csv


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
        encode_event(
            build_event(row, event_id=transaction_id(row), label=0, run_id=run, produced_at=1_764_086_400.0)
        )
        for row, run in zip(raw.tolist(), run_ids, strict=True)
    ]


BAD = {
    b"{not json": "invalid_json",
    b"[1, 2]": "not_an_object",
    b"NaN": "invalid_json",
    b"": "invalid_json",
}


def test_score_batch_is_one_vectorised_call_in_event_order(ensemble, sample_rows) -> None:
    raw, _ = sample_rows
    batch, dead = decode(_messages(raw))
    assert not dead and len(batch) == len(raw)
    rows = score_batch(ensemble, batch)
    expected = ensemble.score(raw)
    np.testing.assert_allclose(rows.score, expected.score)
    np.testing.assert_array_equal(rows.alert, expected.alert)
    assert rows.model_version == ensemble.version and list(rows.ids) == batch.ids


def test_alerts_name_score_threshold_and_top_features(ensemble, sample_rows) -> None:
    raw, _ = sample_rows
    low = ensemble.with_threshold(float(np.quantile(ensemble.score(raw).score, 0.95)))
    batch, _ = decode(_messages(raw))
    rows = score_batch(low, batch)
    messages = alert_messages(low, rows, top=3)
    assert len(messages) == int(rows.alert.sum()) > 0
    for key, value in messages:
        alert = orjson.loads(value)
        assert key == alert["id"].encode()
        assert alert["score"] >= alert["threshold"] == low.threshold
        assert len(alert["top_features"]) == 3
        assert all(item["feature"] in low.feature_names for item in alert["top_features"])
    never = ensemble.with_threshold(1.1)
    assert alert_messages(never, score_batch(never, batch)) == []


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


def test_every_kind_of_malformed_event_becomes_a_dead_letter(sample_rows) -> None:
    raw, _ = sample_rows
    good = build_event(raw[0].tolist(), event_id="ok", produced_at=1_764_086_400.0)
    variants = dict(BAD)
    missing = dict(good)
    del missing["V7"]
    variants[orjson.dumps(missing)] = "missing_field"
    variants[orjson.dumps({**good, "amount": "12.5"})] = "not_a_number"
    variants[orjson.dumps({**good, "schema_version": 99})] = "schema_version"
    variants[orjson.dumps({**good, "V3": True})] = "not_a_number"
    variants[encode_event(good).replace(b'"V2":', b'"V2":1e999,"x":')] = "invalid_json"
    batch, dead = decode([encode_event(good), *variants])
    assert batch.ids == ["ok"]
    assert [letter.raw for letter in dead] == list(variants)
    for letter, kind in zip(dead, variants.values(), strict=True):
        assert letter.kind == kind, letter.reason
        value, headers = dead_letter_message(letter)
        assert value == letter.raw
        assert dict(headers)[REASON_HEADER].decode() == letter.reason
        assert dict(headers)[KIND_HEADER].decode() == kind


def test_retry_forever_retries_until_the_operation_succeeds() -> None:
    metrics = ScorerMetrics()
    attempts = []

    async def flaky() -> str:
        attempts.append(1)
        if len(attempts) < 3:
            raise ConnectionRefusedError("database down")
        return "stored"

    result = asyncio.run(
        retry_forever(flaky, what="store", on_failure=metrics.store_retries.inc, first=0.001)
    )
    assert result == "stored" and len(attempts) == 3
    assert metrics.store_retries._value.get() == 2
    assert b"fraudstream_store_retries_total 2.0" in metrics.exposition()


def test_unknown_run_events_become_dead_letters_once_and_malformed_ones_are_left_alone() -> None:
    from core.events import build_event, encode_event
    from scorer.pipeline import decode, split_unknown_runs

    good = build_event([1.0] * 30, event_id="live", label=0)
    stray = build_event([1.0] * 30, event_id="stray", run_id="bt-missing")
    malformed_stray = {**stray, "id": "bad", "amount": -1.0}  # already refused for its amount
    odd_run = {**good, "id": "odd", "run_id": ["not", "a", "string"]}  # unhashable run id, refused
    messages = [encode_event(e) for e in (good, stray, malformed_stray, odd_run)]
    batch, dead = decode(messages)
    assert batch.ids == ["live", "stray"] and len(dead) == 2
    kept, refused = split_unknown_runs(messages, batch, {"bt-missing"})
    assert kept.ids == ["live"]
    assert [letter.raw for letter in refused] == [messages[1]]
    assert "unknown backtest run_id 'bt-missing'" in refused[0].reason


def test_a_batch_waits_for_another_take_only_when_the_waiting_events_fill_it() -> None:
    assert keep_gathering(gathered=600, waiting=20_000, batch_size=4000)  # a backlog
    assert keep_gathering(gathered=600, waiting=3400, batch_size=4000)
    assert not keep_gathering(gathered=600, waiting=3399, batch_size=4000)  # would wait for new events
    assert not keep_gathering(gathered=40, waiting=0, batch_size=4000)  # keeping up: score now
    assert not keep_gathering(gathered=4000, waiting=20_000, batch_size=4000)  # full
    assert not keep_gathering(gathered=5000, waiting=20_000, batch_size=4000)
