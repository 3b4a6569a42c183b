"""Feature-pair points for a scatter plot: a random, balanced sample of frauds and normal rows."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response, status
from sqlalchemy.ext.asyncio import AsyncConnection

from api import queries
from api.cache import FULL_SCAN, cached_response
from api.deps import Cache
from api.params import DEFAULT_RUN, RunId
from api.routes.distributions import unknown_feature_response
from api.schemas import Problem, Scatter, ScatterPoint

router = APIRouter(prefix="/api", tags=["distributions"])

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
    """Half frauds, half normal rows (fewer if the run has fewer): in each class, the rows with
    the smallest keys of the sample the write path keeps (migration 0022), a uniform sample of
    the run's retained rows; the same rows at every call, a larger `n` adding to them."""
    fx, fy = queries.lookup_feature(x), queries.lookup_feature(y)
    for name, found in ((x, fx), (y, fy)):
        if found is None:
            return unknown_feature_response(name, status.HTTP_422_UNPROCESSABLE_CONTENT)
    assert fx is not None and fy is not None

    async def compute(conn: AsyncConnection) -> Scatter:
        half = n // 2
        rows = (await conn.execute(queries.scatter_points(fx, fy, run_id, half, n - half))).all()
        frauds = [row for row in rows if row.fraud]
        normals = [row for row in rows if not row.fraud]
        points = [
            ScatterPoint(id=r.id, x=r.x, y=r.y, label=r.label, score=r.score, alert=r.alert)
            for r in (*frauds, *normals)
        ]
        return Scatter(
            run_id=run_id, x=fx.name, y=fy.name, points=points, frauds=len(frauds), normals=len(normals)
        )

    return await cached_response(cache, ("scatter", fx.name, fy.name, n, run_id), run_id, compute, FULL_SCAN)
