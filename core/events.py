"""The transaction event: the contract between anyone who publishes and the scorer.

An event is one JSON object, keyed on the topic by its `id`:

    {"schema_version": 1, "id": "5f0c...", "time": 0.0, "V1": -1.36, ..., "V28": -0.02,
     "amount": 149.62, "label": 0, "run_id": null, "produced_at": 1764086400.123}

`label` is ground truth (present in replays, never used for scoring); `run_id` tags a
backtest; `produced_at` is the producer's wall clock in epoch seconds, for end-to-end
latency. The scorer decodes whole batches with `decode_batch`, which never raises: every
bad message comes back as a `DeadLetter` with the reason, so the stream keeps going.
"""

from __future__ import annotations

import hashlib
import math
import operator
import struct
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator

from core.features import EVENT_FEATURES, PCA_COLUMNS

SCHEMA_VERSION = 1
MAX_ID_LENGTH = 128
MAX_RUN_ID_LENGTH = 64
_PACK_FEATURES = struct.Struct(f"<{len(EVENT_FEATURES)}dq")
_NUMBER_TYPES = frozenset((float, int))
_get_features = operator.itemgetter(*EVENT_FEATURES)


class EventError(ValueError):
    """An event that cannot be scored; the message says why."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message the scorer refused, with the original bytes and the reason."""

    raw: bytes
    reason: str


@dataclass(frozen=True, slots=True)
class EventBatch:
    """Valid events of one batch, column-wise, ready for one vectorised model call."""

    ids: list[str]
    features: np.ndarray  # (n, 30) float64 in EVENT_FEATURES order
    labels: list[int | None]
    run_ids: list[str | None]
    produced_at: list[float | None]

    def __len__(self) -> int:
        return len(self.ids)


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


def _check_number(event: dict, name: str) -> float:
    if name not in event:
        raise EventError(f"missing field {name!r}")
    value = event[name]
    if type(value) is float:
        if not math.isfinite(value):
            raise EventError(f"field {name!r} must be finite, got {value!r}")
        return value
    if type(value) is int:
        return float(value)
    raise EventError(f"field {name!r} must be a number, got {type(value).__name__} {value!r:.40}")


def parse_event(event: object) -> tuple[str, Sequence[float], int | None, str | None, float | None]:
    """Validate one decoded event; raise `EventError` naming the first problem found."""
    if not isinstance(event, dict):
        raise EventError(f"event must be a JSON object, got {type(event).__name__}")
    version = event.get("schema_version")
    if version != SCHEMA_VERSION or type(version) is not int:
        raise EventError(f"unknown schema_version {version!r} (supported: {SCHEMA_VERSION})")
    event_id = event.get("id")
    if not isinstance(event_id, str) or not 0 < len(event_id) <= MAX_ID_LENGTH:
        raise EventError(f"field 'id' must be a non-empty string of at most {MAX_ID_LENGTH} characters")
    try:
        values = _get_features(event)
        # Fast path: plain JSON numbers (orjson never yields NaN/inf, but other callers may).
        valid = _NUMBER_TYPES.issuperset(map(type, values)) and math.isfinite(sum(map(abs, values)))
    except (KeyError, OverflowError):
        valid = False
    if not valid:  # find and name the first bad field
        values = [_check_number(event, name) for name in EVENT_FEATURES]
    if values[0] < 0:
        raise EventError(f"field 'time' must be >= 0, got {values[0]!r}")
    if values[-1] < 0:
        raise EventError(f"field 'amount' must be >= 0, got {values[-1]!r}")
    label = event.get("label")
    if label is not None and (type(label) is not int or label not in (0, 1)):
        raise EventError(f"field 'label' must be 0, 1 or null, got {label!r:.40}")
    run_id = event.get("run_id")
    if run_id is not None and (not isinstance(run_id, str) or not 0 < len(run_id) <= MAX_RUN_ID_LENGTH):
        raise EventError(f"field 'run_id' must be null or a string of 1-{MAX_RUN_ID_LENGTH} characters")
    produced_at = event.get("produced_at")
    if produced_at is not None:
        if type(produced_at) not in (int, float) or not math.isfinite(produced_at):
            raise EventError(f"field 'produced_at' must be epoch seconds, got {produced_at!r:.40}")
        produced_at = float(produced_at)
    return event_id, values, label, run_id, produced_at


def decode_batch(messages: Iterable[bytes]) -> tuple[EventBatch, list[DeadLetter]]:
    """Decode and validate a batch of raw messages; bad ones become dead letters."""
    ids: list[str] = []
    rows: list[list[float]] = []
    labels: list[int | None] = []
    run_ids: list[str | None] = []
    produced: list[float | None] = []
    dead: list[DeadLetter] = []
    for raw in messages:
        try:
            decoded = orjson.loads(raw)
        except orjson.JSONDecodeError as error:
            dead.append(DeadLetter(raw, f"invalid JSON: {error}"))
            continue
        try:
            event_id, values, label, run_id, produced_at = parse_event(decoded)
        except EventError as error:
            dead.append(DeadLetter(raw, str(error)))
            continue
        ids.append(event_id)
        rows.append(values)
        labels.append(label)
        run_ids.append(run_id)
        produced.append(produced_at)
    features = np.array(rows, dtype=np.float64) if rows else np.empty((0, len(EVENT_FEATURES)))
    return EventBatch(ids, features, labels, run_ids, produced), dead


class _TransactionBase(BaseModel):
    """Rules shared by every transaction body; V1..V28 are added by `create_model` below."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    id: str | None = Field(default=None, min_length=1, max_length=MAX_ID_LENGTH)
    time: float = Field(ge=0, description="seconds from the start of the data")
    amount: float = Field(ge=0)
    label: int | None = Field(default=None, ge=0, le=1, description="ground truth, never used to score")
    run_id: str | None = Field(default=None, min_length=1, max_length=MAX_RUN_ID_LENGTH)

    @field_validator("time", "amount", *PCA_COLUMNS, mode="before", check_fields=False)
    @classmethod
    def _numbers_only(cls, value: object) -> object:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError("must be a number")
        return value

    def feature_values(self) -> list[float]:
        """The 30 inputs in EVENT_FEATURES order, as `Ensemble.score` wants them."""
        return [getattr(self, name) for name in EVENT_FEATURES]


#: One transaction as a client sends it (API bodies); same rules as `parse_event`.
TransactionIn = create_model(
    "TransactionIn",
    __base__=_TransactionBase,
    **{name: (float, Field(description=f"PCA component {name}")) for name in PCA_COLUMNS},
)
