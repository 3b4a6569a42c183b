"""Totals, rates, throughput and latency of a run, and the live time series."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, status

from api import queries
from api.deps import Cache, Connection, run_watermark
from api.params import DEFAULT_RUN, RunId
from api.schemas import LatencySummary, Stats, TimePoint, TimeSeries

router = APIRouter(prefix="/api/stats", tags=["stats"])

#: Answers about "the last minutes" move with the clock: reuse them this long at most.
CLOCK_SECONDS = 1.0

Minutes = Annotated[float, Query(gt=0, le=1440, allow_inf_nan=False, description="window length in minutes")]


@router.get("", response_model=Stats, summary="Volume, frauds, alerts, throughput and latency")
async def stats(conn: Connection, cache: Cache, run_id: RunId = DEFAULT_RUN, minutes: Minutes = 1.0) -> Stats:
    """Totals of the run, plus scored rows, alerts, throughput and latency over the last `minutes`."""

    async def compute() -> Stats:
        window = timedelta(minutes=minutes)
        totals = (await conn.execute(queries.score_totals(run_id, window))).one()
        labels = (await conn.execute(queries.label_totals(run_id))).one()
        true_alerts = (await conn.execute(queries.true_alerts(run_id))).scalar_one()
        span = (totals.now - totals.window_first).total_seconds() if totals.window_first is not None else 0.0
        throughput = totals.window_scored / max(span, 1.0) if totals.window_scored else 0.0
        return Stats(
            run_id=run_id,
            volume=totals.volume,
            labelled=labels.labelled,
            frauds=labels.frauds,
            alerts=totals.alerts,
            true_alerts=true_alerts,
            alert_rate=totals.alerts / totals.volume if totals.volume else 0.0,
            fraud_rate=labels.frauds / labels.labelled if labels.labelled else 0.0,
            first_scored_at=totals.first_scored_at,
            last_scored_at=totals.last_scored_at,
            window_minutes=minutes,
            window_scored=totals.window_scored,
            window_alerts=totals.window_alerts,
            throughput_per_s=throughput,
            latency_ms=LatencySummary(
                count=totals.latency_count,
                p50=totals.p50,
                p95=totals.p95,
                p99=totals.p99,
                max=totals.latency_max,
            ),
            generated_at=totals.now,
        )

    key = ("stats", run_id, minutes)
    return await cache.get(key, await run_watermark(conn, run_id), compute, max_seconds=CLOCK_SECONDS)


@router.get("/timeseries", response_model=TimeSeries, summary="Scored rows and alerts per time bucket")
async def timeseries(
    conn: Connection,
    cache: Cache,
    run_id: RunId = DEFAULT_RUN,
    minutes: Minutes = 5.0,
    bucket_seconds: Annotated[int, Query(ge=1, le=3600, description="bucket width")] = 5,
) -> TimeSeries:
    """Buckets of `bucket_seconds` over the last `minutes`, by scored_at (date_bin in SQL); empty ones as 0."""
    if minutes * 60 / bucket_seconds > 10_000:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            "too many buckets: at most 10000 (raise bucket_seconds or lower minutes)",
        )

    async def compute() -> TimeSeries:
        bucket = timedelta(seconds=bucket_seconds)
        window = timedelta(minutes=minutes)
        rows = (await conn.execute(queries.timeseries(run_id, window, bucket))).all()
        now = (await conn.execute(queries.now())).scalar_one()
        by_start = {row.bucket_start: row for row in rows}
        points = []
        start = _floor(now - window, bucket)
        while start <= now:
            row = by_start.get(start)
            points.append(
                TimePoint(
                    t=start,
                    scored=row.scored if row else 0,
                    alerts=row.alerts if row else 0,
                    frauds=row.frauds if row else 0,
                    latency_p50_ms=row.p50 if row else None,
                    latency_p99_ms=row.p99 if row else None,
                )
            )
            start += bucket
        return TimeSeries(run_id=run_id, minutes=minutes, bucket_seconds=bucket_seconds, points=points)

    key = ("timeseries", run_id, minutes, bucket_seconds)
    return await cache.get(key, await run_watermark(conn, run_id), compute, max_seconds=CLOCK_SECONDS)


def _floor(moment: datetime, bucket: timedelta) -> datetime:
    """Start of the bucket holding `moment`, aligned like date_bin (origin 2000-01-01 UTC)."""
    origin = queries.BUCKET_ORIGIN
    return origin + ((moment - origin) // bucket) * bucket
