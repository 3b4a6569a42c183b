"""Histograms computed in PostgreSQL (width_bucket), split by ground-truth class and alert."""

from __future__ import annotations

import math
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Response, status
from fastapi.responses import JSONResponse
from sqlalchemy.ext.asyncio import AsyncConnection

from api import queries
from api.cache import FULL_SCAN, ResultCache, cached_response
from api.deps import Cache
from api.params import DEFAULT_RUN, RunId
from api.schemas import Distribution, HistogramSeries, Problem
from api.totals import read_run_totals
from core.db.schema import transactions

router = APIRouter(prefix="/api/distributions", tags=["distributions"])

Bins = Annotated[int, Query(ge=1, le=200, description="number of equal-width bins")]
Scale = Annotated[
    Literal["auto", "linear", "log"],
    Query(description="log: equal bins in log(1 + x), for non-negative features; auto: log for Amount"),
]
_LOG_BY_DEFAULT = {"amount", "recon_error"}


class UnknownFeature(Exception):
    """A feature name that is not in `queries.FEATURES`."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def unknown_feature_response(name: str, status_code: int) -> JSONResponse:
    problem = Problem(detail=f"unknown feature {name[:60]!r}", valid=queries.FEATURE_NAMES)
    return JSONResponse(problem.model_dump(), status_code=status_code)


def _add(counts: dict[str, list[int]], sums: dict[str, float], name: str, rows, sign: int = 1) -> None:
    for row in rows:
        counts[name][row.bucket - 1] += sign * row.n
        sums[name] += sign * (row.total or 0.0)


async def _counts(
    conn: AsyncConnection, feature: queries.Feature, run_id: str, lo: float, hi: float, bins: int, log: bool
) -> tuple[dict[str, list[int]], dict[str, float]]:
    """Per-bin counts and sums per series, each from one pass over ONE table plus a few rare rows.

    A `transactions` feature: one pass grouped by label, and the alert rows (rare) joined.
    A `scores` feature: one pass grouped by alert, and the frauds (rare, partial index) and
    the unlabelled rows (only if the run has any) joined; normal = all - fraud - unlabelled.
    """
    counts = {name: [0] * bins for name in ("normal", "fraud", "unlabelled", "alert")}
    sums = dict.fromkeys(counts, 0.0)
    args = (feature, run_id, lo, hi, bins, log)
    if feature.column.table is transactions:
        for row in (await conn.execute(queries.histogram_by_label(*args))).all():
            name = "unlabelled" if row.label is None else ("fraud" if row.label == 1 else "normal")
            _add(counts, sums, name, [row])
        _add(counts, sums, "alert", (await conn.execute(queries.histogram_alerts(*args))).all())
        return counts, sums
    everything = (await conn.execute(queries.histogram_by_alert(*args))).all()
    _add(counts, sums, "normal", everything)
    _add(counts, sums, "alert", [row for row in everything if row.alert])
    labels: list[tuple[str, int | None]] = [("fraud", 1)]
    if (await read_run_totals(conn, run_id)).unlabelled:
        labels.append(("unlabelled", None))
    for name, label in labels:
        rows = (await conn.execute(queries.histogram_of_label(*args, label))).all()
        _add(counts, sums, name, rows)
        _add(counts, sums, "normal", rows, sign=-1)
    return counts, sums


async def _distribution(
    cache: ResultCache, feature: queries.Feature, run_id: str, bins: int, scale: str
) -> Response:
    key = feature.name.lower()
    log = scale == "log" or (scale == "auto" and key in _LOG_BY_DEFAULT)
    if log and not feature.nonnegative:
        problem = Problem(detail=f"scale=log needs a non-negative feature; {feature.name} can be negative")
        return JSONResponse(problem.model_dump(), status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)

    async def compute(conn: AsyncConnection) -> Distribution:
        lo, hi = (await conn.execute(queries.value_range(feature, run_id, log))).one()
        if lo is None:
            lo, hi = 0.0, 1.0
        if hi <= lo:
            hi = lo + 1.0
        counts, sums = await _counts(conn, feature, run_id, lo, hi, bins, log)
        series = []
        for name, values in counts.items():
            total = sum(values)
            series.append(
                HistogramSeries(
                    name=name, counts=values, total=total, mean=sums[name] / total if total else None
                )
            )
        width = (hi - lo) / bins
        edges = [lo + i * width for i in range(bins)] + [hi]
        if log:
            edges = [math.expm1(edge) for edge in edges]
        return Distribution(
            feature=feature.name,
            run_id=run_id,
            scale="log" if log else "linear",
            bins=bins,
            edges=edges,
            series=series,
            rows=sum(s.total for s in series if s.name != "alert"),
        )

    return await cached_response(cache, ("distribution", key, run_id, bins, log), run_id, compute, FULL_SCAN)


@router.get(
    "/amount",
    response_model=Distribution,
    summary="Histogram of Amount (log scale), by class",
    responses={422: {"model": Problem}},
)
async def amount(
    cache: Cache, run_id: RunId = DEFAULT_RUN, bins: Bins = 50, scale: Scale = "auto"
) -> Response:
    return await _distribution(cache, queries.FEATURES["amount"], run_id, bins, scale)


@router.get(
    "/feature/{name}",
    response_model=Distribution,
    summary="Histogram of any feature, by class",
    responses={
        404: {"model": Problem, "description": "unknown feature; `valid` lists the names"},
        422: {"model": Problem},
    },
)
async def feature(
    name: Annotated[str, Path(max_length=40)],
    cache: Cache,
    run_id: RunId = DEFAULT_RUN,
    bins: Bins = 50,
    scale: Scale = "auto",
) -> Response:
    """`name`: Time, V1..V28, Amount, recon_error or score (case-insensitive)."""
    found = queries.lookup_feature(name)
    if found is None:
        return unknown_feature_response(name, status.HTTP_404_NOT_FOUND)
    return await _distribution(cache, found, run_id, bins, scale)
