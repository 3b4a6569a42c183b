"""The scatter plot's sample (migration 0022) against a brute force over the stored rows.

Per (run, data day, class) the sample must hold exactly the group's scored rows whose key is
under the group's threshold, with their stored values, and at least k of them unless the
threshold is 1.0 (every row sampled): so its k smallest keys are the group's k smallest, and
the API's read (the n smallest keys of a run's class over its days) is the n smallest of all
its rows. The key is recomputed here from `hashlib.md5`, not read from PostgreSQL.

k is lowered to a few rows in these tests (`scatter_sample_k()`), so that a handful of rows
makes samples prune, and relabels and deletes make them rebuild.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import defaultdict
from dataclasses import dataclass

import asyncpg
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.dialects.postgresql import asyncpg as asyncpg_dialect

from api import queries
from core.db.partitions import DAY_SECONDS, MaintenanceReport, _drop_day, ensure_days
from core.db.schema import FEATURE_COLUMNS
from core.db.store import ScoredRows, store_new

pytestmark = pytest.mark.timeout(600)

RUNS = ("", "bt-1")
DAYS = (0, 1, 2)
#: What each sampled row holds besides its key, compared with the stored row's.
VALUES = (*FEATURE_COLUMNS, "label", "score", "recon_error", "alert", "model_version")


def key_of(run_id: str, id_: str) -> float:
    """The row's key as migration 0022 defines it: md5's first 52 bits over 2^52."""
    return int(hashlib.md5(f"{run_id}/{id_}".encode()).hexdigest()[:13], 16) / 2**52


async def set_k(conn: asyncpg.Connection, k: int) -> None:
    await conn.execute(
        f"CREATE OR REPLACE FUNCTION scatter_sample_k() RETURNS int4 LANGUAGE sql STABLE PARALLEL SAFE RETURN {k}"
    )


def batch(ids: list[str], days: list[int], labels: list[int | None], run_id: str, seed: int) -> ScoredRows:
    rng = np.random.default_rng(seed)
    n = len(ids)
    features = rng.normal(size=(n, 30))
    features[:, 0] = np.asarray(days, dtype=float) * DAY_SECONDS + rng.uniform(0, DAY_SECONDS - 1, n)
    score = rng.uniform(0, 1, n)
    return ScoredRows(
        ids=ids,
        features=features,
        labels=labels,
        run_ids=[run_id or None] * n,
        produced_at=[time.time()] * n,
        model_version=f"v-{seed % 3}",
        score=score,
        recon_error=rng.uniform(0, 2, n),
        alert=score > 0.7,
    )


@dataclass
class Group:
    """One (run, day, class) as the brute force sees it: its rows sorted by (key, id)."""

    rows: list[tuple]  # (key, id, values)


async def brute_force(conn: asyncpg.Connection) -> dict[tuple, Group]:
    """Every scored row with its transaction, grouped by (run, day, class), keys from Python."""
    rows = await conn.fetch(
        f"SELECT s.run_id, s.day, s.fraud, s.id, {', '.join(f't.{c}' for c in FEATURE_COLUMNS)}, t.label, "
        "s.score, s.recon_error, s.alert, s.model_version "
        "FROM scores s JOIN transactions t USING (run_id, id, day)"
    )
    groups: dict[tuple, Group] = defaultdict(lambda: Group([]))
    for r in rows:
        assert r["fraud"] == (r["label"] == 1)  # the class: `scores.fraud`, the inline label 1
        groups[(r["run_id"], r["day"], r["fraud"])].rows.append(
            (key_of(r["run_id"], r["id"]), r["id"], tuple(r[c] for c in VALUES))
        )
    for group in groups.values():
        group.rows.sort()
    return dict(groups)


async def check(conn: asyncpg.Connection, k: int) -> dict[tuple, Group]:
    """The sample and its state against the brute force; returns the brute force."""
    groups = await brute_force(conn)
    state = {
        (r["run_id"], r["day"], r["fraud"]): (r["total"], r["sampled"], r["threshold"])
        for r in await conn.fetch("SELECT * FROM scatter_sample_state")
    }
    sample: dict[tuple, list] = defaultdict(list)
    for r in await conn.fetch(f"SELECT run_id, day, fraud, key, id, {', '.join(VALUES)} FROM scatter_sample"):
        sample[(r["run_id"], r["day"], r["fraud"])].append((r["key"], r["id"], tuple(r[c] for c in VALUES)))
    assert set(state) == set(groups), "a state row for each group with rows, and no other"
    assert set(sample) <= set(groups)
    for name, group in groups.items():
        total, sampled, threshold = state[name]
        below = [row for row in group.rows if row[0] < threshold]
        assert sorted(sample.get(name, [])) == below, name  # exactly the rows under the threshold
        assert (total, sampled) == (len(group.rows), len(below)), name
        assert threshold == 1.0 or len(below) >= k, name  # never short of k while rows lie above
        assert len(below) <= 2 * k, name  # pruned past 2k
        # hence the bottom-k of the group
        assert [row[1] for row in below[:k]] == [row[1] for row in group.rows[:k]], name
    return groups


def reader(run_id: str, frauds: int, normals: int) -> tuple[str, list]:
    v14, score = queries.lookup_feature("V14"), queries.lookup_feature("score")
    compiled = queries.scatter_points(v14, score, run_id, frauds, normals).compile(
        dialect=asyncpg_dialect.dialect(), compile_kwargs={"render_postcompile": True}
    )
    return compiled.string, [compiled.params[name] for name in compiled.positiontup]


async def check_reads(conn: asyncpg.Connection, groups: dict[tuple, Group], k: int) -> None:
    """The API's statement: per class, the n <= k smallest keys over all the run's days."""
    for run_id in RUNS:
        for n in (1, k):
            sql, args = reader(run_id, n, n)
            got = [(r["fraud"], r["id"], r["x"], r["y"]) for r in await conn.fetch(sql, *args)]
            expected = []
            for fraud in (True, False):
                rows = sorted(
                    row for (run, _, f), g in groups.items() if (run, f) == (run_id, fraud) for row in g.rows
                )
                expected += [
                    (fraud, row[1], row[2][VALUES.index("v14")], row[2][VALUES.index("score")])
                    for row in rows[:n]
                ]
            assert got == expected, (run_id, n)


def test_the_key_is_md5s_first_52_bits_in_postgresql_too(database_url: str) -> None:
    ids = ["a", "b/c", "Ünïcode", "x" * 200, ""]

    async def keys() -> list[float]:
        conn = await asyncpg.connect(database_url)
        try:
            return [await conn.fetchval("SELECT scatter_key($1, $2)", run, i) for run in RUNS for i in ids]
        finally:
            await conn.close()

    found = asyncio.run(keys())
    assert found == [key_of(run, i) for run in RUNS for i in ids]
    assert all(0.0 <= key < 1.0 for key in found)


# One step of a history: a batch stored (ids from a small pool, so some are redeliveries),
# labels changed by hand, scores deleted, a run deleted, a live day dropped by retention.
_ids = st.lists(st.integers(0, 23), min_size=1, max_size=12, unique=True)
_label = st.sampled_from([None, 0, 1])
_step = st.one_of(
    st.tuples(st.just("store"), st.sampled_from(RUNS), _ids, st.lists(_label, min_size=12, max_size=12)),
    st.tuples(st.just("relabel"), st.sampled_from(RUNS), _ids, _label),
    st.tuples(st.just("delete"), st.sampled_from(RUNS), _ids, st.booleans()),
    st.tuples(st.just("delete run"), st.sampled_from(RUNS), st.booleans(), st.none()),
    st.tuples(st.just("drop day"), st.sampled_from(DAYS), st.none(), st.none()),
)


async def _apply(conn: asyncpg.Connection, step: tuple, seed: int) -> None:
    kind, a, b, c = step
    if kind == "store":
        ids = [f"r{i}" for i in b]
        days = [i % len(DAYS) for i in b]  # an id's day never changes: a resend is a redelivery
        await store_new(conn, batch(ids, days, c[: len(ids)], a, seed), {})
    elif kind == "relabel":
        await conn.execute(
            "UPDATE transactions SET label = $3 WHERE run_id = $1 AND id = ANY($2::text[])",
            a,
            [f"r{i}" for i in b],
            c,
        )
    elif kind == "delete":  # scores, or scores and their transactions
        ids = [f"r{i}" for i in b]
        await conn.execute("DELETE FROM scores WHERE run_id = $1 AND id = ANY($2::text[])", a, ids)
        if c:
            await conn.execute("DELETE FROM transactions WHERE run_id = $1 AND id = ANY($2::text[])", a, ids)
    elif kind == "delete run":  # as runs are deleted: both tables, in either order
        for table in ("scores", "transactions") if b else ("transactions", "scores"):
            await conn.execute(f"DELETE FROM {table} WHERE run_id = $1", a)
    else:
        await _drop_day(conn, a, MaintenanceReport())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(_step, min_size=1, max_size=12), k=st.sampled_from([1, 2, 3, 5]))
def test_the_sample_is_the_bottom_k_of_each_day_and_class_after_any_history(
    database_url: str, steps: list[tuple], k: int
) -> None:
    async def run() -> None:
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute(
                "TRUNCATE transactions, scores"
            )  # each example from empty (the trigger empties the sample)
            assert await conn.fetchval("SELECT count(*) FROM scatter_sample_state") == 0
            await ensure_days(conn, DAYS)
            await set_k(conn, k)
            for seed, step in enumerate(steps):
                await _apply(conn, step, seed)
                groups = await check(conn, k)
            await check_reads(conn, groups, k)
        finally:
            await conn.close()

    asyncio.run(run())


def test_a_long_history_prunes_and_rebuilds_and_stays_exact(database_url: str) -> None:
    """Hundreds of rows per group (many prunes), then relabels and deletes that take samples
    under k (rebuilds), a redelivery, a run deleted and a day dropped."""
    k = 20
    rng = np.random.default_rng(3)

    async def run() -> dict:
        conn = await asyncpg.connect(database_url)
        counted: dict = {}
        try:
            await ensure_days(conn, DAYS)
            await set_k(conn, k)
            for start in range(0, 1500, 100):
                ids = [f"t{i}" for i in range(start, start + 100)]
                labels = [int(v) if v < 2 else None for v in rng.integers(0, 3, 100)]
                for run_id in RUNS:
                    await store_new(
                        conn,
                        batch(ids, [i % 3 for i in range(start, start + 100)], labels, run_id, start),
                        {},
                    )
            await check(conn, k)
            counted["prunes"] = await conn.fetchval(
                "SELECT count(*) FROM scatter_sample_state WHERE threshold < 1"
            )
            # the same rows again: nothing changes
            before = await conn.fetch("SELECT * FROM scatter_sample ORDER BY run_id, id")
            again = batch([f"t{i}" for i in range(100)], [i % 3 for i in range(100)], [0] * 100, "", 0)
            assert len(await store_new(conn, again, {})) == 100
            assert await conn.fetch("SELECT * FROM scatter_sample ORDER BY run_id, id") == before
            # every sampled normal row of day 1 becomes a fraud, then back: samples rebuilt
            sampled = [
                r["id"]
                for r in await conn.fetch(
                    "SELECT id FROM scatter_sample WHERE run_id = '' AND day = 1 AND NOT fraud"
                )
            ]
            await conn.execute(
                "UPDATE transactions SET label = 1 WHERE run_id = '' AND id = ANY($1::text[])", sampled
            )
            await check(conn, k)
            await conn.execute(
                "UPDATE transactions SET label = NULL WHERE run_id = '' AND id = ANY($1::text[])", sampled
            )
            await check(conn, k)
            # normal rows of day 2 above their sample's threshold become frauds: those over the
            # frauds' threshold too never enter that sample, those under it do (few at a time,
            # so that no prune follows: it would hide a wrong entry); a label 0 <-> null stays normal
            for entering in (False, True):
                moved = [
                    r["id"]
                    for r in await conn.fetch(
                        "SELECT t.id FROM transactions t JOIN scatter_sample_state n ON n.run_id = t.run_id "
                        "AND n.day = t.day AND NOT n.fraud JOIN scatter_sample_state f ON f.run_id = t.run_id "
                        "AND f.day = t.day AND f.fraud WHERE t.run_id = '' AND t.day = 2 AND t.label IS DISTINCT "
                        "FROM 1 AND scatter_key(t.run_id, t.id) >= n.threshold "
                        "AND (scatter_key(t.run_id, t.id) < f.threshold) = $1 ORDER BY t.id LIMIT 3",
                        entering,
                    )
                ]
                await conn.execute(
                    "UPDATE transactions SET label = 1 WHERE run_id = '' AND id = ANY($1::text[])", moved
                )
                await check(conn, k)
                counted[f"entered {entering}"] = await conn.fetchval(
                    "SELECT count(*) FROM scatter_sample WHERE run_id = '' AND id = ANY($1::text[])", moved
                )
            await conn.execute(
                "UPDATE transactions SET label = CASE WHEN label = 0 THEN NULL ELSE 0 END WHERE run_id = 'bt-1' "
                "AND label IS DISTINCT FROM 1"
            )
            await check(conn, k)
            # the sampled frauds of day 2 deleted: rebuilt from the rest
            gone = [
                r["id"]
                for r in await conn.fetch(
                    "SELECT id FROM scatter_sample WHERE run_id = 'bt-1' AND day = 2 AND fraud"
                )
            ]
            await conn.execute("DELETE FROM scores WHERE run_id = 'bt-1' AND id = ANY($1::text[])", gone)
            groups = await check(conn, k)
            await check_reads(conn, groups, k)
            await _drop_day(conn, 0, MaintenanceReport())
            await check(conn, k)
            await conn.execute("DELETE FROM transactions WHERE run_id = 'bt-1'")
            await conn.execute("DELETE FROM scores WHERE run_id = 'bt-1'")
            groups = await check(conn, k)
            assert {name[0] for name in groups} == {""}
            counted["days"] = sorted({name[1] for name in groups})
            await check_reads(conn, groups, k)
            await conn.execute("TRUNCATE scores")
            counted["after truncate"] = await conn.fetchval(
                "SELECT (SELECT count(*) FROM scatter_sample) + (SELECT count(*) FROM scatter_sample_state)"
            )
            return counted
        finally:
            await conn.close()

    counted = asyncio.run(run())
    assert counted == {
        "prunes": 12,
        "entered False": 0,
        "entered True": 3,
        "days": [1, 2],
        "after truncate": 0,
    }


def test_concurrent_writers_keep_the_sample_exact(database_url: str) -> None:
    """Two connections writing the same days at once (each batch's groups locked in one order)."""
    k = 10

    async def writer(url: str, prefix: str) -> None:
        conn = await asyncpg.connect(url)
        try:
            for b in range(30):
                ids = [f"{prefix}{b}-{i}" for i in range(40)]
                await store_new(
                    conn,
                    batch(
                        ids, [i % 2 for i in range(40)], [1 if i % 5 == 0 else None for i in range(40)], "", b
                    ),
                    {},
                )
        finally:
            await conn.close()

    async def run() -> None:
        conn = await asyncpg.connect(database_url)
        try:
            await ensure_days(conn, DAYS)
            await set_k(conn, k)
            await asyncio.gather(writer(database_url, "a"), writer(database_url, "b"))
            groups = await check(conn, k)
            assert sorted(len(g.rows) for g in groups.values()) == [240, 240, 960, 960]
        finally:
            await conn.close()

    asyncio.run(run())


def test_the_migration_fills_the_sample_from_the_rows_stored_before(database_url: str) -> None:
    """Rows stored before 0022 (6,000 in one group: past 2k) are sampled by the migration."""
    from core.db.migrate import downgrade, upgrade

    downgrade(database_url, "0018")

    async def fill() -> None:
        conn = await asyncpg.connect(database_url)
        try:
            await ensure_days(conn, DAYS)
            inputs = ", ".join(f"v{i}" for i in range(1, 29))
            await conn.execute(f"""
                WITH k AS (INSERT INTO transaction_keys (run_id, id, day)
                           SELECT CASE WHEN g % 4 = 0 THEN 'bt-1' ELSE '' END, 'm' || g, g % 2 FROM generate_series(1, 8000) g),
                     t AS (INSERT INTO transactions (run_id, id, day, time, {inputs}, amount, label)
                           SELECT CASE WHEN g % 4 = 0 THEN 'bt-1' ELSE '' END, 'm' || g, g % 2, (g % 2) * 86400 + g,
                                  {", ".join(f"sin(g * {i}.1)" for i in range(1, 29))}, g % 300,
                                  CASE WHEN g % 7 = 0 THEN 1 WHEN g % 3 = 0 THEN NULL ELSE 0 END
                           FROM generate_series(1, 8000) g)
                INSERT INTO scores (run_id, id, day, model_version, score, recon_error, alert, fraud)
                SELECT CASE WHEN g % 4 = 0 THEN 'bt-1' ELSE '' END, 'm' || g, g % 2, 'v-old', (g % 100) / 100.0,
                       0.5, g % 100 > 90, g % 7 = 0
                FROM generate_series(1, 8000) g""")
        finally:
            await conn.close()

    asyncio.run(fill())
    upgrade(database_url)

    async def checked() -> list:
        conn = await asyncpg.connect(database_url)
        try:
            groups = await check(conn, 2500)
            await check_reads(conn, groups, 2500)
            return sorted((name, len(g.rows)) for name, g in groups.items())
        finally:
            await conn.close()

    sizes = asyncio.run(checked())
    assert max(n for _, n in sizes) > 2500  # a group the migration had to cut to its k smallest


async def _waiting_for_a_lock(conn: asyncpg.Connection, pid: int) -> bool:
    return bool(
        await conn.fetchval("SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1", pid)
    )


async def _locked_by_another(conn: asyncpg.Connection, table: str) -> bool:
    """Does another transaction hold a row of `table` locked?"""
    try:
        async with conn.transaction():
            await conn.execute(f"SELECT 1 FROM {table} FOR UPDATE NOWAIT")
    except asyncpg.LockNotAvailableError:
        return True
    return False


#: Each writer's statements, in one transaction (none: the scorer's `store_new`).
_WRITERS: dict[str, tuple[str, ...]] = {
    "the scorer's write": (),
    "a relabel": ("UPDATE transactions SET label = 1 WHERE run_id = '' AND id = 'r0'",),
    "a delete of scores": ("DELETE FROM scores WHERE run_id = '' AND id = 'r0'",),
    "a delete of transactions, then scores": (
        "DELETE FROM transactions WHERE run_id = '' AND id = 'r0'",
        "DELETE FROM scores WHERE run_id = '' AND id = 'r0'",
    ),
}


@pytest.mark.parametrize("writer", list(_WRITERS))
def test_every_writer_locks_the_sample_groups_before_the_run_totals(database_url: str, writer: str) -> None:
    """One lock order for every writer, or two of them deadlock: the scorer's write takes a
    day's groups (`scatter_sample_state`) before the run's totals row; so must a relabel or a
    delete (migration 0023). The groups are held from a third connection: the writer must be
    waiting for them with the totals row not yet taken."""

    async def run() -> tuple[bool, bool]:
        conn, holder, other = [await asyncpg.connect(database_url) for _ in range(3)]
        try:
            await ensure_days(conn, DAYS)
            await store_new(conn, batch(["r0", "r1"], [0, 0], [0, None], "", 1), {})
            hold = holder.transaction()
            await hold.start()
            await holder.execute("SELECT 1 FROM scatter_sample_state FOR UPDATE")
            pid = await other.fetchval("SELECT pg_backend_pid()")

            async def write() -> None:
                if not _WRITERS[writer]:
                    await store_new(other, batch(["r2", "r3"], [0, 0], [1, 0], "", 2), {})
                async with other.transaction():
                    for statement in _WRITERS[writer]:
                        await other.execute(statement)

            task = asyncio.ensure_future(write())
            for _ in range(100):
                if await _waiting_for_a_lock(conn, pid):
                    break
                await asyncio.sleep(0.05)
            waiting = await _waiting_for_a_lock(conn, pid)
            totals_taken = await _locked_by_another(conn, "run_totals")
            await hold.rollback()
            await task
            return waiting, totals_taken
        finally:
            for c in (conn, holder, other):
                await c.close()

    waiting, totals_taken = asyncio.run(run())
    assert waiting, "the writer did not wait for the held groups"
    assert not totals_taken, "the writer took the run's totals row before the sample's groups"
