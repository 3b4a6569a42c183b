"""Champion against challenger on the same labelled rows (pure: arrays in, numbers out).

    rows = ComparedRows(ids, time, amount, label, score_a, score_b, alert_a, alert_b)
    kept, left_out = rows.outside(in_sample_a, in_sample_b)   # no model judged on its own training data
    result = compare(kept, resamples=1000, seed=0)

Both versions are judged on exactly the same rows, and the uncertainty of the difference
comes from a **paired** bootstrap: every resample draws the same rows for both
(`core.metrics.PairedResamples`), so the interval of `auprc_b - auprc_a` is far narrower
than two independent intervals would suggest when the models agree on most rows. Precision
and recall are at each version's own alert flag (its threshold when it scored the row).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.metrics import PairedResamples, average_precision, interval

#: The level of every interval reported.
LEVEL = 0.95


@dataclass(frozen=True)
class InSample:
    """The data-time stretch a version has seen (trained on, or chose its rounds and threshold by)."""

    time_from: float
    time_to: float

    @classmethod
    def of(cls, manifest: Mapping[str, Any]) -> InSample | None:
        """From a bundle's manifest: `training.data.in_sample`, widened to the validation split
        when the manifest has one (early stopping and the threshold were chosen on it), so a
        version is never credited for rows that shaped it. None when the manifest says nothing.

            >>> InSample.of({"training": {"data": {"in_sample": {"time_from": 0, "time_to": 10},
            ...     "splits": {"validation": {"time_min": 11, "time_max": 15}}}}})
            InSample(time_from=0.0, time_to=15.0)
        """
        data = (manifest.get("training") or {}).get("data") or {}
        stretch = data.get("in_sample")
        if not isinstance(stretch, Mapping):
            return None
        low, high = float(stretch["time_from"]), float(stretch["time_to"])
        validation = (data.get("splits") or {}).get("validation")
        if isinstance(validation, Mapping) and "time_max" in validation:
            high = max(high, float(validation["time_max"]))
        return cls(low, high)

    def contains(self, time: np.ndarray) -> np.ndarray:
        return (time >= self.time_from) & (time <= self.time_to)


@dataclass(frozen=True)
class ComparedRows:
    """Rows scored by both versions, with their known label (a before b: a is the baseline)."""

    ids: list[str]
    time: np.ndarray
    amount: np.ndarray
    label: np.ndarray  # 0/1
    score_a: np.ndarray
    score_b: np.ndarray
    alert_a: np.ndarray  # bool: a's alert flag (its threshold)
    alert_b: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, mask: np.ndarray) -> ComparedRows:
        index = np.flatnonzero(mask)
        return ComparedRows(
            [self.ids[i] for i in index],
            *(getattr(self, name)[index] for name in ("time", "amount", "label", "score_a", "score_b")),
            self.alert_a[index],
            self.alert_b[index],
        )

    def outside(self, *stretches: InSample | None) -> tuple[ComparedRows, int]:
        """The rows outside every given in-sample stretch, and how many were left out.

        >>> rows = ComparedRows(["x", "y", "z"], np.array([1.0, 5.0, 9.0]), *[np.zeros(3)] * 4,
        ...                     *[np.zeros(3, bool)] * 2)
        >>> kept, left_out = rows.outside(InSample(0, 2), None, InSample(8, 20))
        >>> kept.ids, left_out
        (['y'], 2)
        """
        inside = np.zeros(len(self), dtype=bool)
        for stretch in stretches:
            if stretch is not None:
                inside |= stretch.contains(self.time)
        return self.take(~inside), int(inside.sum())


@dataclass(frozen=True)
class VersionResult:
    auprc: float | None
    auprc_interval: tuple[float, float] | None
    alerts: int
    caught: int
    precision: float | None
    precision_interval: tuple[float, float] | None
    recall: float | None
    recall_interval: tuple[float, float] | None


@dataclass(frozen=True)
class Disagreement:
    id: str
    time: float
    amount: float
    label: int
    score_a: float
    score_b: float
    alert_a: bool
    alert_b: bool


@dataclass(frozen=True)
class Comparison:
    rows: int
    frauds: int
    a: VersionResult
    b: VersionResult
    auprc_difference: float | None  # b - a
    auprc_difference_interval: tuple[float, float] | None
    b_better_share: float | None  # the share of resamples in which b's AUPRC beats a's
    resamples: int
    seed: int
    only_a_alerts: int  # a alerts, b does not
    only_a_frauds: int
    only_b_alerts: int
    only_b_frauds: int
    top_disagreements: list[Disagreement]


def _interval(values: np.ndarray) -> tuple[float, float] | None:
    return interval(values, LEVEL) if np.isfinite(values).any() else None


def _version(
    rows: ComparedRows, scores: np.ndarray, alert: np.ndarray, draws_auprc, draws_p, draws_r
) -> VersionResult:
    frauds = int(rows.label.sum())
    alerts, caught = int(alert.sum()), int((alert & (rows.label == 1)).sum())
    return VersionResult(
        auprc=average_precision(rows.label, scores) if frauds else None,
        auprc_interval=_interval(draws_auprc),
        alerts=alerts,
        caught=caught,
        precision=caught / alerts if alerts else None,
        precision_interval=_interval(draws_p),
        recall=caught / frauds if frauds else None,
        recall_interval=_interval(draws_r),
    )


def compare(rows: ComparedRows, *, resamples: int = 1000, seed: int = 0, top: int = 20) -> Comparison:
    """AUPRC, precision and recall of a and b on `rows`, the paired bootstrap of their
    difference (`resamples` draws, seeded), and the alerts on which they disagree (the `top`
    by score difference)."""
    label = np.asarray(rows.label).astype(np.int64)
    cells = PairedResamples(
        label, {"a": rows.score_a, "b": rows.score_b}, {"a": rows.alert_a, "b": rows.alert_b}
    )
    draws = cells.draw(resamples, seed)
    a = _version(rows, rows.score_a, rows.alert_a, draws.auprc["a"], draws.precision["a"], draws.recall["a"])
    b = _version(rows, rows.score_b, rows.alert_b, draws.auprc["b"], draws.precision["b"], draws.recall["b"])
    difference = draws.auprc["b"] - draws.auprc["a"]
    finite = difference[np.isfinite(difference)]

    only_a, only_b = rows.alert_a & ~rows.alert_b, rows.alert_b & ~rows.alert_a
    disagree = np.flatnonzero(only_a | only_b)
    gap = np.abs(rows.score_b - rows.score_a)[disagree]
    chosen = disagree[np.argsort(-gap, kind="stable")[:top]]
    return Comparison(
        rows=len(rows),
        frauds=int(label.sum()),
        a=a,
        b=b,
        auprc_difference=b.auprc - a.auprc if a.auprc is not None and b.auprc is not None else None,
        auprc_difference_interval=_interval(difference),
        b_better_share=float(np.mean(finite > 0)) if finite.size else None,
        resamples=resamples,
        seed=seed,
        only_a_alerts=int(only_a.sum()),
        only_a_frauds=int((only_a & (label == 1)).sum()),
        only_b_alerts=int(only_b.sum()),
        only_b_frauds=int((only_b & (label == 1)).sum()),
        top_disagreements=[
            Disagreement(
                id=rows.ids[i],
                time=float(rows.time[i]),
                amount=float(rows.amount[i]),
                label=int(label[i]),
                score_a=float(rows.score_a[i]),
                score_b=float(rows.score_b[i]),
                alert_a=bool(rows.alert_a[i]),
                alert_b=bool(rows.alert_b[i]),
            )
            for i in chosen
        ],
    )
