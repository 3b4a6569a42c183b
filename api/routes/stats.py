"""Totals, rates, throughput and latency of a run, and the live time series.

Everything here is read from trigger-kept counters and rollups (migrations 0003, 0009),
never from the window's rows, so a request costs the same at any history size: the
window and the buckets are whole minutes (the rollups' grain), and latency percentiles
are read from log-spaced bins (`core.bins.LATENCY_BINS`).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, HTTPException, Query, Response, status
from sqlalchemy.ext.asyncio import AsyncConnection

from api import queries
from api.cache import AS_OF_HEADER, TIMED, cached_response
from api.deps import Cache, Engine
from api.params import DEFAULT_RUN, RunId
from api.schemas import LatencySummary, Stats, TimePoint, TimeSeries
from api.totals import RunTotals, read_run_totals
from core.bins import LATENCY_BINS, LATENCY_ERROR_FACTOR, percentile_from_counts

router = APIRouter(prefix="/api/stats", tags=["stats"])

#: The stats are read from per-minute rollups: windows are whole minutes.
Minutes = Annotated[int, Query(ge=1, le=1440, description="window length in whole minutes")]
MINUTE = timedelta(minutes=1)


@router.get("", response_model=Stats, summary="Volume, frauds, alerts, throughput and latency")
async def stats(cache: Cache, engine: Engine, run_id: RunId = DEFAULT_RUN, minutes: Minutes = 1) -> Response:
    """Totals of the run, plus scored rows, alerts, throughput and latency over the last `minutes`.

    The totals (volume, labelled, frauds, alerts, first/last scored_at) are read on every
    request from the trigger-kept counters (a few index probes), so a stored row counts at
    once, whoever stored it. The window part comes from the per-minute rollups (migration
    0009): the window is the last `minutes` whole minutes plus the current one so far
    (`window_start`, a minute boundary), and its latency percentiles are read from the
    latency bins (`latency_ms.within_factor`). It goes through the result cache (at most
    the cache's bound old); header `X-As-Of` says when its data were read. No read scans
    the window's rows: the cost is a few rollup rows per minute of the window.
    """

    async def compute(conn: AsyncConnection) -> Stats:
        now = (await conn.execute(queries.now())).scalar_one()
        since = _floor(now, MINUTE) - timedelta(minutes=minutes)
        totals = await read_run_totals(conn, run_id)
        window = (await conn.execute(queries.window_rollup(run_id, since))).one()
        latency = (await conn.execute(queries.latency_rollup(run_id, since))).all()
        true_alerts = (
            (await conn.execute(queries.true_alerts_rollup(run_id))).scalar_one() if totals.alerts else 0
        )
        began = max(since, totals.first) if totals.first is not None else since
        seconds = (now - began).total_seconds()
        throughput = window.scored / max(seconds, 1.0) if window.scored else 0.0
        return Stats(
            run_id=run_id,
            **_totals_fields(totals),
            true_alerts=true_alerts,
            window_minutes=minutes,
            window_start=since,
            window_scored=window.scored,
            window_alerts=window.alerts,
            throughput_per_s=throughput,
            latency_ms=latency_summary({row.bin: row.n for row in latency}),
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


def latency_summary(counts: Mapping[int, int]) -> LatencySummary:
    """Percentiles (nearest rank) and the maximum of the latencies counted per bin of `LATENCY_BINS`,
    each the geometric middle of its bin: within `LATENCY_ERROR_FACTOR` of the exact value."""
    histogram = np.zeros(LATENCY_BINS.count, np.int64)
    for i, n in counts.items():
        histogram[i] += n
    return LatencySummary(
        count=int(histogram.sum()),
        p50=percentile_from_counts(LATENCY_BINS, histogram, 50),
        p95=percentile_from_counts(LATENCY_BINS, histogram, 95),
        p99=percentile_from_counts(LATENCY_BINS, histogram, 99),
        max=percentile_from_counts(LATENCY_BINS, histogram, 100),
        within_factor=LATENCY_ERROR_FACTOR,
    )


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
    minutes: Minutes = 60,
    bucket_seconds: Annotated[
        int,
        Query(
            ge=1, le=3600, description="bucket width: whole minutes (60, 120, ... 3600), the rollups' grain"
        ),
    ] = 60,
) -> Response:
    """Buckets of `bucket_seconds` over the last `minutes`, by scored_at; empty ones as 0.

    Read from the per-minute rollups (migration 0009), so a bucket is a whole number of
    minutes (as a time-series database never draws buckets finer than it stores). The
    buckets are aligned to 2000-01-01 UTC; the first one starts at or before `now -
    minutes` and is whole, the last one is the current bucket so far (`seconds` says how
    much of it has passed). Latency percentiles per bucket come from the latency bins
    (`within_factor`).
    """
    if bucket_seconds % 60:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"bucket_seconds={bucket_seconds}: buckets are whole minutes (60, 120, ... 3600), "
            "as the rollups count rows per minute",
        )

    async def compute(conn: AsyncConnection) -> TimeSeries:
        bucket = timedelta(seconds=bucket_seconds)
        now = (await conn.execute(queries.now())).scalar_one()
        start = _floor(now - timedelta(minutes=minutes), bucket)
        by_start = {
            row.bucket_start: row for row in (await conn.execute(queries.timeseries(run_id, start, bucket)))
        }
        latency: dict[datetime, dict[int, int]] = {}
        for row in await conn.execute(queries.latency_rollup(run_id, start, bucket)):
            latency.setdefault(row.bucket_start, {})[row.bin] = row.n
        points = []
        while start <= now:
            row = by_start.get(start)
            summary = latency_summary(latency.get(start, {}))
            points.append(
                TimePoint(
                    t=start,
                    seconds=min(bucket, now - start).total_seconds(),
                    scored=row.scored if row else 0,
                    alerts=row.alerts if row else 0,
                    frauds=row.frauds if row else 0,
                    latency_p50_ms=summary.p50,
                    latency_p99_ms=summary.p99,
                )
            )
            start += bucket
        return TimeSeries(
            run_id=run_id,
            minutes=minutes,
            bucket_seconds=bucket_seconds,
            latency_within_factor=LATENCY_ERROR_FACTOR,
            points=points,
        )

    key = ("timeseries", run_id, minutes, bucket_seconds)
    return await cached_response(cache, key, run_id, compute, TIMED)


def _floor(moment: datetime, bucket: timedelta) -> datetime:
    """Start of the bucket holding `moment`, aligned like date_bin (origin 2000-01-01 UTC)."""
    origin = queries.BUCKET_ORIGIN
    return origin + ((moment - origin) // bucket) * bucket
