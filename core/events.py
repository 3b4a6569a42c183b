"""The transaction event: the contract between anyone who publishes and the scorer.

An event is one JSON object, keyed on the topic by its `id`:

    {"schema_version": 1, "id": "5f0c...", "time": 0.0, "V1": -1.36, ..., "V28": -0.02,
     "amount": 149.62, "label": 0, "run_id": null, "produced_at": 1764086400.123}

`label` is ground truth (present in replays, never used for scoring); `run_id` tags a
backtest; `produced_at` is the producer's wall clock in epoch seconds, for end-to-end
latency. The scorer decodes whole batches with `decode_batch`, which never raises: every
bad message comes back as a `DeadLetter` with a machine-readable `kind` and the reason,
so the stream keeps going.

The contract is checked here and nowhere else: `parse_event` (the event decoder),
`check_transaction` (the API's bodies go through it after `TransactionIn` parsed their
JSON shape) and `feature_problem` (the CSV readers) apply the same rules, so a row the
producer sends is one the scorer accepts, and a value PostgreSQL or the model would
refuse never gets past the edge:

    >>> fields = {"id": "a\\x00b", "time": 0, "amount": 1, **dict.fromkeys(PCA_COLUMNS, 0)}
    >>> try:
    ...     check_transaction(fields)
    ... except EventError as error:
    ...     print(error.kind, "-", error)
    invalid_text - field 'id' must not contain NUL characters (PostgreSQL text cannot hold them)
"""

from __future__ import annotations

import hashlib
import math
import operator
import struct
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator

from core.features import EVENT_FEATURES, PCA_COLUMNS

SCHEMA_VERSION = 1
MAX_ID_LENGTH = 128
MAX_RUN_ID_LENGTH = 64

#: Largest magnitude of a feature. The data stay within ±200,000 (`time`; amounts below
#: 30,000, V1..V28 within ±120). At 1e9 the model's float32 arithmetic is far from its
#: limits (measured on a trained bundle: reconstruction error ~1e16, finite); beyond ~1e20
#: the autoencoder's squared residuals reach float32's 3.4e38, at 1e30 TreeSHAP fails on
#: infinite inputs and at 1e100 the reconstruction error is NaN.
MAX_ABS_FEATURE = 1e9

#: `produced_at` must be epoch *seconds* in [2000-01-01, 2100-01-01). A producer that sends
#: milliseconds (1.7e12), microseconds or nanoseconds lands far outside, instead of
#: storing latencies of decades (or values PostgreSQL's timestamp refuses: past year
#: 294276); a clock before 2000 is not a clock anyone should trust for latency either.
PRODUCED_AT_MIN = 946_684_800.0
PRODUCED_AT_MAX = 4_102_444_800.0

#: Per-feature bounds in EVENT_FEATURES (= RAW_FEATURES) order: `time` and `amount` cannot be
#: negative. NaN fails every comparison, so `low <= x <= high` also means "finite".
FEATURE_LOW = np.array([0.0, *([-MAX_ABS_FEATURE] * len(PCA_COLUMNS)), 0.0])
FEATURE_HIGH = np.full(len(EVENT_FEATURES), MAX_ABS_FEATURE)

_PACK_FEATURES = struct.Struct(f"<{len(EVENT_FEATURES)}dq")
_NUMBER_TYPES = frozenset((float, int))
_NON_NEGATIVE = frozenset((0, len(EVENT_FEATURES) - 1))
_get_features = operator.itemgetter(*EVENT_FEATURES)


class DeadLetterKind(StrEnum):
    """Why a message was refused, as a short stable label (a header, a counter's label).

    Set where the refusal is decided (`EventError(kind, message)`), never guessed from the
    message text afterwards.
    """

    INVALID_JSON = "invalid_json"
    NOT_AN_OBJECT = "not_an_object"
    SCHEMA_VERSION = "schema_version"
    MISSING_FIELD = "missing_field"
    NOT_A_NUMBER = "not_a_number"
    NOT_FINITE = "not_finite"
    OUT_OF_RANGE = "out_of_range"
    BAD_TIMESTAMP = "bad_timestamp"
    INVALID_FIELD = "invalid_field"
    INVALID_TEXT = "invalid_text"
    UNKNOWN_RUN = "unknown_run"
    CONFLICT = "conflict"
    MODEL_REFUSED = "model_refused"
    DATABASE_REFUSED = "database_refused"


class EventError(ValueError):
    """An event that cannot be scored: its `kind` and a message that names the field."""

    def __init__(self, kind: DeadLetterKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message the scorer refused: its original bytes, why, and where it was in its batch."""

    raw: bytes
    kind: DeadLetterKind
    reason: str
    position: int  # index of the message in the batch it came in


@dataclass(frozen=True, slots=True)
class EventBatch:
    """Valid events of one batch, column-wise, ready for one vectorised model call."""

    ids: list[str]
    features: np.ndarray  # (n, 30) float64 in EVENT_FEATURES order
    labels: list[int | None]
    run_ids: list[str | None]
    produced_at: list[float | None]
    positions: list[int]  # index of each event's message in the batch handed to decode_batch

    def __len__(self) -> int:
        return len(self.ids)


#: What `check_transaction` returns: (id, 30 values in EVENT_FEATURES order, label, run_id, produced_at).
ParsedTransaction = tuple[str | None, Sequence[float], int | None, str | None, float | None]


def transaction_id(values: Sequence[float], occurrence: int = 0) -> str:
    """A stable id for one transaction: the same row always gets the same id.

    The Kaggle file has no id column and holds exact duplicate rows, so the id hashes
    the 30 numeric values together with how many identical rows came before this one.
    """
    digest = hashlib.blake2b(_PACK_FEATURES.pack(*values, occurrence), digest_size=10)
    return digest.hexdigest()


def build_event(
    values: Sequence[float],
    *,
    event_id: str,
    label: int | None = None,
    run_id: str | None = None,
    produced_at: float | None = None,
) -> dict:
    """The event dict for one transaction; `values` are in EVENT_FEATURES order."""
    event: dict = {"schema_version": SCHEMA_VERSION, "id": event_id}
    event.update(zip(EVENT_FEATURES, (float(v) for v in values), strict=True))
    event["label"] = label
    event["run_id"] = run_id
    event["produced_at"] = time.time() if produced_at is None else produced_at
    return event


def encode_event(event: dict) -> bytes:
    return orjson.dumps(event)


def feature_problem(values: Sequence[object]) -> tuple[int, DeadLetterKind, str] | None:
    """The first of the 30 values the contract refuses: (its position, kind, what is wrong); None if all pass.

    The one statement of the feature rules: numbers (not booleans), finite, within
    ±MAX_ABS_FEATURE, `time` and `amount` (first and last) not negative. The caller names
    the position (`EVENT_FEATURES` for events, `RAW_FEATURES` for CSV columns).
    """
    for i, value in enumerate(values):
        kind = type(value)
        if kind is not float and kind is not int:
            return i, DeadLetterKind.NOT_A_NUMBER, f"must be a number, got {kind.__name__} {value!r:.40}"
        if kind is float and not math.isfinite(value):
            return i, DeadLetterKind.NOT_FINITE, f"must be finite, got {value!r}"
        if abs(value) > MAX_ABS_FEATURE:
            return (
                i,
                DeadLetterKind.OUT_OF_RANGE,
                f"must be within ±{MAX_ABS_FEATURE:g} (the model computes in float32), got {value!r:.40}",
            )
        if i in _NON_NEGATIVE and value < 0:
            return i, DeadLetterKind.OUT_OF_RANGE, f"must be >= 0, got {value!r:.40}"
    return None


def first_refused_row(matrix: np.ndarray) -> int | None:
    """Index of the first row of an (n, 30) float array that `feature_problem` refuses (vectorised)."""
    ok = np.all((matrix >= FEATURE_LOW) & (matrix <= FEATURE_HIGH), axis=1)
    bad = np.flatnonzero(~ok)
    return int(bad[0]) if bad.size else None


def check_text(name: str, value: object, max_length: int) -> str:
    """A non-empty string PostgreSQL text can hold (no NUL, no unpaired surrogate), at most `max_length`."""
    if type(value) is not str or not 0 < len(value) <= max_length:
        raise EventError(
            DeadLetterKind.INVALID_FIELD,
            f"field {name!r} must be a non-empty string of at most {max_length} characters, got {value!r:.40}",
        )
    if "\x00" in value:
        raise EventError(
            DeadLetterKind.INVALID_TEXT,
            f"field {name!r} must not contain NUL characters (PostgreSQL text cannot hold them)",
        )
    if not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError:
            raise EventError(
                DeadLetterKind.INVALID_TEXT, f"field {name!r} must be valid Unicode (an unpaired surrogate)"
            ) from None
    return value


def check_produced_at(value: object) -> float:
    """Epoch seconds in [PRODUCED_AT_MIN, PRODUCED_AT_MAX)."""
    if type(value) not in _NUMBER_TYPES or not PRODUCED_AT_MIN <= value < PRODUCED_AT_MAX:  # type: ignore[operator]
        raise EventError(
            DeadLetterKind.BAD_TIMESTAMP,
            "field 'produced_at' must be epoch seconds between 2000-01-01 and 2100-01-01 "
            f"(not milliseconds or nanoseconds), got {value!r:.40}",
        )
    return float(value)  # type: ignore[arg-type]


def check_transaction(fields: Mapping[str, object], *, require_id: bool = True) -> ParsedTransaction:
    """Apply the transaction contract to one transaction's fields; raise `EventError` naming the first problem.

    Used by `parse_event` for every event and by the API for every body (`require_id=False`:
    the API makes an id when the body has none).
    """
    return _check_transaction(fields, require_id)


def _check_transaction(fields: Mapping[str, object], require_id: bool) -> ParsedTransaction:
    # The scorer's hot path (~1 µs of the decoder's budget per event): each check has a
    # fast test for the common good value, and only a value that fails it goes through
    # the full check that names the problem.
    event_id = fields.get("id")
    if not (
        type(event_id) is str
        and 0 < len(event_id) <= MAX_ID_LENGTH
        and event_id.isascii()
        and "\x00" not in event_id
    ) and (event_id is not None or require_id):
        check_text("id", event_id, MAX_ID_LENGTH)
    try:
        values = _get_features(fields)
    except KeyError:
        missing = next(name for name in EVENT_FEATURES if name not in fields)
        raise EventError(DeadLetterKind.MISSING_FIELD, f"missing field {missing!r}") from None
    # Plain JSON numbers whose magnitudes sum to within the bound are each within it (and
    # finite: NaN and inf fail the comparison).
    if not (
        _NUMBER_TYPES.issuperset(map(type, values))
        and sum(map(abs, values)) <= MAX_ABS_FEATURE
        and values[0] >= 0
        and values[-1] >= 0
    ):
        problem = feature_problem(values)
        if problem is not None:
            position, kind, text = problem
            raise EventError(kind, f"field {EVENT_FEATURES[position]!r} {text}")
        values = [float(v) for v in values]  # each within the bound, only their sum was not
    label = fields.get("label")
    if label is not None and (type(label) is not int or label not in (0, 1)):
        raise EventError(
            DeadLetterKind.INVALID_FIELD, f"field 'label' must be 0, 1 or null, got {label!r:.40}"
        )
    run_id = fields.get("run_id")
    if run_id is not None:
        check_text("run_id", run_id, MAX_RUN_ID_LENGTH)
    produced_at = fields.get("produced_at")
    if produced_at is not None and not (
        type(produced_at) is float and PRODUCED_AT_MIN <= produced_at < PRODUCED_AT_MAX
    ):
        produced_at = check_produced_at(produced_at)
    return event_id, values, label, run_id, produced_at  # type: ignore[return-value]


def check_envelope(event: object, what: str, schema_version: int) -> dict:
    """A decoded message is a JSON object of a supported schema version (every topic's first check)."""
    if type(event) is not dict:
        raise EventError(
            DeadLetterKind.NOT_AN_OBJECT, f"{what} must be a JSON object, got {type(event).__name__}"
        )
    version = event.get("schema_version")
    if version != schema_version or type(version) is not int:
        raise EventError(
            DeadLetterKind.SCHEMA_VERSION,
            f"unknown schema_version {version!r:.40} (supported: {schema_version})",
        )
    return event


def parse_event(event: object) -> tuple[str, Sequence[float], int | None, str | None, float | None]:
    """Validate one decoded event; raise `EventError` naming the first problem found."""
    return _check_transaction(check_envelope(event, "event", SCHEMA_VERSION), True)  # type: ignore[return-value]


def decode_batch(messages: Iterable[bytes]) -> tuple[EventBatch, list[DeadLetter]]:
    """Decode and validate a batch of raw messages; bad ones become dead letters (never raises)."""
    ids: list[str] = []
    rows: list[Sequence[float]] = []
    labels: list[int | None] = []
    run_ids: list[str | None] = []
    produced: list[float | None] = []
    positions: list[int] = []
    dead: list[DeadLetter] = []
    for position, raw in enumerate(messages):
        try:
            decoded = orjson.loads(raw)
        except orjson.JSONDecodeError as error:
            dead.append(DeadLetter(raw, DeadLetterKind.INVALID_JSON, f"invalid JSON: {error}", position))
            continue
        try:
            event_id, values, label, run_id, produced_at = parse_event(decoded)
        except EventError as error:
            dead.append(DeadLetter(raw, error.kind, str(error), position))
            continue
        ids.append(event_id)
        rows.append(values)
        labels.append(label)
        run_ids.append(run_id)
        produced.append(produced_at)
        positions.append(position)
    features = np.array(rows, dtype=np.float64) if rows else np.empty((0, len(EVENT_FEATURES)))
    return EventBatch(ids, features, labels, run_ids, produced, positions), dead


class _TransactionBase(BaseModel):
    """The JSON shape of a transaction body; V1..V28 are added by `create_model` below.

    Only the shape is checked here (fields, JSON types); the values go through the
    transaction contract (`check_transaction`), the same as every event. The bounds are
    declared in the schema for clients to read.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    id: str | None = Field(default=None, json_schema_extra={"minLength": 1, "maxLength": MAX_ID_LENGTH})
    time: float = Field(
        description="seconds from the start of the data",
        json_schema_extra={"minimum": 0, "maximum": MAX_ABS_FEATURE},
    )
    amount: float = Field(json_schema_extra={"minimum": 0, "maximum": MAX_ABS_FEATURE})
    label: int | None = Field(
        default=None,
        description="ground truth, never used to score",
        json_schema_extra={"minimum": 0, "maximum": 1},
    )
    run_id: str | None = Field(
        default=None, json_schema_extra={"minLength": 1, "maxLength": MAX_RUN_ID_LENGTH}
    )

    @field_validator("time", "amount", *PCA_COLUMNS, mode="before", check_fields=False)
    @classmethod
    def _numbers_only(cls, value: object) -> object:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError("must be a number")
        return value

    def feature_values(self) -> list[float]:
        """The 30 inputs in EVENT_FEATURES order, as `Ensemble.score` wants them (not yet checked)."""
        return [getattr(self, name) for name in EVENT_FEATURES]

    def checked(self) -> ParsedTransaction:
        """The body through the transaction contract; `EventError` names the field it refuses."""
        return check_transaction(self.model_dump(), require_id=False)


#: One transaction as a client sends it (API bodies); its values are checked by `checked()`.
TransactionIn = create_model(
    "TransactionIn",
    __base__=_TransactionBase,
    **{
        name: (
            float,
            Field(
                description=f"PCA component {name}",
                json_schema_extra={"minimum": -MAX_ABS_FEATURE, "maximum": MAX_ABS_FEATURE},
            ),
        )
        for name in PCA_COLUMNS
    },
)
