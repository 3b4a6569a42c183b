"""The savings curve: net savings by threshold on a run's scored rows whose label is known.

`GET /api/model/savings?run_id=` answers, for every threshold (the lower edge of each
non-empty score bin), the alerts (and alerts per day of data), frauds caught, fraud amount
caught and missed, review cost and net savings (`core.costs.sweep_binned`), with the best
threshold within the analysts' capacity and the run's own threshold (live: the
champion's) marked: those two are bin edges of their own, so their points are exact, not
rounded to a bin. PostgreSQL counts the rows per score bin in one pass over the run
(the known label: `known_labels`, reviews and chargebacks over inline labels); the curve
is O(bins) after that. Served through the result cache like the other full-scan analytics.
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
from fastapi import APIRouter, HTTPException, Query, Response, status
from sqlalchemy.ext.asyncio import AsyncConnection

from api import review_queries as rq
from api.cache import FULL_SCAN, cached_response
from api.deps import AppSettings, Cache, Engine, Models
from api.params import DEFAULT_RUN, RunId
from api.schemas import Problem, SavingsAt, SavingsCurveOut
from core.costs import SECONDS_PER_DAY, SavingsCurve, sweep_binned
from core.db.schema import LIVE_RUN

router = APIRouter(prefix="/api/model", tags=["model"])


def savings_at(curve: SavingsCurve, index: int | None, threshold: float | None = None) -> SavingsAt | None:
    """The curve's point `index`, reported at `threshold` when given (a threshold that alerts
    exactly like that point: no scored row lies between them)."""
    if index is None:
        if threshold is None:
            return None
        return SavingsAt(  # above every scored row: nothing alerts
            threshold=threshold,
            alerts=0,
            alerts_per_day=0.0 if curve.days else None,
            frauds_caught=0,
            amount_caught=0.0,
            amount_missed=curve.fraud_amount,
            review_cost=0.0,
            net_savings=0.0,
            precision=None,
        )
    point = curve.at(index)
    per_day = curve.alerts_per_day
    return SavingsAt(
        threshold=point.threshold if threshold is None else threshold,
        alerts=point.alerts,
        alerts_per_day=float(per_day[index]) if per_day is not None else None,
        frauds_caught=point.frauds_caught,
        amount_caught=point.amount_caught,
        amount_missed=point.amount_missed,
        review_cost=point.review_cost,
        net_savings=point.net_savings,
        precision=point.precision,
    )


@router.get(
    "/savings",
    response_model=SavingsCurveOut,
    summary="Net savings by threshold on a run's labelled rows, best and current threshold marked",
    responses={404: {"model": Problem}, 409: {"model": Problem, "description": "no cost per alert is set"}},
)
async def savings(
    cache: Cache,
    engine: Engine,
    models: Models,
    settings: AppSettings,
    run_id: RunId = DEFAULT_RUN,
    bins: Annotated[
        int, Query(ge=10, le=10_000, description="equal-width score bins (candidate thresholds)")
    ] = 1000,
    cost_per_alert: Annotated[
        float | None,
        Query(ge=0, le=1e9, allow_inf_nan=False, description="default: FRAUDSTREAM_COST_PER_ALERT"),
    ] = None,
    capacity: Annotated[
        int | None,
        Query(ge=1, le=100_000_000, description="alerts per day; default: FRAUDSTREAM_ANALYST_CAPACITY"),
    ] = None,
) -> Response:
    cost = cost_per_alert if cost_per_alert is not None else settings.cost_per_alert
    if cost is None:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            "no cost per alert: set FRAUDSTREAM_COST_PER_ALERT or pass ?cost_per_alert=",
        )
    per_day = capacity if capacity is not None else settings.analyst_capacity
    champion = models.champion
    live_threshold = champion.threshold if champion is not None else None
    current_threshold = live_threshold
    if run_id != LIVE_RUN:
        async with engine.connect() as conn:
            current_threshold = (await conn.execute(rq.run_threshold(run_id))).scalar()
        if current_threshold is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no backtest run {run_id!r}")

    # Equal-width bins, plus the thresholds to mark as edges of their own, so their points are exact.
    marked = [x for x in (current_threshold, live_threshold) if x is not None and 0.0 < x <= 1.0]
    edges = np.unique(np.r_[np.arange(bins) / bins, marked])

    async def compute(conn: AsyncConnection) -> SavingsCurveOut:
        n = edges.size
        counts, frauds, amounts = np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(n)
        low, high = np.inf, -np.inf
        for row in (await conn.execute(rq.savings_bins(run_id, edges.tolist()))).all():
            i = row.bucket - 1
            counts[i], frauds[i], amounts[i] = row.n, row.frauds, row.fraud_amount
            low, high = min(low, row.time_min), max(high, row.time_max)
        days = max(high - low, 1.0) / SECONDS_PER_DAY if counts.sum() else None
        curve = sweep_binned(counts, frauds, amounts, edges, cost, days=days)
        best = curve.best(per_day if days else None)
        current = curve.index_of(current_threshold) if current_threshold is not None else None
        per_day_alerts = curve.alerts_per_day
        return SavingsCurveOut(
            run_id=run_id,
            cost_per_alert=cost,
            capacity_per_day=per_day,
            bins=bins,
            rows=curve.rows,
            frauds=curve.frauds,
            fraud_amount=curve.fraud_amount,
            days=days,
            thresholds=curve.thresholds.tolist(),
            alerts=curve.alerts.tolist(),
            alerts_per_day=per_day_alerts.tolist() if per_day_alerts is not None else None,
            frauds_caught=curve.frauds_caught.tolist(),
            amount_caught=curve.amount_caught.tolist(),
            amount_missed=curve.amount_missed.tolist(),
            review_cost=curve.review_cost.tolist(),
            net_savings=curve.net_savings.tolist(),
            best=savings_at(curve, best),
            current=savings_at(curve, current, current_threshold),
            current_threshold=current_threshold,
            live_threshold=live_threshold,
        )

    key = ("savings", run_id, bins, cost, per_day, current_threshold, live_threshold)
    return await cached_response(cache, key, run_id, compute, FULL_SCAN)
