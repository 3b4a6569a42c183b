"""A Faust app whose consumer neither sits on fetches nor spawns tasks per message.

Two changes to faust-streaming's aiokafka consumer, everything else is Faust's own code:

- fetch wait: the driver hard-codes `fetch_max_wait_ms=1500`. A broker may hold a fetch
  that long when little data is waiting (the embedded Tansu broker does), which put the
  median end-to-end latency near 800 ms at 2,000 events/s. Here a fetch waits at most
  `FETCH_MAX_WAIT_MS`.
- delivery: for every message, Faust's fetch loop runs
  `wait_first(deliver(message), suspend_flow.wait())`, which creates four tasks (the
  delivery, the suspend flag, the service's stopped and crashed flags) and cancels three:
  about a third of the worker's CPU per event (py-spy). Delivery almost never waits (it
  puts the event into a stream buffer that has room), so `wait_first` here runs the
  delivery coroutine one step first; when it completes in that step, the result is the
  same as Faust's and costs no task. When it does wait (buffer full, flow suspended for a
  rebalance), the rest of it runs under Faust's `wait_first` exactly as before, so a
  rebalance still interrupts a blocked delivery.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Generator
from typing import Any

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka
from mode.services import WaitResults

#: Longest a fetch may wait for data at the broker (ms).
FETCH_MAX_WAIT_MS = 20


class _Resumed:
    """The rest of a coroutine that was run one step by hand and is now waiting on `pending`.

    Awaiting it behaves like awaiting the coroutine itself (what `yield from` does): the
    future it waits on goes up to the task, results and exceptions (a cancellation
    included) come back down into the coroutine.
    """

    def __init__(self, coro: Coroutine[Any, Any, Any], pending: Any) -> None:
        self.coro = coro
        self.pending = pending

    def __await__(self) -> Generator[Any, Any, Any]:
        pending = self.pending
        while True:
            try:
                sent = yield pending
            except BaseException as error:  # noqa: BLE001 - handed on to the coroutine, as `yield from` does
                try:
                    pending = self.coro.throw(error)
                except StopIteration as done:
                    return done.value
            else:
                try:
                    pending = self.coro.send(sent)
                except StopIteration as done:
                    return done.value


def _discard(waitable: Any) -> None:
    """Close a coroutine that will not be awaited (no "never awaited" warning)."""
    if asyncio.iscoroutine(waitable):
        waitable.close()


class LowLatencyConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # read by aiokafka when the fetcher starts
        return consumer


class LowLatencyConsumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return LowLatencyConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def wait_first(self, *coros: Any, timeout: Any = None) -> WaitResults:
        """Faust's `wait_first`, with the fast path for a delivery that does not wait.

        Only the fetch loop's call `wait_first(deliver(message), suspend_flow.wait())` takes
        it, and only while the flow is not suspended and the consumer neither stopped nor
        crashed (then Faust's path gives the same answer).
        """
        if (
            len(coros) != 2
            or not asyncio.iscoroutine(coros[0])
            or self.suspend_flow.is_set()
            or self._stopped.is_set()
            or self._crashed.is_set()
        ):
            return await super().wait_first(*coros, timeout=timeout)
        delivery, other = coros
        try:
            pending = delivery.send(None)
        except StopIteration as done:
            _discard(other)
            return WaitResults([delivery], [done.value], False)
        except BaseException:
            _discard(other)
            raise
        return await super().wait_first(_Resumed(delivery, pending), other, timeout=timeout)


class ScorerApp(faust.App):
    """`faust.App` with the low-latency consumer on its (aiokafka) transport."""

    def _new_transport(self) -> Any:
        transport = super()._new_transport()
        if isinstance(transport, faust_aiokafka.Transport):
            transport.Consumer = LowLatencyConsumer
        return transport
