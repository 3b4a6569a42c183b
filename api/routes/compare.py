"""Champion against challenger on the same live rows with a known label: `GET /api/models/compare`.

The rows are those both versions scored (one as the champion, the other as the shadow),
inside a window of data time (the last `hours` up to the newest shadow-scored row), at
most `max_rows` of them, newest first; rows inside either version's in-sample stretch are
left out and counted. The numbers come from `core.comparison.compare` (paired bootstrap);
the reads from `core.db.comparison` (indexed; the known label's one definition is there).
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import asyncpg
import numpy as np
from fastapi import APIRouter, HTTPException, Query, status

from api.deps import AppSettings, PoolConnection
from api.schemas import ComparedVersion, DisagreementOut, ModelComparison, Problem
from core.comparison import ComparedRows, Comparison, InSample, VersionResult, compare
from core.costs import savings_at
from core.db.comparison import newest_shadow_time, read_pair
from core.db.registry import UnknownVersion, resolve_version

router = APIRouter(prefix="/api/models", tags=["registry"])

#: The widest window a request may ask for (hours of data time).
MAX_HOURS = 96.0

_ROLES = (
    "SELECT CASE WHEN active THEN 'champion' ELSE 'shadow' END AS role, version "
    "FROM model_versions WHERE active OR shadow"
)
_EMPTY = np.zeros(0)
_NOTHING = ComparedRows([], *[_EMPTY] * 5, _EMPTY.astype(bool), _EMPTY.astype(bool))

VersionQuery = Annotated[
    str | None,
    Query(
        min_length=6, max_length=64, pattern=r"^[0-9a-fA-F]+$", description="a version, or a unique prefix"
    ),
]


def _pair(values: tuple[float, float] | None) -> list[float] | None:
    return [float(values[0]), float(values[1])] if values is not None else None


def net_savings(rows: ComparedRows, alert: np.ndarray, cost_per_alert: float | None) -> float | None:
    """Fraud amount caught by these alert flags minus their review cost (`core.costs`' definition)."""
    if cost_per_alert is None or not len(rows):
        return None
    flags = alert.astype(np.float64)  # alerting = flag >= 1: the stored flag, at its own threshold
    return savings_at(rows.label.astype(bool), flags, rows.amount, 1.0, cost_per_alert).net_savings


def _version_out(
    version: str, registry: dict[str, Any], result: VersionResult, savings: float | None
) -> ComparedVersion:
    row = registry[version]
    stretch = row["in_sample"]
    return ComparedVersion(
        version=version,
        role="champion" if row["active"] else "shadow" if row["shadow"] else None,
        threshold=row["threshold"],
        in_sample=[stretch.time_from, stretch.time_to] if stretch is not None else None,
        auprc=result.auprc,
        auprc_interval=_pair(result.auprc_interval),
        alerts=result.alerts,
        caught=result.caught,
        precision=result.precision,
        precision_interval=_pair(result.precision_interval),
        recall=result.recall,
        recall_interval=_pair(result.recall_interval),
        net_savings=savings,
    )


async def _registry(conn: asyncpg.Connection, versions: list[str]) -> dict[str, Any]:
    rows = await conn.fetch(
        "SELECT version, threshold, manifest, active, shadow FROM model_versions WHERE version = ANY($1)",
        versions,
    )
    out = {}
    for row in rows:
        manifest = row["manifest"]
        manifest = json.loads(manifest) if isinstance(manifest, str) else manifest
        out[row["version"]] = {
            "threshold": float(row["threshold"]),
            "active": row["active"],
            "shadow": row["shadow"],
            "in_sample": InSample.of(manifest),
        }
    return out


@router.get(
    "/compare",
    response_model=ModelComparison,
    summary="Champion against shadow (or any two versions) on the same labelled live rows",
    responses={
        404: {"model": Problem, "description": "no such version"},
        409: {"model": Problem, "description": "no shadow to compare with, and no versions given"},
    },
)
async def compare_versions(
    conn: PoolConnection,
    settings: AppSettings,
    a: VersionQuery = None,
    b: VersionQuery = None,
    hours: Annotated[float, Query(gt=0, le=MAX_HOURS, description="window of data time, hours")] = 24.0,
    until: Annotated[
        float | None,
        Query(ge=0, le=1e12, description="the window's end (data time, s); default: the newest shadow row"),
    ] = None,
    max_rows: Annotated[
        int,
        Query(
            ge=100,
            le=1_000_000,
            description="cap on each version's shadow rows read (the window is cut to the newest)",
        ),
    ] = 300_000,
    resamples: Annotated[int, Query(ge=100, le=10_000, description="bootstrap resamples")] = 1000,
    seed: Annotated[int, Query(ge=0, le=2**32 - 1)] = 0,
    top: Annotated[int, Query(ge=0, le=200, description="disagreements listed")] = 20,
) -> ModelComparison:
    """a defaults to the champion and b to the shadow. AUPRC of each with a 95% bootstrap
    interval, the paired interval of b - a, precision and recall at each one's own alert flag,
    and the alerts on which they disagree."""
    try:
        a_version = await resolve_version(conn, a) if a else None
        b_version = await resolve_version(conn, b) if b else None
    except UnknownVersion as error:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(error)) from None
    roles = {r["role"]: r["version"] for r in await conn.fetch(_ROLES)}
    a_version = a_version or roles.get("champion")
    b_version = b_version or roles.get("shadow")
    if a_version is None or b_version is None:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            "nothing to compare: no champion or no shadow is set "
            "(`fraudstream model shadow VERSION`), and versions a and b were not both given",
        )
    if a_version == b_version:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "a and b are the same version")
    registry = await _registry(conn, [a_version, b_version])

    end = until if until is not None else await newest_shadow_time(conn, (a_version, b_version))
    notes: list[str] = []
    if end is None:
        start, read = None, None
        notes.append("no live row has been scored by both versions yet (is one of them the shadow?)")
    else:
        start = end - hours * 3600.0
        read = await read_pair(conn, a_version, b_version, start, end, max_rows)
        if read.truncated:
            start = read.time_from
            notes.append(
                f"the window holds more than {max_rows} shadow-scored rows of a version: it was cut to "
                f"start at data time {start:.0f} s (ask for fewer hours, or a larger max_rows)"
            )
    if read is not None:
        kept, left_out = read.rows.outside(registry[a_version]["in_sample"], registry[b_version]["in_sample"])
        in_window = len(read.rows)
    else:
        kept, left_out, in_window = _NOTHING, 0, 0
    if left_out:
        notes.append(f"{left_out} rows inside a version's in-sample stretch were left out")
    result: Comparison = compare(kept, resamples=resamples, seed=seed, top=top)
    if result.rows and not result.frauds:
        notes.append("no fraud among the compared rows: AUPRC and recall are undefined")
    cost = settings.cost_per_alert
    return ModelComparison(
        a=_version_out(a_version, registry, result.a, net_savings(kept, kept.alert_a, cost)),
        b=_version_out(b_version, registry, result.b, net_savings(kept, kept.alert_b, cost)),
        cost_per_alert=cost,
        label_source="known_labels",  # reviews and chargebacks first, else the replayed label
        time_from=start,
        time_to=end,
        hours=hours,
        rows_in_window=in_window,
        left_out_in_sample=left_out,
        rows=result.rows,
        frauds=result.frauds,
        truncated=read.truncated if read is not None else False,
        auprc_difference=result.auprc_difference,
        auprc_difference_interval=_pair(result.auprc_difference_interval),
        b_better_share=result.b_better_share,
        resamples=result.resamples,
        seed=result.seed,
        only_a_alerts=result.only_a_alerts,
        only_a_frauds=result.only_a_frauds,
        only_b_alerts=result.only_b_alerts,
        only_b_frauds=result.only_b_frauds,
        top_disagreements=[DisagreementOut(**vars(d)) for d in result.top_disagreements],
        notes=notes,
    )
