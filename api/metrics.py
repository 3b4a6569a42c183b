"""Prometheus metrics of one API process, in a registry the app owns.

A plain ASGI middleware (cheaper than Starlette's BaseHTTPMiddleware on the predict hot
path) counts requests and times them per route template, so `/api/backtests/{run_id}`
is one series however many ids are asked for.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


@dataclass
class ApiMetrics:
    """The app's collectors; `registry` is what `/metrics` exposes."""

    registry: CollectorRegistry = field(default_factory=lambda: CollectorRegistry(auto_describe=True))

    def __post_init__(self) -> None:
        self.requests = Counter(
            "fraudstream_api_requests_total",
            "HTTP requests by route template, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "fraudstream_api_request_seconds",
            "HTTP request duration by route template",
            ["route", "method"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.predictions = Counter(
            "fraudstream_api_predictions_total", "Transactions scored by /api/predict", registry=self.registry
        )
        self.alerts = Counter(
            "fraudstream_api_alerts_total", "Predictions at or above the threshold", registry=self.registry
        )
        self.published = Counter(
            "fraudstream_api_published_total", "Transactions published to Kafka", registry=self.registry
        )


class MetricsMiddleware:
    """Count and time every HTTP request by its route template."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            self.metrics.requests.labels(template, method, str(status)).inc()
            self.metrics.latency.labels(template, method).observe(time.perf_counter() - started)
