"""The analytics API as an app factory: `create_app(settings)`.

    uvicorn --factory api.main:create_app        # or: fraudstream api

Resources are opened in the lifespan, once per process, and reach routes only through
the providers in `api.deps`: an async SQLAlchemy engine (asyncpg) for the analytics
queries, an asyncpg pool for the predict write path (`core.db.store.store_scored`, the
scorer's own statement), the registry and the health check, the served models
(`api.serving`: the registry's champion, hot-reloaded), the batching `Predictor` with
its bounded queue, a lazily started Kafka producer, the result cache
(stale-while-revalidate, `api.cache`), the background broker check (`api.broker`) and
the Prometheus registry. Nothing is opened at import time, and nothing is registered or
activated on start.

Every `/api/*` route hangs from one router whose dependency checks the bearer token
(`api.auth`); every query runs under a statement timeout; database failures become 503s
with a reason (`api.errors`); bodies are capped at `FRAUDSTREAM_API_MAX_BODY_BYTES` (413).
A missing model does not stop the API: analytics keep working, and predict, explain and
`/health` say why there is no model (503).
"""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from fastapi import Depends, FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from sqlalchemy.ext.asyncio import create_async_engine

from api.auth import TokenTable, authorize
from api.broker import BrokerMonitor
from api.cache import ResultCache
from api.drift_watch import DriftWatch
from api.errors import DATABASE_ERRORS, database_error, is_transient
from api.explain import ExplanationMemo
from api.metrics import ApiMetrics, CacheCollector, MetricsMiddleware, ServingCollector
from api.predictor import Predictor
from api.publisher import Publisher
from api.routes import (
    backtests,
    compare,
    distributions,
    drift,
    feedback,
    meta,
    model,
    predict,
    registry,
    review,
    savings,
    scatter,
    stats,
    transactions,
)
from api.routes.meta import SERVICE_NAME, package_version
from api.serving import ServedModels
from api.totals import run_watermark
from core.db.urls import asyncpg_dsn, sqlalchemy_url
from core.runtime.stack import resolve_endpoints
from core.settings import Settings, get_settings

log = logging.getLogger(__name__)

_DESCRIPTION = """
Analytics over the transactions the fraudstream scorer stores in PostgreSQL, plus live
prediction and explanation with the registry's champion model.

**Access.** With `FRAUDSTREAM_API_TOKEN` (and optionally `FRAUDSTREAM_API_READ_TOKEN` or
named tokens) set, every `/api/*` route needs `Authorization: Bearer <token>`: 401 without
a known token, 403 for a read-only token on a write. `/`, `/health` and these docs are open.

**Models.** Predictions and explanations name the version that computed them. Promote a
version or choose the shadow under `/api/models`; scorers and APIs follow within seconds.

**Reviews.** `/api/review/queue` lists the live alerts waiting for a verdict;
`POST /api/alerts/{transaction_id}/review` records one (a write token, or a named token
with `review` access; a write token may name the analyst it acts for in
`X-Fraudstream-Reviewer`, which also names the reviewer when no token is configured).
`/api/feedback/summary` counts the reviews, the backlog, the alerts' precision and the
frauds found later by chargeback; `/api/model/savings` is the net savings by threshold.

`run_id` selects the live stream (`''`, the default) or a backtest run. Lists are newest
first with keyset pagination (`next_cursor`).

Aggregates (stats windows, time series, distributions, scatter, model performance, list
first pages) are served from answers kept fresh in the background: an answer is at most
the cache bound (2 s by default; 10 s for distributions, scatter and model performance,
which scan every row) plus one recompute old, and header `X-As-Of` says when its data
were read. The totals of `/api/stats` are always current.

**Overload and faults** answer 503 with `Retry-After` and a reason (a full prediction
queue, the database restarting, out of connections, a statement past its timeout), never
500; bodies over the size limit get 413.
"""

#: Every router under /api (each route's path starts with /api).
API_ROUTERS = (
    stats.router,
    transactions.router,
    distributions.router,
    scatter.router,
    model.router,
    compare.router,  # before registry's /api/models/{version} routes
    registry.router,
    predict.router,
    backtests.router,
    review.router,
    feedback.router,
    savings.router,
    drift.router,
)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    endpoints = resolve_endpoints(settings)
    # Every statement of this process is cancelled by the server past the timeout (-> 503).
    server_settings = {"statement_timeout": str(settings.api_statement_timeout_ms)}
    client_timeout = settings.api_statement_timeout_ms / 1000 + 5  # if the server itself stops answering
    engine = create_async_engine(
        sqlalchemy_url(endpoints.database_url),
        pool_size=8,
        max_overflow=8,
        pool_recycle=3600,
        pool_timeout=settings.api_pool_timeout_seconds,
        connect_args={"server_settings": server_settings, "command_timeout": client_timeout, "timeout": 10},
    )
    pool = await asyncpg.create_pool(
        asyncpg_dsn(endpoints.database_url),
        min_size=0,
        max_size=8,
        server_settings=server_settings,
        command_timeout=client_timeout,
        timeout=10,
    )
    cache: ResultCache = app.state.cache
    cache.bind(engine, run_watermark)
    models = ServedModels(
        pool,
        fallback_path=settings.model_path,
        refresh_seconds=settings.model_refresh_seconds,
        acquire_timeout=settings.api_pool_timeout_seconds,
    )
    predictor = Predictor(
        lambda: models.champion,
        pool,
        max_pending=settings.api_predict_queue,
        acquire_timeout=settings.api_pool_timeout_seconds,
        on_stored=cache.written,
    )
    broker_monitor = BrokerMonitor(endpoints.bootstrap_servers)
    app.state.engine, app.state.pool, app.state.models = engine, pool, models
    app.state.predictor, app.state.broker_monitor = predictor, broker_monitor
    app.state.publisher = Publisher(endpoints.bootstrap_servers)
    drift_watch = DriftWatch(app.state.metrics, pool, lambda: models.champion, settings.drift_refresh_seconds)
    broker_monitor.start()
    await models.start()
    predictor.start()
    drift_watch.start()
    if app.state.freeze_heap:
        freeze_startup_heap()
    try:
        yield
    finally:
        await drift_watch.close()
        await predictor.close()
        await models.close()
        await cache.close()
        await broker_monitor.close()
        await app.state.publisher.close()
        await pool.close()
        await engine.dispose()


async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422, without echoing the input back (it may hold NaN, which JSON cannot carry)."""
    errors = [
        {
            "loc": list(error.get("loc", ())),
            "msg": str(error.get("msg", "")),
            "type": str(error.get("type", "")),
        }
        for error in exc.errors()
    ]
    summary = "; ".join(f"{'.'.join(str(part) for part in e['loc'])}: {e['msg']}" for e in errors[:5])
    return JSONResponse(
        {"detail": errors, "message": f"invalid request: {summary}"},
        status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
    )


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    if is_transient(exc):
        request.app.state.metrics.database_unavailable.inc()
    return await database_error(request, exc)


def freeze_startup_heap() -> None:
    """Hide the startup heap (torch, xgboost, SQLAlchemy, the model) from the garbage collector.

    Full collections otherwise walk millions of long-lived objects and pause the event loop
    for hundreds of milliseconds (the scorer measured 0.3-0.85 s): the API's p99. Process-wide,
    so only the served process does it (`fraudstream api`), never an app built inside tests.
    """
    gc.collect()
    gc.freeze()


def create_app(
    settings: Settings | None = None,
    *,
    cache_seconds: float | None = None,
    analytics_cache_seconds: float | None = None,
    freeze_heap: bool = False,
) -> FastAPI:
    """Build the app. `cache_seconds`: how old an answer may be before it is recomputed
    (default: settings.api_cache_seconds, 2 s); 0 turns the cache
    off (benchmarks of raw SQL). `analytics_cache_seconds`: the same for the full-scan analytics
    (default: settings.api_analytics_cache_seconds, 10 s). `freeze_heap`: see
    `freeze_startup_heap` (the served process only)."""
    settings = settings or get_settings()
    if cache_seconds is None:
        cache_seconds = settings.api_cache_seconds
    if analytics_cache_seconds is None:
        analytics_cache_seconds = settings.api_analytics_cache_seconds
    app = FastAPI(
        title="fraudstream API",
        version=package_version(),
        description=_DESCRIPTION,
        lifespan=lifespan,
        max_body_size=settings.api_max_body_bytes,
    )
    app.state.settings = settings
    app.state.freeze_heap = freeze_heap
    app.state.tokens = TokenTable.from_settings(settings)
    app.state.cache = ResultCache(cache_seconds, slow_max_age=analytics_cache_seconds)
    app.state.explanations = ExplanationMemo()
    app.state.metrics = ApiMetrics()
    app.state.metrics.registry.register(CacheCollector(app.state.cache))
    app.state.metrics.registry.register(ServingCollector(app.state))
    app.state.predictor = app.state.models = None
    app.include_router(meta.router)
    # Every /api router is included here, with the token check as its dependency: a route
    # added to one of them cannot forget authentication (tests/test_api_auth.py walks the spec).
    for router in API_ROUTERS:
        app.include_router(router, dependencies=[Depends(authorize)])
    app.add_exception_handler(RequestValidationError, _invalid_request)
    for error in DATABASE_ERRORS:
        app.add_exception_handler(error, _database_error)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PUT"],
            allow_headers=["Authorization", "Content-Type", review.REVIEWER_HEADER],
        )
    log.debug("%s app built", SERVICE_NAME)
    return app


def create_served_app() -> FastAPI:
    """The app as `fraudstream api` serves it: settings from the environment, startup heap frozen."""
    return create_app(freeze_heap=True)
