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
    ARRAY,
    Double,
    Select,
    and_,
    column,
    exists,
    func,
    literal,
    not_,
    select,
    table,
    tuple_,
)
from sqlalchemy.sql.elements import ColumnElement

from api.queries import PCA_DB_COLUMNS
from core.db.schema import (
    LIVE_RUN,
    backtest_runs,
    feedback,
    label_events,
    model_versions,
    review_queue,
    run_totals,
    scores,
    transactions,
)

q = review_queue.c
s = scores.c
t = transactions.c
f = feedback.c
e = label_events.c
m = model_versions.c

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
    sort = (
        [order.column.desc(), q.transaction_id.desc()]
        if order.descending
        else [order.column, q.transaction_id]
    )
    return (
        select(
            q.transaction_id.label("id"),
            q.score,
            q.scored_at,
            s.model_version,
            s.recon_error,
            t.time,
            t.amount,
            *PCA_DB_COLUMNS,
            m.threshold,
        )
        .select_from(
            review_queue.join(scores, and_(s.run_id == LIVE_RUN, s.id == q.transaction_id))
            .join(transactions, and_(t.run_id == LIVE_RUN, t.id == q.transaction_id))
            .outerjoin(model_versions, m.version == s.model_version)
        )
        .where(*conditions)
        .order_by(*sort)
        .limit(limit + 1)
    )


# --------------------------------------------------------------------------- the summary


def _analyst_verdicts_on_alerts(since: datetime | None) -> tuple:
    where = [f.run_id == LIVE_RUN, f.source == ANALYST]
    if since is not None:
        where.append(f.decided_at >= since)
    joined = feedback.join(scores, and_(s.run_id == f.run_id, s.id == f.transaction_id, s.alert))
    return joined, where


def _chargeback_frauds(since: datetime | None) -> tuple:
    where = [f.run_id == LIVE_RUN, f.source == CHARGEBACK, f.label == 1]
    if since is not None:
        where.append(f.decided_at >= since)
    joined = feedback.join(scores, and_(s.run_id == f.run_id, s.id == f.transaction_id))
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
    counts = [func.count().label("frauds"), func.count().filter(not_(s.alert)).label("missed")]
    if not by_hour:
        return select(*counts).select_from(joined).where(*where)
    hour = func.date_trunc("hour", f.decided_at, "UTC").label("hour")
    return select(hour, *counts).select_from(joined).where(*where).group_by(hour)


def backlog() -> Select:
    """Alerts waiting for a verdict (the queue, less any a verdict reached in the same instant)."""
    return select(func.count()).select_from(review_queue).where(not_(_decided_by_analyst(q.transaction_id)))


def live_alerts() -> Select:
    """The live run's alerts: the trigger-kept counter (migration 0003)."""
    r = run_totals.c
    return select(func.coalesce(select(r.alerts).where(r.run_id == LIVE_RUN).scalar_subquery(), 0))


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


def savings_bins(run_id: str, edges: list[float]) -> Select:
    """Per score bin, over the run's scored rows with a known label: rows, frauds, fraud amount, data time.

    `edges` are the bins' lower edges, ascending, the first 0: bin i (1-based) holds the
    scores in [edges[i-1], edges[i]), so alerting at an edge is exact for every row.
    """
    bound = literal(edges, ARRAY(Double))
    bucket = func.greatest(func.width_bucket(s.score, bound), 1).label("bucket")
    is_fraud = k.label == 1
    return (
        select(
            bucket,
            func.count().label("n"),
            func.count().filter(is_fraud).label("frauds"),
            func.coalesce(func.sum(t.amount).filter(is_fraud), 0.0).label("fraud_amount"),
            func.min(t.time).label("time_min"),
            func.max(t.time).label("time_max"),
        )
        .select_from(
            known_labels.join(scores, and_(s.run_id == k.run_id, s.id == k.id)).join(
                transactions, and_(t.run_id == k.run_id, t.id == k.id)
            )
        )
        .where(k.run_id == run_id)
        .group_by(bucket)
    )


def run_threshold(run_id: str) -> Select:
    """The threshold a backtest run was scored at."""
    return select(backtest_runs.c.threshold).where(backtest_runs.c.id == run_id)
