"""Storing verdicts and reading the known labels: one statement for every writer.

The scorer's labels agent stores each batch of the `labels` topic with `store_labels`, and
the API stores a review with the very same statement before it answers (so the next
queue read sees it), so a verdict that reaches PostgreSQL both ways is stored once: the
statement inserts into `label_events` with ON CONFLICT (label_id) DO NOTHING, and only
the events it really inserted go on to `feedback`, the latest verdict per
`(run_id, transaction_id, source)`: a newer `decided_at` (then a greater `label_id`)
replaces the one there; an older or redelivered verdict changes nothing.

`store_labels` answers which events were already stored; `stored_labels` reads those
back, so the caller can tell a redelivery (the same verdict: `LabelEvent.same_verdict`)
from a conflict (another verdict under a used `label_id`: the stored one is kept).

`known_label_rows` reads a run's scored rows with their known label, through the one
definition of it (the view `known_labels`, migration 0008).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg
import numpy as np

from core.labels import LabelEvent, LabelSource

STORE_LABELS = """
WITH input AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int2[], $5::text[], $6::text[],
                         $7::text[], $8::float8[], $9::text[])
        WITH ORDINALITY AS t(label_id, run_id, transaction_id, label, source, who, note, decided_at,
                             submitted_by, position)
), stored AS (
    INSERT INTO label_events (label_id, run_id, transaction_id, label, source, who, note, decided_at,
                              submitted_by)
    SELECT label_id, run_id, transaction_id, label, source, who, note, to_timestamp(decided_at), submitted_by
    FROM input
    ON CONFLICT (label_id) DO NOTHING
    RETURNING label_id, run_id, transaction_id, label, source, who, note, decided_at
), latest AS (
    INSERT INTO feedback AS f (run_id, transaction_id, source, label, label_id, who, note, decided_at)
    SELECT DISTINCT ON (run_id, transaction_id, source)
           run_id, transaction_id, source, label, label_id, who, note, decided_at
    FROM stored
    ORDER BY run_id, transaction_id, source, decided_at DESC, label_id DESC
    ON CONFLICT (run_id, transaction_id, source) DO UPDATE
        SET label = EXCLUDED.label, label_id = EXCLUDED.label_id, who = EXCLUDED.who, note = EXCLUDED.note,
            decided_at = EXCLUDED.decided_at, updated_at = now()
        WHERE (f.decided_at, f.label_id) < (EXCLUDED.decided_at, EXCLUDED.label_id)
)
SELECT i.position - 1 AS position FROM input i LEFT JOIN stored s USING (label_id) WHERE s.label_id IS NULL
"""

STORED_LABELS = """
SELECT label_id, transaction_id, run_id, label, source, who, note, extract(epoch FROM decided_at) AS decided_at,
       submitted_by
FROM label_events WHERE label_id = ANY($1::text[])
"""

#: A run's scored rows that have a known label, with what the savings and metrics need.
KNOWN_LABEL_ROWS = """
SELECT k.label, s.score, t.amount, t.time
FROM known_labels k
JOIN scores s ON s.run_id = k.run_id AND s.id = k.id
JOIN transactions t ON t.run_id = k.run_id AND t.id = k.id
WHERE k.run_id = $1
"""


def _arguments(events: Sequence[LabelEvent]) -> list[list]:
    return [
        [e.label_id for e in events],
        [e.run_id for e in events],
        [e.transaction_id for e in events],
        [e.label for e in events],
        [e.source.value for e in events],
        [e.who for e in events],
        [e.note for e in events],
        [e.decided_at for e in events],
        [e.submitted_by for e in events],
    ]


async def store_labels(conn: asyncpg.Connection | asyncpg.Pool, events: Sequence[LabelEvent]) -> list[int]:
    """Store the verdicts (history, and the latest per source); the positions of those already stored.

    Label ids must be unique within the call (the agent stores repeats in rounds).
    """
    if not events:
        return []
    records = await conn.fetch(STORE_LABELS, *_arguments(events))
    return [record["position"] for record in records]


async def stored_labels(
    conn: asyncpg.Connection | asyncpg.Pool, label_ids: Sequence[str]
) -> dict[str, LabelEvent]:
    """The stored verdicts with these ids (the ones `store_labels` found already there)."""
    if not label_ids:
        return {}
    records = await conn.fetch(STORED_LABELS, list(label_ids))
    return {
        r["label_id"]: LabelEvent(
            label_id=r["label_id"],
            transaction_id=r["transaction_id"],
            run_id=r["run_id"],
            label=r["label"],
            source=LabelSource(r["source"]),
            who=r["who"],
            note=r["note"],
            decided_at=float(r["decided_at"]),
            submitted_by=r["submitted_by"],
        )
        for r in records
    }


@dataclass(frozen=True, slots=True)
class LabelledRows:
    """A run's scored rows with a known label, column-wise."""

    labels: np.ndarray  # 0/1
    scores: np.ndarray
    amounts: np.ndarray
    times: np.ndarray  # data time, seconds

    def __len__(self) -> int:
        return int(self.labels.size)


async def known_label_rows(conn: asyncpg.Connection, run_id: str) -> LabelledRows:
    """The run's scored rows whose label is known (reviews and chargebacks over inline labels)."""
    rows = await conn.fetch(KNOWN_LABEL_ROWS, run_id)
    if not rows:
        empty = np.empty(0)
        return LabelledRows(empty, empty, empty, empty)
    data = np.array([tuple(row) for row in rows], dtype=np.float64)
    return LabelledRows(data[:, 0], data[:, 1], data[:, 2], data[:, 3])
