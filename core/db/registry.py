"""The model registry: which bundles exist and which one is active.

Training registers each bundle it writes; the supervisor and the API make sure the
bundle they serve is registered and marked active; the scorer watches the active
version to switch bundles without a restart.
"""

from __future__ import annotations

import json
from pathlib import Path

import asyncpg

UPSERT = """
INSERT INTO model_versions (version, bundle_path, threshold, manifest, active)
VALUES ($1, $2, $3, $4::jsonb, false)
ON CONFLICT (version) DO UPDATE SET bundle_path = EXCLUDED.bundle_path
"""


async def register_model(
    conn: asyncpg.Connection, manifest: dict, bundle_path: Path, *, activate: bool = True
) -> None:
    """Record a bundle's manifest (idempotent); optionally make it the active version."""
    async with conn.transaction():
        await conn.execute(
            UPSERT, manifest["version"], str(bundle_path), float(manifest["threshold"]), json.dumps(manifest)
        )
        if activate:
            await conn.execute(
                "UPDATE model_versions SET active = false WHERE active AND version <> $1", manifest["version"]
            )
            await conn.execute(
                "UPDATE model_versions SET active = true WHERE version = $1", manifest["version"]
            )


async def active_model(conn: asyncpg.Connection) -> tuple[str, str] | None:
    """(version, bundle_path) of the active model, or None when none is registered."""
    row = await conn.fetchrow("SELECT version, bundle_path FROM model_versions WHERE active")
    return (row["version"], row["bundle_path"]) if row else None
