"""The scorer's error policy, as plain functions: what a failure means and what to do about it.

Two kinds of failure, two answers:

- *transient*: the sink is not there right now (PostgreSQL restarting, a connection
  lost, a pool or connect timeout, the broker unreachable). Nothing is wrong with the
  events: wait and retry (`retry_forever`), holding their offsets, so nothing is skipped.
- *permanent*: PostgreSQL refuses this content (a data exception, a violated
  constraint, a row too large, text the driver cannot encode). Retrying would refuse it
  forever and block the partition behind it: find the rows that cause it
  (`isolate_refused` halves the batch until the refused rows stand alone), dead-letter
  them, store the rest.

Whatever `is_permanent` does not recognise counts as transient: holding offsets on an
unknown error is safe (nothing is lost and the worker reports itself stalled), while
dead-lettering rows because of a broken deployment (a missing table, a revoked grant)
would throw good events away.

    >>> import asyncpg
    >>> is_permanent(asyncpg.CharacterNotInRepertoireError("invalid byte sequence"))
    True
    >>> is_permanent(asyncpg.CannotConnectNowError("the database system is starting up"))
    False
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import asyncpg

log = logging.getLogger(__name__)
T = TypeVar("T")

FIRST_BACKOFF = 0.1
MAX_BACKOFF = 5.0

#: PostgreSQL's refusals of content, by SQLSTATE class (their asyncpg exception families):
#: 22 data exception (bad encoding, out of range, a timestamp too far), 23 integrity
#: constraint violation, 54 program limit exceeded (a row or index entry too large).
_REFUSES_CONTENT = (
    asyncpg.DataError,
    asyncpg.IntegrityConstraintViolationError,
    asyncpg.ProgramLimitExceededError,
)


def is_permanent(error: BaseException) -> bool:
    """True when `error` says the content is refused (retrying cannot help); False for the sink's own trouble."""
    if isinstance(error, _REFUSES_CONTENT):
        return True
    return isinstance(error, UnicodeError)  # text the driver cannot encode, before it reaches the server


#: SQLSTATE classes of the server's own trouble, whatever the statement: connection
#: exception, insufficient resources, operator intervention (shutdown, cancel, starting up),
#: system error, transaction rollback (deadlock, serialization), object not available (locks).
_SERVER_TROUBLE = frozenset({"08", "53", "57", "58", "40", "55"})


def is_statement_error(error: BaseException) -> bool:
    """True when PostgreSQL refused the statement itself (its content, or its SQL: a missing
    table, a privilege, a constraint or a trigger), not the connection or the server's state.

    The scorer asks this of a write that carried the shadow's rows: such an error may be the
    shadow's doing, so the write is tried again without them (the champion's rows must not
    depend on the experiment beside them).

        >>> import asyncpg
        >>> is_statement_error(asyncpg.UndefinedTableError("relation does not exist"))
        True
        >>> is_statement_error(asyncpg.AdminShutdownError("terminating connection"))
        False
    """
    if is_permanent(error):
        return True
    if not isinstance(error, asyncpg.PostgresError):
        return False
    state = getattr(error, "sqlstate", None) or ""
    return state[:2] not in _SERVER_TROUBLE


def describe(error: BaseException) -> str:
    """`Type: message` on one line, bounded, for logs, reasons and the health row."""
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}"[:300]


async def retry_forever(
    operation: Callable[[], Awaitable[T]],
    *,
    what: str,
    on_failure: Callable[[BaseException], None] = lambda error: None,
    first: float = FIRST_BACKOFF,
    cap: float = MAX_BACKOFF,
) -> T:
    """Run `operation` until it succeeds, sleeping first, 2*first, ... up to `cap` between tries.

    For transient failures: the caller has already taken permanent ones out
    (`isolate_refused`). Cancellation (a worker stopping, a rebalance) goes through at
    once: the batch is then simply not acknowledged and will be delivered again.
    """
    delay = first
    while True:
        try:
            return await operation()
        except asyncio.CancelledError:
            raise
        except Exception as error:  # the sink is not there: wait and retry
            on_failure(error)
            log.warning("%s failed (%s); retrying in %.1f s", what, describe(error), delay)
            await asyncio.sleep(delay)
            delay = min(cap, delay * 2)


async def isolate_refused(
    items: Sequence[int],
    attempt: Callable[[Sequence[int]], Awaitable[None]],
    refused: Callable[[BaseException], bool] = is_permanent,
) -> list[tuple[int, BaseException]]:
    """Run `attempt(items)`; when it is refused, try each half, down to the items refused on their own.

    Returns those items with their errors; every other item went through some successful
    `attempt` (which must be atomic and idempotent: a refused attempt wrote nothing, and
    a half tried again after a transient failure writes nothing twice). An error that is
    not a refusal propagates, for the caller to retry. A batch with k refused rows out of
    n costs about 2·k·log2(n) attempts instead of one.
    """
    try:
        await attempt(items)
        return []
    except asyncio.CancelledError:
        raise
    except Exception as error:
        if not refused(error):
            raise
        if len(items) == 1:
            return [(items[0], error)]
    middle = len(items) // 2
    return [
        *await isolate_refused(items[:middle], attempt, refused),
        *await isolate_refused(items[middle:], attempt, refused),
    ]
