"""Start, watch, restart and stop the stack's processes, as a process manager does.

Each process is described by a `Service`: how to launch it, how to tell it is ready and
healthy, how to stop it, and what to repair once it is back after a restart (the broker's
topics). The `Supervisor`:

- restarts a service that exits, stays unhealthy for `unhealthy_seconds` (the scorer
  stalled, a web port not answering) or does not get ready in time, after a backoff of
  0.5 s doubling to 30 s (reset once it stayed up a minute); each restart is a line on
  the output with the exit code and the log, and is counted;
- gives up only on a crash loop: a service restarted `crash_loop_restarts` times within
  `crash_loop_seconds` that fails again stops the stack, with the tail of its log;
- stops in stages, the replay first, then the services, then the broker and PostgreSQL:
  each child gets its stop signal and SIGCONT, its process group SIGKILL after the grace;
  a second Ctrl-C or SIGTERM kills at once;
- keeps `status.json` in the state folder current (`fraudstream status` prints it).

Children die with the supervisor (PR_SET_PDEATHSIG) and run in their own process groups,
so Ctrl-C reaches the supervisor alone. All of them are started from the main thread: the
kernel sends the death signal when the *thread* that started a child ends.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from core.runtime.processes import spawn, stop_together, tail

#: Stop order: the replay first (it flushes to the broker), then the services (the scorer
#: finishes its batch), then the broker and PostgreSQL.
STAGE_JOBS, STAGE_SERVICES, STAGE_INFRA = 0, 1, 2
#: How often a running service's health is probed.
HEALTH_INTERVAL = 5.0
STATUS_FILE = "status.json"


class CrashLoop(RuntimeError):
    """A service kept failing: the stack stops."""


class Interrupted(Exception):
    """Ctrl-C / SIGTERM arrived while the stack was still starting."""


@dataclass(frozen=True)
class RestartPolicy:
    """When to restart a failed service, and when to give up (a crash loop).

    >>> policy = RestartPolicy()
    >>> [policy.backoff(previous, uptime=1.0) for previous in (None, 0.5, 16.0, 30.0)]
    [0.5, 1.0, 30.0, 30.0]
    >>> policy.backoff(30.0, uptime=300.0)  # it stayed up: a fresh start
    0.5
    >>> policy.crash_loop([0.0, 10.0, 20.0, 30.0, 40.0], now=50.0)
    True
    >>> policy.crash_loop([0.0, 10.0, 20.0, 30.0, 40.0], now=130.0)  # the first is too old
    False
    """

    crash_loop_restarts: int = 5
    crash_loop_seconds: float = 120.0
    first_backoff: float = 0.5
    max_backoff: float = 30.0
    #: Up this long, a service counts as healthy again: its next failure backs off from the start.
    reset_after: float = 60.0

    def backoff(self, previous: float | None, *, uptime: float) -> float:
        if previous is None or uptime >= self.reset_after:
            return self.first_backoff
        return min(previous * 2, self.max_backoff)

    def crash_loop(self, restarts: Sequence[float], *, now: float) -> bool:
        """True when the service was already restarted `crash_loop_restarts` times in the window."""
        return sum(1 for at in restarts if now - at <= self.crash_loop_seconds) >= self.crash_loop_restarts


@dataclass(frozen=True)
class Service:
    """One supervised process; `launch` starts it (without waiting) and returns it."""

    name: str
    launch: Callable[[], subprocess.Popen]
    log_path: Path
    ready: Callable[[], bool] = lambda: True
    stage: int = STAGE_SERVICES
    oneshot: bool = False  # a job that ends by itself (the replay): never restarted
    ready_timeout: float = 120.0
    stop_signal: int = signal.SIGTERM
    stop_seconds: float | None = None  # None: the supervisor's grace
    #: None when healthy, else what is wrong ("stalled: ...", "not answering on ...").
    health: Callable[[], str | None] | None = None
    #: Called when the process is found gone (before any restart).
    on_exit: Callable[[Child], None] | None = None
    #: Called once a restarted process is ready: repairs, and lines to tell the user.
    after_restart: Callable[[Child], Iterable[str]] | None = None


@dataclass
class Child:
    """A service's process and its history under the supervisor."""

    service: Service
    process: subprocess.Popen | None = None
    state: str = "starting"  # starting | running | backoff | exited | stopped
    started_at: float = 0.0  # monotonic
    started_wall: float = 0.0
    restarts: int = 0
    restart_times: list[float] = field(default_factory=list)
    backoff: float | None = None
    restart_at: float = 0.0
    exited_wall: float | None = None
    last_exit: int | None = None
    last_reason: str | None = None
    unhealthy_since: float | None = None
    health_checked: float = 0.0
    pids: list[int] = field(default_factory=list)  # every process it ever had

    @property
    def name(self) -> str:
        return self.service.name

    def attach(self, process: subprocess.Popen, now: float) -> None:
        self.process = process
        self.pids.append(process.pid)
        self.started_at, self.started_wall = now, time.time()
        self.unhealthy_since = None
        self.health_checked = now

    def status(self) -> dict:
        running = self.process is not None and self.state in ("starting", "running")
        return {
            "name": self.name,
            "state": self.state,
            "pid": self.process.pid if running and self.process is not None else None,
            "started_at": self.started_wall if running else None,
            "restarts": self.restarts,
            "last_exit": self.last_exit,
            "last_reason": self.last_reason,
            "log": str(self.service.log_path),
        }


def describe_exit(code: int | None) -> str:
    if code is None:
        return "did not exit"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


class Supervisor:
    """Runs `Service`s: see the module docstring."""

    def __init__(
        self,
        state_dir: Path,
        policy: RestartPolicy | None = None,
        *,
        unhealthy_seconds: float = 60.0,
        stop_seconds: float = 10.0,
        health_interval: float = HEALTH_INTERVAL,
        say: Callable[[str], None] = lambda line: print(line, flush=True),
    ) -> None:
        self.state_dir = state_dir
        self.policy = policy or RestartPolicy()
        self.unhealthy_seconds = unhealthy_seconds
        self.stop_seconds = stop_seconds
        self.health_interval = health_interval
        self.say = say
        self.children: dict[str, Child] = {}
        self.stopping = threading.Event()
        self.forced = threading.Event()
        self.extra_status: Callable[[], dict] = dict
        self._starting = True  # signals raise Interrupted until the stack runs
        self._status_written = 0.0

    # -- signals -------------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        """Ctrl-C / SIGTERM: interrupt the start, or stop; a second one: kill what is left."""

        def on_signal(signum: int, _frame: object) -> None:  # no printing here: it may interrupt a print
            if self.stopping.is_set():
                self.forced.set()
                return
            self.stopping.set()
            if self._starting:
                raise Interrupted(f"{signal.Signals(signum).name} while starting")

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)

    def running(self) -> None:
        """The stack is up: from now on a signal asks the watch loop to stop."""
        self._starting = False

    # -- starting --------------------------------------------------------------------------

    def log_path(self, name: str) -> Path:
        return self.state_dir / "logs" / f"{name}.log"

    def start(self, service: Service) -> Child:
        """Launch a service and wait until it is ready; failing here stops the start."""
        child = self.children[service.name] = Child(service)
        child.attach(service.launch(), time.monotonic())
        self._write_status(force=True)
        deadline = time.monotonic() + service.ready_timeout
        while not service.ready():
            if self.stopping.is_set():
                raise Interrupted(f"interrupted while {service.name} was starting")
            assert child.process is not None
            if child.process.poll() is not None:
                raise RuntimeError(
                    f"{service.name} {describe_exit(child.process.returncode)} while starting"
                    f"{tail(service.log_path)}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{service.name} not ready after {service.ready_timeout:.0f} s{tail(service.log_path)}"
                )
            time.sleep(0.25)
        child.state = "running"
        self._write_status(force=True)
        return child

    def adopt(self, service: Service, process: subprocess.Popen) -> Child:
        """Watch a process started (and found ready) elsewhere: the broker and PostgreSQL."""
        child = self.children[service.name] = Child(service, state="running")
        child.attach(process, time.monotonic())
        self._write_status(force=True)
        return child

    # -- watching --------------------------------------------------------------------------

    def watch(self, until: Callable[[], bool] = lambda: False, poll: float = 0.25) -> None:
        """Tend the children until asked to stop, or `until()`; raises CrashLoop."""
        while not self.stopping.is_set() and not until():
            self.tick()
            self.stopping.wait(poll)

    def tick(self) -> None:
        """One round: notice exits, readiness and bad health; restart what is due."""
        for child in list(self.children.values()):
            if self.stopping.is_set():
                return
            now = time.monotonic()
            if child.state in ("starting", "running"):
                assert child.process is not None
                code = child.process.poll()
                if code is not None:
                    self._failed(child, describe_exit(code), code)
                elif child.state == "starting":
                    self._check_ready(child, now)
                else:
                    self._check_health(child, now)
            elif child.state == "backoff" and now >= child.restart_at:
                self._relaunch(child, now)
        self._write_status()

    def _check_ready(self, child: Child, now: float) -> None:
        if child.service.ready():
            assert child.process is not None
            self.say(f"{child.name} is back (pid {child.process.pid}; restarts so far: {child.restarts})")
            if child.service.after_restart is not None:
                try:
                    lines = list(child.service.after_restart(child))
                except Exception as error:  # e.g. the broker died again while its topics were made
                    self._kill_and_fail(child, f"could not be set up again: {type(error).__name__}: {error}")
                    return
                for line in lines:
                    self.say(line)
            child.state = "running"
            self._write_status(force=True)
        elif now - child.started_at > child.service.ready_timeout:
            self._kill_and_fail(child, f"was not ready after {child.service.ready_timeout:.0f} s")

    def _check_health(self, child: Child, now: float) -> None:
        if child.service.health is None or now - child.health_checked < self.health_interval:
            return
        child.health_checked = now
        problem = child.service.health()
        if problem is None:
            if child.unhealthy_since is not None:
                self.say(f"{child.name} is healthy again")
            child.unhealthy_since = None
            return
        if child.unhealthy_since is None:
            child.unhealthy_since = now
            self.say(f"{child.name} is unhealthy ({problem}); restarting it if that lasts")
        elif now - child.unhealthy_since >= self.unhealthy_seconds:
            self._kill_and_fail(child, f"was unhealthy for {now - child.unhealthy_since:.0f} s ({problem})")

    def _kill_and_fail(self, child: Child, reason: str) -> None:
        assert child.process is not None
        (code,) = stop_together(
            [(child.process, child.service.stop_signal)],
            timeout=self._grace(child.service),
            force=self.forced.is_set,
        )
        self._failed(child, reason, code)

    def _failed(self, child: Child, reason: str, code: int | None) -> None:
        """The child is gone: stop the stack on a crash loop, else restart it after a backoff."""
        now = time.monotonic()
        child.last_exit, child.last_reason, child.exited_wall = code, reason, time.time()
        if child.service.on_exit is not None:
            child.service.on_exit(child)
        if child.service.oneshot:
            child.state = "exited"
            self._write_status(force=True)
            return
        log = child.service.log_path
        if self.policy.crash_loop(child.restart_times, now=now):
            child.state = "exited"
            self._write_status(force=True)
            raise CrashLoop(
                f"{child.name} {reason}, after {self.policy.crash_loop_restarts} restarts within "
                f"{self.policy.crash_loop_seconds:g} s: a crash loop, stopping the stack{tail(log)}"
            )
        child.backoff = self.policy.backoff(child.backoff, uptime=now - child.started_at)
        child.state, child.restart_at = "backoff", now + child.backoff
        self.say(f"{child.name} {reason}; restarting it in {child.backoff:g} s (log: {log})")
        self._write_status(force=True)

    def _relaunch(self, child: Child, now: float) -> None:
        child.restarts += 1
        child.restart_times.append(now)
        try:
            process = child.service.launch()
        except (OSError, RuntimeError) as error:  # e.g. its port taken meanwhile
            self._failed(child, f"could not start: {error}", None)
            return
        child.attach(process, now)
        child.state = "starting"
        self._write_status(force=True)

    # -- stopping --------------------------------------------------------------------------

    def stop_all(self) -> None:
        """Stop every child, stage by stage (a line each); bounded by the grace of each stage."""
        self.stopping.set()
        self._starting = False
        for child in self.children.values():
            if child.process is None:  # a signal interrupted its launch: nothing of ours to stop
                child.state = "stopped"  # (a child forked meanwhile dies with us: its death signal)
        for stage in sorted({child.service.stage for child in self.children.values()}):
            members = [
                child
                for child in self.children.values()
                if child.service.stage == stage and child.state in ("starting", "running")
            ]
            if not members:
                continue
            codes = stop_together(
                [(_process(child), child.service.stop_signal) for child in members],
                timeout=max(self._grace(child.service) for child in members),
                force=self.forced.is_set,
            )
            for child, code in zip(members, codes, strict=True):
                child.state, child.last_exit = "stopped", code
                self.say(f"  {child.name} {describe_exit(code)}")
        for child in self.children.values():
            if child.state == "backoff":
                child.state = "stopped"
        self._write_status(force=True)

    def _grace(self, service: Service) -> float:
        return service.stop_seconds if service.stop_seconds is not None else self.stop_seconds

    # -- status ----------------------------------------------------------------------------

    def _write_status(self, *, force: bool = False) -> None:
        """`status.json`: each child's state, pid, start time, restarts (for `fraudstream status`)."""
        now = time.monotonic()
        if not force and now - self._status_written < 2.0:
            return
        self._status_written = now
        payload = {
            "pid": os.getpid(),
            "updated_at": time.time(),
            "services": [child.status() for child in self.children.values()],
            **self.extra_status(),
        }
        path = self.state_dir / STATUS_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        partial.write_text(json.dumps(payload, indent=2))
        partial.replace(path)


def _process(child: Child) -> subprocess.Popen:
    assert child.process is not None, f"{child.name} has no process"
    return child.process


def python_module(*args: str) -> list[str]:
    return [sys.executable, "-m", *args]


def child_launcher(
    argv: Sequence[str], log_path: Path, env: Mapping[str, str]
) -> Callable[[], subprocess.Popen]:
    """A `Service.launch` that spawns `argv` with its output appended to `log_path`."""
    return lambda: spawn(argv, log_path=log_path, env=env)
