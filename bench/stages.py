"""The scorer workers' stage histograms (`fraudstream_stage_seconds`), read for a benchmark window.

`StageCounts.read(ports)` sums the workers' cumulative bucket counts; the difference of two
reads is the window between them, and `quantile` interpolates inside a bucket the way
Prometheus' `histogram_quantile` does (so a figure is good to about half a bucket: 1 ms
below 60 ms, 2.5 ms to 150 ms).
"""

from __future__ import annotations

import math
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from scorer.stages import STAGES

#: The metric, and what each stage's figure means (for the bench table).
METRIC = "fraudstream_stage_seconds"
STAGE_MEANING = {
    "fetched": "fetched by the worker's consumer (producer linger + broker + fetch wait)",
    "taken": "taken by the agent into a batch (+ waiting in the stream's queue)",
    "scored": "decoded and scored",
    "write_started": "its write begins (+ waiting for the write before it)",
    "stored": "committed in PostgreSQL: durably stored",
    "acked": "acknowledged (the offset may be committed)",
}


@dataclass
class StageCounts:
    """Per stage: bucket upper bound -> cumulative count, summed over workers."""

    buckets: dict[str, dict[float, float]] = field(default_factory=dict)

    @classmethod
    def read(cls, ports: Iterable[int], timeout: float = 5.0) -> StageCounts:
        counts = cls()
        for port in ports:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as response:
                counts.add(response.read().decode())
        return counts

    def add(self, text: str) -> None:
        for family in text_string_to_metric_families(text):
            if family.name != METRIC:
                continue
            for sample in family.samples:
                if sample.name != f"{METRIC}_bucket":
                    continue
                stage = self.buckets.setdefault(sample.labels["stage"], {})
                bound = float(sample.labels["le"])
                stage[bound] = stage.get(bound, 0.0) + sample.value

    def __sub__(self, before: StageCounts) -> StageCounts:
        return StageCounts(
            {
                stage: {
                    bound: count - before.buckets.get(stage, {}).get(bound, 0.0) for bound, count in b.items()
                }
                for stage, b in self.buckets.items()
            }
        )

    def count(self, stage: str) -> int:
        bounds = self.buckets.get(stage, {})
        return int(bounds.get(math.inf, 0.0))

    def quantile(self, stage: str, q: float) -> float:
        """The q-quantile of `stage` (seconds), interpolated linearly within its bucket; NaN when empty."""
        bounds = sorted(self.buckets.get(stage, {}).items())
        if not bounds or bounds[-1][1] <= 0:
            return math.nan
        rank = q * bounds[-1][1]
        lower, below = 0.0, 0.0
        for bound, cumulative in bounds:
            if cumulative >= rank:
                if math.isinf(bound):
                    return lower  # beyond the last finite bucket: say its bound
                inside = cumulative - below
                return lower + (bound - lower) * ((rank - below) / inside if inside > 0 else 1.0)
            lower, below = bound, cumulative
        return lower


def stage_rows(window: StageCounts, label: str) -> list[tuple[str, str]]:
    """Bench-table rows: per stage, p50 / p95 / p99 since produced (ms), and the p50 step from the stage before."""
    rows = []
    previous = 0.0
    for stage in STAGES:
        if not window.count(stage):
            continue
        p50, p95, p99 = (1000 * window.quantile(stage, q) for q in (0.5, 0.95, 0.99))
        rows.append(
            (
                f"{label}: produce → {stage} ({STAGE_MEANING[stage]}), p50 / p95 / p99",
                f"{p50:.1f} / {p95:.1f} / {p99:.1f} ms (p50 step +{p50 - previous:.1f} ms)",
            )
        )
        previous = p50
    return rows
