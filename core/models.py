"""Which model scores an event: the registry's champion (and shadow) for live traffic, the
run's version for backtests, each loaded once and cached by version.

    async with pool.acquire() as conn:
        models = await EnsembleResolver.open(conn, fallback_path=settings.model_path)
    models.active                       # the champion: what live events are scored with
    await models.refresh_active(conn)   # hot reload: True when the champion changed
    models.shadow                       # the challenger, or None
    models.shadow_missing               # why the registry's shadow is not loaded (None if it is)

Bundles are cached by **version** (the content hash), never by folder: a folder can be
retrained in place, a version cannot change. Registered versions are loaded from the
registry's content-addressed store and checked to be the version the registry names.
Loading happens in a worker thread, so a switch never stalls the event loop; the next
batch (or request) after `refresh_active` returns uses the new champion.

`open` never activates anything: when the registry has a champion it serves that, and
only when there is none does it fall back to a bundle folder (FRAUDSTREAM_MODEL_PATH),
which stays unregistered.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import torch

from core.db.registry import Deployed, RegistryHead, registry_head
from core.ensemble import BundleError, Ensemble

log = logging.getLogger(__name__)

#: Loaded bundles kept beyond the champion and the shadow (backtests, recent champions).
CACHED_VERSIONS = 6
#: Torch intra-op threads of the thread that scores (`Ensemble.load`'s default, see there).
TORCH_THREADS = 1


async def _load_off_loop(load: Callable[[Path], Ensemble], path: Path) -> Ensemble:
    """Load a bundle in a worker thread, so a switch never stalls the event loop.

    `Ensemble.load` sets torch's intra-op threads, and with OpenMP that setting belongs to
    the thread that makes it: the loop's thread, which scores, must set it too. Without
    that, every small batch ran on OpenMP threads spinning against each other on a busy
    machine (the API's predictions measured ~10x slower).
    """
    ensemble = await asyncio.to_thread(load, path)
    if torch.get_num_threads() != TORCH_THREADS:
        torch.set_num_threads(TORCH_THREADS)
    return ensemble


class NoModel(BundleError):
    """Nothing to score with: no champion in the registry and no usable fallback bundle."""


@dataclass(frozen=True, slots=True)
class Refreshed:
    """What `EnsembleResolver.refresh` changed."""

    champion: bool
    shadow: bool


class EnsembleResolver:
    """The champion and shadow ensembles, backtest runs' ensembles, and a cache by version."""

    def __init__(
        self,
        active: Ensemble | None = None,
        *,
        shadow: Ensemble | None = None,
        load: Callable[[Path], Ensemble] = Ensemble.load,
    ) -> None:
        #: The champion. None only for a resolver built without one (the API while the
        #: registry has no champion and no fallback loads); `open` never returns one.
        self.active = active
        self.shadow = shadow
        #: The registry as last read (by `open` or `refresh`): what this resolver should serve.
        self.head: RegistryHead | None = None
        self._load = load
        self._bundles: OrderedDict[str, Ensemble] = OrderedDict()
        self._runs: dict[str, Ensemble | None] = {}
        self._failed: dict[str, str] = {}  # version -> why it could not be loaded (logged once)
        for ensemble in (active, shadow):
            if ensemble is not None:
                self._bundles[ensemble.version] = ensemble

    @classmethod
    async def open(
        cls,
        conn: asyncpg.Connection,
        *,
        fallback_path: Path | str | None,
        load: Callable[[Path], Ensemble] = Ensemble.load,
    ) -> EnsembleResolver:
        """A resolver on the registry's champion (and shadow), for a process that starts.

        Falls back to the bundle at `fallback_path` (without registering or activating it)
        only when the registry has no champion. Raises `NoModel` when there is nothing to
        score with, or when the champion's stored bundle cannot be loaded (scoring with
        anything else would silently split the fleet across versions).
        """
        resolver = cls(load=load)
        head = resolver.head = await registry_head(conn)
        if head.champion is not None:
            try:
                resolver.active = await resolver._version(head.champion)
            except (BundleError, OSError) as error:
                raise NoModel(f"the champion {head.champion.version} cannot be loaded: {error}") from error
        elif fallback_path is not None:
            try:
                resolver.active = await _load_off_loop(load, Path(fallback_path))
            except (BundleError, OSError) as error:
                raise NoModel(f"no champion in the registry, and {fallback_path}: {error}") from error
            resolver._remember(resolver.active)
            log.warning(
                "no champion in the model registry: serving %s from %s, unregistered",
                resolver.active.version,
                fallback_path,
            )
        else:
            raise NoModel("no champion in the model registry and no fallback bundle")
        if head.shadow is not None:
            resolver.shadow = await resolver._try(head.shadow, "shadow")
        return resolver

    # ------------------------------------------------------------------ hot reload

    async def refresh(self, conn: asyncpg.Connection) -> Refreshed:
        """Follow the registry: switch champion and shadow to what it names now.

        A version that cannot be loaded is logged (once) and the current model kept, so
        a bad deployment never stops scoring; `/health` reports the disagreement.
        """
        head = self.head = await registry_head(conn)
        champion_changed = shadow_changed = False
        if head.champion is not None and (
            self.active is None or head.champion.version != self.active.version
        ):
            loaded = await self._try(head.champion, "champion")
            if loaded is not None:
                log.info(
                    "switching champion %s -> %s",
                    self.active.version if self.active else None,
                    loaded.version,
                )
                self.active, champion_changed = loaded, True
        wanted = head.shadow.version if head.shadow is not None else None
        current = self.shadow.version if self.shadow is not None else None
        if wanted != current:
            # Unlike the champion, a shadow that cannot be loaded is not replaced by the one
            # before it: scores under an old version would be taken for the new one's. The
            # shadow slot stays empty (scoring goes on without it) and the next refresh tries
            # again; `shadow_missing` says why.
            loaded = await self._try(head.shadow, "shadow") if head.shadow is not None else None
            if loaded is not None or current is not None:
                log.info("switching shadow %s -> %s", current, loaded.version if loaded else None)
                self.shadow, shadow_changed = loaded, True
        return Refreshed(champion_changed, shadow_changed)

    @property
    def shadow_missing(self) -> str | None:
        """Why the registry's shadow is not loaded here (None when it is, or when there is none)."""
        wanted = self.head.shadow if self.head is not None else None
        if wanted is None or (self.shadow is not None and self.shadow.version == wanted.version):
            return None
        return self._failed.get(wanted.version, "not loaded yet")

    async def refresh_active(self, conn: asyncpg.Connection) -> bool:
        """`refresh`, answering only "did the champion change?" (the scorer's question)."""
        return (await self.refresh(conn)).champion

    # ------------------------------------------------------------------ backtests

    async def for_runs(self, conn: asyncpg.Connection, run_ids: Iterable[str]) -> dict[str, Ensemble | None]:
        """The ensemble of each backtest run (None for an unknown run or an unloadable bundle).

        A run is scored by the version it registered, loaded from the registry's store
        (the folder recorded with the run only for runs whose version the registry lacks).
        """
        wanted = set(run_ids)
        missing = [run_id for run_id in wanted if run_id not in self._runs]
        if missing:
            rows = await conn.fetch(
                "SELECT b.id, b.model_version, coalesce(m.bundle_path, b.bundle_path) AS bundle_path, "
                "b.threshold FROM backtest_runs b LEFT JOIN model_versions m ON m.version = b.model_version "
                "WHERE b.id = ANY($1::text[])",
                missing,
            )
            for row in rows:
                deployed = Deployed(row["model_version"], row["bundle_path"])
                try:
                    ensemble = await self._version(deployed)
                    self._runs[row["id"]] = ensemble.with_threshold(row["threshold"])
                except (BundleError, OSError) as error:
                    log.error(
                        "backtest %s: version %s cannot be loaded: %s", row["id"], deployed.version, error
                    )
                    self._runs[row["id"]] = None
        return {run_id: self._runs.get(run_id) for run_id in wanted}

    # ------------------------------------------------------------------ the cache

    async def _version(self, deployed: Deployed) -> Ensemble:
        """The ensemble of `deployed.version`, loaded from its path once (checked to be that version)."""
        cached = self._bundles.get(deployed.version)
        if cached is not None:
            self._bundles.move_to_end(deployed.version)
            return cached
        ensemble = await _load_off_loop(self._load, Path(deployed.bundle_path))
        if ensemble.version != deployed.version:
            raise BundleError(
                f"{deployed.bundle_path} holds version {ensemble.version}, the registry says {deployed.version}"
            )
        self._remember(ensemble)
        return ensemble

    def _remember(self, ensemble: Ensemble) -> None:
        self._bundles[ensemble.version] = ensemble
        self._bundles.move_to_end(ensemble.version)
        keep = {e.version for e in (self.active, self.shadow) if e is not None} | {ensemble.version}
        for version in list(self._bundles):
            if len(self._bundles) <= CACHED_VERSIONS + len(keep):
                break
            if version not in keep:
                del self._bundles[version]

    async def _try(self, deployed: Deployed, role: str) -> Ensemble | None:
        try:
            ensemble = await self._version(deployed)
        except (BundleError, OSError) as error:
            reason = str(error)
            if self._failed.get(deployed.version) != reason:
                log.error(
                    "%s %s cannot be loaded from %s: %s", role, deployed.version, deployed.bundle_path, reason
                )
                self._failed[deployed.version] = reason
            return None
        self._failed.pop(deployed.version, None)
        return ensemble
