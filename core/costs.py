"""What a threshold is worth: net savings of alerting on `score >= threshold`, as pure numpy functions.

Reviewing an alert costs `cost_per_alert`; catching a fraud saves its amount; a missed fraud
is lost. So, against alerting on nothing:

    net savings = fraud amount caught - alerts x cost_per_alert

`savings_at` answers for one threshold, `sweep` for every distinct score at once (one sort
and cumulative sums, O(n log n)), `sweep_binned` for score histograms (what PostgreSQL
counts per score bin, O(bins)). `SavingsCurve.best(capacity_per_day)` picks the threshold
with the largest net savings among those whose alerts per day the analysts can review.

    >>> import numpy as np
    >>> labels = np.array([1, 0, 1, 0, 0])
    >>> scores = np.array([0.9, 0.8, 0.7, 0.2, 0.1])
    >>> amounts = np.array([100.0, 5.0, 40.0, 1.0, 1.0])
    >>> s = savings_at(labels, scores, amounts, 0.7, cost_per_alert=10.0)
    >>> s.alerts, s.frauds_caught, s.amount_caught, s.review_cost, s.net_savings
    (3, 2, 140.0, 30.0, 110.0)
    >>> curve = sweep(labels, scores, amounts, cost_per_alert=10.0)
    >>> curve.thresholds.tolist(), curve.net_savings.tolist()
    ([0.9, 0.8, 0.7, 0.2, 0.1], [90.0, 80.0, 110.0, 100.0, 90.0])
    >>> float(curve.thresholds[curve.best()])
    0.7
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

SECONDS_PER_DAY = 86_400.0


@dataclass(frozen=True, slots=True)
class Savings:
    """What alerting at one threshold does on a stretch of labelled rows."""

    threshold: float
    alerts: int
    frauds_caught: int
    amount_caught: float
    amount_missed: float
    review_cost: float
    net_savings: float

    @property
    def precision(self) -> float | None:
        return self.frauds_caught / self.alerts if self.alerts else None


@dataclass(frozen=True)
class SavingsCurve:
    """Net savings at each candidate threshold, highest threshold (fewest alerts) first."""

    thresholds: np.ndarray
    alerts: np.ndarray
    frauds_caught: np.ndarray
    amount_caught: np.ndarray
    amount_missed: np.ndarray
    review_cost: np.ndarray
    net_savings: np.ndarray
    cost_per_alert: float
    rows: int
    frauds: int
    fraud_amount: float
    days: float | None = None  # the data time the rows cover, for alerts per day

    def __len__(self) -> int:
        return int(self.thresholds.size)

    @property
    def alerts_per_day(self) -> np.ndarray | None:
        return self.alerts / self.days if self.days else None

    def at(self, index: int) -> Savings:
        return Savings(
            threshold=float(self.thresholds[index]),
            alerts=int(self.alerts[index]),
            frauds_caught=int(self.frauds_caught[index]),
            amount_caught=float(self.amount_caught[index]),
            amount_missed=float(self.amount_missed[index]),
            review_cost=float(self.review_cost[index]),
            net_savings=float(self.net_savings[index]),
        )

    def within(self, capacity_per_day: float | None) -> np.ndarray:
        """Which thresholds keep the alerts within the analysts' capacity (all, without one)."""
        if capacity_per_day is None:
            return np.ones(len(self), dtype=bool)
        if not self.days:
            raise ValueError("a capacity per day needs the days the data cover")
        return self.alerts <= capacity_per_day * self.days + 1e-9

    def best(self, capacity_per_day: float | None = None) -> int | None:
        """Index of the threshold with the largest net savings within capacity (ties: fewer alerts).

        None when no threshold fits the capacity, or none saves more than alerting on
        nothing (net savings > 0): then the best choice is no alert at all.
        """
        allowed = np.flatnonzero(self.within(capacity_per_day) & (self.net_savings > 0))
        if allowed.size == 0:
            return None
        return int(allowed[np.argmax(self.net_savings[allowed])])

    def index_of(self, threshold: float) -> int | None:
        """The curve's point that alerts exactly like `threshold` (the lowest candidate at or above it)."""
        at_or_above = np.flatnonzero(self.thresholds >= threshold)
        return int(at_or_above[-1]) if at_or_above.size else None


def _arrays(labels, scores, amounts) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    amounts = np.asarray(amounts, dtype=np.float64)
    if not (labels.shape == scores.shape == amounts.shape) or labels.ndim != 1:
        raise ValueError(
            f"labels, scores and amounts must be equal-length 1-D arrays: "
            f"{labels.shape}, {scores.shape}, {amounts.shape}"
        )
    if not (np.all(np.isfinite(scores)) and np.all(np.isfinite(amounts))):
        raise ValueError("scores and amounts must be finite")
    return labels, scores, amounts


def _check_cost(cost_per_alert: float) -> float:
    cost = float(cost_per_alert)
    if not (np.isfinite(cost) and cost >= 0):
        raise ValueError(f"cost_per_alert must be a finite number >= 0, got {cost_per_alert!r}")
    return cost


def savings_at(labels, scores, amounts, threshold: float, cost_per_alert: float) -> Savings:
    """Net savings of alerting on `score >= threshold` (the definition the sweeps follow)."""
    labels, scores, amounts = _arrays(labels, scores, amounts)
    cost = _check_cost(cost_per_alert)
    alert = scores >= threshold
    caught = float(amounts[alert & labels].sum())
    missed = float(amounts[~alert & labels].sum())
    alerts = int(alert.sum())
    return Savings(
        threshold=float(threshold),
        alerts=alerts,
        frauds_caught=int((alert & labels).sum()),
        amount_caught=caught,
        amount_missed=missed,
        review_cost=alerts * cost,
        net_savings=caught - alerts * cost,
    )


def _curve(
    thresholds: np.ndarray,
    alerts: np.ndarray,
    caught: np.ndarray,
    amount_caught: np.ndarray,
    cost: float,
    *,
    rows: int,
    frauds: int,
    fraud_amount: float,
    days: float | None,
) -> SavingsCurve:
    """The curve from cumulative counts, highest threshold first: missed, cost and net follow."""
    return SavingsCurve(
        thresholds=thresholds,
        alerts=alerts,
        frauds_caught=caught,
        amount_caught=amount_caught,
        amount_missed=fraud_amount - amount_caught,
        review_cost=alerts * cost,
        net_savings=amount_caught - alerts * cost,
        cost_per_alert=cost,
        rows=rows,
        frauds=frauds,
        fraud_amount=fraud_amount,
        days=days,
    )


def sweep(labels, scores, amounts, cost_per_alert: float, *, days: float | None = None) -> SavingsCurve:
    """Net savings at every distinct score as the threshold, highest first (one sort, cumulative sums)."""
    labels, scores, amounts = _arrays(labels, scores, amounts)
    cost = _check_cost(cost_per_alert)
    order = np.argsort(-scores, kind="stable")
    s = scores[order]
    fraud = labels[order]
    fraud_amount = np.where(fraud, amounts[order], 0.0)
    last = np.r_[np.flatnonzero(np.diff(s) != 0), s.size - 1] if s.size else np.empty(0, dtype=np.intp)
    alerts = (last + 1).astype(np.int64)
    caught = np.cumsum(fraud)[last].astype(np.int64) if s.size else np.empty(0, dtype=np.int64)
    amount_caught = np.cumsum(fraud_amount)[last] if s.size else np.empty(0)
    return _curve(
        s[last],
        alerts,
        caught,
        amount_caught,
        cost,
        rows=int(s.size),
        frauds=int(fraud.sum()),
        fraud_amount=float(fraud_amount.sum()),
        days=days,
    )


def sweep_binned(
    counts: Sequence[int],
    frauds: Sequence[int],
    fraud_amounts: Sequence[float],
    edges: Sequence[float],
    cost_per_alert: float,
    *,
    days: float | None = None,
) -> SavingsCurve:
    """The sweep over score bins (bins low to high; `edges[i]` is bin i's lower edge).

    Each non-empty bin's lower edge is a candidate threshold: alerting on it alerts on that
    bin and every bin above. Equal to `sweep` at those thresholds when no bin splits ties.
    """
    counts = np.asarray(counts, dtype=np.int64)
    frauds = np.asarray(frauds, dtype=np.int64)
    amounts = np.asarray(fraud_amounts, dtype=np.float64)
    edges = np.asarray(edges, dtype=np.float64)
    if not (counts.shape == frauds.shape == amounts.shape == edges.shape) or counts.ndim != 1:
        raise ValueError("counts, frauds, fraud_amounts and edges need one value per bin each")
    cost = _check_cost(cost_per_alert)
    keep = np.flatnonzero(counts > 0)[::-1]  # highest bin first
    alerts = np.cumsum(counts[keep])
    caught = np.cumsum(frauds[keep])
    amount_caught = np.cumsum(amounts[keep])
    return _curve(
        edges[keep],
        alerts,
        caught,
        amount_caught,
        cost,
        rows=int(counts.sum()),
        frauds=int(frauds.sum()),
        fraud_amount=float(amounts.sum()),
        days=days,
    )


def regroup_bins(
    fixed_edges: Sequence[float],
    per_fixed_bin: np.ndarray,
    edges: Sequence[float],
    splits: dict[float, np.ndarray] | None = None,
) -> np.ndarray:
    """Sums kept per fixed bin, regrouped into the bins whose lower edges are `edges` (ascending).

    `fixed_edges` are the interior edges of the fixed bins (fixed bin 0: below the first;
    bin j: [fixed_edges[j-1], fixed_edges[j])) and `per_fixed_bin` has one column per fixed
    bin (rows: any sums, e.g. rows, frauds, amount). A fixed bin goes whole into the bin
    holding its lower edge (below `edges[0]`: the first), so the result is exact when every
    edge is a fixed edge. An edge inside a fixed bin is exact given `splits[edge]`: the sums
    of that fixed bin's rows at or above the edge, which move up into the edge's own bin.

    >>> fixed = [0.25, 0.5, 0.75]                          # fixed bins: <.25, .25-.5, .5-.75, >=.75
    >>> per = np.array([[4, 3, 2, 1]])                     # rows per fixed bin
    >>> regroup_bins(fixed, per, [0.0, 0.5]).tolist()       # two bins: [0, .5), [.5, ...)
    [[7, 3]]
    >>> regroup_bins(fixed, per, [0.0, 0.5, 0.6], {0.6: np.array([1])}).tolist()  # 1 row in [.6, .75)
    [[7, 1, 2]]
    """
    fixed = np.asarray(fixed_edges, dtype=np.float64)
    bounds = np.asarray(edges, dtype=np.float64)
    per = np.asarray(per_fixed_bin)
    lower = np.r_[-np.inf, fixed]
    if per.shape[-1] != lower.size:
        raise ValueError("per_fixed_bin needs one column per fixed bin (len(fixed_edges) + 1)")
    target = np.clip(np.searchsorted(bounds, lower, side="right") - 1, 0, None)
    out = np.zeros((per.shape[0], bounds.size), dtype=per.dtype)
    for column, bucket in enumerate(target):
        out[:, bucket] += per[:, column]
    holder: dict[int, int] = {}  # fixed bin -> the bin holding its part above the last split
    for edge, part in sorted((splits or {}).items()):
        j = int(np.searchsorted(fixed, edge, side="right"))
        if lower[j] == edge:
            continue  # a fixed edge: already exact
        source = holder.get(j, int(target[j]))
        own = int(np.searchsorted(bounds, edge, side="left"))
        if own >= bounds.size or bounds[own] != edge:
            raise ValueError(f"split at {edge!r} is not one of the edges")
        out[:, source] -= part
        out[:, own] += part
        holder[j] = own
    return out


def data_days(times) -> float | None:
    """The data time a stretch of rows covers, in days (None without rows; at least one second)."""
    times = np.asarray(times, dtype=np.float64)
    if times.size == 0:
        return None
    return max(float(times.max() - times.min()), 1.0) / SECONDS_PER_DAY


def alert_budget(capacity_per_day: float, days: float) -> int:
    """How many alerts the analysts can review over `days` (at least one)."""
    return max(1, int(np.floor(capacity_per_day * days + 1e-9)))


def precision_at_capacity(labels, scores, budget: int) -> float | None:
    """Precision of the `budget` highest-scored rows: the alert precision a team with that
    capacity sees, whatever the threshold (ties broken by order; None without rows)."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    if labels.size == 0:
        return None
    top = np.argsort(-scores, kind="stable")[: max(1, int(budget))]
    return float(labels[top].mean())
