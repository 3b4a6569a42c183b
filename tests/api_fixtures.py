"""Fixtures for the API tests: a database filled through the scorer's write path, a live server.

`api_db` stores the shipped sample exactly as the scorer does (real `Ensemble` scores,
`core.db.store.store_scored`, ids from `core.events.transaction_id`), once per module,
and registers the bundle as the champion (the API serves the registry's champion).
`serve` runs the real app under a real uvicorn on a free loopback port, in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import numpy as np
import pytest
import uvicorn

from api.main import create_app
from core.bundle_store import BundleStore
from core.dataset import SAMPLE_PATH, load_csv
from core.db.registry import register_model
from core.db.store import ScoredRows, store_scored
from core.ensemble import Ensemble
from core.events import transaction_id
from core.kafka import ensure_topics
from core.runtime.processes import free_port
from core.settings import Settings


@dataclass(frozen=True)
class StoredSample:
    """What was stored, to check the API's answers against."""

    database_url: str
    ids: list[str]
    raw: np.ndarray
    labels: np.ndarray
    score: np.ndarray
    recon_error: np.ndarray
    alert: np.ndarray
    ensemble: Ensemble


def stable_ids(raw: np.ndarray) -> list[str]:
    """Ids as the producer makes them: identical rows are told apart by their occurrence."""
    seen: Counter[bytes] = Counter()
    ids = []
    for row in raw:
        key = row.tobytes()
        ids.append(transaction_id(row.tolist(), seen[key]))
        seen[key] += 1
    return ids


async def _fill(
    url: str,
    ensemble: Ensemble,
    raw: np.ndarray,
    labels: np.ndarray,
    ids: list[str],
    bundle: Path,
    store: Path,
):
    conn = await asyncpg.connect(url)
    try:
        await register_model(conn, ensemble, bundle, activate=True, actor="tests", store=BundleStore(store))
        scores, errors, alerts = [], [], []
        for start in range(0, len(ids), 4000):
            part = raw[start : start + 4000]
            batch = ensemble.score(part)
            rows = ScoredRows(
                ids=ids[start : start + 4000],
                features=part,
                labels=labels[start : start + 4000].tolist(),
                run_ids=[None] * len(part),
                produced_at=[time.time()] * len(part),
                model_version=ensemble.version,
                score=batch.score,
                recon_error=batch.recon_error,
                alert=batch.alert,
            )
            await store_scored(conn, rows)
            scores.append(batch.score)
            errors.append(batch.recon_error)
            alerts.append(batch.alert)
        await conn.execute("ANALYZE")
        return np.concatenate(scores), np.concatenate(errors), np.concatenate(alerts)
    finally:
        await conn.close()


@pytest.fixture(scope="module", name="api_db")
def api_db_fixture(infra, model_bundle: Path, tmp_path_factory) -> Iterator[StoredSample]:
    name, url = infra.create_database("api")
    data = load_csv(SAMPLE_PATH)
    ensemble = Ensemble.load(model_bundle)
    ids = stable_ids(data.raw)
    store = tmp_path_factory.mktemp("store")
    score, error, alert = asyncio.run(_fill(url, ensemble, data.raw, data.labels, ids, model_bundle, store))
    yield StoredSample(url, ids, data.raw, data.labels.astype(int), score, error, alert, ensemble)
    infra.drop_database(name)


def api_settings(infra, database_url: str, bundle: Path, tmp_path: Path, **overrides) -> Settings:
    suffix = uuid.uuid4().hex[:8]
    topic, labels = f"transactions-{suffix}", f"labels-{suffix}"
    asyncio.run(ensure_topics(infra.bootstrap_servers, {topic: 2, labels: 2}))
    overrides.setdefault("topic_labels", labels)
    return Settings(
        kafka_bootstrap_servers=infra.bootstrap_servers,
        database_url=database_url,
        model_path=bundle,
        topic_transactions=topic,
        state_dir=tmp_path / "state",
        _env_file=None,
        **overrides,
    )


@contextlib.contextmanager
def serve(settings: Settings, **app_options) -> Iterator[str]:
    """Run the app under uvicorn on a free 127.0.0.1 port; yield its base URL."""
    port = free_port("127.0.0.1")
    config = uvicorn.Config(
        create_app(settings, **app_options), host="127.0.0.1", port=port, log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="api-test-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the API server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
