"""The challenger beside the champion: each batch's live rows scored by the registry's shadow too.

    shadow = ShadowScoring(resolver, metrics)
    groups = shadow.attach(groups)      # after the champion scored the batch; before the write

One more vectorised model call per batch, never per event (`scorer.pipeline.score_shadow`).
The shadow's scores ride with the batch's group into its write (`core.db.store.store_new`),
so they commit in the transaction that stores the rows, and only for rows that write newly
stores. The shadow never alerts and never feeds the live analytics: its scores go to
`shadow_scores`, nowhere else.

The champion's scoring is the product, the shadow an experiment: a shadow that cannot be
loaded, raises, or scores a row to a non-finite value is counted
(`fraudstream_shadow_failures_total{version,stage}`, `fraudstream_shadow_skipped_total`),
logged at most once a minute per stage, and skipped; the batch goes on without it.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field

from core.models import EnsembleResolver
from scorer.failures import describe
from scorer.metrics import ScorerMetrics
from scorer.pipeline import ScoredGroup, score_shadow

log = logging.getLogger(__name__)

#: The shortest time between two log lines about the same kind of shadow failure (s).
LOG_EVERY = 60.0


@dataclass
class ShadowScoring:
    resolver: EnsembleResolver
    metrics: ScorerMetrics
    _logged: dict[str, float] = field(default_factory=dict)

    @property
    def wanted(self) -> str | None:
        """The shadow version the registry names (or, for a resolver that never read it, the loaded one)."""
        head = self.resolver.head
        if head is None:
            return self.resolver.shadow.version if self.resolver.shadow is not None else None
        return head.shadow.version if head.shadow is not None else None

    def attach(self, groups: list[ScoredGroup]) -> list[ScoredGroup]:
        """`groups` with the shadow's scores on the group that holds the live rows (never raises)."""
        version = self.wanted
        if version is None:
            return groups
        for position, group in enumerate(groups):
            live = sum(run_id is None for run_id in group.rows.run_ids)
            if live:  # live rows all go to the champion's group: there is one at most
                scored = self._score(group, version, live)
                if scored is not None:
                    groups = [*groups[:position], scored, *groups[position + 1 :]]
                break
        return groups

    def _score(self, group: ScoredGroup, version: str, live: int) -> ScoredGroup | None:
        shadow = self.resolver.shadow
        if shadow is None or shadow.version != version:
            why = self.resolver.shadow_missing or "not loaded"
            self._failed(version, "load", live, f"shadow {version} cannot be used: {why}")
            return None
        if shadow.version == group.rows.model_version:
            return None  # promoted a moment ago: the registry's next read empties the slot
        started = time.perf_counter()
        try:
            scores = score_shadow(shadow, group.rows)
        except Exception as error:  # noqa: BLE001 - whatever the shadow's model does, the champion goes on
            self._failed(version, "score", live, f"shadow {version} refused a batch: {describe(error)}")
            return None
        self.metrics.shadow_seconds.observe(time.perf_counter() - started)
        if scores.count < live:
            self._failed(
                version,
                "score",
                live - scores.count,
                f"shadow {version} gave non-finite scores to {live - scores.count} of {live} rows",
            )
        return dataclasses.replace(group, shadow=scores)

    def _failed(self, version: str, stage: str, rows: int, message: str) -> None:
        self.metrics.shadow_failures.labels(version, stage).inc()
        self.metrics.shadow_skipped.labels(version, stage).inc(rows)
        self.warn(stage, f"{message}; the batch is stored without its shadow scores")

    def warn(self, stage: str, message: str) -> None:
        """Log `message`, unless one of this `stage` was logged within `LOG_EVERY` s (a failure
        that repeats on every batch would otherwise flood the log)."""
        now = time.monotonic()
        if now - self._logged.get(stage, -LOG_EVERY) >= LOG_EVERY:
            self._logged[stage] = now
            log.warning("%s", message)
