"""FastAPI dependencies: everything a route needs comes from the app's state through these.

The lifespan (`api.main`) opens the resources once per process and puts them on
`app.state`; routes ask for them with `Depends(...)`, so tests can build an app with
other settings and nothing is a module-level global.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Hashable
from dataclasses import dataclass
from typing import Annotated

import asyncpg
from fastapi import Depends, HTTPException, Request, Response, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from api.cache import Compute, ResultCache
from api.metrics import ApiMetrics
from core.ensemble import Ensemble
from core.settings import Settings

#: Response header of cached answers: when the data behind the answer were read (ISO 8601, UTC).
AS_OF_HEADER = "X-As-Of"

_bearer = HTTPBearer(
    auto_error=False, description="required by POST endpoints when FRAUDSTREAM_API_TOKEN is set"
)


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_engine(request: Request) -> AsyncEngine:
    return request.app.state.engine


async def get_connection(
    engine: Annotated[AsyncEngine, Depends(get_engine)],
) -> AsyncIterator[AsyncConnection]:
    """One pooled connection for the request (read-only work: no transaction is left open)."""
    async with engine.connect() as conn:
        yield conn


def get_pool(request: Request) -> asyncpg.Pool:
    """The asyncpg pool (predict's write path; the per-request totals of /api/stats)."""
    return request.app.state.pool


def get_ensemble(request: Request) -> Ensemble:
    ensemble = request.app.state.ensemble
    if ensemble is None:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            f"no model bundle is loaded: {request.app.state.model_error}",
        )
    return ensemble


def get_cache(request: Request) -> ResultCache:
    return request.app.state.cache


def get_metrics(request: Request) -> ApiMetrics:
    return request.app.state.metrics


def require_token(
    settings: Annotated[Settings, Depends(get_settings)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """401 unless the request carries `Authorization: Bearer <FRAUDSTREAM_API_TOKEN>` (when one is set)."""
    expected = settings.api_token
    if not expected:
        return
    given = credentials.credentials if credentials is not None else ""
    if not secrets.compare_digest(given.encode(), expected.encode()):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing or wrong bearer token (send Authorization: Bearer $FRAUDSTREAM_API_TOKEN)",
            headers={"WWW-Authenticate": "Bearer"},
        )


Connection = Annotated[AsyncConnection, Depends(get_connection)]
Engine = Annotated[AsyncEngine, Depends(get_engine)]
Pool = Annotated[asyncpg.Pool, Depends(get_pool)]
LoadedEnsemble = Annotated[Ensemble, Depends(get_ensemble)]
Cache = Annotated[ResultCache, Depends(get_cache)]
AppSettings = Annotated[Settings, Depends(get_settings)]
Metrics = Annotated[ApiMetrics, Depends(get_metrics)]
Authorized = Depends(require_token)


async def run_watermark(conn: AsyncConnection, run_id: str) -> object:
    """The run's newest scored_at: the cache's "has anything changed" check (see `api.cache`)."""
    from api import queries

    return (await conn.execute(queries.watermark(run_id))).scalar()


@dataclass(frozen=True, slots=True)
class RunTotals:
    transactions: int = 0
    labelled: int = 0
    frauds: int = 0
    scored: int = 0
    alerts: int = 0

    @property
    def unlabelled(self) -> int:
        return self.transactions - self.labelled


async def run_totals(conn: AsyncConnection, run_id: str) -> RunTotals:
    """The run's trigger-kept counters (one row read; zeros for a run with nothing stored)."""
    from api import queries

    row = (await conn.execute(queries.totals(run_id))).first()
    return RunTotals(*row) if row is not None else RunTotals()


async def cached_response(
    cache: ResultCache,
    key: Hashable | None,
    run_id: str,
    compute: Compute,
    *,
    follows_clock: bool = False,
    follows_writes: bool = False,
    slow: bool = False,
) -> Response:
    """The cached answer's JSON as is, with `X-As-Of`: when the data it was computed from were read."""
    entry = await cache.get(
        key,
        run_id,
        compute,
        follows_clock=follows_clock,
        follows_writes=follows_writes,
        slow=slow,
        keep_value=False,
    )
    return Response(
        entry.body, media_type="application/json", headers={AS_OF_HEADER: entry.as_of.isoformat()}
    )
