"""Drift per hour of data: the live rows a version scored, against the reference its bundle keeps.

`GET /api/drift?hours=24&until=&version=&minutes=` answers, for each hour of data in the window
(ending with the hour of `until`, by default the latest stored row), the population
stability index of every input (V1..V28, Amount), of the reconstruction error and of the
score against the version's reference histograms (`manifest["reference"]`, `core.drift`),
the alert rate beside the rate the reference expects, and the worst movers of the window;
with `minutes`, the same for every row scored in the last N minutes (wall clock, read
through the scores' `(run_id, scored_at)` index), so a shift shows before its hour ends.
PSI is not given for an hour with fewer than `core.drift.MIN_ROWS_FOR_PSI` rows: below
that, chance alone nears the 0.1 threshold.

The counts come from `core.db.drift.drift_counts`: the drift rollups (per data hour and
reference bin, kept as rows are stored) for a window of at most 96 hours of data.
"""

from __future__ import annotations

import json
import math
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, status

from api.deps import Models, PoolConnection
from api.schemas import DriftHour, DriftMover, DriftOut, DriftRecent, Problem
from core.db.drift import MAX_RECENT_MINUTES, MAX_WINDOW_HOURS, SECONDS_PER_HOUR, drift_counts, recent_counts
from core.db.registry import UnknownVersion, resolve_version
from core.db.schema import LIVE_RUN
from core.drift import MIN_ROWS_FOR_PSI, PSI_MAJOR, PSI_MODERATE, hour_drift

router = APIRouter(prefix="/api", tags=["drift"])

#: How many movers `worst` lists.
WORST = 8


@router.get(
    "/drift",
    response_model=DriftOut,
    summary="PSI per input, recon error and score per hour of data, against the version's reference",
    responses={
        404: {"model": Problem},
        409: {"model": Problem, "description": "the bundle has no reference"},
    },
)
async def drift(
    conn: PoolConnection,
    served: Models,
    hours: Annotated[int, Query(ge=1, le=MAX_WINDOW_HOURS, description="hours of data in the window")] = 24,
    until: Annotated[
        float | None, Query(ge=0, le=1e9, description="data time the window ends with (default: latest row)")
    ] = None,
    version: Annotated[
        str | None,
        Query(min_length=6, max_length=64, pattern=r"^[0-9a-fA-F]+$", description="default: champion"),
    ] = None,
    minutes: Annotated[
        float | None,
        Query(
            gt=0, le=MAX_RECENT_MINUTES, description="also the rows scored in the last N minutes (wall clock)"
        ),
    ] = None,
) -> DriftOut:
    if version is None:
        if served.champion is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no champion is registered; name a version")
        version = served.champion.version
    else:
        try:
            version = await resolve_version(conn, version)
        except UnknownVersion as error:
            raise HTTPException(status.HTTP_404_NOT_FOUND, str(error)) from None
    reference = await conn.fetchval(
        "SELECT manifest -> 'reference' FROM model_versions WHERE version = $1", version
    )
    if reference is None:
        raise HTTPException(status.HTTP_409_CONFLICT, f"version {version} has no reference histograms")
    reference = _json(reference)
    if until is None:
        until = await conn.fetchval("SELECT max(time) FROM transactions WHERE run_id = $1", LIVE_RUN)
    last_hour = math.floor((until or 0.0) / SECONDS_PER_HOUR)
    time_from = (last_hour + 1 - hours) * SECONDS_PER_HOUR
    time_to = (last_hour + 1) * SECONDS_PER_HOUR
    counted = await drift_counts(
        conn, version=version, reference=reference, time_from=max(time_from, 0.0), time_to=time_to
    )
    answer = [
        DriftHour(
            hour=h.hour,
            time_from=h.hour * SECONDS_PER_HOUR,
            **hour_drift(reference, h.counts, h.rows, h.alerts),
        )
        for h in counted
    ]
    recent = None
    if minutes is not None:
        live = await recent_counts(conn, version=version, reference=reference, minutes=minutes)
        recent = DriftRecent(minutes=minutes, **hour_drift(reference, live.counts, live.rows, live.alerts))
    return DriftOut(
        version=version,
        recent=recent,
        hours=answer,
        worst=_worst(answer),
        time_from=max(time_from, 0.0),
        time_to=time_to,
        moderate=PSI_MODERATE,
        major=PSI_MAJOR,
        min_rows=MIN_ROWS_FOR_PSI,
    )


def _json(value: object) -> dict:
    return json.loads(value) if isinstance(value, str) else value  # type: ignore[return-value]


def _worst(hours: list[DriftHour]) -> list[DriftMover]:
    """Each quantity's largest PSI in the window, largest first."""
    best: dict[str, DriftMover] = {}
    for hour in hours:
        for name, value in hour.psi.items():
            if value is not None and (name not in best or value > best[name].psi):
                best[name] = DriftMover(
                    quantity=name, psi=value, level=hour.level[name] or "stable", hour=hour.hour
                )
    return sorted(best.values(), key=lambda m: -m.psi)[:WORST]
