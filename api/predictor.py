"""Score-and-store for `/api/predict`, batched across concurrent requests.

Each request hands its transaction to the `Predictor` and awaits its result. One
background task takes whatever requests are waiting (up to `max_batch`), scores them
with one vectorised `Ensemble.score` call and stores them with one `store_scored`
statement (the scorer's own write path). Alone, a request is scored at once; under
load, concurrent requests share the model call and the database round trip, which is
what lets one process answer thousands of predictions per second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg
import numpy as np

from core.db.schema import LIVE_RUN
from core.db.store import ScoredRows, store_scored
from core.ensemble import Ensemble

log = logging.getLogger(__name__)

_NEW_ROWS = """
SELECT i.run_id, i.id FROM unnest($1::text[], $2::text[]) AS i(run_id, id)
JOIN transactions t ON t.run_id = i.run_id AND t.id = i.id AND t.ingested_at = now()
"""


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


class Predictor:
    """Owns the batching task; start() in the app's lifespan, close() on shutdown."""

    def __init__(
        self,
        ensemble: Ensemble,
        pool: asyncpg.Pool,
        max_batch: int = 256,
        on_stored: Callable[[str], None] | None = None,
    ) -> None:
        self.ensemble = ensemble
        self.pool = pool
        self.on_stored = on_stored  # told each run id written to (the result cache: read your writes)
        self.max_batch = max_batch
        self._queue: asyncio.Queue[tuple[PredictRequest, asyncio.Future]] = asyncio.Queue()
        self._task: asyncio.Task | None = None

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
                future.set_exception(RuntimeError("the API is shutting down"))

    async def predict(self, request: PredictRequest) -> PredictResult:
        future: asyncio.Future[PredictResult] = asyncio.get_running_loop().create_future()
        await self._queue.put((request, future))
        return await future

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            await self._settle(batch)

    async def _settle(self, batch: list[tuple[PredictRequest, asyncio.Future]]) -> None:
        """Score and store the batch; if it fails, retry one by one so one bad row fails alone."""
        try:
            results = await self._score_and_store([request for request, _ in batch])
        except Exception as exc:  # the requests get the error; the batcher keeps going
            if len(batch) > 1:
                for item in batch:
                    await self._settle([item])
                return
            log.warning("prediction failed: %s", exc)
            if not batch[0][1].done():
                batch[0][1].set_exception(exc)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)

    async def _score_and_store(self, requests: list[PredictRequest]) -> list[PredictResult]:
        # A repeated (run_id, id) inside one batch would be stored once: score it once too.
        unique: dict[tuple[str, str], PredictRequest] = {}
        for request in requests:
            unique.setdefault((request.run_id, request.id), request)
        firsts = list(unique.values())
        position = {key: i for i, key in enumerate(unique)}
        raw = np.array([request.values for request in firsts], dtype=np.float64)
        scored = self.ensemble.score(raw)
        rows = ScoredRows(
            ids=[r.id for r in firsts],
            features=raw,
            labels=[r.label for r in firsts],
            run_ids=[r.run_id or LIVE_RUN for r in firsts],
            produced_at=[r.produced_at for r in firsts],
            model_version=self.ensemble.version,
            score=scored.score,
            recon_error=scored.recon_error,
            alert=scored.alert,
        )
        async with self.pool.acquire() as conn:
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
                    float(scored.score[i]), float(scored.recon_error[i]), bool(scored.alert[i]), stored
                )
            )
        return results
