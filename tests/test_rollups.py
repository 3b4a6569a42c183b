"""The rollups (migration 0009) against numpy over the stored rows: exact counts, exactly once.

Rows go in through the real write paths (`store_new`, the scorer's; `store_scored`, the
API's predict), some of them twice and some from two connections at once; labels then
change. After each step every rollup table must equal what numpy counts over the rows
PostgreSQL holds, bin for bin.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from datetime import UTC, datetime

import asyncpg
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.bins import LATENCY_BINS, QUANTITY_BINS
from core.db.store import ScoredRows, store_new, store_scored
from core.drift import DECILES, DECILES_AND_TAIL, bin_counts, reference_histogram
from tests.old_schema import store_unpartitioned

RUN = "rollup-run"
REGISTERED = "a1" * 32  # has reference bins
UNREGISTERED = "b2" * 32  # scored rows of a version the registry does not know: no drift counts
INPUTS = [f"v{i}" for i in range(1, 29)] + ["amount"]
IN_SAMPLE_UNTIL = 86_400.5


def _batch(rng: np.random.Generator, ids: list[str], version: str, run_id: str | None = RUN) -> ScoredRows:
    n = len(ids)
    features = np.empty((n, 30))
    features[:, 0] = rng.uniform(-100.0, 3 * 86_400.0, n)  # several data hours, one before 0
    features[:, 1:29] = rng.normal(0.0, 4.0, (n, 28))
    features[:, 29] = np.round(rng.lognormal(3.0, 2.0, n), 2)
    # values on edges and beyond the ranges: the outer bins and the edge rule
    features[: n // 10, 14] = -18.0  # V14's first edge
    features[n // 10 : n // 5, 1] = rng.choice([-1e6, 1e6, 3.0, -32.0], n // 5 - n // 10)
    features[: n // 20, 29] = 0.0
    score = rng.uniform(0.0, 1.0, n)
    score[:5] = [0.0, 1.0, 0.5, 0.001, 0.999]
    labels = rng.choice([0, 1, -1], n, p=[0.8, 0.1, 0.1])
    now = datetime.now(UTC).timestamp()
    return ScoredRows(
        ids=ids,
        features=features,
        labels=[None if label < 0 else int(label) for label in labels],
        run_ids=[run_id] * n,
        produced_at=[None if i % 7 == 0 else now - rng.uniform(0.0, 2.0) for i in range(n)],
        model_version=version,
        score=score,
        recon_error=rng.lognormal(-1.0, 2.0, n),
        alert=score > 0.8,
    )


def _manifest(rng: np.random.Generator) -> dict:
    features = {
        name.upper() if name != "amount" else "Amount": reference_histogram(
            rng.normal(0, 4, 500), quantiles=DECILES
        )
        for name in INPUTS
    }
    return {
        "reference": {
            "features": features,
            "recon_error": reference_histogram(rng.lognormal(-1, 2, 500), quantiles=DECILES_AND_TAIL),
            "score": reference_histogram(rng.uniform(0, 1, 500), quantiles=DECILES_AND_TAIL),
        },
        # the data hours 0..24 are in-sample: only those keep score counts per hour
        "training": {"data": {"in_sample": {"time_from": 0.0, "time_to": IN_SAMPLE_UNTIL}}},
    }


def _minute(moment: datetime) -> datetime:
    """date_bin('1 minute', moment, 2000-01-01 UTC): the minute, in UTC."""
    return moment.astimezone(UTC).replace(second=0, microsecond=0)


#: The rollups the tests count (`score_amounts`: migration 0017).
ROLLUPS = ("minutes", "hours", "latency", "histograms", "score_hours", "drift", "score_amounts")


async def _expected(
    conn: asyncpg.Connection, references: dict[str, dict[str, list[float]]]
) -> dict[str, Counter]:
    """Every rollup, counted by numpy over the stored rows of the run."""
    rows = await conn.fetch(
        f"SELECT s.model_version, s.alert, s.scored_at, s.latency_ms, s.recon_error, s.score, t.time, "
        f"{', '.join(f't.{q}' for q in INPUTS)}, "
        # the class is the known label (reviews and chargebacks, else replayed, else inline)
        "coalesce((SELECT k.label FROM known_labels k WHERE k.run_id = s.run_id AND k.id = s.id), -1) AS class "
        "FROM scores s JOIN transactions t USING (run_id, id) WHERE s.run_id = $1",
        RUN,
    )
    out: dict[str, Counter] = {name: Counter() for name in ROLLUPS}
    hours = np.floor(np.array([r["time"] for r in rows]) / 3600).astype(int)
    for r, hour in zip(rows, hours, strict=True):
        key = (r["model_version"], r["class"])
        out["minutes"][(_minute(r["scored_at"]), *key, "scored")] += 1
        out["minutes"][(_minute(r["scored_at"]), *key, "alerts")] += int(r["alert"])
        out["hours"][(int(hour), *key, "scored")] += 1
        out["hours"][(int(hour), *key, "alerts")] += int(r["alert"])
        if r["latency_ms"] is not None:
            out["latency"][
                (_minute(r["scored_at"]), int(LATENCY_BINS.index(np.array([r["latency_ms"]]))[0]))
            ] += 1
    for quantity, bins in QUANTITY_BINS.items():
        values = np.array([r[quantity] for r in rows])
        index = bins.index(values)
        for r, hour, b in zip(rows, hours, index, strict=True):
            key = (quantity, r["model_version"], r["class"], int(b))
            out["histograms"][(*key, "n")] += 1
            out["histograms"][(*key, "alerts")] += int(r["alert"])
            if quantity == "score":  # rows and their amount per score bin (0017)
                out["score_amounts"][(r["model_version"], r["class"], int(b), "n")] += 1
                out["score_amounts"][(r["model_version"], r["class"], int(b), "amount")] += r["amount"]
            if (
                quantity == "score"
                and r["model_version"] == REGISTERED
                and 0 <= hour <= IN_SAMPLE_UNTIL // 3600
            ):
                out["score_hours"][(r["model_version"], int(hour), r["class"], int(b), "n")] += 1
                out["score_hours"][(r["model_version"], int(hour), r["class"], int(b), "alerts")] += int(
                    r["alert"]
                )
        for version, edges in references.items():
            if quantity not in edges:
                continue
            mine = np.array([r["model_version"] == version for r in rows])
            index = np.searchsorted(np.asarray(edges[quantity]), values[mine], side="right")
            for hour, b in zip(hours[mine], index, strict=True):
                out["drift"][(version, int(hour), quantity, int(b))] += 1
    return {name: +counter for name, counter in out.items()}  # zero counts dropped


async def _actual(conn: asyncpg.Connection) -> dict[str, Counter]:
    await conn.fetchval("SELECT rollup_fold()")  # the wide rollups hold what was committed before it
    out: dict[str, Counter] = {name: Counter() for name in ROLLUPS}
    for r in await conn.fetch("SELECT * FROM rollup_minutes WHERE run_id = $1", RUN):
        for column in ("scored", "alerts"):
            out["minutes"][(r["minute"], r["model_version"], r["class"], column)] += r[column]
    for r in await conn.fetch("SELECT * FROM rollup_hours WHERE run_id = $1", RUN):
        for column in ("scored", "alerts"):
            out["hours"][(r["hour"], r["model_version"], r["class"], column)] += r[column]
    for r in await conn.fetch("SELECT * FROM rollup_latency WHERE run_id = $1", RUN):
        out["latency"][(r["minute"], r["bin"])] += r["n"]
    for r in await conn.fetch("SELECT * FROM rollup_histograms WHERE run_id = $1", RUN):
        key = (r["quantity"], r["model_version"], r["class"], r["bin"])
        out["histograms"][(*key, "n")] += r["n"]
        out["histograms"][(*key, "alerts")] += r["alerts"]
    for r in await conn.fetch("SELECT * FROM rollup_score_hours WHERE run_id = $1", RUN):
        for column in ("n", "alerts"):
            out["score_hours"][(r["model_version"], r["hour"], r["class"], r["bin"], column)] += r[column]
    for r in await conn.fetch("SELECT * FROM rollup_score_amounts WHERE run_id = $1", RUN):
        key = (r["model_version"], r["class"], r["bin"])
        out["score_amounts"][(*key, "n")] += r["n"]
        # to the micro-unit: an amount moved out and back by relabels leaves ~1e-13, not 0
        out["score_amounts"][(*key, "amount")] += round(r["amount"], 6)
    for r in await conn.fetch("SELECT * FROM rollup_drift WHERE run_id = $1", RUN):
        out["drift"][(r["model_version"], r["hour"], r["quantity"], r["bin"])] += r["n"]
    return {name: +counter for name, counter in out.items()}


async def _check(conn: asyncpg.Connection, references: dict) -> dict[str, int]:
    expected, actual = await _expected(conn, references), await _actual(conn)
    # amounts are float sums (in another order): equal to rounding; then compared as counts
    for name in expected:
        for key in set(expected[name]) | set(actual[name]):
            if key[-1] == "amount":
                assert np.isclose(
                    actual[name].pop(key, 0.0), expected[name].pop(key, 0.0), rtol=1e-9, atol=1e-6
                )
        actual[name], expected[name] = +actual[name], +expected[name]
    for name in expected:
        assert actual[name] == expected[name], (
            f"{name}: {len(actual[name] - expected[name])} extra, {len(expected[name] - actual[name])} missing"
        )
    # the sums behind the distributions' means
    totals = await conn.fetch(
        "SELECT quantity, sum(total) AS total FROM rollup_histograms WHERE run_id = $1 GROUP BY quantity", RUN
    )
    stored = await conn.fetchrow(
        f"SELECT {', '.join(f'sum(t.{q}) AS {q}' for q in INPUTS)}, sum(s.recon_error) AS recon_error, "
        "sum(s.score) AS score FROM scores s JOIN transactions t USING (run_id, id) WHERE s.run_id = $1",
        RUN,
    )
    for r in totals:
        assert np.isclose(r["total"], stored[r["quantity"]], rtol=1e-9, atol=1e-6), r["quantity"]
    return {
        "scored": sum(n for key, n in expected["hours"].items() if key[-1] == "scored"),
        "drift": sum(expected["drift"].values()),
        "latency": sum(expected["latency"].values()),
    }


async def _register(
    conn: asyncpg.Connection, manifest: dict, version: str = REGISTERED
) -> dict[str, list[float]]:
    """Register `version` with `manifest`; the reference edges the migration's trigger stored for it."""
    await conn.execute(
        "INSERT INTO model_versions (version, bundle_path, threshold, manifest) VALUES ($1, 'x', 0.8, $2::jsonb)",
        version,
        json.dumps(manifest),
    )
    return {
        r["quantity"]: list(r["edges"])
        for r in await conn.fetch(
            "SELECT quantity, edges FROM model_reference_bins WHERE version = $1", version
        )
    }


async def _scenario(database_url: str) -> None:
    rng = np.random.default_rng(15)
    conn = await asyncpg.connect(database_url)
    other = await asyncpg.connect(database_url)
    try:
        manifest = _manifest(rng)
        stored_edges = await _register(conn, manifest)
        reference = manifest["reference"]
        assert stored_edges == {
            **{q: reference["features"][q.upper() if q != "amount" else "Amount"]["edges"] for q in INPUTS},
            "recon_error": reference["recon_error"]["edges"],
            "score": reference["score"]["edges"],
        }
        references = {REGISTERED: stored_edges}

        first = _batch(rng, [f"r{i}" for i in range(1500)], REGISTERED)
        assert await store_new(conn, first, {}) == []
        second = _batch(rng, [f"s{i}" for i in range(600)], UNREGISTERED)
        # the same batch from two writers at once (two workers after a rebalance): stored once
        results = await asyncio.gather(store_new(conn, second, {}), store_new(other, second, {}))
        assert sorted(len(r) for r in results) == [0, 600]
        counts = await _check(conn, references)
        assert counts["drift"] == 1500 * 31 and 0 < counts["latency"] < counts["scored"] == 2100

        # exact redelivery (scorer and predict paths) and a partly new batch: only new rows count
        assert await store_new(conn, first.take(range(100)), {}) == list(range(100))
        assert await store_scored(conn, first.take(range(100, 200))) == 0
        mixed = _batch(rng, [f"r{i}" for i in range(1400, 1600)], REGISTERED)
        assert len(await store_new(conn, mixed, {})) == 100
        # another run's rows never reach this run's rollups
        await store_scored(conn, _batch(rng, [f"r{i}" for i in range(50)], REGISTERED, run_id=None))
        counts = await _check(conn, references)
        assert counts["scored"] == 1500 + 600 + 100

        # label changes move counts between classes (the UPDATE trigger calls rollup_relabel)
        await conn.execute(
            "UPDATE transactions SET label = CASE WHEN label IS NULL THEN 1 WHEN label = 1 THEN NULL ELSE 1 END "
            "WHERE run_id = $1 AND (id LIKE 'r1%' OR id LIKE 's1%')",
            RUN,
        )
        await conn.execute("UPDATE transactions SET label = label WHERE run_id = $1", RUN)  # no change: no-op
        await _check(conn, references)

        # rollup_relabel called directly (as label sources other than the inline label will)
        before = await _actual(conn)
        moved = await conn.fetchval(
            "SELECT rollup_relabel($1::text[], $2::text[], $3::int2[], $4::int2[])",
            [RUN, RUN, RUN, RUN],
            ["r5", "r6", "nope", "r7"],
            [None, 0, 0, 1],
            [1, 1, 1, 1],  # r7: unchanged (1 -> 1), "nope": not stored
        )
        assert moved == 2
        after = await _actual(conn)
        assert sum(after["hours"].values()) == sum(before["hours"].values())
        assert after["latency"] == before["latency"] and after["drift"] == before["drift"]
        await conn.fetchval(
            "SELECT rollup_relabel($1::text[], $2::text[], $3::int2[], $4::int2[])",
            [RUN, RUN],
            ["r5", "r6"],
            [1, 1],
            [None, 0],
        )
        assert await _actual(conn) == before

        # each run's first and last scored_at (migration 0020) through the rarer writes too:
        # a hand edit of a time, a delete of the run's first and last rows, a truncate
        await _check_span(conn)
        await conn.execute(
            "UPDATE scores SET scored_at = scored_at - interval '3 days' WHERE run_id = $1 AND id = 'r7'", RUN
        )
        await _check_span(conn)
        await conn.execute(
            "DELETE FROM scores WHERE (run_id, scored_at) IN "
            "(SELECT run_id, min(scored_at) FROM scores GROUP BY 1 UNION SELECT run_id, max(scored_at) FROM scores GROUP BY 1)"
        )
        await _check_span(conn)
        await conn.execute("TRUNCATE transactions, scores")
        assert not any((await _actual(conn)).values())
        assert (
            await conn.fetch("SELECT 1 FROM run_totals WHERE first_scored_at IS NOT NULL OR scored <> 0")
            == []
        )
    finally:
        await conn.close()
        await other.close()


async def _check_span(conn: asyncpg.Connection) -> None:
    """Every run's totals row holds its scored rows' count, alerts and first / last scored_at."""
    stored = await conn.fetch(
        "SELECT run_id, count(*), count(*) FILTER (WHERE alert), min(scored_at), max(scored_at) "
        "FROM scores GROUP BY run_id ORDER BY run_id"
    )
    kept = await conn.fetch(
        "SELECT run_id, scored, alerts, first_scored_at, last_scored_at FROM run_totals "
        "WHERE scored <> 0 OR first_scored_at IS NOT NULL ORDER BY run_id"
    )
    assert len(stored) > 1 and [tuple(r) for r in kept] == [tuple(r) for r in stored]


def test_rollups_equal_numpy_over_the_stored_rows_exactly_once(database_url: str) -> None:
    asyncio.run(_scenario(database_url))


_finite = st.floats(allow_nan=False, allow_infinity=False, width=64)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    values=st.lists(
        st.one_of(_finite, st.sampled_from([0.0, -18.0, 7.0, 0.001, 1.0, 5e-324, -0.0])),
        min_size=1,
        max_size=40,
    ),
    quantity=st.sampled_from([*QUANTITY_BINS, "latency_ms"]),
)
def test_postgres_and_numpy_bin_any_value_alike(
    database_url: str, values: list[float], quantity: str
) -> None:
    """The rollups' bins (width_bucket over `analytics_bins`) are `core.bins`' bins, for any value."""

    async def binned() -> list[int]:
        conn = await asyncpg.connect(database_url)
        try:
            return await conn.fetchval(
                "SELECT array_agg(width_bucket(x, b.edges) ORDER BY i) FROM unnest($1::float8[]) "
                "WITH ORDINALITY AS u(x, i), analytics_bins b WHERE b.quantity = $2",
                values,
                quantity,
            )
        finally:
            await conn.close()

    bins = LATENCY_BINS if quantity == "latency_ms" else QUANTITY_BINS[quantity]
    assert asyncio.run(binned()) == bins.index(np.array(values)).tolist()
    assert bin_counts(bins.edges, np.array(values)).sum() == len(values)


def test_the_migration_counts_existing_rows_once(database_url: str) -> None:
    """Rows and versions stored before 0009 are in the rollups and reference bins after it."""
    from core.db.migrate import downgrade, upgrade

    rng = np.random.default_rng(9)
    downgrade(database_url, "0011")

    async def before() -> None:
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute(
                "INSERT INTO model_versions (version, bundle_path, threshold, manifest) "
                "VALUES ($1, 'x', 0.8, $2::jsonb)",
                REGISTERED,
                json.dumps(_manifest(rng)),
            )
            await store_unpartitioned(conn, _batch(rng, [f"m{i}" for i in range(300)], REGISTERED))
        finally:
            await conn.close()

    async def after() -> dict[str, int]:
        conn = await asyncpg.connect(database_url)
        try:
            edges = {
                r["quantity"]: list(r["edges"])
                for r in await conn.fetch("SELECT quantity, edges FROM model_reference_bins")
            }
            return await _check(conn, {REGISTERED: edges})
        finally:
            await conn.close()

    asyncio.run(before())
    upgrade(database_url)
    assert asyncio.run(after()) == {"scored": 300, "drift": 300 * 31, "latency": pytest.approx(300, rel=0.2)}


def test_drift_counts_read_the_rollups_and_count_partial_hours_from_the_rows(database_url: str) -> None:
    """`core.db.drift.drift_counts` answers whole hours from `rollup_drift` (the rows themselves
    may be gone: deleted here, as a dropped partition would be), exactly what counting the stored
    rows gives; a window's partial hours are counted from the rows."""
    from core.db.drift import _BY_DATA_HOUR, _count, _histograms, drift_counts

    rng = np.random.default_rng(14)
    manifest = _manifest(rng)
    reference = manifest["reference"]
    histograms = _histograms(reference)

    async def run() -> None:
        conn = await asyncpg.connect(database_url)
        try:
            await _register(conn, manifest)
            await store_new(conn, _batch(rng, [f"d{i}" for i in range(3000)], REGISTERED), {})
            await store_new(conn, _batch(rng, [f"u{i}" for i in range(300)], UNREGISTERED), {})

            async def from_rows(low: float, high: float, version: str = REGISTERED) -> list:
                return await _count(conn, histograms, _BY_DATA_HOUR, RUN, low, high, version)

            window = (1800.0, 30 * 3600.0 + 900.0)  # partial hours at both ends
            expected = await from_rows(*window)
            assert [h.hour for h in expected] == list(range(31)) and sum(h.rows for h in expected) > 1000
            answered = await drift_counts(
                conn,
                version=REGISTERED,
                reference=reference,
                time_from=window[0],
                time_to=window[1],
                run_id=RUN,
            )
            assert answered == expected
            assert await drift_counts(
                conn, version=UNREGISTERED, reference=reference, time_from=0, time_to=7200, run_id=RUN
            ) == await from_rows(0, 7200, UNREGISTERED)  # no reference bins stored: counted from the rows

            # the whole hours come from the rollups: gone rows still count there, partial hours do not
            await conn.execute("DELETE FROM scores WHERE run_id = $1", RUN)
            after = await drift_counts(
                conn,
                version=REGISTERED,
                reference=reference,
                time_from=window[0],
                time_to=window[1],
                run_id=RUN,
            )
            assert after == [h for h in expected if h.hour not in (0, 30)]
        finally:
            await conn.close()

    asyncio.run(run())


def test_rollup_classes_follow_the_known_label(database_url: str) -> None:
    """Verdicts (stored by the label write path into `feedback`) move rollup counts to the known
    label's class: before or after their transaction, newest first, reviews and chargebacks over
    replayed labels, redelivered or stale verdicts changing nothing; inline label changes move
    only the transactions without a verdict."""
    from core.db.labels import store_labels
    from core.labels import LabelEvent, LabelSource

    rng = np.random.default_rng(12)
    manifest = _manifest(rng)
    now = datetime.now(UTC).timestamp()

    def verdict(tx: str, label: int, source: str, age: float, suffix: str = "") -> LabelEvent:
        return LabelEvent(
            f"{source}-{tx}{suffix}", tx, RUN, label, LabelSource(source), "ann", None, now - age
        )

    async def run() -> None:
        conn = await asyncpg.connect(database_url)
        try:
            references = {REGISTERED: await _register(conn, manifest)}
            await store_new(conn, _batch(rng, [f"k{i}" for i in range(800)], REGISTERED), {})
            inline = {
                r["id"]: r["label"]
                for r in await conn.fetch("SELECT id, label FROM transactions WHERE run_id = $1", RUN)
            }
            # verdicts after their transaction, one before it (k900), some flipping the inline label
            first = [verdict(f"k{i}", 1 - (inline[f"k{i}"] or 0), "analyst", 300) for i in range(0, 100)]
            first += [
                verdict(f"k{i}", 1, "chargeback", 200) for i in range(50, 150)
            ]  # over k50..k99's review
            first += [
                verdict(f"k{i}", 0, "replay", 100) for i in range(140, 220)
            ]  # k140..k149: chargeback wins
            first += [verdict("k900", 1, "chargeback", 100)]
            assert await store_labels(conn, first) == []
            await _check(conn, references)
            await store_new(conn, _batch(rng, [f"k{i}" for i in range(800, 1000)], REGISTERED), {})
            counts = await _check(conn, references)
            assert counts["scored"] == 1000
            known = await conn.fetchval(
                "SELECT class FROM rollup_known_classes WHERE run_id = $1 AND transaction_id = 'k900'", RUN
            )
            assert known == 1

            # a newer review overrides, an older one and a redelivery change nothing
            newer = [verdict(f"k{i}", 0, "analyst", 10, "-again") for i in range(60, 80)]
            stale = [verdict(f"k{i}", 1, "analyst", 10_000, "-old") for i in range(0, 20)]
            before = await _actual(conn)
            assert len(await store_labels(conn, first[:30])) == 30  # redelivered: stored already
            assert await _actual(conn) == before
            assert await store_labels(conn, newer + stale) == []
            await _check(conn, references)

            # inline label changes: only transactions without a verdict move
            await conn.execute(
                "UPDATE transactions SET label = CASE WHEN label = 1 THEN 0 ELSE 1 END "
                "WHERE run_id = $1 AND id IN (SELECT 'k' || g FROM generate_series(0, 400) g)",
                RUN,
            )
            counts = await _check(conn, references)
            assert counts["scored"] == 1000
            moved = await conn.fetchval(
                "SELECT sum(scored) FROM rollup_hours WHERE run_id = $1 AND class = 1", RUN
            )
            assert moved == await conn.fetchval(
                "SELECT count(*) FROM scores s JOIN known_labels k USING (run_id, id) "
                "WHERE s.run_id = $1 AND k.label = 1",
                RUN,
            )
        finally:
            await conn.close()

    asyncio.run(run())
