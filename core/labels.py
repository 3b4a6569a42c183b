"""The label event: one verdict on one transaction, the contract of the `labels` topic.

An analyst's review, a chargeback that arrives days later, a label replayed from history:
each is one JSON object on the `labels` topic, keyed by the transaction id:

    {"schema_version": 1, "label_id": "3c1f...", "transaction_id": "5f0c...", "run_id": "",
     "label": 1, "source": "analyst", "who": "alice", "note": "card reported stolen",
     "decided_at": 1764086400.5, "submitted_by": "admin"}

`label_id` is the verdict's identity (the idempotency key: a redelivered verdict is never
stored twice); `run_id` is '' for the live stream or a backtest run's id; `label` is 1 for
fraud, 0 for not fraud; `who` names the person or system that decided, `submitted_by`
(optional) the credential that published it when that is another one (the dashboard's
token acting for an analyst); `decided_at` is epoch seconds.

The contract is checked here and nowhere else: the scorer's labels agent decodes whole
batches with `decode_labels` (never raises: a bad message comes back as a `DeadLetter`
with its kind and a reason that names the field), and the API builds every verdict with
`build_label`, which applies the same `check_label`. The rules are those of the
transaction contract (`core.events`): text PostgreSQL can hold (no NUL, no unpaired
surrogate), bounded lengths, finite numbers, epoch *seconds*:

    >>> event = build_label(transaction_id="5f0c", label=1, source="analyst", who="alice",
    ...                     label_id="r-1", decided_at=1764086400.0)
    >>> parse_label(orjson.loads(encode_label(event))) == event
    True
    >>> try:
    ...     build_label(transaction_id="5f0c", label=2, source="analyst", who="alice")
    ... except EventError as error:
    ...     print(error.kind, "-", error)
    invalid_field - field 'label' must be 0 (not fraud) or 1 (fraud), got 2
"""

from __future__ import annotations

import hashlib
import math
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from enum import StrEnum

import orjson

from core.events import (
    MAX_ID_LENGTH,
    MAX_RUN_ID_LENGTH,
    PRODUCED_AT_MAX,
    PRODUCED_AT_MIN,
    DeadLetter,
    DeadLetterKind,
    EventError,
    check_envelope,
    check_text,
)

LABEL_SCHEMA_VERSION = 1
MAX_WHO_LENGTH = 128
MAX_NOTE_LENGTH = 2000
LIVE_RUN = ""


class LabelSource(StrEnum):
    """Who produced a verdict: a person reviewing an alert, the card network, or a replay of history."""

    ANALYST = "analyst"
    CHARGEBACK = "chargeback"
    REPLAY = "replay"


_SOURCES = frozenset(source.value for source in LabelSource)

#: The two verdicts an analyst gives, as the API names them.
VERDICTS = {"fraud": 1, "not_fraud": 0}


@dataclass(frozen=True, slots=True)
class LabelEvent:
    """One verdict, as the contract allows it (build it with `build_label` or `parse_label`)."""

    label_id: str
    transaction_id: str
    run_id: str  # '' = the live stream
    label: int  # 1 fraud, 0 not fraud
    source: LabelSource
    who: str
    note: str | None
    decided_at: float  # epoch seconds
    submitted_by: str | None = None

    def same_verdict(self, other: LabelEvent) -> bool:
        """Whether `other` is this verdict again: everything equal but when it was (re)sent.

        A chargeback replayed twice carries the same `label_id` and a later `decided_at`;
        that is the same verdict (the first stored is kept). Anything else that differs
        under one `label_id` is a conflict.
        """
        return (
            self.label_id == other.label_id
            and self.transaction_id == other.transaction_id
            and self.run_id == other.run_id
            and self.label == other.label
            and self.source == other.source
            and self.who == other.who
            and self.note == other.note
            and self.submitted_by == other.submitted_by
        )


@dataclass(frozen=True, slots=True)
class LabelBatch:
    """The valid verdicts of one batch of messages, with the position of each one's message."""

    events: list[LabelEvent]
    positions: list[int]

    def __len__(self) -> int:
        return len(self.events)


def _check_epoch(name: str, value: object) -> float:
    """Epoch seconds in [2000-01-01, 2100-01-01): a finite number, not milliseconds."""
    if type(value) not in (int, float) or not (
        math.isfinite(value) and PRODUCED_AT_MIN <= value < PRODUCED_AT_MAX  # type: ignore[arg-type]
    ):
        raise EventError(
            DeadLetterKind.BAD_TIMESTAMP,
            f"field {name!r} must be epoch seconds between 2000-01-01 and 2100-01-01 "
            f"(not milliseconds), got {value!r:.40}",
        )
    return float(value)  # type: ignore[arg-type]


def _check_optional_text(name: str, value: object, max_length: int) -> str | None:
    """None or '' (both mean "none"), or text PostgreSQL can hold, at most `max_length`."""
    if value is None or value == "":
        return None
    return check_text(name, value, max_length)


def _required(fields: Mapping[str, object], name: str) -> object:
    if name not in fields:
        raise EventError(DeadLetterKind.MISSING_FIELD, f"missing field {name!r}")
    return fields[name]


def check_label(fields: Mapping[str, object]) -> LabelEvent:
    """Apply the label contract to one verdict's fields; raise `EventError` naming the first problem.

    The one statement of the rules, used by `parse_label` (every message on the topic) and
    `build_label` (every verdict the API or the replay makes). Unknown fields are ignored,
    as for transactions.
    """
    label_id = check_text("label_id", _required(fields, "label_id"), MAX_ID_LENGTH)
    transaction_id = check_text("transaction_id", _required(fields, "transaction_id"), MAX_ID_LENGTH)
    run_id = _check_optional_text("run_id", fields.get("run_id"), MAX_RUN_ID_LENGTH) or LIVE_RUN
    label = _required(fields, "label")
    if type(label) is not int or label not in (0, 1):
        raise EventError(
            DeadLetterKind.INVALID_FIELD,
            f"field 'label' must be 0 (not fraud) or 1 (fraud), got {label!r:.40}",
        )
    source = _required(fields, "source")
    if type(source) is not str or source not in _SOURCES:
        raise EventError(
            DeadLetterKind.INVALID_FIELD,
            f"field 'source' must be one of {', '.join(s.value for s in LabelSource)}, got {source!r:.40}",
        )
    who = check_text("who", _required(fields, "who"), MAX_WHO_LENGTH)
    note = _check_optional_text("note", fields.get("note"), MAX_NOTE_LENGTH)
    decided_at = _check_epoch("decided_at", _required(fields, "decided_at"))
    submitted_by = _check_optional_text("submitted_by", fields.get("submitted_by"), MAX_WHO_LENGTH)
    return LabelEvent(
        label_id, transaction_id, run_id, label, LabelSource(source), who, note, decided_at, submitted_by
    )


def parse_label(event: object) -> LabelEvent:
    """Validate one decoded message; raise `EventError` naming the first problem found."""
    return check_label(check_envelope(event, "label event", LABEL_SCHEMA_VERSION))


def decode_labels(messages: Iterable[bytes]) -> tuple[LabelBatch, list[DeadLetter]]:
    """Decode and validate a batch of raw messages; bad ones become dead letters (never raises)."""
    events: list[LabelEvent] = []
    positions: list[int] = []
    dead: list[DeadLetter] = []
    for position, raw in enumerate(messages):
        try:
            decoded = orjson.loads(raw)
        except orjson.JSONDecodeError as error:
            dead.append(DeadLetter(raw, DeadLetterKind.INVALID_JSON, f"invalid JSON: {error}", position))
            continue
        try:
            events.append(parse_label(decoded))
        except EventError as error:
            dead.append(DeadLetter(raw, error.kind, str(error), position))
            continue
        positions.append(position)
    return LabelBatch(events, positions), dead


def build_label(
    *,
    transaction_id: str,
    label: int,
    source: LabelSource | str,
    who: str,
    run_id: str | None = None,
    note: str | None = None,
    label_id: str | None = None,
    decided_at: float | None = None,
    submitted_by: str | None = None,
) -> LabelEvent:
    """A verdict, checked by the contract (`EventError` names what is wrong); a new id and now by default."""
    return check_label(
        {
            "label_id": label_id if label_id is not None else new_label_id(),
            "transaction_id": transaction_id,
            "run_id": run_id,
            "label": label,
            "source": str(source),
            "who": who,
            "note": note,
            "decided_at": time.time() if decided_at is None else decided_at,
            "submitted_by": submitted_by,
        }
    )


def label_dict(event: LabelEvent) -> dict:
    """The event as it travels on the topic."""
    body = {"schema_version": LABEL_SCHEMA_VERSION, **asdict(event)}
    body["source"] = event.source.value
    return body


def encode_label(event: LabelEvent) -> bytes:
    return orjson.dumps(label_dict(event))


def new_label_id() -> str:
    """A fresh verdict id (a person's decision: every one is new)."""
    return uuid.uuid4().hex


def chargeback_label_id(transaction_id: str, run_id: str | None = None) -> str:
    """The stable id of a replayed row's chargeback: the same row always gets the same one.

    So replaying a file twice publishes the same verdicts, and the second is a redelivery.

        >>> chargeback_label_id("5f0c") == chargeback_label_id("5f0c", "")
        True
        >>> chargeback_label_id("5f0c") != chargeback_label_id("5f0c", "bt-1")
        True
    """
    digest = hashlib.blake2b(f"{run_id or LIVE_RUN}\0{transaction_id}".encode(), digest_size=12)
    return f"cb-{digest.hexdigest()}"
