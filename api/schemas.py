"""Response bodies of the analytics API: the contract the dashboard builds against.

Every route declares one of these as its `response_model`, so `/docs` and
`/openapi.json` describe exactly what comes back. Conventions:

- `run_id` is `""` for the live stream and a backtest run's id otherwise; every list and
  aggregate endpoint takes `?run_id=` and echoes it.
- `time` is the transaction's data time (seconds from the start of the data, as in the
  CSV); `scored_at` is the wall clock when the scorer stored it (ISO 8601, UTC).
- Features are named as in the CSV: `V1`..`V28`, `Amount` is `amount` in bodies.
- `label` is ground truth (1 fraud, 0 normal, null when unknown); `alert` is the
  model's decision (`score >= threshold`).
- Lists are newest first and paginated with an opaque `next_cursor` (pass it back as
  `?cursor=`; null means there is no further page).
- Errors: `{"detail": "..."}` with a 4xx status (FastAPI's 422 lists field errors).

Shapes are stable: fields may be added, never renamed or removed.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True)


# --------------------------------------------------------------------------- meta


class Heartbeat(_Model):
    """`GET /`: the service is up."""

    name: str = Field(examples=["fraudstream-api"])
    version: str = Field(description="package version")
    model_version: str | None = Field(description="the model version this API serves (the champion)")
    docs: str = Field(default="/docs")


class WorkerHealth(_Model):
    """One scorer worker's last heartbeat (`scorer_workers`)."""

    worker_id: str
    host: str
    pid: int
    state: Literal["starting", "ok", "stalled", "stopped"]
    reason: str | None
    model_version: str | None
    pending_events: int
    lag: int | None
    assigned_partitions: int
    heartbeat_at: datetime
    last_store_at: datetime | None
    heartbeat_age_s: float = Field(description="seconds since its last heartbeat (database clock)")
    last_store_age_s: float | None


class ScorerHealth(_Model):
    live: int = Field(description="workers with a recent heartbeat that are not stopped")
    workers: list[WorkerHealth]


class Health(_Model):
    """`GET /health`: `ok` (200), `degraded` (200: serving, with `reasons`) or `unavailable` (503)."""

    status: Literal["ok", "degraded", "unavailable"]
    database: str = Field(description="'ok' or why it is not reachable")
    model: str | None = Field(description="the version this API serves, null when none is loaded")
    champion: str | None = Field(default=None, description="the registry's champion")
    shadow: str | None = Field(default=None, description="the registry's shadow (challenger)")
    broker: str = Field(description="'ok', 'not configured' or why it is not reachable")
    scorer: ScorerHealth | None = Field(default=None, description="the scorer workers' heartbeats")
    not_ready: list[str] = Field(default_factory=list, description="the parts that keep the API from serving")
    reasons: list[str] = Field(default_factory=list, description="why the status is not ok, in words")


class Problem(_Model):
    """A 4xx answer; `valid` lists the accepted values when a name was not recognised."""

    detail: str
    valid: list[str] | None = None


# --------------------------------------------------------------------------- stats


class LatencySummary(_Model):
    """End-to-end latency (producer timestamp to stored row) in milliseconds."""

    count: int = Field(description="rows with a latency in the window")
    p50: float | None
    p95: float | None
    p99: float | None
    max: float | None


class Stats(_Model):
    """`GET /api/stats`: totals of the run, and what happened in the last `window_minutes`."""

    run_id: str
    volume: int = Field(description="transactions stored (and scored)")
    labelled: int = Field(description="transactions with a ground-truth label")
    frauds: int = Field(description="ground-truth frauds (label = 1)")
    alerts: int = Field(description="model alerts (score >= threshold)")
    true_alerts: int = Field(description="alerts that are ground-truth frauds")
    alert_rate: float = Field(description="alerts / volume (0 when empty)")
    fraud_rate: float = Field(description="frauds / labelled (0 when nothing is labelled)")
    first_scored_at: datetime | None
    last_scored_at: datetime | None
    window_minutes: float
    window_scored: int = Field(description="rows scored in the window")
    window_alerts: int
    throughput_per_s: float = Field(
        description="rows scored per second over the window (from its first row in the window to now)"
    )
    latency_ms: LatencySummary
    generated_at: datetime


class TimePoint(_Model):
    t: datetime = Field(description="bucket start (UTC)")
    scored: int
    alerts: int
    frauds: int = Field(description="ground-truth frauds among the rows of the bucket")
    latency_p50_ms: float | None
    latency_p99_ms: float | None


class TimeSeries(_Model):
    """`GET /api/stats/timeseries`: per-bucket counts over the last `minutes` (empty buckets included)."""

    run_id: str
    minutes: float
    bucket_seconds: int
    points: list[TimePoint]


# --------------------------------------------------------------------------- transactions


class Contribution(_Model):
    """One model feature's TreeSHAP contribution to the fraud log-odds."""

    feature: str = Field(description="model-space feature name (e.g. V14, log_amount, hour, ae_recon_error)")
    contribution: float = Field(description="log-odds contribution (positive pushes towards fraud)")
    value: float = Field(description="the model-space input value (after scaling)")


class Transaction(_Model):
    """One stored transaction with its score."""

    id: str
    run_id: str
    time: float = Field(description="data time, seconds from the start of the data")
    amount: float
    label: int | None
    score: float
    recon_error: float
    alert: bool
    model_version: str
    scored_at: datetime
    latency_ms: float | None
    features: dict[str, float] | None = Field(
        default=None, description="V1..V28 (omitted with ?features=false)"
    )
    top_features: list[Contribution] | None = Field(
        default=None, description="alerts with ?explain=true: the features that pushed the score up most"
    )


class TransactionPage(_Model):
    """A page of transactions, newest first (by `scored_at`, then `id`)."""

    run_id: str
    items: list[Transaction]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page; null at the end")
    limit: int


# --------------------------------------------------------------------------- distributions


class HistogramSeries(_Model):
    """Counts per bin for one group of rows."""

    name: Literal["normal", "fraud", "unlabelled", "alert"]
    counts: list[int] = Field(description="one count per bin (len(edges) - 1)")
    total: int
    mean: float | None


class Distribution(_Model):
    """`GET /api/distributions/...`: a histogram computed in PostgreSQL, split by class.

    `edges` are in the feature's own units even when `scale` is `log` (bins are equal
    width in log(1 + x) then). The `alert` series counts model alerts, whatever the label.
    """

    feature: str
    run_id: str
    scale: Literal["linear", "log"]
    bins: int
    edges: list[float]
    series: list[HistogramSeries]
    rows: int


class ScatterPoint(_Model):
    id: str
    x: float
    y: float
    label: int | None
    score: float
    alert: bool


class Scatter(_Model):
    """`GET /api/scatter`: a random sample, half frauds and half normal rows (fewer when short)."""

    run_id: str
    x: str
    y: str
    points: list[ScatterPoint]
    frauds: int = Field(description="fraud points in the sample")
    normals: int = Field(description="normal points in the sample")


# --------------------------------------------------------------------------- model


class Confusion(_Model):
    tp: int
    fp: int
    tn: int
    fn: int


class Curve(_Model):
    """A curve as two aligned arrays (ROC: x = false positive rate, y = true positive rate;
    PR: x = recall, y = precision), with the score threshold of each point."""

    x: list[float]
    y: list[float]
    thresholds: list[float]


class VersionPerformance(_Model):
    """How one model version did on the stored, labelled rows of the run."""

    model_version: str
    threshold: float | None = Field(description="the version's alert threshold (null if unknown)")
    rows: int = Field(description="rows scored by this version (in-sample ones included)")
    in_sample_rows: int = Field(
        default=0,
        description="rows left out of the metrics: their data hour overlaps the version's in-sample stretch",
    )
    in_sample: dict[str, Any] | None = Field(
        default=None,
        description="the version's in-sample stretch of data time (manifest training.data.in_sample)",
    )
    labelled: int
    frauds: int
    confusion: Confusion = Field(description="at the stored alert flag (score >= threshold)")
    precision: float | None
    recall: float | None
    f1: float | None
    auprc: float | None = Field(description="average precision, over the score bins (out-of-sample rows)")
    roc_auc: float | None = Field(description="trapezoidal ROC AUC over the score bins (out-of-sample rows)")
    roc: Curve
    pr: Curve


class FeatureImportance(_Model):
    feature: str
    importance: float


class ModelPerformance(_Model):
    """`GET /api/model/performance`: live (stored) metrics per version plus the bundle's own evaluation."""

    run_id: str
    active_version: str
    score_bins: int
    versions: list[VersionPerformance]
    feature_importance: list[FeatureImportance] = Field(description="of the loaded bundle, largest first")
    importance_type: str | None
    offline_evaluation: dict[str, Any] = Field(
        description="the loaded bundle's manifest `evaluation` section (test-split metrics, curves)"
    )


class ModelVersion(_Model):
    version: str
    created_at: datetime
    bundle_path: str = Field(description="the version's copy in the model store")
    source_path: str | None = Field(default=None, description="the folder it was registered from")
    registered_by: str = "unknown"
    threshold: float
    active: bool = Field(description="the champion: what live traffic is scored with")
    shadow: bool = Field(default=False, description="the challenger, scored beside the champion")
    loaded: bool = Field(description="the version this API process scores with")
    evaluation: dict[str, Any] | None = Field(
        description="the manifest's evaluation without curves (test metrics, baselines)"
    )
    training: dict[str, Any] | None = Field(description="the manifest's training data summary")


class ModelList(_Model):
    """`GET /api/models`: the registry, newest first."""

    active: str | None = Field(description="the champion")
    shadow: str | None = None
    loaded: str | None = Field(description="the version this API process serves")
    versions: list[ModelVersion]


class ShadowChoice(_Model):
    """`PUT /api/models/shadow`: the version to score in shadow, or null for none."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: str | None = Field(max_length=64, pattern=r"^[0-9a-fA-F]+$", examples=["3f2a9c0d1e2b4a5c"])


class ModelChange(_Model):
    """What a promotion or shadow change did."""

    version: str | None = Field(description="the version acted on (null: the shadow was cleared)")
    role: Literal["champion", "shadow"]
    changed: bool = Field(description="false when it already had that role")
    actor: str
    champion: str | None
    shadow: str | None
    serving: str | None = Field(description="the version this API process serves after the change")


class ModelEventOut(_Model):
    id: int
    version: str
    action: Literal["registered", "promoted", "shadow_on", "shadow_off"]
    actor: str
    at: datetime
    note: str | None


class ModelEvents(_Model):
    """`GET /api/models/events`: the registry's audit trail, newest first."""

    events: list[ModelEventOut]


# --------------------------------------------------------------------------- predict / explain / publish


class Prediction(_Model):
    """`POST /api/predict`: the score, and whether it was stored (false when the id existed)."""

    id: str
    run_id: str
    score: float
    alert: bool
    recon_error: float
    threshold: float
    model_version: str
    stored: bool


class ExplanationOut(_Model):
    """`POST /api/explain`: TreeSHAP contributions, sorted by |contribution|, largest first.

    `base_value + sum(contribution)` is the model's log-odds; `score` is its sigmoid.
    """

    score: float
    alert: bool
    threshold: float
    model_version: str
    base_value: float
    contributions: list[Contribution]
    inputs: dict[str, float] = Field(description="the transaction's raw inputs (time, V1..V28, amount)")


class Published(_Model):
    """`POST /api/transactions` (202): queued to Kafka for the scorer."""

    id: str
    topic: str
    run_id: str | None


# --------------------------------------------------------------------------- backtests


class BacktestRun(_Model):
    id: str
    model_version: str
    bundle_path: str
    threshold: float
    time_from: float
    time_to: float
    status: str
    expected_count: int | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    metrics: dict[str, Any] | None
    error: str | None
    scored: int | None = Field(default=None, description="rows stored for this run so far (detail only)")


class BacktestList(_Model):
    runs: list[BacktestRun]
