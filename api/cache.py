"""Aggregate answers served stale-while-revalidate, with a bounded age.

Histograms, model curves and totals scan a run's rows; the live dashboard polls the same
ones every few seconds while the scorer stores new rows every ~100 ms. Waiting for a
fresh scan on every poll makes every poll pay the full query, so instead:

- every answer is computed from one snapshot and remembers when: `as_of` (wall clock,
  taken before the query starts, so the data are at least that new);
- an answer younger than `max_age` is served as is, with no database round trip
  (`slow_max_age` instead for the full-scan analytics the dashboard polls every ~10 s:
  keeping those 2 s fresh would cost a recompute every 2 s for a read every 10 s);
- each key that is read again (one-off questions are not kept fresh) has ONE background
  task that starts the recompute just before the answer reaches `max_age`, and swaps
  the new answer in when it is done. Meanwhile the old answer is served. So a served
  answer is never older than `max_age` plus the duration of the recompute that
  replaces it (a recompute slower than `max_age` is followed by the next one at once:
  then an answer is at most two recomputes old). If no recompute started in time (a
  key nobody asked for lately, a failed recompute), the request waits for one (single
  flight: concurrent requests share it);
- a key nobody reads for `idle_seconds` stops being refreshed;
- before recomputing an answer that does not move with the clock, the run's
  watermark (its newest `scored_at`, one index probe) is compared: unchanged means
  the answer is renewed without the query (at most `quiet_seconds` in a row);
- rows written through this process (`/api/predict`) are seen by the next read of the
  cheap answers that ask for it (list pages): `written(run_id)` makes their older
  answers of that run unusable (read your writes).

How an answer goes stale is named by its `Freshness` policy (`SNAPSHOT`, `TIMED`,
`FIRST_PAGE`, `FULL_SCAN`), one per kind of answer, so a route says what its answer is
rather than setting flags.

Answers are kept serialised (JSON bytes), so a hit costs no re-serialisation. The
cache is owned by the app and computes on its own connections (`bind(engine)` in the
lifespan): a recompute outlives the request that started it. `max_age <= 0` turns
caching off (every request runs its queries).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import orjson
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from starlette.responses import Response

from core.db.rollups import FOLD_SQL

log = logging.getLogger(__name__)

Compute = Callable[[AsyncConnection], Awaitable[Any]]
Watermark = Callable[[AsyncConnection, str], Awaitable[Any]]

#: Response header of cached answers: when the data behind the answer were read (ISO 8601, UTC).
AS_OF_HEADER = "X-As-Of"


@dataclass(frozen=True, slots=True)
class Freshness:
    """How a kind of cached answer goes stale (see the module docstring).

    `follows_clock`: the answer changes with time alone ("the last 5 minutes"), or with
    data the run's watermark does not cover (the registry), so an unchanged watermark does
    not make it current. `follows_writes`: a cheap answer a client may read right after
    writing (a list's first page): what was written through this process before the read
    is in it. `full_scan`: bounded by the cache's `slow_max_age`, not `max_age`. `folds`:
    read from the folded rollups (migration 0014): each recompute first folds the rows stored
    since the last fold (`core.db.rollups`), in its own transaction before the snapshot.
    """

    name: str
    follows_clock: bool = False
    follows_writes: bool = False
    full_scan: bool = False
    folds: bool = False


#: Aggregates over a run's stored rows: recomputed when the run's watermark moves.
SNAPSHOT = Freshness("snapshot")
#: Windows over the clock, and answers the watermark does not cover: recomputed every bound.
TIMED = Freshness("timed", follows_clock=True)
#: A list's first page: the bound, and read-your-writes for rows stored through this process.
FIRST_PAGE = Freshness("first page", follows_writes=True)
#: Full-scan analytics (histograms, scatter, model curves): the longer `slow_max_age` bound.
FULL_SCAN = Freshness("full scan", full_scan=True)
#: Analytics read from the folded rollups (distributions, model curves): `FULL_SCAN`'s bound,
#: and a fold before each recompute, so an answer holds every row committed before it.
FOLDED = Freshness("folded", full_scan=True, folds=True)
#: What this process changes in the registry (promotions): the bound, and read-your-writes.
REGISTRY = Freshness("registry", follows_clock=True, follows_writes=True)
#: The scope registry answers are kept under (a run id no run uses; see `ResultCache.written`).
REGISTRY_SCOPE = "(registry)"


@dataclass(frozen=True, slots=True)
class Cached:
    """One computed answer: the value, its JSON, and the snapshot it was computed from."""

    value: Any  # None when the caller asked for the JSON only (keeps the heap small)
    body: bytes
    as_of: datetime  # wall clock when the snapshot was taken
    started: float  # the same instant on the cache's monotonic clock
    computed: float  # when the queries last really ran (renewals by watermark keep this)
    watermark: Any


@dataclass(slots=True)
class _Slot:
    key: Hashable
    run_id: str
    compute: Compute
    follows_clock: bool
    last_access: float
    folds: bool
    max_age: float
    reads: int = 0
    entry: Cached | None = None
    inflight: asyncio.Task | None = None
    inflight_started: float = -math.inf
    ready_at: float = -math.inf  # when the current entry was installed
    keep_value: bool = False
    refresher: asyncio.Task | None = None
    evicted: bool = field(default=False)


def serialise(value: Any) -> bytes:
    if isinstance(value, BaseModel):
        return value.model_dump_json().encode()
    return orjson.dumps(value)


class ResultCache:
    """Stale-while-revalidate answers per key (see the module docstring)."""

    def __init__(
        self,
        max_age: float = 2.0,
        *,
        slow_max_age: float | None = None,
        idle_seconds: float = 30.0,
        quiet_seconds: float = 60.0,
        max_entries: int = 256,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_age = max_age
        #: The bound of `slow` answers (full-scan analytics polled every ~10 s): refreshing
        #: those every `max_age` would cost far more than anyone reads.
        self.slow_max_age = max_age if slow_max_age is None else max(slow_max_age, max_age)
        self.idle_seconds = idle_seconds
        self.quiet_seconds = quiet_seconds
        self.max_entries = max_entries
        self._clock = clock
        self._slots: OrderedDict[Hashable, _Slot] = OrderedDict()
        self._written: dict[str, float] = {}
        self._engine: AsyncEngine | None = None
        self._watermark: Watermark | None = None
        self.hits = 0
        self.stale_hits = 0
        self.misses = 0
        self.refreshes = 0
        self.renewals = 0
        self.compute_seconds = 0.0

    # ------------------------------------------------------------------ wiring

    def bind(self, engine: AsyncEngine, watermark: Watermark | None = None) -> None:
        """Where recomputes get their connections; how to read a run's watermark."""
        self._engine = engine
        self._watermark = watermark

    async def close(self) -> None:
        """Stop every background refresh (the app is shutting down)."""
        tasks = []
        for slot in self._slots.values():
            for task in (slot.refresher, slot.inflight):
                if task is not None and not task.done():
                    task.cancel()
                    tasks.append(task)
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        self._slots.clear()

    @property
    def size(self) -> int:
        return len(self._slots)

    @staticmethod
    def _margin(bound: float) -> float:
        """How long before an answer reaches its bound its recompute starts."""
        return min(0.2 * bound, 0.25)

    @property
    def enabled(self) -> bool:
        return self.max_age > 0

    # ------------------------------------------------------------------ reading

    def written(self, run_id: str) -> None:
        """Rows of `run_id` (or the `REGISTRY_SCOPE`) were written through this process: later
        reads of answers that follow writes (`Freshness.follows_writes`) must include them."""
        self._written[run_id] = self._clock()

    async def get(
        self,
        key: Hashable | None,
        run_id: str,
        compute: Compute,
        freshness: Freshness = SNAPSHOT,
        *,
        keep_value: bool = True,
    ) -> Cached:
        """The answer for `key` (computed by `compute(conn)`), at most its bound + one recompute old.

        `freshness` says how the answer goes stale (`SNAPSHOT`, `TIMED`, `FIRST_PAGE`,
        `FULL_SCAN`, `REGISTRY`). Aggregates do not follow writes: under a stream of
        predictions every read would wait for a full recompute. `keep_value=False`: keep
        only the JSON (the answer's object graph would stay on the heap for the garbage
        collector to walk on every full collection).
        """
        if not self.enabled or key is None:  # key None: a question not worth keeping
            self.misses += 1
            return await self._compute_entry(run_id, compute, None, None, keep_value, freshness.folds)
        now = self._clock()
        bound = self.slow_max_age if freshness.full_scan else self.max_age
        slot = self._slot(key, run_id, compute, freshness, now, bound)
        slot.keep_value = slot.keep_value or keep_value
        must_follow = self._written.get(run_id, -math.inf) if freshness.follows_writes else -math.inf
        entry = slot.entry
        if entry is not None and entry.started > must_follow:
            if now - entry.started <= bound:
                self.hits += 1
                self._keep_fresh(slot)
                return entry
            if slot.inflight is not None and slot.inflight_started <= max(
                entry.started + bound, slot.ready_at
            ):
                self.stale_hits += 1  # its replacement started in time: the bound holds
                self._keep_fresh(slot)
                return entry
        self.misses += 1
        floor = max(must_follow, now - bound)
        task = slot.inflight if slot.inflight is not None and slot.inflight_started > floor else None
        if task is None:
            task = self._start(slot)
        entry = await asyncio.shield(task)
        self._keep_fresh(slot)
        return entry

    # ------------------------------------------------------------------ internals

    def _slot(
        self, key: Hashable, run_id: str, compute: Compute, freshness: Freshness, now: float, bound: float
    ) -> _Slot:
        slot = self._slots.get(key)
        if slot is None:
            slot = _Slot(key, run_id, compute, freshness.follows_clock, now, freshness.folds, bound)
            self._slots[key] = slot
            while len(self._slots) > self.max_entries:
                _, old = self._slots.popitem(last=False)
                old.evicted = True
                if old.refresher is not None:
                    old.refresher.cancel()
        else:
            slot.compute = compute  # the newest closure (same key = same question)
            slot.last_access = now
            slot.max_age = bound
            self._slots.move_to_end(key)
        slot.reads += 1
        return slot

    def _start(self, slot: _Slot) -> asyncio.Task:
        started = self._clock()
        task = asyncio.create_task(self._refresh(slot, started), name=f"cache-refresh {slot.key!r}"[:100])
        slot.inflight, slot.inflight_started = task, started
        task.add_done_callback(lambda done: self._finished(slot, done))
        return task

    def _finished(self, slot: _Slot, task: asyncio.Task) -> None:
        if slot.inflight is task:
            slot.inflight, slot.inflight_started = None, -math.inf
        if task.cancelled():
            return
        error = task.exception()  # retrieved here, so a failed background refresh is never "unhandled"
        if error is None:
            entry = task.result()
            if slot.entry is None or entry.started >= slot.entry.started:
                slot.entry = entry
                now = self._clock()
                if (  # a recompute slower than max_age: start the next one at once, no gap
                    slot.inflight is None
                    and not slot.evicted
                    and slot.reads >= 2
                    and now - slot.last_access <= self.idle_seconds
                    and now - entry.started >= slot.max_age - self._margin(slot.max_age)
                ):
                    self._start(slot)
                slot.ready_at = self._clock()
        else:
            log.warning("recomputing %r failed: %s", slot.key, error)

    async def _refresh(self, slot: _Slot, started: float) -> Cached:
        self.refreshes += 1
        previous = slot.entry
        renewable = (
            previous is not None
            and not slot.follows_clock
            and self._watermark is not None
            and started - previous.computed < self.quiet_seconds
            and previous.started > self._written.get(slot.run_id, -math.inf)
        )
        return await self._compute_entry(
            slot.run_id, slot.compute, previous if renewable else None, started, slot.keep_value, slot.folds
        )

    async def _compute_entry(
        self,
        run_id: str,
        compute: Compute,
        previous: Cached | None,
        started: float | None,
        keep_value: bool,
        folds: bool = False,
    ) -> Cached:
        if self._engine is None:
            raise RuntimeError("ResultCache.bind(engine) was not called")
        started = self._clock() if started is None else started
        as_of = datetime.now(UTC)
        began = time.perf_counter()
        try:
            async with self._engine.connect() as conn:
                if folds:  # committed before the snapshot below, which then sees what it added
                    await conn.execute(text(FOLD_SQL))
                    await conn.commit()
                # One snapshot for every statement of the answer (a range and its histogram agree).
                conn = await conn.execution_options(isolation_level="REPEATABLE READ")
                mark = await self._watermark(conn, run_id) if self._watermark is not None else None
                if previous is not None and mark == previous.watermark:
                    self.renewals += 1
                    return replace(previous, as_of=as_of, started=started)
                value = await compute(conn)
            body = serialise(value)
            return Cached(value if keep_value else None, body, as_of, started, started, mark)
        finally:
            self.compute_seconds += time.perf_counter() - began

    def _keep_fresh(self, slot: _Slot) -> None:
        """Refresh a key in the background from its second read on (one-off questions are not kept)."""
        if slot.reads >= 2 and (slot.refresher is None or slot.refresher.done()):
            slot.refresher = asyncio.create_task(self._refresh_loop(slot), name="cache-keep-fresh")

    async def _refresh_loop(self, slot: _Slot) -> None:
        """Start each recompute a little before the answer reaches max_age, while the key is read."""
        while not slot.evicted:
            entry = slot.entry
            if entry is None:
                return
            due = entry.started + slot.max_age - self._margin(slot.max_age)
            await asyncio.sleep(max(0.0, due - self._clock()))
            if slot.evicted or self._clock() - slot.last_access > self.idle_seconds:
                return
            task = slot.inflight or self._start(slot)
            try:
                await asyncio.shield(task)
            except asyncio.CancelledError:
                raise
            except Exception:  # logged in _finished; readers wait for a new try once it is too old
                await asyncio.sleep(slot.max_age)
            if slot.entry is entry:  # nothing newer arrived: do not spin
                await asyncio.sleep(slot.max_age)


async def cached_response(
    cache: ResultCache, key: Hashable | None, run_id: str, compute: Compute, freshness: Freshness = SNAPSHOT
) -> Response:
    """The cached answer's JSON as is, with `X-As-Of`: when the data it was computed from were read."""
    entry = await cache.get(key, run_id, compute, freshness, keep_value=False)
    return Response(
        entry.body, media_type="application/json", headers={AS_OF_HEADER: entry.as_of.isoformat()}
    )
