"""Histograms computed in PostgreSQL (width_bucket), split by ground-truth class and alert."""

from __future__ import annotations

import math
from typing import Annotated, Literal

from fastapi import APIRouter, Query, status
from fastapi.responses import JSONResponse

from api import queries
from api.deps import Cache, Connection, run_watermark
from api.params import DEFAULT_RUN, RunId
from api.schemas import Distribution, HistogramSeries, Problem

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


async def _distribution(
    conn, cache, feature: queries.Feature, run_id: str, bins: int, scale: str
) -> Distribution | JSONResponse:
    key = feature.name.lower()
    log = scale == "log" or (scale == "auto" and key in _LOG_BY_DEFAULT)
    if log and not feature.nonnegative:
        problem = Problem(detail=f"scale=log needs a non-negative feature; {feature.name} can be negative")
        return JSONResponse(problem.model_dump(), status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)

    async def compute() -> Distribution:
        lo, hi = (await conn.execute(queries.value_range(feature, run_id, log))).one()
        if lo is None:
            lo, hi = 0.0, 1.0
        if hi <= lo:
            hi = lo + 1.0
        rows = (await conn.execute(queries.histogram(feature, run_id, lo, hi, bins, log))).all()
        counts = {name: [0] * bins for name in ("normal", "fraud", "unlabelled", "alert")}
        sums = dict.fromkeys(counts, 0.0)
        for row in rows:
            i = row.bucket - 1
            name = "unlabelled" if row.label is None else ("fraud" if row.label == 1 else "normal")
            counts[name][i] += row.n
            sums[name] += row.total
            if row.alert:
                counts["alert"][i] += row.n
                sums["alert"] += row.total
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

    cache_key = ("distribution", key, run_id, bins, log)
    return await cache.get(cache_key, await run_watermark(conn, run_id), compute)


@router.get("/amount", response_model=Distribution, summary="Histogram of Amount (log scale), by class")
async def amount(
    conn: Connection, cache: Cache, run_id: RunId = DEFAULT_RUN, bins: Bins = 50, scale: Scale = "auto"
):
    return await _distribution(conn, cache, queries.FEATURES["amount"], run_id, bins, scale)


@router.get(
    "/feature/{name}",
    response_model=Distribution,
    summary="Histogram of any feature, by class",
    responses={404: {"model": Problem, "description": "unknown feature; `valid` lists the names"}},
)
async def feature(
    name: str,
    conn: Connection,
    cache: Cache,
    run_id: RunId = DEFAULT_RUN,
    bins: Bins = 50,
    scale: Scale = "auto",
):
    """`name`: Time, V1..V28, Amount, recon_error or score (case-insensitive)."""
    found = queries.lookup_feature(name)
    if found is None:
        return unknown_feature_response(name, status.HTTP_404_NOT_FOUND)
    return await _distribution(conn, cache, found, run_id, bins, scale)
