"""Row-level tables partitioned by data day (migration 0013), and the pass that keeps them.

Layout, the same for `transactions`, `scores` and `shadow_scores`:

    <table>                  PARTITION BY LIST (run_id)
      <table>_live           FOR VALUES IN ('')  PARTITION BY RANGE (day)
        <table>_day_<d>      FOR VALUES FROM (d) TO (d + 1), one per data day
        <table>_live_default DEFAULT: rows of a day without its partition (never a failed write)
      <table>_runs           DEFAULT: every backtest run, never touched by retention

The data day of a row is `data_day(time)` (the SQL function below, the one definition):
`floor(time / 86400)`, the day of the transaction's data time, in which the hour-of-data
rollups (`floor(time / 3600)`) also count. A score's day is its transaction's.

Because a partitioned table's unique keys must hold the partition key, the primary keys
are `(run_id, id, day)`; `transaction_keys(run_id, id)` (unpartitioned, narrow) is what
makes an id unique across days: the write inserts there first, so an event with a known
id, whatever its time, is "already stored" and the writer's content check tells a
redelivery from a conflict.

`maintain` is one pass of the maintenance task: move rows out of the default partitions
into their days' partitions, create the next days' partitions, and drop the live days
beyond retention (`DROP TABLE` of each table's day partition, with that day's keys,
review-queue entries and scatter sample; its scores not folded into the wide rollups yet are folded first,
`rollup_fold_day`, migration 0014). One instance acts at a time (an advisory lock); DDL waits at most
`LOCK_TIMEOUT` for the tables' locks and is tried again at the next pass, so writers never
queue behind it for long.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import asyncpg

log = logging.getLogger(__name__)

#: The data day of a data time (seconds): the one definition, used by the migration (moving
#: existing rows), the writer (`core.db.store`) and so the maintenance task (rows carry it).
DATA_DAY_FUNCTION = """
CREATE OR REPLACE FUNCTION data_day(data_time float8) RETURNS int4
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE WHEN data_time >= 0 AND data_time < 86400 THEN 0
            WHEN data_time < 0 AND data_time >= -86400 THEN -1
            ELSE floor(data_time / 86400.0)::int4 END
"""
# The first day apart: PostgreSQL refuses a division whose result underflows (a subnormal
# time such as 5e-324, which validation lets through), and that would refuse the whole write.

#: Seconds of data time in a data day (as in `DATA_DAY_FUNCTION`).
DAY_SECONDS = 86_400

#: The tables partitioned by data day, in the order rows are written.
PARTITIONED: tuple[str, ...] = ("transactions", "scores", "shadow_scores")

#: Days created ahead of the newest data day seen.
DAYS_AHEAD = 3

#: A day with rows more than this many days after every other is a stray, not the newest.
STRAY_GAP = 7

#: Longest wait for a table lock in a DDL step (writers queue behind a waiting DDL).
LOCK_TIMEOUT = "2s"

#: `pg_try_advisory_lock` key: one maintenance pass at a time, whichever process runs it.
MAINTENANCE_LOCK = 0x6672_6175_6401  # "fraud" + 1

_DAY_NAME = re.compile(r"^(?P<table>[a-z_]+?)_day_(?P<sign>m?)(?P<day>\d+)$")


def live_table(table: str) -> str:
    return f"{table}_live"


def runs_table(table: str) -> str:
    return f"{table}_runs"


def default_table(table: str) -> str:
    return f"{table}_live_default"


def day_table(table: str, day: int) -> str:
    """The partition holding `table`'s live rows of data day `day`."""
    return f"{table}_day_{day}" if day >= 0 else f"{table}_day_m{-day}"


def day_of(name: str) -> int | None:
    """The data day of a day partition's name, None for any other name."""
    match = _DAY_NAME.match(name)
    if match is None or match["table"] not in PARTITIONED:
        return None
    return -int(match["day"]) if match["sign"] else int(match["day"])


def is_partition(name: str) -> bool:
    """Whether `name` is one of the partitions above (not a table of `core.db.schema`)."""
    return day_of(name) is not None or any(
        name in (live_table(t), runs_table(t), default_table(t)) for t in PARTITIONED
    )


def create_day_sql(table: str, day: int) -> str:
    return (
        f"CREATE TABLE IF NOT EXISTS {day_table(table, day)} PARTITION OF {live_table(table)} "
        f"FOR VALUES FROM ({day}) TO ({day + 1})"
    )


def layout_sql(table: str) -> list[str]:
    """The sub-partitions of a new partitioned `table` (no day partitions)."""
    return [
        f"CREATE TABLE {live_table(table)} PARTITION OF {table} FOR VALUES IN ('') PARTITION BY RANGE (day)",
        f"CREATE TABLE {default_table(table)} PARTITION OF {live_table(table)} DEFAULT",
        f"CREATE TABLE {runs_table(table)} PARTITION OF {table} DEFAULT",
    ]


# --------------------------------------------------------------------------- the maintenance pass


@dataclass
class MaintenanceReport:
    """What one pass did (or why it did nothing)."""

    acted: bool = True  # False: another instance holds the lock
    newest_day: int | None = None
    created: list[str] = field(default_factory=list)
    moved: dict[str, int] = field(default_factory=dict)  # partition -> rows moved into it
    dropped: list[str] = field(default_factory=list)
    dropped_days: list[int] = field(default_factory=list)
    deferred: list[str] = field(default_factory=list)  # steps that could not get their locks

    def lines(self) -> list[str]:
        """Human-readable, one line per action (what `fraudstream maintenance --once` prints)."""
        if not self.acted:
            return ["another maintenance pass holds the lock: nothing done"]
        out = [f"newest live data day: {'none' if self.newest_day is None else self.newest_day}"]
        out += [f"moved {n} rows out of the default partition into {name}" for name, n in self.moved.items()]
        out += [f"created {name}" for name in self.created]
        out += [f"dropped {name}" for name in self.dropped]
        out += [f"deferred (lock not granted): {step}" for step in self.deferred]
        if len(out) == 1:
            out.append("nothing to do")
        return out


async def live_days(conn: asyncpg.Connection, table: str) -> list[int]:
    """The data days that have a partition of `table`, ascending."""
    names = await conn.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = to_regclass($1)",
        live_table(table),
    )
    return sorted(day for day in (day_of(row["relname"]) for row in names) if day is not None)


async def newest_day(conn: asyncpg.Connection) -> int | None:
    """The newest data day of the live run: the newest day with rows that has another day with
    rows within `STRAY_GAP` days before it (or the only day with rows).

    One event with a wild data time (valid, but years ahead) makes a lone non-empty day far
    from the rest: counting it as the newest would make retention drop every real day.
    """
    days = set(await live_days(conn, "transactions"))
    filled = [
        day
        for day in sorted(days, reverse=True)
        if await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {day_table('transactions', day)})")
    ]
    filled += [
        row["day"] for row in await conn.fetch(f"SELECT DISTINCT day FROM {default_table('transactions')}")
    ]
    filled = sorted(set(filled), reverse=True)
    if len(filled) <= 1:
        return filled[0] if filled else None
    for newer, older in zip(filled, filled[1:], strict=False):
        if newer - older <= STRAY_GAP:
            return newer
        log.warning(
            "maintenance: data day %d is %d days from any other: not taken as the newest",
            newer,
            newer - older,
        )
    return filled[-1]


async def ensure_days(conn: asyncpg.Connection, days: Sequence[int]) -> list[str]:
    """Create the partitions of `days` (live run) that are missing, in every table; their names.

    For writers that know the days they are about to write (a bulk load, the benchmark):
    without it their rows land in the default partitions until the next maintenance pass.
    """
    created = []
    for table in PARTITIONED:
        have = set(await live_days(conn, table))
        for day in sorted(set(days) - have):
            await conn.execute(create_day_sql(table, day))
            created.append(day_table(table, day))
    return created


async def _ddl(
    conn: asyncpg.Connection, report: MaintenanceReport, step: str, statements: Sequence[str]
) -> bool:
    """Run `statements` in one transaction with a bounded lock wait; False if a lock was not granted."""
    try:
        async with conn.transaction():
            await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
            for statement in statements:
                await conn.execute(statement)
    except asyncpg.LockNotAvailableError:
        report.deferred.append(step)
        log.warning("maintenance: %s deferred to the next pass (a table lock was not granted)", step)
        return False
    return True


async def _move_out_of_default(conn: asyncpg.Connection, table: str, report: MaintenanceReport) -> None:
    """Give each day found in `table`'s default partition its own partition, rows moved in.

    PostgreSQL will not create a day's partition while the default holds rows of that day,
    so the default is detached, the rows moved (straight between partitions: the parent's
    statement triggers, i.e. the rollups and totals, do not see a move) and it is attached
    again, in one transaction.
    """
    default = default_table(table)
    days = [row["day"] for row in await conn.fetch(f"SELECT DISTINCT day FROM {default} ORDER BY day")]
    if not days:
        return
    columns = ", ".join(
        f'"{row["attname"]}"'
        for row in await conn.fetch(
            "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass($1) AND attnum > 0 "
            "AND NOT attisdropped ORDER BY attnum",
            table,
        )
    )
    statements = [f"ALTER TABLE {live_table(table)} DETACH PARTITION {default}"]
    for day in days:
        statements.append(create_day_sql(table, day))
        statements.append(
            f"WITH moved AS (DELETE FROM {default} WHERE day = {day} RETURNING {columns}) "
            f"INSERT INTO {day_table(table, day)} ({columns}) SELECT {columns} FROM moved"
        )
    statements.append(f"ALTER TABLE {live_table(table)} ATTACH PARTITION {default} DEFAULT")
    counts = {
        day_table(table, row["day"]): row["n"]
        for row in await conn.fetch(f"SELECT day, count(*) AS n FROM {default} GROUP BY day")
    }
    if await _ddl(conn, report, f"moving {default}'s rows", statements):
        report.moved.update(counts)


async def _drop_day(conn: asyncpg.Connection, day: int, report: MaintenanceReport) -> None:
    """Drop one live data day from every partitioned table, its keys, queued reviews and
    scatter sample with it."""
    statements = []
    scores = day_table("scores", day)
    transactions = day_table("transactions", day)
    existing = {t for t in PARTITIONED if day in await live_days(conn, t)}
    if "scores" in existing:
        # the day's scores not folded yet go into the folded rollups first (migration 0014):
        # with its partitions locked no writer of that day is still open, so all are there
        statements.append(f"LOCK TABLE {scores} IN ACCESS EXCLUSIVE MODE")
        if "transactions" in existing:
            statements.append(f"LOCK TABLE {transactions} IN ACCESS EXCLUSIVE MODE")
        statements.append(f"SELECT rollup_fold_day({day})")
        statements.append(f"DELETE FROM review_queue q USING {scores} s WHERE q.transaction_id = s.id")
        statements.append(f"DELETE FROM alert_keys WHERE run_id = '' AND day = {int(day)}")
    if "transactions" in existing:
        statements.append(
            f"DELETE FROM transaction_keys k USING {transactions} t WHERE k.run_id = '' AND k.id = t.id"
        )
        statements.append(
            f"INSERT INTO data_days_dropped (day, transactions) SELECT {day}, count(*) FROM {transactions} "
            "ON CONFLICT (day) DO UPDATE SET dropped_at = now(), "
            "transactions = data_days_dropped.transactions + EXCLUDED.transactions"
        )
    if statements:
        # the day's share of the scatter's sample (0022): the sample of the days kept stays
        # the bottom-k of what is kept, so it stays uniform over the retained rows
        statements.append(f"DELETE FROM scatter_sample WHERE run_id = '' AND day = {day}")
        statements.append(f"DELETE FROM scatter_sample_state WHERE run_id = '' AND day = {day}")
    names = [day_table(t, day) for t in PARTITIONED if t in existing]
    for table in PARTITIONED:
        if table in existing:
            statements.append(f"ALTER TABLE {live_table(table)} DETACH PARTITION {day_table(table, day)}")
            statements.append(f"DROP TABLE {day_table(table, day)}")
    if statements and await _ddl(conn, report, f"dropping data day {day}", statements):
        report.dropped += names
        report.dropped_days.append(day)


async def maintain(
    conn: asyncpg.Connection, retention_days: int | None, days_ahead: int = DAYS_AHEAD
) -> MaintenanceReport:
    """One maintenance pass (see the module's docstring); `retention_days` None or 0 keeps all."""
    if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", MAINTENANCE_LOCK):
        return MaintenanceReport(acted=False)
    report = MaintenanceReport()
    try:
        for table in PARTITIONED:
            await _move_out_of_default(conn, table, report)
        newest = await newest_day(conn)
        report.newest_day = newest
        start = 0 if newest is None else newest
        for table in PARTITIONED:
            have = set(await live_days(conn, table))
            wanted = [day for day in range(start, start + days_ahead + 1) if day not in have]
            if wanted and await _ddl(
                conn, report, f"creating {table}'s days", [create_day_sql(table, day) for day in wanted]
            ):
                report.created += [day_table(table, day) for day in wanted]
        if retention_days and newest is not None:
            cutoff = newest - retention_days + 1  # days before it are beyond retention
            old = sorted(
                {day for table in PARTITIONED for day in await live_days(conn, table) if day < cutoff}
            )
            for day in old:
                await _drop_day(conn, day, report)
        await conn.execute(
            "INSERT INTO maintenance_state (id, last_run_at, newest_day, created, moved, dropped, deferred) "
            "VALUES (true, now(), $1, $2, $3, $4, $5) ON CONFLICT (id) DO UPDATE SET "
            "last_run_at = now(), newest_day = $1, created = $2, moved = $3, dropped = $4, deferred = $5",
            newest,
            len(report.created),
            sum(report.moved.values()),
            len(report.dropped),
            len(report.deferred),
        )
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MAINTENANCE_LOCK)
    return report


async def retained_from(conn: asyncpg.Connection | asyncpg.Pool) -> int | None:
    """The first live data day still kept after a retention drop, None if no day was ever dropped."""
    dropped = await conn.fetchval("SELECT max(day) FROM data_days_dropped")
    return None if dropped is None else int(dropped) + 1


def beyond_retention(first_kept_day: int) -> str:
    """What the API says of live rows it no longer has because retention dropped their day."""
    return (
        f"beyond retention: the live run keeps row-level data from data day {first_kept_day} on "
        f"(data time >= {first_kept_day * DAY_SECONDS} s, FRAUDSTREAM_RETENTION_DAYS); older days "
        "were dropped (their counts stay in the rollups)"
    )
