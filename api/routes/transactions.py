"""Stored transactions: the full list, model alerts and confirmed frauds, newest first.

Keyset pagination: each page ends with the cursor of its last row (scored_at, id) and
the next page starts strictly after it, so pages never overlap or skip rows while new
rows arrive (they land before the first page, not between pages).
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
from fastapi import APIRouter, HTTPException, Query, Response, status
from sqlalchemy.ext.asyncio import AsyncConnection

from api import queries
from api.cache import FIRST_PAGE, ResultCache, cached_response
from api.deps import Cache, Engine, Explanations, Models, Pool, get_champion
from api.params import DEFAULT_RUN, RunId, decode_cursor, encode_cursor
from api.schemas import Problem, Transaction, TransactionPage
from core.db.partitions import DAY_SECONDS, beyond_retention, retained_from
from core.db.schema import FEATURE_COLUMNS, LIVE_RUN
from core.features import PCA_COLUMNS

router = APIRouter(prefix="/api", tags=["transactions"])

Limit = Annotated[int, Query(ge=1, le=1000, description="rows per page")]
Cursor = Annotated[str | None, Query(max_length=400, description="next_cursor of the previous page")]
Score = Annotated[float | None, Query(ge=0, le=1, allow_inf_nan=False)]
DataTime = Annotated[float | None, Query(allow_inf_nan=False, description="data time, seconds")]
WithFeatures = Annotated[bool, Query(description="include V1..V28")]

EXPLAIN_LIMIT = 100


async def _page(
    conn, where: queries.ListFilter, limit: int, cursor: str | None, with_features: bool
) -> tuple[list, str | None]:
    after = decode_cursor(cursor) if cursor else None
    if queries.is_alert_list(where):  # keys from the small alert index, then only their days' rows
        keys = (await conn.execute(queries.alert_page(where.run_id, limit, after))).all()
        more, keys = len(keys) > limit, keys[:limit]
        listed = queries.listed_rows(where.run_id, [(k.id, k.day) for k in keys], with_features)
        rows = (await conn.execute(listed)).all() if keys else []
        last = keys[-1] if keys else None
    else:
        rows = (await conn.execute(queries.transaction_page(where, limit, after, with_features))).all()
        more = len(rows) > limit
        rows = rows[:limit]
        last = rows[-1] if rows else None
    next_cursor = encode_cursor(last.scored_at, last.id) if more and last is not None else None
    return rows, next_cursor


async def _cached_page(
    cache: ResultCache, where: queries.ListFilter, limit: int, cursor: str | None, with_features: bool
) -> Response:
    """The first page through the result cache (the dashboard polls it; see `api.cache`).

    Later pages (a cursor) are read directly: a keyset range scan, and stable, since new
    rows land before the first page.
    """

    async def compute(conn: AsyncConnection) -> TransactionPage:
        rows, next_cursor = await _page(conn, where, limit, cursor, with_features)
        items = [_transaction(r, with_features) for r in rows]
        return TransactionPage(run_id=where.run_id, items=items, next_cursor=next_cursor, limit=limit)

    if cursor is not None:
        return await cached_response(cache, None, where.run_id, compute)
    key = ("page", where, limit, with_features)
    return await cached_response(cache, key, where.run_id, compute, FIRST_PAGE)


def _transaction(row, with_features: bool, top_features=None) -> Transaction:
    features = {name: getattr(row, name.lower()) for name in PCA_COLUMNS} if with_features else None
    return Transaction(
        id=row.id,
        run_id=row.run_id,
        time=row.time,
        amount=row.amount,
        label=row.label,
        score=row.score,
        recon_error=row.recon_error,
        alert=row.alert,
        model_version=row.model_version,
        scored_at=row.scored_at,
        latency_ms=row.latency_ms,
        features=features,
        top_features=top_features,
    )


def _check_ranges(score_min, score_max, time_from, time_to) -> None:
    if score_min is not None and score_max is not None and score_min > score_max:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "score_min must not exceed score_max")
    if time_from is not None and time_to is not None and time_from > time_to:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "time_from must not exceed time_to")


@router.get(
    "/transactions",
    response_model=TransactionPage,
    summary="Stored transactions, newest first",
    responses={404: {"model": Problem, "description": "the whole time range is beyond retention"}},
)
async def list_transactions(
    cache: Cache,
    pool: Pool,
    run_id: RunId = DEFAULT_RUN,
    label: Annotated[int | None, Query(ge=0, le=1, description="ground truth: 0 or 1")] = None,
    alert: Annotated[bool | None, Query(description="model alert flag")] = None,
    score_min: Score = None,
    score_max: Score = None,
    time_from: DataTime = None,
    time_to: DataTime = None,
    limit: Limit = 100,
    cursor: Cursor = None,
    features: WithFeatures = True,
) -> Response:
    _check_ranges(score_min, score_max, time_from, time_to)
    if time_to is not None and run_id == LIVE_RUN:
        first_kept = await retained_from(pool)
        if first_kept is not None and time_to < first_kept * DAY_SECONDS:
            raise HTTPException(
                status.HTTP_404_NOT_FOUND, f"time_to={time_to:g}: {beyond_retention(first_kept)}"
            )
    where = queries.ListFilter(run_id, label, alert, score_min, score_max, time_from, time_to)
    return await _cached_page(cache, where, limit, cursor, features)


@router.get(
    "/anomalies", response_model=TransactionPage, summary="Confirmed frauds (label = 1), newest first"
)
async def list_anomalies(
    cache: Cache,
    run_id: RunId = DEFAULT_RUN,
    limit: Limit = 100,
    cursor: Cursor = None,
    features: WithFeatures = True,
) -> Response:
    return await _cached_page(cache, queries.ListFilter(run_id, label=1), limit, cursor, features)


@router.get("/alerts", response_model=TransactionPage, summary="Model alerts, newest first")
async def list_alerts(
    engine: Engine,
    cache: Cache,
    models: Models,
    explanations: Explanations,
    run_id: RunId = DEFAULT_RUN,
    limit: Limit = 100,
    cursor: Cursor = None,
    features: WithFeatures = True,
    explain: Annotated[
        bool,
        Query(
            description=f"add each alert's top features (TreeSHAP, loaded model; limit <= {EXPLAIN_LIMIT})"
        ),
    ] = False,
    top: Annotated[int, Query(ge=1, le=40, description="how many top features with explain")] = 5,
) -> Response | TransactionPage:
    """Newest first. With `explain=true`, each alert's top features by the served champion
    (TreeSHAP), read fresh (not cached)."""
    if not explain:
        return await _cached_page(cache, queries.ListFilter(run_id, alert=True), limit, cursor, features)
    if limit > EXPLAIN_LIMIT:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT, f"explain=true allows at most limit={EXPLAIN_LIMIT}"
        )
    async with engine.connect() as conn:
        rows, next_cursor = await _page(conn, queries.ListFilter(run_id, alert=True), limit, cursor, features)
        ids = [r.id for r in rows]
        stored = (await conn.execute(queries.raw_features(run_id, ids))).all() if rows else []
    tops: dict[str, list] = {}
    if rows:
        ensemble = await get_champion(models)
        raw = np.array([[getattr(r, name) for name in FEATURE_COLUMNS] for r in stored], dtype=np.float64)
        explained = await explanations.top(ensemble, run_id, [r.id for r in stored], raw, top)
        tops = {r.id: row for r, row in zip(stored, explained, strict=True)}
    items = [_transaction(r, features, tops.get(r.id)) for r in rows]
    return TransactionPage(run_id=run_id, items=items, next_cursor=next_cursor, limit=limit)
