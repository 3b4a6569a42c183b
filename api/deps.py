"""FastAPI dependency providers: everything a route needs comes from here, through `Depends`.

The lifespan (`api.main`) opens the resources once per process and keeps them on the
app's state; these providers are the only code that reads it, so a route declares what
it needs (`engine: Engine`, `predictor: PredictorDep`, ...) and tests can build an app
with other settings. Every provider is `async def`: FastAPI runs a plain `def`
dependency in a thread pool, and a thread hop per dependency per request is what made
`/api/predict` collapse under concurrency (see README, "The API").
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

import asyncpg
from fastapi import Depends, HTTPException, Request, status
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from api.broker import BrokerMonitor
from api.cache import ResultCache
from api.explain import ExplanationMemo
from api.metrics import ApiMetrics
from api.predictor import Predictor
from api.publisher import Publisher
from api.serving import ServedModels
from core.ensemble import Ensemble
from core.settings import Settings


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_engine(request: Request) -> AsyncEngine:
    return request.app.state.engine


async def get_connection(
    engine: Annotated[AsyncEngine, Depends(get_engine)],
) -> AsyncIterator[AsyncConnection]:
    """One pooled connection for the request (read-only work: no transaction is left open)."""
    async with engine.connect() as conn:
        yield conn


async def get_pool(request: Request) -> asyncpg.Pool:
    """The asyncpg pool (predict's write path, the registry, the health check)."""
    return request.app.state.pool


async def get_pool_connection(
    pool: Annotated[asyncpg.Pool, Depends(get_pool)], settings: Annotated[Settings, Depends(get_settings)]
) -> AsyncIterator[asyncpg.Connection]:
    """One asyncpg connection for the request; waits at most FRAUDSTREAM_API_POOL_TIMEOUT_SECONDS (-> 503)."""
    async with pool.acquire(timeout=settings.api_pool_timeout_seconds) as conn:
        yield conn


async def get_served_models(request: Request) -> ServedModels:
    return request.app.state.models


async def get_champion(models: Annotated[ServedModels, Depends(get_served_models)]) -> Ensemble:
    """The champion, taken once for the whole request: its answer names this version. 503 when none."""
    ensemble = models.champion
    if ensemble is None:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            f"no model is loaded: {models.error}",
            headers={"Retry-After": "5"},
        )
    return ensemble


async def get_predictor(request: Request) -> Predictor:
    return request.app.state.predictor


async def get_publisher(request: Request) -> Publisher:
    return request.app.state.publisher


async def get_broker_monitor(request: Request) -> BrokerMonitor:
    return request.app.state.broker_monitor


async def get_cache(request: Request) -> ResultCache:
    return request.app.state.cache


async def get_explanations(request: Request) -> ExplanationMemo:
    return request.app.state.explanations


async def get_metrics(request: Request) -> ApiMetrics:
    return request.app.state.metrics


AppSettings = Annotated[Settings, Depends(get_settings)]
Engine = Annotated[AsyncEngine, Depends(get_engine)]
Connection = Annotated[AsyncConnection, Depends(get_connection)]
Pool = Annotated[asyncpg.Pool, Depends(get_pool)]
PoolConnection = Annotated[asyncpg.Connection, Depends(get_pool_connection)]
Models = Annotated[ServedModels, Depends(get_served_models)]
Champion = Annotated[Ensemble, Depends(get_champion)]
PredictorDep = Annotated[Predictor, Depends(get_predictor)]
PublisherDep = Annotated[Publisher, Depends(get_publisher)]
Broker = Annotated[BrokerMonitor, Depends(get_broker_monitor)]
Cache = Annotated[ResultCache, Depends(get_cache)]
Explanations = Annotated[ExplanationMemo, Depends(get_explanations)]
Metrics = Annotated[ApiMetrics, Depends(get_metrics)]
