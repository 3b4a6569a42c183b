"""`fraudstream model list | promote | shadow | history` as a person runs it, on a real registry."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.bundle_store import BundleStore
from core.db.registry import model_events, registry_head
from tests.bundles import register, write_variant
from tests.streaming_fixtures import fetch

ROOT = Path(__file__).resolve().parents[1]


def model(database_url: str, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRAUDSTREAM_")}
    env.update(FRAUDSTREAM_DATABASE_URL=database_url, USER="cli-user")
    return subprocess.run(
        [sys.executable, "-m", "fraudstream", "model", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )


@pytest.fixture
def versions(database_url: str, model_bundle: Path, tmp_path: Path) -> list[str]:
    store = BundleStore(tmp_path / "store")
    made = []
    for i, threshold in enumerate((0.25, 0.5)):
        write_variant(model_bundle, tmp_path / f"v{i}", threshold)
        made.append(asyncio.run(register(database_url, tmp_path / f"v{i}", store, activate=i == 0)))
    return made


async def _head(database_url: str):
    import asyncpg

    conn = await asyncpg.connect(database_url)
    try:
        return await registry_head(conn), await model_events(conn)
    finally:
        await conn.close()


def test_list_promote_shadow_and_history(database_url: str, versions: list[str], tmp_path: Path) -> None:
    champion, other = versions
    listed = model(database_url, "list")
    assert listed.returncode == 0, listed.stderr
    rows = {
        line.split()[1] if line.startswith(("*", "~")) else line.split()[0]: line
        for line in listed.stdout.splitlines()[2:4]
    }
    assert (
        rows[champion].startswith("*")
        and "0.2500" in rows[champion]
        and str(tmp_path / "v0") in rows[champion]
    )
    assert not rows[other].startswith(("*", "~")) and "0.5000" in rows[other]
    assert "test AUPRC" in listed.stdout and "champion since" in listed.stdout

    shadow = model(database_url, "shadow", other[:8], "--note", "try it")
    assert shadow.returncode == 0 and f"{other} is the shadow (by cli-user)" in shadow.stdout
    assert f"~  {other}" in model(database_url, "list").stdout
    promoted = model(database_url, "promote", other, "--actor", "alice")
    assert promoted.returncode == 0 and f"{other} is the champion (by alice)" in promoted.stdout
    again = model(database_url, "promote", other)
    assert again.returncode == 0 and "already is the champion" in again.stdout
    head, events = asyncio.run(_head(database_url))
    assert head.champion.version == other and head.shadow is None
    assert [(e.version, e.action, e.actor, e.note) for e in events[:3]] == [
        (other, "promoted", "alice", f"replaces {champion}"),
        (other, "shadow_off", "alice", "promoted to champion"),
        (other, "shadow_on", "cli-user", "try it"),
    ]
    history = model(database_url, "history", other[:10])
    assert history.returncode == 0
    assert [line.split()[3] for line in history.stdout.splitlines()[1:]] == [
        "promoted",
        "shadow_off",
        "shadow_on",
        "registered",
    ]
    off = model(database_url, "shadow", "--off")
    assert off.returncode == 0 and "nothing changed: there was no shadow" in off.stdout


def test_refusals_are_one_line_and_change_nothing(database_url: str, versions: list[str]) -> None:
    champion, other = versions
    for args, message in (
        (("promote", "0123456789abcdef"), "no registered model version"),
        (("promote", "abc"), "at least 6"),
        (("shadow", champion), "a version cannot also be its own shadow"),
    ):
        result = model(database_url, *args)
        assert result.returncode == 1 and message in result.stderr and "Traceback" not in result.stderr
    usage = model(database_url, "shadow")
    assert usage.returncode == 2
    rows = asyncio.run(fetch(database_url, "SELECT version FROM model_versions WHERE active OR shadow"))
    assert [r["version"] for r in rows] == [champion]
    nowhere = model("postgresql://postgres@127.0.0.1:9/none", "list")
    assert (
        nowhere.returncode == 1 and "cannot be used" in nowhere.stderr and "Traceback" not in nowhere.stderr
    )
