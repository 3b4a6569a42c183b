"""Model bundles for the registry tests: real, loadable variants of one trained bundle.

Training a second bundle costs tens of seconds; a variant with another alert threshold is
a different model version (the threshold is part of the hashed `model` section) that
`Ensemble.load` accepts, and is written exactly as training writes one: into a folder,
over whatever bundle was there ("retraining in place").
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import asyncpg

from core.bundle import MANIFEST_NAME, write_manifest
from core.bundle_store import BundleStore
from core.db.registry import register_model
from core.ensemble import Ensemble

_STAMPED = ("format", "files", "version", "checksum")


def write_variant(source: Path, out: Path, threshold: float) -> str:
    """Write `source`'s model with another threshold into `out` (replacing it); return its version."""
    manifest = json.loads((source / MANIFEST_NAME).read_text())
    out.mkdir(parents=True, exist_ok=True)
    for name in manifest["files"]:
        shutil.copyfile(source / name, out / name)
    body = {key: value for key, value in manifest.items() if key not in _STAMPED}
    body["model"] = {**body["model"], "threshold": float(threshold)}
    return write_manifest(out, body, list(manifest["files"]))["version"]


async def register(
    database_url: str, folder: Path, store: BundleStore, *, activate: bool, actor: str = "tests"
) -> str:
    """Register the bundle in `folder` as training does; return its version."""
    ensemble = Ensemble.load(folder)
    conn = await asyncpg.connect(database_url)
    try:
        await register_model(conn, ensemble, folder, activate=activate, actor=actor, store=store)
    finally:
        await conn.close()
    return ensemble.version


def register_now(database_url: str, folder: Path, store: BundleStore, *, activate: bool) -> str:
    return asyncio.run(register(database_url, folder, store, activate=activate))
