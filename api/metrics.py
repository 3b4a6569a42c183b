"""Prometheus metrics of one API process, in a registry the app owns.

A plain ASGI middleware (cheaper than Starlette's BaseHTTPMiddleware on the predict hot
path) counts requests and times them per route template, so `/api/backtests/{run_id}`
is one series however many ids are asked for.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from api.cache import ResultCache

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
        self.shed = Counter(
            "fraudstream_api_shed_total",
            "Requests refused with 503 + Retry-After to shed load, by reason",
            ["reason"],
            registry=self.registry,
        )
        self.database_unavailable = Counter(
            "fraudstream_api_database_unavailable_total",
            "Requests answered 503 because the database could not serve them",
            registry=self.registry,
        )
        # Kept by `api.drift_watch.DriftWatch`.
        self.drift_psi = Gauge(
            "fraudstream_drift_psi",
            "PSI of the champion's last complete hour of data against its reference, by quantity",
            ["quantity"],
            registry=self.registry,
        )
        self.drift_hour = Gauge(
            "fraudstream_drift_hour",
            "The hour of data (Time // 3600) the drift gauges describe",
            registry=self.registry,
        )
        self.drift_major_hours = Counter(
            "fraudstream_drift_major_hours",
            "Complete hours of data with a major shift (PSI >= 0.25) in any quantity",
            registry=self.registry,
        )


class CacheCollector:
    """The result cache's counters, read when Prometheus scrapes (the cache keeps plain numbers)."""

    def __init__(self, cache: ResultCache) -> None:
        self.cache = cache

    def collect(self) -> Iterator[Metric]:
        cache = self.cache
        served = CounterMetricFamily(
            "fraudstream_api_cache_answers",
            "Cached-route answers: fresh (younger than the bound), stale (while its recompute runs), "
            "computed (the request waited for the queries)",
            labels=["outcome"],
        )
        for outcome, value in (
            ("fresh", cache.hits),
            ("stale", cache.stale_hits),
            ("computed", cache.misses),
        ):
            served.add_metric([outcome], value)
        yield served
        yield CounterMetricFamily(
            "fraudstream_api_cache_recomputes",
            "Recomputes started (background or not)",
            value=cache.refreshes,
        )
        yield CounterMetricFamily(
            "fraudstream_api_cache_renewals",
            "Recomputes skipped because the run's watermark had not moved",
            value=cache.renewals,
        )
        yield CounterMetricFamily(
            "fraudstream_api_cache_compute_seconds",
            "Time spent computing answers (database and Python)",
            value=cache.compute_seconds,
        )
        yield GaugeMetricFamily("fraudstream_api_cache_keys", "Keys held by the cache", value=cache.size)


class ServingCollector:
    """The served model and the prediction queue, read when Prometheus scrapes."""

    def __init__(self, state: object) -> None:
        self.state = state  # the app's state: the predictor and the served models appear in the lifespan

    def collect(self) -> Iterator[Metric]:
        predictor = getattr(self.state, "predictor", None)
        models = getattr(self.state, "models", None)
        yield GaugeMetricFamily(
            "fraudstream_api_predict_pending",
            "Predictions admitted and not yet answered (bounded by FRAUDSTREAM_API_PREDICT_QUEUE)",
            value=predictor.pending if predictor is not None else 0,
        )
        if models is not None:
            yield CounterMetricFamily(
                "fraudstream_api_model_reloads",
                "Champion switches followed by this process",
                value=models.reloads,
            )
            served = GaugeMetricFamily(
                "fraudstream_api_model_info",
                "The model version this process serves (value 1)",
                labels=["version"],
            )
            if models.champion is not None:
                served.add_metric([models.champion.version], 1)
            yield served


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
