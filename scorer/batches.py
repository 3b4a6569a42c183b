"""How the agent takes batches and hands them on: full batches in, one write at a time, in order.

Two policies the agent's loop relies on, each small enough to read at once:

- `full_batches`: take what the stream offers within `within` seconds, but while the
  rest of a batch is already waiting in the stream's queue, take it too (a backlog goes
  in full batches of `size`; a stream that keeps up is cut after `within`, so latency is
  unchanged). Nothing taken here is acknowledged: the agent acknowledges after writing.
- `InOrderWrites`: batch n+1 is prepared (decoded, scored) while batch n is written, but
  a write starts only when the one before it has finished, so acknowledgements stay in
  offset order; on the way out a write in flight is cancelled unacknowledged (its batch
  is delivered again, and the write is idempotent).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import aclosing
from types import TracebackType
from typing import Any

import faust

from scorer.pipeline import keep_gathering


async def full_batches(
    stream: faust.StreamT, size: int, within: float, *, on_taken: Callable[[int], None]
) -> AsyncIterator[list[faust.EventT]]:
    """Unacknowledged events in batches of at most `size`; `on_taken(n)` as events are taken."""
    gathered: list[faust.EventT] = []
    async with aclosing(stream.noack_take(size, within=within)) as takes:
        async for events in takes:
            on_taken(len(events))
            gathered.extend(events)
            while gathered and not keep_gathering(len(gathered), stream.channel.queue.qsize(), size):
                batch, gathered = gathered[:size], gathered[size:]
                yield batch


class InOrderWrites:
    """At most one write in flight; each starts after the previous one finished (and raises its error)."""

    def __init__(self) -> None:
        self._writing: asyncio.Task | None = None

    async def submit(self, write: Coroutine[Any, Any, None]) -> None:
        """Wait for the write before, then start `write` in the background."""
        try:
            if self._writing is not None:
                await self._writing
        except BaseException:
            write.close()  # never started: its batch is not acknowledged and comes again
            raise
        self._writing = asyncio.create_task(write)

    async def __aenter__(self) -> InOrderWrites:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        writing, self._writing = self._writing, None
        if writing is None:
            return
        if kind is None:
            await writing
            return
        writing.cancel()  # not acknowledged: delivered again
        await asyncio.gather(writing, return_exceptions=True)
