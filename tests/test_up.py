"""`fraudstream up`: the main job, end to end, as a user runs it; then a crash and a clean stop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from core.runtime.processes import free_port, wait_until
from tests.streaming_fixtures import write_csv

ROOT = Path(__file__).resolve().parents[1]


class Up:
    """`python -m fraudstream up` in a subprocess, its output collected line by line."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.lines: list[str] = []
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

    def wait_for(self, text: str, timeout: float = 240) -> None:
        try:
            wait_until(lambda: text in self.output, timeout=timeout, what=f"'{text}'", process=self.process)
        except (RuntimeError, TimeoutError) as error:
            time.sleep(0.5)  # let the reader thread collect the last lines
            raise AssertionError(f"{error}; fraudstream up said:\n{self.output}") from None

    def children(self) -> list[psutil.Process]:
        return psutil.Process(self.process.pid).children(recursive=True)


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def _gone(processes: list[psutil.Process]) -> bool:
    for process in processes:
        try:
            if process.status() != psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            continue
    return True


@pytest.mark.slow
def test_up_scores_the_replay_stops_cleanly_and_reuses_its_database(
    model_bundle: Path, tmp_path: Path
) -> None:
    data = write_csv(tmp_path / "small.csv", 1500)
    api_port, dashboard_port, scorer_port = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRAUDSTREAM_")}
    env.update(
        FRAUDSTREAM_STATE_DIR=str(tmp_path / "state"),
        FRAUDSTREAM_MODEL_PATH=str(model_bundle),
        FRAUDSTREAM_API_PORT=str(api_port),
        FRAUDSTREAM_DASHBOARD_PORT=str(dashboard_port),
        FRAUDSTREAM_SCORER_WEB_PORT=str(scorer_port),
    )
    stats_url = f"http://127.0.0.1:{api_port}/api/stats"

    up = Up(env, "--data", str(data), "--replay-rate", "3000")
    try:
        up.wait_for("Running. Press Ctrl-C to stop.")
        assert (
            f"http://127.0.0.1:{dashboard_port}/" in up.output
            and f"http://127.0.0.1:{api_port}/docs" in up.output
        )
        wait_until(lambda: _get(stats_url)["volume"] == 1500, timeout=60, what="the replay stored")
        with urllib.request.urlopen(f"http://127.0.0.1:{dashboard_port}/", timeout=5) as page:
            assert page.status == 200
        assert _get(f"http://127.0.0.1:{api_port}/health")["status"] == "ok"
        children = up.children()
        assert len(children) >= 5  # broker, PostgreSQL (+ its workers), scorer, API, dashboard
        up.process.send_signal(signal.SIGINT)
        assert up.process.wait(timeout=90) == 0
    finally:
        if up.process.poll() is None:
            up.process.kill()
    assert "Stopped." in up.output
    wait_until(lambda: _gone(children), timeout=30, what="every child gone")
    assert not (tmp_path / "state" / "runtime.json").exists()

    # Second run: the database the first one left is reused; a crashing service stops everything.
    again = Up(env, "--no-replay")
    try:
        again.wait_for("Running. Press Ctrl-C to stop.")
        assert _get(stats_url)["volume"] == 1500
        children = again.children()
        (api,) = [c for c in children if "api" in c.cmdline()[-1:]]
        api.kill()
        assert again.process.wait(timeout=90) == 1
    finally:
        if again.process.poll() is None:
            again.process.kill()
    assert "error: api exited" in again.output
    wait_until(lambda: _gone(children), timeout=30, what="every child gone after the crash")
