"""What the analysts' verdicts and the chargebacks say about the alerts of the live stream.

`GET /api/feedback/summary`: the backlog, how many alerts were reviewed and how many of
those were frauds (the alerts' precision from reviews), frauds found later by chargeback
among rows that never alerted (missed), overall and per hour of the last `hours`, and
each reviewer's counts. Served through the result cache (at most its bound old, and a
verdict recorded through this process shows in the next read).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Query, Response
from sqlalchemy.ext.asyncio import AsyncConnection

from api import queries
from api import review_queries as rq
from api.cache import cached_response
from api.deps import Cache
from api.routes.review import REVIEWS_FRESHNESS, REVIEWS_SCOPE
from api.schemas import FeedbackCounts, FeedbackSummary, HourFeedback, ReviewerCounts

router = APIRouter(prefix="/api/feedback", tags=["review"])

Hours = Annotated[
    float, Query(gt=0, le=24 * 31, allow_inf_nan=False, description="hours of the per-hour part")
]


def _counts(reviewed: int, confirmed: int, frauds: int, missed: int) -> FeedbackCounts:
    return FeedbackCounts(
        reviewed=reviewed,
        confirmed_fraud=confirmed,
        not_fraud=reviewed - confirmed,
        precision=confirmed / reviewed if reviewed else None,
        missed=missed,
        chargeback_frauds=frauds,
    )


@router.get("/summary", response_model=FeedbackSummary, summary="Reviews, backlog, precision, missed frauds")
async def summary(cache: Cache, hours: Hours = 24.0) -> Response:
    """Counts of the live stream; per hour by when the verdict (or the chargeback) was given."""

    async def compute(conn: AsyncConnection) -> FeedbackSummary:
        now = (await conn.execute(queries.now())).scalar_one()
        since = now - timedelta(hours=hours)
        total = (await conn.execute(rq.reviewed())).one()
        charged = (await conn.execute(rq.chargebacks())).one()
        by_hour: dict[datetime, dict[str, int]] = {}
        for row in (await conn.execute(rq.reviewed(since, by_hour=True))).all():
            by_hour.setdefault(row.hour, {}).update(reviewed=row.reviewed, confirmed=row.confirmed)
        for row in (await conn.execute(rq.chargebacks(since, by_hour=True))).all():
            by_hour.setdefault(row.hour, {}).update(frauds=row.frauds, missed=row.missed)
        per_hour = []
        hour = since.replace(minute=0, second=0, microsecond=0)
        while hour <= now:
            got = by_hour.get(hour, {})
            counts = _counts(
                got.get("reviewed", 0), got.get("confirmed", 0), got.get("frauds", 0), got.get("missed", 0)
            )
            per_hour.append(HourFeedback(hour=hour, **counts.model_dump()))
            hour += timedelta(hours=1)
        reviewers = [
            ReviewerCounts(
                who=row.who,
                decisions=row.decisions,
                fraud=row.fraud,
                not_fraud=row.not_fraud,
                last_24h=row.last_24h,
                last_decided_at=row.last_decided_at,
            )
            for row in (await conn.execute(rq.reviewers(now - timedelta(hours=24)))).all()
        ]
        return FeedbackSummary(
            alerts=(await conn.execute(rq.live_alerts())).scalar_one(),
            backlog=(await conn.execute(rq.backlog())).scalar_one(),
            overall=_counts(total.reviewed, total.confirmed, charged.frauds, charged.missed),
            hours=hours,
            per_hour=per_hour,
            reviewers=reviewers,
            generated_at=now,
        )

    return await cached_response(
        cache, ("feedback-summary", hours), REVIEWS_SCOPE, compute, REVIEWS_FRESHNESS
    )
