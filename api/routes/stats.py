"""Totals, rates, throughput and latency of a run, and the live time series."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Response, status
from sqlalchemy.ext.asyncio import AsyncConnection

from api import queries
from api.cache import AS_OF_HEADER, TIMED, cached_response
from api.deps import Cache, Engine
from api.params import DEFAULT_RUN, RunId
from api.schemas import LatencySummary, Stats, TimePoint, TimeSeries
from api.totals import RunTotals, read_run_totals

router = APIRouter(prefix="/api/stats", tags=["stats"])

Minutes = Annotated[float, Query(gt=0, le=1440, allow_inf_nan=False, description="window length in minutes")]


@router.get("", response_model=Stats, summary="Volume, frauds, alerts, throughput and latency")
async def stats(
    cache: Cache, engine: Engine, run_id: RunId = DEFAULT_RUN, minutes: Minutes = 1.0
) -> Response:
    """Totals of the run, plus scored rows, alerts, throughput and latency over the last `minutes`.

    The totals (volume, labelled, frauds, alerts, first/last scored_at) are read on every
    request from the trigger-kept counters (a few index probes), so a stored row counts at
    once, whoever stored it. The window part (throughput, latency percentiles, true alerts)
    comes through the result cache (a range scan of the (run_id, scored_at) index, at most
    the cache's bound old); header `X-As-Of` says when its data were read.
    """

    async def compute(conn: AsyncConnection) -> Stats:
        now = (await conn.execute(queries.now())).scalar_one()
        totals = await read_run_totals(conn, run_id)
        window = (await conn.execute(queries.window_totals(run_id, now - timedelta(minutes=minutes)))).one()
        true_alerts = (await conn.execute(queries.true_alerts(run_id))).scalar_one() if totals.alerts else 0
        seconds = (now - window.first).total_seconds() if window.first is not None else 0.0
        throughput = window.scored / max(seconds, 1.0) if window.scored else 0.0
        return Stats(
            run_id=run_id,
            **_totals_fields(totals),
            true_alerts=true_alerts,
            window_minutes=minutes,
            window_scored=window.scored,
            window_alerts=window.alerts,
            throughput_per_s=throughput,
            latency_ms=LatencySummary(
                count=window.latency_count,
                p50=window.p50,
                p95=window.p95,
                p99=window.p99,
                max=window.latency_max,
            ),
            generated_at=now,
        )

    entry = await cache.get(("stats", run_id, minutes), run_id, compute, TIMED)
    async with engine.connect() as conn:  # after the cache: a request never holds two connections
        fields = _totals_fields(await read_run_totals(conn, run_id))
    cached: Stats = entry.value
    body = entry.body
    if any(getattr(cached, name) != value for name, value in fields.items()):
        body = cached.model_copy(update=fields).model_dump_json().encode()
    return Response(body, media_type="application/json", headers={AS_OF_HEADER: entry.as_of.isoformat()})


def _totals_fields(totals: RunTotals) -> dict[str, Any]:
    """The Stats fields that come from the run's counters (`api.totals`)."""
    scored, labelled, frauds, alerts = totals.scored, totals.labelled, totals.frauds, totals.alerts
    return {
        "volume": scored,
        "labelled": labelled,
        "frauds": frauds,
        "alerts": alerts,
        "alert_rate": alerts / scored if scored else 0.0,
        "fraud_rate": frauds / labelled if labelled else 0.0,
        "first_scored_at": totals.first,
        "last_scored_at": totals.last,
    }


@router.get("/timeseries", response_model=TimeSeries, summary="Scored rows and alerts per time bucket")
async def timeseries(
    cache: Cache,
    run_id: RunId = DEFAULT_RUN,
    minutes: Minutes = 5.0,
    bucket_seconds: Annotated[int, Query(ge=1, le=3600, description="bucket width")] = 5,
) -> Response:
    """Buckets of `bucket_seconds` over the last `minutes`, by scored_at (date_bin in SQL); empty ones as 0."""
    if minutes * 60 / bucket_seconds > 10_000:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            "too many buckets: at most 10000 (raise bucket_seconds or lower minutes)",
        )

    async def compute(conn: AsyncConnection) -> TimeSeries:
        bucket = timedelta(seconds=bucket_seconds)
        now = (await conn.execute(queries.now())).scalar_one()
        since = now - timedelta(minutes=minutes)
        rows = (await conn.execute(queries.timeseries(run_id, since, bucket))).all()
        frauds = dict((await conn.execute(queries.timeseries_frauds(run_id, since, bucket))).all())
        by_start = {row.bucket_start: row for row in rows}
        points = []
        start = _floor(since, bucket)
        while start <= now:
            row = by_start.get(start)
            points.append(
                TimePoint(
                    t=start,
                    scored=row.scored if row else 0,
                    alerts=row.alerts if row else 0,
                    frauds=frauds.get(start, 0),
                    latency_p50_ms=row.p50 if row else None,
                    latency_p99_ms=row.p99 if row else None,
                )
            )
            start += bucket
        return TimeSeries(run_id=run_id, minutes=minutes, bucket_seconds=bucket_seconds, points=points)

    key = ("timeseries", run_id, minutes, bucket_seconds)
    return await cached_response(cache, key, run_id, compute, TIMED)


def _floor(moment: datetime, bucket: timedelta) -> datetime:
    """Start of the bucket holding `moment`, aligned like date_bin (origin 2000-01-01 UTC)."""
    origin = queries.BUCKET_ORIGIN
    return origin + ((moment - origin) // bucket) * bucket
