"""Helpers shared by the producer and scorer tests: small CSVs, reading topics back, counting rows."""

from __future__ import annotations

import asyncio
import gzip
import itertools
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from core.dataset import SAMPLE_PATH
from core.prometheus import read_metric
from core.runtime.processes import free_port, spawn, stop, wait_until
from core.settings import Settings, settings_env

ROOT = Path(__file__).resolve().parents[1]


def write_csv(path: Path, rows: int, *, extra_lines: dict[int, str] | None = None, start: int = 0) -> Path:
    """The first `rows` data rows of the shipped sample (after `start`), with lines inserted.

    `extra_lines` maps a 1-based data-row position to a raw line placed there, so a test
    knows the row number the producer must report for it.
    """
    extra_lines = dict(extra_lines or {})
    with gzip.open(SAMPLE_PATH, "rt", newline="") as source:
        header = source.readline()
        body = list(itertools.islice(source, start, start + rows))
    out: list[str] = [header]
    position = 1
    for line in body:
        while position in extra_lines:
            out.append(extra_lines.pop(position) + "\n")
            position += 1
        out.append(line)
        position += 1
    for _, line in sorted(extra_lines.items()):
        out.append(line + "\n")
    path.write_text("".join(out))
    return path


async def read_topic(
    bootstrap_servers: str, topic: str, expected: int, timeout: float = 30.0
) -> list[tuple[bytes | None, bytes, list[tuple[str, bytes]]]]:
    """Read a topic from the beginning until `expected` messages arrived (or the timeout)."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap_servers,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    messages: list[tuple[bytes | None, bytes, list[tuple[str, bytes]]]] = []
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(messages) < expected and loop.time() < deadline:
            batches = await consumer.getmany(timeout_ms=200)
            for records in batches.values():
                messages.extend((r.key, r.value, list(r.headers)) for r in records)
        # a short extra poll: anything beyond `expected` is a bug the caller should see
        for records in (await consumer.getmany(timeout_ms=300)).values():
            messages.extend((r.key, r.value, list(r.headers)) for r in records)
    finally:
        await consumer.stop()
    return messages


async def publish(
    bootstrap_servers: str, topic: str, messages: Sequence[tuple[bytes | None, bytes, int | None]]
) -> list[tuple[int, int]]:
    """Send (key, value, partition or None) messages one by one, acknowledged; their (partition, offset)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers)
    await producer.start()
    try:
        sent = []
        for key, value, partition in messages:
            metadata = await producer.send_and_wait(topic, value, key=key, partition=partition)
            sent.append((metadata.partition, metadata.offset))
        return sent
    finally:
        await producer.stop()


async def fetch(database_url: str, sql: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class Worker:
    """One scorer worker process with its metrics port."""

    def __init__(self, settings: Settings, model: Path, log_path: Path) -> None:
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("FRAUDSTREAM_")}
        env.update(settings_env(settings, FRAUDSTREAM_MODEL_PATH=str(model)))
        self.log_path = log_path
        self.process: subprocess.Popen = spawn(
            [sys.executable, "-m", "scorer.cli", "--web-port", str(self.port)],
            log_path=log_path,
            env=env,
            cwd=ROOT,
        )

    def metric(self, name: str) -> float:
        """A counter or gauge of this worker, summed over its labels (0 until it is exported)."""
        return read_metric(f"http://127.0.0.1:{self.port}/metrics", name) or 0.0

    def health(self) -> tuple[int, dict]:
        """(HTTP status, body) of the worker's /health page; (0, {}) while it does not answer."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())
        except OSError:
            return 0, {}

    def wait_exit(self, timeout: float = 60) -> int:
        return self.process.wait(timeout=timeout)

    def wait_partitions(self, count: int, timeout: float = 60) -> None:
        wait_until(
            lambda: self.metric("fraudstream_assigned_partitions") == count,
            timeout=timeout,
            what=f"scorer worker reading {count} partitions",
            process=self.process,
            log_path=self.log_path,
        )

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        stop(self.process, timeout=20)


@pytest.fixture
def workers(settings, model_bundle, tmp_path) -> Iterator:
    started: list[Worker] = []

    def start(**overrides: object) -> Worker:
        """A worker on this test's settings, with any of them overridden (e.g. scorer_batch_size)."""
        chosen = settings.model_copy(update=overrides) if overrides else settings
        worker = Worker(chosen, model_bundle, tmp_path / f"worker-{len(started)}.log")
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture(scope="session")
def challenger_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second real bundle, trained on the same sample with another seed: its scores differ from
    `model_bundle`'s row by row (a challenger to compare), and its manifest has its own in-sample range."""
    from training.pipeline import train

    out = tmp_path_factory.mktemp("challenger") / "model"
    train(SAMPLE_PATH, out, epochs=2, seed=7, max_rounds=150, progress=False)
    return out


async def register_run(database_url: str, bundle: Path, threshold: float) -> str:
    """A backtest run scored by `bundle` at `threshold`: events tagged with its id alert at will."""
    from core.ensemble import Ensemble
    from producer.backtest import RunSpec, create_run, new_run_id

    run_id = new_run_id()
    conn = await asyncpg.connect(database_url)
    try:
        spec = RunSpec(bundle, 0.0, 1e9)
        await create_run(conn, spec, Ensemble.load(bundle).with_threshold(threshold), run_id)
    finally:
        await conn.close()
    return run_id


async def alerts_check(bootstrap_servers: str, alerts_topic: str, database_url: str) -> int:
    """The alerts topic against PostgreSQL: one alert per stored alerting row, none for any other, each
    carrying the stored score and model version; duplicates (at-least-once) byte-identical. The outbox is
    empty. Returns how many alert messages there were (duplicates included)."""
    import orjson

    rows = await fetch(
        database_url,
        "SELECT s.run_id, s.id, s.score, s.model_version FROM scores s WHERE s.alert",
    )
    stored = {row["id"]: row for row in rows}
    assert stored, "the test data must make some rows alert"
    messages = await read_topic(bootstrap_servers, alerts_topic, len(stored), timeout=60)
    values: dict[str, set[bytes]] = {}
    for key, value, _ in messages:
        values.setdefault(key.decode(), set()).add(value)
    assert set(values) == set(stored), (
        f"missing alerts: {sorted(set(stored) - set(values))[:5]}, alerts for rows that do not alert or are "
        f"not stored: {sorted(set(values) - set(stored))[:5]}"
    )
    for key, copies in values.items():
        assert len(copies) == 1, f"alert {key} was sent with different contents: {copies}"
        alert = orjson.loads(next(iter(copies)))
        row = stored[key]
        assert (
            alert["id"] == key
            and alert["score"] == row["score"]
            and alert["model_version"] == row["model_version"]
        )
        assert (alert["run_id"] or "") == row["run_id"]
    assert (await fetch(database_url, "SELECT count(*) AS n FROM alert_outbox"))[0]["n"] == 0
    return len(messages)
