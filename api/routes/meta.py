"""Heartbeat, health and Prometheus metrics: open to every caller (see `api.auth` for /metrics)."""

from __future__ import annotations

from functools import cache
from importlib.metadata import PackageNotFoundError, version

from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api.auth import authorize_metrics
from api.deps import AppSettings, Broker, Engine, Metrics, Models
from api.health import assess, observe
from api.schemas import Health, Heartbeat

router = APIRouter(tags=["meta"])

SERVICE_NAME = "fraudstream-api"


@cache
def package_version() -> str:
    """The installed package's version, read once: `importlib.metadata` scans the installed
    distributions on every call (~1.7 ms), which capped the heartbeat near 600 requests/s."""
    try:
        return version("fraudstream")
    except PackageNotFoundError:
        return "0.0.0+local"


@router.get("/", response_model=Heartbeat, summary="Heartbeat")
async def heartbeat(models: Models) -> Heartbeat:
    served = models.champion
    return Heartbeat(
        name=SERVICE_NAME,
        version=package_version(),
        model_version=served.version if served is not None else None,
    )


@router.get(
    "/health",
    response_model=Health,
    summary="Health: ok, degraded (with reasons) or unavailable (503)",
    responses={503: {"model": Health, "description": "the API cannot serve: database down or no model"}},
)
async def health(engine: Engine, models: Models, broker: Broker, settings: AppSettings) -> Response:
    seen = await observe(engine, models, broker)
    body = assess(
        seen,
        stale_seconds=settings.health_worker_stale_seconds,
        reload_seconds=settings.model_refresh_seconds,
    )
    code = 503 if body.status == "unavailable" else 200
    return JSONResponse(body.model_dump(mode="json"), status_code=code)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    dependencies=[Depends(authorize_metrics)],
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
)
async def metrics(metrics: Metrics) -> Response:
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
