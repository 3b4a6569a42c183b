"""Shadow scoring: the registry's shadow scores every live row beside the champion, stored apart,
never alerting, and never costing the champion a row.

The worker's own parts run in this process against the real PostgreSQL and broker (what the
agent calls: `prepare`, then `write_then_ack`), on a registry with a champion (the session
bundle) and a shadow (a second bundle trained with another seed, with a low threshold so that
it would alert on about a third of the rows, where the champion alerts on few). Worker
processes are killed mid-batch in `tests/test_champion_challenger.py`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import numpy as np
import pytest

from core.bundle_store import BundleStore
from core.dataset import SAMPLE_PATH, load_csv
from core.db.registry import set_shadow
from core.ensemble import Ensemble
from core.events import build_event, encode_event
from core.models import EnsembleResolver
from scorer.faults import Fault, FaultInjector
from scorer.health import WorkerHealth
from scorer.metrics import ScorerMetrics
from scorer.resolution import ModelResolution
from scorer.resources import Resources
from scorer.worker import ScorerWorker
from scorer.writer import BatchWriter
from tests.bundles import register, write_variant
from tests.streaming_fixtures import fetch, read_topic, register_run

DATA = load_csv(SAMPLE_PATH)
ROWS = DATA.raw


class Event:
    """What the agent hands the worker: a value and where it came from."""

    def __init__(self, value: bytes, offset: int) -> None:
        self.value = value
        self.message = type("M", (), {"topic": "t", "partition": 0, "offset": offset, "key": b"k"})()


def events(start: int, stop: int, *, run_id: str | None = None, offset: int = 0) -> list[Event]:
    return [
        Event(
            encode_event(
                build_event(
                    ROWS[i].tolist(),
                    event_id=f"tx-{i}",
                    label=int(DATA.labels[i]),
                    run_id=run_id,
                    produced_at=time.time(),
                )
            ),
            offset + i - start,
        )
        for i in range(start, stop)
    ]


@dataclasses.dataclass
class Stack:
    worker: ScorerWorker
    champion: Ensemble
    shadow: Ensemble  # the registry's shadow when the test starts
    other_shadow: Ensemble  # registered, not in a role: for switching the shadow mid-test
    store: BundleStore
    database_url: str

    async def write(self, batch: list[Event]) -> list:
        """What the agent does with one batch; returns the refused (dead letters)."""
        prepared = await self.worker.prepare(batch)

        async def ack(event: Event) -> bool:
            return True

        await self.worker.write_then_ack(prepared, batch, ack)
        return prepared.refused

    async def set_shadow(self, version: str | None, *, follow: bool = True) -> None:
        """Change the registry's shadow; the worker follows it (its next registry read, now)."""
        conn = await asyncpg.connect(self.database_url)
        try:
            await set_shadow(conn, version, "tests")
        finally:
            await conn.close()
        if follow:
            await self.worker.models.follow()


@pytest.fixture
def loop() -> Iterator[asyncio.Runner]:
    with asyncio.Runner() as runner:
        yield runner


@pytest.fixture
def stack(loop, settings, model_bundle: Path, challenger_bundle: Path, tmp_path: Path) -> Iterator[Stack]:
    store = BundleStore(settings.resolved_model_store)
    challenger = Ensemble.load(challenger_bundle)
    eager = float(np.quantile(challenger.score(ROWS[:2000]).score, 0.66))
    shadow_v = write_variant(challenger_bundle, tmp_path / "eager", eager)
    other_v = write_variant(challenger_bundle, tmp_path / "other", 0.5)

    async def open_() -> Stack:
        await register(settings.database_url, model_bundle, store, activate=True)
        await register(settings.database_url, tmp_path / "eager", store, activate=False)
        await register(settings.database_url, tmp_path / "other", store, activate=False)
        conn = await asyncpg.connect(settings.database_url)
        try:
            await set_shadow(conn, shadow_v, "tests")
        finally:
            await conn.close()
        metrics, health = ScorerMetrics(), WorkerHealth(stall_seconds=30)
        resources = await Resources.open(
            dsn=lambda: settings.database_url,
            bootstrap_servers=settings.kafka_bootstrap_servers,
            on_failure=print,
        )
        async with resources.pool.acquire() as conn:
            resolver = await EnsembleResolver.open(conn, fallback_path=None)
        models = ModelResolution(resolver, resources.pool, metrics, health, print)
        writer = BatchWriter(
            resources.pool,
            resources.producer,
            settings.topic_alerts,
            settings.topic_dead_letters,
            metrics,
            health,
            FaultInjector(Fault()),
        )
        worker = ScorerWorker(resources, models, writer, metrics, health)
        return Stack(
            worker,
            resolver.active,
            Ensemble.load(tmp_path / "eager"),
            Ensemble.load(tmp_path / "other"),
            store,
            settings.database_url,
        )

    opened = loop.run(open_())
    assert opened.shadow.version == shadow_v and opened.other_shadow.version == other_v
    yield opened
    loop.run(opened.worker.resources.close())


def metric(stack: Stack, name: str, **labels: str) -> float:
    total = 0.0
    for family in stack.worker.metrics.registry.collect():
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def shadow_rows(database_url: str) -> dict[str, tuple]:
    rows = asyncio.run(
        fetch(
            database_url,
            "SELECT id, run_id, model_version, score, recon_error, would_alert, time FROM shadow_scores",
        )
    )
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)), "a transaction with two shadow rows"
    return {r["id"]: tuple(r)[1:] for r in rows}


def test_live_rows_get_one_shadow_score_each_stored_apart_and_the_shadow_never_alerts(
    loop, stack: Stack, settings, model_bundle: Path
) -> None:
    # A backtest run scored by the champion's own version and threshold lands in the same
    # model group as the live rows; another run with another threshold in a group of its own.
    same_group = asyncio.run(register_run(settings.database_url, model_bundle, stack.champion.threshold))
    own_group = asyncio.run(register_run(settings.database_url, model_bundle, 0.01))
    batches = [
        events(0, 200),
        events(200, 300) + events(300, 400, run_id=same_group, offset=100),
        events(400, 500) + events(500, 600, run_id=own_group, offset=100),
        events(600, 800),
    ]
    for batch in batches:
        assert loop.run(stack.write(batch)) == []
    live = [f"tx-{i}" for i in [*range(0, 300), *range(400, 500), *range(600, 800)]]

    # Redelivered (a crash before the ack), after the registry switched the shadow: no second
    # shadow row, and the rows keep the score of the shadow that scored them when they were stored.
    loop.run(stack.set_shadow(stack.other_shadow.version))
    for batch in batches[:2]:
        assert loop.run(stack.write(batch)) == []
    # New rows after the switch are scored by the new shadow.
    assert loop.run(stack.write(events(800, 900))) == []

    stored = shadow_rows(settings.database_url)
    assert set(stored) == {*live, *(f"tx-{i}" for i in range(800, 900))}  # backtest rows: none
    first = np.array([int(i.split("-")[1]) for i in live])
    expected = stack.shadow.score(ROWS[first])
    got = np.array([stored[i][2] for i in live])
    assert {stored[i][:2] for i in live} == {("", stack.shadow.version)}
    assert got == pytest.approx(expected.score, rel=1e-6, abs=1e-9)
    assert np.array([stored[i][3] for i in live]) == pytest.approx(expected.recon_error, rel=1e-5, abs=1e-9)
    assert [stored[i][4] for i in live] == (got >= stack.shadow.threshold).tolist()
    assert [stored[i][5] for i in live] == ROWS[first, 0].tolist()  # data time, for windowed reads
    later = [f"tx-{i}" for i in range(800, 900)]
    assert {stored[i][1] for i in later} == {stack.other_shadow.version}
    assert stack.shadow.score(ROWS[800:900]).score == pytest.approx([stored[i][2] for i in later], rel=1e-6)

    # The champion's scores and alerts are untouched by the shadow: every score row is the
    # champion's, and the alerts are exactly the champion's alerting rows.
    scores = asyncio.run(fetch(settings.database_url, "SELECT id, model_version, alert, score FROM scores"))
    assert {r["model_version"] for r in scores} == {stack.champion.version}
    assert len(scores) == 900
    alerting = {r["id"] for r in scores if r["alert"]}
    shadow_only = {i for i, row in stored.items() if row[4]} - alerting
    assert len(shadow_only) > 100, "the shadow would alert on many rows the champion does not"
    messages = asyncio.run(
        read_topic(settings.kafka_bootstrap_servers, settings.topic_alerts, len(alerting), 20)
    )
    assert {key.decode() for key, _, _ in messages} == alerting
    assert shadow_only.isdisjoint(key.decode() for key, _, _ in messages)

    assert metric(stack, "fraudstream_shadow_scored_total", version=stack.shadow.version) == len(live)
    assert metric(stack, "fraudstream_shadow_scored_total", version=stack.other_shadow.version) == 100
    assert metric(stack, "fraudstream_shadow_failures_total") == 0
    assert metric(stack, "fraudstream_shadow_model", version=stack.other_shadow.version) == 1
    assert metric(stack, "fraudstream_shadow_model", version=stack.shadow.version) == 0
    assert stack.worker.health.shadow_version == stack.other_shadow.version

    # The shadow switched off: nothing more is shadow-scored.
    loop.run(stack.set_shadow(None))
    assert loop.run(stack.write(events(900, 1000))) == []
    assert len(shadow_rows(settings.database_url)) == len(live) + 100
    assert metric(stack, "fraudstream_shadow_model") == 0 and stack.worker.health.shadow_version is None


class Refusing:
    """A shadow model that raises on every batch (a broken challenger)."""

    def __init__(self, ensemble: Ensemble) -> None:
        self.version, self.threshold = ensemble.version, ensemble.threshold

    def score(self, raw: np.ndarray):
        raise RuntimeError("the challenger's model cannot score this")


class NaNForBigAmounts:
    """A shadow model whose score is NaN for amounts above 100 (and real scores otherwise)."""

    def __init__(self, ensemble: Ensemble) -> None:
        self.ensemble = ensemble
        self.version, self.threshold = ensemble.version, ensemble.threshold

    def score(self, raw: np.ndarray):
        scored = self.ensemble.score(raw)
        return dataclasses.replace(scored, score=np.where(raw[:, -1] > 100, np.nan, scored.score))


def test_a_shadow_that_raises_or_scores_nan_costs_the_champion_nothing(loop, stack: Stack, settings) -> None:
    resolver = stack.worker.models.resolver
    real = resolver.shadow
    resolver.shadow = Refusing(real)
    assert loop.run(stack.write(events(0, 300))) == []
    resolver.shadow = NaNForBigAmounts(real)
    assert loop.run(stack.write(events(300, 600))) == []

    scores = asyncio.run(fetch(settings.database_url, "SELECT id, model_version FROM scores"))
    assert sorted(r["id"] for r in scores) == sorted(f"tx-{i}" for i in range(600))
    assert {r["model_version"] for r in scores} == {stack.champion.version}
    big = ROWS[300:600, -1] > 100
    assert 10 < big.sum() < 290
    assert set(shadow_rows(settings.database_url)) == {
        f"tx-{i}" for i in range(300, 600) if ROWS[i, -1] <= 100
    }
    version = real.version
    assert metric(stack, "fraudstream_shadow_failures_total", version=version, stage="score") == 2
    assert (
        metric(stack, "fraudstream_shadow_skipped_total", version=version, stage="score") == 300 + big.sum()
    )
    assert metric(stack, "fraudstream_dead_letters_total") == 0


@pytest.mark.parametrize(
    "refusal",
    [
        # a constraint: PostgreSQL refuses the content (a "permanent" error, which for the champion's
        # own rows means isolating and dead-lettering them): none of the champion's rows may go
        "ALTER TABLE shadow_scores ADD CONSTRAINT refuse_everything CHECK (score < 0)",
        # a deployment without the table (an error that would otherwise be retried forever)
        "ALTER TABLE shadow_scores RENAME TO shadow_scores_elsewhere",
    ],
)
def test_postgresql_refusing_the_shadow_rows_never_fails_the_champions_write(
    loop, stack: Stack, settings, refusal: str
) -> None:
    async def execute(sql: str) -> None:
        conn = await asyncpg.connect(settings.database_url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(execute(refusal))
    for start in (0, 250):
        assert loop.run(stack.write(events(start, start + 250))) == []
    scores = asyncio.run(fetch(settings.database_url, "SELECT id, model_version FROM scores"))
    assert sorted(r["id"] for r in scores) == sorted(f"tx-{i}" for i in range(500))
    version = stack.shadow.version
    assert metric(stack, "fraudstream_shadow_failures_total", version=version, stage="store") == 2
    assert metric(stack, "fraudstream_shadow_skipped_total", version=version, stage="store") == 500
    assert metric(stack, "fraudstream_shadow_scored_total") == 0
    assert metric(stack, "fraudstream_dead_letters_total") == 0
    assert stack.worker.health.status()[0] != "stalled"

    # Put right, the shadow's rows come again with the next batch.
    undo = {
        "ADD CONSTRAINT": "ALTER TABLE shadow_scores DROP CONSTRAINT refuse_everything",
        "RENAME": "ALTER TABLE shadow_scores_elsewhere RENAME TO shadow_scores",
    }
    asyncio.run(execute(next(sql for key, sql in undo.items() if key in refusal)))
    assert loop.run(stack.write(events(500, 600))) == []
    assert set(shadow_rows(settings.database_url)) == {f"tx-{i}" for i in range(500, 600)}


def test_a_shadow_that_cannot_be_loaded_is_skipped_and_a_good_one_is_followed_without_a_restart(
    loop, stack: Stack, settings
) -> None:
    # The stored bundle of a newly chosen shadow is damaged after it was chosen (the registry
    # checked it then), before the workers load it: their loads fail its checksum.
    broken = stack.other_shadow.version
    loop.run(stack.set_shadow(broken, follow=False))
    target = stack.store.path(broken) / "xgboost.ubj"
    os.chmod(target, 0o644)
    target.write_bytes(target.read_bytes()[:-10] + b"0123456789")
    loop.run(stack.worker.models.follow())
    health = stack.worker.health
    assert stack.worker.models.resolver.shadow is None  # never the shadow before it, under the new name
    assert health.shadow_version == broken and "xgboost.ubj" in (health.shadow_problem or "")

    assert loop.run(stack.write(events(0, 300))) == []
    assert len(asyncio.run(fetch(settings.database_url, "SELECT id FROM scores"))) == 300
    assert shadow_rows(settings.database_url) == {}
    assert metric(stack, "fraudstream_shadow_failures_total", version=broken, stage="load") == 1
    assert metric(stack, "fraudstream_shadow_skipped_total", version=broken, stage="load") == 300

    loop.run(stack.set_shadow(stack.shadow.version))  # a good shadow: followed at the next registry read
    assert health.shadow_problem is None
    assert loop.run(stack.write(events(300, 400))) == []
    assert {row[1] for row in shadow_rows(settings.database_url).values()} == {stack.shadow.version}
    assert len(shadow_rows(settings.database_url)) == 100
