"""Writing scored transactions: one round trip per batch, idempotent, alerts in an outbox.

Used by the scorer for every batch and by the API's predict endpoint for one row, so
both store exactly the same thing. One statement inserts the transactions and their
scores from column arrays (`unnest`), skipping rows whose `(run_id, id)` is already
stored: a redelivered or replayed event never makes a second row. The key goes first into
`transaction_keys` (unpartitioned): the row tables are partitioned by data day
(`core.db.partitions`), so only there is an id unique whatever the event's time; a
known id with another time is "already stored", and `stored_rows` calls it a conflict.

The scorer's statement (`store_new`) also writes the alert of each newly stored alerting
row into `alert_outbox`, and, when a shadow version scored the batch too, the shadow's
score of each newly stored row into `shadow_scores`, in the same transaction as the row,
and answers which rows were *not* new. Only for those (a redelivery, a replay, another producer) does it ask again
(`stored_rows`): what is stored for them, to tell an identical redelivery from a
conflicting one, and whether their alert still waits in the outbox. An alert leaves the
outbox (`forget_alerts`) once the broker has acknowledged it, so a crash in between can
never lose it, and a re-sent alert is the stored bytes, identical.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import asyncpg
import numpy as np
import orjson

from core.bins import LATENCY_BINS
from core.db.schema import FEATURE_COLUMNS, LIVE_RUN

_FEATURE_LIST = ", ".join(FEATURE_COLUMNS)
_N = len(FEATURE_COLUMNS)
_FEATURE_PARAMS = ", ".join(f"${i + 3}::float8[]" for i in range(_N))
_LABEL, _PRODUCED, _VERSION, _SCORE, _ERROR, _ALERT = range(_N + 3, _N + 9)
_ALERT_RUNS, _ALERT_IDS, _ALERT_PAYLOADS = range(_N + 9, _N + 12)

_INPUT_ONLY = f"""
input AS (
    SELECT * FROM unnest($1::text[], $2::text[], {_FEATURE_PARAMS},
                         ${_LABEL}::int2[], ${_PRODUCED}::float8[], ${_SCORE}::float8[],
                         ${_ERROR}::float8[], ${_ALERT}::bool[])
        WITH ORDINALITY AS t(run_id, id, {_FEATURE_LIST}, label, produced_at, score, recon_error, alert, position)
), keyed AS (
    INSERT INTO transaction_keys (run_id, id, day)
    SELECT run_id, id, data_day(time) FROM input
    ON CONFLICT DO NOTHING
    RETURNING run_id, id, day
), stored AS (
    INSERT INTO transactions (run_id, id, day, {_FEATURE_LIST}, label, produced_at)
    SELECT i.run_id, i.id, k.day, {", ".join(f"i.{name}" for name in FEATURE_COLUMNS)}, i.label,
           to_timestamp(i.produced_at)
    FROM input i JOIN keyed k USING (run_id, id)
    ON CONFLICT DO NOTHING
    RETURNING run_id, id, day
), scored AS (
    INSERT INTO scores (run_id, id, day, model_version, score, recon_error, alert, scored_at, latency_ms, fraud)
    SELECT i.run_id, i.id, s.day, ${_VERSION}, i.score, i.recon_error, i.alert, clock_timestamp(),
           (extract(epoch FROM clock_timestamp()) - i.produced_at) * 1000.0, coalesce(i.label = 1, false)
    FROM input i JOIN stored s USING (run_id, id)
    ON CONFLICT DO NOTHING
    RETURNING run_id, id, day, model_version, alert, scored_at, latency_ms
)"""

#: The narrow rollups (0009, kept by the statement since 0018): each newly stored score,
#: once, in the statement that stores it, grouped by (run, minute of `scored_at`, version,
#: class), (run, data hour, version, class) and (run, minute, latency bin). The class is the
#: known label (0012: a verdict stored before the row, else the inline label, else -1). Every
#: upsert grouped and ordered, so concurrent writers lock rollup rows in one order.
_LATENCY_EDGES = "'{" + ",".join(repr(float(e)) for e in LATENCY_BINS.edges) + "}'::float8[]"
_NARROW_ROLLUPS = f"""
narrow AS MATERIALIZED (
    SELECT c.run_id, c.model_version, c.alert, c.latency_ms,
           date_bin('1 minute', c.scored_at, timestamptz '2000-01-01 00:00:00+00') AS minute,
           floor(i.time / 3600)::int4 AS hour,
           coalesce((SELECT k.class FROM rollup_known_classes k
                     WHERE k.run_id = c.run_id AND k.transaction_id = c.id), i.label, -1)::int2 AS class
    FROM scored c JOIN input i USING (run_id, id)
), rolled_minutes AS (
    INSERT INTO rollup_minutes AS m (run_id, minute, model_version, class, scored, alerts)
    SELECT n.run_id, n.minute, n.model_version, n.class, count(*), count(*) FILTER (WHERE n.alert)
    FROM narrow n GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
    ON CONFLICT (run_id, minute, model_version, class)
    DO UPDATE SET scored = m.scored + EXCLUDED.scored, alerts = m.alerts + EXCLUDED.alerts
), rolled_hours AS (
    INSERT INTO rollup_hours AS h (run_id, hour, model_version, class, scored, alerts)
    SELECT n.run_id, n.hour, n.model_version, n.class, count(*), count(*) FILTER (WHERE n.alert)
    FROM narrow n GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
    ON CONFLICT (run_id, hour, model_version, class)
    DO UPDATE SET scored = h.scored + EXCLUDED.scored, alerts = h.alerts + EXCLUDED.alerts
), rolled_latency AS (
    INSERT INTO rollup_latency AS l (run_id, minute, bin, n)
    SELECT n.run_id, n.minute, width_bucket(n.latency_ms, {_LATENCY_EDGES})::int2, count(*)
    FROM narrow n WHERE n.latency_ms IS NOT NULL
    GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    ON CONFLICT (run_id, minute, bin) DO UPDATE SET n = l.n + EXCLUDED.n
)"""

#: The scatter plot's sample (migration 0022): per (run, data day, class) the rows with the
#: smallest keys (`scatter_key`). Each group's counts are upserted first, in key order, and
#: the upsert answers the group's threshold as it is now (the state row locked, so a prune
#: in another transaction is waited for); the new rows under it go into the sample. A row
#: is one of the batch's newly stored ones (`scored`), so a redelivery adds nothing. Pruning
#: a sample past 2k rows is a trigger on the state (`scatter_sample_prune`).
_SCATTER_SAMPLE = f"""
sample_rows AS MATERIALIZED (
    SELECT DISTINCT ON (c.run_id, c.id) c.run_id, c.id, c.day, c.model_version, coalesce(i.label = 1, false) AS fraud,
           scatter_key(c.run_id, c.id) AS key, i.position
    FROM scored c JOIN input i USING (run_id, id)
    ORDER BY c.run_id, c.id, i.position
), sample_groups AS (
    INSERT INTO scatter_sample_state AS g (run_id, day, fraud, total, sampled, threshold)
    SELECT run_id, day, fraud, count(*), count(*), 1.0 FROM sample_rows GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    ON CONFLICT (run_id, day, fraud) DO UPDATE
    SET total = g.total + EXCLUDED.total,
        sampled = g.sampled + (SELECT count(*) FROM sample_rows r
                               WHERE r.run_id = g.run_id AND r.day = g.day AND r.fraud = g.fraud
                                 AND r.key < g.threshold)
    RETURNING g.run_id, g.day, g.fraud, g.threshold
), sampled AS (
    INSERT INTO scatter_sample (run_id, day, fraud, key, id, {_FEATURE_LIST}, label, score, recon_error, alert,
                                model_version)
    SELECT r.run_id, r.day, r.fraud, r.key, r.id, {", ".join(f"i.{name}" for name in FEATURE_COLUMNS)}, i.label,
           i.score, i.recon_error, i.alert, r.model_version
    FROM sample_rows r
    JOIN sample_groups g ON g.run_id = r.run_id AND g.day = r.day AND g.fraud = r.fraud
    JOIN input i ON i.position = r.position
    WHERE r.key < g.threshold
    ON CONFLICT DO NOTHING
)"""
_INPUT = f"{_INPUT_ONLY},{_NARROW_ROLLUPS},{_SCATTER_SAMPLE}"

INSERT_SCORED = f"WITH {_INPUT}\nSELECT count(*) FROM stored"

_OUTBOX = f"""outbox AS (
    INSERT INTO alert_outbox (run_id, id, payload)
    SELECT a.run_id, a.id, a.payload
    FROM unnest(${_ALERT_RUNS}::text[], ${_ALERT_IDS}::text[], ${_ALERT_PAYLOADS}::bytea[]) AS a(run_id, id, payload)
    JOIN stored s USING (run_id, id)
)"""
_ALREADY_STORED = (
    "SELECT i.position - 1 AS position FROM input i LEFT JOIN stored s USING (run_id, id) WHERE s.id IS NULL"
)

#: The scorer's write: rows, scores, the narrow rollups, the scatter's sample and the new
#: rows' alerts in one statement; returns the (0-based) positions of the rows that were already stored.
STORE_NEW = f"WITH {_INPUT}, {_OUTBOX}\n{_ALREADY_STORED}\n"
#: `STORE_NEW` without the narrow rollups and the scatter's sample: only `bench.scale`'s
#: rollup-free baseline.
STORE_NEW_WITHOUT_ROLLUPS = f"WITH {_INPUT_ONLY}, {_OUTBOX}\n{_ALREADY_STORED}\n"

_SHADOW_VERSION, _SHADOW_POSITIONS, _SHADOW_SCORE, _SHADOW_ERROR, _SHADOW_ALERT = range(_N + 12, _N + 17)

#: `STORE_NEW` with the shadow's scores of the newly stored rows (by 1-based position in the
#: batch): a redelivered row is not in `stored`, so it never gets a second shadow row.
STORE_NEW_WITH_SHADOW = f"""WITH {_INPUT}, {_OUTBOX}, shadowed AS (
    INSERT INTO shadow_scores (run_id, id, day, model_version, time, score, recon_error, would_alert, scored_at)
    SELECT i.run_id, i.id, s.day, ${_SHADOW_VERSION}, i.time, x.score, x.recon_error, x.would_alert, clock_timestamp()
    FROM unnest(${_SHADOW_POSITIONS}::int8[], ${_SHADOW_SCORE}::float8[], ${_SHADOW_ERROR}::float8[],
                ${_SHADOW_ALERT}::bool[]) AS x(position, score, recon_error, would_alert)
    JOIN input i USING (position)
    JOIN stored s USING (run_id, id)
    ON CONFLICT DO NOTHING
)
{_ALREADY_STORED}
"""

#: For rows `store_new` found already stored: is the stored content the same (features bit
#: for bit, label), and is its alert still waiting in the outbox. Compared in PostgreSQL, so
#: a redelivered batch sends its values once more instead of reading every stored row back.
STORED_ROWS = f"""
SELECT k.position,
       ({", ".join(f"t.{name}" for name in FEATURE_COLUMNS)}, t.label)
           IS NOT DISTINCT FROM ({", ".join(f"k.{name}" for name in FEATURE_COLUMNS)}, k.label) AS same,
       o.payload
FROM unnest($1::text[], $2::text[], $3::int4[], {", ".join(f"${i + 4}::float8[]" for i in range(_N))},
            ${_N + 4}::int2[]) AS k(run_id, id, position, {_FEATURE_LIST}, label)
JOIN transaction_keys d ON d.run_id = k.run_id AND d.id = k.id
JOIN transactions t ON t.run_id = k.run_id AND t.id = k.id AND t.day = d.day
LEFT JOIN alert_outbox o ON o.run_id = k.run_id AND o.id = k.id
"""

FORGET_ALERTS = """
DELETE FROM alert_outbox o USING unnest($1::text[], $2::text[]) AS k(run_id, id)
WHERE o.run_id = k.run_id AND o.id = k.id
"""

#: Alerts whose publisher never confirmed them (it died, and no redelivery came: the broker
#: lost the topic, say). Locked, so two workers sweeping at once do not both send one.
UNPUBLISHED_ALERTS = """
SELECT run_id, id, payload FROM alert_outbox
WHERE created_at < now() - make_interval(secs => $1)
ORDER BY created_at
LIMIT $2
FOR UPDATE SKIP LOCKED
"""

PARK_DEAD_LETTERS = """
INSERT INTO dead_letters (kind, reason, source_topic, source_partition, source_offset, key, value, headers)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int4[], $5::int8[], $6::bytea[], $7::bytea[],
                     $8::jsonb[])
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

    def __len__(self) -> int:
        return len(self.ids)

    def keys(self) -> list[str]:
        """The stored run id of each row ('' for live events)."""
        return [run_id or LIVE_RUN for run_id in self.run_ids]

    def take(self, rows: Sequence[int]) -> ScoredRows:
        """The rows at positions `rows`, in that order."""
        index = np.asarray(rows, dtype=np.intp)
        return ScoredRows(
            ids=[self.ids[i] for i in rows],
            features=self.features[index],
            labels=[self.labels[i] for i in rows],
            run_ids=[self.run_ids[i] for i in rows],
            produced_at=[self.produced_at[i] for i in rows],
            model_version=self.model_version,
            score=self.score[index],
            recon_error=self.recon_error[index],
            alert=self.alert[index],
        )


@dataclass(frozen=True, slots=True)
class ShadowScores:
    """The shadow version's scores of a batch's rows, aligned with its `ScoredRows`.

    `scored` marks the rows that have a shadow score: live rows the shadow scored to a
    finite value. Backtest rows (a run id) and rows the shadow could not score have none.
    """

    model_version: str
    score: np.ndarray
    recon_error: np.ndarray
    would_alert: np.ndarray
    scored: np.ndarray  # bool

    def __len__(self) -> int:
        return int(self.scored.size)

    @property
    def count(self) -> int:
        """How many rows have a shadow score."""
        return int(np.count_nonzero(self.scored))

    def take(self, rows: Sequence[int]) -> ShadowScores:
        """The rows at positions `rows`, in that order (as `ScoredRows.take`)."""
        index = np.asarray(rows, dtype=np.intp)
        return ShadowScores(
            self.model_version,
            self.score[index],
            self.recon_error[index],
            self.would_alert[index],
            self.scored[index],
        )


@dataclass(frozen=True, slots=True)
class StoredRow:
    """What PostgreSQL says of a row that was already stored."""

    same: bool  # the event carries exactly what is stored (features bit for bit, label)
    pending_alert: bytes | None  # its alert, while the broker has not acknowledged it


def _arguments(rows: ScoredRows) -> list:
    return [
        rows.keys(),
        list(rows.ids),
        *(rows.features[:, j].tolist() for j in range(_N)),
        list(rows.labels),
        list(rows.produced_at),
        rows.model_version,
        rows.score.tolist(),
        rows.recon_error.tolist(),
        rows.alert.tolist(),
    ]


async def store_scored(conn: asyncpg.Connection | asyncpg.Pool, rows: ScoredRows) -> int:
    """Insert the batch; return how many rows were new (the rest were already stored)."""
    if not len(rows.ids):
        return 0
    return int(await conn.fetchval(INSERT_SCORED, *_arguments(rows)))


async def store_new(
    conn: asyncpg.Connection | asyncpg.Pool,
    rows: ScoredRows,
    alerts: Mapping[int, bytes],
    shadow: ShadowScores | None = None,
    *,
    rollups: bool = True,
) -> list[int]:
    """Insert the batch, the alerts (row position -> payload) of its new rows and, with
    `shadow`, the shadow's scores of its new rows: one statement, one transaction.

    Returns the positions of the rows that were already stored: nothing of theirs is
    written (not even their alert or shadow score). Row keys must be unique within the batch.
    `rollups=False` leaves the narrow rollups and the scatter's sample out: only for
    `bench.scale`'s baseline.
    """
    if not len(rows.ids):
        return []
    keys = rows.keys()
    positions = list(alerts)
    arguments = [
        *_arguments(rows),
        [keys[i] for i in positions],
        [rows.ids[i] for i in positions],
        [alerts[i] for i in positions],
    ]
    if not rollups and shadow is not None:
        raise ValueError("rollups=False is the benchmark's baseline: it takes no shadow scores")
    if shadow is None or not shadow.count:
        records = await conn.fetch(STORE_NEW if rollups else STORE_NEW_WITHOUT_ROLLUPS, *arguments)
    else:
        if len(shadow) != len(rows):
            raise ValueError(f"{len(shadow)} shadow scores for a batch of {len(rows)} rows")
        scored = np.flatnonzero(shadow.scored)
        records = await conn.fetch(
            STORE_NEW_WITH_SHADOW,
            *arguments,
            shadow.model_version,
            (scored + 1).tolist(),
            shadow.score[scored].tolist(),
            shadow.recon_error[scored].tolist(),
            shadow.would_alert[scored].tolist(),
        )
    return [record["position"] for record in records]


async def stored_rows(
    conn: asyncpg.Connection | asyncpg.Pool, rows: ScoredRows, positions: Sequence[int]
) -> dict[int, StoredRow]:
    """For the rows at `positions` (those `store_new` found already stored): same content? alert pending?"""
    if not positions:
        return {}
    keys = rows.keys()
    index = np.asarray(positions, dtype=np.intp)
    features = rows.features[index]
    records = await conn.fetch(
        STORED_ROWS,
        [keys[i] for i in positions],
        [rows.ids[i] for i in positions],
        list(positions),
        *(features[:, j].tolist() for j in range(_N)),
        [rows.labels[i] for i in positions],
    )
    return {record["position"]: StoredRow(record["same"], record["payload"]) for record in records}


async def forget_alerts(conn: asyncpg.Connection | asyncpg.Pool, keys: Sequence[tuple[str, str]]) -> None:
    """Remove published alerts ((run_id, id) pairs) from the outbox."""
    if keys:
        await conn.execute(FORGET_ALERTS, [run_id for run_id, _ in keys], [id_ for _, id_ in keys])


async def unpublished_alerts(
    conn: asyncpg.Connection, older_than: float, limit: int
) -> list[tuple[str, str, bytes]]:
    """Outbox entries older than `older_than` seconds, locked until the caller's transaction ends."""
    records = await conn.fetch(UNPUBLISHED_ALERTS, float(older_than), int(limit))
    return [(record["run_id"], record["id"], record["payload"]) for record in records]


@dataclass(frozen=True, slots=True)
class ParkedLetter:
    """A dead letter the dead-letter topic would not take, as `dead_letters` keeps it."""

    kind: str
    reason: str
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: Sequence[tuple[str, bytes]]


def pg_text(text: str) -> str:
    """`text` as PostgreSQL can store it: NUL and unpaired surrogates written out as escapes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")


async def park_dead_letters(conn: asyncpg.Connection | asyncpg.Pool, letters: Sequence[ParkedLetter]) -> None:
    """Keep dead letters in PostgreSQL (one statement); their bytes as they came."""
    if not letters:
        return

    def headers(letter: ParkedLetter) -> str:
        text = {
            pg_text(name): pg_text(value.decode("utf-8", "backslashreplace"))
            for name, value in letter.headers
        }
        return orjson.dumps(text).decode()

    await conn.execute(
        PARK_DEAD_LETTERS,
        [letter.kind for letter in letters],
        [pg_text(letter.reason) for letter in letters],
        [pg_text(letter.topic) for letter in letters],
        [letter.partition for letter in letters],
        [letter.offset for letter in letters],
        [letter.key for letter in letters],
        [letter.value for letter in letters],
        [headers(letter) for letter in letters],
    )
