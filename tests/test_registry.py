"""The model registry: training registers its bundle; one active version at a time."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from core.db.registry import active_model, register_model
from core.ensemble import Ensemble
from training.cli import register


async def _rows(database_url: str) -> list[tuple]:
    conn = await asyncpg.connect(database_url)
    try:
        return [tuple(r) for r in await conn.fetch("SELECT version, active, bundle_path FROM model_versions")]
    finally:
        await conn.close()


def test_training_registers_its_bundle_when_a_database_is_configured(
    model_bundle: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    version = Ensemble.load(model_bundle).version
    monkeypatch.setenv("FRAUDSTREAM_DATABASE_URL", database_url)
    assert register(model_bundle, activate=False).startswith("registered (make it active")
    assert asyncio.run(_rows(database_url)) == [(version, False, str(model_bundle.resolve()))]
    assert register(model_bundle, activate=True) == "registered and made active"
    assert asyncio.run(_rows(database_url)) == [(version, True, str(model_bundle.resolve()))]


def test_training_without_a_database_says_so(model_bundle: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("FRAUDSTREAM_DATABASE_URL", raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("FRAUDSTREAM_STATE_DIR", str(tmp_path))
    assert register(model_bundle, activate=True).startswith("not registered: no database configured")


class _Bundle:
    def __init__(self, version: str) -> None:
        self.version, self.threshold, self.manifest = version, 0.5, {"version": version}


async def _activate_in_turn(database_url: str) -> tuple[tuple[str, str] | None, list]:
    conn = await asyncpg.connect(database_url)
    try:
        for name in ("a", "b", "c"):
            await register_model(conn, _Bundle(name), Path(f"/bundles/{name}"), activate=True)
        await register_model(conn, _Bundle("d"), Path("/bundles/d"), activate=False)
        active = await active_model(conn)
        rows = await conn.fetch("SELECT version, active FROM model_versions ORDER BY version")
        return active, [tuple(r) for r in rows]
    finally:
        await conn.close()


def test_only_the_last_activated_version_is_active(database_url: str) -> None:
    active, rows = asyncio.run(_activate_in_turn(database_url))
    assert active == ("c", "/bundles/c")
    assert rows == [("a", False), ("b", False), ("c", True), ("d", False)]
