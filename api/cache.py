"""A small per-app cache for aggregate answers, keyed by request and checked against the data.

Histograms, model curves and totals over the full data take tens of milliseconds in
PostgreSQL; the dashboard asks for the same ones every few seconds. An answer is reused
only while the run's watermark (its newest `scored_at`, one index probe) has not moved
and it is younger than `max_seconds` (short for answers that depend on the clock, like
"the last minute"). So a stored row invalidates everything it could change, a quiet
database is not re-aggregated, and a live stream always gets fresh answers.
Concurrent requests for the same missing key share one computation (single flight).

The cache is owned by the app (`app.state.cache`), not a module global.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class _Entry:
    created: float
    value: Any


class ResultCache:
    """Memoise `compute()` per key while the watermark is unchanged (see the module docstring)."""

    def __init__(self, max_seconds: float = 60.0, max_entries: int = 512) -> None:
        self.max_seconds = max_seconds
        self.max_entries = max_entries
        self._entries: OrderedDict[Hashable, _Entry] = OrderedDict()
        self._inflight: dict[Hashable, asyncio.Future] = {}
        self.hits = 0
        self.misses = 0

    async def get(
        self,
        key: Hashable,
        watermark: Any,
        compute: Callable[[], Awaitable[Any]],
        max_seconds: float | None = None,
    ) -> Any:
        """`compute()`'s value for `key`, reused while `watermark` is unchanged and young enough."""
        limit = self.max_seconds if max_seconds is None else min(max_seconds, self.max_seconds)
        if limit <= 0:
            return await compute()
        key = (key, watermark)
        entry = self._entries.get(key)
        if entry is not None and time.monotonic() - entry.created < limit:
            self._entries.move_to_end(key)
            self.hits += 1
            return entry.value
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        self.misses += 1
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            value = await compute()
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters re-raise it, nobody else must
            raise
        finally:
            self._inflight.pop(key, None)
        future.set_result(value)
        self._entries[key] = _Entry(time.monotonic(), value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return value
