"""A database holding the shipped sample scored by a champion and, as the shadow, a challenger.

Stored through `core.db.store.store_new` with the shadow's scores (the scorer's own write),
every row live and labelled. Used by the comparison's API and dashboard tests.
"""

from __future__ import annotations

import time
from pathlib import Path

import asyncpg
import numpy as np

from core.bundle_store import BundleStore
from core.dataset import SAMPLE_PATH, Dataset, load_csv
from core.db.registry import register_model, set_shadow
from core.db.store import ScoredRows, ShadowScores, store_new
from core.ensemble import Ensemble
from tests.api_fixtures import stable_ids


async def fill_with_shadow(
    url: str, champion: Ensemble, shadow: Ensemble, champion_dir: Path, shadow_dir: Path, store: Path
) -> tuple[Dataset, list[str], dict[str, np.ndarray]]:
    """Register both (the champion, the shadow) and store every sample row with both scores;
    return the data, the ids, and the scores and alert flags (cs, ca: the champion's; ss, sa:
    the shadow's)."""
    data = load_csv(SAMPLE_PATH)
    ids = stable_ids(data.raw)
    conn = await asyncpg.connect(url)
    try:
        bundles = BundleStore(store)
        await register_model(conn, champion, champion_dir, activate=True, actor="tests", store=bundles)
        await register_model(conn, shadow, shadow_dir, activate=False, actor="tests", store=bundles)
        await set_shadow(conn, shadow.version, "tests")
        out = {"cs": [], "ca": [], "ss": [], "sa": []}
        for start in range(0, len(ids), 4000):
            part = data.raw[start : start + 4000]
            mine, theirs = champion.score(part), shadow.score(part)
            n = len(part)
            rows = ScoredRows(
                ids=ids[start : start + 4000],
                features=part,
                labels=data.labels[start : start + 4000].tolist(),
                run_ids=[None] * n,
                produced_at=[time.time()] * n,
                model_version=champion.version,
                score=mine.score,
                recon_error=mine.recon_error,
                alert=mine.alert,
            )
            would = theirs.score >= shadow.threshold
            scored = ShadowScores(shadow.version, theirs.score, theirs.recon_error, would, np.ones(n, bool))
            assert await store_new(conn, rows, {}, scored) == []
            out["cs"].append(mine.score)
            out["ca"].append(mine.alert)
            out["ss"].append(theirs.score)
            out["sa"].append(would)
        await conn.execute("ANALYZE")
        return data, ids, {key: np.concatenate(value) for key, value in out.items()}
    finally:
        await conn.close()
