"""Which model scores each event of a batch (I/O: backtest runs and the active version live in PostgreSQL).

Live events are scored by the active model version (and by the shadow version beside it,
`scorer.shadow`); events tagged with a backtest run id by that run's bundle and threshold. `core.models.EnsembleResolver` holds and loads the
bundles; this only asks it, per batch, and watches the registry for a new active version.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import asyncpg

from core.ensemble import Ensemble
from core.events import DeadLetter, EventBatch
from core.models import EnsembleResolver
from scorer.failures import describe, retry_forever
from scorer.health import WorkerHealth
from scorer.metrics import ScorerMetrics
from scorer.pipeline import ModelSource, drop_unknown_runs
from scorer.shadow import ShadowScoring

log = logging.getLogger(__name__)

#: How often the worker asks the registry whether another model version became active.
MODEL_REFRESH_SECONDS = 5.0


@dataclass
class ModelResolution:
    resolver: EnsembleResolver
    pool: asyncpg.Pool
    metrics: ScorerMetrics
    health: WorkerHealth
    on_failure: Callable[[BaseException], None]

    def __post_init__(self) -> None:
        self.health.model_version = self.resolver.active.version
        self.shadow = ShadowScoring(self.resolver, self.metrics)
        self._follow_shadow()

    @property
    def active(self) -> Ensemble:
        return self.resolver.active

    async def for_batch(
        self, messages: Sequence[bytes], batch: EventBatch
    ) -> tuple[EventBatch, ModelSource, list[DeadLetter]]:
        """The batch without events of unknown backtest runs, which model scores each run, the refused."""
        models: dict[str | None, Ensemble] = {None: self.resolver.active}
        run_ids = {run_id for run_id in batch.run_ids if run_id is not None}
        if not run_ids:
            return batch, models.__getitem__, []

        async def lookup() -> dict[str, Ensemble | None]:
            async with self.pool.acquire() as conn:
                return await self.resolver.for_runs(conn, run_ids)

        runs = await retry_forever(lookup, what="looking up backtest runs", on_failure=self.on_failure)
        models.update((run_id, ensemble) for run_id, ensemble in runs.items() if ensemble is not None)
        unknown = {run_id for run_id, ensemble in runs.items() if ensemble is None}
        batch, refused = drop_unknown_runs(messages, batch, unknown) if unknown else (batch, [])
        return batch, models.__getitem__, refused

    async def watch(self, every: float = MODEL_REFRESH_SECONDS) -> None:
        """Hot reload: switch to the registry's champion and shadow when they change.

        Batches run on the same event loop, so a switch lands between two batches' model
        calls, never inside one; a registry that cannot be read leaves the current models.
        """
        while True:
            try:
                await self.follow()
            except Exception as error:  # noqa: BLE001 - hot reload must outlive any one failure
                log.warning("could not check the active model version: %s", describe(error))
            await asyncio.sleep(every)

    async def follow(self) -> None:
        """Read the registry once and switch champion and shadow to what it names."""
        async with self.pool.acquire() as conn:
            if (await self.resolver.refresh(conn)).champion:
                self.metrics.model_reloads.inc()
                self.health.model_version = self.resolver.active.version
        self._follow_shadow()

    def _follow_shadow(self) -> None:
        """The shadow's gauge and health fields: the version the registry names, and why it is
        not scoring here if it is not."""
        wanted = self.shadow.wanted
        if wanted != self.health.shadow_version:
            self.metrics.shadow_model.clear()
            if wanted is not None:
                self.metrics.shadow_model.labels(wanted).set(1)
            log.info("shadow scoring: %s", wanted or "off")
        self.health.shadow_version = wanted
        self.health.shadow_problem = self.resolver.shadow_missing if wanted is not None else None
