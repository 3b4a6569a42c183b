"""Which model scores an event: the active bundle for live traffic, the run's for backtests.

The scorer keeps one `EnsembleResolver`. Live events are scored by the active model
version (hot reload: when `model_versions.active` changes, the next batch uses the new
bundle, no restart). Events tagged with a backtest `run_id` are scored by that run's
bundle and threshold, looked up once per run. Bundles are loaded once and shared.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path

import asyncpg

from core.db.registry import active_model
from core.ensemble import BundleError, Ensemble

log = logging.getLogger(__name__)


class EnsembleResolver:
    """Caches bundles by path and run-scoped ensembles by run id."""

    def __init__(self, active: Ensemble, *, load: Callable[[Path], Ensemble] = Ensemble.load) -> None:
        self.active = active
        self._load = load
        self._bundles: dict[str, Ensemble] = {}
        self._runs: dict[str, Ensemble | None] = {}

    def _bundle(self, path: str) -> Ensemble:
        if path not in self._bundles:
            self._bundles[path] = self._load(Path(path))
        return self._bundles[path]

    async def refresh_active(self, conn: asyncpg.Connection) -> bool:
        """Switch to the registry's active version if it changed; True when it did."""
        current = await active_model(conn)
        if current is None or current[0] == self.active.version:
            return False
        version, path = current
        try:
            ensemble = self._bundle(path)
        except (BundleError, OSError) as error:
            log.error(
                "active model %s at %s cannot be loaded, keeping %s: %s",
                version,
                path,
                self.active.version,
                error,
            )
            return False
        if ensemble.version != version:
            log.error(
                "bundle at %s is version %s, registry says %s: keeping %s",
                path,
                ensemble.version,
                version,
                self.active.version,
            )
            return False
        log.info("switching model %s -> %s", self.active.version, version)
        self.active = ensemble
        return True

    async def for_runs(self, conn: asyncpg.Connection, run_ids: Iterable[str]) -> dict[str, Ensemble | None]:
        """The ensemble of each backtest run (None for an unknown run or an unloadable bundle)."""
        wanted = set(run_ids)
        missing = [run_id for run_id in wanted if run_id not in self._runs]
        if missing:
            rows = await conn.fetch(
                "SELECT id, bundle_path, threshold FROM backtest_runs WHERE id = ANY($1::text[])", missing
            )
            for row in rows:
                try:
                    self._runs[row["id"]] = self._bundle(row["bundle_path"]).with_threshold(row["threshold"])
                except (BundleError, OSError) as error:
                    log.error(
                        "backtest %s: bundle %s cannot be loaded: %s", row["id"], row["bundle_path"], error
                    )
                    self._runs[row["id"]] = None
        return {run_id: self._runs.get(run_id) for run_id in wanted}
