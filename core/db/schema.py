"""The PostgreSQL schema as SQLAlchemy Core tables (migrations live in core/migrations).

Rows are keyed by `(run_id, id)`: `run_id` is '' for the live stream and the backtest
run's id otherwise, so a backtest never mixes with live scores and a replayed or
redelivered event can never make a second row (inserts use ON CONFLICT DO NOTHING, first
into `transaction_keys`). `transactions`, `scores` and `shadow_scores` are partitioned by
run and data day (`core.db.partitions`), so their primary keys carry the `day`.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Double,
    ForeignKeyConstraint,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    SmallInteger,
    Table,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, TIMESTAMP
from sqlalchemy.types import UserDefinedType

from core.features import PCA_COLUMNS

LIVE_RUN = ""

metadata = MetaData()

#: Column names of the features in the database (lower case, EVENT_FEATURES order).
FEATURE_COLUMNS: tuple[str, ...] = ("time", *(name.lower() for name in PCA_COLUMNS), "amount")

transactions = Table(
    "transactions",
    metadata,
    Column("run_id", Text, nullable=False, server_default=text("''")),
    Column("id", Text, nullable=False),
    *(Column(name, Double, nullable=False) for name in FEATURE_COLUMNS),
    Column("label", SmallInteger, nullable=True),
    Column("produced_at", TIMESTAMP(timezone=True), nullable=True),
    Column("ingested_at", TIMESTAMP(timezone=True), nullable=False, server_default=func.now()),
    Column("day", Integer, nullable=False),  # data_day(time): the partition (core.db.partitions)
    PrimaryKeyConstraint("run_id", "id", "day", name="pk_transactions"),
    Index("ix_transactions_run_time", "run_id", "time"),
    Index("ix_transactions_frauds", "run_id", "time", postgresql_where=text("label = 1")),
    postgresql_partition_by="LIST (run_id)",
)

#: One row per stored transaction (migration 0013), unpartitioned: what keeps an id unique
#: across the data days `transactions` is partitioned by. Written first by every store.
transaction_keys = Table(
    "transaction_keys",
    metadata,
    Column("run_id", Text, nullable=False),
    Column("id", Text, nullable=False),
    Column("day", Integer, nullable=False),
    PrimaryKeyConstraint("run_id", "id", name="pk_transaction_keys"),
)


class Xid8(UserDefinedType):
    """PostgreSQL's 64-bit transaction id (`xid8`): which transaction inserted a score (0014)."""

    cache_ok = True

    def get_col_spec(self, **kw: object) -> str:
        return "XID8"


scores = Table(
    "scores",
    metadata,
    Column("run_id", Text, nullable=False),
    Column("id", Text, nullable=False),
    Column("model_version", Text, nullable=False),
    Column("score", Double, nullable=False),
    Column("recon_error", Double, nullable=False),
    Column("alert", Boolean, nullable=False),
    Column("scored_at", TIMESTAMP(timezone=True), nullable=False, server_default=func.now()),
    Column("latency_ms", Double, nullable=True),
    Column("day", Integer, nullable=False),  # its transaction's data day
    # The inserting transaction (migration 0014): `rollup_fold()` folds the scores of ended
    # transactions not folded yet into the wide rollups, by this indexed range.
    Column("xid", Xid8(), nullable=False, server_default=text("pg_current_xact_id()")),
    # Its transaction's inline label is 1 (migration 0016): the fraud lists page `ix_scores_frauds`.
    Column("fraud", Boolean, nullable=False, server_default=text("false")),
    # No foreign key to transactions (migration 0004): `store_scored` writes a score only in
    # the statement that stores its transaction, and the per-row check cost ~40% of the write.
    PrimaryKeyConstraint("run_id", "id", "day", name="pk_scores"),
    Index("ix_scores_run_scored", "run_id", text("scored_at DESC"), text("id DESC")),
    Index(
        "ix_scores_alerts", "run_id", text("scored_at DESC"), text("id DESC"), postgresql_where=text("alert")
    ),
    Index(
        "ix_scores_frauds", "run_id", text("scored_at DESC"), text("id DESC"), postgresql_where=text("fraud")
    ),
    Index("ix_scores_model_version", "model_version"),
    Index("ix_scores_run_score", "run_id", "score"),
    Index("ix_scores_xid", "xid"),
    postgresql_partition_by="LIST (run_id)",
)

#: The shadow (challenger) version's score of each live row (migration 0011): written in the
#: statement that stores the row, only for newly stored rows, never alerting and never read
#: by the live analytics. `time` is the row's data time, for windowed reads by version.
shadow_scores = Table(
    "shadow_scores",
    metadata,
    Column("run_id", Text, nullable=False),
    Column("id", Text, nullable=False),
    Column("model_version", Text, nullable=False),
    Column("time", Double, nullable=False),
    Column("score", Double, nullable=False),
    Column("recon_error", Double, nullable=False),
    Column("would_alert", Boolean, nullable=False),
    Column("scored_at", TIMESTAMP(timezone=True), nullable=False, server_default=func.now()),
    Column("day", Integer, nullable=False),
    PrimaryKeyConstraint("run_id", "id", "day", name="pk_shadow_scores"),
    Index("ix_shadow_scores_version_time", "run_id", "model_version", "time"),
    postgresql_partition_by="LIST (run_id)",
)

#: Live data days dropped by retention (migration 0013): the API answers "beyond retention"
#: from it for rows it no longer has.
data_days_dropped = Table(
    "data_days_dropped",
    metadata,
    Column("day", Integer, nullable=False),
    Column("dropped_at", TIMESTAMP(timezone=True), nullable=False, server_default=func.now()),
    Column("transactions", BigInteger, nullable=False),
    PrimaryKeyConstraint("day", name="pk_data_days_dropped"),
)

#: The maintenance task's last pass (one row): when, the newest data day, what it did.
maintenance_state = Table(
    "maintenance_state",
    metadata,
    Column("id", Boolean, nullable=False, server_default=text("true")),
    Column("last_run_at", TIMESTAMP(timezone=True), nullable=False),
    Column("newest_day", Integer, nullable=True),
    *(Column(name, BigInteger, nullable=False) for name in ("created", "moved", "dropped", "deferred")),
    CheckConstraint("id", name="ck_maintenance_state_one_row"),
    PrimaryKeyConstraint("id", name="pk_maintenance_state"),
)

#: The model registry: `bundle_path` is the version's copy in the content-addressed
#: store (`core.bundle_store`), `source_path` the folder it was registered from.
model_versions = Table(
    "model_versions",
    metadata,
    Column("version", Text, primary_key=True),
    Column("created_at", TIMESTAMP(timezone=True), nullable=False, server_default=func.now()),
    Column("bundle_path", Text, nullable=False),
    Column("threshold", Double, nullable=False),
    Column("manifest", JSONB, nullable=False),
    Column("active", Boolean, nullable=False, server_default=text("false")),  # the champion
    Column("source_path", Text, nullable=True),
    Column("registered_by", Text, nullable=False, server_default=text("'unknown'")),
    Column("shadow", Boolean, nullable=False, server_default=text("false")),
    CheckConstraint("NOT (active AND shadow)", name="ck_model_versions_champion_or_shadow"),
    Index("ux_model_versions_one_active", "active", unique=True, postgresql_where=text("active")),
    Index("ux_model_versions_one_shadow", "shadow", unique=True, postgresql_where=text("shadow")),
)

#: The registry's audit trail (migration 0007): append-only (triggers refuse UPDATE,
#: DELETE and TRUNCATE); one row per registration, promotion and shadow change.
model_events = Table(
    "model_events",
    metadata,
    Column("id", BigInteger, Identity(always=True), nullable=False),
    Column("version", Text, nullable=False),
    Column("action", Text, nullable=False),
    Column("actor", Text, nullable=False),
    Column("at", TIMESTAMP(timezone=True), nullable=False, server_default=func.now()),
    Column("note", Text, nullable=True),
    CheckConstraint(
        "action IN ('registered', 'promoted', 'shadow_on', 'shadow_off')", name="ck_model_events_action"
    ),
    ForeignKeyConstraint(["version"], ["model_versions.version"], name="fk_model_events_version"),
    PrimaryKeyConstraint("id", name="pk_model_events"),
    Index("ix_model_events_version_at", "version", "at"),
)

backtest_runs = Table(
    "backtest_runs",
    metadata,
    Column("id", Text, primary_key=True),
    Column("model_version", Text, nullable=False),
    Column("bundle_path", Text, nullable=False),
    Column("threshold", Double, nullable=False),
    Column("time_from", Double, nullable=False),
    Column("time_to", Double, nullable=False),
    Column("status", Text, nullable=False, server_default=text("'pending'")),
    Column("expected_count", Integer, nullable=True),
    Column("created_at", TIMESTAMP(timezone=True), nullable=False, server_default=func.now()),
    Column("started_at", TIMESTAMP(timezone=True), nullable=True),
    Column("finished_at", TIMESTAMP(timezone=True), nullable=True),
    Column("metrics", JSONB, nullable=True),
    Column("error", Text, nullable=True),
)

#: Per-run counters, kept by statement-level triggers on `transactions` and `scores`
#: (migration 0003): the API's totals without scanning either table; `backlog` (the live
#: run's row only): the rows of `review_queue`, kept by its own triggers (migration 0019);
#: the first and last `scored_at` of the run, kept by the trigger on `scores` (0020).
run_totals = Table(
    "run_totals",
    metadata,
    Column("run_id", Text, nullable=False),
    *(
        Column(name, BigInteger, nullable=False, server_default=text("0"))
        for name in ("transactions", "labelled", "frauds", "scored", "alerts", "backlog")
    ),
    Column("first_scored_at", TIMESTAMP(timezone=True), nullable=True),
    Column("last_scored_at", TIMESTAMP(timezone=True), nullable=True),
    PrimaryKeyConstraint("run_id", name="pk_run_totals"),
)

#: One row per scorer worker process, upserted every few seconds (migration 0005): the
#: API's `/health` and the dashboard read it to say when scoring is stalled or gone.
scorer_workers = Table(
    "scorer_workers",
    metadata,
    Column("worker_id", Text, nullable=False),
    Column("host", Text, nullable=False),
    Column("pid", Integer, nullable=False),
    Column("started_at", TIMESTAMP(timezone=True), nullable=False, server_default=func.now()),
    Column("heartbeat_at", TIMESTAMP(timezone=True), nullable=False, server_default=func.now()),
    Column("last_store_at", TIMESTAMP(timezone=True), nullable=True),
    Column("pending_events", BigInteger, nullable=False, server_default=text("0")),
    Column("assigned_partitions", Integer, nullable=False, server_default=text("0")),
    Column("lag", BigInteger, nullable=True),
    Column("state", Text, nullable=False, server_default=text("'starting'")),
    Column("reason", Text, nullable=True),
    Column("model_version", Text, nullable=True),
    CheckConstraint("state IN ('starting', 'ok', 'stalled', 'stopped')", name="ck_scorer_workers_state"),
    PrimaryKeyConstraint("worker_id", name="pk_scorer_workers"),
    Index("ix_scorer_workers_heartbeat", "heartbeat_at"),
)

#: The alert of each newly stored alerting row until the broker acknowledged it (migration
#: 0006): written in the statement that stores the row, deleted once published, so a
#: scorer killed in between publishes exactly these bytes when the batch comes again.
alert_outbox = Table(
    "alert_outbox",
    metadata,
    Column("run_id", Text, nullable=False),
    Column("id", Text, nullable=False),
    Column("payload", LargeBinary, nullable=False),
    Column("created_at", TIMESTAMP(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("run_id", "id", name="pk_alert_outbox"),
    Index("ix_alert_outbox_created", "created_at"),
)

#: Refused messages the dead-letter topic would not take after bounded retries (migration
#: 0006): kept here with where they came from, so the partition goes on and none is lost.
dead_letters = Table(
    "dead_letters",
    metadata,
    Column("seq", BigInteger, Identity(always=True), nullable=False),
    Column("parked_at", TIMESTAMP(timezone=True), nullable=False, server_default=func.now()),
    Column("kind", Text, nullable=False),
    Column("reason", Text, nullable=False),
    Column("source_topic", Text, nullable=False),
    Column("source_partition", Integer, nullable=False),
    Column("source_offset", BigInteger, nullable=False),
    Column("key", LargeBinary, nullable=True),
    Column("value", LargeBinary, nullable=False),
    Column("headers", JSONB, nullable=False),
    PrimaryKeyConstraint("seq", name="pk_dead_letters"),
    Index("ix_dead_letters_parked", "parked_at"),
)

#: Every verdict ever given (migration 0008): analyst reviews, chargebacks, replayed labels,
#: keyed by the verdict's id (`core.labels`). Append-only (triggers refuse UPDATE, DELETE and
#: TRUNCATE): nothing an analyst decides is lost, and each row says who decided it.
label_events = Table(
    "label_events",
    metadata,
    Column("label_id", Text, nullable=False),
    Column("run_id", Text, nullable=False, server_default=text("''")),
    Column("transaction_id", Text, nullable=False),
    Column("label", SmallInteger, nullable=False),
    Column("source", Text, nullable=False),
    Column("who", Text, nullable=False),
    Column("note", Text, nullable=True),
    Column("decided_at", TIMESTAMP(timezone=True), nullable=False),
    Column("submitted_by", Text, nullable=True),
    Column("stored_at", TIMESTAMP(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint("label IN (0, 1)", name="ck_label_events_label"),
    CheckConstraint("source IN ('analyst', 'chargeback', 'replay')", name="ck_label_events_source"),
    PrimaryKeyConstraint("label_id", name="pk_label_events"),
    Index("ix_label_events_transaction", "run_id", "transaction_id", "decided_at"),
    Index("ix_label_events_source_decided", "run_id", "source", "decided_at"),
)

#: The latest verdict per (run, transaction, source), kept with each stored event (migration
#: 0008). No foreign key: a verdict may come before its transaction. The known label of a
#: transaction is the view `known_labels` (function `known_labels_as_of(cutoff)`), not this.
feedback = Table(
    "feedback",
    metadata,
    Column("run_id", Text, nullable=False),
    Column("transaction_id", Text, nullable=False),
    Column("source", Text, nullable=False),
    Column("label", SmallInteger, nullable=False),
    Column("label_id", Text, nullable=False),
    Column("who", Text, nullable=False),
    Column("note", Text, nullable=True),
    Column("decided_at", TIMESTAMP(timezone=True), nullable=False),
    Column("updated_at", TIMESTAMP(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint("label IN (0, 1)", name="ck_feedback_label"),
    CheckConstraint("source IN ('analyst', 'chargeback', 'replay')", name="ck_feedback_source"),
    PrimaryKeyConstraint("run_id", "transaction_id", "source", name="pk_feedback"),
    Index("ix_feedback_source_decided", "run_id", "source", "decided_at"),
    Index("ix_feedback_frauds", "run_id", "source", "decided_at", postgresql_where=text("label = 1")),
)

#: The live run's alerts without an analyst verdict (migration 0008), kept by triggers on
#: `scores` and `feedback`: the review queue reads its indexes, never the history.
review_queue = Table(
    "review_queue",
    metadata,
    Column("transaction_id", Text, nullable=False),
    Column("score", Double, nullable=False),
    Column("scored_at", TIMESTAMP(timezone=True), nullable=False),
    PrimaryKeyConstraint("transaction_id", name="pk_review_queue"),
    Index("ix_review_queue_score", text("score DESC"), text("transaction_id DESC")),
    Index("ix_review_queue_age", "scored_at", "transaction_id"),
)

#: Every run's alerting scores by `scored_at` (migration 0021), kept by triggers on `scores`:
#: the alert list and the feedback summary find alerts without touching the day partitions.
alert_keys = Table(
    "alert_keys",
    metadata,
    Column("run_id", Text, nullable=False),
    Column("id", Text, nullable=False),
    Column("day", Integer, nullable=False),
    Column("scored_at", TIMESTAMP(timezone=True), nullable=False),
    PrimaryKeyConstraint("run_id", "id", name="pk_alert_keys"),
    Index("ix_alert_keys_newest", "run_id", text("scored_at DESC"), text("id DESC")),
)

# --------------------------------------------------------------------------- rollups (migration 0009)
# Minutes, hours and latency kept by the write statement (`core.db.store`, migration 0018), the
# wide ones by the fold (0014); moved between classes on label updates (`rollup_relabel`, via
# triggers on `transactions` and `feedback`): see the migrations. `class` is the known label: -1 unlabelled, 0 normal,
# 1 fraud; `hour` is the hour of *data* time, floor(time / 3600); `bin` is
# width_bucket(value, edges) with the edges of `analytics_bins` or `model_reference_bins`.

#: The fixed analytics bins of `core.bins` (one row per quantity, latency_ms included).
analytics_bins = Table(
    "analytics_bins",
    metadata,
    Column("quantity", Text, nullable=False),
    Column("version", Integer, nullable=False),
    Column("edges", ARRAY(Double), nullable=False),
    PrimaryKeyConstraint("quantity", name="pk_analytics_bins"),
)

#: Each registered version's reference bin edges (`manifest["reference"]`), filled by a
#: trigger when the version is inserted: the bins drift is counted in.
model_reference_bins = Table(
    "model_reference_bins",
    metadata,
    Column("version", Text, nullable=False),
    Column("quantity", Text, nullable=False),
    Column("edges", ARRAY(Double), nullable=False),
    ForeignKeyConstraint(
        ["version"], ["model_versions.version"], name="fk_model_reference_bins_version", ondelete="CASCADE"
    ),
    PrimaryKeyConstraint("version", "quantity", name="pk_model_reference_bins"),
)

#: Scored rows and alerts per (run, minute of scored_at, model version, class).
rollup_minutes = Table(
    "rollup_minutes",
    metadata,
    Column("run_id", Text, nullable=False),
    Column("minute", TIMESTAMP(timezone=True), nullable=False),
    Column("model_version", Text, nullable=False),
    Column("class", SmallInteger, nullable=False),
    Column("scored", BigInteger, nullable=False),
    Column("alerts", BigInteger, nullable=False),
    PrimaryKeyConstraint("run_id", "minute", "model_version", "class", name="pk_rollup_minutes"),
)

#: Scored rows and alerts per (run, hour of data time, model version, class).
rollup_hours = Table(
    "rollup_hours",
    metadata,
    Column("run_id", Text, nullable=False),
    Column("hour", Integer, nullable=False),
    Column("model_version", Text, nullable=False),
    Column("class", SmallInteger, nullable=False),
    Column("scored", BigInteger, nullable=False),
    Column("alerts", BigInteger, nullable=False),
    PrimaryKeyConstraint("run_id", "hour", "model_version", "class", name="pk_rollup_hours"),
)

#: Rows per (run, minute of scored_at, latency bin of `core.bins.LATENCY_BINS`).
rollup_latency = Table(
    "rollup_latency",
    metadata,
    Column("run_id", Text, nullable=False),
    Column("minute", TIMESTAMP(timezone=True), nullable=False),
    Column("bin", SmallInteger, nullable=False),
    Column("n", BigInteger, nullable=False),
    PrimaryKeyConstraint("run_id", "minute", "bin", name="pk_rollup_latency"),
)

#: Rows, alerts and the values' sums (all rows, alert rows) per (run, quantity, model version, class, analytics bin):
#: V1..V28, amount, recon_error and score.
rollup_histograms = Table(
    "rollup_histograms",
    metadata,
    Column("run_id", Text, nullable=False),
    Column("quantity", Text, nullable=False),
    Column("model_version", Text, nullable=False),
    Column("class", SmallInteger, nullable=False),
    Column("bin", SmallInteger, nullable=False),
    Column("n", BigInteger, nullable=False),
    Column("alerts", BigInteger, nullable=False),
    Column("total", Double, nullable=False),
    Column("alert_total", Double, nullable=False),
    PrimaryKeyConstraint("run_id", "quantity", "model_version", "class", "bin", name="pk_rollup_histograms"),
)

#: Rows and the sum of their amounts per (run, model version, class, score bin), kept by the
#: fold (migration 0017): the savings curve's fraud amount by threshold.
rollup_score_amounts = Table(
    "rollup_score_amounts",
    metadata,
    Column("run_id", Text, nullable=False),
    Column("model_version", Text, nullable=False),
    Column("class", SmallInteger, nullable=False),
    Column("bin", SmallInteger, nullable=False),
    Column("n", BigInteger, nullable=False),
    Column("amount", Double, nullable=False),
    PrimaryKeyConstraint("run_id", "model_version", "class", "bin", name="pk_rollup_score_amounts"),
)

#: Rows and alerts per (run, model version, data hour, class, score bin): in-sample hours.
rollup_score_hours = Table(
    "rollup_score_hours",
    metadata,
    Column("run_id", Text, nullable=False),
    Column("model_version", Text, nullable=False),
    Column("hour", Integer, nullable=False),
    Column("class", SmallInteger, nullable=False),
    Column("bin", SmallInteger, nullable=False),
    Column("n", BigInteger, nullable=False),
    Column("alerts", BigInteger, nullable=False),
    PrimaryKeyConstraint("run_id", "model_version", "hour", "class", "bin", name="pk_rollup_score_hours"),
)

#: Rows per (run, model version, data hour, quantity, bin of that version's reference edges).
rollup_drift = Table(
    "rollup_drift",
    metadata,
    Column("run_id", Text, nullable=False),
    Column("model_version", Text, nullable=False),
    Column("hour", Integer, nullable=False),
    Column("quantity", Text, nullable=False),
    Column("bin", SmallInteger, nullable=False),
    Column("n", BigInteger, nullable=False),
    PrimaryKeyConstraint("run_id", "model_version", "hour", "quantity", "bin", name="pk_rollup_drift"),
)

#: The class the rollups count a transaction under, for each transaction with a verdict
#: (migration 0012): its known label (`known_labels`), kept by triggers on `feedback`.
#: Transactions without a row here are counted under their inline label.
#: The fold's watermark (migration 0014, one row): every score with xid < folded_below is in
#: `rollup_histograms`, `rollup_score_hours` and `rollup_drift`.
rollup_fold_state = Table(
    "rollup_fold_state",
    metadata,
    Column("id", Boolean, nullable=False, server_default=text("true")),
    Column("folded_below", Xid8(), nullable=False),
    Column("folded_at", TIMESTAMP(timezone=True), nullable=True),
    Column("rows", BigInteger, nullable=False, server_default=text("0")),
    CheckConstraint("id", name="ck_rollup_fold_state_one_row"),
    PrimaryKeyConstraint("id", name="pk_rollup_fold_state"),
)

rollup_known_classes = Table(
    "rollup_known_classes",
    metadata,
    Column("run_id", Text, nullable=False),
    Column("transaction_id", Text, nullable=False),
    Column("class", SmallInteger, nullable=False),
    PrimaryKeyConstraint("run_id", "transaction_id", name="pk_rollup_known_classes"),
)

#: The scatter plot's sample (migration 0022): per (run, data day, class) the scored rows whose
#: key (`scatter_key(run_id, id)`, uniform in [0, 1)) is under the group's `threshold`: every
#: row while the threshold is 1.0, else at least `scatter_sample_k()` (2,500) rows. Kept by the
#: write statement (`core.db.store`), relabels, deletes and retention; `GET /api/scatter`
#: reads a run's smallest keys per class through `ix_scatter_sample_read`.
scatter_sample_state = Table(
    "scatter_sample_state",
    metadata,
    Column("run_id", Text, nullable=False),
    Column("day", Integer, nullable=False),
    Column("fraud", Boolean, nullable=False),  # the class: `scores.fraud` (inline label 1)
    Column("total", BigInteger, nullable=False),  # the group's scored rows
    Column("sampled", Integer, nullable=False),  # of them in the sample
    Column("threshold", Double, nullable=False),
    PrimaryKeyConstraint("run_id", "day", "fraud", name="pk_scatter_sample_state"),
)

scatter_sample = Table(
    "scatter_sample",
    metadata,
    Column("run_id", Text, nullable=False),
    Column("day", Integer, nullable=False),
    Column("fraud", Boolean, nullable=False),
    Column("key", Double, nullable=False),
    Column("id", Text, nullable=False),
    *(Column(name, Double, nullable=False) for name in FEATURE_COLUMNS),
    Column("label", SmallInteger, nullable=True),
    Column("score", Double, nullable=False),
    Column("recon_error", Double, nullable=False),
    Column("alert", Boolean, nullable=False),
    Column("model_version", Text, nullable=False),
    PrimaryKeyConstraint("run_id", "day", "fraud", "key", "id", name="pk_scatter_sample"),
    Index("ix_scatter_sample_read", "run_id", "fraud", "key", "id"),
)
