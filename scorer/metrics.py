"""The scorer's Prometheus counters, in a registry the app owns (not the process-global one).

A registry per app keeps two apps in one process (tests) from clashing over metric names,
and `/metrics` shows exactly the scorer's figures.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

#: Batch latency buckets (seconds): a batch takes milliseconds at 2,000/s, ~0.1-0.3 s when full.
_BATCH_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
#: End-to-end latency buckets (seconds, producer timestamp to stored row).
_LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 60.0)


@dataclass
class ScorerMetrics:
    registry: CollectorRegistry = field(default_factory=lambda: CollectorRegistry(auto_describe=True))

    def __post_init__(self) -> None:
        r = self.registry
        self.consumed = Counter(
            "fraudstream_consumed", "Messages read from the transactions topic", registry=r
        )
        self.scored = Counter("fraudstream_scored", "Events scored by the ensemble", registry=r)
        self.stored = Counter("fraudstream_stored", "New rows written (redeliveries excluded)", registry=r)
        self.alerts = Counter("fraudstream_alerts", "Alerts published", registry=r)
        self.dead_letters = Counter(
            "fraudstream_dead_letters", "Malformed events sent to the dead-letter topic", ["kind"], registry=r
        )
        self.store_retries = Counter(
            "fraudstream_store_retries", "Failed attempts to write a batch (retried)", registry=r
        )
        self.publish_retries = Counter(
            "fraudstream_publish_retries",
            "Failed attempts to publish alerts/dead letters (retried)",
            registry=r,
        )
        self.model_reloads = Counter(
            "fraudstream_model_reloads", "Switches to a newly activated model version", registry=r
        )
        self.batch_seconds = Histogram(
            "fraudstream_batch_seconds", "Time to handle one batch", buckets=_BATCH_BUCKETS, registry=r
        )
        self.batch_size = Histogram(
            "fraudstream_batch_size",
            "Messages per batch",
            buckets=(1, 10, 100, 500, 1000, 2000, 4000, 8000, 16000),
            registry=r,
        )
        self.end_to_end_seconds = Histogram(
            "fraudstream_end_to_end_seconds",
            "Producer timestamp to the batch's commit in PostgreSQL",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.assigned_partitions = Gauge(
            "fraudstream_assigned_partitions",
            "Partitions of the transactions topic this worker reads",
            registry=r,
        )

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
