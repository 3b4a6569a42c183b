"""Drift per hour of data, counted in PostgreSQL into a version's reference bins.

A window of four hours is stored through the scorer's write path (`store_scored`) with the
real model's scores: rows drawn from the bundle's own training stretch (the reference's
distribution), V14 and Amount shifted by three standard deviations in the last two hours.
Drift must be flagged for exactly those features in exactly those hours, and not at all
in the unshifted hours with the same number of rows; the counts must be numpy's.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from core.bundle_store import BundleStore
from core.dataset import SAMPLE_PATH, load_csv
from core.db.drift import MAX_WINDOW_HOURS, drift_counts
from core.db.registry import register_model
from core.db.store import ScoredRows, store_scored
from core.drift import MIN_ROWS_FOR_PSI, PSI_MODERATE, bin_counts, hour_drift
from core.ensemble import Ensemble
from core.features import RAW_FEATURES
from core.runtime.processes import wait_until
from tests.api_fixtures import api_settings, serve

HOURS, PER_HOUR, SHIFTED = 4, 700, {"V14", "Amount"}


def test_shifted_hours_are_flagged_for_the_shifted_features_only(
    infra, model_bundle: Path, database_url: str, tmp_path: Path
) -> None:
    ensemble = Ensemble.load(model_bundle)
    reference = ensemble.manifest["reference"]
    data = load_csv(SAMPLE_PATH)
    train_until = ensemble.manifest["training"]["data"]["splits"]["train"]["time_max"]
    pool = data.raw[data.time <= train_until]
    rng = np.random.default_rng(7)
    raw = pool[rng.choice(len(pool), size=HOURS * PER_HOUR + 100, replace=False)].copy()
    hours = np.repeat(np.arange(HOURS + 1), [PER_HOUR] * HOURS + [100])  # and a thin fifth hour
    raw[:, 0] = hours * 3600.0 + rng.uniform(0, 3600, size=len(raw))
    for name in SHIFTED:
        column = RAW_FEATURES.index(name)
        raw[hours >= 2, column] += 3.0 * pool[:, column].std()
    scored = ensemble.score(raw)
    rows = ScoredRows(
        ids=[f"d-{i}" for i in range(len(raw))],
        features=raw,
        labels=[None] * len(raw),
        run_ids=[None] * len(raw),
        produced_at=[None] * len(raw),
        model_version=ensemble.version,
        score=scored.score,
        recon_error=scored.recon_error,
        alert=scored.score >= ensemble.threshold,
    )

    async def run():
        conn = await asyncpg.connect(database_url)
        try:
            await store_scored(conn, rows)
            await register_model(
                conn, ensemble, model_bundle, activate=True, store=BundleStore(tmp_path / "s")
            )
            counted = await drift_counts(
                conn, version=ensemble.version, reference=reference, time_from=0, time_to=(HOURS + 1) * 3600.0
            )
            other = await drift_counts(
                conn, version="not-" + ensemble.version, reference=reference, time_from=0, time_to=3600.0
            )
            with pytest.raises(ValueError, match="at most 96 hours"):
                await drift_counts(
                    conn,
                    version=ensemble.version,
                    reference=reference,
                    time_from=0,
                    time_to=(MAX_WINDOW_HOURS + 1) * 3600.0,
                )
            return counted, other
        finally:
            await conn.close()

    counted, other = asyncio.run(run())
    assert other == []  # another version's drift never counts these rows
    assert [h.hour for h in counted] == list(range(HOURS + 1))
    for hour in counted:
        mine = hours == hour.hour
        assert hour.rows == mine.sum() and hour.alerts == int(rows.alert[mine].sum())
        for name in ("V14", "V3", "Amount"):  # PostgreSQL's width_bucket bins like core.drift
            column = raw[mine, RAW_FEATURES.index(name)]
            assert hour.counts[name] == bin_counts(reference["features"][name]["edges"], column).tolist()
        assert hour.counts["score"] == bin_counts(reference["score"]["edges"], scored.score[mine]).tolist()

    report = {h.hour: hour_drift(reference, h.counts, h.rows, h.alerts) for h in counted}
    features = set(reference["features"])
    for hour in (0, 1):
        assert all(report[hour]["psi"][name] < PSI_MODERATE for name in features), report[hour]["psi"]
    for hour in (2, 3):
        flagged = {name for name in features if report[hour]["level"][name] != "stable"}
        assert flagged == SHIFTED and all(report[hour]["level"][n] == "major" for n in SHIFTED)
    thin = report[HOURS]
    assert thin["rows"] == 100 < MIN_ROWS_FOR_PSI and not thin["enough_rows"]
    assert set(thin["psi"].values()) == {None} and thin["alert_rate"] is not None
    assert report[0]["expected_alert_rate"] == reference["alert_rate"]["expected"]

    # The same over HTTP: GET /api/drift for the champion, the window ending with the latest row.
    with (
        serve(api_settings(infra, database_url, model_bundle, tmp_path)) as base_url,
        httpx.Client(base_url=base_url, timeout=60) as client,
    ):
        answer = client.get("/api/drift", params={"hours": HOURS + 1}).json()
        assert answer["version"] == ensemble.version and (answer["moderate"], answer["major"]) == (0.1, 0.25)
        assert [h["hour"] for h in answer["hours"]] == list(range(HOURS + 1))
        for hour in answer["hours"]:
            expected = report[hour["hour"]]
            assert hour["rows"] == expected["rows"] and hour["level"] == expected["level"]
            assert hour["psi"] == pytest.approx(expected["psi"])
        assert {m["quantity"] for m in answer["worst"][:2]} == SHIFTED
        assert all(m["level"] == "major" and m["hour"] in (2, 3) for m in answer["worst"][:2])
        # The last minutes, live: every row was scored just now, so all of them, in one bucket.
        live = client.get("/api/drift", params={"hours": 1, "minutes": 60}).json()["recent"]
        assert live["rows"] == len(raw) and live["alert_rate"] == pytest.approx(rows.alert.mean())
        assert live["level"]["V14"] in ("moderate", "major") and live["level"]["V3"] == "stable"
        assert client.get("/api/drift", params={"minutes": 181}).status_code == 422
        narrow = client.get("/api/drift", params={"hours": 2, "until": 3600.0}).json()
        assert [h["hour"] for h in narrow["hours"]] == [0, 1]
        assert client.get("/api/drift", params={"version": "abcdef0123"}).status_code == 404
        assert client.get("/api/drift", params={"hours": MAX_WINDOW_HOURS + 1}).status_code == 422

    # Prometheus: the last complete hour of data (hour 3: shifted) on the API's /metrics.
    settings = api_settings(infra, database_url, model_bundle, tmp_path, drift_refresh_seconds=0.2)
    with serve(settings) as base_url, httpx.Client(base_url=base_url, timeout=60) as client:

        def samples() -> dict[str, float]:
            return {
                sample.name + str(sorted(sample.labels.items())): sample.value
                for family in text_string_to_metric_families(client.get("/metrics").text)
                for sample in family.samples
                if sample.name.startswith("fraudstream_drift")
            }

        v14 = "fraudstream_drift_psi[('quantity', 'V14')]"
        wait_until(lambda: v14 in samples(), timeout=60, what="the drift gauges")
        seen = samples()
        assert seen["fraudstream_drift_hour[]"] == HOURS - 1
        for name in ("V14", "Amount", "V3", "score"):
            psi = seen[f"fraudstream_drift_psi[('quantity', '{name}')]"]
            assert psi == pytest.approx(report[HOURS - 1]["psi"][name])
        assert seen["fraudstream_drift_major_hours_total[]"] == 1  # counted once, however often refreshed
