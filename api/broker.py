"""Broker reachability, checked in the background and cached for `/health`.

Opening a Kafka admin client per `/health` call costs a connection and a metadata round
trip, and up to the timeout (2 s) when the broker is down: a load balancer polling
`/health` would pile those up. One task checks every `interval` seconds instead;
`/health` reads the last result (it waits only for the very first check).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from core.kafka import broker_reachable

log = logging.getLogger(__name__)

Probe = Callable[[str, float], Awaitable[bool]]


async def _probe(bootstrap: str, timeout: float) -> bool:
    return await broker_reachable(bootstrap, timeout=timeout)


class BrokerMonitor:
    """Owns the checking task: start() in the app's lifespan, close() on shutdown."""

    def __init__(
        self, bootstrap: str | None, *, interval: float = 5.0, timeout: float = 2.0, probe: Probe = _probe
    ) -> None:
        self.bootstrap = bootstrap
        self.interval = interval
        self.timeout = timeout
        self._probe = probe
        self._status: str | None = None if bootstrap else "not configured"
        self.checked_at: float | None = None
        self._first = asyncio.Event()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        if self.bootstrap and self._task is None:
            self._task = asyncio.create_task(self._run(), name="broker-monitor")
        else:
            self._first.set()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def status(self) -> str:
        """'ok', 'unreachable at ...' or 'not configured' (the first check is awaited)."""
        if self._status is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._first.wait(), self.timeout + 1.0)
        return self._status or f"unreachable at {self.bootstrap} (not checked yet)"

    async def _run(self) -> None:
        assert self.bootstrap is not None
        while True:
            try:
                ok = await self._probe(self.bootstrap, self.timeout)
            except Exception as exc:  # a probe that fails in any way means "not reachable"
                log.debug("broker probe failed: %s", exc)
                ok = False
            self._status = "ok" if ok else f"unreachable at {self.bootstrap}"
            self.checked_at = time.monotonic()
            self._first.set()
            await asyncio.sleep(self.interval)
