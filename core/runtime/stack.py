"""The embedded infrastructure as one unit: broker + PostgreSQL + schema + topics.

`Infra.start()` brings everything up and writes `runtime.json` in the state folder, so
services started by hand (`fraudstream scorer`, an IDE) find the running broker and
database without being told; `resolve_endpoints` reads it.
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from core.db.migrate import upgrade
from core.kafka import ensure_topics
from core.runtime.broker import EmbeddedBroker
from core.runtime.postgres import EmbeddedPostgres
from core.runtime.processes import pid_alive
from core.settings import Settings

RUNTIME_FILE = "runtime.json"


class NotConfigured(RuntimeError):
    """No broker/database configured and no embedded stack running."""


@dataclass(frozen=True)
class Endpoints:
    bootstrap_servers: str
    database_url: str


def topic_partitions(settings: Settings) -> dict[str, int]:
    return {
        settings.topic_transactions: settings.topic_partitions,
        settings.topic_alerts: settings.topic_partitions,
        settings.topic_dead_letters: 1,
        settings.topic_labels: settings.topic_partitions,
    }


def prepare(endpoints: Endpoints, settings: Settings) -> None:
    """Apply migrations and create the topics: safe to run again and again."""
    upgrade(endpoints.database_url)
    asyncio.run(ensure_topics(endpoints.bootstrap_servers, topic_partitions(settings)))


@dataclass
class Infra:
    """The embedded broker and/or PostgreSQL; whichever the settings leave unconfigured."""

    settings: Settings
    broker: EmbeddedBroker | None = field(default=None, init=False)
    postgres: EmbeddedPostgres | None = field(default=None, init=False)
    endpoints: Endpoints | None = field(default=None, init=False)

    @property
    def state_dir(self) -> Path:
        return self.settings.state_dir

    def start(self) -> Endpoints:
        running = _running_stack(self.state_dir)
        if running is not None and running["pid"] != os.getpid():
            raise RuntimeError(
                f"another fraudstream stack (pid {running['pid']}) is running on {self.state_dir}: "
                "stop it first, or give this one its own FRAUDSTREAM_STATE_DIR"
            )
        logs = self.state_dir / "logs"
        try:
            bootstrap = self.settings.kafka_bootstrap_servers
            if bootstrap is None:
                self.broker = EmbeddedBroker(
                    logs / "broker.log", self.settings.host, self.settings.broker_port
                )
                bootstrap = self.broker.start()
            database_url = self.settings.database_url
            if database_url is None:
                self.postgres = EmbeddedPostgres(
                    self.state_dir / "postgres",
                    logs / "postgres.log",
                    self.settings.host,
                    self.settings.postgres_port,
                )
                database_url = self.postgres.start()
            self.endpoints = Endpoints(bootstrap, database_url)
            prepare(self.endpoints, self.settings)
        except BaseException:
            self.stop()
            raise
        self._write_runtime_file()
        return self.endpoints

    def stop(self) -> None:
        running = _running_stack(self.state_dir)
        if running is None or running["pid"] == os.getpid():  # never remove another stack's file
            (self.state_dir / RUNTIME_FILE).unlink(missing_ok=True)
        if self.broker is not None:
            self.broker.stop()
            self.broker = None
        if self.postgres is not None:
            self.postgres.stop()
            self.postgres = None

    def _write_runtime_file(self) -> None:
        assert self.endpoints is not None
        self.state_dir.mkdir(parents=True, exist_ok=True)
        payload = {
            "pid": os.getpid(),
            "bootstrap_servers": self.endpoints.bootstrap_servers,
            "database_url": self.endpoints.database_url,
        }
        (self.state_dir / RUNTIME_FILE).write_text(json.dumps(payload, indent=2))


def resolve_endpoints(settings: Settings) -> Endpoints:
    """Configured endpoints first; else those of a running embedded stack; else a clear error."""
    return Endpoints(resolve_bootstrap_servers(settings), resolve_database_url(settings))


def resolve_bootstrap_servers(settings: Settings) -> str:
    return settings.kafka_bootstrap_servers or _from_running_stack(
        settings, "bootstrap_servers", "FRAUDSTREAM_KAFKA_BOOTSTRAP_SERVERS"
    )


def resolve_database_url(settings: Settings) -> str:
    return settings.database_url or _from_running_stack(settings, "database_url", "FRAUDSTREAM_DATABASE_URL")


def _from_running_stack(settings: Settings, key: str, variable: str) -> str:
    runtime = _running_stack(settings.state_dir)
    if runtime is None:
        raise NotConfigured(
            f"{variable} is not set and no embedded stack is running: start one with "
            "`fraudstream infra` (or `fraudstream up`), or set the variable"
        )
    return runtime[key]


def _running_stack(state_dir: Path) -> dict | None:
    path = state_dir / RUNTIME_FILE
    try:
        runtime = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return runtime if pid_alive(int(runtime.get("pid", -1))) else None
