"""A recent view of how far the scorer is behind: events on the broker not yet scored.

The memory-only broker loses its topics when it restarts, and with them the events that
were produced but not yet scored (stored rows are safe in PostgreSQL). To say how many,
`LagWatch` polls the scorer group's lag every few seconds while things are fine: per
partition of the transactions topic, the log end minus the offset the group committed
(the scorer commits only after a batch is stored). When the broker dies, the last view
taken before is the answer.

The log end comes from a fetch response's high watermark: Tansu 0.6's ListOffsets answers
the base offset of the last batch + 1, not the end of the log. The watcher seeks each
partition to that lower bound, reads the high watermark from the fetch (at most the last
batch per partition) and pauses the partitions again.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition

#: How often the view is refreshed while the broker is up.
POLL_SECONDS = 5.0
#: Longest one measurement may take (a fetch per partition).
MEASURE_SECONDS = 5.0


@dataclass(frozen=True)
class Lag:
    """Events on `topic` that the group has not committed, per partition, measured `at` (epoch s)."""

    partitions: dict[int, int]
    at: float

    @property
    def events(self) -> int:
        return sum(self.partitions.values())


async def measure_lag(tail: AIOKafkaConsumer, group: AIOKafkaConsumer, topic: str) -> Lag | None:
    """The group's lag on `topic` (None while the topic does not exist).

    `tail` is a consumer without a group, `group` one with the scorer's group id that never
    subscribes (so it never joins or disturbs the group: it only reads committed offsets).
    """
    if topic not in await tail.topics():
        return None
    partitions = tail.partitions_for_topic(topic) or set()
    tps = [TopicPartition(topic, partition) for partition in sorted(partitions)]
    if not tps:
        return None
    ends = await _log_ends(tail, tps)
    lag = {}
    for tp in tps:
        committed = await group.committed(tp)
        lag[tp.partition] = max(0, ends[tp] - (committed or 0))
    return Lag(lag, time.time())


async def _log_ends(tail: AIOKafkaConsumer, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
    reported = await tail.end_offsets(tps)  # a lower bound on Tansu (see the module docstring)
    if set(tail.assignment()) != set(tps):
        tail.assign(tps)
    for tp in tps:
        tail.seek(tp, max(0, reported[tp] - 1))
    asked = time.time() * 1000
    tail.resume(*tps)
    try:
        async with asyncio.timeout(MEASURE_SECONDS):
            while not all((tail.last_poll_timestamp(tp) or 0) >= asked for tp in tps):
                await tail.getmany(*tps, timeout_ms=100)
    except TimeoutError:
        pass  # a partition that did not answer counts with its reported end
    finally:
        tail.pause(*tps)  # no fetching in the background between measurements
    return {tp: max(tail.highwater(tp) or 0, reported[tp]) for tp in tps}


class LagWatch:
    """Keeps `LagWatch.history` fresh from a thread of its own (its own event loop and clients).

    Call `pause()` when the broker dies (nothing measured on a broker coming back empty
    before its topics are recreated) and `resume()` after; `before(when)` is the last view
    measured before a moment, e.g. the broker's death.
    """

    def __init__(self, bootstrap_servers: str, topic: str, group_id: str, interval: float = POLL_SECONDS):
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.group_id = group_id
        self.interval = interval
        self.history: deque[Lag] = deque(maxlen=64)
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._paused = threading.Event()
        self._reconnect = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lag-watch", daemon=True)

    @property
    def latest(self) -> Lag | None:
        return self.history[-1] if self.history else None

    def before(self, when: float) -> Lag | None:
        """The last view measured before `when` (epoch seconds)."""
        return next((lag for lag in reversed(self.history) if lag.at <= when), None)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=MEASURE_SECONDS + 5)

    def pause(self) -> None:
        self._paused.set()

    def resume(self) -> None:
        """Measure again, with new clients (the broker they knew is gone)."""
        self._reconnect.set()
        self._paused.clear()

    def _run(self) -> None:
        asyncio.run(self._watch())

    async def _watch(self) -> None:
        clients: tuple[AIOKafkaConsumer, AIOKafkaConsumer] | None = None
        try:
            while not self._stop.is_set():
                if self._reconnect.is_set() and clients is not None:
                    await _close(*clients)
                    clients = None
                self._reconnect.clear()
                if not self._paused.is_set():
                    try:
                        async with asyncio.timeout(
                            2 * MEASURE_SECONDS
                        ):  # a coordinator lookup never gives up
                            clients = clients or await self._connect()
                            lag = await measure_lag(*clients, self.topic)
                        if lag is not None and not self._paused.is_set():
                            self.history.append(lag)
                        self.last_error = None
                    except Exception as error:  # any failure: keep the last view, reconnect next time
                        self.last_error = f"{type(error).__name__}: {error}"
                        if clients is not None:
                            await _close(*clients)
                        clients = None
                await asyncio.to_thread(self._stop.wait, self.interval)
        finally:
            if clients is not None:
                await _close(*clients)

    async def _connect(self) -> tuple[AIOKafkaConsumer, AIOKafkaConsumer]:
        options = {"bootstrap_servers": self.bootstrap_servers, "request_timeout_ms": 5000}
        tail = AIOKafkaConsumer(group_id=None, enable_auto_commit=False, fetch_max_wait_ms=100, **options)
        group = AIOKafkaConsumer(group_id=self.group_id, enable_auto_commit=False, **options)
        try:
            await tail.start()
            await group.start()
        except BaseException:
            await _close(tail, group)
            raise
        return tail, group


async def _close(*consumers: AIOKafkaConsumer) -> None:
    for consumer in consumers:
        try:
            async with asyncio.timeout(5):
                await consumer.stop()
        except Exception:  # closing a client of a dead broker: nothing more to do
            pass
