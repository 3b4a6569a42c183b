"""`/health` tells the truth: every state, made by writing heartbeat rows and registry changes
into the real PostgreSQL, read back through the real app under uvicorn.

ok (200) · degraded (200, with reasons): a stalled worker, no live worker, a worker or this
API on another version than the champion past the reload time, no champion registered,
the broker unreachable · unavailable (503): no database, no model.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import httpx
import pytest

from api.health import Observed, assess
from api.schemas import WorkerHealth
from core.bundle_store import BundleStore
from core.runtime.processes import free_port
from tests.api_fixtures import api_settings, serve
from tests.bundles import register, write_variant

pytestmark = pytest.mark.timeout(300)

#: Registry poll of the API under test: the "reload time" after which a version mismatch counts.
REFRESH = 0.5


def execute(database_url: str, sql: str, *args: object) -> None:
    async def run() -> None:
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute(sql, *args)
        finally:
            await conn.close()

    asyncio.run(run())


def heartbeat(
    database_url: str,
    worker: str,
    *,
    state: str = "ok",
    age_s: float = 0.0,
    version: str | None = None,
    reason: str | None = None,
) -> None:
    """Upsert one worker's heartbeat row, as a scorer worker does, `age_s` seconds old."""
    execute(
        database_url,
        "INSERT INTO scorer_workers (worker_id, host, pid, heartbeat_at, last_store_at, pending_events, "
        "assigned_partitions, lag, state, reason, model_version) "
        "VALUES ($1, 'host-a', 4242, now() - make_interval(secs => $2), now() - make_interval(secs => $2), "
        "12, 2, 3, $3, $4, $5) "
        "ON CONFLICT (worker_id) DO UPDATE SET heartbeat_at = EXCLUDED.heartbeat_at, state = EXCLUDED.state, "
        "reason = EXCLUDED.reason, model_version = EXCLUDED.model_version",
        worker,
        age_s,
        state,
        reason,
        version,
    )


def health(client: httpx.Client) -> tuple[int, dict]:
    response = client.get("/health")
    return response.status_code, response.json()


def wait_for_reason(client: httpx.Client, words: str, timeout: float = 30.0) -> dict:
    """Poll /health until one of its reasons contains `words` (a reload takes a poll or two)."""
    deadline = time.monotonic() + timeout
    while True:
        code, body = health(client)
        if any(words in reason for reason in body["reasons"]):
            assert code == 200
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.2)


@pytest.fixture
def champion(database_url: str, model_bundle: Path, tmp_path: Path) -> tuple[str, BundleStore]:
    store = BundleStore(tmp_path / "store")
    return asyncio.run(register(database_url, model_bundle, store, activate=True)), store


def test_every_state_from_heartbeats_and_the_registry(
    infra, database_url: str, model_bundle: Path, champion, tmp_path: Path
) -> None:
    version, store = champion
    settings = api_settings(infra, database_url, model_bundle, tmp_path, model_refresh_seconds=REFRESH)
    with serve(settings) as base_url, httpx.Client(base_url=base_url, timeout=30) as client:
        code, body = health(client)
        assert (code, body["status"], body["model"], body["champion"]) == (200, "degraded", version, version)
        assert body["reasons"] == ["no live scorer worker (no heartbeat in the last 15 s)"]

        heartbeat(database_url, "w1", version=version)
        code, body = health(client)
        assert (code, body["status"], body["reasons"], body["not_ready"]) == (200, "ok", [], [])
        (worker,) = body["scorer"]["workers"]
        assert (
            body["scorer"]["live"] == 1 and worker["worker_id"] == "w1" and worker["model_version"] == version
        )
        assert worker["pending_events"] == 12 and worker["heartbeat_age_s"] < 15

        heartbeat(database_url, "w2", state="stalled", reason="1,200 events pending, nothing stored for 30 s")
        code, body = health(client)
        assert (code, body["status"]) == (200, "degraded")
        assert body["reasons"] == [
            "scorer worker w2 is stalled: 1,200 events pending, nothing stored for 30 s"
        ]

        # Only gone or stopped workers left: nothing scores the stream.
        heartbeat(database_url, "w1", age_s=60, version=version)
        heartbeat(database_url, "w2", state="stopped")
        code, body = health(client)
        assert (code, body["status"], body["scorer"]["live"]) == (200, "degraded", 0)
        assert body["reasons"] == [
            "no live scorer worker (no heartbeat in the last 15 s); the last heartbeat was 0 s ago"
        ]
        execute(database_url, "DELETE FROM scorer_workers WHERE worker_id = 'w2'")
        code, body = health(client)
        assert body["reasons"] == [
            "no live scorer worker (no heartbeat in the last 15 s); the last heartbeat was 60 s ago"
        ]

        # A new champion: a worker still on the old one is fine while it reloads, degraded after.
        other = write_variant(model_bundle, tmp_path / "other", 0.66)
        asyncio.run(register(database_url, tmp_path / "other", store, activate=True))
        heartbeat(database_url, "w1", version=version)
        body = wait_for_reason(client, "scorer worker w1 scores with")
        assert (200, body["status"], body["model"], body["champion"]) == (200, "degraded", other, other)
        assert body["reasons"][0].startswith(
            f"scorer worker w1 scores with {version}, the champion {other} since"
        )
        heartbeat(database_url, "w1", version=other)  # it switched
        assert health(client)[1]["status"] == "ok"

        # The champion's stored bundle vanishes and another version is promoted that this API
        # cannot load: it keeps serving what it has, and says so once the reload time is over.
        third = write_variant(model_bundle, tmp_path / "third", 0.12)
        asyncio.run(register(database_url, tmp_path / "third", store, activate=False))
        (store.path(third) / "xgboost.ubj").write_bytes(b"broken after it was promoted")
        execute(database_url, "UPDATE model_versions SET active = false WHERE active")
        execute(database_url, "UPDATE model_versions SET active = true WHERE version = $1", third)
        execute(
            database_url,
            "INSERT INTO model_events (version, action, actor) VALUES ($1, 'promoted', 'x')",
            third,
        )
        heartbeat(database_url, "w1", version=other)
        body = wait_for_reason(client, "this API serves")
        assert body["status"] == "degraded" and body["model"] == other and body["champion"] == third
        assert f"this API serves {other}, not the champion {third}" in " ".join(body["reasons"])
        assert client.get("/").json()["model_version"] == other


def test_no_champion_means_the_fallback_is_served_and_said(
    infra, database_url: str, model_bundle: Path, tmp_path: Path
) -> None:
    settings = api_settings(infra, database_url, model_bundle, tmp_path)
    with serve(settings) as base_url, httpx.Client(base_url=base_url, timeout=30) as client:
        heartbeat(database_url, "w1")
        code, body = health(client)
        assert (code, body["status"], body["champion"]) == (200, "degraded", None)
        assert body["reasons"][0].startswith("no champion is registered: serving ")
        assert body["model"] is not None


def test_unavailable_without_a_model_or_a_database(infra, database_url: str, tmp_path: Path) -> None:
    no_model = api_settings(infra, database_url, tmp_path / "no-bundle-here", tmp_path)
    with serve(no_model) as base_url, httpx.Client(base_url=base_url, timeout=30) as client:
        code, body = health(client)
        assert (code, body["status"], body["not_ready"], body["model"]) == (
            503,
            "unavailable",
            ["model"],
            None,
        )
        assert "no model is served" in body["reasons"][0]
        assert client.get("/api/stats").status_code == 200  # analytics keep working
        refused = client.post(
            "/api/explain", json={"time": 1.0, "amount": 1.0, **{f"V{i}": 0.0 for i in range(1, 29)}}
        )
        assert refused.status_code == 503 and "no model" in refused.json()["detail"]

    nowhere = f"postgresql://postgres@127.0.0.1:{free_port()}/none"
    no_database = api_settings(infra, nowhere, tmp_path / "no-bundle-here", tmp_path / "2")
    with serve(no_database) as base_url, httpx.Client(base_url=base_url, timeout=30) as client:
        code, body = health(client)
        assert (code, body["status"], body["not_ready"]) == (503, "unavailable", ["database", "model"])
        assert body["database"].startswith("unreachable") and body["scorer"] is None
        stats = client.get("/api/stats")
        assert stats.status_code == 503 and stats.headers["retry-after"]
        assert stats.json()["detail"].startswith("database unavailable: ")


def test_an_unreachable_broker_degrades(
    infra, database_url: str, model_bundle: Path, champion, tmp_path
) -> None:
    version, _ = champion
    settings = api_settings(infra, database_url, model_bundle, tmp_path).model_copy(
        update={"kafka_bootstrap_servers": f"127.0.0.1:{free_port()}"}
    )
    with serve(settings) as base_url, httpx.Client(base_url=base_url, timeout=30) as client:
        heartbeat(database_url, "w1", version=version)
        code, body = health(client)
        assert (code, body["status"]) == (200, "degraded")
        assert body["reasons"] == [f"broker unreachable at {settings.kafka_bootstrap_servers}"]


def _observed(**changes) -> Observed:
    seen = Observed(
        database="ok",
        broker="ok",
        served="v2",
        model_error=None,
        champion="v2",
        shadow=None,
        champion_age=100.0,
        served_behind=None,
        from_fallback=False,
        workers=[_worker("w1", "v2")],
    )
    return replace(seen, **changes)


def _worker(worker_id: str, version: str | None, age: float = 1.0, state: str = "ok") -> WorkerHealth:
    now = datetime.now(UTC)
    return WorkerHealth(
        worker_id=worker_id,
        host="h",
        pid=1,
        state=state,
        reason=None,
        model_version=version,
        pending_events=0,
        lag=0,
        assigned_partitions=1,
        heartbeat_at=now,
        last_store_at=now,
        heartbeat_age_s=age,
        last_store_age_s=age,
    )


@pytest.mark.parametrize(
    ("changes", "status", "reason"),
    [
        ({}, "ok", None),
        # a worker on the old version: fine within the reload time (2 x 5 s), degraded after
        ({"workers": [_worker("w1", "v1")], "champion_age": 9.9}, "ok", None),
        (
            {"workers": [_worker("w1", "v1")], "champion_age": 10.1},
            "degraded",
            "scorer worker w1 scores with v1",
        ),
        # this API behind the champion: the same grace
        ({"served": "v1", "served_behind": 9.0, "model_error": "x"}, "ok", None),
        ({"served": "v1", "served_behind": 11.0, "model_error": "x"}, "degraded", "this API serves v1"),
        # the heartbeat age decides what is live
        ({"workers": [_worker("w1", "v2", age=15.0)]}, "ok", None),
        ({"workers": [_worker("w1", "v2", age=15.1)]}, "degraded", "no live scorer worker"),
        ({"workers": [_worker("w1", "v2", state="starting")]}, "ok", None),
        ({"broker": "not configured"}, "ok", None),
        ({"database": "unreachable: x", "workers": None}, "unavailable", "database unreachable"),
        ({"served": None, "model_error": "nothing"}, "unavailable", "no model is served: nothing"),
    ],
)
def test_the_verdict_follows_the_rules(changes: dict, status: str, reason: str | None) -> None:
    verdict = assess(_observed(**changes), stale_seconds=15.0, reload_seconds=5.0)
    assert verdict.status == status
    if reason is None:
        assert verdict.reasons == []
    else:
        assert reason in " ".join(verdict.reasons)
