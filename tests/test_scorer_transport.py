"""The scorer's delivery fast path: a coroutine run one step by hand, then finished by a task.

`LowLatencyConsumer.wait_first` runs a delivery one step; when it has to wait, `_Resumed`
carries the rest of it into Faust's `wait_first`. It must behave exactly like awaiting the
coroutine: same result, same exception, and a cancellation must reach the coroutine.
"""

from __future__ import annotations

import asyncio

import pytest

from scorer.transport import _Resumed


def _step(coro):
    """Run `coro` one step, as the fast path does: (finished, its value or what it waits on)."""
    try:
        return False, coro.send(None)
    except StopIteration as done:
        return True, done.value


def test_a_delivery_that_does_not_wait_finishes_in_one_step() -> None:
    async def deliver() -> str:
        return "delivered"

    async def main() -> None:
        finished, value = _step(deliver())
        assert finished and value == "delivered"

    asyncio.run(main())


def test_a_waiting_delivery_finishes_in_a_task_with_its_values_and_its_result() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        first, second = loop.create_future(), loop.create_future()

        async def deliver() -> int:
            a = await first
            await asyncio.sleep(0)  # a bare yield on the way, too
            b = await second
            return a + b

        coro = deliver()
        finished, pending = _step(coro)
        assert not finished and pending is first
        task = asyncio.ensure_future(_Resumed(coro, pending))
        loop.call_soon(first.set_result, 1)
        loop.call_later(0.01, second.set_result, 2)
        assert await task == 3

    asyncio.run(main())


def test_a_waiting_delivery_raises_its_exception() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        gate = loop.create_future()

        async def deliver() -> None:
            await gate
            raise ValueError("bad message")

        coro = deliver()
        _, pending = _step(coro)
        task = asyncio.ensure_future(_Resumed(coro, pending))
        gate.set_result(None)
        with pytest.raises(ValueError, match="bad message"):
            await task

    asyncio.run(main())


def test_cancelling_the_task_cancels_the_waiting_delivery() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        gate = loop.create_future()
        cleaned_up = []

        async def deliver() -> None:
            try:
                await gate
            finally:
                cleaned_up.append(True)

        coro = deliver()
        _, pending = _step(coro)
        task = asyncio.ensure_future(_Resumed(coro, pending))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert cleaned_up == [True]
        assert gate.cancelled()  # the future the delivery waited on was cancelled with it

    asyncio.run(main())
