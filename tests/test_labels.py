"""The label event contract (`core.labels`): one validator, clear refusals, never an exception."""

from __future__ import annotations

import math

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.events import DeadLetterKind, EventError
from core.labels import (
    LabelEvent,
    LabelSource,
    build_label,
    chargeback_label_id,
    decode_labels,
    encode_label,
    label_dict,
    parse_label,
)

GOOD = {
    "schema_version": 1,
    "label_id": "r-1",
    "transaction_id": "5f0c1e",
    "run_id": "",
    "label": 1,
    "source": "analyst",
    "who": "alice",
    "note": "card reported stolen",
    "decided_at": 1_764_086_400.25,
    "submitted_by": "admin",
}


def test_a_good_event_round_trips() -> None:
    event = parse_label(GOOD)
    assert event == LabelEvent(
        "r-1",
        "5f0c1e",
        "",
        1,
        LabelSource.ANALYST,
        "alice",
        "card reported stolen",
        1_764_086_400.25,
        "admin",
    )
    assert parse_label(orjson.loads(encode_label(event))) == event
    assert label_dict(event)["source"] == "analyst" and label_dict(event)["schema_version"] == 1


def test_optional_fields_and_their_defaults() -> None:
    event = parse_label({k: v for k, v in GOOD.items() if k not in ("run_id", "note", "submitted_by")})
    assert (event.run_id, event.note, event.submitted_by) == ("", None, None)
    assert parse_label({**GOOD, "run_id": None, "note": ""}).note is None
    # unknown fields are ignored, as for transactions
    assert parse_label({**GOOD, "extra": [1, 2]}).label_id == "r-1"
    assert parse_label({**GOOD, "decided_at": 1_764_086_400}).decided_at == 1_764_086_400.0


@pytest.mark.parametrize(
    ("change", "kind", "words"),
    [
        ({"schema_version": 2}, DeadLetterKind.SCHEMA_VERSION, "schema_version"),
        ({"schema_version": True}, DeadLetterKind.SCHEMA_VERSION, "schema_version"),
        ({"label_id": None}, DeadLetterKind.INVALID_FIELD, "'label_id'"),
        ({"label_id": "x" * 129}, DeadLetterKind.INVALID_FIELD, "'label_id'"),
        ({"transaction_id": "a\x00b"}, DeadLetterKind.INVALID_TEXT, "NUL"),
        ({"transaction_id": "\ud800"}, DeadLetterKind.INVALID_TEXT, "surrogate"),
        ({"run_id": "r" * 65}, DeadLetterKind.INVALID_FIELD, "'run_id'"),
        ({"label": 2}, DeadLetterKind.INVALID_FIELD, "'label'"),
        ({"label": True}, DeadLetterKind.INVALID_FIELD, "'label'"),
        ({"label": 1.0}, DeadLetterKind.INVALID_FIELD, "'label'"),
        ({"source": "guess"}, DeadLetterKind.INVALID_FIELD, "'source'"),
        ({"who": ""}, DeadLetterKind.INVALID_FIELD, "'who'"),
        ({"who": "w" * 129}, DeadLetterKind.INVALID_FIELD, "'who'"),
        ({"note": "n" * 2001}, DeadLetterKind.INVALID_FIELD, "'note'"),
        ({"note": "bad\x00note"}, DeadLetterKind.INVALID_TEXT, "'note'"),
        ({"note": 5}, DeadLetterKind.INVALID_FIELD, "'note'"),
        ({"decided_at": 1_764_086_400_000}, DeadLetterKind.BAD_TIMESTAMP, "milliseconds"),
        ({"decided_at": math.nan}, DeadLetterKind.BAD_TIMESTAMP, "'decided_at'"),
        ({"decided_at": math.inf}, DeadLetterKind.BAD_TIMESTAMP, "'decided_at'"),
        ({"decided_at": "yesterday"}, DeadLetterKind.BAD_TIMESTAMP, "'decided_at'"),
        ({"decided_at": False}, DeadLetterKind.BAD_TIMESTAMP, "'decided_at'"),
        ({"submitted_by": "s\x00"}, DeadLetterKind.INVALID_TEXT, "'submitted_by'"),
    ],
)
def test_each_refusal_names_its_field_and_kind(change: dict, kind: DeadLetterKind, words: str) -> None:
    with pytest.raises(EventError) as refused:
        parse_label({**GOOD, **change})
    assert refused.value.kind == kind
    assert words in str(refused.value)


@pytest.mark.parametrize("field", ["label_id", "transaction_id", "label", "source", "who", "decided_at"])
def test_a_missing_required_field_is_named(field: str) -> None:
    with pytest.raises(EventError) as refused:
        parse_label({k: v for k, v in GOOD.items() if k != field})
    assert refused.value.kind == DeadLetterKind.MISSING_FIELD and field in str(refused.value)


def test_build_label_checks_with_the_same_rules() -> None:
    event = build_label(transaction_id="t", label=0, source="chargeback", who="network")
    assert len(event.label_id) == 32 and event.source is LabelSource.CHARGEBACK and event.run_id == ""
    with pytest.raises(EventError, match="'who'"):
        build_label(transaction_id="t", label=0, source="analyst", who="x\x00")


def test_decode_never_raises_and_keeps_positions() -> None:
    messages = [b"{", b"[1]", orjson.dumps(GOOD), orjson.dumps({**GOOD, "label": 7}), b"\xff\xfe"]
    batch, dead = decode_labels(messages)
    assert batch.positions == [2] and batch.events[0].label_id == "r-1"
    assert [(d.position, d.kind) for d in dead] == [
        (0, DeadLetterKind.INVALID_JSON),
        (1, DeadLetterKind.NOT_AN_OBJECT),
        (3, DeadLetterKind.INVALID_FIELD),
        (4, DeadLetterKind.INVALID_JSON),
    ]
    assert all(d.raw == messages[d.position] for d in dead)


def test_a_replayed_chargeback_has_a_stable_id() -> None:
    assert chargeback_label_id("abc") == chargeback_label_id("abc", None) == chargeback_label_id("abc", "")
    assert len({chargeback_label_id("abc"), chargeback_label_id("abd"), chargeback_label_id("abc", "r")}) == 3


def test_same_verdict_ignores_only_when_it_was_sent() -> None:
    event = parse_label(GOOD)
    assert event.same_verdict(parse_label({**GOOD, "decided_at": GOOD["decided_at"] + 3600}))
    for change in (
        {"label": 0},
        {"who": "bob"},
        {"note": None},
        {"transaction_id": "other"},
        {"run_id": "r"},
    ):
        assert not event.same_verdict(parse_label({**GOOD, **change})), change


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
_fields = st.fixed_dictionaries(
    {},
    optional={
        "schema_version": st.sampled_from([1, 1, 1, 2, "1", None]),
        "label_id": st.text(max_size=140) | _json,
        "transaction_id": st.text(max_size=140) | _json,
        "run_id": st.none() | st.text(max_size=70),
        "label": st.sampled_from([0, 1, 2, -1, True, 1.0, None, "1"]),
        "source": st.sampled_from(["analyst", "chargeback", "replay", "Analyst", "", None]),
        "who": st.text(max_size=140) | _json,
        "note": st.none() | st.text(max_size=2100) | _json,
        "decided_at": st.floats(allow_nan=True, allow_infinity=True) | st.integers() | _json,
        "submitted_by": st.none() | st.text(max_size=140),
    },
)


#: Hostile fields alone, and hostile fields over a good event (so both answers are exercised).
_events = st.one_of(_fields, _fields.map(lambda fields: {**GOOD, **fields}))


@settings(max_examples=400, deadline=None)
@given(fields=_events)
def test_hostile_events_are_refused_with_a_kind_or_accepted_whole(fields: dict) -> None:
    """Whatever comes, the decoder answers: a valid event (that survives the round trip) or a dead letter."""
    raw = orjson.dumps(fields, option=orjson.OPT_NON_STR_KEYS) if _encodable(fields) else b"\x00"
    batch, dead = decode_labels([raw])
    assert len(batch) + len(dead) == 1
    if dead:
        assert isinstance(dead[0].kind, DeadLetterKind) and dead[0].reason
        return
    event = batch.events[0]
    assert parse_label(orjson.loads(encode_label(event))) == event
    assert event.label in (0, 1) and "\x00" not in event.transaction_id + event.who + (event.note or "")


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=300))
def test_arbitrary_bytes_never_raise(raw: bytes) -> None:
    batch, dead = decode_labels([raw])
    assert len(batch) + len(dead) == 1


def _encodable(value: object) -> bool:
    try:
        orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)
        return True
    except (TypeError, orjson.JSONEncodeError):
        return False
