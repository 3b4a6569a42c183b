"""Record the loaded bundle in `model_versions` and mark it active (idempotent upsert).

Several API workers start at once: an advisory lock serialises them, so the "one active
version" unique index never sees two at a time.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from core.db.schema import model_versions
from core.ensemble import Ensemble

#: Advisory lock key for "changing which model version is active".
_LOCK_KEY = 0x66726175645F6D76 & 0x7FFFFFFFFFFFFFFF


async def register_model(engine: AsyncEngine, ensemble: Ensemble, bundle_path: Path) -> None:
    mv = model_versions.c
    async with engine.begin() as conn:
        await conn.execute(select(func.pg_advisory_xact_lock(_LOCK_KEY)))
        await conn.execute(
            update(model_versions).where(mv.active, mv.version != ensemble.version).values(active=False)
        )
        stmt = insert(model_versions).values(
            version=ensemble.version,
            bundle_path=str(bundle_path),
            threshold=ensemble.threshold,
            manifest=ensemble.manifest,
            active=True,
        )
        await conn.execute(stmt.on_conflict_do_update(index_elements=[mv.version], set_={"active": True}))
