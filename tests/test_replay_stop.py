"""`fraudstream replay` stops within a bound on Ctrl-C and SIGTERM, whatever the broker does.

The command runs as a process against a broker of its own, which the tests freeze with
SIGSTOP: a frozen broker accepts connections and never answers, so without the bound the
replay would wait out aiokafka's 40 s request timeout (and retry) before it exits. Every
wait below is shorter than that.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from core.runtime.broker import EmbeddedBroker
from core.runtime.processes import wait_until
from tests.process_fixtures import catches_signal, signal_pending
from tests.streaming_fixtures import read_topic, unique, write_csv

ROOT = Path(__file__).resolve().parents[1]
#: Well under aiokafka's 40 s request timeout: a replay that waits on the broker cannot make it.
EXIT_TIMEOUT = 30


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """A broker these tests may freeze without disturbing the session's."""
    own = EmbeddedBroker(tmp_path_factory.mktemp("broker") / "broker.log")
    own.start()
    yield own
    os.kill(own.process.pid, signal.SIGCONT)
    own.stop()


class Replay:
    def __init__(self, broker: EmbeddedBroker, topic: str, data: Path, tmp: Path, *args: str, **env: str):
        self.log = tmp / f"{topic}.log"
        environment = {k: v for k, v in os.environ.items() if not k.startswith("FRAUDSTREAM_")}
        environment.update(
            FRAUDSTREAM_KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap_servers,
            FRAUDSTREAM_TOPIC_TRANSACTIONS=topic,
            FRAUDSTREAM_STATE_DIR=str(tmp / "state"),
            **env,
        )
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "fraudstream", "replay", "--data", str(data), "--quiet", *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env=environment,
            )

    def exit_code(self) -> int:
        try:
            return self.process.wait(timeout=EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(
                f"replay still running {EXIT_TIMEOUT} s after the stop:\n{self.output}"
            ) from None

    @property
    def output(self) -> str:
        return self.log.read_text()


def _frozen(broker: EmbeddedBroker) -> None:
    os.kill(broker.process.pid, signal.SIGSTOP)


def _thawed(broker: EmbeddedBroker) -> None:
    os.kill(broker.process.pid, signal.SIGCONT)


def _under_way(broker: EmbeddedBroker, replay: Replay, topic: str) -> None:
    wait_until(
        lambda: bool(asyncio.run(read_topic(broker.bootstrap_servers, topic, 1, timeout=0.5))),
        timeout=60,
        what="the replay's first events on the topic",
        process=replay.process,
        log_path=replay.log,
    )


def test_sigterm_flushes_and_reports_what_the_broker_has(broker: EmbeddedBroker, tmp_path: Path) -> None:
    topic = unique("transactions")
    replay = Replay(broker, topic, write_csv(tmp_path / "a.csv", 5000), tmp_path, "--rate", "500")
    _under_way(broker, replay, topic)
    replay.process.send_signal(signal.SIGTERM)
    assert replay.exit_code() == 130, replay.output
    sent = int(replay.output.split("interrupted: ")[1].split(" events sent and flushed")[0].replace(",", ""))
    assert 0 < sent < 5000
    assert len(asyncio.run(read_topic(broker.bootstrap_servers, topic, sent))) == sent


@pytest.mark.parametrize("stop", ["sigterm-after-the-bound", "second-ctrl-c"])
def test_a_frozen_broker_cannot_hold_the_replay(broker: EmbeddedBroker, tmp_path: Path, stop: str) -> None:
    topic = unique("transactions")
    # a bound of 2 s, or one far beyond the test's patience that only a second Ctrl-C cuts short
    flush_seconds = "2" if stop == "sigterm-after-the-bound" else "600"
    replay = Replay(
        broker,
        topic,
        write_csv(tmp_path / "a.csv", 28_000),
        tmp_path,
        "--rate",
        "2000",
        FRAUDSTREAM_REPLAY_FLUSH_SECONDS=flush_seconds,
    )
    _under_way(broker, replay, topic)
    _frozen(broker)
    try:
        # The replay keeps handing events to its producer, which cannot deliver them now (one
        # request in flight per broker, never answered). Its loop is all that burns CPU here.
        replay_process = psutil.Process(replay.process.pid)
        frozen_at = sum(replay_process.cpu_times()[:2])
        wait_until(
            lambda: sum(replay_process.cpu_times()[:2]) > frozen_at + 0.2,
            timeout=60,
            what="the replay sending while the broker is frozen",
        )
        if stop == "sigterm-after-the-bound":
            replay.process.send_signal(signal.SIGTERM)
        else:
            replay.process.send_signal(signal.SIGINT)
            wait_until(lambda: not signal_pending(replay.process.pid, signal.SIGINT), timeout=10, what="")
            replay.process.send_signal(signal.SIGINT)  # a second signal, not merged with the first
        code = replay.exit_code()
    finally:
        _thawed(broker)
    assert code == 1, replay.output
    assert "gave up waiting for the broker" in replay.output and "may not have reached it" in replay.output
    assert "Traceback" not in replay.output


def test_a_broker_frozen_before_the_start_does_not_hold_the_replay(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    topic = unique("transactions")
    _frozen(broker)
    try:
        replay = Replay(broker, topic, write_csv(tmp_path / "a.csv", 100), tmp_path)
        wait_until(  # its handler is installed: it waits on the broker for its topic now
            lambda: catches_signal(replay.process.pid, signal.SIGTERM),
            timeout=60,
            what="the replay's SIGTERM handler",
        )
        replay.process.send_signal(signal.SIGTERM)
        code = replay.exit_code()
    finally:
        _thawed(broker)
    assert code == 130, replay.output
    assert "nothing sent" in replay.output
