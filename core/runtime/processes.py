"""Child processes that never outlive their parent.

Every process the runtime starts asks the kernel for a signal when its parent dies
(PR_SET_PDEATHSIG: SIGTERM, or what the child takes as "stop now"), so a supervisor
killed with SIGKILL leaves no orphans behind, and runs in its own process group so that
Ctrl-C reaches the supervisor alone, which then stops the children in order. The kernel
sends that signal when the *thread* that started the child exits: start children from
the main thread (or one that lives as long as they should).

Stopping is bounded: a child gets its stop signal (with SIGCONT, so a stopped process
can act on it, as systemd does), and its whole process group gets SIGKILL when it has
not exited within the timeout.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def _die_with_parent(death_signal: int) -> Callable[[], None]:
    def request() -> None:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, death_signal)

    return request


def spawn(
    argv: Sequence[str],
    *,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    user: str | None = None,
    cwd: Path | None = None,
    death_signal: int = signal.SIGTERM,
) -> subprocess.Popen:
    """Start `argv` with stdout/stderr appended to `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            user=user,
            cwd=cwd,
            process_group=0,
            preexec_fn=_die_with_parent(death_signal),
        )


def stop(process: subprocess.Popen, *, timeout: float = 10.0, sig: int = signal.SIGTERM) -> int | None:
    """Ask a child to stop, wait, and kill its process group if it does not; return its exit code."""
    return stop_together([(process, sig)], timeout=timeout)[0]


def stop_together(
    stops: Sequence[tuple[subprocess.Popen, int]],
    *,
    timeout: float,
    force: Callable[[], bool] = lambda: False,
) -> list[int | None]:
    """Signal every child at once, wait up to `timeout` (until `force()`), SIGKILL the rest.

    Each child gets its own stop signal, then SIGCONT (a stopped process acts on nothing
    until continued). A child that outlives the timeout is killed with its process group,
    so what it started goes with it. Returns the exit codes in order.
    """
    for process, sig in stops:
        if process.poll() is None:
            _signal(process, sig)
            _signal(process, signal.SIGCONT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not force():
        if all(process.poll() is not None for process, _ in stops):
            break
        time.sleep(0.05)
    for process, _ in stops:
        if process.poll() is None:
            kill_group(process)
    return [_reap(process) for process, _ in stops]


def kill_group(process: subprocess.Popen) -> None:
    """SIGKILL the child and its process group (it leads one: `spawn` starts it so)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        _signal(process, signal.SIGKILL)


def _signal(process: subprocess.Popen, sig: int) -> None:
    try:
        process.send_signal(sig)
    except ProcessLookupError:
        pass


def _reap(process: subprocess.Popen) -> int | None:
    try:
        return process.wait(timeout=10)  # after SIGKILL: only the kernel's bookkeeping is left
    except subprocess.TimeoutExpired:
        return None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(
    ready: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    process: subprocess.Popen | None = None,
    log_path: Path | None = None,
    interval: float = 0.1,
) -> None:
    """Poll `ready` until it holds; fail fast with the log's tail if the process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what} exited with code {process.returncode} while starting{tail(log_path)}")
        if ready():
            return
        time.sleep(interval)
    raise TimeoutError(f"{what} not ready after {timeout:.0f}s{tail(log_path)}")


def tail(log_path: Path | None, lines: int = 20) -> str:
    """The last lines of a log, introduced for an error message ("" when there is none)."""
    if log_path is None or not log_path.exists():
        return ""
    text = log_path.read_text(errors="replace").splitlines()[-lines:]
    return f"; last lines of {log_path}:\n" + "\n".join(text)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
