"""The model registry: the one source of truth for which model version scores what.

    await register_model(conn, ensemble, Path("models/default"), activate=False)
    await promote(conn, "3f2a9c...", actor="alice")        # the new champion, everywhere
    await set_shadow(conn, "77b0e1...", actor="alice")     # the challenger, scored beside it
    await set_shadow(conn, None, actor="alice")            # no challenger
    head = await registry_head(conn)                       # champion and shadow, one query

`model_versions.active` marks the **champion** (what live traffic is scored with) and
`shadow` the challenger; at most one of each, never both for one version (the database
enforces all three). Registering a bundle copies it into the content-addressed store
(`core.bundle_store`) and records that copy, so a version stays loadable whatever happens
to the folder it came from. Every change is written to `model_events`, an append-only
audit trail: who registered, promoted or shadowed which version, when.

Scorers and the API follow the registry (`core.models.EnsembleResolver`): nothing
activates a model as a side effect of starting. Every change runs in one transaction
under an advisory lock, so concurrent promotions serialise instead of tripping the
unique indexes, and a reader never sees two champions or none in between.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import asyncpg

from core.bundle import BundleError, read_manifest
from core.bundle_store import BundleStore

#: Advisory lock key for "changing the registry" (registering, promoting, shadowing).
ACTIVATION_LOCK = 0x66726175645F6D76
#: The shortest version prefix accepted where a person types a version.
MIN_PREFIX = 6

UPSERT = """
INSERT INTO model_versions (version, bundle_path, source_path, registered_by, threshold, manifest, active)
VALUES ($1, $2, $3, $4, $5, $6::jsonb, false)
ON CONFLICT (version) DO UPDATE SET bundle_path = EXCLUDED.bundle_path,
    source_path = coalesce(model_versions.source_path, EXCLUDED.source_path)
RETURNING (xmax = 0) AS inserted
"""

_EVENT = "INSERT INTO model_events (version, action, actor, note) VALUES ($1, $2, $3, $4)"

_HEAD = """
SELECT m.version, m.bundle_path, m.active,
       (SELECT max(e.at) FROM model_events e
        WHERE e.version = m.version AND e.action = CASE WHEN m.active THEN 'promoted' ELSE 'shadow_on' END
       ) AS since
FROM model_versions m WHERE m.active OR m.shadow
"""

_LIST = """
SELECT version, created_at, bundle_path, source_path, registered_by, threshold, active, shadow,
       manifest #> '{evaluation,test,ensemble,auprc}' AS test_auprc
FROM model_versions ORDER BY created_at DESC, version
"""


class RegistryError(Exception):
    """A registry change that cannot be made; the message says why."""


class UnknownVersion(RegistryError, LookupError):
    """No registered version matches."""


class RegistryConflict(RegistryError):
    """The change contradicts the registry's rules (e.g. the champion cannot be the shadow)."""


class Bundle(Protocol):
    """What the registry needs of a loaded bundle (`core.ensemble.Ensemble` has it)."""

    version: str
    threshold: float
    manifest: dict


@dataclass(frozen=True, slots=True)
class Deployed:
    """A version in a role (champion or shadow): where its bundle is, since when it has the role."""

    version: str
    bundle_path: str
    since: datetime | None = None


@dataclass(frozen=True, slots=True)
class RegistryHead:
    """What live traffic is scored with now."""

    champion: Deployed | None
    shadow: Deployed | None


@dataclass(frozen=True, slots=True)
class RegisteredModel:
    version: str
    created_at: datetime
    bundle_path: str
    source_path: str | None
    registered_by: str
    threshold: float
    champion: bool
    shadow: bool
    test_auprc: float | None


@dataclass(frozen=True, slots=True)
class ModelEvent:
    id: int
    version: str
    action: str
    actor: str
    at: datetime
    note: str | None


def default_actor() -> str:
    """Who is acting when nobody says: the operating-system user."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers)
        return os.environ.get("USER") or f"uid {os.getuid()}"


def default_store() -> BundleStore:
    """The configured store (FRAUDSTREAM_MODEL_STORE, or <state_dir>/models)."""
    from core.settings import Settings

    return BundleStore(Settings().resolved_model_store)


async def _locked(conn: asyncpg.Connection) -> None:
    await conn.execute("SELECT pg_advisory_xact_lock($1)", ACTIVATION_LOCK)


async def _event(conn: asyncpg.Connection, version: str, action: str, actor: str, note: str | None) -> None:
    await conn.execute(_EVENT, version, action, actor, note)


async def register_model(
    conn: asyncpg.Connection,
    bundle: Bundle,
    bundle_path: Path,
    *,
    activate: bool = True,
    actor: str | None = None,
    store: BundleStore | None = None,
) -> Path:
    """Copy the bundle at `bundle_path` into the store and record it (idempotent); with
    `activate`, make it the champion. Returns the stored copy's path.

    Raises `BundleError` when the folder does not hold `bundle.version` intact (it was
    rewritten after `bundle` was loaded, or altered).
    """
    actor = actor or default_actor()
    store = store or default_store()
    stored = await asyncio.to_thread(store.put, Path(bundle_path), expected_version=bundle.version)
    source = str(stored.source)
    async with conn.transaction():
        await _locked(conn)
        inserted = await conn.fetchval(
            UPSERT,
            bundle.version,
            str(stored.path),
            source,
            actor,
            float(bundle.threshold),
            json.dumps(bundle.manifest),
        )
        if inserted:
            await _event(conn, bundle.version, "registered", actor, f"from {source}")
        if activate:
            await _promote_locked(conn, bundle.version, actor, None)
    return stored.path


async def resolve_version(conn: asyncpg.Connection, text: str) -> str:
    """The registered version `text` names: the version itself or a unique prefix of it."""
    wanted = text.strip().lower()
    if len(wanted) < MIN_PREFIX or not all(c in "0123456789abcdef" for c in wanted):
        raise UnknownVersion(
            f"{text[:40]!r} is not a model version (hex, at least {MIN_PREFIX} characters of it)"
        )
    rows = await conn.fetch(
        "SELECT version FROM model_versions WHERE version = $1 OR starts_with(version, $1) "
        "ORDER BY version LIMIT 3",
        wanted,
    )
    exact = [r["version"] for r in rows if r["version"] == wanted]
    if exact:
        return exact[0]
    if not rows:
        raise UnknownVersion(f"no registered model version {wanted}")
    if len(rows) > 1:
        raise UnknownVersion(f"{wanted} matches several versions; give more of it")
    return rows[0]["version"]


async def _loadable(bundle_path: str, version: str) -> None:
    """Refuse to deploy a version whose stored bundle is missing or altered."""
    try:
        manifest = await asyncio.to_thread(read_manifest, bundle_path)
    except BundleError as error:
        raise RegistryConflict(f"version {version} cannot be deployed: {error}") from None
    if manifest["version"] != version:
        raise RegistryConflict(
            f"version {version} cannot be deployed: {bundle_path} holds {manifest['version']}"
        )


async def _promote_locked(conn: asyncpg.Connection, version: str, actor: str, note: str | None) -> bool:
    row = await conn.fetchrow(
        "SELECT bundle_path, active, shadow FROM model_versions WHERE version = $1", version
    )
    if row is None:
        raise UnknownVersion(f"no registered model version {version}")
    if row["active"]:
        return False
    await _loadable(row["bundle_path"], version)
    previous = await conn.fetchval("SELECT version FROM model_versions WHERE active")
    if row["shadow"]:
        await conn.execute("UPDATE model_versions SET shadow = false WHERE version = $1", version)
        await _event(conn, version, "shadow_off", actor, "promoted to champion")
    await conn.execute("UPDATE model_versions SET active = false WHERE active")
    await conn.execute("UPDATE model_versions SET active = true WHERE version = $1", version)
    await _event(conn, version, "promoted", actor, note or (f"replaces {previous}" if previous else None))
    return True


async def promote(conn: asyncpg.Connection, version: str, actor: str, *, note: str | None = None) -> bool:
    """Make `version` the champion (scorers and the API switch within seconds); False if it was.

    A shadow that is promoted stops being the shadow. Raises `UnknownVersion`, or
    `RegistryConflict` when its stored bundle cannot be loaded.
    """
    async with conn.transaction():
        await _locked(conn)
        return await _promote_locked(conn, version, actor, note)


async def set_shadow(
    conn: asyncpg.Connection, version: str | None, actor: str, *, note: str | None = None
) -> bool:
    """Make `version` the shadow (None: no shadow); False when nothing changed.

    Raises `UnknownVersion`, or `RegistryConflict` for the champion or an unloadable bundle.
    """
    async with conn.transaction():
        await _locked(conn)
        current = await conn.fetchval("SELECT version FROM model_versions WHERE shadow")
        if version == current:
            return False
        if version is not None:
            row = await conn.fetchrow(
                "SELECT bundle_path, active FROM model_versions WHERE version = $1", version
            )
            if row is None:
                raise UnknownVersion(f"no registered model version {version}")
            if row["active"]:
                raise RegistryConflict(f"{version} is the champion; a version cannot also be its own shadow")
            await _loadable(row["bundle_path"], version)
        if current is not None:
            await conn.execute("UPDATE model_versions SET shadow = false WHERE version = $1", current)
            await _event(
                conn, current, "shadow_off", actor, note or (f"replaced by {version}" if version else None)
            )
        if version is not None:
            await conn.execute("UPDATE model_versions SET shadow = true WHERE version = $1", version)
            await _event(conn, version, "shadow_on", actor, note)
        return True


async def registry_head(conn: asyncpg.Connection) -> RegistryHead:
    """The champion and the shadow (each with its stored bundle), in one query."""
    champion = shadow = None
    for row in await conn.fetch(_HEAD):
        deployed = Deployed(row["version"], row["bundle_path"], row["since"])
        if row["active"]:
            champion = deployed
        else:
            shadow = deployed
    return RegistryHead(champion, shadow)


async def active_model(conn: asyncpg.Connection) -> tuple[str, str] | None:
    """(version, bundle_path) of the champion, or None when there is none."""
    row = await conn.fetchrow("SELECT version, bundle_path FROM model_versions WHERE active")
    return (row["version"], row["bundle_path"]) if row else None


async def shadow_model(conn: asyncpg.Connection) -> tuple[str, str] | None:
    """(version, bundle_path) of the shadow, or None when there is none."""
    row = await conn.fetchrow("SELECT version, bundle_path FROM model_versions WHERE shadow")
    return (row["version"], row["bundle_path"]) if row else None


def _number(value: Any) -> float | None:
    if value is None:
        return None
    value = json.loads(value) if isinstance(value, str) else value
    return float(value) if isinstance(value, int | float) else None


async def list_models(conn: asyncpg.Connection) -> list[RegisteredModel]:
    """Every registered version, newest first, with its role and its test-stretch AUPRC."""
    return [
        RegisteredModel(
            version=row["version"],
            created_at=row["created_at"],
            bundle_path=row["bundle_path"],
            source_path=row["source_path"],
            registered_by=row["registered_by"],
            threshold=row["threshold"],
            champion=row["active"],
            shadow=row["shadow"],
            test_auprc=_number(row["test_auprc"]),
        )
        for row in await conn.fetch(_LIST)
    ]


async def model_events(
    conn: asyncpg.Connection, *, version: str | None = None, limit: int = 100
) -> list[ModelEvent]:
    """The audit trail, newest first (of one version, or of all)."""
    rows = await conn.fetch(
        "SELECT id, version, action, actor, at, note FROM model_events "
        "WHERE $1::text IS NULL OR version = $1 ORDER BY id DESC LIMIT $2",
        version,
        limit,
    )
    return [ModelEvent(**dict(row)) for row in rows]
