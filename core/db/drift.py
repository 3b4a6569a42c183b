"""Drift counts per hour of data: the live rows of one model version, counted into its reference bins.

    hours = await drift_counts(conn, version=v, reference=manifest["reference"], time_from=0, time_to=7200)
    core.drift.hour_drift(manifest["reference"], hours[0].counts, hours[0].rows, hours[0].alerts)

This is the one boundary drift is computed through. `drift_counts` folds the scores stored
since the last fold (`core.db.rollups`, migration 0014) and reads the rollups (migration
0009): `rollup_drift` (rows per run, version,
data hour, quantity and bin of the version's registered reference edges) and
`rollup_hours` (rows and alerts), two primary-key range reads whatever the history. Two
cases are counted from the stored rows instead, with the same bins (PostgreSQL's
`width_bucket`, as `core.drift.bin_counts`), through the `(run_id, time)` index of
`transactions` and the scores' primary key: the parts of the window that are not whole
hours, and hours the rollup cannot answer in full (rows stored before their version was
registered, so no reference bins then). `recent_counts` (the last minutes, by when rows
were scored) always counts stored rows: at most `MAX_RECENT_MINUTES` of them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from core.db.rollups import fold
from core.db.schema import LIVE_RUN

#: The widest window one call reads (96 hours of data: four days).
MAX_WINDOW_HOURS = 96
#: The longest live window (by when rows were scored): three hours.
MAX_RECENT_MINUTES = 180
SECONDS_PER_HOUR = 3600.0
#: Each watched input and the column it is stored in.
_FEATURE_COLUMNS = {**{f"V{i}": f"v{i}" for i in range(1, 29)}, "Amount": "amount"}
#: Every quantity drift is counted for (only these names ever reach the statement).
QUANTITY_COLUMNS = {**_FEATURE_COLUMNS, "recon_error": "recon_error", "score": "score"}


@dataclass(frozen=True, slots=True)
class HourCounts:
    """One hour of data: its rows and alerts, and each quantity's counts in the reference bins."""

    hour: int
    rows: int = 0
    alerts: int = 0
    counts: dict[str, list[int]] = field(default_factory=dict)


#: Which rows one statement counts, and how it names their bucket: hours of data in a window
#: (index `ix_transactions_run_time`, in the window's day partitions only), or every row
#: scored in the last minutes (index `ix_scores_run_scored`), as bucket 0. The other table is
#: read per row by its primary key (a lateral probe: a plain join is planned as a scan of the
#: whole other table), day included: the probe is pruned to the row's day partition, where
#: without it each row probed every day's partition (with months of days, most of the read).
_BY_DATA_HOUR = (
    f"floor(t.time / {SECONDS_PER_HOUR})::int",
    """transactions t CROSS JOIN LATERAL (
        SELECT s.score, s.recon_error, s.alert, s.model_version FROM scores s
        WHERE s.run_id = t.run_id AND s.id = t.id AND s.day = t.day OFFSET 0) AS s""",
    "t.run_id = $1 AND t.day BETWEEN data_day($2) AND data_day($3) AND t.time >= $2 AND t.time < $3 "
    "AND s.model_version = $4",
    5,
)
_RECENT = (
    "0",
    f"""scores s CROSS JOIN LATERAL (
        SELECT {", ".join(f"t.{c}" for c in _FEATURE_COLUMNS.values())} FROM transactions t
        WHERE t.run_id = s.run_id AND t.id = s.id AND t.day = s.day OFFSET 0) AS t""",
    "s.run_id = $1 AND s.scored_at >= now() - make_interval(secs => $2) AND s.model_version = $3",
    4,
)


def _statement(quantities: list[tuple[str, str]], bucket: str, rows: str, where: str, first_edge: int) -> str:
    values = ", ".join(
        f"('{name}', width_bucket({column}, ${i + first_edge}::float8[]))"
        for i, (name, column) in enumerate(quantities)
    )
    return f"""
WITH rows AS (
    SELECT {bucket} AS hour, {", ".join(f"t.{c}" for c in _FEATURE_COLUMNS.values())},
           s.score, s.recon_error, s.alert
    FROM {rows}
    WHERE {where}
)
SELECT hour, q.quantity, q.bin, count(*) AS n
FROM rows CROSS JOIN LATERAL (VALUES ('_alert', alert::int), {values}) AS q(quantity, bin)
GROUP BY hour, q.quantity, q.bin
"""


def _histograms(reference: Mapping[str, Any]) -> dict[str, Any]:
    """The reference's histograms of the quantities drift is counted for (only those names reach SQL)."""
    every = {**reference["features"], "recon_error": reference["recon_error"], "score": reference["score"]}
    return {name: histogram for name, histogram in every.items() if name in QUANTITY_COLUMNS}


async def _count(
    conn: asyncpg.Connection, histograms: dict[str, Any], shape: tuple[str, str, str, int], *arguments: Any
) -> list[HourCounts]:
    quantities = [(name, QUANTITY_COLUMNS[name]) for name in histograms]
    edges = [list(histograms[name]["edges"]) for name in histograms]
    records = await conn.fetch(_statement(quantities, *shape), *arguments, *edges)
    hours: dict[int, HourCounts] = {}
    for record in records:
        hour = hours.setdefault(record["hour"], HourCounts(record["hour"]))
        name, position, n = record["quantity"], record["bin"], record["n"]
        if name == "_alert":
            hours[hour.hour] = HourCounts(
                hour.hour, hour.rows + n, hour.alerts + (n if position == 1 else 0), hour.counts
            )
            continue
        bins = hour.counts.setdefault(name, [0] * (len(histograms[name]["edges"]) + 1))
        bins[position] += n
    return [hours[h] for h in sorted(hours)]


async def recent_counts(
    conn: asyncpg.Connection,
    *,
    version: str,
    reference: Mapping[str, Any],
    minutes: float,
    run_id: str = LIVE_RUN,
) -> HourCounts:
    """Every row `version` scored in the last `minutes` (wall clock), as one bucket (hour 0)."""
    if not 0 < minutes <= MAX_RECENT_MINUTES:
        raise ValueError(f"the live window is 0 to {MAX_RECENT_MINUTES} minutes, got {minutes}")
    counted = await _count(conn, _histograms(reference), _RECENT, run_id, minutes * 60.0, version)
    return counted[0] if counted else HourCounts(0)


#: Rows and alerts per data hour of one version (`rollup_hours`: primary key range on run, hour).
_ROLLUP_HOURS = """
SELECT hour, sum(scored) AS rows, sum(alerts) AS alerts FROM rollup_hours
WHERE run_id = $1 AND hour >= $2 AND hour < $3 AND model_version = $4
GROUP BY hour HAVING sum(scored) > 0"""
#: Counts per data hour, quantity and reference bin of one version (`rollup_drift`'s primary key).
_ROLLUP_DRIFT = """
SELECT hour, quantity, bin, n FROM rollup_drift
WHERE run_id = $1 AND model_version = $4 AND hour >= $2 AND hour < $3 AND quantity = ANY($5::text[]) AND n <> 0"""


async def _from_rollups(
    conn: asyncpg.Connection, histograms: dict[str, Any], run_id: str, version: str, first: int, end: int
) -> tuple[list[HourCounts], list[int]]:
    """The whole hours `[first, end)` from the rollups, and the hours they do not answer in full."""
    columns = {QUANTITY_COLUMNS[name]: name for name in histograms}
    totals = {r["hour"]: r for r in await conn.fetch(_ROLLUP_HOURS, run_id, first, end, version)}
    counts: dict[int, dict[str, list[int]]] = {
        hour: {name: [0] * (len(histograms[name]["edges"]) + 1) for name in histograms} for hour in totals
    }
    incomplete: set[int] = set()
    for r in await conn.fetch(_ROLLUP_DRIFT, run_id, first, end, version, list(columns)):
        bins = counts.get(r["hour"], {}).get(columns[r["quantity"]])
        if bins is None or not 0 <= r["bin"] < len(bins):  # edges other than the reference's
            incomplete.add(r["hour"])
            continue
        bins[r["bin"]] += r["n"]
    complete = []
    for hour, total in sorted(totals.items()):
        if hour in incomplete or any(sum(bins) != total["rows"] for bins in counts[hour].values()):
            incomplete.add(hour)
            continue
        complete.append(HourCounts(hour, int(total["rows"]), int(total["alerts"]), counts[hour]))
    return complete, sorted(incomplete)


async def drift_counts(
    conn: asyncpg.Connection,
    *,
    version: str,
    reference: Mapping[str, Any],
    time_from: float,
    time_to: float,
    run_id: str = LIVE_RUN,
) -> list[HourCounts]:
    """Per hour of data in `[time_from, time_to)`: rows, alerts and reference-bin counts (hours with rows)."""
    if not time_to > time_from:
        raise ValueError(f"time_to must be after time_from, got [{time_from}, {time_to})")
    if time_to - time_from > MAX_WINDOW_HOURS * SECONDS_PER_HOUR:
        raise ValueError(f"a drift window is at most {MAX_WINDOW_HOURS} hours of data")
    histograms = _histograms(reference)
    first, end = math.ceil(time_from / SECONDS_PER_HOUR), math.floor(time_to / SECONDS_PER_HOUR)
    if first >= end:  # no whole hour in the window
        return await _count(conn, histograms, _BY_DATA_HOUR, run_id, time_from, time_to, version)
    await fold(conn)  # rows committed before this call are in rollup_drift, as in rollup_hours
    hours, recount = await _from_rollups(conn, histograms, run_id, version, first, end)
    stretches = [(time_from, first * SECONDS_PER_HOUR), (end * SECONDS_PER_HOUR, time_to)]
    stretches += [(h * SECONDS_PER_HOUR, (h + 1) * SECONDS_PER_HOUR) for h in recount]
    for low, high in stretches:
        if high > low:
            hours += await _count(conn, histograms, _BY_DATA_HOUR, run_id, low, high, version)
    return sorted(hours, key=lambda counted: counted.hour)  # the stretches are disjoint hours
