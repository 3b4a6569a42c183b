"""The scorer's Prometheus counters, in a registry the app owns (not the process-global one).

A registry per app keeps two apps in one process (tests) from clashing over metric names,
and `/metrics` shows exactly the scorer's figures.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from scorer.stages import StageLatency

#: Batch latency buckets (seconds): a batch takes milliseconds at 2,000/s, ~0.1-0.3 s when full.
_BATCH_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)


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
            "fraudstream_dead_letters",
            "Refused events (malformed, conflicting, refused by the model or PostgreSQL), by kind",
            ["kind"],
            registry=r,
        )
        self.conflicts = Counter(
            "fraudstream_conflicts",
            "Events whose (run_id, id) was already stored or seen with other features or label",
            registry=r,
        )
        self.dead_letters_parked = Counter(
            "fraudstream_dead_letters_parked",
            "Dead letters kept in PostgreSQL (dead_letters) because the dead-letter topic would not take them",
            registry=r,
        )
        self.alerts_deferred = Counter(
            "fraudstream_alerts_deferred",
            "Alerts the broker would not take after bounded retries (kept in alert_outbox for later)",
            registry=r,
        )
        self.alerts_recovered = Counter(
            "fraudstream_alerts_recovered",
            "Alerts published from alert_outbox: stored before a crash or a failed publish, sent since",
            registry=r,
        )
        self.store_retries = Counter(
            "fraudstream_store_retries", "Failed attempts to write a batch (retried)", registry=r
        )
        self.publish_retries = Counter(
            "fraudstream_publish_retries",
            "Messages whose publication failed and was retried (bounded), by topic role",
            ["role"],
            registry=r,
        )
        self.model_reloads = Counter(
            "fraudstream_model_reloads", "Switches to a newly activated model version", registry=r
        )
        self.labels_consumed = Counter(
            "fraudstream_labels_consumed", "Messages read from the labels topic", registry=r
        )
        self.labels_stored = Counter(
            "fraudstream_labels_stored", "Verdicts newly stored (label_events, feedback)", registry=r
        )
        self.labels_redelivered = Counter(
            "fraudstream_labels_redelivered",
            "Verdicts that were already stored, identical (a redelivery, a replay, the API's own write)",
            registry=r,
        )
        self.label_conflicts = Counter(
            "fraudstream_label_conflicts",
            "Verdicts whose label_id was already stored with other content (dead-lettered as conflict)",
            registry=r,
        )
        self.shadow_scored = Counter(
            "fraudstream_shadow_scored",
            "Live rows stored with the shadow's score beside the champion's, by shadow version",
            ["version"],
            registry=r,
        )
        self.shadow_failures = Counter(
            "fraudstream_shadow_failures",
            "Batches whose shadow scores were skipped (the champion's rows are stored regardless), "
            "by shadow version and stage: load (the bundle cannot be loaded), score (the model raised "
            "or gave non-finite scores), store (PostgreSQL refused the shadow rows)",
            ["version", "stage"],
            registry=r,
        )
        self.shadow_skipped = Counter(
            "fraudstream_shadow_skipped",
            "Live rows left without a shadow score by a shadow failure, by shadow version and stage",
            ["version", "stage"],
            registry=r,
        )
        self.shadow_seconds = Histogram(
            "fraudstream_shadow_batch_seconds",
            "Time the shadow's model call adds to a batch",
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.shadow_model = Gauge(
            "fraudstream_shadow_model",
            "1 for the shadow version the registry names (no series while there is none)",
            ["version"],
            registry=r,
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
        self.assigned_partitions = Gauge(
            "fraudstream_assigned_partitions",
            "Partitions of the transactions topic this worker reads",
            registry=r,
        )
        self.stalled = Gauge(
            "fraudstream_scorer_stalled",
            "1 while the worker has work waiting and makes no progress (the reason is in its log and heartbeat)",
            registry=r,
        )
        self.last_store_timestamp = Gauge(
            "fraudstream_scorer_last_store_timestamp_seconds",
            "Wall clock of the last successful write to PostgreSQL (0 before the first)",
            registry=r,
        )
        self.pending_events = Gauge(
            "fraudstream_scorer_pending_events",
            "Events consumed and not yet acknowledged",
            registry=r,
        )
        self.consumer_lag = Gauge(
            "fraudstream_consumer_lag",
            "Per partition of the transactions topic: end offset minus the next offset to acknowledge",
            ["partition"],
            registry=r,
        )

        #: Per stage of a batch, the time since each event was produced (`scorer.stages`).
        self.stages = StageLatency()
        r.register(self.stages)
        self.maintenance_last_run = Gauge(
            "fraudstream_maintenance_last_run_timestamp_seconds",
            "Wall clock of this worker's last maintenance pass (partitions, retention; 0 before the first)",
            registry=r,
        )
        self.maintenance_actions = Counter(
            "fraudstream_maintenance_partitions",
            "Day partitions created, dropped by retention, or left for the next pass (lock not granted)",
            ["action"],
            registry=r,
        )
        self.maintenance_rows_moved = Counter(
            "fraudstream_maintenance_rows_moved",
            "Rows moved out of a default partition into their data day's partition",
            registry=r,
        )
        self.rollup_folded = Counter(
            "fraudstream_rollup_folded_rows",
            "Scores this worker folded into the wide rollups (histograms, drift; `rollup_fold()`)",
            registry=r,
        )
        self.rollup_fold_failures = Counter(
            "fraudstream_rollup_fold_failures",
            "Rollup folds that failed (the next one folds their rows)",
            registry=r,
        )
        self.maintenance_failures = Counter(
            "fraudstream_maintenance_failures",
            "Maintenance passes that failed (tried again later)",
            registry=r,
        )

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
