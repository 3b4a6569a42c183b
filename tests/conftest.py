"""Fixtures that start the real broker and the real PostgreSQL once per test session.

Each test gets its own database (migrated) and its own topics, so tests never see each
other's rows or messages, while the servers themselves start only once.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from core.db.migrate import upgrade
from core.kafka import ensure_topics
from core.runtime.broker import EmbeddedBroker
from core.runtime.postgres import EmbeddedPostgres
from core.settings import Settings

#: Worker processes and topic/database helpers shared by the streaming and backtest tests.
pytest_plugins = ["tests.streaming_fixtures"]


@dataclass(frozen=True)
class Infra:
    bootstrap_servers: str
    admin_url: str
    postgres: EmbeddedPostgres
    broker: EmbeddedBroker

    def database_url(self, name: str) -> str:
        return self.admin_url.rsplit("/", 1)[0] + f"/{name}"

    def create_database(self, prefix: str = "test") -> tuple[str, str]:
        """A new, migrated database: (name, url)."""
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        _admin(self, f"CREATE DATABASE {name}")
        url = self.database_url(name)
        upgrade(url)
        return name, url

    def drop_database(self, name: str) -> None:
        """Best effort: a test that stopped the server, or a busy machine, must not fail teardown."""
        if self.postgres.process is None or self.postgres.process.poll() is not None:
            return
        try:
            _admin(self, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            warnings.warn(f"could not drop test database {name}: {error}", stacklevel=2)


@dataclass(frozen=True)
class Topics:
    transactions: str
    alerts: str
    dead_letters: str
    partitions: int
    labels: str = "labels"


@pytest.fixture(scope="session", autouse=True)
def _isolated_environment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Tests never reach a developer's running stack or configured servers by accident."""
    saved = dict(os.environ)
    for name in [n for n in os.environ if n.startswith("FRAUDSTREAM_")] + ["DATABASE_URL"]:
        os.environ.pop(name, None)
    os.environ["FRAUDSTREAM_STATE_DIR"] = str(tmp_path_factory.mktemp("state"))
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="session")
def infra(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Infra]:
    root = tmp_path_factory.mktemp("infra")
    postgres = EmbeddedPostgres(root / "postgres", root / "postgres.log")
    broker = EmbeddedBroker(root / "broker.log")
    postgres.start()
    try:
        broker.start()
        yield Infra(broker.bootstrap_servers, postgres.admin_url, postgres, broker)
    finally:
        broker.stop()
        postgres.stop()


def _admin(infra: Infra, sql: str, attempts: int = 3) -> None:
    """Run one admin statement; retried, as a loaded machine can drop a fresh connection."""

    async def run() -> None:
        conn = await asyncpg.connect(infra.admin_url, timeout=30)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    for attempt in range(attempts):
        try:
            asyncio.run(run())
            return
        except (OSError, asyncpg.ConnectionDoesNotExistError, asyncpg.CannotConnectNowError):
            if attempt == attempts - 1:
                raise
            time.sleep(1.0)


@pytest.fixture
def database_url(infra: Infra) -> Iterator[str]:
    """A fresh, migrated database for this test."""
    name, url = infra.create_database()
    yield url
    infra.drop_database(name)


@pytest.fixture
def topics(infra: Infra) -> Topics:
    """Fresh topics for this test (4 partitions, as a scaled deployment would have)."""
    suffix = uuid.uuid4().hex[:8]
    made = Topics(
        f"transactions-{suffix}", f"alerts-{suffix}", f"transactions-dlq-{suffix}", 4, f"labels-{suffix}"
    )
    asyncio.run(
        ensure_topics(
            infra.bootstrap_servers,
            {
                made.transactions: made.partitions,
                made.alerts: made.partitions,
                made.dead_letters: 1,
                made.labels: made.partitions,
            },
        )
    )
    return made


@pytest.fixture
def settings(infra: Infra, database_url: str, topics: Topics, tmp_path: Path) -> Settings:
    """Settings pointing at this test's database and topics, with its own state folder."""
    return Settings(
        kafka_bootstrap_servers=infra.bootstrap_servers,
        database_url=database_url,
        topic_transactions=topics.transactions,
        topic_alerts=topics.alerts,
        topic_dead_letters=topics.dead_letters,
        topic_labels=topics.labels,
        topic_partitions=topics.partitions,
        state_dir=tmp_path / "state",
        _env_file=None,
    )


@pytest.fixture(scope="session")
def model_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real bundle trained once per session on the shipped sample (few epochs: fast)."""
    from core.dataset import SAMPLE_PATH
    from training.pipeline import train

    out = tmp_path_factory.mktemp("bundle") / "model"
    train(SAMPLE_PATH, out, epochs=3, progress=False)
    return out
