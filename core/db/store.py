"""Writing scored transactions: one round trip per batch, idempotent.

Used by the scorer for every batch and by the API's predict endpoint for one row, so
both store exactly the same thing. One statement inserts the transactions and their
scores from column arrays (`unnest`), skipping rows whose `(run_id, id)` is already
stored: a redelivered or replayed event never makes a second row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg
import numpy as np

from core.db.schema import FEATURE_COLUMNS, LIVE_RUN

_FEATURE_LIST = ", ".join(FEATURE_COLUMNS)
_N = len(FEATURE_COLUMNS)
_FEATURE_PARAMS = ", ".join(f"${i + 3}::float8[]" for i in range(_N))
_LABEL, _PRODUCED, _VERSION, _SCORE, _ERROR, _ALERT = range(_N + 3, _N + 9)

INSERT_SCORED = f"""
WITH input AS (
    SELECT * FROM unnest($1::text[], $2::text[], {_FEATURE_PARAMS},
                         ${_LABEL}::int2[], ${_PRODUCED}::float8[], ${_SCORE}::float8[],
                         ${_ERROR}::float8[], ${_ALERT}::bool[])
        AS t(run_id, id, {_FEATURE_LIST}, label, produced_at, score, recon_error, alert)
), stored AS (
    INSERT INTO transactions (run_id, id, {_FEATURE_LIST}, label, produced_at)
    SELECT run_id, id, {_FEATURE_LIST}, label, to_timestamp(produced_at) FROM input
    ON CONFLICT DO NOTHING
    RETURNING run_id, id
)
INSERT INTO scores (run_id, id, model_version, score, recon_error, alert, scored_at, latency_ms)
SELECT i.run_id, i.id, ${_VERSION}, i.score, i.recon_error, i.alert, clock_timestamp(),
       (extract(epoch FROM clock_timestamp()) - i.produced_at) * 1000.0
FROM input i JOIN stored s USING (run_id, id)
ON CONFLICT DO NOTHING
"""


@dataclass(frozen=True, slots=True)
class ScoredRows:
    """A batch of scored transactions, column-wise, as the scorer and the API hold them."""

    ids: Sequence[str]
    features: np.ndarray  # (n, 30) float64, EVENT_FEATURES order
    labels: Sequence[int | None]
    run_ids: Sequence[str | None]
    produced_at: Sequence[float | None]
    model_version: str
    score: np.ndarray
    recon_error: np.ndarray
    alert: np.ndarray


async def store_scored(conn: asyncpg.Connection | asyncpg.Pool, rows: ScoredRows) -> int:
    """Insert the batch; return how many rows were new (the rest were already stored)."""
    if not len(rows.ids):
        return 0
    columns = [rows.features[:, j].tolist() for j in range(_N)]
    status = await conn.execute(
        INSERT_SCORED,
        [run_id or LIVE_RUN for run_id in rows.run_ids],
        list(rows.ids),
        *columns,
        list(rows.labels),
        list(rows.produced_at),
        rows.model_version,
        rows.score.tolist(),
        rows.recon_error.tolist(),
        rows.alert.tolist(),
    )
    return int(status.rsplit(" ", 1)[-1])
