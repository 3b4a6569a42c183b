"""Writing rows into a database migrated only up to 0012 (tables not yet partitioned), as the
write path did then: for tests of migrations that move existing rows."""

from __future__ import annotations

import asyncpg

from core.db.schema import FEATURE_COLUMNS
from core.db.store import ScoredRows

_N = len(FEATURE_COLUMNS)
_FEATURES = ", ".join(FEATURE_COLUMNS)

#: The write of `core.db.store.INSERT_SCORED` before migration 0013 (no day, no key table).
_INSERT_UNPARTITIONED = f"""
WITH input AS (
    SELECT * FROM unnest($1::text[], $2::text[], {", ".join(f"${i + 3}::float8[]" for i in range(_N))},
                         ${_N + 3}::int2[], ${_N + 4}::float8[], ${_N + 5}::float8[], ${_N + 6}::float8[],
                         ${_N + 7}::bool[])
        AS t(run_id, id, {_FEATURES}, label, produced_at, score, recon_error, alert)
), stored AS (
    INSERT INTO transactions (run_id, id, {_FEATURES}, label, produced_at)
    SELECT run_id, id, {_FEATURES}, label, to_timestamp(produced_at) FROM input
    ON CONFLICT DO NOTHING
    RETURNING run_id, id
)
INSERT INTO scores (run_id, id, model_version, score, recon_error, alert, scored_at, latency_ms)
SELECT i.run_id, i.id, ${_N + 8}, i.score, i.recon_error, i.alert, clock_timestamp(),
       (extract(epoch FROM clock_timestamp()) - i.produced_at) * 1000.0
FROM input i JOIN stored s USING (run_id, id)
"""


async def store_unpartitioned(conn: asyncpg.Connection, rows: ScoredRows) -> None:
    await conn.execute(
        _INSERT_UNPARTITIONED,
        rows.keys(),
        list(rows.ids),
        *(rows.features[:, j].tolist() for j in range(_N)),
        list(rows.labels),
        list(rows.produced_at),
        rows.score.tolist(),
        rows.recon_error.tolist(),
        rows.alert.tolist(),
        rows.model_version,
    )
