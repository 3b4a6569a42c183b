"""A Faust app whose Kafka consumer does not sit on fetches: the 2,000/s latency budget needs it.

faust-streaming's aiokafka driver hard-codes `fetch_max_wait_ms=1500`. A broker may hold
a fetch for that long when little data is waiting (the embedded Tansu broker does), which
put the median end-to-end latency near 800 ms at 2,000 events/s. Here the worker's
consumer waits at most `FETCH_MAX_WAIT_MS`; everything else is Faust's own code.
"""

from __future__ import annotations

from typing import Any

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka

#: Longest a fetch may wait for data at the broker (ms).
FETCH_MAX_WAIT_MS = 20


class LowLatencyConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # read by aiokafka when the fetcher starts
        return consumer


class LowLatencyConsumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return LowLatencyConsumerThread(self, loop=self.loop, beacon=self.beacon)


class ScorerApp(faust.App):
    """`faust.App` with the low-latency consumer on its (aiokafka) transport."""

    def _new_transport(self) -> Any:
        transport = super()._new_transport()
        if isinstance(transport, faust_aiokafka.Transport):
            transport.Consumer = LowLatencyConsumer
        return transport
