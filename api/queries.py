"""Every SQL statement the API runs, built with SQLAlchemy Core from `core.db.schema`.

No statement is ever assembled from request text: feature names are looked up in
`FEATURES` (a fixed map from public name to a column object), and every value the
client sends is a bound parameter. Aggregates (counts, histograms, score bins) are
computed by PostgreSQL; Python only receives the grouped rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import (
    Select,
    and_,
    column,
    false,
    func,
    literal,
    or_,
    select,
    table,
    tablesample,
    true,
    tuple_,
)
from sqlalchemy.sql.elements import ColumnElement

from core.db.schema import FEATURE_COLUMNS, backtest_runs, model_versions, scores, transactions
from core.features import PCA_COLUMNS

t = transactions.c
s = scores.c

_JOIN = transactions.join(scores, and_(t.run_id == s.run_id, t.id == s.id))

#: Origin of the time-series buckets (any fixed instant; buckets are aligned to it).
BUCKET_ORIGIN = datetime(2000, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Feature:
    """A feature the client may name: its public name, its column, whether it is never negative."""

    name: str
    column: ColumnElement
    nonnegative: bool


def _features() -> dict[str, Feature]:
    found = [Feature("Time", t.time, True)]
    found += [Feature(name, t[name.lower()], False) for name in PCA_COLUMNS]
    found += [
        Feature("Amount", t.amount, True),
        Feature("recon_error", s.recon_error, True),
        Feature("score", s.score, True),
    ]
    return {feature.name.lower(): feature for feature in found}


#: Public feature name (lower case) -> Feature. The only way a name reaches a statement.
FEATURES: dict[str, Feature] = _features()
FEATURE_NAMES: list[str] = [feature.name for feature in FEATURES.values()]

#: The V1..V28 columns, in order, for list responses.
PCA_DB_COLUMNS = [t[name.lower()] for name in PCA_COLUMNS]
#: Columns that rebuild the raw (n, 30) model input (time, V1..V28, amount).
RAW_DB_COLUMNS = [t[name] for name in FEATURE_COLUMNS]


def lookup_feature(name: str) -> Feature | None:
    return FEATURES.get(name.lower())


# --------------------------------------------------------------------------- stats


def watermark(run_id: str) -> Select:
    """The newest `scored_at` of a run: one index probe; it moves whenever rows are stored."""
    return select(func.max(s.scored_at)).where(s.run_id == run_id)


def score_totals(run_id: str, window: timedelta) -> Select:
    """Totals of the run and, over the last `window`, counts and latency percentiles."""
    in_window = s.scored_at >= func.now() - window
    latency = s.latency_ms
    return select(
        func.count().label("volume"),
        func.count().filter(s.alert).label("alerts"),
        func.min(s.scored_at).label("first_scored_at"),
        func.max(s.scored_at).label("last_scored_at"),
        func.count().filter(in_window).label("window_scored"),
        func.count().filter(and_(in_window, s.alert)).label("window_alerts"),
        func.min(s.scored_at).filter(in_window).label("window_first"),
        func.now().label("now"),
        func.count(latency).filter(in_window).label("latency_count"),
        *(
            func.percentile_cont(q).within_group(latency).filter(in_window).label(f"p{int(q * 100)}")
            for q in (0.5, 0.95, 0.99)
        ),
        func.max(latency).filter(in_window).label("latency_max"),
    ).where(s.run_id == run_id)


def label_totals(run_id: str) -> Select:
    return select(
        func.count(t.label).label("labelled"),
        func.count().filter(t.label == 1).label("frauds"),
    ).where(t.run_id == run_id)


def fraud_count(run_id: str) -> Select:
    """Frauds alone: served by the partial index on label = 1."""
    return select(func.count()).select_from(transactions).where(t.run_id == run_id, t.label == 1)


def true_alerts(run_id: str) -> Select:
    return select(func.count()).select_from(_JOIN).where(s.run_id == run_id, s.alert, t.label == 1)


def timeseries(run_id: str, window: timedelta, bucket: timedelta) -> Select:
    bucket_start = func.date_bin(bucket, s.scored_at, literal(BUCKET_ORIGIN)).label("bucket_start")
    latency = s.latency_ms
    return (
        select(
            bucket_start,
            func.count().label("scored"),
            func.count().filter(s.alert).label("alerts"),
            func.count().filter(t.label == 1).label("frauds"),
            func.percentile_cont(0.5).within_group(latency).label("p50"),
            func.percentile_cont(0.99).within_group(latency).label("p99"),
        )
        .select_from(_JOIN)
        .where(s.run_id == run_id, s.scored_at >= func.now() - window)
        .group_by(bucket_start)
        .order_by(bucket_start)
    )


def now() -> Select:
    return select(func.now())


# --------------------------------------------------------------------------- lists


@dataclass(frozen=True)
class ListFilter:
    """Filters of the transaction lists; None means "any"."""

    run_id: str
    label: int | None = None
    alert: bool | None = None
    score_min: float | None = None
    score_max: float | None = None
    time_from: float | None = None
    time_to: float | None = None


def transaction_page(
    where: ListFilter, limit: int, after: tuple[datetime, str] | None, with_features: bool
) -> Select:
    """One page, newest first by (scored_at, id); `after` is the last row of the previous page.

    Fetches `limit + 1` rows so the caller knows whether another page exists.
    """
    columns = [
        t.id,
        t.run_id,
        t.time,
        t.amount,
        t.label,
        s.score,
        s.recon_error,
        s.alert,
        s.model_version,
        s.scored_at,
        s.latency_ms,
    ]
    if with_features:
        columns += PCA_DB_COLUMNS
    conditions: list[ColumnElement] = [s.run_id == where.run_id]
    if where.label is not None:
        conditions.append(t.label == where.label)
    if where.alert is not None:
        conditions.append(s.alert.is_(true()) if where.alert else s.alert.is_(false()))
    if where.score_min is not None:
        conditions.append(s.score >= where.score_min)
    if where.score_max is not None:
        conditions.append(s.score <= where.score_max)
    if where.time_from is not None:
        conditions.append(t.time >= where.time_from)
    if where.time_to is not None:
        conditions.append(t.time <= where.time_to)
    if after is not None:
        conditions.append(tuple_(s.scored_at, s.id) < tuple_(literal(after[0]), literal(after[1])))
    return (
        select(*columns)
        .select_from(_JOIN)
        .where(*conditions)
        .order_by(s.scored_at.desc(), s.id.desc())
        .limit(limit + 1)
    )


def raw_features(run_id: str, ids: list[str]) -> Select:
    """The model inputs of some stored rows (to explain them)."""
    return select(t.id, *RAW_DB_COLUMNS).where(t.run_id == run_id, t.id.in_(ids))


# --------------------------------------------------------------------------- distributions


def value_range(feature: Feature, run_id: str, log: bool) -> Select:
    value = _transformed(feature, log)
    source = _JOIN if feature.column.table is scores else transactions
    run = s.run_id if feature.column.table is scores else t.run_id
    return select(func.min(value), func.max(value)).select_from(source).where(run == run_id)


def _transformed(feature: Feature, log: bool) -> ColumnElement:
    return func.ln(1.0 + func.greatest(feature.column, 0.0)) if log else feature.column


def histogram(feature: Feature, run_id: str, lo: float, hi: float, bins: int, log: bool) -> Select:
    """Counts and sums per (bin, label, alert); bins are equal width over [lo, hi] (log1p space if `log`).

    The top edge belongs to the last bin (width_bucket would put it in bin `bins + 1`).
    """
    value = _transformed(feature, log)
    bucket = func.least(func.width_bucket(value, lo, hi, bins), bins).label("bucket")
    return (
        select(
            bucket,
            t.label,
            s.alert,
            func.count().label("n"),
            func.sum(feature.column).label("total"),
        )
        .select_from(_JOIN)
        .where(s.run_id == run_id)
        .group_by(bucket, t.label, s.alert)
    )


# --------------------------------------------------------------------------- scatter


def table_rows_estimate() -> Select:
    """The planner's row estimate of `transactions` (free: no scan)."""
    pg_class = table("pg_class", column("reltuples"), column("oid"))
    return select(pg_class.c.reltuples).where(pg_class.c.oid == func.to_regclass("transactions"))


def scatter_frauds(x: Feature, y: Feature, run_id: str, n: int) -> Select:
    """A random sample of frauds (few rows: read through the partial index on label = 1)."""
    return (
        select(t.id, x.column.label("x"), y.column.label("y"), t.label, s.score, s.alert)
        .select_from(_JOIN)
        .where(t.run_id == run_id, t.label == 1)
        .order_by(func.random())
        .limit(n)
    )


def scatter_normals(x: Feature, y: Feature, run_id: str, n: int, percent: float | None) -> Select:
    """A random sample of non-fraud rows; with `percent`, from a block sample of that size first.

    TABLESAMPLE SYSTEM reads only the sampled pages, so this stays fast on the full data;
    the caller falls back to `percent=None` (a sort over the run's rows) when the block
    sample came back short (a small run in a big table).
    """
    tx = tablesample(transactions, func.system(percent), name="tx") if percent is not None else transactions
    tc = tx.c
    sc = scores.c
    x_col = sc[x.column.name] if x.column.table is scores else tc[x.column.name]
    y_col = sc[y.column.name] if y.column.table is scores else tc[y.column.name]
    return (
        select(tc.id, x_col.label("x"), y_col.label("y"), tc.label, sc.score, sc.alert)
        .select_from(tx.join(scores, and_(tc.run_id == sc.run_id, tc.id == sc.id)))
        .where(tc.run_id == run_id, or_(tc.label.is_(None), tc.label == 0))
        .order_by(func.random())
        .limit(n)
    )


# --------------------------------------------------------------------------- model performance


def score_bins(run_id: str, bins: int) -> Select:
    """Labelled rows counted per (model version, score bin, label, alert flag)."""
    bucket = func.least(func.greatest(func.width_bucket(s.score, 0.0, 1.0, bins), 1), bins).label("bucket")
    return (
        select(s.model_version, bucket, t.label, s.alert, func.count().label("n"))
        .select_from(_JOIN)
        .where(s.run_id == run_id, t.label.is_not(None))
        .group_by(s.model_version, bucket, t.label, s.alert)
    )


def version_rows(run_id: str) -> Select:
    """Rows per model version (labelled or not)."""
    return (
        select(s.model_version, func.count().label("n")).where(s.run_id == run_id).group_by(s.model_version)
    )


def model_version_list() -> Select:
    return select(model_versions).order_by(model_versions.c.created_at.desc(), model_versions.c.version)


def model_thresholds() -> Select:
    return select(model_versions.c.version, model_versions.c.threshold)


# --------------------------------------------------------------------------- backtests


def backtest_list() -> Select:
    return select(backtest_runs).order_by(backtest_runs.c.created_at.desc(), backtest_runs.c.id)


def backtest_one(run_id: str) -> Select:
    return select(backtest_runs).where(backtest_runs.c.id == run_id)


def run_count(run_id: str) -> Select:
    return select(func.count()).select_from(scores).where(s.run_id == run_id)
