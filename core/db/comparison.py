"""Reads for the champion/challenger comparison: the rows two versions both scored, with their known label.

A live row has one champion score (`scores`) and at most one shadow score (`shadow_scores`),
so a pair of versions (a, b) scored a row together when one is its champion and the other
its shadow, either way round (before a promotion, and after it when the old champion is
made the shadow). Each way round is one indexed read: `ix_shadow_scores_version_time` gives
the window's shadow rows of one version newest first, and the primary keys of `scores` and
`transactions` the rest, so the work is bounded by the window and the row cap.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
import numpy as np

from core.comparison import ComparedRows


def known_label_sql() -> tuple[str, str]:
    """Where a row's known label comes from: (a JOIN clause on `t`, the label's expression).

    The `known_labels` view (migration 0008: the latest analyst or chargeback verdict, else the
    replayed one, else the inline label), read for this one row: the view's SQL function is
    inlined, so the row's keys reach each branch's `label_events` index as a probe.
    """
    return (
        "LEFT JOIN LATERAL (SELECT k.label FROM known_labels k "
        "WHERE k.run_id = t.run_id AND k.id = t.id LIMIT 1) k ON true",
        "k.label",
    )


def pair_query() -> str:
    """The read of one way round: $1 the champion's version, $2 the shadow's, $3..$4 the data-time window.

    The window's shadow rows come from `ix_shadow_scores_version_time`; each one's champion
    score and transaction by primary key (the `LATERAL ... LIMIT 1` keeps those lookups as
    index probes: a plain join over a wide window is planned as sequential scans and hash joins),
    with the row's data day, so each probe reaches its day's partition only.
    """
    join, label = known_label_sql()
    return f"""
SELECT x.id, x.time, t.amount, {label} AS label,
       s.score AS champion_score, s.alert AS champion_alert,
       x.score AS shadow_score, x.would_alert AS shadow_alert
FROM shadow_scores x
CROSS JOIN LATERAL (
    SELECT score, alert, model_version FROM scores WHERE run_id = x.run_id AND id = x.id AND day = x.day LIMIT 1
) s
CROSS JOIN LATERAL (
    SELECT run_id, id, amount, label FROM transactions WHERE run_id = x.run_id AND id = x.id AND day = x.day
    LIMIT 1
) t
{join}
WHERE x.run_id = '' AND x.model_version = $2 AND x.time >= $3 AND x.time <= $4
  AND s.model_version = $1 AND {label} IS NOT NULL
"""


#: The data time of the (cap + 1)-th newest shadow row of a version in the window, if there is one.
_CUT = """SELECT time FROM shadow_scores
WHERE run_id = '' AND model_version = $1 AND time >= $2 AND time <= $3
ORDER BY time DESC OFFSET $4 LIMIT 1"""


_NEWEST = "SELECT max(time) FROM shadow_scores WHERE run_id = '' AND model_version = $1"


@dataclass(frozen=True)
class PairRead:
    rows: ComparedRows
    truncated: bool  # a version had more than `max_rows` shadow rows in the window: it was cut
    time_from: float  # where the window starts (later than asked when truncated)


async def newest_shadow_time(conn: asyncpg.Connection, versions: tuple[str, str]) -> float | None:
    """The data time of the newest live row either version scored as the shadow (None: none)."""
    times = [await conn.fetchval(_NEWEST, version) for version in versions]
    known = [t for t in times if t is not None]
    return max(known) if known else None


async def read_pair(
    conn: asyncpg.Connection, a: str, b: str, time_from: float, time_to: float, max_rows: int
) -> PairRead:
    """The labelled live rows with data time in [time_from, time_to] scored by both a and b.

    At most `max_rows` shadow rows of each version are read: when the window holds more, it
    starts just after the newest row beyond the cap (`truncated`, `time_from` says where).
    """
    cuts = [await conn.fetchval(_CUT, version, time_from, time_to, max_rows) for version in (a, b)]
    cut = max((c for c in cuts if c is not None), default=None)
    if cut is not None:
        time_from = float(np.nextafter(cut, np.inf))
    query = pair_query()
    found = []
    for champion, shadow in ((a, b), (b, a)):
        records = await conn.fetch(query, champion, shadow, time_from, time_to)
        found += [(r, champion == a) for r in records]
    found.sort(key=lambda item: -item[0]["time"])

    def column(name_if_a: str, name_if_b: str, dtype: type) -> np.ndarray:
        return np.array(
            [r[name_if_a] if a_is_champion else r[name_if_b] for r, a_is_champion in found], dtype=dtype
        )

    rows = ComparedRows(
        ids=[r["id"] for r, _ in found],
        time=np.array([r["time"] for r, _ in found], dtype=np.float64),
        amount=np.array([r["amount"] for r, _ in found], dtype=np.float64),
        label=np.array([r["label"] for r, _ in found], dtype=np.int64),
        score_a=column("champion_score", "shadow_score", np.float64),
        score_b=column("shadow_score", "champion_score", np.float64),
        alert_a=column("champion_alert", "shadow_alert", bool),
        alert_b=column("shadow_alert", "champion_alert", bool),
    )
    return PairRead(rows, cut is not None, time_from)
