"""What the scorer does with one batch, as plain functions: no broker, no database, no clock of its own.

    batch, dead = decode(messages)                           # bad events become DeadLetters, never raise
    for ensemble, part in by_model(models, batch):           # one group unless backtests bring their own model
        group, refused = score_group(ensemble, part, messages)   # one vectorised model call + alerts
        rounds = occurrence_rounds(group.rows.run_ids, group.rows.ids)  # the same id twice: stored in turn
    shadow = score_shadow(challenger, group.rows)            # the shadow's call: live rows, never alerts

Every refusal is a `DeadLetter` with its kind, set where it is decided, and the position
of its message in the batch, so the worker can name the message's topic, partition and
offset in the dead letter's headers. The model's own refusals are isolated here: a row
that makes the model raise, give a non-finite score or fail its explanation is taken
out, the others are scored. `models` maps an event's run id to the ensemble that scores
it: live events (run id None) use the active model; a backtest can score its
run-tagged events with its own model version and threshold.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import orjson

from core.db.store import ScoredRows, ShadowScores
from core.ensemble import Ensemble
from core.events import DeadLetter, DeadLetterKind, EventBatch, decode_batch

#: Chooses the ensemble for a run id (None = live events).
ModelSource = Callable[[str | None], Ensemble]

#: Features named in an alert as the main reasons for its score.
TOP_FEATURES = 3

#: Kafka header names on dead letters (Kafka Connect's convention: value = original bytes).
REASON_HEADER = "fraudstream.error.reason"
KIND_HEADER = "fraudstream.error.kind"
TOPIC_HEADER = "fraudstream.error.topic"
PARTITION_HEADER = "fraudstream.error.partition"
OFFSET_HEADER = "fraudstream.error.offset"
KEY_HEADER = "fraudstream.error.key"


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a message came from: what a dead letter's headers name."""

    topic: str
    partition: int
    offset: int
    key: bytes | None


@dataclass(frozen=True, slots=True)
class ScoredGroup:
    """Rows scored by one ensemble, ready to store, with the alert of each alerting row."""

    rows: ScoredRows
    positions: list[int]  # the message position of each row
    alerts: dict[int, bytes]  # row index -> the alert message (alerting rows only)
    shadow: ShadowScores | None = None  # the shadow version's scores of the live rows, if any

    def take(self, rows: Sequence[int]) -> ScoredGroup:
        """The rows at `rows` (renumbered from 0), with their positions, alerts and shadow scores."""
        return ScoredGroup(
            self.rows.take(rows),
            [self.positions[row] for row in rows],
            {i: self.alerts[row] for i, row in enumerate(rows) if row in self.alerts},
            self.shadow.take(rows) if self.shadow is not None else None,
        )


def keep_gathering(gathered: int, waiting: int, batch_size: int) -> bool:
    """Whether to wait for another take before scoring: the events already waiting fill the batch.

    `take(n, within=...)` cuts a batch when its timer fires, and under a backlog the timer,
    not `n`, decides: measured, ~600 events per batch on this machine, each batch paying
    for two model calls, a statement, a commit and a round trip. Events that are already
    fetched (`waiting`, the stream's queue) are late anyway, so taking them into the same
    batch costs no latency; when the stream keeps up the queue is empty and a batch goes
    out after `within`, as before.
    """
    return gathered < batch_size and waiting >= batch_size - gathered


def gather_more(gathered: int, waiting: int, batch_size: int) -> bool:
    """Whether a batch of chunks takes another chunk before it is scored: only one that is already
    waiting (fetched, in the stream's queue), and only while the batch is not full.

    A batch never waits for events that have not arrived: what the last fetch brought is the
    batch. Batching still happens by itself: while one batch is written, the next fetches
    pile up in the queue and become the next batch (a backlog: full batches; 2,000/s: what
    arrived during one write). A timer that waits for more only adds its wait to every event.
    """
    return gathered < batch_size and waiting > 0


def decode(messages: Sequence[bytes]) -> tuple[EventBatch, list[DeadLetter]]:
    """Valid events column-wise plus the refused ones with their kinds and reasons (never raises)."""
    return decode_batch(messages)


def take_rows(batch: EventBatch, index: np.ndarray | Sequence[int]) -> EventBatch:
    """The events of `batch` at the row positions `index`."""
    index = np.asarray(index, dtype=np.intp)
    rows = index.tolist()
    return EventBatch(
        ids=[batch.ids[i] for i in rows],
        features=batch.features[index],
        labels=[batch.labels[i] for i in rows],
        run_ids=[batch.run_ids[i] for i in rows],
        produced_at=[batch.produced_at[i] for i in rows],
        positions=[batch.positions[i] for i in rows],
    )


def refuse_rows(
    messages: Sequence[bytes], batch: EventBatch, refusals: dict[int, tuple[DeadLetterKind, str]]
) -> tuple[EventBatch, list[DeadLetter]]:
    """Take the rows in `refusals` (row -> kind, reason) out of `batch`, as dead letters."""
    if not refusals:
        return batch, []
    letters = [
        DeadLetter(messages[batch.positions[row]], kind, reason, batch.positions[row])
        for row, (kind, reason) in sorted(refusals.items())
    ]
    keep = [row for row in range(len(batch)) if row not in refusals]
    return take_rows(batch, keep), letters


def drop_unknown_runs(
    messages: Sequence[bytes], batch: EventBatch, unknown: set[str]
) -> tuple[EventBatch, list[DeadLetter]]:
    """Take the events of unregistered backtest runs out of `batch`, as dead letters.

    They cannot be scored as asked, and mixing them into another model's scores would
    be worse than refusing them.
    """
    refusals = {
        row: (DeadLetterKind.UNKNOWN_RUN, f"unknown backtest run_id {run_id!r}: create the run first")
        for row, run_id in enumerate(batch.run_ids)
        if run_id in unknown
    }
    return refuse_rows(messages, batch, refusals)


def occurrence_rounds(run_ids: Sequence[str | None], ids: Sequence[str]) -> list[list[int]]:
    """Rows split into rounds in which each (run_id, id) appears once: first occurrences, then second ones...

    The worker stores round after round, so a repeat of an id within one batch is judged
    exactly like a repeat from another batch: against what is stored (an identical
    event is a silent redelivery, another one a conflict). Almost every batch is one
    round.

        >>> occurrence_rounds([None, None, None, "bt"], ["a", "b", "a", "a"])
        [[0, 1, 3], [2]]
    """
    if len(set(ids)) == len(ids):
        return [list(range(len(ids)))]
    seen: dict[tuple[str | None, str], int] = {}
    rounds: list[list[int]] = []
    for row, key in enumerate(zip(run_ids, ids, strict=True)):
        occurrence = seen.get(key, 0)
        seen[key] = occurrence + 1
        if occurrence == len(rounds):
            rounds.append([])
        rounds[occurrence].append(row)
    return rounds


def by_model(models: ModelSource, batch: EventBatch) -> Iterator[tuple[Ensemble, EventBatch]]:
    """Split a batch into groups scored by the same ensemble (usually one group: the whole batch)."""
    if not len(batch):
        return
    runs = sorted(set(batch.run_ids), key=lambda run: run or "")
    if len(runs) == 1:
        yield models(runs[0]), batch
        return
    chosen = {run: models(run) for run in runs}
    by_version: dict[tuple[str, float], list[int]] = {}
    owner: dict[tuple[str, float], Ensemble] = {}
    for i, run in enumerate(batch.run_ids):
        ensemble = chosen[run]
        key = (ensemble.version, ensemble.threshold)
        by_version.setdefault(key, []).append(i)
        owner[key] = ensemble
    if len(by_version) == 1:
        yield next(iter(owner.values())), batch
        return
    for key, rows in by_version.items():
        yield owner[key], take_rows(batch, rows)


def _model_refusal(error: BaseException) -> tuple[DeadLetterKind, str]:
    text = " ".join(str(error).split())[:200]
    return DeadLetterKind.MODEL_REFUSED, f"the model failed on this event ({type(error).__name__}: {text})"


def _score_isolating(ensemble: Ensemble, features: np.ndarray, offset: int, refusals: dict) -> np.ndarray:
    """(n, 2) score and reconstruction error; rows the model raises on alone get NaN and a refusal."""
    try:
        scores = ensemble.score(features)
        return np.column_stack([scores.score, scores.recon_error])
    except Exception as error:  # noqa: BLE001 - any failure of the model is its refusal of the content
        if len(features) == 1:
            refusals[offset] = _model_refusal(error)
            return np.full((1, 2), np.nan)
    middle = len(features) // 2
    return np.concatenate(
        [
            _score_isolating(ensemble, features[:middle], offset, refusals),
            _score_isolating(ensemble, features[middle:], offset + middle, refusals),
        ]
    )


def _explain_isolating(
    ensemble: Ensemble, features: np.ndarray, rows: list[int], top: int, refusals: dict
) -> dict[int, list[tuple[str, float]]]:
    """Top features per row (TreeSHAP); rows whose explanation fails or is not finite get a refusal."""
    try:
        reasons = ensemble.top_features(features, k=top)
    except Exception as error:  # noqa: BLE001 - TreeSHAP failing on a row is the model refusing it
        if len(rows) == 1:
            refusals[rows[0]] = _model_refusal(error)
            return {}
        middle = len(rows) // 2
        return {
            **_explain_isolating(ensemble, features[:middle], rows[:middle], top, refusals),
            **_explain_isolating(ensemble, features[middle:], rows[middle:], top, refusals),
        }
    explained = {}
    for row, pairs in zip(rows, reasons, strict=True):
        if all(np.isfinite(value) for _, value in pairs):
            explained[row] = pairs
        else:
            refusals[row] = (
                DeadLetterKind.MODEL_REFUSED,
                "the model's explanation of this event is not finite",
            )
    return explained


def alert_message(
    rows: ScoredRows, row: int, threshold: float, top_features: list[tuple[str, float]], scored_at: float
) -> bytes:
    """The alert for one stored row: its stored score, model version and values, and why it scored high."""
    return orjson.dumps(
        {
            "id": rows.ids[row],
            "run_id": rows.run_ids[row],
            "time": float(rows.features[row, 0]),
            "amount": float(rows.features[row, -1]),
            "score": float(rows.score[row]),
            "threshold": threshold,
            "recon_error": float(rows.recon_error[row]),
            "model_version": rows.model_version,
            "top_features": [{"feature": name, "contribution": value} for name, value in top_features],
            "produced_at": rows.produced_at[row],
            "scored_at": scored_at,
        }
    )


def score_group(
    ensemble: Ensemble,
    batch: EventBatch,
    messages: Sequence[bytes],
    *,
    scored_at: float,
    top: int = TOP_FEATURES,
) -> tuple[ScoredGroup, list[DeadLetter]]:
    """Score the batch with one vectorised call, build its alerts; rows the model refuses become dead letters.

    Explanations (TreeSHAP) cost far more than scoring, so only the alerting rows are
    explained. Each alert is built here, once, from exactly the values that will be
    stored; the worker keeps it with the row until the broker has it.
    """
    refusals: dict[int, tuple[DeadLetterKind, str]] = {}
    scored = _score_isolating(ensemble, batch.features, 0, refusals)
    score, recon_error = scored[:, 0], scored[:, 1]
    for row in np.flatnonzero(~(np.isfinite(score) & np.isfinite(recon_error))).tolist():
        refusals.setdefault(
            row, (DeadLetterKind.MODEL_REFUSED, "the model gives a non-finite score or reconstruction error")
        )
    alert = score >= ensemble.threshold
    flagged = [row for row in np.flatnonzero(alert).tolist() if row not in refusals]
    explained = (
        _explain_isolating(ensemble, batch.features[flagged], flagged, top, refusals) if flagged else {}
    )
    if refusals:
        keep = np.asarray([row for row in range(len(batch)) if row not in refusals], dtype=np.intp)
        renumber = {old: new for new, old in enumerate(keep.tolist())}
        kept, letters = refuse_rows(messages, batch, refusals)
        score, recon_error, alert = score[keep], recon_error[keep], alert[keep]
        explained = {renumber[row]: pairs for row, pairs in explained.items()}
        batch = kept
    else:
        letters = []
    rows = ScoredRows(
        ids=batch.ids,
        features=batch.features,
        labels=batch.labels,
        run_ids=batch.run_ids,
        produced_at=batch.produced_at,
        model_version=ensemble.version,
        score=score,
        recon_error=recon_error,
        alert=alert,
    )
    alerts = {
        row: alert_message(rows, row, ensemble.threshold, pairs, scored_at)
        for row, pairs in explained.items()
    }
    return ScoredGroup(rows, batch.positions, alerts), letters


def score_shadow(shadow: Ensemble, rows: ScoredRows) -> ShadowScores:
    """The shadow version's scores of the live rows of `rows`, with one vectorised call.

    Backtest rows (a run id) are never shadow-scored, and a row the shadow scores to a
    non-finite value gets no shadow score: the shadow is an experiment beside the product,
    so its refusals are its own and never refuse the row. `would_alert` is the shadow's
    own threshold; nothing here alerts. Raises whatever the model raises (the caller skips
    the shadow for the batch).

        >>> from types import SimpleNamespace
        >>> class Half:  # stands in for an Ensemble
        ...     version, threshold = "shadow-v", 0.5
        ...     def score(self, raw):
        ...         return SimpleNamespace(score=raw[:, 0] / 2, recon_error=raw[:, 1])
        >>> rows = ScoredRows(["a", "b", "c"], np.array([[1.2, 1.0], [0.4, np.nan], [2.0, 3.0]]),
        ...                   [0, 0, 1], [None, None, "bt-1"], [None] * 3, "v", *[np.zeros(3)] * 3)
        >>> shadow = score_shadow(Half(), rows)
        >>> shadow.scored.tolist(), shadow.score.tolist(), shadow.would_alert.tolist()
        ([True, False, False], [0.6, 0.0, 0.0], [True, False, False])
    """
    n = len(rows)
    live = np.fromiter((run_id is None for run_id in rows.run_ids), dtype=bool, count=n)
    score, recon_error = np.zeros(n), np.zeros(n)
    if live.any():
        index = np.flatnonzero(live)
        scored = shadow.score(rows.features if index.size == n else rows.features[index])
        got_score = np.asarray(scored.score, dtype=np.float64)
        got_error = np.asarray(scored.recon_error, dtype=np.float64)
        if got_score.shape != (index.size,) or got_error.shape != (index.size,):
            raise ValueError(
                f"the shadow gave {got_score.shape} scores and {got_error.shape} errors for {index.size} rows"
            )
        score[index], recon_error[index] = got_score, got_error
    ok = live & np.isfinite(score) & np.isfinite(recon_error)
    score, recon_error = np.where(ok, score, 0.0), np.where(ok, recon_error, 0.0)
    return ShadowScores(shadow.version, score, recon_error, ok & (score >= shadow.threshold), ok)


def dead_letter_headers(letter: DeadLetter, origin: Origin) -> list[tuple[str, bytes]]:
    """Headers of a dead letter: why (kind, reason) and where it came from (topic, partition, offset, key)."""
    headers = [
        (REASON_HEADER, letter.reason.encode("utf-8", "backslashreplace")),
        (KIND_HEADER, letter.kind.encode()),
        (TOPIC_HEADER, origin.topic.encode()),
        (PARTITION_HEADER, str(origin.partition).encode()),
        (OFFSET_HEADER, str(origin.offset).encode()),
    ]
    if origin.key is not None:
        headers.append((KEY_HEADER, origin.key))
    return headers
