"""The model registry and the bundle store against the real PostgreSQL, with real bundles.

One champion and at most one shadow, never both for one version; every change in the
append-only audit trail with its actor; bundles resolved by version from the
content-addressed store, so retraining into the same folder leaves every version loadable.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import asyncpg
import pytest

from core.bundle import BundleError
from core.bundle_store import BundleStore
from core.db.registry import (
    RegistryConflict,
    UnknownVersion,
    active_model,
    list_models,
    model_events,
    promote,
    register_model,
    registry_head,
    resolve_version,
    set_shadow,
    shadow_model,
)
from core.ensemble import Ensemble
from core.models import EnsembleResolver, NoModel
from tests.bundles import register, write_variant
from training.cli import register as training_register


@pytest.fixture
def store(tmp_path: Path) -> BundleStore:
    return BundleStore(tmp_path / "store")


@pytest.fixture
def variants(model_bundle: Path, tmp_path: Path) -> list[tuple[str, Path]]:
    """Three loadable versions, each in its own folder: (version, folder)."""
    made = []
    for i, threshold in enumerate((0.31, 0.52, 0.73)):
        folder = tmp_path / f"variant-{i}"
        made.append((write_variant(model_bundle, folder, threshold), folder))
    return made


async def _connect(database_url: str) -> asyncpg.Connection:
    return await asyncpg.connect(database_url)


def run(database_url: str, scenario):
    async def main():
        conn = await _connect(database_url)
        try:
            return await scenario(conn)
        finally:
            await conn.close()

    return asyncio.run(main())


# --------------------------------------------------------------------------- training registers


def test_training_registers_a_stored_copy_when_a_database_is_configured(
    model_bundle: Path, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    version = Ensemble.load(model_bundle).version
    monkeypatch.setenv("FRAUDSTREAM_DATABASE_URL", database_url)
    monkeypatch.setenv("FRAUDSTREAM_MODEL_STORE", str(tmp_path / "store"))
    registered, what = training_register(model_bundle, activate=False)
    assert registered and what.startswith("registered (make it active")

    async def rows(conn):
        return [
            dict(r)
            for r in await conn.fetch("SELECT version, active, bundle_path, source_path FROM model_versions")
        ]

    stored = tmp_path / "store" / version
    assert run(database_url, rows) == [
        {
            "version": version,
            "active": False,
            "bundle_path": str(stored),
            "source_path": str(model_bundle.resolve()),
        }
    ]
    assert Ensemble.load(stored).version == version
    assert training_register(model_bundle, activate=True) == (True, "registered and made active")
    assert run(database_url, rows)[0]["active"] is True


def test_training_without_a_database_says_so(model_bundle: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("FRAUDSTREAM_DATABASE_URL", raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("FRAUDSTREAM_STATE_DIR", str(tmp_path))
    registered, what = training_register(model_bundle, activate=True)
    assert not registered and what.startswith("not registered: no database configured")


# --------------------------------------------------------------------------- the store


def test_retraining_into_one_folder_keeps_every_version_loadable(
    model_bundle: Path, database_url: str, store: BundleStore, tmp_path: Path
) -> None:
    folder = tmp_path / "models" / "default"
    first = write_variant(model_bundle, folder, 0.4)
    asyncio.run(register(database_url, folder, store, activate=True))
    second = write_variant(model_bundle, folder, 0.6)  # the same folder, rewritten in place
    asyncio.run(register(database_url, folder, store, activate=True))
    assert first != second and Ensemble.load(folder).version == second

    async def scenario(conn):
        models = {m.version: m for m in await list_models(conn)}
        assert set(models) == {first, second}
        assert models[second].champion and not models[first].champion
        assert {m.source_path for m in models.values()} == {str(folder.resolve())}
        paths = {m.bundle_path for m in models.values()}
        assert paths == {str(store.path(first)), str(store.path(second))}
        # The folder holds only the second version, yet the first one is deployable again.
        assert await promote(conn, first, "tests")
        resolver = await EnsembleResolver.open(conn, fallback_path=None)
        assert resolver.active.version == first and resolver.active.threshold == pytest.approx(0.4)

    run(database_url, scenario)


def test_the_store_refuses_altered_bundles_and_is_idempotent(model_bundle: Path, store: BundleStore) -> None:
    version = Ensemble.load(model_bundle).version
    stored = store.put(model_bundle)
    assert stored.version == version and stored.path == store.path(version)
    before = (stored.path / "xgboost.ubj").stat().st_mtime_ns
    assert store.put(model_bundle).path == stored.path  # already stored: not copied again
    assert (stored.path / "xgboost.ubj").stat().st_mtime_ns == before
    assert not [p for p in store.root.iterdir() if p.name.startswith(".incoming")]

    with pytest.raises(BundleError, match="expected"):
        store.put(model_bundle, expected_version="0" * 16)
    altered = store.root.parent / "altered"
    shutil.copytree(model_bundle, altered)
    (altered / "xgboost.ubj").write_bytes(b"not a model")
    with pytest.raises(BundleError, match="altered"):
        store.put(altered)
    (stored.path / "autoencoder.pt").write_bytes(b"damaged")  # a damaged copy is replaced
    assert store.put(model_bundle).path == stored.path and store.verify(version) == stored.path
    with pytest.raises(BundleError, match="not a model version"):
        store.path("../../etc")


def test_registering_a_folder_that_changed_since_it_was_loaded_is_refused(
    model_bundle: Path, database_url: str, store: BundleStore, tmp_path: Path
) -> None:
    folder = tmp_path / "bundle"
    write_variant(model_bundle, folder, 0.4)
    loaded = Ensemble.load(folder)
    write_variant(model_bundle, folder, 0.6)  # rewritten after it was loaded

    async def scenario(conn):
        with pytest.raises(BundleError, match="expected"):
            await register_model(conn, loaded, folder, activate=True, actor="tests", store=store)
        assert await list_models(conn) == []

    run(database_url, scenario)


# --------------------------------------------------------------------------- champion and shadow


def test_one_champion_one_shadow_never_both(database_url: str, store: BundleStore, variants) -> None:
    (a, folder_a), (b, folder_b), (c, folder_c) = variants

    async def scenario(conn):
        for folder in (folder_a, folder_b, folder_c):
            await register_model(
                conn, Ensemble.load(folder), folder, activate=False, actor="trainer", store=store
            )
        assert await active_model(conn) is None and await shadow_model(conn) is None
        assert await promote(conn, a, "alice")
        assert not await promote(conn, a, "alice")  # already the champion: nothing to record
        assert await set_shadow(conn, b, "bob")
        with pytest.raises(RegistryConflict, match="champion"):
            await set_shadow(conn, a, "bob")
        assert await set_shadow(conn, c, "bob")  # replaces b as the shadow
        assert (await shadow_model(conn))[0] == c
        assert await promote(conn, c, "carol")  # the shadow promoted stops being the shadow
        head = await registry_head(conn)
        assert head.champion.version == c and head.shadow is None
        assert head.champion.bundle_path == str(store.path(c)) and head.champion.since is not None
        assert await set_shadow(conn, a, "bob") and not await set_shadow(conn, a, "bob")
        assert await set_shadow(conn, None, "bob") and await shadow_model(conn) is None
        roles = await conn.fetch("SELECT version, active, shadow FROM model_versions ORDER BY version")
        assert sum(r["active"] for r in roles) == 1 and sum(r["shadow"] for r in roles) == 0

        # The database itself refuses a second champion, a second shadow, or both at once.
        for sql in (
            "UPDATE model_versions SET active = true",
            "UPDATE model_versions SET shadow = true",
            f"UPDATE model_versions SET shadow = true WHERE version = '{c}'",
        ):
            with pytest.raises(asyncpg.IntegrityConstraintViolationError):
                await conn.execute(sql)

        events = [(e.version, e.action, e.actor) for e in reversed(await model_events(conn))]
        assert events == [
            (a, "registered", "trainer"),
            (b, "registered", "trainer"),
            (c, "registered", "trainer"),
            (a, "promoted", "alice"),
            (b, "shadow_on", "bob"),
            (b, "shadow_off", "bob"),
            (c, "shadow_on", "bob"),
            (c, "shadow_off", "carol"),
            (c, "promoted", "carol"),
            (a, "shadow_on", "bob"),
            (a, "shadow_off", "bob"),
        ]
        assert [e.action for e in await model_events(conn, version=b)] == [
            "shadow_off",
            "shadow_on",
            "registered",
        ]

    run(database_url, scenario)


def test_the_audit_trail_is_append_only(database_url: str, store: BundleStore, variants) -> None:
    (a, folder_a), _, _ = variants

    async def scenario(conn):
        await register_model(
            conn, Ensemble.load(folder_a), folder_a, activate=True, actor="alice", store=store
        )
        for sql in (
            "UPDATE model_events SET actor = 'mallory'",
            "DELETE FROM model_events",
            "TRUNCATE model_events",
        ):
            with pytest.raises(asyncpg.RaiseError, match="append-only"):
                await conn.execute(sql)
        assert {e.actor for e in await model_events(conn)} == {"alice"}

    run(database_url, scenario)


def test_versions_are_named_exactly_or_by_a_unique_prefix(
    database_url: str, store: BundleStore, variants
) -> None:
    async def scenario(conn):
        for _, folder in variants:
            await register_model(conn, Ensemble.load(folder), folder, activate=False, actor="t", store=store)
        version = variants[0][0]
        assert await resolve_version(conn, version) == version
        assert await resolve_version(conn, version[:8].upper()) == version
        for text, message in (
            ("abc", "at least"),
            ("zzzzzzzz", "not a model version"),
            ("'; DROP TABLE model_versions; --", "not a model version"),
            ("0123456789abcdef", "no registered"),
        ):
            with pytest.raises(UnknownVersion, match=message):
                await resolve_version(conn, text)
        with pytest.raises(UnknownVersion):
            await promote(conn, "0123456789abcdef", "t")
        with pytest.raises(UnknownVersion):
            await set_shadow(conn, "0123456789abcdef", "t")

    run(database_url, scenario)


def test_a_version_whose_stored_bundle_is_damaged_is_never_deployed(
    database_url: str, store: BundleStore, variants
) -> None:
    (a, folder_a), (b, folder_b), _ = variants

    async def scenario(conn):
        await register_model(conn, Ensemble.load(folder_a), folder_a, activate=True, actor="t", store=store)
        await register_model(conn, Ensemble.load(folder_b), folder_b, activate=False, actor="t", store=store)
        (store.path(b) / "xgboost.ubj").write_bytes(b"\x00" * 10)
        for change in (promote(conn, b, "t"), set_shadow(conn, b, "t")):
            with pytest.raises(RegistryConflict, match="cannot be deployed"):
                await change
        head = await registry_head(conn)
        assert head.champion.version == a and head.shadow is None

    run(database_url, scenario)


def test_concurrent_promotions_leave_exactly_one_champion(
    database_url: str, store: BundleStore, variants
) -> None:
    async def main() -> None:
        conn = await _connect(database_url)
        for _, folder in variants:
            await register_model(conn, Ensemble.load(folder), folder, activate=False, actor="t", store=store)
        await promote(conn, variants[0][0], "t")
        pool = await asyncpg.create_pool(database_url, min_size=6, max_size=6)
        seen_champions: list[int] = []
        stop = asyncio.Event()

        async def watch() -> None:  # nobody ever sees zero or two champions
            async with pool.acquire() as watcher:
                while not stop.is_set():
                    seen_champions.append(
                        await watcher.fetchval("SELECT count(*) FROM model_versions WHERE active")
                    )
                    await asyncio.sleep(0)

        async def promoter(k: int) -> None:
            async with pool.acquire() as mine:
                for i in range(8):
                    await promote(mine, variants[(i + k) % 3][0], f"p{k}")

        try:
            watching = asyncio.create_task(watch())
            await asyncio.gather(*(promoter(k) for k in range(4)))
            stop.set()
            await watching
            assert set(seen_champions) == {1}
            promoted = await conn.fetch(
                "SELECT version FROM model_events WHERE action = 'promoted' ORDER BY id"
            )
            head = await registry_head(conn)
            assert promoted[-1]["version"] == head.champion.version
            assert all(x["version"] != y["version"] for x, y in zip(promoted, promoted[1:], strict=False))
        finally:
            await pool.close()
            await conn.close()

    asyncio.run(main())


# --------------------------------------------------------------------------- the resolver


class CountingLoad:
    def __init__(self) -> None:
        self.paths: list[Path] = []

    def __call__(self, path: Path) -> Ensemble:
        self.paths.append(Path(path))
        return Ensemble.load(path)


def test_the_resolver_follows_the_registry_by_version(
    database_url: str, store: BundleStore, variants, model_bundle: Path
) -> None:
    (a, folder_a), (b, folder_b), _ = variants

    async def scenario(conn):
        load = CountingLoad()
        with pytest.raises(NoModel, match="no champion"):
            await EnsembleResolver.open(conn, fallback_path=None, load=load)
        # No champion: the fallback folder is served, and stays unregistered.
        resolver = await EnsembleResolver.open(conn, fallback_path=model_bundle, load=load)
        assert resolver.active.version == Ensemble.load(model_bundle).version
        assert await list_models(conn) == []

        await register_model(conn, Ensemble.load(folder_a), folder_a, activate=True, actor="t", store=store)
        await register_model(conn, Ensemble.load(folder_b), folder_b, activate=False, actor="t", store=store)
        assert await resolver.refresh_active(conn) and resolver.active.version == a
        assert load.paths[-1] == store.path(a)  # loaded from the store, not from the folder
        assert not await resolver.refresh_active(conn)
        await set_shadow(conn, b, "t")
        changed = await resolver.refresh(conn)
        assert not changed.champion and changed.shadow and resolver.shadow.version == b
        await promote(conn, b, "t")
        await promote(conn, a, "t")
        loads = len(load.paths)
        assert await resolver.refresh_active(conn) is False  # a is back, b no longer the shadow
        assert resolver.shadow is None
        await promote(conn, b, "t")
        assert await resolver.refresh_active(conn) and resolver.active.version == b
        assert len(load.paths) == loads  # both versions were cached by version: no reload

        # A champion whose stored bundle is gone: open() refuses; a running resolver keeps b.
        await promote(conn, a, "t")
        shutil.rmtree(store.path(a))
        fresh = EnsembleResolver(resolver.active)
        assert not await fresh.refresh_active(conn) and fresh.active.version == b
        with pytest.raises(NoModel, match="cannot be loaded"):
            await EnsembleResolver.open(conn, fallback_path=model_bundle)

    run(database_url, scenario)


def test_backtest_runs_are_scored_by_their_registered_version(
    database_url: str, store: BundleStore, variants
) -> None:
    (a, folder_a), _, _ = variants

    async def scenario(conn):
        await register_model(conn, Ensemble.load(folder_a), folder_a, activate=False, actor="t", store=store)
        await conn.execute(
            "INSERT INTO backtest_runs (id, model_version, bundle_path, threshold, time_from, time_to) "
            "VALUES ('bt-a', $1, $2, 0.9, 0, 10), ('bt-gone', '0123456789abcdef', '/nowhere', 0.5, 0, 10)",
            a,
            str(folder_a),
        )
        resolver = EnsembleResolver(Ensemble.load(folder_a))
        shutil.rmtree(folder_a)  # the folder the run was started from is gone (or retrained)
        runs = await resolver.for_runs(conn, ["bt-a", "bt-gone", "bt-unknown"])
        assert runs["bt-a"].version == a and runs["bt-a"].threshold == 0.9
        assert runs["bt-gone"] is None and runs["bt-unknown"] is None

    run(database_url, scenario)
