"""Champion and challenger, end to end on the real broker and PostgreSQL, with a scorer worker
and the API as processes:

a shadow set through the API -> a worker killed right after a committed write (before its
ack) and a second one finishing the window: every live row has exactly one shadow score,
and every alert on the topic is the champion's -> the shadow promoted through the API ->
the worker and the API switch within seconds, the shadow slot is empty (the registry's
rule), and everything made after the switch names the new champion -> the old champion
made the shadow -> `/api/models/compare` answers on the rows the two scored together,
either way round.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import orjson
import pytest

from core.bundle_store import BundleStore
from core.runtime.processes import wait_until
from core.settings import Settings
from scorer.faults import FAULT_EXIT_CODE
from tests.bundles import register
from tests.streaming_fixtures import fetch, read_topic
from tests.test_model_switch import Api, replay_window

pytestmark = [pytest.mark.timeout(900), pytest.mark.slow]

#: Two windows of the sample's test stretch (data the bundles were neither trained nor validated on).
BEFORE, AFTER = (145_200.0, 159_000.0), (159_000.0, 172_800.0)


def window_rows(database_url: str, window: tuple[float, float]) -> list:
    return asyncio.run(
        fetch(
            database_url,
            "SELECT t.id, s.model_version, s.alert, x.model_version AS shadow_version, x.would_alert "
            "FROM transactions t JOIN scores s USING (run_id, id) LEFT JOIN shadow_scores x USING (run_id, id) "
            "WHERE t.run_id = '' AND t.time >= $1 AND t.time < $2",
            *window,
        )
    )


def alerts_on_topic(settings: Settings) -> dict[str, dict]:
    messages = asyncio.run(
        read_topic(settings.kafka_bootstrap_servers, settings.topic_alerts, 10**6, timeout=5)
    )
    return {key.decode(): orjson.loads(value) for key, value, _ in messages}


def test_shadow_scored_exactly_once_never_alerting_then_promoted_everywhere_and_compared(
    settings: Settings, workers, model_bundle: Path, challenger_bundle: Path, tmp_path: Path
) -> None:
    store = BundleStore(settings.resolved_model_store)
    champion = asyncio.run(register(settings.database_url, model_bundle, store, activate=True))
    challenger = asyncio.run(register(settings.database_url, challenger_bundle, store, activate=False))
    api = Api(settings, model_bundle, tmp_path)
    api.start()
    try:
        with httpx.Client(base_url=api.url, timeout=60) as client:
            chosen = client.put("/api/models/shadow", json={"version": challenger})
            assert chosen.status_code == 200 and chosen.json()["shadow"] == challenger, chosen.text

            # A backlog, then a worker that dies right after its third committed write.
            sent = replay_window(settings, BEFORE)
            doomed = workers(scorer_batch_size=500, scorer_fault="exit-after-store:3")
            assert doomed.wait_exit(timeout=180) == FAULT_EXIT_CODE
            assert 0 < len(window_rows(settings.database_url, BEFORE)) < sent
            survivor = workers(scorer_batch_size=500)
            wait_until(
                lambda: len(window_rows(settings.database_url, BEFORE)) >= sent,
                timeout=180,
                what=f"{sent} rows stored",
            )
            rows = window_rows(settings.database_url, BEFORE)
            assert len(rows) == sent
            assert {(r["model_version"], r["shadow_version"]) for r in rows} == {(champion, challenger)}
            shadow_ids = asyncio.run(fetch(settings.database_url, "SELECT id FROM shadow_scores"))
            assert len(shadow_ids) == sent  # one each, none for a redelivered row
            alerting = {r["id"] for r in rows if r["alert"]}
            alerts = alerts_on_topic(settings)
            assert set(alerts) == alerting and alerting
            assert {a["model_version"] for a in alerts.values()} == {champion}
            assert survivor.metric("fraudstream_shadow_model") == 1

            # Promote the shadow: both processes switch, the shadow slot is emptied.
            reloads = survivor.metric("fraudstream_model_reloads_total")
            promoted = client.post(f"/api/models/{challenger[:10]}/promote")
            assert promoted.status_code == 200, promoted.text
            assert (promoted.json()["champion"], promoted.json()["shadow"]) == (challenger, None)
            wait_until(
                lambda: api.serving() == challenger, timeout=60, what="the API serving the new champion"
            )
            wait_until(
                lambda: (
                    survivor.metric("fraudstream_model_reloads_total") > reloads
                    and survivor.metric("fraudstream_shadow_model") == 0
                ),
                timeout=60,
                what="the worker switching champion and leaving the shadow",
            )
            assert client.get("/api/models").json()["shadow"] is None

            # The old champion as the shadow; the second window names the new champion.
            assert client.put("/api/models/shadow", json={"version": champion}).status_code == 200
            wait_until(
                lambda: survivor.metric("fraudstream_shadow_model") == 1,
                timeout=60,
                what="the worker following the new shadow",
            )
            later = replay_window(settings, AFTER)
            wait_until(
                lambda: len(window_rows(settings.database_url, AFTER)) >= later,
                timeout=180,
                what=f"{later} rows stored",
            )
            rows = window_rows(settings.database_url, AFTER)
            assert {(r["model_version"], r["shadow_version"]) for r in rows} == {(challenger, champion)}
            alerts = alerts_on_topic(settings)
            alerting = {r["id"] for r in rows if r["alert"]}
            assert alerting and {alerts[i]["model_version"] for i in alerting} == {challenger}
            assert set(alerts) == alerting | {
                r["id"] for r in window_rows(settings.database_url, BEFORE) if r["alert"]
            }

            # Compared on both windows: a (the champion now) scored the first as the shadow.
            body = client.get("/api/models/compare", params={"hours": 96, "resamples": 200}).json()
            assert (body["a"]["version"], body["b"]["version"]) == (challenger, champion)
            assert body["rows_in_window"] == sent + later
            assert body["rows"] + body["left_out_in_sample"] == sent + later and body["rows"] > 0
            assert body["frauds"] > 0 and body["a"]["auprc"] is not None
    finally:
        api.stop()
