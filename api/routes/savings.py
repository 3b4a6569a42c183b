"""The savings curve: net savings by threshold on a run's scored rows whose label is known.

`GET /api/model/savings?run_id=` answers, for every threshold (the lower edge of each
non-empty score bin), the alerts (and alerts per day of data), frauds caught, fraud amount
caught and missed, review cost and net savings (`core.costs.sweep_binned`), with the best
threshold within the analysts' capacity and the run's own threshold (live: the
champion's) marked: those two are bin edges of their own, so their points are exact, not
rounded to a bin.

Read from the rollups, never the history (the known label: `known_labels`, reviews and
chargebacks over inline labels, as the rollups count it): rows and amounts per known class
and fixed score bin (`rollup_score_amounts`, 0.001 wide above 0.001), regrouped into the
requested equal-width bins, so `bins` divides 1000; a marked threshold inside a fixed bin
splits it with the rows of that bin at or above it (a range of the score index: the
retained rows, so after a retention drop that one bin counts only the days kept), when
that bin holds at most `SPLIT_ROWS` rows; otherwise its point is the next candidate above,
reported at that candidate's threshold (never a point mislabelled as exact). The data
time the rows span comes from the hours rollup, refined to the first and last row with a
known label in its first and last hour (the hour's edge if those rows were dropped).
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
from fastapi import APIRouter, HTTPException, Query, Response, status
from sqlalchemy.ext.asyncio import AsyncConnection

from api import review_queries as rq
from api.cache import FOLDED, cached_response
from api.deps import AppSettings, Cache, Engine, Models
from api.params import DEFAULT_RUN, RunId
from api.schemas import Problem, SavingsAt, SavingsCurveOut
from core.bins import SCORE_BINS
from core.costs import SECONDS_PER_DAY, SavingsCurve, regroup_bins, sweep_binned
from core.db.schema import LIVE_RUN

router = APIRouter(prefix="/api/model", tags=["model"])

#: Equal-width bins whose edges are all edges of the rollup's fixed score bins (k / 1000).
FIXED_STEPS = 1000
BIN_COUNTS = tuple(n for n in range(10, FIXED_STEPS + 1) if FIXED_STEPS % n == 0)


#: A marked threshold splits its fixed score bin with that bin's rows only up to this many (a
#: range of the score index, each row's transaction by primary key: ~10 ms); in a denser bin
#: its point is the next candidate above it, reported at that candidate's own threshold.
SPLIT_ROWS = 2_000


def _add_known(sums: np.ndarray, cls: int, n: float, amount: float | None) -> None:
    """Add `n` rows of class `cls` with `amount` to (rows, frauds, fraud amount) if their label is known."""
    if cls in (0, 1):
        sums[0] += n
    if cls == 1:
        sums[1] += n
        sums[2] += amount or 0.0


async def _fixed_bin_sums(conn: AsyncConnection, run_id: str) -> tuple[np.ndarray, np.ndarray]:
    """Rows, frauds and fraud amount (rows) per fixed score bin (columns), over the rows with a
    known label; and every row per fixed bin (a label or not)."""
    per, every = np.zeros((3, SCORE_BINS.count)), np.zeros(SCORE_BINS.count)
    for row in (await conn.execute(rq.savings_rollup(run_id))).all():
        every[row.bin] += row.n
        _add_known(per[:, row.bin], row.cls, row.n, row.amount)
    return per, every


def _fixed_bin_of(threshold: float) -> int | None:
    """The fixed score bin `threshold` falls inside (None: it is one of their edges)."""
    j = int(SCORE_BINS.index(np.array([threshold]))[0])
    return None if SCORE_BINS.lower(j) == threshold else j


async def _split(conn: AsyncConnection, run_id: str, threshold: float, j: int) -> np.ndarray:
    """The sums of `_fixed_bin_sums` over the rows of fixed bin `j` at or above `threshold`."""
    upper = SCORE_BINS.upper(j)
    part = np.zeros(3)
    rows = await conn.execute(rq.scored_between(run_id, threshold, None if np.isinf(upper) else upper))
    for row in rows.all():
        _add_known(part, row.cls, row.n, row.amount)
    return part


async def _known_days(conn: AsyncConnection, run_id: str) -> float | None:
    """Days of data time between the first and the last row with a known label (at least 1 s)."""
    hours = (await conn.execute(rq.known_hours(run_id))).one()
    if hours.first is None:
        return None
    first = (await conn.execute(rq.known_time_in_hour(run_id, hours.first, last=False))).scalar()
    last = (await conn.execute(rq.known_time_in_hour(run_id, hours.last, last=True))).scalar()
    low = first if first is not None else hours.first * 3600.0
    high = last if last is not None else (hours.last + 1) * 3600.0
    return max(high - low, 1.0) / SECONDS_PER_DAY


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
        int,
        Query(
            ge=10,
            le=FIXED_STEPS,
            description=f"equal-width score bins (candidate thresholds), one of {', '.join(map(str, BIN_COUNTS))}",
        ),
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
    if bins not in BIN_COUNTS:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"bins={bins}: the savings are read from score bins 0.001 wide, so bins must divide "
            f"{FIXED_STEPS}: one of {', '.join(map(str, BIN_COUNTS))}",
        )
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

    marked = [x for x in (current_threshold, live_threshold) if x is not None and 0.0 < x <= 1.0]

    async def compute(conn: AsyncConnection) -> SavingsCurveOut:
        per, every = await _fixed_bin_sums(conn, run_id)
        splits, exact = {}, set()
        for x in set(marked):
            j = _fixed_bin_of(x)
            if j is None:
                exact.add(x)
            elif every[j] <= SPLIT_ROWS:
                splits[x] = await _split(conn, run_id, x, j)
                exact.add(x)
        # Equal-width bins, plus the marked thresholds that can be exact as edges of their own
        # (one that cannot is no candidate: a bin edge inside a fixed bin would misplace its rows).
        edges = np.unique(np.r_[np.arange(bins) / bins, sorted(exact)])
        counts, frauds, amounts = regroup_bins(SCORE_BINS.edges, per, edges, splits)
        days = await _known_days(conn, run_id) if counts.sum() else None
        curve = sweep_binned(counts.round(), frauds.round(), amounts, edges, cost, days=days)
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
            current=savings_at(curve, current, current_threshold if current_threshold in exact else None),
            current_threshold=current_threshold,
            live_threshold=live_threshold,
        )

    key = ("savings", run_id, bins, cost, per_day, current_threshold, live_threshold)
    return await cached_response(cache, key, run_id, compute, FOLDED)
