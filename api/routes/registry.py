"""The model registry over HTTP: which versions exist, which is the champion and which the
shadow, who changed that and when; promote a version or choose the shadow (write token).

A change made here is followed by this API process at once, and by every scorer worker
and other API process within their registry poll (`FRAUDSTREAM_MODEL_REFRESH_SECONDS`).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, Response, status
from sqlalchemy.ext.asyncio import AsyncConnection

from api import queries
from api.auth import CurrentIdentity
from api.cache import REGISTRY, REGISTRY_SCOPE, cached_response
from api.deps import Cache, Models, PoolConnection
from api.schemas import (
    ModelChange,
    ModelEventOut,
    ModelEvents,
    ModelList,
    ModelVersion,
    Problem,
    ShadowChoice,
)
from core.db.registry import (
    RegistryConflict,
    RegistryHead,
    UnknownVersion,
    model_events,
    promote,
    registry_head,
    resolve_version,
    set_shadow,
)

router = APIRouter(prefix="/api/models", tags=["registry"])

VersionPath = Annotated[
    str,
    Path(min_length=6, max_length=64, pattern=r"^[0-9a-fA-F]+$", description="a version, or a unique prefix"),
]
_CHANGE_RESPONSES = {
    404: {"model": Problem, "description": "no such version"},
    409: {
        "model": Problem,
        "description": "the change breaks a registry rule or the bundle cannot be loaded",
    },
}


@router.get("", response_model=ModelList, summary="Model versions: the champion, the shadow, the rest")
async def models(cache: Cache, served: Models) -> Response:
    """Through the result cache like the aggregates (the manifests are large; the list changes
    rarely); a change made through this process shows at once."""
    loaded = served.champion.version if served.champion is not None else None

    async def compute(conn: AsyncConnection) -> ModelList:
        rows = (await conn.execute(queries.model_version_list())).all()
        versions = [
            ModelVersion(
                version=row.version,
                created_at=row.created_at,
                bundle_path=row.bundle_path,
                source_path=row.source_path,
                registered_by=row.registered_by,
                threshold=row.threshold,
                active=row.active,
                shadow=row.shadow,
                loaded=row.version == loaded,
                evaluation=row.evaluation,
                training=row.training,
            )
            for row in rows
        ]
        active = next((v.version for v in versions if v.active), None)
        shadow = next((v.version for v in versions if v.shadow), None)
        return ModelList(active=active, shadow=shadow, loaded=loaded, versions=versions)

    return await cached_response(cache, ("models", loaded), REGISTRY_SCOPE, compute, REGISTRY)


@router.get("/events", response_model=ModelEvents, summary="The registry's audit trail, newest first")
async def events(
    conn: PoolConnection,
    version: Annotated[str | None, Query(max_length=64, pattern=r"^[0-9a-fA-F]+$")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> ModelEvents:
    found = await model_events(conn, version=version.lower() if version else None, limit=limit)
    return ModelEvents(
        events=[
            ModelEventOut(id=e.id, version=e.version, action=e.action, actor=e.actor, at=e.at, note=e.note)
            for e in found
        ]
    )


async def _changed(
    head: RegistryHead,
    served: Models,
    cache: Cache,
    *,
    version: str | None,
    role: str,
    changed: bool,
    actor: str,
) -> ModelChange:
    """The answer to a change; this process follows it before answering."""
    if changed:
        cache.written(REGISTRY_SCOPE)
        await served.refresh()
    return ModelChange(
        version=version,
        role=role,
        changed=changed,
        actor=actor,
        champion=head.champion.version if head.champion else None,
        shadow=head.shadow.version if head.shadow else None,
        serving=served.champion.version if served.champion is not None else None,
    )


def _refused(error: Exception) -> HTTPException:
    if isinstance(error, UnknownVersion):
        return HTTPException(status.HTTP_404_NOT_FOUND, str(error))
    return HTTPException(status.HTTP_409_CONFLICT, str(error))


@router.post(
    "/{version}/promote",
    response_model=ModelChange,
    summary="Make a version the champion (scorers and APIs switch within seconds)",
    responses=_CHANGE_RESPONSES,
)
async def promote_version(
    version: VersionPath, identity: CurrentIdentity, conn: PoolConnection, served: Models, cache: Cache
) -> ModelChange:
    """Recorded in the audit trail with the caller's identity. A shadow that is promoted stops
    being the shadow. Promoting the champion changes nothing (`changed: false`)."""
    try:
        resolved = await resolve_version(conn, version)
        changed = await promote(conn, resolved, identity.name, note="via the API")
    except (UnknownVersion, RegistryConflict) as error:
        raise _refused(error) from None
    head = await registry_head(conn)
    return await _changed(
        head, served, cache, version=resolved, role="champion", changed=changed, actor=identity.name
    )


@router.put(
    "/shadow",
    response_model=ModelChange,
    summary="Choose the shadow (challenger) version, or none",
    responses=_CHANGE_RESPONSES,
)
async def choose_shadow(
    choice: ShadowChoice, identity: CurrentIdentity, conn: PoolConnection, served: Models, cache: Cache
) -> ModelChange:
    """`{"version": null}` clears the shadow. The champion cannot be its own shadow (409)."""
    try:
        resolved = await resolve_version(conn, choice.version) if choice.version is not None else None
        changed = await set_shadow(conn, resolved, identity.name, note="via the API")
    except (UnknownVersion, RegistryConflict) as error:
        raise _refused(error) from None
    head = await registry_head(conn)
    return await _changed(
        head, served, cache, version=resolved, role="shadow", changed=changed, actor=identity.name
    )
