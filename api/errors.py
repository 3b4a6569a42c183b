"""What the API answers when something below it fails: 503 with a reason, never a 500.

A database that restarts, refuses connections, runs out of them, or cancels a statement
that ran past `FRAUDSTREAM_API_STATEMENT_TIMEOUT_MS` is a temporary condition: the
answer is `503 Service Unavailable` with `Retry-After` and a `detail` that says which
(`{"detail": "database unavailable: the server is restarting (CannotConnectNowError)"}`).
So is a full prediction queue (`api.predictor.Overloaded`) and a missing model. A value
PostgreSQL refuses is the client's (400). Anything else is a bug and stays a 500.

The asyncpg pool raises asyncpg's own exceptions; the SQLAlchemy engine wraps the same
ones in `sqlalchemy.exc.DBAPIError` subclasses (a generic `DBAPIError` for most server
errors), so `classify` walks the exception's causes to the driver's error.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import asyncpg
from fastapi import Request, status
from fastapi.responses import JSONResponse
from sqlalchemy import exc as sa_exc

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 1

#: (asyncpg exception class, what to tell the client), most specific first.
_TRANSIENT: tuple[tuple[type[BaseException], str], ...] = (
    (asyncpg.QueryCanceledError, "a query ran past the statement timeout or was cancelled"),
    (asyncpg.AdminShutdownError, "the server is shutting down"),
    (asyncpg.CannotConnectNowError, "the server is restarting"),
    (asyncpg.CrashShutdownError, "the server crashed"),
    (asyncpg.OperatorInterventionError, "the server interrupted the query"),
    (asyncpg.TooManyConnectionsError, "the server has no free connections"),
    (asyncpg.InsufficientResourcesError, "the server is out of resources"),
    (asyncpg.ConnectionDoesNotExistError, "the connection was lost"),
    (asyncpg.PostgresConnectionError, "the connection failed"),
    (asyncpg.InterfaceError, "the connection is not usable"),
    # The server ended an idle connection (a shutdown's FATAL) just before it was reused: the
    # driver finds it mid-error and refuses the new query. The pool replaces it.
    (asyncpg.InternalClientError, "the connection was ended by the server"),
    (asyncpg.DeadlockDetectedError, "a deadlock was broken; retry"),
    (asyncpg.SerializationError, "a concurrent update conflicted; retry"),
    (sa_exc.TimeoutError, "no free connection in the pool"),
    (TimeoutError, "the database did not answer in time"),
    (ConnectionError, "the connection failed"),
    (OSError, "the database cannot be reached"),
)
_DATA = (asyncpg.DataError, sa_exc.DataError)


def _causes(error: BaseException) -> Iterator[BaseException]:
    """The error, the driver errors SQLAlchemy wraps (`orig`), and their causes."""
    seen: set[int] = set()
    pending = [error]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        for linked in (getattr(current, "orig", None), current.__cause__, current.__context__):
            if isinstance(linked, BaseException):
                pending.append(linked)


def transient_reason(error: BaseException) -> str | None:
    """Why the database cannot serve right now, or None when `error` is not that kind."""
    for cause in _causes(error):
        for kind, reason in _TRANSIENT:
            if isinstance(cause, kind):
                return f"{reason} ({type(cause).__name__})"
    return None


def is_transient(error: BaseException) -> bool:
    return transient_reason(error) is not None


def is_data_error(error: BaseException) -> bool:
    return any(isinstance(cause, _DATA) for cause in _causes(error))


def unavailable(detail: str, retry_after: int = RETRY_AFTER_SECONDS) -> JSONResponse:
    return JSONResponse(
        {"detail": detail},
        status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
        headers={"Retry-After": str(retry_after)},
    )


async def database_error(request: Request, error: Exception) -> JSONResponse:
    """The handler of every database exception class: 503 transient, 400 refused value, else re-raise."""
    reason = transient_reason(error)
    if reason is not None:
        log.warning("database unavailable on %s: %s", request.url.path, error)
        return unavailable(f"database unavailable: {reason}")
    if is_data_error(error):  # a safety net: the routes validate before querying
        return JSONResponse(
            {"detail": f"invalid value: {type(error).__name__}"}, status_code=status.HTTP_400_BAD_REQUEST
        )
    raise error


#: Exception classes `database_error` is registered for (`api.main`): every transient kind
#: above (derived, so none can be left out: asyncpg's `InternalClientError` derives from
#: nothing of asyncpg's and once answered a bare 500) and the server's and SQLAlchemy's errors.
DATABASE_ERRORS: tuple[type[BaseException], ...] = tuple(
    dict.fromkeys([*(kind for kind, _ in _TRANSIENT), asyncpg.PostgresError, sa_exc.DBAPIError])
)
