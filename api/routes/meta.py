"""Heartbeat, readiness and Prometheus metrics."""

from __future__ import annotations

import asyncio
from importlib.metadata import PackageNotFoundError, version

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from api.deps import Metrics
from api.schemas import Health, Heartbeat

router = APIRouter(tags=["meta"])

SERVICE_NAME = "fraudstream-api"


def package_version() -> str:
    try:
        return version("fraudstream")
    except PackageNotFoundError:
        return "0.0.0+local"


@router.get("/", response_model=Heartbeat, summary="Heartbeat")
async def heartbeat(request: Request) -> Heartbeat:
    ensemble = request.app.state.ensemble
    return Heartbeat(
        name=SERVICE_NAME,
        version=package_version(),
        model_version=ensemble.version if ensemble is not None else None,
    )


async def _database_status(request: Request) -> str:
    try:
        async with asyncio.timeout(2.0), request.app.state.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    except Exception as exc:  # any failure means "not ready"; the message says which
        return f"unreachable: {type(exc).__name__}: {exc}"[:300]
    return "ok"


async def _broker_status(request: Request) -> str:
    """The background monitor's last answer (`api.broker`): no Kafka client per call."""
    return await request.app.state.broker_monitor.status()


@router.get(
    "/health",
    response_model=Health,
    summary="Readiness: database, model bundle, broker",
    responses={503: {"model": Health, "description": "some part is not ready"}},
)
async def health(request: Request) -> Response:
    database, broker = await asyncio.gather(_database_status(request), _broker_status(request))
    ensemble = request.app.state.ensemble
    not_ready = [
        name
        for name, ok in (
            ("database", database == "ok"),
            ("model", ensemble is not None),
            ("broker", broker == "ok"),
        )
        if not ok
    ]
    body = Health(
        status="unavailable" if not_ready else "ok",
        database=database,
        model=ensemble.version if ensemble is not None else None,
        broker=broker,
        not_ready=not_ready,
    )
    return JSONResponse(body.model_dump(mode="json"), status_code=503 if not_ready else 200)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(metrics: Metrics) -> Response:
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
