"""The models this API process serves: the registry's champion (and shadow), hot-reloaded.

    served = ServedModels(pool, fallback_path=settings.model_path, refresh_seconds=5)
    await served.start()          # in the lifespan; never registers or activates anything
    ensemble = served.champion    # take it once per request or batch, and use only that

One background task asks the registry every `refresh_seconds` which version is the
champion (`core.models.EnsembleResolver`, the scorer's own follower) and swaps the new
one in when it is loaded; a request holds the ensemble it started with, so a switch lands
between requests and every answer names the version that computed it. A promotion made
through this API is followed at once (`refresh`), not at the next poll.

Until the registry has been read there is no model (predict and explain answer 503):
serving a folder's bundle while the champion is unknown could split the fleet. With no
champion registered, the `fallback_path` bundle is served, unregistered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path

import asyncpg

from core.db.registry import RegistryHead
from core.ensemble import Ensemble
from core.models import EnsembleResolver, NoModel

log = logging.getLogger(__name__)


class ServedModels:
    """Owns the resolver and its polling task: start() in the lifespan, close() on shutdown."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        fallback_path: Path | None,
        refresh_seconds: float,
        acquire_timeout: float = 5.0,
    ) -> None:
        self._pool = pool
        self._acquire_timeout = acquire_timeout
        self.fallback_path = fallback_path
        self.refresh_seconds = refresh_seconds
        self._resolver = EnsembleResolver()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task | None = None
        #: Why there is no model, or why the champion is not served (None when all is well).
        self.error: str | None = "the registry has not been read yet"
        #: Since when (monotonic) the served champion differs from the registry's.
        self.behind_since: float | None = None
        self.reloads = 0

    @property
    def champion(self) -> Ensemble | None:
        """The version live requests are scored with (None: no model to serve)."""
        return self._resolver.active

    @property
    def shadow(self) -> Ensemble | None:
        return self._resolver.shadow

    @property
    def head(self) -> RegistryHead | None:
        """The registry as last read."""
        return self._resolver.head

    @property
    def from_fallback(self) -> bool:
        """True while serving the unregistered fallback bundle (the registry has no champion)."""
        head = self._resolver.head
        return self.champion is not None and head is not None and head.champion is None

    async def start(self) -> None:
        await self.refresh()
        self._task = asyncio.create_task(self._poll(), name="registry-follower")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def refresh(self) -> bool:
        """Read the registry now and follow it; True when the served champion changed."""
        async with self._lock:
            before = self.champion
            try:
                async with self._pool.acquire(timeout=self._acquire_timeout) as conn:
                    if self._resolver.active is None:
                        self._resolver = await EnsembleResolver.open(conn, fallback_path=self.fallback_path)
                    else:
                        await self._resolver.refresh(conn)
            except NoModel as error:
                self.error = str(error)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
                if self.champion is None:
                    self.error = f"the model registry cannot be read: {type(error).__name__}: {error}"
                log.warning("could not read the model registry: %s", error)
                return False
            self._track()
            changed = self.champion is not before
            if changed:
                self.reloads += 1
            return changed

    def _track(self) -> None:
        head, served = self._resolver.head, self.champion
        wanted = head.champion.version if head is not None and head.champion is not None else None
        if served is not None and (wanted is None or served.version == wanted):
            self.behind_since = None
            self.error = None
        elif served is not None:
            self.behind_since = self.behind_since or time.monotonic()
            self.error = f"the champion {wanted} is not loaded (see the API's log); serving {served.version}"

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_seconds)
            try:
                await self.refresh()
            except Exception as error:  # noqa: BLE001 - following the registry must outlive any one failure
                log.warning("following the model registry failed: %s", error)
