"""The review queue: the live stream's alerts waiting for a verdict, and giving one.

`GET /api/review/queue` lists the unreviewed alerts by score or age (keyset pages), each
with what an analyst needs to decide: amount, score, the version that scored it and its
threshold, the raw inputs and the features that pushed the score up.

`POST /api/alerts/{transaction_id}/review` records a verdict:

1. the transaction must be an alert of the live stream (404 otherwise, saying when its
   row may be beyond retention);
2. the reviewer is the request's identity; a write token (a service such as the
   dashboard, acting for its analysts) may name the analyst in `X-Fraudstream-Reviewer`,
   and the verdict then records both (`who`, `submitted_by`); without tokens the header
   names the reviewer and is required: every decision is attributable;
3. the verdict goes through the label contract (`core.labels.build_label`) and is
   published on the `labels` topic, keyed by the transaction, then stored with the labels
   agent's own statement (`core.db.labels.store_labels`), so the next queue read no
   longer shows it, and the agent, when it consumes the same event, finds it stored and
   writes nothing again. A broker that does not take it: 503, nothing recorded (retry).
   The database failing after the publish: 503, and the agent stores it from the topic;
4. `review_id` is the verdict's id: a client that retries with the same one records the
   verdict once (`recorded: false` the second time); reusing it for another verdict is
   a 409.
"""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

import numpy as np
import orjson
from aiokafka.errors import KafkaError
from fastapi import APIRouter, Header, HTTPException, Path, Query, status

from api import review_queries as rq
from api.auth import REVIEWS, CurrentIdentity, Identity, Tokens
from api.cache import Freshness
from api.deps import AppSettings, Cache, Connection, Explanations, Models, PoolConnection, PublisherDep
from api.params import NO_NUL
from api.schemas import PreviousVerdict, Problem, ReviewIn, ReviewItem, ReviewOut, ReviewQueue
from core.db.labels import store_labels, stored_labels
from core.db.partitions import beyond_retention, retained_from
from core.db.schema import LIVE_RUN
from core.events import MAX_ID_LENGTH, EventError
from core.features import PCA_COLUMNS
from core.labels import VERDICTS, LabelEvent, LabelSource, build_label, encode_label

router = APIRouter(prefix="/api", tags=["review"])

#: The header a write token (the dashboard) names the analyst it acts for with; without
#: tokens, it names the reviewer.
REVIEWER_HEADER = "X-Fraudstream-Reviewer"
#: Answers that change with every verdict recorded through this process (read your writes).
REVIEWS_FRESHNESS = Freshness("reviews", follows_clock=True, follows_writes=True)
#: The cache scope those answers are kept under (a run id no run uses).
REVIEWS_SCOPE = "(reviews)"
EXPLAIN_LIMIT = 100
_VERDICT_NAMES = {label: name for name, label in VERDICTS.items()}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

TransactionId = Annotated[
    str,
    Path(min_length=1, max_length=MAX_ID_LENGTH, pattern=NO_NUL, description="the alert's transaction id"),
]
ReviewerHeader = Annotated[
    str | None,
    Header(
        alias=REVIEWER_HEADER,
        max_length=128,
        description="the analyst a write token acts for; without tokens, the reviewer (required)",
    ),
]

_ALERT = "SELECT alert FROM scores WHERE run_id = '' AND id = $1"
_PREVIOUS = (
    "SELECT label_id, label, who, decided_at FROM feedback "
    "WHERE run_id = '' AND transaction_id = $1 AND source = 'analyst'"
)


# --------------------------------------------------------------------------- the queue


def encode_queue_cursor(order: str, value: float | datetime, row_id: str) -> str:
    """Opaque keyset cursor: the order, the last row's sort value (score, or scored_at in µs) and id."""
    raw = (value - _EPOCH) // timedelta(microseconds=1) if isinstance(value, datetime) else float(value)
    return base64.urlsafe_b64encode(orjson.dumps([order, raw, row_id])).decode().rstrip("=")


def decode_queue_cursor(cursor: str, order: str) -> tuple[float | datetime, str]:
    """Inverse of `encode_queue_cursor`; 400 for anything that is not ours or belongs to another order."""
    try:
        payload = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        kind, raw, row_id = payload
        if kind != order or not isinstance(row_id, str) or len(row_id) > MAX_ID_LENGTH or "\x00" in row_id:
            raise ValueError
        if order == "score":
            if type(raw) not in (int, float) or not np.isfinite(raw):
                raise ValueError
            return float(raw), row_id
        if type(raw) is not int:
            raise ValueError
        return _EPOCH + timedelta(microseconds=raw), row_id
    except (ValueError, TypeError, binascii.Error, orjson.JSONDecodeError, OverflowError):
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST,
            "invalid cursor: pass back the next_cursor of a previous page of the same order",
        ) from None


@router.get(
    "/review/queue",
    response_model=ReviewQueue,
    summary="Alerts of the live stream waiting for an analyst's verdict",
    responses={400: {"model": Problem}},
)
async def review_queue(
    conn: Connection,
    models: Models,
    explanations: Explanations,
    order: Annotated[
        Literal["score", "oldest", "newest"], Query(description="highest score first, or by age")
    ] = "score",
    limit: Annotated[int, Query(ge=1, le=EXPLAIN_LIMIT)] = 20,
    cursor: Annotated[
        str | None, Query(max_length=400, description="next_cursor of the previous page")
    ] = None,
    explain: Annotated[bool, Query(description="add each alert's top features (TreeSHAP)")] = True,
    top: Annotated[int, Query(ge=1, le=40, description="how many top features")] = 5,
) -> ReviewQueue:
    """Read fresh (not cached): a verdict recorded a moment ago is never shown again. An alert
    already decided never appears, whoever decided it and however it arrived."""
    chosen = rq.ORDERS[order]
    after = decode_queue_cursor(cursor, order) if cursor else None
    rows = (await conn.execute(rq.queue_page(chosen, limit, after))).all()
    more = len(rows) > limit
    rows = rows[:limit]
    tops: dict[str, list] = {}
    ensemble = models.champion
    if explain and rows and ensemble is not None:
        raw = np.array([[r.time, *(getattr(r, c.lower()) for c in PCA_COLUMNS), r.amount] for r in rows])
        explained = await explanations.top(ensemble, LIVE_RUN, [r.id for r in rows], raw, top)
        tops = {r.id: row for r, row in zip(rows, explained, strict=True)}
    items = [
        ReviewItem(
            id=r.id,
            time=r.time,
            amount=r.amount,
            score=r.score,
            threshold=r.threshold,
            model_version=r.model_version,
            recon_error=r.recon_error,
            scored_at=r.scored_at,
            features={name: getattr(r, name.lower()) for name in PCA_COLUMNS},
            top_features=tops.get(r.id),
            explained_by=ensemble.version if r.id in tops and ensemble is not None else None,
        )
        for r in rows
    ]
    next_cursor = None
    if more:
        last = rows[-1]
        next_cursor = encode_queue_cursor(order, last.score if order == "score" else last.scored_at, last.id)
    return ReviewQueue(order=order, items=items, next_cursor=next_cursor, limit=limit)


# --------------------------------------------------------------------------- a verdict


def reviewer_of(identity: Identity, tokens_enabled: bool, header: str | None) -> tuple[str, str | None]:
    """(who decided, the credential that submitted it when that is someone else)."""
    named = header.strip() if header and header.strip() else None
    if not tokens_enabled:
        if named is None:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT,
                f"name the reviewer in the {REVIEWER_HEADER} header: every verdict says who gave it",
            )
        return named, None
    if named is None or named == identity.name:
        return identity.name, None
    if not identity.may_write:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            f"{identity.name} reviews as itself; only a write token may act for another reviewer",
        )
    return named, identity.name


def _outcome(event: LabelEvent, recorded: bool, previous: PreviousVerdict | None) -> ReviewOut:
    return ReviewOut(
        review_id=event.label_id,
        transaction_id=event.transaction_id,
        verdict=_VERDICT_NAMES[event.label],
        label=event.label,
        who=event.who,
        submitted_by=event.submitted_by,
        note=event.note,
        decided_at=datetime.fromtimestamp(event.decided_at, UTC),
        recorded=recorded,
        previous=previous,
    )


def _conflict(event: LabelEvent) -> HTTPException:
    return HTTPException(
        status.HTTP_409_CONFLICT,
        f"review_id {event.label_id!r} is already recorded with another verdict; a retry must send the "
        "same verdict, a new verdict needs a new review_id",
    )


@router.post(
    "/alerts/{transaction_id}/review",
    response_model=ReviewOut,
    summary="Record an analyst's verdict on an alert (published on the labels topic)",
    openapi_extra=REVIEWS,
    responses={
        403: {"model": Problem, "description": "a read token, or a review token acting for someone else"},
        404: {"model": Problem, "description": "not an alert of the live stream (or beyond retention)"},
        409: {"model": Problem, "description": "the review_id is recorded with another verdict"},
        503: {"model": Problem, "description": "the broker or the database is unavailable: retry"},
    },
)
async def review_alert(
    transaction_id: TransactionId,
    body: ReviewIn,
    identity: CurrentIdentity,
    tokens: Tokens,
    conn: PoolConnection,
    publisher: PublisherDep,
    settings: AppSettings,
    cache: Cache,
    reviewer: ReviewerHeader = None,
) -> ReviewOut:
    """The verdict is final for the queue at once (the next read does not show the alert); a
    later verdict on the same alert replaces it as the known one, and the history keeps both."""
    if not await conn.fetchval(_ALERT, transaction_id):
        detail = f"transaction {transaction_id!r} is not an alert of the live stream"
        first_kept = await retained_from(conn)
        if first_kept is not None:  # its row may have been dropped with its day: say so
            detail += f", or its row is {beyond_retention(first_kept)}"
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail)
    who, submitted_by = reviewer_of(identity, tokens.enabled, reviewer)
    try:
        event = build_label(
            transaction_id=transaction_id,
            run_id=LIVE_RUN,
            label=VERDICTS[body.verdict],
            source=LabelSource.ANALYST,
            who=who,
            note=body.note,
            label_id=body.review_id,
            submitted_by=submitted_by,
        )
    except EventError as error:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(error)) from None
    stored = (await stored_labels(conn, [event.label_id])).get(event.label_id)
    if stored is not None:  # a retry: the first one counts
        if not stored.same_verdict(event):
            raise _conflict(event)
        return _outcome(stored, recorded=False, previous=None)
    row = await conn.fetchrow(_PREVIOUS, transaction_id)
    previous = (
        PreviousVerdict(
            review_id=row["label_id"],
            verdict=_VERDICT_NAMES[row["label"]],
            who=row["who"],
            decided_at=row["decided_at"],
        )
        if row is not None
        else None
    )
    try:
        await publisher.publish(settings.topic_labels, transaction_id.encode(), encode_label(event))
    except (KafkaError, ConnectionError, OSError, TimeoutError) as exc:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            f"the verdict was not recorded: cannot publish to Kafka ({type(exc).__name__}); retry with the "
            "same review_id",
            headers={"Retry-After": "5"},
        ) from None
    if await store_labels(conn, [event]):  # the labels agent stored it first: the same bytes, or else
        found = (await stored_labels(conn, [event.label_id])).get(event.label_id)
        if found is None or not found.same_verdict(event):
            raise _conflict(event)
    cache.written(REVIEWS_SCOPE)
    return _outcome(event, recorded=True, previous=previous)
