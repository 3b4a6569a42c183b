"""Who is asking, and may they: bearer tokens, identities, read and write access.

With no token configured the API is open (everyone is `anonymous`, with write access),
as a loopback-only development stack expects. As soon as one is configured
(`FRAUDSTREAM_API_TOKEN` for writes, `FRAUDSTREAM_API_READ_TOKEN` for reads only, or
named ones in `FRAUDSTREAM_API_TOKENS`), every `/api/*` route needs
`Authorization: Bearer <token>`: 401 without a known token, 403 for a read token on a
write. `/`, `/health` and the docs stay open; `/metrics` by `FRAUDSTREAM_API_METRICS_PUBLIC`.

The check is a dependency of the one router every `/api/*` route hangs from
(`api.main`), so a new route cannot forget it. What a route needs follows from its HTTP
method (GET reads, anything else writes) unless it declares otherwise with
`openapi_extra=READS` (a POST that computes without storing, like explain) or
`openapi_extra=REVIEWS` (a verdict on an alert: a named token with `review` access may
give one, as may any write token): a new route is a write until it says it is not.
Requests carry an `Identity` (`admin` for the write token, `reader` for the read token,
or a named token's name) that routes get with `Depends(current_identity)`: who promoted
a model, who reviewed an alert.

Tokens are compared as SHA-256 digests with `hmac.compare_digest`, all of them every
time, so neither a token's content nor its length leaks through timing; the check
costs a few microseconds.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.deps import AppSettings
from core.settings import Settings

Access = Literal["read", "review", "write"]
#: `openapi_extra` of a non-GET route that only reads (nothing stored or changed).
READS = {"x-access": "read"}
#: `openapi_extra` of a route an analyst's `review` token may call (a verdict on an alert).
REVIEWS = {"x-access": "review"}
_READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: What each access level may do.
_GRANTS: dict[str, frozenset[str]] = {
    "read": frozenset({"read"}),
    "review": frozenset({"read", "review"}),
    "write": frozenset({"read", "review", "write"}),
}


@dataclass(frozen=True, slots=True)
class Identity:
    """Who made the request, and what they may do."""

    name: str
    access: Access

    @property
    def may_write(self) -> bool:
        return self.access == "write"

    def may(self, access: Access) -> bool:
        return access in _GRANTS[self.access]


#: Everyone, when no token is configured.
ANONYMOUS = Identity("anonymous", "write")


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class TokenTable:
    """The configured tokens, by digest. Empty means authentication is off."""

    def __init__(self, tokens: list[tuple[str, Identity]]) -> None:
        self._entries = [(_digest(token), identity) for token, identity in tokens]

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenTable:
        tokens: list[tuple[str, Identity]] = []
        if settings.api_token:
            tokens.append((settings.api_token, Identity("admin", "write")))
        if settings.api_read_token:
            tokens.append((settings.api_read_token, Identity("reader", "read")))
        for name, named in settings.api_tokens.items():
            tokens.append((named.token, Identity(name, named.access)))
        return cls(tokens)

    @property
    def enabled(self) -> bool:
        return bool(self._entries)

    def identify(self, token: str) -> Identity | None:
        """The identity holding `token`, or None (every entry is compared, in constant time)."""
        given = _digest(token)
        found = None
        for digest, identity in self._entries:
            if hmac.compare_digest(given, digest) and found is None:
                found = identity
        return found


_bearer = HTTPBearer(
    auto_error=False,
    description="required by every /api route when FRAUDSTREAM_API_TOKEN (or a read token) is set",
)


async def get_tokens(request: Request) -> TokenTable:
    return request.app.state.tokens


Tokens = Annotated[TokenTable, Depends(get_tokens)]


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, message, headers={"WWW-Authenticate": "Bearer"})


async def current_identity(
    tokens: Annotated[TokenTable, Depends(get_tokens)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Identity:
    """The request's identity; 401 when tokens are configured and none of them was sent."""
    if not tokens.enabled:
        return ANONYMOUS
    if credentials is None:
        raise _unauthorized("this API needs a bearer token: send Authorization: Bearer <token>")
    identity = tokens.identify(credentials.credentials)
    if identity is None:
        raise _unauthorized("unknown bearer token")
    return identity


CurrentIdentity = Annotated[Identity, Depends(current_identity)]


def required_access(request: Request) -> Access:
    """What the matched route needs: its declared `x-access`, else read for GET, write otherwise."""
    route = request.scope.get("route")
    declared = (getattr(route, "openapi_extra", None) or {}).get("x-access")
    if declared in _GRANTS:
        return declared
    return "read" if request.method in _READ_METHODS else "write"


async def authorize(request: Request, identity: CurrentIdentity) -> None:
    """The `/api` router's dependency: 401 without a known token, 403 for what its access does not allow."""
    needed = required_access(request)
    if not identity.may(needed):
        wanted = "a write token" if needed == "write" else "a review or write token"
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            f"{identity.name} has {identity.access} access only; this needs {wanted}",
        )


async def authorize_metrics(
    settings: AppSettings,
    tokens: Annotated[TokenTable, Depends(get_tokens)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """`/metrics`: open when FRAUDSTREAM_API_METRICS_PUBLIC (the default), else any known token."""
    if settings.api_metrics_public or not tokens.enabled:
        return
    await current_identity(tokens, credentials)
