"""The embedded runtime: start, readiness, restart reuse, clean shutdown, no orphans."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import asyncpg
import psutil
import pytest

from core.db.partitions import is_partition
from core.db.schema import metadata
from core.kafka import broker_reachable
from core.runtime.broker import EmbeddedBroker
from core.runtime.postgres import EmbeddedPostgres
from core.runtime.processes import wait_until
from core.runtime.stack import Infra, NotConfigured, resolve_endpoints
from core.settings import Settings


async def _query(url: str, sql: str) -> object:
    conn = await asyncpg.connect(url)
    try:
        *setup, last = sql.split(";")
        for statement in setup:
            await conn.execute(statement)
        return await conn.fetchval(last)
    finally:
        await conn.close()


def test_infra_starts_ready_and_restarts_on_the_same_data(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path / "state", _env_file=None)
    infra = Infra(settings)
    endpoints = infra.start()
    try:
        assert endpoints.database_url.startswith("postgresql://postgres@127.0.0.1:")
        assert asyncio.run(broker_reachable(endpoints.bootstrap_servers))
        tables = asyncio.run(
            _query(
                endpoints.database_url, "SELECT array_agg(tablename) FROM pg_tables WHERE schemaname='public'"
            )
        )
        # migrations == declared schema (and the partitions of the row tables, core.db.partitions)
        assert {t for t in tables if not is_partition(t)} == set(metadata.tables) | {"alembic_version"}
        asyncio.run(_query(endpoints.database_url, "CREATE TABLE kept (x int); INSERT INTO kept VALUES (42)"))
        runtime = json.loads((settings.state_dir / "runtime.json").read_text())
        assert runtime["database_url"] == endpoints.database_url
        assert resolve_endpoints(settings) == endpoints
        pids = [infra.broker.process.pid, infra.postgres.process.pid]
    finally:
        infra.stop()
    assert not (settings.state_dir / "runtime.json").exists()
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie" for pid in pids)
    with pytest.raises(NotConfigured, match="fraudstream infra"):
        resolve_endpoints(settings)

    again = Infra(settings)
    endpoints = again.start()
    try:
        assert asyncio.run(_query(endpoints.database_url, "SELECT x FROM kept")) == 42
    finally:
        again.stop()


def test_configured_endpoints_win_over_the_embedded_ones(tmp_path: Path) -> None:
    settings = Settings(
        state_dir=tmp_path,
        kafka_bootstrap_servers="127.0.0.1:1",
        database_url="postgresql://u@127.0.0.1:2/db",
        _env_file=None,
    )
    endpoints = resolve_endpoints(settings)
    assert (endpoints.bootstrap_servers, endpoints.database_url) == (
        "127.0.0.1:1",
        "postgresql://u@127.0.0.1:2/db",
    )


def test_a_crashed_server_is_reported_with_its_log(tmp_path: Path) -> None:
    data = tmp_path / "pg"
    data.mkdir()
    (data / "PG_VERSION").write_text("not a cluster\n")  # initdb is skipped, the server then refuses to start
    server = EmbeddedPostgres(data, tmp_path / "pg.log")
    with pytest.raises(RuntimeError, match="PostgreSQL exited"):
        server.start(timeout=30)


def test_children_do_not_outlive_a_killed_supervisor(tmp_path: Path) -> None:
    """SIGKILL the parent (no chance to clean up): the broker and PostgreSQL still go."""
    script = textwrap.dedent(f"""
        import json, sys, time
        from pathlib import Path
        from core.runtime.broker import EmbeddedBroker
        from core.runtime.postgres import EmbeddedPostgres
        root = Path({str(tmp_path)!r})
        broker = EmbeddedBroker(root / "broker.log"); broker.start()
        pg = EmbeddedPostgres(root / "pg", root / "pg.log"); pg.start()
        print(json.dumps([broker.process.pid, pg.process.pid]), flush=True)
        time.sleep(600)
    """)
    parent = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    pids = json.loads(parent.stdout.readline())
    assert all(psutil.pid_exists(pid) for pid in pids)
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.2)
    assert not any(_alive(pid) for pid in pids)
    # and the next start reuses the data directory the orphan-free shutdown left behind
    pg = EmbeddedPostgres(tmp_path / "pg", tmp_path / "pg.log")
    pg.start()
    pg.stop()


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_broker_port_clash_is_a_clear_error(tmp_path: Path) -> None:
    first = EmbeddedBroker(tmp_path / "a.log")
    first.start()
    try:
        second = EmbeddedBroker(tmp_path / "b.log", port=first.port)
        with pytest.raises(RuntimeError, match="already in use"):
            second.start(timeout=5)
        second.stop()
    finally:
        first.stop()


def test_a_killed_broker_and_postgres_come_back_on_their_port_and_data(tmp_path: Path) -> None:
    """What the supervisor does after a SIGKILL: launch again; same address, committed rows kept."""
    postgres = EmbeddedPostgres(tmp_path / "pg", tmp_path / "pg.log")
    broker = EmbeddedBroker(tmp_path / "broker.log")
    postgres.start()
    broker.start()
    try:
        url, bootstrap = postgres.url, broker.bootstrap_servers
        asyncio.run(_query(url, "CREATE TABLE kept (x int); INSERT INTO kept VALUES (7); SELECT 1"))
        for server in (postgres, broker):
            server.process.kill()
            server.process.wait()
        broker.launch()
        wait_until(broker.accepting, timeout=30, what="the broker again", process=broker.process)
        for _attempt in range(20):  # old backends may hold the shared memory a moment: back off
            postgres.launch()
            try:
                wait_until(postgres.accepting, timeout=60, what="PostgreSQL again", process=postgres.process)
                break
            except RuntimeError:
                time.sleep(0.5)
        assert (postgres.url, broker.bootstrap_servers) == (url, bootstrap)
        assert asyncio.run(_query(url, "SELECT x FROM kept")) == 7
        assert asyncio.run(broker_reachable(bootstrap))
    finally:
        broker.stop()
        postgres.stop()
