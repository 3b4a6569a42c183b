"""`fraudstream up` as a user runs it: the replay scored, a stack that heals, and clean stops.

These start the real command (broker, PostgreSQL, scorer, API, dashboard, replay) and
break it the ways the supervisor must survive: services, PostgreSQL and the broker killed
with SIGKILL, a service that can no longer start, Ctrl-C and SIGTERM in the middle of a
replay with the broker frozen. Every pid the stack ever had is recorded, and none may be
left at the end (re-parented ones included).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import asyncpg
import psutil
import pytest

from core.ensemble import Ensemble
from core.kafka import scorer_group_id
from core.runtime.processes import free_port, wait_until
from fraudstream.up import register_bundle
from producer.replay import read_rows, select_rows
from tests.process_fixtures import alive
from tests.streaming_fixtures import fetch, write_csv

ROOT = Path(__file__).resolve().parents[1]


class Up:
    """`python -m fraudstream up` in a subprocess: its output, its status, every pid it had."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.env = env
        self.state_dir = Path(env["FRAUDSTREAM_STATE_DIR"])
        self.lines: list[str] = []
        self.pids: set[int] = set()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "fraudstream", "up", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=ROOT,
            env=env,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str, timeout: float = 240, count: int = 1) -> None:
        """Until `text` appeared `count` times in the output."""
        try:
            wait_until(
                lambda: self.output.count(text) >= count,
                timeout=timeout,
                what=f"'{text}'",
                process=self.process,
            )
        except (RuntimeError, TimeoutError) as error:
            time.sleep(0.5)  # let the reader thread collect the last lines
            raise AssertionError(f"{error}; fraudstream up said:\n{self.output}") from None

    def status(self) -> dict:
        return json.loads((self.state_dir / "status.json").read_text())

    def runtime(self) -> dict:
        return json.loads((self.state_dir / "runtime.json").read_text())

    def pid(self, name: str) -> int:
        (service,) = [s for s in self.status()["services"] if s["name"] == name]
        return service["pid"]

    def remember(self) -> None:
        """Record every process of the stack now (children of children included)."""
        self.pids.update(child.pid for child in psutil.Process(self.process.pid).children(recursive=True))
        self.pids.update(s["pid"] for s in self.status()["services"] if s["pid"])

    def command(self, *args: str) -> subprocess.Popen:
        """Another `fraudstream` command against this stack (it finds it through runtime.json)."""
        return subprocess.Popen(
            [sys.executable, "-m", "fraudstream", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=ROOT,
            env=self.env,
        )

    def replay(self, data: Path, *args: str) -> subprocess.Popen:
        return self.command("replay", "--data", str(data), "--quiet", *args)

    def close(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)
            self.process.kill()
            self.process.wait()


def _env(model_bundle: Path, tmp_path: Path, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRAUDSTREAM_")}
    env.update(
        FRAUDSTREAM_STATE_DIR=str(tmp_path / "state"),
        FRAUDSTREAM_MODEL_PATH=str(model_bundle),
        FRAUDSTREAM_API_PORT=str(free_port()),
        FRAUDSTREAM_DASHBOARD_PORT=str(free_port()),
        FRAUDSTREAM_SCORER_WEB_PORT=str(free_port()),
        **settings,
    )
    return env


def _ids(csv: Path) -> set[str]:
    return {row.event_id for row in select_rows(read_rows(csv), [])}


def _stored(database_url: str) -> tuple[int, set[str]]:
    """(rows in `scores`, their distinct ids)."""
    rows = asyncio.run(fetch(database_url, "SELECT id FROM scores"))
    return len(rows), {row["id"] for row in rows}


def _wait_stored(database_url: str, expected: set[str], what: str) -> None:
    wait_until(lambda: _stored(database_url)[1] >= expected, timeout=180, what=what, interval=1.0)
    count, ids = _stored(database_url)
    assert ids == expected and count == len(expected)  # every row once, nothing else


def _wait_lag(up: Up, events: int, what: str) -> None:
    """Wait until a lag view measured after this call (without error) shows `events`; the
    failure names the last view. (An older view can predate the scorer's last commits: a
    view of 0 taken before this wait, most likely, once let the scorer be frozen with 29
    events stored but not committed, and the backlog read 529.)"""
    seen: list[dict | None] = [None]
    since = time.time()

    def shown() -> bool:
        seen[0] = view = up.status().get("lag") or {}
        return view.get("at", 0) > since and view.get("error") is None and view.get("events") == events

    try:
        wait_until(shown, timeout=60, what=what, interval=0.5)
    except TimeoutError as error:
        raise TimeoutError(f"{error}; the last lag view: {seen[0]}") from None


def _finished(process: subprocess.Popen, timeout: float = 120) -> tuple[int, str]:
    output, _ = process.communicate(timeout=timeout)
    return process.returncode, output


@pytest.mark.slow
def test_up_heals_services_postgres_and_the_broker_and_stops_on_a_crash_loop(
    model_bundle: Path, tmp_path: Path
) -> None:
    first = write_csv(tmp_path / "first.csv", 2000)
    under_outage = write_csv(tmp_path / "outage.csv", 1500, start=2000)
    lost = write_csv(tmp_path / "lost.csv", 500, start=3500)
    after = write_csv(tmp_path / "after.csv", 500, start=4000)
    env = _env(model_bundle, tmp_path, FRAUDSTREAM_SUPERVISOR_CRASH_LOOP_RESTARTS="2")
    logs = tmp_path / "state" / "logs"
    bound = None
    up = Up(env, "--data", str(first), "--replay-rate", "200")
    try:
        up.wait_for("Replaying")
        assert f"model          {Ensemble.load(model_bundle).version}" in up.output  # the new champion
        runtime = up.runtime()
        database_url = runtime["database_url"]
        wait_until(lambda: _stored(database_url)[0] > 0, timeout=120, what="the replay being scored")

        # 1. The scorer and the API killed in the middle of the replay: both come back.
        up.remember()
        os.kill(up.pid("scorer"), signal.SIGKILL)
        os.kill(up.pid("api"), signal.SIGKILL)
        up.wait_for("scorer is back")
        up.wait_for("api is back")
        up.remember()
        assert (
            f"scorer was killed by SIGKILL; restarting it in 0.5 s (log: {logs / 'scorer.log'})" in up.output
        )
        assert f"api was killed by SIGKILL; restarting it in 0.5 s (log: {logs / 'api.log'})" in up.output
        _wait_stored(database_url, _ids(first), "every row of the replay stored")
        counts = {s["name"]: s["restarts"] for s in up.status()["services"]}
        assert counts == {"broker": 0, "postgres": 0, "scorer": 1, "api": 1, "dashboard": 0, "replay": 0}
        code, shown = _finished(up.command("status"))
        assert code == 0 and "scorer" in shown and "was killed by SIGKILL" in shown, shown

        # 2. PostgreSQL killed while a replay is being scored: back on its port, nothing lost.
        replay = up.replay(under_outage, "--rate", "300")
        wait_until(
            lambda: _stored(database_url)[0] > 2000, timeout=120, what="the second replay being scored"
        )
        os.kill(up.pid("postgres"), signal.SIGKILL)
        up.wait_for("postgres is back")
        port = database_url.rsplit(":", 1)[1].split("/")[0]
        assert f"postgres restarted on 127.0.0.1:{port}" in up.output
        assert _finished(replay)[0] == 0
        _wait_stored(database_url, _ids(first) | _ids(under_outage), "every row stored across the outage")

        # 3. The broker killed with a backlog the scorer has not read: restarted on its port,
        #    topics recreated, the loss said plainly; a new replay is scored.
        #    Stored is not yet committed (the scorer commits every 0.5 s): freeze it only once
        #    the lag view has seen it commit everything, so the backlog is exactly the new replay.
        _wait_lag(up, 0, "the scorer committing every stored row")
        scorer = up.pid("scorer")
        os.kill(scorer, signal.SIGSTOP)  # the backlog stays on the broker
        try:
            assert _finished(up.replay(lost))[0] == 0
            _wait_lag(up, 500, "the supervisor's lag view seeing the backlog")
            up.remember()
            os.kill(up.pid("broker"), signal.SIGKILL)
            up.wait_for("broker is back")
        finally:
            os.kill(scorer, signal.SIGCONT)
        up.wait_for(f"broker restarted on {runtime['bootstrap_servers']}")
        assert "Lost: 500 events that were on the broker but not yet scored" in up.output
        code, said = _finished(up.replay(after))
        assert code == 0, said
        expected = _ids(first) | _ids(under_outage) | _ids(after)  # the lost backlog never arrives
        _wait_stored(database_url, expected, "the replay after the broker restart stored")
        assert up.runtime() == runtime  # same addresses: every service found them again

        # 4. A service that can no longer start (its port taken): a crash loop stops the stack.
        up.remember()
        dashboard_port = int(env["FRAUDSTREAM_DASHBOARD_PORT"])
        os.kill(up.process.pid, signal.SIGSTOP)  # hold the supervisor while the port is taken
        try:
            dashboard = up.pid("dashboard")
            os.kill(dashboard, signal.SIGKILL)
            wait_until(lambda: not alive([dashboard]), timeout=30, what="the dashboard gone")
            bound = socket.create_server(("127.0.0.1", dashboard_port))
        finally:
            os.kill(up.process.pid, signal.SIGCONT)
        assert up.process.wait(timeout=180) == 1
    finally:
        up.close()
        if bound is not None:
            bound.close()
    assert "dashboard exited with code 1, after 2 restarts within 120 s: a crash loop" in up.output
    assert f"cannot listen on 127.0.0.1:{dashboard_port}" in up.output  # the tail of its log
    assert "Stopped." in up.output
    wait_until(lambda: not alive(up.pids), timeout=30, what=f"no process left: {alive(up.pids)}")
    assert not (tmp_path / "state" / "runtime.json").exists()


@pytest.mark.slow
def test_up_stops_on_sigterm_while_starting_leaving_no_process(model_bundle: Path, tmp_path: Path) -> None:
    up = Up(_env(model_bundle, tmp_path), "--no-replay")
    try:
        up.wait_for("Starting api ...")
        up.remember()  # the broker, PostgreSQL (and its workers), the scorer, maybe the API
        up.process.send_signal(signal.SIGTERM)
        code = up.process.wait(timeout=120)
        time.sleep(0.5)  # let the reader thread collect the last lines
        assert code == 130, up.output
    finally:
        up.close()
    assert "Stopped." in up.output and "fraudstream is up" not in up.output
    wait_until(lambda: not alive(up.pids), timeout=30, what=f"no process left: {alive(up.pids)}")
    assert len(up.pids) >= 3 and not (tmp_path / "state" / "runtime.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize("how", ["ctrl-c", "sigterm-with-the-broker-frozen"])
def test_up_stops_in_the_middle_of_a_replay_leaving_no_process(
    model_bundle: Path, tmp_path: Path, how: str
) -> None:
    data = write_csv(tmp_path / "long.csv", 5000)
    env = _env(
        model_bundle,
        tmp_path,
        FRAUDSTREAM_REPLAY_FLUSH_SECONDS="3",
        FRAUDSTREAM_SUPERVISOR_STOP_SECONDS="3",
    )
    up = Up(env, "--data", str(data), "--replay-rate", "100")  # 50 s: it is stopped half-way
    try:
        up.wait_for("Replaying")
        database_url = up.runtime()["database_url"]
        wait_until(lambda: _stored(database_url)[0] > 0, timeout=120, what="the replay being scored")
        up.remember()
        replay = up.pid("replay")
        assert replay in up.pids and alive([replay])
        if how == "ctrl-c":
            up.process.send_signal(signal.SIGINT)
        else:
            os.kill(up.pid("broker"), signal.SIGSTOP)  # a broker that never answers again
            up.process.send_signal(signal.SIGTERM)
        assert up.process.wait(timeout=120) == 0
    finally:
        up.close()
    assert "Stopped." in up.output
    wait_until(lambda: not alive(up.pids), timeout=30, what=f"no process left: {alive(up.pids)}")
    assert not (tmp_path / "state" / "runtime.json").exists()
    # in order: the replay (stopping by itself, within its bound), the services, the infrastructure
    stopping = [line for line in up.lines[up.lines.index("Stopping ...\n") + 1 :] if line.startswith("  ")]
    stopped = [line.split()[0] for line in stopping]
    assert stopped[0] == "replay" and set(stopped[1:4]) == {"scorer", "api", "dashboard"}, up.output
    assert set(stopped[4:]) == {"broker", "postgres"}, up.output
    replay_log = (tmp_path / "state" / "logs" / "replay.log").read_text()
    if how == "ctrl-c":
        assert "  replay exited with code 130\n" in stopping, up.output
        assert "interrupted: " in replay_log and "events sent and flushed" in replay_log, replay_log
    else:  # flushed, or gave up on the frozen broker after its 3 s: either way it said how far it got
        assert stopping[0] in ("  replay exited with code 130\n", "  replay exited with code 1\n"), up.output
        assert "interrupted: " in replay_log, replay_log


def _rethresholded(bundle: Path, target: Path, threshold: float) -> Path:
    """A copy of `bundle` with another threshold: another version."""
    import shutil

    from core.bundle import read_manifest, write_manifest

    shutil.copytree(bundle, target)
    manifest = read_manifest(target)
    body = {k: v for k, v in manifest.items() if k not in ("format", "files", "version", "checksum")}
    body["model"] = {**body["model"], "threshold": threshold}
    write_manifest(target, body, list(manifest["files"]))
    return target


async def _champion(database_url: str) -> list[str]:
    return [
        row["version"] for row in await fetch(database_url, "SELECT version FROM model_versions WHERE active")
    ]


def test_starting_never_changes_the_live_model(model_bundle: Path, database_url: str, tmp_path: Path) -> None:
    first = Ensemble.load(model_bundle)
    promoted = Ensemble.load(_rethresholded(model_bundle, tmp_path / "promoted", 0.25))
    other = Ensemble.load(_rethresholded(model_bundle, tmp_path / "other", 0.75))

    # an empty registry: the bundle `up` brings becomes the champion
    assert asyncio.run(register_bundle(database_url, first, model_bundle)) == (first.version, first.threshold)
    assert asyncio.run(_champion(database_url)) == [first.version]

    async def promote() -> None:  # someone promotes another version
        from core.db.registry import register_model

        conn = await asyncpg.connect(database_url)
        try:
            await register_model(conn, promoted, tmp_path / "promoted", activate=True)
        finally:
            await conn.close()

    asyncio.run(promote())
    # the next `up`, with yet another bundle: registered, not live; the banner names the champion
    assert asyncio.run(register_bundle(database_url, other, tmp_path / "other")) == (promoted.version, 0.25)
    assert asyncio.run(_champion(database_url)) == [promoted.version]
    versions = asyncio.run(fetch(database_url, "SELECT version FROM model_versions"))
    assert {row["version"] for row in versions} == {first.version, promoted.version, other.version}


def test_the_lag_view_reads_the_scorers_group(tmp_path: Path) -> None:
    """The supervisor's view of the scorer's lag uses the scorer's own consumer group."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRAUDSTREAM_")}
    env.update(
        FRAUDSTREAM_KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1",  # importing the app connects to nothing
        FRAUDSTREAM_DATABASE_URL="postgresql://nobody@127.0.0.1:1/none",
        FRAUDSTREAM_STATE_DIR=str(tmp_path),
    )
    script = (
        "from core.settings import Settings\n"
        "from scorer.app import app, group_id\n"
        "print(app.conf.id, group_id(Settings(topic_transactions='tx-eu', _env_file=None)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-2:] == [scorer_group_id("transactions"), scorer_group_id("tx-eu")]
