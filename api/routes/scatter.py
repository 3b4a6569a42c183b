"""Feature-pair points for a scatter plot: a random, balanced sample of frauds and normal rows."""

from __future__ import annotations

from typing import Annotated

import numpy as np
from fastapi import APIRouter, Query, Response, status
from sqlalchemy.ext.asyncio import AsyncConnection

from api import queries
from api.cache import FULL_SCAN, cached_response
from api.deps import Cache
from api.params import DEFAULT_RUN, RunId
from api.routes.distributions import SECONDS_PER_HOUR, unknown_feature_response
from api.schemas import Problem, Scatter, ScatterPoint
from api.snapshot import run_together, sibling_reader

router = APIRouter(prefix="/api", tags=["distributions"])

#: Block-sample this many times the rows we need, to have enough after filtering by run and class.
_OVERSAMPLE = 20
#: Up to this many frauds in the run (or `PROBE_RATIO` times the frauds asked, if more), the
#: frauds are drawn uniformly among all of them (a random sort of their partial index, whose
#: cost grows with them); above it, by index probes whose cost does not. The ratio
#: keeps the probes' sample a small share of the frauds, where one found twice is rare.
SORTED_MAX = 5_000
PROBE_RATIO = 20
#: Probes per fraud wanted (two probes may find the same fraud), and rounds of them at most.
_PROBES_PER_POINT = 1.25
_PROBE_ROUNDS = 3

FeatureName = Annotated[str, Query(max_length=40, description="Time, V1..V28, Amount, recon_error or score")]


@router.get(
    "/scatter",
    response_model=Scatter,
    summary="Balanced random sample of two features",
    responses={422: {"model": Problem, "description": "unknown feature; `valid` lists the names"}},
)
async def scatter(
    cache: Cache,
    x: FeatureName = "V14",
    y: FeatureName = "V17",
    n: Annotated[int, Query(ge=2, le=5000, description="points in total (half frauds)")] = 500,
    run_id: RunId = DEFAULT_RUN,
) -> Response:
    fx, fy = queries.lookup_feature(x), queries.lookup_feature(y)
    for name, found in ((x, fx), (y, fy)):
        if found is None:
            return unknown_feature_response(name, status.HTTP_422_UNPROCESSABLE_CONTENT)
    assert fx is not None and fy is not None

    async def compute(conn: AsyncConnection) -> Scatter:
        half = n // 2
        # The two samples are independent and cost about the same: run at once, one snapshot.
        async with sibling_reader(conn) as other:
            if other is None:
                frauds = await _sample_frauds(conn, fx, fy, run_id, half)
                normals = await _sample_normals(conn, fx, fy, run_id, n - half)
            else:
                frauds, normals = await run_together(
                    _sample_frauds(conn, fx, fy, run_id, half),
                    _sample_normals(other, fx, fy, run_id, n - half),
                )
        points = [
            ScatterPoint(id=r.id, x=r.x, y=r.y, label=r.label, score=r.score, alert=r.alert)
            for r in (*frauds, *normals)
        ]
        return Scatter(
            run_id=run_id, x=fx.name, y=fy.name, points=points, frauds=len(frauds), normals=len(normals)
        )

    return await cached_response(cache, ("scatter", fx.name, fy.name, n, run_id), run_id, compute, FULL_SCAN)


async def _sample_normals(
    conn: AsyncConnection, fx: queries.Feature, fy: queries.Feature, run_id: str, n: int
) -> list:
    """`n` rows of the run that are not known frauds (fewer if it has fewer): a block sample."""
    estimate = (await conn.execute(queries.table_rows_estimate())).scalar() or 0
    normals: list = []
    if estimate > 0:
        percent = min(100.0, 100.0 * n * _OVERSAMPLE / estimate)
        if percent < 100.0:
            normals = list((await conn.execute(queries.scatter_normals(fx, fy, run_id, n, percent))).all())
    if len(normals) < n:  # a small run in a big table: sample its rows directly
        normals = list((await conn.execute(queries.scatter_normals(fx, fy, run_id, n, None))).all())
    return normals


async def _sample_frauds(
    conn: AsyncConnection, fx: queries.Feature, fy: queries.Feature, run_id: str, n: int
) -> list:
    """`n` frauds of the run (fewer if it has fewer).

    While the run has few (above), a uniform sample among all of them. Past that, the
    frauds nearest after random data times: the hours drawn in proportion to their frauds
    (`rollup_hours`, known class) and the time uniform within the hour, one index probe per
    point, so the cost does not grow with the frauds kept. Within an hour, a fraud that
    follows a longer gap is likelier to be drawn; across hours the sample follows the frauds.
    (The normal rows need no probes: a block sample finds them on few pages.)
    """
    frauds = (await conn.execute(queries.run_counter(run_id, "frauds"))).scalar_one()
    many = frauds > max(SORTED_MAX, PROBE_RATIO * n)
    hours = (await conn.execute(queries.fraud_hours(run_id))).all() if many else []
    if not hours:
        return list((await conn.execute(queries.scatter_frauds(fx, fy, run_id, n))).all())
    rng = np.random.default_rng()
    weights = np.array([row.frauds for row in hours], dtype=np.float64)
    hour_numbers, chances = np.array([row.hour for row in hours]), weights / weights.sum()
    distinct: dict[str, object] = {}  # in the probes' order
    for _ in range(_PROBE_ROUNDS):
        probes = int(np.ceil((n - len(distinct)) * _PROBES_PER_POINT)) + 8
        drawn = rng.choice(hour_numbers, size=probes, p=chances)
        times = (drawn * SECONDS_PER_HOUR + rng.uniform(0.0, SECONDS_PER_HOUR, probes)).tolist()
        for row in (await conn.execute(queries.scatter_fraud_probes(fx, fy, run_id, times))).all():
            distinct.setdefault(row.id, row)
        if len(distinct) >= n:
            break
    return list(distinct.values())[:n]
