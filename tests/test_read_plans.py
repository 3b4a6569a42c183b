"""Every analytics read is planned as rollup reads or index range scans, never a scan of the history.

A database is filled with 300,000 scored rows (the rollups kept by their triggers, a tenth
of a percent of them with verdicts, a backtest run beside the live one) and ANALYZEd; then
each statement the analytics GETs run is EXPLAINed with the values a request would bind.
A sequential scan of `transactions` or `scores` (or of any of their partitions) fails the
test: its cost grows with the history (a page bounded by a data-time range may scan the
partitions of its own days, and no others: `DAYS_READ`). The keyset pages, the alerts, the review queue
and the single-row lookups must also read `scores`/`transactions` through an index.

The fold of the wide rollups (`rollup_fold()`, migration 0014) is PL/pgSQL: its statements
are planned as it runs them, so they are captured by `auto_explain` (nested statements, sent
to the client as notices) while it folds a few new rows on top of the 300,000 folded ones.
"""

from __future__ import annotations

import asyncio
import re
from datetime import timedelta

import asyncpg
import pytest
from sqlalchemy.dialects.postgresql import asyncpg as asyncpg_dialect
from sqlalchemy.sql import Select

from api import queries
from api import review_queries as rq
from core.db import drift
from core.db.partitions import ensure_days
from core.db.schema import LIVE_RUN

pytestmark = pytest.mark.timeout(600)

ROWS = 300_000
DAYS = int(ROWS * 0.6 // 86_400) + 1  # the data days the rows span (time = g * 0.6 s)
BACKTEST = "bt-plans"
VERSION = "d4" * 32
DIALECT = asyncpg_dialect.dialect()
SCAN_OF_HISTORY = re.compile(r"Seq Scan on ((?:transactions|scores)\w*)")
INDEX_READ = re.compile(
    r"(Index (Only )?Scan|Bitmap Index Scan)( Backward)? (using \w+ )?on (transactions|scores)\w*"
)

_INPUTS = ", ".join(f"v{i}" for i in range(1, 29))
# The rows were scored up to a minute before the fill: the live-minutes window ("the last N
# minutes of wall clock") then holds a stream's share of a day, not a third of the small last
# day of this fill (which a scan of that day rightly beats). Before 0014 the fill's insert was
# slow enough to leave the window empty by itself.
FILL = [
    f"""INSERT INTO transaction_keys (run_id, id, day)
    SELECT CASE WHEN g % 10 = 0 THEN '{BACKTEST}' ELSE '' END, 'p' || g, data_day(g * 0.6)
    FROM generate_series(1, {ROWS}) g""",
    f"""INSERT INTO transactions (run_id, id, day, time, {_INPUTS}, amount, label)
    SELECT CASE WHEN g % 10 = 0 THEN '{BACKTEST}' ELSE '' END, 'p' || g, data_day(g * 0.6), g * 0.6,
           {", ".join(f"sin(g * {i}.7) * 3" for i in range(1, 29))}, (g % 997) * 1.3,
           CASE WHEN g % 577 = 0 THEN 1 WHEN g % 13 = 0 THEN NULL ELSE 0 END
    FROM generate_series(1, {ROWS}) g""",
    f"""INSERT INTO scores (run_id, id, day, model_version, score, recon_error, alert, scored_at, latency_ms, fraud)
    SELECT CASE WHEN g % 10 = 0 THEN '{BACKTEST}' ELSE '' END, 'p' || g, data_day(g * 0.6), '{VERSION}',
           CASE WHEN g % 577 = 0 THEN 0.9 ELSE (g % 1000) / 1200.0 END, (g % 101) / 7.0,
           g % 577 = 0 OR g % 1000 > 995, now() - interval '1 minute' - ({ROWS} - g) * interval '12 ms',
           3 + g % 40, g % 577 = 0
    FROM generate_series(1, {ROWS}) g""",
    # the scatter's sample of those rows, as migration 0022 fills it (the writer keeps it after)
    f"SELECT scatter_sample_rebuild(r, array(SELECT generate_series(0, {DAYS}))) FROM unnest(ARRAY['', '{BACKTEST}']) r",
    """INSERT INTO label_events (label_id, run_id, transaction_id, label, source, who, decided_at)
    SELECT 'plan-' || g, '', 'p' || g, (g % 3 = 0)::int, CASE WHEN g % 7 = 0 THEN 'chargeback' ELSE 'analyst' END,
           'ann', now() - g * interval '1 s'
    FROM generate_series(1, 300000, 997) g WHERE g % 10 <> 0""",
    "ANALYZE",
]


def _bound(statement: Select) -> tuple[str, list]:
    """The statement's SQL and its values in order, as the API's driver (asyncpg) sends them."""
    compiled = statement.compile(dialect=DIALECT, compile_kwargs={"render_postcompile": True})
    return compiled.string, [compiled.params[name] for name in compiled.positiontup]


def _statements(
    newest, since, some_ids: list[str], newest_alerts: list[tuple[str, int]]
) -> dict[str, tuple[str, list]]:
    v14, v17 = queries.FEATURES["v14"], queries.FEATURES["v17"]
    minute = timedelta(minutes=1)
    after = (newest, "p299999")
    built: dict[str, Select] = {
        # /api/stats, /api/stats/timeseries
        "run totals": queries.run_totals(LIVE_RUN),
        "watermark": queries.watermark(LIVE_RUN),
        "stats window": queries.window_rollup(LIVE_RUN, since),
        "stats latency": queries.latency_rollup(LIVE_RUN, since),
        "timeseries": queries.timeseries(LIVE_RUN, since, minute),
        "timeseries latency": queries.latency_rollup(LIVE_RUN, since, minute),
        "true alerts": queries.true_alerts_rollup(LIVE_RUN),
        # /api/distributions/*
        "histogram": queries.histogram_rollup(LIVE_RUN, "v14"),
        "hours": queries.hours_rollup(LIVE_RUN),
        # /api/model/performance, /api/models
        "score rollup": queries.score_rollup(LIVE_RUN),
        "in-sample score rollup": queries.in_sample_score_rollup(LIVE_RUN),
        "models": queries.model_version_list(),
        # /api/backtests
        "backtest count": queries.run_counter(BACKTEST, "scored"),
        # /api/transactions, /api/anomalies, /api/alerts: keyset pages
        "page": queries.transaction_page(queries.ListFilter(LIVE_RUN), 100, None, True),
        "page after": queries.transaction_page(queries.ListFilter(LIVE_RUN), 100, after, True),
        "frauds page": queries.transaction_page(queries.ListFilter(LIVE_RUN, label=1), 100, None, True),
        "frauds page after": queries.transaction_page(
            queries.ListFilter(LIVE_RUN, label=1), 100, after, True
        ),
        # the alert list: keys from `alert_keys` (0021), then the rows of the page's days only
        "alerts page": queries.alert_page(LIVE_RUN, 100, None),
        "alerts page after": queries.alert_page(LIVE_RUN, 100, after),
        "alert rows": queries.listed_rows(LIVE_RUN, newest_alerts, True),
        "alerts filtered page": queries.transaction_page(
            queries.ListFilter(LIVE_RUN, alert=True, time_from=1000.0), 100, None, True
        ),
        "backtest page": queries.transaction_page(queries.ListFilter(BACKTEST), 100, None, False),
        "high scores page": queries.transaction_page(
            queries.ListFilter(LIVE_RUN, score_min=0.95), 100, None, False
        ),
        "data time page": queries.transaction_page(
            queries.ListFilter(LIVE_RUN, time_from=1000.0, time_to=5000.0), 100, None, False
        ),
        # single rows: the alerts' inputs (to explain them)
        "lookup": queries.raw_features(LIVE_RUN, some_ids),
        # /api/scatter: the smallest keys per class of the sample kept by the write path (0022)
        "scatter": queries.scatter_points(v14, v17, LIVE_RUN, 250, 250),
        # /api/review/queue, /api/feedback/summary
        **{f"queue by {name}": rq.queue_page(order, 50, None) for name, order in rq.ORDERS.items()},
        "queue after": rq.queue_page(rq.ORDERS["score"], 50, (0.99, "p5")),
        "backlog": rq.backlog(),
        "reviewed": rq.reviewed(),
        "reviewed by hour": rq.reviewed(since, by_hour=True),
        "chargebacks": rq.chargebacks(),
        "chargebacks by hour": rq.chargebacks(since, by_hour=True),
        "reviewers": rq.reviewers(since),
        "live alerts": rq.live_alerts(),
        # /api/model/savings (0017): the rollup, one fixed bin split at a threshold, the known span
        "savings rollup": rq.savings_rollup(LIVE_RUN),
        "savings split": rq.scored_between(LIVE_RUN, 0.8905, 0.891),
        "known hours": rq.known_hours(LIVE_RUN),
        "first known time": rq.known_time_in_hour(LIVE_RUN, 3, last=False),
        "last known time": rq.known_time_in_hour(LIVE_RUN, 40, last=True),
    }
    out = {name: _bound(statement) for name, statement in built.items()}
    # /api/drift: whole hours from the rollups, partial hours and the live minutes from the rows
    edges = [[-1.0, 0.0, 1.0]] * len(drift.QUANTITY_COLUMNS)
    quantities = list(drift.QUANTITY_COLUMNS.items())
    hour = drift._BY_DATA_HOUR
    recent = drift._RECENT
    out["drift hours"] = (drift._ROLLUP_HOURS, [LIVE_RUN, 10, 30, VERSION])
    out["drift counts"] = (drift._ROLLUP_DRIFT, [LIVE_RUN, 10, 30, VERSION, ["v14", "score"]])
    out["drift partial hour"] = (
        drift._statement(quantities, *hour),
        [LIVE_RUN, 36_000.0, 37_800.0, VERSION, *edges],
    )
    out["drift live minutes"] = (drift._statement(quantities, *recent), [LIVE_RUN, 60.0, VERSION, *edges])
    return out


#: Statements that read single rows or pages: they must go through an index of scores/transactions.
INDEXED = (
    "page",
    "frauds page",
    "alert rows",
    "alerts filtered page",
    "backtest page",
    "high scores page",
    "data time page",
    "lookup",
    "queue by",
    "queue after",
    "drift partial hour",
    "savings split",
    "first known time",
    "last known time",
    "drift live minutes",
    "fold",
)


#: Statements bounded by a data-time range (1,000-5,000 s: day 0): they may read a whole day of
#: their range (a scan of that day's rows is what a wide range costs), and only those days.
DAYS_READ = {"data time page": {"transactions_day_0", "scores_day_0"}}


#: New rows after the fill: what a fold finds after a second of the stream (2,000 tx/s).
NEW_ROWS = 2_000


async def _fold_plans(conn: asyncpg.Connection) -> dict[str, str]:
    """The plans of the statements `rollup_fold()` runs over `NEW_ROWS` new scores."""
    assert await conn.fetchval("SELECT rollup_fold()") == ROWS  # the fill, folded once
    last = ROWS * 0.6
    await conn.execute(f"""
        WITH k AS (INSERT INTO transaction_keys (run_id, id, day)
                   SELECT '', 'n' || g, data_day({last} + g * 0.6) FROM generate_series(1, {NEW_ROWS}) g),
             t AS (INSERT INTO transactions (run_id, id, day, time, {_INPUTS}, amount, label)
                   SELECT '', 'n' || g, data_day({last} + g * 0.6), {last} + g * 0.6,
                          {", ".join(f"cos(g * {i}.3)" for i in range(1, 29))}, g % 50, 0
                   FROM generate_series(1, {NEW_ROWS}) g)
        INSERT INTO scores (run_id, id, day, model_version, score, recon_error, alert, latency_ms)
        SELECT '', 'n' || g, data_day({last} + g * 0.6), '{VERSION}', (g % 1000) / 1000.0, 0.5, false, 5
        FROM generate_series(1, {NEW_ROWS}) g""")
    notices: list[str] = []

    def listen(_conn: object, message: asyncpg.PostgresLogMessage) -> None:
        notices.append(message.message)

    conn.add_log_listener(listen)
    try:
        await conn.execute("LOAD 'auto_explain'")
        for setting, value in (
            ("log_min_duration", "0"),
            ("log_nested_statements", "on"),
            ("log_level", "notice"),
        ):
            await conn.execute(f"SET auto_explain.{setting} = '{value}'")
        assert await conn.fetchval("SELECT rollup_fold()") == NEW_ROWS
        await asyncio.sleep(0.1)  # notices arrive with the answer; let the listener run
    finally:
        await conn.execute("SET auto_explain.log_min_duration = '-1'")
        conn.remove_log_listener(listen)
    plans = {f"fold {i}": text for i, text in enumerate(notices) if "scores" in text}
    # the scores of the range, their transactions, and the versions among them
    assert len(plans) >= 2, notices
    return plans


async def _drift_partitions_read(conn: asyncpg.Connection) -> dict[str, tuple[set[str], set[str]]]:
    """For drift's two row reads: the day partitions of the confined tables a scan actually
    ran in (EXPLAIN ANALYZE), and those of the days of the rows counted. Each row's other
    half is probed by primary key with its day, so only its own day's partition is read
    (not every day's); the data-hour window reads its own days' transactions. (The live
    minutes find their scores by `scored_at` in every day: that side is not confined.)"""
    edges = [[-1.0, 0.0, 1.0]] * len(drift.QUANTITY_COLUMNS)
    quantities = list(drift.QUANTITY_COLUMNS.items())
    window = 600.0  # the fill's last ~9 minutes of scoring: days 1 and 2
    reads = {
        "drift partial hour": (
            drift._statement(quantities, *drift._BY_DATA_HOUR),
            [LIVE_RUN, 36_000.0, 37_800.0, VERSION, *edges],
            "SELECT DISTINCT day FROM transactions WHERE run_id = '' AND time >= 36000 AND time < 37800",
            ("transactions", "scores"),
        ),
        "drift live minutes": (
            drift._statement(quantities, *drift._RECENT),
            [LIVE_RUN, window, VERSION, *edges],
            f"SELECT DISTINCT day FROM scores WHERE run_id = '' AND scored_at >= now() - interval '{window} s'",
            ("transactions",),
        ),
    }
    out = {}
    for name, (sql, args, days_sql, confined) in reads.items():
        explain = "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) " + sql
        plan = "\n".join(r[0] for r in await conn.fetch(explain, *args))
        ran = re.findall(r"Scan (?:Backward )?(?:using \w+ )?on ((\w+)_day_\d+) .*?loops=(\d+)\)", plan)
        days = {r["day"] for r in await conn.fetch(days_sql)}
        assert days, name
        read = {part for part, table, loops in ran if int(loops) > 0 and table in confined}
        out[name] = (read, {f"{table}_day_{day}" for table in confined for day in days})
    return out


def test_analytics_reads_never_scan_the_history(database_url: str) -> None:
    async def plans() -> dict[str, str]:
        conn = await asyncpg.connect(database_url)
        try:
            await ensure_days(conn, range(DAYS))  # as the maintenance task keeps them ahead of the stream
            for sql in FILL:
                await conn.execute(sql)
            newest = await conn.fetchval("SELECT max(scored_at) FROM scores")
            since = newest - timedelta(minutes=5)
            some_ids = [f"p{g}" for g in range(1, 400, 19)]
            found = {}
            newest_alerts = [
                (r["id"], r["day"])
                for r in await conn.fetch(
                    "SELECT id, day FROM scores WHERE run_id = '' AND alert ORDER BY scored_at DESC, id DESC LIMIT 15"
                )
            ]
            for name, (sql, args) in _statements(newest, since, some_ids, newest_alerts).items():
                rows = await conn.fetch("EXPLAIN " + sql, *args)
                found[name] = "\n".join(r[0] for r in rows)
            partial = {
                index: {
                    r[0]
                    for r in await conn.fetch(
                        "SELECT relid::regclass::text FROM pg_partition_tree($1::regclass)", index
                    )
                }
                for index in ("ix_scores_frauds", "ix_scores_alerts", "ix_transactions_frauds")
            }
            probed = await _drift_partitions_read(conn)
            found.update(await _fold_plans(conn))
            # Partitions by data day: a day without rows (the days ahead, the default partition)
            # is planned as a scan of its zero pages; only a scan of rows is a defect.
            scanned = {table for plan in found.values() for table in SCAN_OF_HISTORY.findall(plan)}
            empty = {
                table
                for table in scanned
                if not await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {table})")
            }
            return found, empty, partial, probed
        finally:
            await conn.close()

    found, empty, partial, probed = asyncio.run(plans())
    # drift's rows and their lateral probes read only the partitions of the rows' own days
    for name, (read, wanted) in probed.items():
        assert read == wanted, (name, read, wanted)
    assert len(found) >= 40
    scans = {
        name: plan
        for name, plan in found.items()
        if set(SCAN_OF_HISTORY.findall(plan)) - empty - DAYS_READ.get(name, set())
    }
    assert not scans, "\n\n".join(f"{name}:\n{plan}" for name, plan in scans.items())
    assert any(name.startswith("fold") for name in found), list(found)
    unindexed = {
        name: plan for name, plan in found.items() if name.startswith(INDEXED) and not INDEX_READ.search(plan)
    }
    assert not unindexed, "\n\n".join(f"{name}:\n{plan}" for name, plan in unindexed.items())
    # a data-time range reads its days' partitions, never another day's
    for name, allowed in DAYS_READ.items():
        days = set(re.findall(r"(?:transactions|scores)_day_\d+", found[name]))
        assert days <= allowed, found[name]
    # the frauds and the alerts are read from their own partial indexes (0016, 0001), not
    # found among all rows in scored order (`alert IS TRUE` once missed `WHERE alert`)
    for names, index in (
        (("frauds page", "frauds page after"), "ix_scores_frauds"),
        (("alerts filtered page",), "ix_scores_alerts"),
    ):
        for name in names:
            used = set(re.findall(r"(?:Index Scan|Bitmap Index Scan)(?: Backward)? using (\w+)", found[name]))
            assert used & partial[index], found[name]
    # the alert list's keys come from their own index, its rows from the page's days only
    for name in ("alerts page", "alerts page after"):
        assert "ix_alert_keys_newest" in found[name] and not re.search(
            r"on (transactions|scores)", found[name]
        )
    days = set(re.findall(r"(?:transactions|scores)_day_\d+", found["alert rows"]))
    assert days and len(days) <= 4, found["alert rows"]
    # the window reads touch the rollups only; totals, watermark and backlog their counters;
    # the feedback summary the keys of the rows and the alerts, never a partition
    for name in (
        "watermark",
        "run totals",
        "backlog",
        "reviewed",
        "reviewed by hour",
        "chargebacks",
        "chargebacks by hour",
        "stats window",
        "stats latency",
        "timeseries",
        "timeseries latency",
        "histogram",
        "score rollup",
        "savings rollup",
        "known hours",
        "scatter",
    ):
        assert not re.search(r"on (transactions|scores)\b", found[name]), found[name]
    # the scatter: each class's smallest keys, one range of the sample's index each, no sort
    assert found["scatter"].count("Index Scan using ix_scatter_sample_read") == 2, found["scatter"]
    assert "Sort" not in found["scatter"], found["scatter"]
