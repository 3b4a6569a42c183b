"""The event contract: every kind of bad event is refused with its kind and a reason that says why.

One contract, three edges: the event decoder, the API's body model and the CSV readers
refuse the same values (checked here on hostile input with hypothesis, not only on the
cases we thought of).
"""

from __future__ import annotations

import doctest
import math

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

import core.events
from core.events import (
    MAX_ABS_FEATURE,
    PRODUCED_AT_MAX,
    PRODUCED_AT_MIN,
    SCHEMA_VERSION,
    DeadLetterKind,
    EventError,
    TransactionIn,
    build_event,
    check_transaction,
    decode_batch,
    encode_event,
    feature_problem,
    first_refused_row,
    transaction_id,
)
from core.features import EVENT_FEATURES, PCA_COLUMNS

VALUES = [float(i) for i in range(30)]
NOW = 1_764_086_400.5
Kind = DeadLetterKind


def _event(**changes: object) -> bytes:
    event = build_event(VALUES, event_id="tx-1", label=1, run_id="run-a", produced_at=NOW)
    event.update(changes)
    return orjson.dumps(event)


def test_a_good_event_round_trips_into_the_batch_arrays() -> None:
    batch, dead = decode_batch([encode_event(build_event(VALUES, event_id="tx-1", label=0, produced_at=NOW))])
    assert dead == []
    assert batch.ids == ["tx-1"] and batch.labels == [0] and batch.run_ids == [None]
    assert batch.produced_at == [NOW] and batch.positions == [0]
    assert batch.features.shape == (1, 30) and batch.features.dtype == np.float64
    np.testing.assert_array_equal(batch.features[0], VALUES)


def test_the_event_carries_every_field_of_the_design() -> None:
    event = build_event(VALUES, event_id="x")
    assert set(event) == {"schema_version", "id", *EVENT_FEATURES, "label", "run_id", "produced_at"}
    assert event["schema_version"] == SCHEMA_VERSION


@pytest.mark.parametrize(
    ("raw", "kind", "reason"),
    [
        (b"{not json", Kind.INVALID_JSON, "invalid JSON"),
        (b"", Kind.INVALID_JSON, "invalid JSON"),
        (b'"\\ud800"', Kind.INVALID_JSON, "surrogate"),
        (b"[1, 2]", Kind.NOT_AN_OBJECT, "must be a JSON object"),
        (b'"text"', Kind.NOT_AN_OBJECT, "must be a JSON object"),
        (_event(schema_version=2), Kind.SCHEMA_VERSION, "unknown schema_version 2"),
        (_event(schema_version="1"), Kind.SCHEMA_VERSION, "unknown schema_version '1'"),
        (_event(schema_version=None), Kind.SCHEMA_VERSION, "unknown schema_version None"),
        (_event(schema_version=True), Kind.SCHEMA_VERSION, "unknown schema_version True"),
        (_event(id=""), Kind.INVALID_FIELD, "field 'id'"),
        (_event(id=7), Kind.INVALID_FIELD, "field 'id'"),
        (_event(id="x" * 129), Kind.INVALID_FIELD, "field 'id'"),
        (_event(id="a\x00b"), Kind.INVALID_TEXT, "field 'id' must not contain NUL"),
        (_event(run_id="run\x00"), Kind.INVALID_TEXT, "field 'run_id' must not contain NUL"),
        (_event(V7="0.5"), Kind.NOT_A_NUMBER, "field 'V7' must be a number, got str"),
        (_event(amount=True), Kind.NOT_A_NUMBER, "field 'amount' must be a number, got bool"),
        (_event(V1=None), Kind.NOT_A_NUMBER, "field 'V1' must be a number, got NoneType"),
        (_event(amount=-1.0), Kind.OUT_OF_RANGE, "field 'amount' must be >= 0"),
        (_event(time=-3), Kind.OUT_OF_RANGE, "field 'time' must be >= 0"),
        (_event(V5=1e10), Kind.OUT_OF_RANGE, "field 'V5' must be within ±1e+09"),
        (_event(V5=-1e300), Kind.OUT_OF_RANGE, "field 'V5' must be within ±1e+09"),
        (_event(V9=2**64 - 1), Kind.OUT_OF_RANGE, "field 'V9' must be within"),
        (_event(label=2), Kind.INVALID_FIELD, "field 'label' must be 0, 1 or null"),
        (_event(label=True), Kind.INVALID_FIELD, "field 'label' must be 0, 1 or null"),
        (_event(run_id=""), Kind.INVALID_FIELD, "field 'run_id'"),
        (_event(produced_at="now"), Kind.BAD_TIMESTAMP, "field 'produced_at'"),
        (_event(produced_at=NOW * 1000), Kind.BAD_TIMESTAMP, "not milliseconds or nanoseconds"),
        (_event(produced_at=int(NOW * 1e9)), Kind.BAD_TIMESTAMP, "field 'produced_at'"),
        (_event(produced_at=12.5), Kind.BAD_TIMESTAMP, "field 'produced_at'"),
        (_event(produced_at=-NOW), Kind.BAD_TIMESTAMP, "field 'produced_at'"),
        (_event(produced_at=False), Kind.BAD_TIMESTAMP, "field 'produced_at'"),
        (b'{"schema_version": 1, "id": "a", "time": NaN}', Kind.INVALID_JSON, "invalid JSON"),
        (b'{"schema_version": 1, "id": "a", "time": 1e999}', Kind.INVALID_JSON, "number is infinity"),
    ],
)
def test_every_kind_of_bad_event_becomes_a_dead_letter_with_its_kind_and_reason(
    raw: bytes, kind: DeadLetterKind, reason: str
) -> None:
    batch, dead = decode_batch([_event(id="before"), raw, _event(id="after")])
    assert batch.ids == ["before", "after"]  # the good events around the bad one still go through
    assert batch.positions == [0, 2]
    (letter,) = dead
    assert letter.raw == raw and letter.position == 1
    assert letter.kind is kind
    assert reason in letter.reason


def test_a_missing_field_is_named() -> None:
    event = orjson.loads(_event())
    del event["V13"]
    _, (letter,) = decode_batch([orjson.dumps(event)])
    assert letter.reason == "missing field 'V13'" and letter.kind is Kind.MISSING_FIELD


def test_values_each_within_the_bound_are_accepted_even_when_their_sum_is_not() -> None:
    big = [0.0, *([0.9 * MAX_ABS_FEATURE] * 28), MAX_ABS_FEATURE]
    batch, dead = decode_batch([encode_event(build_event(big, event_id="big", produced_at=NOW))])
    assert dead == [] and batch.features[0].tolist() == big


def test_produced_at_bounds_are_half_open_epoch_seconds() -> None:
    batch, dead = decode_batch([_event(produced_at=PRODUCED_AT_MIN), _event(produced_at=int(NOW))])
    assert not dead and batch.produced_at == [PRODUCED_AT_MIN, float(int(NOW))]
    _, dead = decode_batch([_event(produced_at=PRODUCED_AT_MAX)])
    assert dead[0].kind is Kind.BAD_TIMESTAMP


def test_text_postgresql_cannot_hold_is_refused_even_when_json_could_not_carry_it() -> None:
    """An unpaired surrogate never comes out of orjson, but a Python caller can pass one."""
    fields = orjson.loads(_event())
    with pytest.raises(EventError, match="unpaired surrogate") as error:
        check_transaction({**fields, "id": "a\ud800"})
    assert error.value.kind is Kind.INVALID_TEXT
    assert check_transaction({**fields, "id": "ünïcødé ✓"})[0] == "ünïcødé ✓"


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
    event_id, values, label, run_id, produced_at = model.checked()
    assert (event_id, label, run_id, produced_at) == (None, None, None, None)
    assert len(values) == 30 and values[0] == 10.0 and values[3] == 3.0 and values[-1] == 5.0


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"V3": math.nan}, "V3"),
        ({"amount": math.inf}, "amount"),
        ({"amount": "12"}, "amount"),
        ({"V28": True}, "V28"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_api_body_model_refuses_a_bad_json_shape_naming_the_field(change: dict, field: str) -> None:
    with pytest.raises(ValidationError) as error:
        TransactionIn.model_validate(_body(**change))
    assert field in str(error.value)


@pytest.mark.parametrize(
    ("change", "kind", "field"),
    [
        ({"time": -1}, Kind.OUT_OF_RANGE, "time"),
        ({"V5": 1e300}, Kind.OUT_OF_RANGE, "V5"),
        ({"label": 3}, Kind.INVALID_FIELD, "label"),
        ({"id": "a\x00b"}, Kind.INVALID_TEXT, "id"),
        ({"run_id": "\x00"}, Kind.INVALID_TEXT, "run_id"),
        ({"id": ""}, Kind.INVALID_FIELD, "id"),
    ],
)
def test_api_bodies_go_through_the_event_contract(change: dict, kind: DeadLetterKind, field: str) -> None:
    body = TransactionIn.model_validate(_body(**change))
    with pytest.raises(EventError, match=f"field '{field}'") as error:
        body.checked()
    assert error.value.kind is kind


def test_api_body_model_requires_every_feature() -> None:
    body = _body()
    del body["V20"]
    with pytest.raises(ValidationError, match="V20"):
        TransactionIn.model_validate(body)


def test_the_docstring_examples_run() -> None:
    assert doctest.testmod(core.events).failed == 0


# --------------------------------------------------------------------------- hostile input

_json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=140)
)
_json = st.recursive(
    _json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
#: A field value: usually plausible, often at or beyond a bound, sometimes any JSON at all.
_number = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.floats(min_value=-1e3, max_value=1e3),
    st.sampled_from([0, -0.0, MAX_ABS_FEATURE, -MAX_ABS_FEATURE, 1e9 + 1, 2**64 - 1, -1, 5e-324]),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    _json,
)
_text = st.one_of(st.text(max_size=140), st.sampled_from(["a\x00", "", "x" * 128, "x" * 129]), _json)


@st.composite
def hostile_events(draw: st.DrawFn) -> object:
    """Anything JSON can carry, most of it shaped like an event with some fields wrong."""
    if draw(st.integers(0, 9)) == 0:
        return draw(_json)
    event: dict[str, object] = {"schema_version": draw(st.sampled_from([1, 1, 1, 2, "1", None, True]))}
    event["id"] = draw(_text)
    for name in EVENT_FEATURES:
        event[name] = draw(_number) if draw(st.integers(0, 5)) == 0 else draw(st.floats(0, 100))
    event["label"] = draw(st.sampled_from([None, 0, 1, 2, True, 0.0, "1"]))
    event["run_id"] = draw(st.one_of(st.none(), _text))
    event["produced_at"] = draw(
        st.one_of(st.none(), st.floats(PRODUCED_AT_MIN, PRODUCED_AT_MAX), _number, st.just(NOW * 1e6))
    )
    for name in draw(st.lists(st.sampled_from(list(event)), max_size=2)):
        event.pop(name, None)
    return event


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hostile_events())
def test_decode_never_raises_and_lets_through_only_what_postgresql_and_the_model_can_take(event) -> None:
    raw = orjson.dumps(event)
    batch, dead = decode_batch([raw])
    if dead:
        (letter,) = dead
        assert letter.kind in set(Kind) and letter.reason and letter.raw == raw
        return
    (event_id,) = batch.ids
    for text in (event_id, batch.run_ids[0]):
        assert text is None or (0 < len(text) <= 128 and "\x00" not in text and text.encode())
    row = batch.features[0]
    assert np.all(np.isfinite(row)) and np.all(np.abs(row) <= MAX_ABS_FEATURE)
    assert row[0] >= 0 and row[-1] >= 0
    assert batch.labels[0] in (None, 0, 1)
    assert batch.produced_at[0] is None or PRODUCED_AT_MIN <= batch.produced_at[0] < PRODUCED_AT_MAX


@settings(max_examples=300, deadline=None)
@given(hostile_events())
def test_the_api_body_and_the_event_decoder_agree(event) -> None:
    """Whatever the API's body model lets through, the contract judges exactly as for an event."""
    if not isinstance(event, dict):
        return
    body_fields = {k: v for k, v in event.items() if k not in ("schema_version", "produced_at")}
    try:
        body = TransactionIn.model_validate(body_fields)
    except ValidationError:
        return  # not the JSON shape of a body (missing field, a string for a number...)
    if body.id is None:
        return  # the API makes an id; events must bring one
    as_event = {**body.model_dump(), "schema_version": 1}
    batch, dead = decode_batch([orjson.dumps(as_event)])
    try:
        _, values, *_ = body.checked()
    except EventError as error:
        assert dead and dead[0].kind is error.kind and dead[0].reason == str(error)
    else:
        assert not dead and batch.features[0].tolist() == [float(v) for v in values]


_cells = st.one_of(
    st.floats(-10, 10),
    st.sampled_from([math.nan, math.inf, -math.inf, 1e9, 1e9 + 1, -1e9, -1e10, -1.0, -0.0, 0.0]),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(_cells, min_size=30, max_size=30), min_size=1, max_size=6))
def test_the_vectorised_csv_check_finds_exactly_the_rows_the_contract_refuses(rows) -> None:
    matrix = np.array(rows, dtype=np.float64)
    refused = [i for i, row in enumerate(rows) if feature_problem(row) is not None]
    assert first_refused_row(matrix) == (refused[0] if refused else None)
