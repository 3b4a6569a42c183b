"""Histograms read from the rollups (migration 0009): fixed bins, split by known label and alert.

Every stored row was counted into the fixed bins of `core.bins` as it arrived, so a
histogram costs O(bins) whatever the history. `bins` is now an upper bound: the occupied
run of fixed bins is merged, `ceil(occupied / bins)` consecutive bins at a time, into at
most `bins` bins whose edges are fixed edges (so counts are exact: no row is split between
bins). The outer fixed bins are open-ended (everything beyond the fixed range); their outer
edge is drawn one bin out (0 for a non-negative quantity, 1 for the score). Time is binned
by hour of data time.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import numpy as np
from fastapi import APIRouter, Path, Query, Response, status
from fastapi.responses import JSONResponse
from sqlalchemy.ext.asyncio import AsyncConnection

from api import queries
from api.cache import FOLDED, ResultCache, cached_response
from api.deps import Cache
from api.params import DEFAULT_RUN, RunId
from api.schemas import Distribution, HistogramSeries, Problem
from core.bins import QUANTITY_BINS, Bins

router = APIRouter(prefix="/api/distributions", tags=["distributions"])

BinsParam = Annotated[
    int, Query(ge=1, le=200, description="at most this many bins (consecutive fixed bins merged)")
]
Scale = Annotated[
    Literal["auto", "linear", "log"],
    Query(
        description="the bins' spacing is fixed per feature (log for Amount and recon_error); "
        "log is refused for features that can be negative"
    ),
]
SERIES = ("normal", "fraud", "unlabelled", "alert")
_CLASS_SERIES = {0: "normal", 1: "fraud", queries.UNLABELLED: "unlabelled"}
SECONDS_PER_HOUR = 3600.0


class UnknownFeature(Exception):
    """A feature name that is not in `queries.FEATURES`."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def unknown_feature_response(name: str, status_code: int) -> JSONResponse:
    problem = Problem(detail=f"unknown feature {name[:60]!r}", valid=queries.FEATURE_NAMES)
    return JSONResponse(problem.model_dump(), status_code=status_code)


def _outer_edges(bins: Bins, key: str) -> tuple[float, float]:
    """Where to draw the open-ended outer bins: one bin width (or ratio, for log bins) out."""
    first, last = bins.edges[0], bins.edges[-1]
    if bins.scale == "log":
        low, high = first / (bins.edges[1] / first), last * (last / bins.edges[-2])
    else:
        low, high = first - (bins.edges[1] - first), last + (last - bins.edges[-2])
    if key in ("amount", "recon_error", "score"):
        low = 0.0
    return low, (1.0 if key == "score" else high)


async def _fixed_counts(
    conn: AsyncConnection, key: str, run_id: str
) -> tuple[list[float], dict[str, np.ndarray], dict[str, float | None], str]:
    """Per fixed bin counts of each series, the fixed edges (outer ones drawn), the sums, the scale."""
    if key == "time":
        rows = (await conn.execute(queries.hours_rollup(run_id))).all()
        hour, cls, n, alerts = np.array([tuple(row) for row in rows], np.int64).reshape(-1, 4).T
        first = int(hour.min()) if hour.size else 0
        last = int(hour.max()) if hour.size else 0
        counts = {name: np.zeros(last - first + 1, dtype=np.int64) for name in SERIES}
        for value, name in _CLASS_SERIES.items():
            mine = cls == value
            np.add.at(counts[name], hour[mine] - first, n[mine])
        np.add.at(counts["alert"], hour - first, alerts)
        edges = [hour * SECONDS_PER_HOUR for hour in range(first, last + 2)]
        return edges, counts, dict.fromkeys(SERIES), "linear"
    bins = QUANTITY_BINS[key]
    low, high = _outer_edges(bins, key)
    edges = [low, *bins.edges, high]
    counts = {name: np.zeros(bins.count, dtype=np.int64) for name in SERIES}
    sums = dict.fromkeys(SERIES, 0.0)
    rows = (await conn.execute(queries.histogram_rollup(run_id, key))).all()
    cls, bin_, n, alerts = np.array([row[:4] for row in rows], np.int64).reshape(-1, 4).T
    total, alert_total = np.array([row[4:] for row in rows], np.float64).reshape(-1, 2).T
    for value, name in _CLASS_SERIES.items():
        mine = cls == value
        np.add.at(counts[name], bin_[mine], n[mine])
        sums[name] += float(total[mine].sum())
    np.add.at(counts["alert"], bin_, alerts)
    sums["alert"] += float(alert_total.sum())
    return edges, counts, sums, bins.scale


def merge(
    edges: list[float], counts: dict[str, np.ndarray], bins: int
) -> tuple[list[float], dict[str, list[int]]]:
    """At most `bins` bins: the occupied run of fixed bins, `ceil(run / bins)` at a time."""
    occupied = np.flatnonzero(sum(counts.values()))
    if occupied.size == 0:
        return [edges[0], edges[-1]], {name: [0] for name in counts}
    first, last = int(occupied[0]), int(occupied[-1])
    size = math.ceil((last - first + 1) / bins)
    starts = list(range(first, last + 1, size))
    merged_edges = [edges[i] for i in starts] + [edges[min(starts[-1] + size, last + 1)]]
    merged = {
        name: [int(values[start : start + size].sum()) for start in starts] for name, values in counts.items()
    }
    return merged_edges, merged


async def _distribution(
    cache: ResultCache, feature: queries.Feature, run_id: str, bins: int, scale: str
) -> Response:
    key = feature.name.lower()
    if scale == "log" and not feature.nonnegative:
        problem = Problem(detail=f"scale=log needs a non-negative feature; {feature.name} can be negative")
        return JSONResponse(problem.model_dump(), status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)

    async def compute(conn: AsyncConnection) -> Distribution:
        edges, counts, sums, spacing = await _fixed_counts(conn, key, run_id)
        merged_edges, merged = merge(edges, counts, bins)
        series = []
        for name, values in merged.items():
            total = sum(values)
            mean = sums[name] / total if total and sums[name] is not None else None
            series.append(HistogramSeries(name=name, counts=values, total=total, mean=mean))
        return Distribution(
            feature=feature.name,
            run_id=run_id,
            scale=spacing,
            bins=len(merged_edges) - 1,
            edges=merged_edges,
            series=series,
            rows=sum(s.total for s in series if s.name != "alert"),
        )

    return await cached_response(cache, ("distribution", key, run_id, bins), run_id, compute, FOLDED)


@router.get(
    "/amount",
    response_model=Distribution,
    summary="Histogram of Amount (log scale), by class",
    responses={422: {"model": Problem}},
)
async def amount(
    cache: Cache, run_id: RunId = DEFAULT_RUN, bins: BinsParam = 50, scale: Scale = "auto"
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
    bins: BinsParam = 50,
    scale: Scale = "auto",
) -> Response:
    """`name`: Time, V1..V28, Amount, recon_error or score (case-insensitive)."""
    found = queries.lookup_feature(name)
    if found is None:
        return unknown_feature_response(name, status.HTTP_404_NOT_FOUND)
    return await _distribution(cache, found, run_id, bins, scale)
