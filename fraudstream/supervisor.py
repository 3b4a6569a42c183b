"""Start, watch and stop the services as child processes.

Each service runs as `python -m fraudstream <service>` with the settings handed over as
FRAUDSTREAM_* variables. Children die with the supervisor (PR_SET_PDEATHSIG) and run in
their own process groups, so Ctrl-C reaches the supervisor alone, which stops them in
reverse order. A child that dies on its own stops the whole stack with its log's tail:
a half-running pipeline would silently lose data.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from core.runtime.processes import spawn, stop, wait_until


class ServiceFailed(RuntimeError):
    """A supervised service exited on its own."""


class Interrupted(Exception):
    """Ctrl-C / SIGTERM arrived while a service was still starting."""


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    argv: Sequence[str]
    ready: Callable[[], bool] | None = None
    oneshot: bool = False  # a job that ends by itself (the replay), not a server
    ready_timeout: float = 120.0


def python_module(*args: str) -> list[str]:
    return [sys.executable, "-m", *args]


@dataclass
class Supervisor:
    log_dir: Path
    env: Mapping[str, str]
    children: dict[str, tuple[ServiceSpec, subprocess.Popen]] = field(default_factory=dict)
    stopping: threading.Event = field(default_factory=threading.Event)

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def start(self, spec: ServiceSpec) -> subprocess.Popen:
        """Start one service and wait until it is ready (or fail with its log)."""
        process = spawn(spec.argv, log_path=self.log_path(spec.name), env=self.env)
        self.children[spec.name] = (spec, process)
        if spec.ready is not None:

            def ready_or_interrupted() -> bool:
                if self.stopping.is_set():
                    raise Interrupted(f"interrupted while {spec.name} was starting")
                return spec.ready()

            wait_until(
                ready_or_interrupted,
                timeout=spec.ready_timeout,
                what=spec.name,
                process=process,
                log_path=self.log_path(spec.name),
                interval=0.25,
            )
        return process

    def check(self) -> None:
        """Raise ServiceFailed when a server died, or a one-shot job failed."""
        for name, (spec, process) in list(self.children.items()):
            code = process.poll()
            if code is None:
                continue
            if spec.oneshot and code == 0:
                del self.children[name]
                continue
            raise ServiceFailed(f"{name} exited with code {code}; see {self.log_path(name)}")

    def wait(self, poll: float = 0.5) -> None:
        """Watch the children until asked to stop (signal) or one of them fails."""
        while not self.stopping.is_set():
            self.check()
            self.stopping.wait(poll)

    def stop_all(self) -> None:
        for _name, (_spec, process) in reversed(list(self.children.items())):
            stop(process, timeout=15)
        self.children.clear()

    def install_signal_handlers(self) -> None:
        def _request_stop(signum: int, _frame: object) -> None:
            self.stopping.set()

        signal.signal(signal.SIGINT, _request_stop)
        signal.signal(signal.SIGTERM, _request_stop)


def wait_for_job(process: subprocess.Popen, supervisor: Supervisor, poll: float = 0.5) -> int | None:
    """Wait for a one-shot job while still watching the servers; None when interrupted."""
    while not supervisor.stopping.is_set():
        code = process.poll()
        if code is not None:
            return code
        supervisor.check()
        time.sleep(poll)
    return None
