"""Every SQL statement the API runs, built with SQLAlchemy Core from `core.db.schema`.

No statement is ever assembled from request text: feature names are looked up in
`FEATURES` (a fixed map from public name to a column object), and every value the
client sends is a bound parameter. Aggregates (counts, histograms, score bins) are
computed by PostgreSQL; Python only receives the grouped rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from sqlalchemy import (
    BigInteger,
    CompoundSelect,
    Double,
    Integer,
    Select,
    Text,
    and_,
    case,
    cast,
    false,
    func,
    literal,
    literal_column,
    not_,
    select,
    true,
    tuple_,
    union_all,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.sql.elements import ColumnElement

from core.db.schema import (
    FEATURE_COLUMNS,
    alert_keys,
    backtest_runs,
    model_versions,
    rollup_histograms,
    rollup_hours,
    rollup_latency,
    rollup_minutes,
    rollup_score_hours,
    scatter_sample,
    scores,
    transactions,
)
from core.db.schema import run_totals as run_totals_table
from core.features import PCA_COLUMNS

t = transactions.c
s = scores.c
ak = alert_keys.c
rm = rollup_minutes.c
rl = rollup_latency.c

_JOIN = transactions.join(scores, and_(t.run_id == s.run_id, t.id == s.id, t.day == s.day))

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
    """The newest `scored_at` of a run (kept in its totals row, migration 0020): one primary-key
    probe, whatever the days kept; it moves whenever rows are stored."""
    return select(run_totals_table.c.last_scored_at).where(run_totals_table.c.run_id == run_id)


def run_totals(run_id: str) -> Select:
    """The run's counters and its first/last scored_at, all kept by triggers (migrations 0003,
    0020): one primary-key probe. Zeros (and no times) for a run with nothing stored."""
    r = run_totals_table.c
    counters = [
        func.coalesce(column_, 0).label(column_.name)
        for column_ in (r.transactions, r.labelled, r.frauds, r.scored, r.alerts)
    ]
    return select(
        *counters,
        r.first_scored_at.label("first"),
        r.last_scored_at.label("last"),
    ).select_from(
        select(literal(1).label("one")).subquery("one").outerjoin(run_totals_table, r.run_id == run_id)
    )


def _count(total: ColumnElement) -> ColumnElement:
    """A sum of counters as a bigint (PostgreSQL sums bigints as numeric), 0 when nothing is summed."""
    return cast(func.coalesce(total, 0), BigInteger)


def window_rollup(run_id: str, since: datetime) -> Select:
    """Rows, alerts and frauds (known label) scored in the whole minutes from `since` (migration 0009's
    `rollup_minutes`): a primary-key range scan of a few rows per minute, whatever the history.

    `since` is a bound value on a minute boundary (not `now() - interval`), so the planner sees
    how narrow the range is."""
    return select(
        _count(func.sum(rm.scored)).label("scored"),
        _count(func.sum(rm.alerts)).label("alerts"),
        _count(func.sum(rm.scored).filter(rm["class"] == 1)).label("frauds"),
    ).where(rm.run_id == run_id, rm.minute >= since)


def latency_rollup(run_id: str, since: datetime, bucket: timedelta | None = None) -> Select:
    """Rows per latency bin (`core.bins.LATENCY_BINS`) scored in the whole minutes from `since`, per
    bucket of `bucket` (a whole number of minutes) if given: a primary-key range scan of `rollup_latency`."""
    columns = [rl.bin, _count(func.sum(rl.n)).label("n")]
    group = [rl.bin]
    if bucket is not None:
        start = func.date_bin(bucket, rl.minute, literal(BUCKET_ORIGIN)).label("bucket_start")
        columns.insert(0, start)
        group.insert(0, start)
    return select(*columns).where(rl.run_id == run_id, rl.minute >= since).group_by(*group)


def timeseries(run_id: str, since: datetime, bucket: timedelta) -> Select:
    """Scored rows, alerts and frauds (known label) per bucket of whole minutes from `since`: the
    minute rollup's rows summed per bucket (date_bin on the minute; buckets align with minutes)."""
    bucket_start = func.date_bin(bucket, rm.minute, literal(BUCKET_ORIGIN)).label("bucket_start")
    return (
        select(
            bucket_start,
            _count(func.sum(rm.scored)).label("scored"),
            _count(func.sum(rm.alerts)).label("alerts"),
            _count(func.sum(rm.scored).filter(rm["class"] == 1)).label("frauds"),
        )
        .where(rm.run_id == run_id, rm.minute >= since)
        .group_by(bucket_start)
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


def day_of(data_time: float) -> ColumnElement:
    """The data day of a data time, as a constant the planner folds (`data_day` is an immutable
    SQL function) and prunes partitions with; monotone, so a time range's days are a day range."""
    return func.data_day(literal(data_time, Double))


def transaction_page(
    where: ListFilter, limit: int, after: tuple[datetime, str] | None, with_features: bool
) -> Select:
    """One page, newest first by (scored_at, id); `after` is the last row of the previous page.

    Fetches `limit + 1` rows so the caller knows whether another page exists.
    """
    features = PCA_DB_COLUMNS if with_features else []
    on_scores: list[ColumnElement] = [s.run_id == where.run_id]
    on_transactions: list[ColumnElement] = []
    if where.label == 1:  # the frauds: a range of their own index (migration 0016)
        on_scores.append(s.fraud)
    elif where.label is not None:
        on_transactions.append(t.label == where.label)
    if where.alert is not None:
        # plain `alert` (not `alert IS TRUE`): the form the partial index `ix_scores_alerts` proves
        on_scores.append(s.alert if where.alert else not_(s.alert))
    if where.score_min is not None:
        on_scores.append(s.score >= where.score_min)
    if where.score_max is not None:
        on_scores.append(s.score <= where.score_max)
    # A data-time range is a range of data days too: only those days' partitions are read.
    if where.time_from is not None:
        first_day = day_of(where.time_from)
        on_transactions += [t.time >= where.time_from, t.day >= first_day]
        on_scores.append(s.day >= first_day)
    if where.time_to is not None:
        last_day = day_of(where.time_to)
        on_transactions += [t.time <= where.time_to, t.day <= last_day]
        on_scores.append(s.day <= last_day)
    if after is not None:
        on_scores.append(tuple_(s.scored_at, s.id) < tuple_(literal(after[0]), literal(after[1])))
    if on_transactions:
        return (
            select(t.id, t.run_id, t.time, t.amount, t.label, *_SCORE_COLUMNS, *features)
            .select_from(_JOIN)
            .where(*on_scores, *on_transactions)
            .order_by(s.scored_at.desc(), s.id.desc())
            .limit(limit + 1)
        )
    # Every filter is on `scores`: the page is taken from its index alone, then joined. The
    # join cannot change the plan of the page (a day's partition not analyzed yet once made
    # the planner hash-join every transaction to sort them: 1-4 s at 3-10 M rows).
    page = (
        select(s.run_id, s.id, s.day, *_SCORE_COLUMNS)
        .where(*on_scores)
        .order_by(s.scored_at.desc(), s.id.desc())
        .limit(literal_column(str(int(limit) + 1)))  # in the text: a generic plan knows it too
        .subquery("page")
    )
    p = page.c
    return (
        select(t.id, t.run_id, t.time, t.amount, t.label, *(p[c.name] for c in _SCORE_COLUMNS), *features)
        .select_from(page.join(transactions, and_(t.run_id == p.run_id, t.id == p.id, t.day == p.day)))
        .order_by(p.scored_at.desc(), p.id.desc())
    )


#: The score columns of a listed transaction.
_SCORE_COLUMNS = (s.score, s.recon_error, s.alert, s.model_version, s.scored_at, s.latency_ms)


def is_alert_list(where: ListFilter) -> bool:
    """The run's alerts with no other filter: paged from `alert_keys` (`alert_page`)."""
    return where == ListFilter(where.run_id, alert=True)


def alert_page(run_id: str, limit: int, after: tuple[datetime, str] | None) -> Select:
    """One page of the run's alerts, newest first by (scored_at, id), as keys: a range of
    `ix_alert_keys_newest` (migration 0021), no partition of the history opened; `limit + 1`
    keys, so the caller knows whether another page exists. Then `listed_rows`."""
    where: list[ColumnElement] = [ak.run_id == run_id]
    if after is not None:
        where.append(tuple_(ak.scored_at, ak.id) < tuple_(literal(after[0]), literal(after[1])))
    return (
        select(ak.id, ak.day, ak.scored_at)
        .where(*where)
        .order_by(ak.scored_at.desc(), ak.id.desc())
        .limit(literal_column(str(int(limit) + 1)))
    )


def listed_rows(run_id: str, keys: list[tuple[str, int]], with_features: bool) -> Select:
    """The listed columns of these (id, data day) keys, newest first by (scored_at, id).

    Each key looks up its score and its transaction by primary key (a lateral subquery per
    key, kept apart by `OFFSET 0`), only in the keys' days' partitions: the days (numbers
    from `alert_keys`, never text from a request) are written into the statement, so the
    planner keeps no other partition, and no other is read or locked, however many days
    are kept. (A plain join was tried first: a day partition filled since it was last
    analyzed looked nearly empty to the planner, which then drove the join from a scan of
    the whole day.)
    """
    days = [literal_column(str(int(day))) for day in sorted({day for _, day in keys})]
    k = (
        func.unnest(
            literal([id_ for id_, _ in keys], ARRAY(Text)), literal([day for _, day in keys], ARRAY(Integer))
        )
        .table_valued("id", "day")
        .render_derived()
        .alias("k")
    )
    score = (
        select(*_SCORE_COLUMNS)
        .where(s.run_id == run_id, s.id == k.c.id, s.day == k.c.day, s.day.in_(days))
        .offset(literal_column("0"))
        .lateral("ks")
    )
    features = PCA_DB_COLUMNS if with_features else []
    row = (
        select(t.id, t.run_id, t.time, t.amount, t.label, *features)
        .where(t.run_id == run_id, t.id == k.c.id, t.day == k.c.day, t.day.in_(days))
        .offset(literal_column("0"))
        .lateral("kt")
    )
    return (
        select(
            row.c.id,
            row.c.run_id,
            row.c.time,
            row.c.amount,
            row.c.label,
            *(score.c[c.name] for c in _SCORE_COLUMNS),
            *(row.c[c.name] for c in features),
        )
        .select_from(k.join(score, true()).join(row, true()))
        .order_by(score.c.scored_at.desc(), row.c.id.desc())
    )


def raw_features(run_id: str, ids: list[str]) -> Select:
    """The model inputs of some stored rows (to explain them)."""
    return select(t.id, *RAW_DB_COLUMNS).where(t.run_id == run_id, t.id.in_(ids))


# --------------------------------------------------------------------------- distributions


def value_range(feature: Feature, run_id: str, log: bool) -> Select:
    """Min and max over the feature's own table only (an index probe for Time and score).

    The log transform is monotone, so it is applied to the extremes, bit for bit as the
    histogram applies it to each row.
    """
    column = feature.column
    run = s.run_id if column.table is scores else t.run_id
    lo, hi = func.min(column), func.max(column)
    if log:
        lo, hi = _log1p(lo), _log1p(hi)
    return select(lo, hi).where(run == run_id)


def _log1p(value: ColumnElement) -> ColumnElement:
    return func.ln(1.0 + func.greatest(value, 0.0))


def _transformed(feature: Feature, log: bool) -> ColumnElement:
    return _log1p(feature.column) if log else feature.column


def _bucket(feature: Feature, lo: float, hi: float, bins: int, log: bool) -> ColumnElement:
    """Equal-width bin 1..bins over [lo, hi]; the top edge belongs to the last bin."""
    return func.least(func.width_bucket(_transformed(feature, log), lo, hi, bins), bins).label("bucket")


def histogram_by_label(feature: Feature, run_id: str, lo: float, hi: float, bins: int, log: bool) -> Select:
    """Counts and sums per (bin, label) of a `transactions` feature: one pass, no join."""
    bucket = _bucket(feature, lo, hi, bins, log)
    return (
        select(bucket, t.label, func.count().label("n"), func.sum(feature.column).label("total"))
        .where(t.run_id == run_id)
        .group_by(bucket, t.label)
    )


def histogram_alerts(feature: Feature, run_id: str, lo: float, hi: float, bins: int, log: bool) -> Select:
    """Counts and sums per bin of the alert rows alone (partial index on alert; few rows)."""
    bucket = _bucket(feature, lo, hi, bins, log)
    return (
        select(bucket, func.count().label("n"), func.sum(feature.column).label("total"))
        .select_from(_JOIN)
        .where(s.run_id == run_id, s.alert)
        .group_by(bucket)
    )


def histogram_by_alert(feature: Feature, run_id: str, lo: float, hi: float, bins: int, log: bool) -> Select:
    """Counts and sums per (bin, alert) of a `scores` feature over all rows: one pass, no join."""
    bucket = _bucket(feature, lo, hi, bins, log)
    return (
        select(bucket, s.alert, func.count().label("n"), func.sum(feature.column).label("total"))
        .where(s.run_id == run_id)
        .group_by(bucket, s.alert)
    )


def histogram_of_label(
    feature: Feature, run_id: str, lo: float, hi: float, bins: int, log: bool, label: int | None
) -> Select:
    """Counts and sums per (bin, alert) of the rows with one label (1: frauds, None: unlabelled).

    Frauds are read through the partial index on label = 1; unlabelled rows are only asked
    for when the run has some (see `totals`).
    """
    bucket = _bucket(feature, lo, hi, bins, log)
    return (
        select(bucket, s.alert, func.count().label("n"), func.sum(feature.column).label("total"))
        .select_from(_JOIN)
        .where(t.run_id == run_id, t.label.is_(None) if label is None else t.label == label)
        .group_by(bucket, s.alert)
    )


# --------------------------------------------------------------------------- scatter


def scatter_points(x: Feature, y: Feature, run_id: str, frauds: int, normals: int) -> CompoundSelect:
    """The run's `frauds` frauds and `normals` normal rows with the smallest keys, each class in
    key order, from the sample the write path keeps (`scatter_sample`, migration 0022): one
    range of `ix_scatter_sample_read` per class, no join. The smallest keys of the day samples
    are the smallest of all the run's retained rows (up to `scatter_sample_k()` per class), so
    this is a uniform sample without replacement, the same at every call."""
    c = scatter_sample.c

    def smallest(fraud: bool, n: int) -> Select:
        return (
            select(
                c.id,
                c[x.column.name].label("x"),
                c[y.column.name].label("y"),
                c.label,
                c.score,
                c.alert,
                c.fraud,
            )
            .where(c.run_id == run_id, c.fraud == (true() if fraud else false()))
            .order_by(c.key, c.id)
            .limit(n)
        )

    return union_all(smallest(True, frauds), smallest(False, normals))


# --------------------------------------------------------------------------- model performance


def model_version_list() -> Select:
    """Model versions with the manifest parts the list shows, cut in SQL (no curves sent over)."""
    m = model_versions.c
    evaluation = m.manifest["evaluation"]
    training = m.manifest["training"]
    return select(
        m.version,
        m.created_at,
        m.bundle_path,
        m.source_path,
        m.registered_by,
        m.threshold,
        m.active,
        m.shadow,
        case((func.jsonb_typeof(evaluation) == "object", evaluation.op("-")("curves"))).label("evaluation"),
        case((func.jsonb_typeof(training) == "object", training["data"])).label("training"),
    ).order_by(m.created_at.desc(), m.version)


def model_thresholds() -> Select:
    return select(model_versions.c.version, model_versions.c.threshold)


# --------------------------------------------------------------------------- rollups (migration 0009)

rh = rollup_histograms.c
rs = rollup_score_hours.c
rhours = rollup_hours.c
#: `class` in the rollups: the known label, -1 for none.
UNLABELLED = -1


def histogram_rollup(run_id: str, quantity: str) -> Select:
    """Rows, alerts and value sums per (class, analytics bin) of one quantity: O(bins), never O(rows)."""
    return (
        select(
            rh["class"].label("cls"),
            rh.bin,
            func.sum(rh.n).cast(BigInteger).label("n"),
            func.sum(rh.alerts).cast(BigInteger).label("alerts"),
            func.sum(rh.total).label("total"),
            func.sum(rh.alert_total).label("alert_total"),
        )
        .where(rh.run_id == run_id, rh.quantity == quantity)
        .group_by(rh["class"], rh.bin)
    )


def hours_rollup(run_id: str) -> Select:
    """Rows and alerts per (data hour, class): the Time histogram."""
    return (
        select(
            rhours.hour,
            rhours["class"].label("cls"),
            func.sum(rhours.scored).cast(BigInteger).label("n"),
            func.sum(rhours.alerts).cast(BigInteger).label("alerts"),
        )
        .where(rhours.run_id == run_id)
        .group_by(rhours.hour, rhours["class"])
    )


def true_alerts_rollup(run_id: str) -> Select:
    """Alerts whose known label is fraud, from the per-hour counters."""
    return select(func.coalesce(func.sum(rhours.alerts), 0)).where(
        rhours.run_id == run_id, rhours["class"] == 1
    )


def score_rollup(run_id: str) -> Select:
    """Rows and alerts per (model version, class, score bin) of the run (all data hours)."""
    return (
        select(
            rh.model_version,
            rh["class"].label("cls"),
            rh.bin,
            func.sum(rh.n).cast(BigInteger).label("n"),
            func.sum(rh.alerts).cast(BigInteger).label("alerts"),
        )
        .where(rh.run_id == run_id, rh.quantity == "score")
        .group_by(rh.model_version, rh["class"], rh.bin)
    )


def _in_sample_hour(key: str) -> ColumnElement:
    """The data hour of the registered version's in-sample `time_from`/`time_to` (NULL if unknown)."""
    value = model_versions.c.manifest[("training", "data", "in_sample", key)]
    return case((func.jsonb_typeof(value) == "number", func.floor(value.as_float() / 3600)))


def in_sample_score_rollup(run_id: str) -> Select:
    """The same counts for the data hours that overlap each version's in-sample stretch (the
    rows it was trained or validated on): subtracted from its live metrics. Reads only those hours.

    Each version's in-sample hours are read from its manifest once (a materialized CTE), not
    once per rollup row: a manifest with its evaluation curves is large, and reading it per
    row took seconds."""
    hours = (
        select(
            model_versions.c.version,
            _in_sample_hour("time_from").label("hour_from"),
            _in_sample_hour("time_to").label("hour_to"),
        )
        .cte("in_sample_hours")
        .prefix_with("MATERIALIZED")
    )
    return (
        select(
            rs.model_version,
            rs["class"].label("cls"),
            rs.bin,
            func.sum(rs.n).cast(BigInteger).label("n"),
            func.sum(rs.alerts).cast(BigInteger).label("alerts"),
        )
        .select_from(rollup_score_hours.join(hours, hours.c.version == rs.model_version))
        .where(rs.run_id == run_id, rs.hour >= hours.c.hour_from, rs.hour <= hours.c.hour_to)
        .group_by(rs.model_version, rs["class"], rs.bin)
    )


def in_sample_ranges() -> Select:
    """Each registered version's in-sample stretch of data time, as the manifest says it."""
    in_sample = model_versions.c.manifest[("training", "data", "in_sample")]
    return select(model_versions.c.version, in_sample.label("in_sample"))


# --------------------------------------------------------------------------- backtests


def backtest_list() -> Select:
    return select(backtest_runs).order_by(backtest_runs.c.created_at.desc(), backtest_runs.c.id)


def backtest_one(run_id: str) -> Select:
    return select(backtest_runs).where(backtest_runs.c.id == run_id)


RunCounter = Literal["transactions", "labelled", "frauds", "scored", "alerts", "backlog"]


def run_counter(run_id: str, counter: RunCounter) -> Select:
    """One of the run's counters (`frauds`: inline label 1; `scored`: rows scored so far;
    `backlog`: the live run's queued alerts), kept by triggers (migrations 0003, 0019): a
    primary-key probe, 0 for a run with nothing stored."""
    value = run_totals_table.c[counter]
    return select(
        func.coalesce(select(value).where(run_totals_table.c.run_id == run_id).scalar_subquery(), 0)
    )
