"""Query parameters shared by several routes, and the opaque page cursor."""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime, timedelta
from typing import Annotated

import orjson
from fastapi import HTTPException, Query, status

from core.db.schema import LIVE_RUN
from core.events import MAX_ID_LENGTH, MAX_RUN_ID_LENGTH

#: PostgreSQL text cannot hold NUL characters: refuse them at the boundary.
NO_NUL = r"^[^\x00]*$"

RunId = Annotated[
    str,
    Query(
        max_length=MAX_RUN_ID_LENGTH,
        pattern=NO_NUL,
        description="'' (default) for the live stream, or a backtest run id",
    ),
]
DEFAULT_RUN = LIVE_RUN

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def encode_cursor(scored_at: datetime, row_id: str) -> str:
    """Opaque cursor for keyset pagination: the last row's (scored_at in µs, id), base64url."""
    micros = (scored_at - _EPOCH) // timedelta(microseconds=1)
    return base64.urlsafe_b64encode(orjson.dumps([micros, row_id])).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """Inverse of `encode_cursor`; a 400 for anything that is not one of ours."""
    try:
        payload = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        micros, row_id = payload
        if (
            type(micros) is not int
            or not isinstance(row_id, str)
            or len(row_id) > MAX_ID_LENGTH
            or "\x00" in row_id
        ):
            raise ValueError
        return _EPOCH + timedelta(microseconds=micros), row_id
    except (ValueError, TypeError, binascii.Error, orjson.JSONDecodeError, OverflowError):
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST, "invalid cursor: pass back the next_cursor of a previous page"
        ) from None
