"""The event contract: every kind of bad event is refused with a reason that says why."""

from __future__ import annotations

import math

import numpy as np
import orjson
import pytest
from pydantic import ValidationError

from core.events import (
    SCHEMA_VERSION,
    TransactionIn,
    build_event,
    decode_batch,
    encode_event,
    transaction_id,
)
from core.features import EVENT_FEATURES, PCA_COLUMNS

VALUES = [float(i) for i in range(30)]


def _event(**changes: object) -> bytes:
    event = build_event(VALUES, event_id="tx-1", label=1, run_id="run-a", produced_at=1700000000.5)
    event.update(changes)
    return orjson.dumps(event)


def test_a_good_event_round_trips_into_the_batch_arrays() -> None:
    batch, dead = decode_batch(
        [encode_event(build_event(VALUES, event_id="tx-1", label=0, produced_at=12.5))]
    )
    assert dead == []
    assert batch.ids == ["tx-1"] and batch.labels == [0] and batch.run_ids == [None]
    assert batch.produced_at == [12.5]
    assert batch.features.shape == (1, 30) and batch.features.dtype == np.float64
    np.testing.assert_array_equal(batch.features[0], VALUES)


def test_the_event_carries_every_field_of_the_design() -> None:
    event = build_event(VALUES, event_id="x")
    assert set(event) == {"schema_version", "id", *EVENT_FEATURES, "label", "run_id", "produced_at"}
    assert event["schema_version"] == SCHEMA_VERSION


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{not json", "invalid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'"text"', "must be a JSON object"),
        (_event(schema_version=2), "unknown schema_version 2"),
        (_event(schema_version="1"), "unknown schema_version '1'"),
        (_event(schema_version=None), "unknown schema_version None"),
        (_event(id=""), "field 'id'"),
        (_event(id=7), "field 'id'"),
        (_event(V7="0.5"), "field 'V7' must be a number, got str"),
        (_event(amount=True), "field 'amount' must be a number, got bool"),
        (_event(amount=-1.0), "field 'amount' must be >= 0"),
        (_event(time=-3), "field 'time' must be >= 0"),
        (_event(label=2), "field 'label' must be 0, 1 or null"),
        (_event(run_id=""), "field 'run_id'"),
        (_event(produced_at="now"), "field 'produced_at'"),
        (_event(V1=None), "field 'V1' must be a number, got NoneType"),
        (b'{"schema_version": 1, "id": "a", "time": NaN}', "invalid JSON"),
        (b'{"schema_version": 1, "id": "a", "time": 1e999}', "number is infinity"),
    ],
)
def test_every_kind_of_bad_event_becomes_a_dead_letter_with_its_reason(raw: bytes, reason: str) -> None:
    batch, dead = decode_batch([raw, _event()])
    assert len(batch) == 1  # the good event after the bad one still goes through
    assert len(dead) == 1
    assert dead[0].raw == raw
    assert reason in dead[0].reason


def test_a_missing_field_is_named() -> None:
    event = orjson.loads(_event())
    del event["V13"]
    _, dead = decode_batch([orjson.dumps(event)])
    assert dead[0].reason == "missing field 'V13'"


def test_transaction_ids_are_stable_and_tell_duplicates_apart() -> None:
    assert transaction_id(VALUES) == transaction_id(list(VALUES))
    assert transaction_id(VALUES) != transaction_id(VALUES, occurrence=1)
    assert transaction_id(VALUES) != transaction_id([*VALUES[:-1], 29.01])


def _body(**changes: object) -> dict:
    body = {"time": 10.0, "amount": 5.0, **{name: 0.1 for name in PCA_COLUMNS}}
    body.update(changes)
    return body


def test_api_body_model_accepts_a_transaction_in_feature_order() -> None:
    model = TransactionIn.model_validate(_body(V3=3.0))
    values = model.feature_values()
    assert len(values) == 30 and values[0] == 10.0 and values[3] == 3.0 and values[-1] == 5.0


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"V3": math.nan}, "V3"),
        ({"amount": math.inf}, "amount"),
        ({"amount": "12"}, "amount"),
        ({"V28": True}, "V28"),
        ({"time": -1}, "time"),
        ({"label": 3}, "label"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_api_body_model_refuses_bad_values_naming_the_field(change: dict, field: str) -> None:
    with pytest.raises(ValidationError) as error:
        TransactionIn.model_validate(_body(**change))
    assert field in str(error.value)


def test_api_body_model_requires_every_feature() -> None:
    body = _body()
    del body["V20"]
    with pytest.raises(ValidationError, match="V20"):
        TransactionIn.model_validate(body)
