"""The API's Kafka producer, started on first use and stopped with the app.

Started lazily so the API (analytics and predict) comes up while the broker is still
starting or down; `POST /api/transactions` then answers 503 until it is reachable.
"""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaProducer

from core.kafka import make_producer


class Publisher:
    def __init__(self, bootstrap_servers: str | None) -> None:
        self.bootstrap_servers = bootstrap_servers
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()

    async def producer(self) -> AIOKafkaProducer:
        if self.bootstrap_servers is None:
            raise ConnectionError("no Kafka broker configured (FRAUDSTREAM_KAFKA_BOOTSTRAP_SERVERS)")
        async with self._lock:
            if self._producer is None:
                producer = make_producer(self.bootstrap_servers, linger_ms=0, request_timeout_ms=5000)
                try:
                    await asyncio.wait_for(producer.start(), 10.0)
                except BaseException:
                    await producer.stop()
                    raise
                self._producer = producer
            return self._producer

    async def publish(self, topic: str, key: bytes, value: bytes) -> None:
        producer = await self.producer()
        await asyncio.wait_for(producer.send_and_wait(topic, value, key=key), 10.0)

    async def close(self) -> None:
        async with self._lock:
            if self._producer is not None:
                await self._producer.stop()
                self._producer = None
