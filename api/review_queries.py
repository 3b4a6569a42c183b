"""The SQL of the review queue, the feedback summary and the savings curve (SQLAlchemy Core).

As in `api.queries`, nothing is built from request text: orders are looked up in a fixed
map, every value is a bound parameter.

The queue reads `review_queue` (the live alerts without an analyst verdict, kept by
triggers, migration 0008) through its own indexes, `LIMIT n + 1` rows, each joined by
primary key to its score and transaction; it also skips any alert an analyst verdict
reached meanwhile (a primary-key probe of `feedback` per row), so the queue never shows
an alert that is already decided. Its cost follows the page size, not the history.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Select,
    and_,
    column,
    exists,
    func,
    literal,
    literal_column,
    not_,
    select,
    table,
    tuple_,
)
from sqlalchemy.sql.elements import ColumnElement

from api.queries import PCA_DB_COLUMNS, day_of, run_counter
from core.db.schema import (
    LIVE_RUN,
    alert_keys,
    backtest_runs,
    feedback,
    label_events,
    model_versions,
    review_queue,
    rollup_hours,
    rollup_known_classes,
    rollup_score_amounts,
    scores,
    transaction_keys,
    transactions,
)

q = review_queue.c
ak = alert_keys.c
s = scores.c
t = transactions.c
f = feedback.c
e = label_events.c
m = model_versions.c
ra = rollup_score_amounts.c
rhours = rollup_hours.c
kc = rollup_known_classes.c
keys = transaction_keys
tk = transaction_keys.c

ANALYST, CHARGEBACK = "analyst", "chargeback"

#: The one definition of the known label (a view, migration 0008), as a selectable.
known_labels = table("known_labels", column("run_id"), column("id"), column("label"), column("source"))
k = known_labels.c


@dataclass(frozen=True)
class QueueOrder:
    """How the queue is sorted: by which column, which way, and the keyset comparison for "after"."""

    name: str
    column: ColumnElement
    descending: bool


ORDERS: dict[str, QueueOrder] = {
    "score": QueueOrder("score", q.score, True),
    "oldest": QueueOrder("oldest", q.scored_at, False),
    "newest": QueueOrder("newest", q.scored_at, True),
}


def _decided_by_analyst(transaction_id: ColumnElement) -> ColumnElement:
    return exists().where(f.run_id == LIVE_RUN, f.transaction_id == transaction_id, f.source == ANALYST)


def queue_page(order: QueueOrder, limit: int, after: tuple[object, str] | None) -> Select:
    """One page of unreviewed live alerts; `after` = (sort value, id) of the previous page's last row."""
    conditions: list[ColumnElement] = [not_(_decided_by_analyst(q.transaction_id))]
    if after is not None:
        key = tuple_(order.column, q.transaction_id)
        bound = tuple_(literal(after[0]), literal(after[1]))
        conditions.append(key < bound if order.descending else key > bound)
    # The page from the queue's own index first (its size in the text, so a generic plan knows
    # it too), then each row's key, score and transaction: the joins cannot reshape the page.
    page = (
        select(q.transaction_id, q.score, q.scored_at)
        .where(*conditions)
        .order_by(*_sorted(order, order.column, q.transaction_id))
        .limit(literal_column(str(int(limit) + 1)))
        .subquery("page")
    )
    p = page.c
    return (
        select(
            p.transaction_id.label("id"),
            p.score,
            p.scored_at,
            s.model_version,
            s.recon_error,
            t.time,
            t.amount,
            *PCA_DB_COLUMNS,
            m.threshold,
        )
        .select_from(
            # the key gives the data day: each row's score and transaction from one partition
            page.join(keys, and_(tk.run_id == LIVE_RUN, tk.id == p.transaction_id))
            .join(scores, and_(s.run_id == LIVE_RUN, s.id == p.transaction_id, s.day == tk.day))
            .join(transactions, and_(t.run_id == LIVE_RUN, t.id == p.transaction_id, t.day == tk.day))
            .outerjoin(model_versions, m.version == s.model_version)
        )
        .order_by(*_sorted(order, p[order.column.name], p.transaction_id))
    )


def _sorted(order: QueueOrder, value: ColumnElement, row_id: ColumnElement) -> list[ColumnElement]:
    """The queue's keyset order on (value, id), either way."""
    return [value.desc(), row_id.desc()] if order.descending else [value, row_id]


# --------------------------------------------------------------------------- the summary


# Whether a verdict's transaction was scored and alerted: its keys (`transaction_keys`, every
# stored row, scored in the statement that stores it; `alert_keys`, migration 0021), small
# unpartitioned tables, so no day partition of the history is opened.


def _analyst_verdicts_on_alerts(since: datetime | None) -> tuple:
    where = [f.run_id == LIVE_RUN, f.source == ANALYST]
    if since is not None:
        where.append(f.decided_at >= since)
    joined = feedback.join(alert_keys, and_(ak.run_id == f.run_id, ak.id == f.transaction_id))
    return joined, where


def _chargeback_frauds(since: datetime | None) -> tuple:
    where = [f.run_id == LIVE_RUN, f.source == CHARGEBACK, f.label == 1]
    if since is not None:
        where.append(f.decided_at >= since)
    joined = feedback.join(
        transaction_keys, and_(tk.run_id == f.run_id, tk.id == f.transaction_id)
    ).outerjoin(alert_keys, and_(ak.run_id == f.run_id, ak.id == f.transaction_id))
    return joined, where


def reviewed(since: datetime | None = None, *, by_hour: bool = False) -> Select:
    """Alerts with an analyst verdict (the latest per alert), and how many were fraud."""
    joined, where = _analyst_verdicts_on_alerts(since)
    counts = [func.count().label("reviewed"), func.count().filter(f.label == 1).label("confirmed")]
    if not by_hour:
        return select(*counts).select_from(joined).where(*where)
    hour = func.date_trunc("hour", f.decided_at, "UTC").label("hour")
    return select(hour, *counts).select_from(joined).where(*where).group_by(hour)


def chargebacks(since: datetime | None = None, *, by_hour: bool = False) -> Select:
    """Frauds reported by chargeback, and how many of them never alerted (missed)."""
    joined, where = _chargeback_frauds(since)
    counts = [func.count().label("frauds"), func.count().filter(ak.id.is_(None)).label("missed")]
    if not by_hour:
        return select(*counts).select_from(joined).where(*where)
    hour = func.date_trunc("hour", f.decided_at, "UTC").label("hour")
    return select(hour, *counts).select_from(joined).where(*where).group_by(hour)


def backlog() -> Select:
    """Alerts waiting for a verdict: the rows of the queue, the trigger-kept counter (migration
    0019; a verdict and its alert's write lock the same row first, so no reviewed alert stays)."""
    return run_counter(LIVE_RUN, "backlog")


def live_alerts() -> Select:
    """The live run's alerts: the trigger-kept counter (migration 0003)."""
    return run_counter(LIVE_RUN, "alerts")


def reviewers(since_24h: datetime) -> Select:
    """Per reviewer: verdicts given on the live stream (corrections count), fraud / not, the last day's."""
    return (
        select(
            e.who,
            func.count().label("decisions"),
            func.count().filter(e.label == 1).label("fraud"),
            func.count().filter(e.label == 0).label("not_fraud"),
            func.count().filter(e.decided_at >= since_24h).label("last_24h"),
            func.max(e.decided_at).label("last_decided_at"),
        )
        .where(e.run_id == LIVE_RUN, e.source == ANALYST)
        .group_by(e.who)
        .order_by(func.count().desc(), e.who)
    )


# --------------------------------------------------------------------------- the savings curve


def savings_rollup(run_id: str) -> Select:
    """Rows and their amount per (class, fixed score bin of `core.bins.SCORE_BINS`) of the run,
    all versions (-1: no known label): `rollup_score_amounts` (migration 0017), O(bins)
    whatever the history."""
    return (
        select(
            ra["class"].label("cls"),
            ra.bin,
            func.sum(ra.n).cast(BigInteger).label("n"),
            func.sum(ra.amount).label("amount"),
        )
        .where(ra.run_id == run_id)
        .group_by(ra["class"], ra.bin)
    )


def _known_class() -> ColumnElement:
    """A transaction's class as the rollups count it: its verdict (0012), else its inline label, else -1."""
    verdict = select(kc["class"]).where(kc.run_id == t.run_id, kc.transaction_id == t.id).scalar_subquery()
    return func.coalesce(verdict, t.label, -1)


def scored_between(run_id: str, low: float, high: float | None) -> Select:
    """Rows and their amount per known class among the run's rows scored in [low, high) (no upper
    bound if None): the part of one fixed score bin above a threshold inside it. The rows are
    a range of `ix_scores_run_score`, taken first (a materialized CTE), then each one's
    transaction by primary key in its day: never a join over the run."""
    where = [s.run_id == run_id, s.score >= low]
    if high is not None:
        where.append(s.score < high)
    in_range = select(s.run_id, s.id, s.day).where(*where).cte("in_range").prefix_with("MATERIALIZED")
    r = in_range.c
    cls = _known_class().label("cls")
    return (
        select(cls, func.count().label("n"), func.sum(t.amount).label("amount"))
        .select_from(in_range.join(transactions, and_(t.run_id == r.run_id, t.id == r.id, t.day == r.day)))
        .group_by(cls)
    )


def known_hours(run_id: str) -> Select:
    """The first and last data hour holding a scored row with a known label (`rollup_hours`)."""
    return select(func.min(rhours.hour).label("first"), func.max(rhours.hour).label("last")).where(
        rhours.run_id == run_id, rhours["class"] >= 0, rhours.scored > 0
    )


def known_time_in_hour(run_id: str, hour: int, last: bool) -> Select:
    """The data time of the first (or last) row with a known label in one data hour: an ordered
    range of `ix_transactions_run_time` in that hour's day, stopped at the first such row."""
    lo, hi = hour * 3600.0, (hour + 1) * 3600.0
    order = t.time.desc() if last else t.time.asc()
    return (
        select(t.time)
        .where(
            t.run_id == run_id,
            t.time >= lo,
            t.time < hi,
            t.day >= day_of(lo),
            t.day <= day_of(hi),
            _known_class() >= 0,
        )
        .order_by(order)
        .limit(1)
    )


def run_threshold(run_id: str) -> Select:
    """The threshold a backtest run was scored at."""
    return select(backtest_runs.c.threshold).where(backtest_runs.c.id == run_id)
