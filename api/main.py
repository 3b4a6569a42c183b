"""The analytics API as an app factory: `create_app(settings)`.

    uvicorn --factory api.main:create_app        # or: fraudstream api

Resources are opened in the lifespan, once per process, and live on `app.state`: an
async SQLAlchemy engine (asyncpg) for the analytics queries, an asyncpg pool for the
predict write path (`core.db.store.store_scored`, the scorer's own statement), the
loaded `Ensemble`, the batching `Predictor`, a lazily started Kafka producer, the
result cache (stale-while-revalidate, `api.cache`), the background broker check
(`api.broker`) and the Prometheus registry. Nothing is opened at import time.

A missing or broken model bundle does not stop the API: analytics keep working, and
predict/explain/`/health` say why there is no model (503).
"""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import create_async_engine

from api.broker import BrokerMonitor
from api.cache import ResultCache
from api.deps import run_watermark
from api.metrics import ApiMetrics, CacheCollector, MetricsMiddleware
from api.predictor import Predictor
from api.publisher import Publisher
from api.routes import backtests, distributions, meta, model, predict, scatter, stats, transactions
from api.routes.meta import SERVICE_NAME, package_version
from core.db.registry import register_model
from core.db.urls import asyncpg_dsn, sqlalchemy_url
from core.ensemble import BundleError, Ensemble
from core.runtime.stack import resolve_endpoints
from core.settings import Settings, get_settings

log = logging.getLogger(__name__)

_DESCRIPTION = """
Analytics over the transactions the fraudstream scorer stores in PostgreSQL, plus live
prediction and explanation with the same model bundle.

`run_id` selects the live stream (`''`, the default) or a backtest run. Lists are newest
first with keyset pagination (`next_cursor`). Write endpoints (`POST`) need
`Authorization: Bearer <token>` when `FRAUDSTREAM_API_TOKEN` is set.

Aggregates (stats windows, time series, distributions, scatter, model performance, list
first pages) are served from answers kept fresh in the background: an answer is at most
the cache bound (2 s by default; 10 s for distributions, scatter and model performance,
which scan every row) plus one recompute old, and header `X-As-Of` says when its data
were read. The totals of `/api/stats` are always current.
"""


def _load_model(settings: Settings) -> tuple[Ensemble | None, str | None]:
    try:
        return Ensemble.load(settings.model_path), None
    except (BundleError, OSError) as exc:
        log.warning("no model bundle loaded from %s: %s", settings.model_path, exc)
        return None, f"{settings.model_path}: {exc}"


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    endpoints = resolve_endpoints(settings)
    engine = create_async_engine(
        sqlalchemy_url(endpoints.database_url), pool_size=8, max_overflow=8, pool_recycle=3600
    )
    pool = await asyncpg.create_pool(asyncpg_dsn(endpoints.database_url), min_size=0, max_size=8)
    ensemble, model_error = _load_model(settings)
    app.state.engine = engine
    app.state.pool = pool
    app.state.ensemble = ensemble
    app.state.model_error = model_error
    app.state.bootstrap_servers = endpoints.bootstrap_servers
    app.state.publisher = Publisher(endpoints.bootstrap_servers)
    cache: ResultCache = app.state.cache
    cache.bind(engine, run_watermark)
    app.state.broker_monitor = BrokerMonitor(endpoints.bootstrap_servers)
    app.state.broker_monitor.start()
    app.state.predictor = Predictor(ensemble, pool, on_stored=cache.written) if ensemble is not None else None
    if ensemble is not None:
        try:
            async with pool.acquire() as conn:
                await register_model(conn, ensemble, settings.model_path.resolve())
        except (OSError, asyncpg.PostgresError) as exc:
            log.warning("could not record model %s in model_versions: %s", ensemble.version, exc)
        app.state.predictor.start()
    if app.state.freeze_heap:
        freeze_startup_heap()
    try:
        yield
    finally:
        if app.state.predictor is not None:
            await app.state.predictor.close()
        await cache.close()
        await app.state.broker_monitor.close()
        await app.state.publisher.close()
        await pool.close()
        await engine.dispose()


async def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    log.warning("database error on %s: %s", request.url.path, exc)
    return JSONResponse(
        {"detail": f"database unavailable: {type(exc).__name__}"},
        status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
    )


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


async def _invalid_value(request: Request, exc: Exception) -> JSONResponse:
    """PostgreSQL refused a value (a safety net: the routes validate before querying)."""
    return JSONResponse(
        {"detail": f"invalid value: {type(exc).__name__}"}, status_code=status.HTTP_400_BAD_REQUEST
    )


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
    )
    app.state.settings = settings
    app.state.freeze_heap = freeze_heap
    app.state.cache = ResultCache(cache_seconds, slow_max_age=analytics_cache_seconds)
    app.state.metrics = ApiMetrics()
    app.state.metrics.registry.register(CacheCollector(app.state.cache))
    app.state.ensemble = None
    app.state.model_error = "the app has not started"
    for router in (
        meta.router,
        stats.router,
        transactions.router,
        distributions.router,
        scatter.router,
        model.router,
        predict.router,
        backtests.router,
    ):
        app.include_router(router)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    for error in (asyncpg.DataError, DataError):
        app.add_exception_handler(error, _invalid_value)
    for error in (
        OSError,
        InterfaceError,
        OperationalError,
        asyncpg.PostgresConnectionError,
        ConnectionError,
    ):
        app.add_exception_handler(error, _database_unavailable)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )
    log.debug("%s app built", SERVICE_NAME)
    return app


def create_served_app() -> FastAPI:
    """The app as `fraudstream api` serves it: settings from the environment, startup heap frozen."""
    return create_app(freeze_heap=True)
