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
    """End-to-end latency (producer timestamp to stored row) in milliseconds, read from the
    latency rollup's log-spaced bins (20 per decade): each figure is the geometric middle of
    the bin holding it (nearest rank), so within `within_factor` of the exact value."""

    count: int = Field(description="rows with a latency in the window")
    p50: float | None
    p95: float | None
    p99: float | None
    max: float | None = Field(description="the middle of the highest bin holding a row")
    within_factor: float = Field(
        description="resolution: each figure is within this factor of the exact one (1.059: ±5.9%)"
    )


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
    window_minutes: int
    window_start: datetime = Field(
        description="start of the window: `window_minutes` whole minutes before the current minute began"
    )
    window_scored: int = Field(description="rows scored in the window")
    window_alerts: int
    throughput_per_s: float = Field(
        description="rows scored per second over the window (from its start, or the run's first row if later, to now)"
    )
    latency_ms: LatencySummary
    generated_at: datetime


class TimePoint(_Model):
    t: datetime = Field(description="bucket start (UTC)")
    seconds: float = Field(
        description="how much of the bucket has passed (less than its width for the current one)"
    )
    scored: int
    alerts: int
    frauds: int = Field(description="rows of the bucket whose known label is fraud")
    latency_p50_ms: float | None = Field(description="from the latency bins: within `latency_within_factor`")
    latency_p99_ms: float | None


class TimeSeries(_Model):
    """`GET /api/stats/timeseries`: per-bucket counts over the last `minutes` (empty buckets included)."""

    run_id: str
    minutes: int
    bucket_seconds: int = Field(description="a whole number of minutes: the rollups' grain")
    latency_within_factor: float = Field(
        description="each latency figure is within this factor of the exact one"
    )
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


# --------------------------------------------------------------------------- review, feedback, savings


class ReviewItem(_Model):
    """One alert of the live stream waiting for an analyst's verdict."""

    id: str
    time: float = Field(description="data time, seconds from the start of the data")
    amount: float
    score: float
    threshold: float | None = Field(description="the alert threshold of the version that scored it")
    model_version: str
    recon_error: float
    scored_at: datetime
    features: dict[str, float] = Field(description="V1..V28 (with time and amount: the raw inputs)")
    top_features: list[Contribution] | None = Field(
        default=None, description="the features that pushed the score up most (TreeSHAP), with explain=true"
    )
    explained_by: str | None = Field(default=None, description="the model version that explained it")


class ReviewQueue(_Model):
    """`GET /api/review/queue`: unreviewed alerts of the live stream, keyset-paginated."""

    order: Literal["score", "oldest", "newest"]
    items: list[ReviewItem]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page; null at the end")
    limit: int


class ReviewIn(BaseModel):
    """`POST /api/alerts/{transaction_id}/review`: the verdict, a note, and an optional idempotency key."""

    model_config = ConfigDict(extra="forbid")

    verdict: Literal["fraud", "not_fraud"]
    note: str | None = Field(default=None, max_length=2000, description="why (kept with the verdict)")
    review_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        pattern=r"^[^\x00]*$",
        description="the verdict's id; send the same one when retrying, so a retry never records it twice",
    )


class PreviousVerdict(_Model):
    """The analyst verdict a review replaces (the history keeps both)."""

    review_id: str
    verdict: Literal["fraud", "not_fraud"]
    who: str
    decided_at: datetime


class ReviewOut(_Model):
    """What was recorded: the verdict, by whom, and what it replaced."""

    review_id: str
    transaction_id: str
    verdict: Literal["fraud", "not_fraud"]
    label: int = Field(description="1 fraud, 0 not fraud")
    who: str = Field(description="the reviewer")
    submitted_by: str | None = Field(
        description="the credential that submitted it, when not the reviewer's own"
    )
    note: str | None
    decided_at: datetime
    recorded: bool = Field(
        description="false when this review_id was already recorded (a retry): nothing changed"
    )
    previous: PreviousVerdict | None = Field(description="the analyst verdict this one replaces, if any")


class FeedbackCounts(_Model):
    reviewed: int = Field(description="alerts with an analyst verdict (the latest per alert)")
    confirmed_fraud: int
    not_fraud: int
    precision: float | None = Field(
        description="confirmed fraud / reviewed: the alerts' precision from reviews"
    )
    missed: int = Field(description="frauds found later by chargeback among rows that did not alert")
    chargeback_frauds: int = Field(description="all frauds reported by chargeback")


class HourFeedback(FeedbackCounts):
    hour: datetime = Field(description="start of the hour (UTC) in which the verdicts were given")


class ReviewerCounts(_Model):
    who: str
    decisions: int = Field(description="verdicts given (corrections included)")
    fraud: int
    not_fraud: int
    last_24h: int
    last_decided_at: datetime


class FeedbackSummary(_Model):
    """`GET /api/feedback/summary`: the review work and what it says about the alerts (live stream)."""

    alerts: int = Field(description="alerts of the live stream")
    backlog: int = Field(description="alerts waiting for a verdict")
    overall: FeedbackCounts
    hours: float
    per_hour: list[HourFeedback] = Field(description="the last `hours` hours, oldest first, empty hours as 0")
    reviewers: list[ReviewerCounts] = Field(description="most decisions first")
    generated_at: datetime


class SavingsAt(_Model):
    threshold: float
    alerts: int
    alerts_per_day: float | None
    frauds_caught: int
    amount_caught: float
    amount_missed: float
    review_cost: float
    net_savings: float
    precision: float | None


class SavingsCurveOut(_Model):
    """`GET /api/model/savings`: net savings by threshold on a run's rows whose label is known.

    `net_savings = amount_caught - alerts x cost_per_alert`, at each threshold (the lower
    edge of each non-empty score bin, highest first).
    """

    run_id: str
    cost_per_alert: float
    capacity_per_day: int | None
    bins: int
    rows: int = Field(description="scored rows with a known label")
    frauds: int
    fraud_amount: float
    days: float | None = Field(description="the data time those rows cover")
    thresholds: list[float]
    alerts: list[int]
    alerts_per_day: list[float] | None
    frauds_caught: list[int]
    amount_caught: list[float]
    amount_missed: list[float]
    review_cost: list[float]
    net_savings: list[float]
    best: SavingsAt | None = Field(
        description="the largest net savings within capacity (null: alert nothing)"
    )
    current: SavingsAt | None = Field(
        description="at the run's threshold (live: the champion's); at the next candidate above it, "
        "with that threshold, when the threshold's 0.001-wide score bin holds too many rows to split"
    )
    current_threshold: float | None
    live_threshold: float | None = Field(description="the champion's threshold")


# --------------------------------------------------------------------------- compare


class ComparedVersion(_Model):
    """One version's numbers on the compared rows."""

    version: str
    role: Literal["champion", "shadow"] | None = Field(description="its role in the registry now")
    threshold: float
    in_sample: list[float] | None = Field(
        description="[from, to]: the data-time stretch it was trained and validated on (rows in it are left out)"
    )
    auprc: float | None
    auprc_interval: list[float] | None = Field(description="95% bootstrap interval")
    alerts: int = Field(description="compared rows on which it alerted (its own threshold)")
    caught: int = Field(description="frauds among its alerts")
    precision: float | None
    precision_interval: list[float] | None
    recall: float | None
    recall_interval: list[float] | None
    net_savings: float | None = Field(
        default=None,
        description="fraud amount caught by its alerts minus cost_per_alert per alert; "
        "null without FRAUDSTREAM_COST_PER_ALERT",
    )


class DisagreementOut(_Model):
    id: str
    time: float
    amount: float
    label: int
    score_a: float
    score_b: float
    alert_a: bool
    alert_b: bool


class ModelComparison(_Model):
    """Version a (by default the champion) against b (the shadow) on the same labelled live rows."""

    a: ComparedVersion
    b: ComparedVersion
    label_source: str = Field(description="where the known label comes from")
    cost_per_alert: float | None = Field(default=None, description="FRAUDSTREAM_COST_PER_ALERT, if set")
    time_from: float | None = Field(
        description="the window's start (data time, s); null when nothing to read"
    )
    time_to: float | None
    hours: float
    rows_in_window: int = Field(description="labelled rows scored by both in the window")
    left_out_in_sample: int = Field(description="of those, rows inside either version's in-sample stretch")
    rows: int = Field(description="rows compared: the window's rows outside both in-sample stretches")
    frauds: int
    truncated: bool = Field(
        description="a version had more than max_rows shadow rows in the window: it was cut to the newest (time_from)"
    )
    auprc_difference: float | None = Field(description="b's AUPRC minus a's")
    auprc_difference_interval: list[float] | None = Field(
        description="95% interval of the difference from a paired bootstrap (the same rows for both)"
    )
    b_better_share: float | None = Field(description="share of resamples in which b's AUPRC beats a's")
    resamples: int
    seed: int
    only_a_alerts: int = Field(description="rows a alerts on and b does not")
    only_a_frauds: int
    only_b_alerts: int
    only_b_frauds: int
    top_disagreements: list[DisagreementOut] = Field(
        description="rows they disagree on, largest score difference first"
    )
    notes: list[str] = Field(description="what the reader should know: caps hit, rows left out, no frauds")


# --------------------------------------------------------------------------- drift


class DriftHour(_Model):
    """One hour of data against the version's reference."""

    hour: int = Field(description="hour of data time (Time // 3600)")
    time_from: float
    rows: int
    enough_rows: bool = Field(description="false: too few rows for PSI to mean anything (see min_rows)")
    psi: dict[str, float | None] = Field(
        description="per input, recon_error and score; null when too few rows"
    )
    level: dict[str, str | None] = Field(description="stable (< 0.1), moderate (0.1-0.25), major (>= 0.25)")
    alert_rate: float | None
    expected_alert_rate: float | None


class DriftMover(_Model):
    """A quantity that moved most: its largest PSI in the window, and when."""

    quantity: str
    psi: float
    level: str
    hour: int


class DriftRecent(_Model):
    """The rows scored in the last minutes (wall clock), against the version's reference."""

    minutes: float
    rows: int
    enough_rows: bool
    psi: dict[str, float | None]
    level: dict[str, str | None]
    alert_rate: float | None
    expected_alert_rate: float | None


class DriftOut(_Model):
    version: str
    recent: DriftRecent | None = Field(default=None, description="the last `minutes` live, when asked")
    hours: list[DriftHour] = Field(description="hours of data with scored rows, oldest first")
    worst: list[DriftMover] = Field(description="the quantities with the largest PSI in the window")
    time_from: float
    time_to: float
    moderate: float = Field(description="PSI threshold of a moderate shift")
    major: float = Field(description="PSI threshold of a major shift")
    min_rows: int = Field(description="rows an hour needs for its PSI to be given")
