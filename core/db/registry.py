"""The model registry: which bundles exist and which one is active.

The supervisor, the API and training register the bundle they serve or write and mark it
active; backtests register theirs without activating it; the scorer watches the active
version to switch bundles without a restart. An advisory lock serialises activations, so
several processes starting at once never trip the "one active version" unique index.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

import asyncpg

#: Advisory lock key for "changing which model version is active".
ACTIVATION_LOCK = 0x66726175645F6D76

UPSERT = """
INSERT INTO model_versions (version, bundle_path, threshold, manifest, active)
VALUES ($1, $2, $3, $4::jsonb, false)
ON CONFLICT (version) DO UPDATE SET bundle_path = EXCLUDED.bundle_path
"""


class Bundle(Protocol):
    """What the registry needs of a loaded bundle (`core.ensemble.Ensemble` has it)."""

    version: str
    threshold: float
    manifest: dict


async def register_model(
    conn: asyncpg.Connection, bundle: Bundle, bundle_path: Path, *, activate: bool = True
) -> None:
    """Record a bundle (idempotent); optionally make it the one active version."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", ACTIVATION_LOCK)
        await conn.execute(
            UPSERT, bundle.version, str(bundle_path), float(bundle.threshold), json.dumps(bundle.manifest)
        )
        if activate:
            await conn.execute(
                "UPDATE model_versions SET active = false WHERE active AND version <> $1", bundle.version
            )
            await conn.execute("UPDATE model_versions SET active = true WHERE version = $1", bundle.version)


async def active_model(conn: asyncpg.Connection) -> tuple[str, str] | None:
    """(version, bundle_path) of the active model, or None when none is registered."""
    row = await conn.fetchrow("SELECT version, bundle_path FROM model_versions WHERE active")
    return (row["version"], row["bundle_path"]) if row else None
