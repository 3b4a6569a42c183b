"""A tiny time-to-live cache so that every open browser tab shares one API call per tick.

Each live panel polls every tick; with several tabs open the dashboard would multiply
requests to the API. `TickCache.get` keeps a value (or the error it raised) for `ttl`
seconds and lets only one thread fetch a given key at a time: the others wait for it and
reuse its answer. Errors are cached too, so an unreachable API is asked once per tick,
not once per tab and panel.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class _Entry:
    expires: float
    value: Any = None
    error: BaseException | None = None


class TickCache:
    """Thread-safe memo of recent results, keyed by whatever identifies a request."""

    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic, max_entries: int = 256):
        if ttl < 0:
            raise ValueError(f"ttl must be >= 0, got {ttl}")
        self.ttl = ttl
        self._clock = clock
        self._max_entries = max_entries
        self._entries: dict[Hashable, _Entry] = {}
        self._locks: dict[Hashable, threading.Lock] = {}
        self._guard = threading.Lock()

    def get(self, key: Hashable, fetch: Callable[[], Any], ttl: float | None = None) -> Any:
        """Return the cached result for `key`, calling `fetch` at most once per `ttl`."""
        ttl = self.ttl if ttl is None else ttl
        hit = self._fresh(key)
        if hit is not None:
            return self._unwrap(hit)
        with self._key_lock(key):
            hit = self._fresh(key)  # another thread may have fetched it while we waited
            if hit is not None:
                return self._unwrap(hit)
            entry = _Entry(expires=0.0)
            try:
                entry.value = fetch()
            except Exception as exc:  # cached and re-raised: one failing request per tick
                entry.error = exc
            entry.expires = self._clock() + ttl
            with self._guard:
                if len(self._entries) >= self._max_entries:
                    self._evict_expired()
                self._entries[key] = entry
            return self._unwrap(entry)

    def clear(self) -> None:
        with self._guard:
            self._entries.clear()

    def _fresh(self, key: Hashable) -> _Entry | None:
        with self._guard:
            entry = self._entries.get(key)
        if entry is not None and entry.expires > self._clock():
            return entry
        return None

    def _key_lock(self, key: Hashable) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    def _evict_expired(self) -> None:
        now = self._clock()
        stale = [k for k, e in self._entries.items() if e.expires <= now]
        if len(stale) == 0 and self._entries:  # all fresh: drop the one that expires first
            stale = [min(self._entries, key=lambda k: self._entries[k].expires)]
        for key in stale:
            del self._entries[key]
            lock = self._locks.get(key)
            if lock is not None and not lock.locked():
                del self._locks[key]

    @staticmethod
    def _unwrap(entry: _Entry) -> Any:
        if entry.error is not None:
            raise entry.error
        return entry.value
