"""The API's result cache: bounded staleness, single flight, read-your-writes; the broker check.

The cache runs against the real PostgreSQL (its recomputes open real connections); the
slow recompute is simulated by holding the compute function on an event, so what is
checked is the logic (what is served while a recompute runs), not how fast anything is.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from datetime import datetime

import asyncpg
import httpx
import numpy as np
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from api.broker import BrokerMonitor
from api.cache import FIRST_PAGE, FULL_SCAN, ResultCache
from core.db.store import ScoredRows, store_scored
from core.db.urls import sqlalchemy_url
from core.kafka import broker_reachable
from tests.api_fixtures import api_settings, serve

pytestmark = pytest.mark.timeout(180)

MAX_AGE = 1.0  # its margin (0.2 s) absorbs event-loop lag: the refresh starts before the bound


class Gate:
    """A compute function whose calls can be held, counted and told apart."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.open.set()
        self.entered = asyncio.Event()
        self.calls = 0
        self.fail = False

    async def __call__(self, conn) -> dict:
        self.calls += 1
        self.entered.set()
        await self.open.wait()
        if self.fail:
            raise RuntimeError("recompute failed")
        await conn.execute(text("SELECT 1"))  # a real round trip on the cache's own connection
        return {"call": self.calls}


def run_with_cache(database_url: str, scenario) -> None:
    async def main() -> None:
        engine = create_async_engine(sqlalchemy_url(database_url))
        cache = ResultCache(MAX_AGE, idle_seconds=30.0)
        cache.bind(engine)
        try:
            await scenario(cache)
        finally:
            await cache.close()
            await engine.dispose()

    asyncio.run(main())


def test_stale_answers_only_while_a_timely_recompute_runs(database_url: str) -> None:
    async def scenario(cache: ResultCache) -> None:
        gate = Gate()
        first = await cache.get("k", "", gate)  # cold: computed while the request waits
        assert first.value == {"call": 1}
        again = await cache.get("k", "", gate)  # fresh: served as is; from now on kept fresh
        assert again is first and gate.calls == 1

        gate.open.clear()
        gate.entered.clear()
        await asyncio.wait_for(gate.entered.wait(), 30)  # the background recompute has started
        refresh_started = cache._slots["k"].inflight_started
        assert refresh_started - first.started <= MAX_AGE  # it started before the answer expired
        served = []
        deadline = refresh_started + 3 * MAX_AGE
        while cache._clock() < deadline:  # the recompute is held: requests must not wait for it
            served.append((cache._clock(), await asyncio.wait_for(cache.get("k", "", gate), 10)))
            await asyncio.sleep(0.02)
        assert all(entry is first for _, entry in served)
        assert any(now - entry.started > MAX_AGE for now, entry in served)  # stale ones were served...
        # ...and each of them was at most max_age + (time the running recompute had taken so far)
        assert all(now - entry.started <= MAX_AGE + (now - refresh_started) for now, entry in served)

        running = cache._slots["k"].inflight
        gate.open.set()
        await running
        newer = await cache.get("k", "", gate)
        assert newer.value == {"call": 2} and newer.as_of > first.as_of
        assert newer.started >= refresh_started - 1e-9

    run_with_cache(database_url, scenario)


def test_single_flight_and_read_your_writes(database_url: str) -> None:
    async def scenario(cache: ResultCache) -> None:
        gate = Gate()
        gate.open.clear()
        waiting = [asyncio.create_task(cache.get("cold", "", gate)) for _ in range(20)]
        await asyncio.wait_for(gate.entered.wait(), 30)
        gate.open.set()
        results = await asyncio.gather(*waiting)
        assert gate.calls == 1 and len({id(r) for r in results}) == 1

        before = await cache.get("cold", "", gate, FIRST_PAGE)
        aggregate = await cache.get("aggregate", "", Gate())
        cache.written("")  # a row stored through this process: the next read must see it
        after = await cache.get("cold", "", gate, FIRST_PAGE)
        assert after is not before and after.value["call"] > before.value["call"]
        other_run = Gate()
        kept = await cache.get("other", "run-b", other_run, FIRST_PAGE)
        cache.written("")
        assert await cache.get("other", "run-b", other_run, FIRST_PAGE) is kept  # other runs
        assert await cache.get("aggregate", "", Gate()) is aggregate  # aggregates follow the bound only

    run_with_cache(database_url, scenario)


def test_a_failed_recompute_is_never_hidden_behind_an_old_answer(database_url: str) -> None:
    async def scenario(cache: ResultCache) -> None:
        gate = Gate()
        first = await cache.get("k", "", gate)
        await cache.get("k", "", gate)
        gate.fail = True
        await asyncio.sleep(MAX_AGE * 3)  # background tries fail meanwhile
        with pytest.raises(RuntimeError, match="recompute failed"):
            await cache.get("k", "", gate)  # too old to serve: the request recomputes, and sees why
        gate.fail = False
        assert (await cache.get("k", "", gate)).value["call"] > first.value["call"]

    run_with_cache(database_url, scenario)


def test_turned_off_every_request_computes(database_url: str) -> None:
    async def main() -> None:
        engine = create_async_engine(sqlalchemy_url(database_url))
        cache = ResultCache(0)
        cache.bind(engine)
        gate = Gate()
        try:
            for _ in range(3):
                await cache.get("k", "", gate)
            assert gate.calls == 3
        finally:
            await engine.dispose()

    asyncio.run(main())


# --------------------------------------------------------------------------- through HTTP


def _writer(database_url: str, model_bundle, stop: threading.Event, commits: list) -> None:
    """Store 40 rows every 50 ms through store_scored; record (commit finished at, rows so far)."""
    from core.ensemble import Ensemble

    ensemble = Ensemble.load(model_bundle)
    rng = np.random.default_rng(5)

    async def main() -> None:
        conn = await asyncpg.connect(database_url)
        total = 0
        try:
            while not stop.is_set():
                raw = rng.normal(size=(40, 30))
                raw[:, 0] = np.abs(raw[:, 0]) * 1000
                raw[:, -1] = np.abs(raw[:, -1]) * 100
                scored = ensemble.score(raw)
                rows = ScoredRows(
                    ids=[uuid.uuid4().hex for _ in range(40)],
                    features=raw,
                    labels=[int(i % 20 == 0) for i in range(40)],
                    run_ids=[None] * 40,
                    produced_at=[time.time()] * 40,
                    model_version=ensemble.version,
                    score=scored.score,
                    recon_error=scored.recon_error,
                    alert=scored.alert,
                )
                total += await store_scored(conn, rows)
                commits.append((time.time(), total))
                await asyncio.sleep(0.05)
        finally:
            await conn.close()

    asyncio.run(main())


def test_answers_while_rows_stream_in_are_as_new_as_they_say(
    infra, database_url: str, model_bundle, tmp_path
) -> None:
    """Every answer holds at least the rows committed before its X-As-Of; the rows show up."""
    settings = api_settings(infra, database_url, model_bundle, tmp_path)
    stop, commits = threading.Event(), []
    writer = threading.Thread(target=_writer, args=(database_url, model_bundle, stop, commits))
    answers = []
    with serve(settings) as base_url, httpx.Client(base_url=base_url, timeout=30) as client:
        writer.start()
        try:
            while len(commits) < 60:
                for path in ("/api/stats", "/api/distributions/amount"):
                    response = client.get(path)
                    assert response.status_code == 200, response.text
                    as_of = datetime.fromisoformat(response.headers["x-as-of"]).timestamp()
                    answers.append((path, as_of, response.json()))
                time.sleep(0.02)
        finally:
            stop.set()
            writer.join(30)
        total = commits[-1][1]
        for path, as_of, body in answers:
            committed = max((n for at, n in commits if at <= as_of), default=0)
            seen = body["volume"] if path == "/api/stats" else body["rows"]
            assert seen >= committed, (path, seen, committed)
        stats_as_of = [as_of for path, as_of, _ in answers if path == "/api/stats"]
        assert stats_as_of == sorted(stats_as_of) and len(set(stats_as_of)) > 1  # it moved on
        # after the last commit, the answers catch up with every row
        deadline = time.monotonic() + 60
        while (body := client.get("/api/stats").json())["volume"] != total:
            assert time.monotonic() < deadline, f"stats stuck at {body['volume']} of {total}"
            time.sleep(0.1)
        assert body["frauds"] == total // 20 and body["labelled"] == total


# --------------------------------------------------------------------------- broker check


def test_broker_status_is_checked_in_the_background(infra) -> None:
    async def main() -> None:
        probes = []

        async def probe(bootstrap: str, timeout: float) -> bool:
            probes.append(bootstrap)
            return await broker_reachable(bootstrap, timeout=timeout)

        up = BrokerMonitor(infra.bootstrap_servers, interval=60, probe=probe)
        down = BrokerMonitor("127.0.0.1:9", interval=60, timeout=0.5, probe=probe)
        none = BrokerMonitor(None, probe=probe)
        for monitor in (up, down, none):
            monitor.start()
        try:
            for _ in range(20):
                assert await up.status() == "ok"
                assert await down.status() == "unreachable at 127.0.0.1:9"
                assert await none.status() == "not configured"
            assert sorted(probes) == sorted([infra.bootstrap_servers, "127.0.0.1:9"])  # once each
        finally:
            for monitor in (up, down, none):
                await monitor.close()

    asyncio.run(main())


def test_slow_answers_follow_their_own_bound(database_url: str) -> None:
    async def main() -> None:
        engine = create_async_engine(sqlalchemy_url(database_url))
        cache = ResultCache(MAX_AGE, slow_max_age=4 * MAX_AGE)
        cache.bind(engine)
        slow, live = Gate(), Gate()
        try:
            first_slow = await cache.get("histogram", "", slow, FULL_SCAN)
            first_live = await cache.get("stats", "", live)
            await asyncio.sleep(1.5 * MAX_AGE)  # past the live bound, well inside the slow one
            assert await cache.get("histogram", "", slow, FULL_SCAN) is first_slow and slow.calls == 1
            assert (await cache.get("stats", "", live)) is not first_live and live.calls == 2
        finally:
            await cache.close()
            await engine.dispose()

    asyncio.run(main())
