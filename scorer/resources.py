"""The worker's connections (I/O): a PostgreSQL pool and a Kafka producer, opened and closed together.

The pool asks for the database address each time it makes a connection (`dsn`), so a
PostgreSQL that comes back, even somewhere else, is found again without a restart. Every
statement has a timeout: a database that hangs instead of failing becomes a transient
failure (retried, and visible as a stalled worker), never a silent wait.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg
from aiokafka import AIOKafkaProducer

from core.kafka import make_producer
from scorer.failures import retry_forever

log = logging.getLogger(__name__)

#: Connections: the writer, the model watcher and the outbox sweep.
POOL_SIZE = 3
CONNECT_TIMEOUT = 10.0
#: Longest any one statement may take (s): a 4,000-row write takes ~0.1 s.
STATEMENT_TIMEOUT = 60.0
#: The producer's bound on waiting for the broker (metadata, a full buffer, a request), ms.
PRODUCER_TIMEOUT_MS = 5_000


def connect_with(dsn: Callable[[], str]) -> Callable[..., object]:
    """An asyncpg `connect` for `create_pool` that resolves the address anew for every connection."""

    def connect(*_args: object, **kwargs: object) -> object:
        return asyncpg.connect(dsn(), **kwargs)

    return connect


@dataclass
class Resources:
    pool: asyncpg.Pool
    producer: AIOKafkaProducer

    @classmethod
    async def open(
        cls,
        *,
        dsn: Callable[[], str],
        bootstrap_servers: str,
        on_failure: Callable[[BaseException], None],
    ) -> Resources:
        """Connect; waits (with backoff) for a database that is down, fails at once without a broker."""
        pool = await retry_forever(
            lambda: asyncpg.create_pool(
                min_size=1,
                max_size=POOL_SIZE,
                connect=connect_with(dsn),
                timeout=CONNECT_TIMEOUT,
                command_timeout=STATEMENT_TIMEOUT,
            ),
            what="connecting to PostgreSQL",
            on_failure=on_failure,
        )
        producer = make_producer(bootstrap_servers, linger_ms=1, request_timeout_ms=PRODUCER_TIMEOUT_MS)
        try:
            await producer.start()
        except BaseException:  # no broker: close what is open before the worker reports it
            await producer.stop()
            await pool.close()
            raise
        return cls(pool, producer)

    async def close(self) -> None:
        try:
            await self.producer.stop()
        finally:
            await self.pool.close()
