"""The supervisor on real processes: restarts with backoff, health, crash loops, bounded stops.

Each service here is a small Python program, so the behaviour is checked in seconds; the
same machinery runs the real stack in `tests/test_up.py`.
"""

from __future__ import annotations

import doctest
import json
import os
import re
import signal
import socket
import sys
import textwrap
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import fraudstream.status
import fraudstream.supervisor
from core.runtime.processes import free_port, spawn, wait_until
from fraudstream.status import read_status, render
from fraudstream.supervisor import (
    STAGE_INFRA,
    STAGE_JOBS,
    CrashLoop,
    Interrupted,
    RestartPolicy,
    Service,
    Supervisor,
)
from fraudstream.up import answering, scorer_health
from tests.process_fixtures import alive


@pytest.mark.parametrize("module", [fraudstream.supervisor, fraudstream.status])
def test_docstring_examples_hold(module) -> None:
    assert doctest.testmod(module).failed == 0


def _program(tmp_path: Path, name: str, source: str) -> Service:
    """A service running `source`, its output in `<name>.log`."""
    script = tmp_path / f"{name}.py"
    script.write_text(textwrap.dedent(source))
    log = tmp_path / f"{name}.log"
    return Service(name, lambda: spawn([sys.executable, str(script)], log_path=log), log)


SLEEPER = "import time\ntime.sleep(600)\n"


class Recorder:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, line: str) -> None:
        self.lines.append(line)

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def _supervisor(tmp_path: Path, **options) -> tuple[Supervisor, Recorder]:
    said = Recorder()
    return Supervisor(tmp_path / "state", say=said, **options), said


def _watch_until(supervisor: Supervisor, condition, what: str, timeout: float = 60) -> None:
    """Run the watch loop (in this, the main thread) until `condition()` holds."""
    done = threading.Event()
    timer = threading.Timer(timeout, done.set)
    timer.start()
    try:
        supervisor.watch(until=lambda: condition() or done.is_set(), poll=0.05)
    finally:
        timer.cancel()
    assert condition(), f"{what}: not after {timeout} s"


def test_a_killed_service_is_restarted_counted_and_shown(tmp_path: Path) -> None:
    supervisor, said = _supervisor(tmp_path)
    try:
        child = supervisor.start(_program(tmp_path, "worker", SLEEPER))
        first = child.process.pid
        os.kill(first, signal.SIGKILL)
        _watch_until(supervisor, lambda: child.state == "running" and child.process.pid != first, "restarted")
        assert child.restarts == 1 and child.pids == [first, child.process.pid]
        assert (
            f"worker was killed by SIGKILL; restarting it in 0.5 s (log: {tmp_path / 'worker.log'})"
            in said.text
        )
        assert "worker is back" in said.text
        status = read_status(tmp_path / "state")
        (worker,) = status["services"]
        assert (worker["pid"], worker["restarts"], worker["state"]) == (child.process.pid, 1, "running")
        assert re.search(
            rf"worker\s+running\s+{child.process.pid}\s+5s\s+1\s+was killed by SIGKILL",
            render(status, worker["started_at"] + 5),
        )

        second = child.process.pid  # killed again at once: the backoff doubles
        os.kill(second, signal.SIGKILL)
        _watch_until(
            supervisor, lambda: child.state == "running" and child.process.pid != second, "restarted"
        )
        assert "restarting it in 1 s" in said.text and child.restarts == 2
    finally:
        supervisor.stop_all()
    assert not alive(child.pids)


def test_a_service_that_keeps_crashing_stops_the_stack_with_its_log(tmp_path: Path) -> None:
    supervisor, said = _supervisor(tmp_path, policy=RestartPolicy(crash_loop_restarts=2))
    crasher = _program(
        tmp_path, "crasher", "import sys\nprint('cannot listen on 127.0.0.1:1')\nsys.exit(3)\n"
    )
    try:
        supervisor.start(crasher)
        with pytest.raises(CrashLoop) as failure:
            _watch_until(supervisor, lambda: False, "a crash loop", timeout=60)
    finally:
        supervisor.stop_all()
    message = str(failure.value)
    assert "crasher exited with code 3, after 2 restarts within 120 s: a crash loop" in message
    assert str(tmp_path / "crasher.log") in message and "cannot listen on 127.0.0.1:1" in message
    assert said.text.count("crasher exited with code 3; restarting it") == 2
    assert supervisor.children["crasher"].restarts == 2


class _Health(BaseHTTPRequestHandler):
    answer: tuple[int, bytes] = (200, b'{"status":"ok"}')

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        code, body = self.answer
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_the_scorer_health_probe_reads_stalled_and_silence() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/health"
    try:
        assert scorer_health(url) is None
        _Health.answer = (503, b'{"status":"stalled","reason":"no store for 31 s with 400 events pending"}')
        assert scorer_health(url) == "stalled: no store for 31 s with 400 events pending"
        assert answering(url) is None  # alive, if not healthy
        _Health.answer = (404, b"{}")  # a scorer without a health page: answering is all we know
        assert scorer_health(url) is None
    finally:
        _Health.answer = (200, b'{"status":"ok"}')
        server.shutdown()
        server.server_close()
    assert scorer_health(url).startswith(f"not answering on {url}")
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never answers
        assert "timed out" in scorer_health(f"http://127.0.0.1:{silent.getsockname()[1]}/health")


def test_a_server_that_stops_answering_is_restarted(tmp_path: Path) -> None:
    port = free_port()
    server = _program(
        tmp_path, "web", f"import http.server\nhttp.server.test(port={port}, bind='127.0.0.1')\n"
    )
    url = f"http://127.0.0.1:{port}/"
    web = Service(
        "web",
        server.launch,
        server.log_path,
        ready=lambda: answering(url) is None,
        health=lambda: answering(url),
    )
    supervisor, said = _supervisor(tmp_path, unhealthy_seconds=1.0, health_interval=0.2, stop_seconds=5)
    try:
        child = supervisor.start(web)
        frozen = child.process.pid
        os.kill(frozen, signal.SIGSTOP)  # hung: the port accepts, nothing answers
        _watch_until(
            supervisor, lambda: child.state == "running" and child.process.pid != frozen, "restarted"
        )
        assert answering(url) is None
        assert "web is unhealthy (not answering on" in said.text
        assert re.search(
            r"web was unhealthy for \d+ s \(not answering on .*timed out\); restarting it", said.text
        )
        assert child.restarts == 1 and not alive([frozen])
    finally:
        supervisor.stop_all()


STOP_RECORDER = """
    import os, signal, subprocess, sys, time
    name, record, ignore = sys.argv[1], sys.argv[2], sys.argv[3] == "ignore"
    def on_term(signum, frame):
        with open(record, "a") as out:
            out.write(name + "\\n")
        if not ignore:
            sys.exit(0)
    signal.signal(signal.SIGTERM, on_term)
    grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    print(grandchild.pid, flush=True)
    while True:
        time.sleep(0.05)
"""


def test_stop_goes_in_stages_and_kills_what_does_not_stop(tmp_path: Path) -> None:
    script = tmp_path / "stopper.py"
    script.write_text(textwrap.dedent(STOP_RECORDER))
    record = tmp_path / "stopped.txt"

    def stopper(name: str, stage: int, behaviour: str) -> Service:
        log = tmp_path / f"{name}.log"
        argv = [sys.executable, str(script), name, str(record), behaviour]
        return Service(name, lambda: spawn(argv, log_path=log), log, stage=stage)

    supervisor, _ = _supervisor(tmp_path, stop_seconds=2)
    children = [
        supervisor.start(stopper("infra", STAGE_INFRA, "exit")),
        supervisor.start(stopper("job", STAGE_JOBS, "exit")),
        supervisor.start(stopper("stubborn", 1, "ignore")),  # ignores SIGTERM
    ]
    wait_until(lambda: all(c.service.log_path.read_text().strip() for c in children), timeout=30, what="")
    grandchildren = [int(c.service.log_path.read_text().split()[0]) for c in children]
    os.kill(children[0].process.pid, signal.SIGSTOP)  # a stopped process still gets its SIGTERM
    supervisor.stop_all()

    assert record.read_text().split() == ["job", "stubborn", "infra"]  # the order of the stages
    assert [c.process.returncode for c in children] == [0, 0, -signal.SIGKILL]
    assert not alive([c.process.pid for c in children] + grandchildren[2:])  # its group went with it
    assert {s["state"] for s in json.loads((tmp_path / "state" / "status.json").read_text())["services"]} == {
        "stopped"
    }
    for pid in grandchildren[:2]:  # orphans of processes that exited by themselves: not ours to kill
        os.kill(pid, signal.SIGKILL)


@pytest.mark.timeout(120)
def test_a_second_signal_kills_at_once(tmp_path: Path) -> None:
    script = tmp_path / "stopper.py"
    script.write_text(textwrap.dedent(STOP_RECORDER))
    log = tmp_path / "stubborn.log"
    argv = [sys.executable, str(script), "stubborn", str(tmp_path / "stopped.txt"), "ignore"]
    supervisor, _ = _supervisor(tmp_path, stop_seconds=600)  # the test's timeout is far shorter
    child = supervisor.start(Service("stubborn", lambda: spawn(argv, log_path=log), log))
    wait_until(lambda: log.read_text().strip() != "", timeout=30, what="the service running")
    threading.Timer(1.0, supervisor.forced.set).start()  # what a second Ctrl-C does
    supervisor.stop_all()
    assert child.process.returncode == -signal.SIGKILL
    os.kill(int(log.read_text().split()[0]), signal.SIGKILL)


def test_a_signal_during_a_launch_still_stops_the_rest(tmp_path: Path) -> None:
    """Ctrl-C landing inside `Popen` (the child registered, its process never handed back)."""
    supervisor, said = _supervisor(tmp_path, stop_seconds=5)
    running = supervisor.start(_program(tmp_path, "running", SLEEPER))

    def interrupted_launch():
        raise Interrupted("SIGTERM while starting")  # what the signal handler raises mid-launch

    log = tmp_path / "late.log"
    with pytest.raises(Interrupted):
        supervisor.start(Service("late", interrupted_launch, log))
    supervisor.stop_all()
    assert running.process.returncode is not None and not alive([running.process.pid])
    assert supervisor.children["late"].state == "stopped"
    assert "running" in said.text


def test_status_shows_the_lag_view_and_why_it_cannot_measure() -> None:
    service = {"name": "scorer", "state": "running", "pid": 7, "started_at": 100.0, "restarts": 0}
    base = {"pid": 1, "services": [service]}
    measured = render(
        {**base, "lag": {"events": 1500, "partitions": {"0": 1500}, "at": 90.0, "error": None}}, 100.0
    )
    assert "events on the broker not yet scored: 1,500 (measured 10s ago)" in measured
    assert "cannot measure" not in measured
    failing = render({**base, "lag": {"error": "KafkaConnectionError: no broker"}}, 100.0)
    assert "the lag view cannot measure now: KafkaConnectionError: no broker" in failing
    assert "not yet scored" not in failing
    assert "not yet scored" not in render({**base, "lag": None}, 100.0)
