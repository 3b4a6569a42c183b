"""Score-and-store for `/api/predict`, batched across concurrent requests, with a bounded queue.

Each request hands its transaction to the `Predictor` and awaits its result. One
background task takes whatever requests are waiting (up to `max_batch`), scores them
with one vectorised `Ensemble.score` call and stores them with one `store_scored`
statement (the scorer's own write path). Alone, a request is scored at once; under
load, concurrent requests share the model call and the database round trip. The model
call runs in a worker thread (it releases the GIL), so the event loop is free meanwhile.

Admission is bounded (`max_pending`: predictions admitted and not yet answered, whether
waiting or in the batch being scored): past it a request is refused at once with
`Overloaded` (the route answers 503 with Retry-After), so overload costs the excess
callers a fast refusal instead of costing every caller an ever longer wait, and an
admitted request waits at most for about `max_pending` predictions ahead of it. A batch is
scored by the champion it started with, and every result names that version: a model
switch lands between batches.

A result is returned only after its row is committed: a refused or failed request
stored nothing, an answered one is in the database with its score and version.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg
import numpy as np

from api.errors import is_transient
from core.db.schema import LIVE_RUN
from core.db.store import ScoredRows, store_scored
from core.ensemble import Ensemble

log = logging.getLogger(__name__)

_NEW_ROWS = """
SELECT i.run_id, i.id FROM unnest($1::text[], $2::text[]) AS i(run_id, id)
JOIN transactions t ON t.run_id = i.run_id AND t.id = i.id AND t.ingested_at = now()
"""


class Overloaded(Exception):
    """As many predictions as allowed are in progress: try again after `retry_after` seconds."""

    def __init__(self, pending: int, retry_after: int = 1) -> None:
        super().__init__(f"{pending} predictions are already in progress; try again in {retry_after} s")
        self.retry_after = retry_after


class NoModelLoaded(Exception):
    """There is no champion to score with (see `/health`)."""


@dataclass(frozen=True, slots=True)
class PredictRequest:
    id: str
    run_id: str
    values: list[float]  # EVENT_FEATURES order
    label: int | None
    produced_at: float


@dataclass(frozen=True, slots=True)
class PredictResult:
    score: float
    recon_error: float
    alert: bool
    stored: bool
    model_version: str  # the version that scored (and stored) it
    threshold: float


_Item = tuple[PredictRequest, asyncio.Future]


class Predictor:
    """Owns the batching task; start() in the app's lifespan, close() on shutdown."""

    def __init__(
        self,
        champion: Callable[[], Ensemble | None],
        pool: asyncpg.Pool,
        *,
        max_batch: int = 256,
        max_pending: int = 256,
        acquire_timeout: float = 5.0,
        on_stored: Callable[[str], None] | None = None,
    ) -> None:
        self.champion = champion  # read once per batch: the version that scores it
        self.pool = pool
        self.on_stored = on_stored  # told each run id written to (the result cache: read your writes)
        self.max_batch = max_batch
        self.max_pending = max_pending
        self.acquire_timeout = acquire_timeout
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()  # never longer than max_pending
        self._task: asyncio.Task | None = None
        self.pending = 0  # admitted, not yet answered
        self.refused = 0

    @property
    def waiting(self) -> int:
        return self._queue.qsize()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="predict-batcher")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while not self._queue.empty():
            _, future = self._queue.get_nowait()
            if not future.done():
                future.set_exception(ConnectionError("the API is shutting down"))

    async def predict(self, request: PredictRequest) -> PredictResult:
        """Score and store one transaction; `Overloaded` at once when `max_pending` are in progress."""
        if self.pending >= self.max_pending:
            self.refused += 1
            raise Overloaded(self.max_pending)
        future: asyncio.Future[PredictResult] = asyncio.get_running_loop().create_future()
        self.pending += 1
        try:
            self._queue.put_nowait((request, future))
            return await future
        finally:
            self.pending -= 1

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            await self._settle(batch)

    async def _settle(self, batch: list[_Item]) -> None:
        """Score and store the batch. A row PostgreSQL refuses fails alone (the batch is retried
        one by one); a database that is unreachable fails the whole batch at once."""
        ensemble = self.champion()
        try:
            if ensemble is None:
                raise NoModelLoaded("no model is loaded")
            results = await self._score_and_store(ensemble, [request for request, _ in batch])
        except Exception as exc:  # the requests get the error; the batcher keeps going
            if len(batch) > 1 and not is_transient(exc) and not isinstance(exc, NoModelLoaded):
                for item in batch:
                    await self._settle([item])
                return
            if not is_transient(exc):
                log.warning("prediction failed: %s", exc)
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)

    async def _score_and_store(
        self, ensemble: Ensemble, requests: list[PredictRequest]
    ) -> list[PredictResult]:
        # A repeated (run_id, id) inside one batch would be stored once: score it once too.
        unique: dict[tuple[str, str], PredictRequest] = {}
        for request in requests:
            unique.setdefault((request.run_id, request.id), request)
        firsts = list(unique.values())
        position = {key: i for i, key in enumerate(unique)}
        raw = np.array([request.values for request in firsts], dtype=np.float64)
        # In a worker thread: XGBoost and torch release the GIL, so the loop keeps accepting,
        # answering and refusing (503) requests while a batch is scored.
        scored = await asyncio.to_thread(ensemble.score, raw)
        rows = ScoredRows(
            ids=[r.id for r in firsts],
            features=raw,
            labels=[r.label for r in firsts],
            run_ids=[r.run_id or LIVE_RUN for r in firsts],
            produced_at=[r.produced_at for r in firsts],
            model_version=ensemble.version,
            score=scored.score,
            recon_error=scored.recon_error,
            alert=scored.alert,
        )
        async with self.pool.acquire(timeout=self.acquire_timeout) as conn:
            if len(firsts) == 1:  # the count says it all; no transaction round trips
                new_keys = set(unique) if await store_scored(conn, rows) else set()
            else:
                async with conn.transaction():
                    new = await store_scored(conn, rows)
                    if new == len(firsts):
                        new_keys = set(unique)
                    else:  # some ids were stored before: this transaction's rows carry its now()
                        found = await conn.fetch(_NEW_ROWS, list(rows.run_ids), list(rows.ids))
                        new_keys = {(record["run_id"], record["id"]) for record in found}
        if new_keys and self.on_stored is not None:
            for run_id in {run_id for run_id, _ in new_keys}:
                self.on_stored(run_id)
        results: list[PredictResult] = []
        claimed: set[tuple[str, str]] = set()
        for request in requests:
            key = (request.run_id, request.id)
            i = position[key]
            stored = key in new_keys and key not in claimed
            claimed.add(key)
            results.append(
                PredictResult(
                    float(scored.score[i]),
                    float(scored.recon_error[i]),
                    bool(scored.alert[i]),
                    stored,
                    ensemble.version,
                    ensemble.threshold,
                )
            )
        return results
