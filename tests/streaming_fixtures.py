"""Helpers shared by the producer and scorer tests: small CSVs, reading topics back, counting rows."""

from __future__ import annotations

import asyncio
import gzip
import itertools
import uuid
from pathlib import Path

import asyncpg
from aiokafka import AIOKafkaConsumer

from core.dataset import SAMPLE_PATH


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


async def fetch(database_url: str, sql: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"
