"""The review queue, verdicts, the feedback summary and the savings curve: the real app under uvicorn,
the real PostgreSQL (filled through the scorer's write path) and the real broker.

Every answer is checked against what was stored, computed independently (numpy, the label
contract's definition of net savings, the topic read back).
"""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import numpy as np
import orjson
import pytest

from api.routes import savings as savings_route
from core.costs import savings_at
from core.db.labels import store_labels
from core.labels import LabelSource, build_label, parse_label
from core.runtime.processes import wait_until
from core.settings import NamedToken
from tests.api_fixtures import StoredSample, api_db_fixture, api_settings, serve  # noqa: F401
from tests.streaming_fixtures import fetch, read_topic

pytestmark = pytest.mark.timeout(600)

WRITE, READ = "review-write-token-0123", "review-read-token-01234"
CAROL = "carol-review-token-012345"
REVIEWER = "X-Fraudstream-Reviewer"


@pytest.fixture(scope="module")
def open_settings(infra, api_db: StoredSample, model_bundle, tmp_path_factory):
    return api_settings(
        infra,
        api_db.database_url,
        model_bundle,
        tmp_path_factory.mktemp("review"),
        cost_per_alert=5.0,
        analyst_capacity=50,
    )


@pytest.fixture(scope="module")
def http(open_settings):
    with serve(open_settings) as base_url, httpx.Client(base_url=base_url, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def guarded(infra, api_db: StoredSample, model_bundle, tmp_path_factory, open_settings):
    settings = open_settings.model_copy(
        update={
            "api_token": WRITE,
            "api_read_token": READ,
            "api_tokens": {"carol": NamedToken(token=CAROL, access="review")},
        }
    )
    with serve(settings) as base_url, httpx.Client(base_url=base_url, timeout=60) as client:
        yield client


def alert_ids(sample: StoredSample) -> list[str]:
    return [sample.ids[i] for i in np.flatnonzero(sample.alert)]


def pages(http: httpx.Client, order: str, limit: int) -> list[dict]:
    items, cursor = [], None
    while True:
        answer = http.get(
            "/api/review/queue", params={"order": order, "limit": limit, "explain": False, "cursor": cursor}
        )
        assert answer.status_code == 200, answer.text
        items += answer.json()["items"]
        cursor = answer.json()["next_cursor"]
        if cursor is None:
            return items


def test_the_queue_lists_every_unreviewed_alert_in_order(http: httpx.Client, api_db: StoredSample) -> None:
    expected = alert_ids(api_db)
    assert len(expected) > 60  # several pages
    by_score = pages(http, "score", 25)
    assert sorted(item["id"] for item in by_score) == sorted(expected)  # each once, none missing
    scores = [(item["score"], item["id"]) for item in by_score]
    assert scores == sorted(scores, reverse=True)
    oldest = pages(http, "oldest", 40)
    assert [(i["scored_at"], i["id"]) for i in oldest] == sorted((i["scored_at"], i["id"]) for i in oldest)
    assert [i["id"] for i in pages(http, "newest", 40)] == [i["id"] for i in oldest][::-1]
    first = http.get("/api/review/queue", params={"limit": 3, "top": 4}).json()
    item = first["items"][0]
    row = api_db.ids.index(item["id"])
    assert item["amount"] == api_db.raw[row, -1] and item["score"] == api_db.score[row]
    assert item["features"]["V14"] == api_db.raw[row, 14] and item["time"] == api_db.raw[row, 0]
    assert item["model_version"] == api_db.ensemble.version == item["explained_by"]
    assert item["threshold"] == api_db.ensemble.threshold
    assert len(item["top_features"]) == 4
    bad = http.get("/api/review/queue", params={"cursor": "garbage"})
    assert bad.status_code == 400
    other_order = http.get("/api/review/queue", params={"order": "oldest", "cursor": first["next_cursor"]})
    assert other_order.status_code == 400 and "same order" in other_order.json()["detail"]


def test_a_verdict_is_recorded_once_and_leaves_the_queue_at_once(
    http: httpx.Client, api_db: StoredSample, open_settings, infra
) -> None:
    top = http.get("/api/review/queue", params={"limit": 2, "explain": False}).json()["items"]
    target, after = top[0]["id"], top[1]["id"]
    calm = api_db.ids[int(np.flatnonzero(~api_db.alert)[0])]
    assert (
        http.post(
            f"/api/alerts/{calm}/review", json={"verdict": "fraud"}, headers={REVIEWER: "alice"}
        ).status_code
        == 404
    )
    assert (
        http.post(
            "/api/alerts/nope/review", json={"verdict": "fraud"}, headers={REVIEWER: "alice"}
        ).status_code
        == 404
    )
    missing_name = http.post(f"/api/alerts/{target}/review", json={"verdict": "fraud"})
    assert missing_name.status_code == 422 and REVIEWER in missing_name.json()["detail"]
    for body in (
        {"verdict": "maybe"},
        {"verdict": "fraud", "note": "n" * 2001},
        {"verdict": "fraud", "x": 1},
    ):
        assert (
            http.post(f"/api/alerts/{target}/review", json=body, headers={REVIEWER: "alice"}).status_code
            == 422
        )
    bad_name = http.post(
        f"/api/alerts/{target}/review", json={"verdict": "fraud"}, headers={REVIEWER: "a" * 129}
    )
    assert bad_name.status_code == 422

    review_id = uuid.uuid4().hex
    body = {"verdict": "fraud", "note": "card reported stolen", "review_id": review_id}
    recorded = http.post(f"/api/alerts/{target}/review", json=body, headers={REVIEWER: "alice"})
    assert recorded.status_code == 200, recorded.text
    answer = recorded.json()
    assert (answer["who"], answer["submitted_by"], answer["label"], answer["recorded"]) == (
        "alice",
        None,
        1,
        True,
    )
    assert answer["previous"] is None
    # read your writes: the very next read does not show it
    assert (
        http.get("/api/review/queue", params={"limit": 1, "explain": False}).json()["items"][0]["id"] == after
    )
    retry = http.post(f"/api/alerts/{target}/review", json=body, headers={REVIEWER: "alice"})
    assert retry.status_code == 200 and retry.json()["recorded"] is False
    reused = http.post(
        f"/api/alerts/{target}/review", json={**body, "verdict": "not_fraud"}, headers={REVIEWER: "alice"}
    )
    assert reused.status_code == 409
    rows = asyncio.run(
        fetch(api_db.database_url, "SELECT who, note, label FROM label_events WHERE label_id = $1", review_id)
    )
    assert [tuple(r) for r in rows] == [("alice", "card reported stolen", 1)]
    # published on the labels topic, keyed by the transaction, exactly as stored
    messages = asyncio.run(read_topic(infra.bootstrap_servers, open_settings.topic_labels, 1))
    ours = [parse_label(orjson.loads(value)) for key, value, _ in messages if key == target.encode()]
    assert len(ours) == 1 and ours[0].label_id == review_id and ours[0].source is LabelSource.ANALYST
    # a correction by someone else replaces it as the known verdict, and says what it replaced
    correction = http.post(
        f"/api/alerts/{target}/review", json={"verdict": "not_fraud"}, headers={REVIEWER: "bob"}
    )
    assert (
        correction.json()["previous"]["who"] == "alice"
        and correction.json()["previous"]["verdict"] == "fraud"
    )
    known = asyncio.run(
        fetch(api_db.database_url, "SELECT label, source FROM known_labels WHERE id = $1", target)
    )
    assert [tuple(r) for r in known] == [(0, "analyst")]


def test_who_reviewed_follows_the_tokens(guarded: httpx.Client, api_db: StoredSample) -> None:
    target = guarded.get(
        "/api/review/queue",
        params={"limit": 1, "explain": False},
        headers={"Authorization": f"Bearer {READ}"},
    ).json()["items"][0]["id"]

    def review(token: str | None, name: str | None = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if name:
            headers[REVIEWER] = name
        return guarded.post(f"/api/alerts/{target}/review", json={"verdict": "fraud"}, headers=headers)

    assert review(None).status_code == 401
    assert review(READ).status_code == 403 and "review or write token" in review(READ).json()["detail"]
    assert review(CAROL, "mallory").status_code == 403  # a reviewer reviews as herself
    as_carol = review(CAROL).json()
    assert (as_carol["who"], as_carol["submitted_by"]) == ("carol", None)
    for_dave = review(WRITE, "dave").json()  # the dashboard's token, acting for its analyst
    assert (for_dave["who"], for_dave["submitted_by"]) == ("dave", "admin")
    assert review(WRITE).json()["who"] == "admin"
    # carol may not do what only writers do
    promote = guarded.post(
        f"/api/models/{api_db.ensemble.version}/promote", headers={"Authorization": f"Bearer {CAROL}"}
    )
    assert promote.status_code == 403 and "review access only" in promote.json()["detail"]


def test_the_summary_counts_reviews_backlog_precision_and_missed_frauds(
    http: httpx.Client, api_db: StoredSample
) -> None:
    alerts = alert_ids(api_db)
    calm = [api_db.ids[i] for i in np.flatnonzero(~api_db.alert)]
    now = time.time()
    verdicts = [
        build_label(
            transaction_id=alerts[10 + i], label=int(i % 3 == 0), source="analyst", who=who, decided_at=now
        )
        for i, who in enumerate(["erin"] * 6 + ["frank"] * 3)
    ]
    chargebacks = [
        build_label(transaction_id=tx, label=label, source="chargeback", who="network", decided_at=now)
        for tx, label in [(calm[0], 1), (calm[1], 1), (calm[2], 0), (alerts[40], 1)]
    ]

    async def store() -> None:
        import asyncpg

        conn = await asyncpg.connect(api_db.database_url)
        try:
            await store_labels(conn, verdicts + chargebacks)
        finally:
            await conn.close()

    asyncio.run(store())

    def expected() -> dict:
        rows = asyncio.run(
            fetch(
                api_db.database_url,
                "SELECT f.label FROM feedback f JOIN scores s ON s.run_id = '' AND s.id = f.transaction_id "
                "WHERE f.run_id = '' AND f.source = 'analyst' AND s.alert",
            )
        )
        labels = [r["label"] for r in rows]
        return {"reviewed": len(labels), "confirmed_fraud": sum(labels)}

    want = expected()
    wait_until(
        lambda: http.get("/api/feedback/summary").json()["overall"]["reviewed"] == want["reviewed"],
        timeout=30,
        what="the summary to include the stored verdicts",
    )
    summary = http.get("/api/feedback/summary", params={"hours": 3}).json()
    overall = summary["overall"]
    assert overall["confirmed_fraud"] == want["confirmed_fraud"]
    assert overall["precision"] == pytest.approx(want["confirmed_fraud"] / want["reviewed"])
    assert (overall["missed"], overall["chargeback_frauds"]) == (2, 3)
    reviewed_alerts = asyncio.run(
        fetch(
            api_db.database_url, "SELECT count(*) AS n FROM feedback WHERE run_id = '' AND source = 'analyst'"
        )
    )[0]["n"]
    assert summary["backlog"] == len(alerts) - reviewed_alerts
    assert summary["alerts"] == len(alerts)
    assert sum(h["reviewed"] for h in summary["per_hour"]) == overall["reviewed"]  # all within the hours
    assert sum(h["missed"] for h in summary["per_hour"]) == 2 and len(summary["per_hour"]) in (3, 4)
    by_who = {r["who"]: r for r in summary["reviewers"]}
    assert (by_who["erin"]["decisions"], by_who["erin"]["fraud"], by_who["erin"]["last_24h"]) == (6, 2, 6)
    assert (by_who["frank"]["decisions"], by_who["frank"]["not_fraud"]) == (3, 2)


def test_the_savings_curve_equals_the_definition_on_the_stored_rows(
    http: httpx.Client, api_db: StoredSample
) -> None:
    curve = http.get("/api/model/savings", params={"bins": 200}).json()
    known = asyncio.run(fetch(api_db.database_url, "SELECT id, label FROM known_labels WHERE run_id = ''"))
    label_of = {r["id"]: r["label"] for r in known}
    rows = [i for i, tx in enumerate(api_db.ids) if tx in label_of]
    labels = np.array([label_of[api_db.ids[i]] for i in rows])
    scores, amounts = api_db.score[rows], api_db.raw[rows, -1]
    assert (curve["rows"], curve["frauds"], curve["cost_per_alert"]) == (len(rows), int(labels.sum()), 5.0)
    assert curve["fraud_amount"] == pytest.approx(float(amounts[labels == 1].sum()))
    for i, threshold in enumerate(curve["thresholds"]):
        s = savings_at(labels, scores, amounts, threshold, 5.0)
        assert (curve["alerts"][i], curve["frauds_caught"][i]) == (s.alerts, s.frauds_caught)
        assert curve["net_savings"][i] == pytest.approx(s.net_savings)
        assert curve["amount_missed"][i] == pytest.approx(s.amount_missed, abs=1e-9 * curve["fraud_amount"])
    current = curve["current"]
    exact = savings_at(labels, scores, amounts, api_db.ensemble.threshold, 5.0)
    assert current["threshold"] == api_db.ensemble.threshold == curve["live_threshold"]
    assert (current["alerts"], current["net_savings"]) == (exact.alerts, pytest.approx(exact.net_savings))
    days = curve["days"]
    assert days == pytest.approx((api_db.raw[rows, 0].max() - api_db.raw[rows, 0].min()) / 86_400)
    # the configured capacity (50 a day) fits no threshold over the sample's short data time
    assert curve["capacity_per_day"] == 50 and curve["best"] is None
    assert all(a > 50 * days for a in curve["alerts"])
    # a capacity that binds halfway down the curve: the best is the largest saving within it
    capacity = int(np.ceil(curve["alerts"][len(curve["alerts"]) // 2] / days))
    bound = http.get("/api/model/savings", params={"bins": 200, "capacity": capacity}).json()
    within = [
        i
        for i, a in enumerate(bound["alerts"])
        if a <= capacity * days + 1e-9 and bound["net_savings"][i] > 0
    ]
    assert within and len(within) < len(bound["alerts"])
    best = max(within, key=lambda i: bound["net_savings"][i])
    assert bound["best"]["threshold"] == bound["thresholds"][best]
    assert bound["best"]["net_savings"] == pytest.approx(max(bound["net_savings"][i] for i in within))
    assert http.get("/api/model/savings", params={"run_id": "bt-none"}).status_code == 404
    # the rollup's score bins are 0.001 wide: equal-width bins must share their edges
    refused = http.get("/api/model/savings", params={"bins": 300})
    assert refused.status_code == 422 and "must divide 1000" in refused.text


def test_the_savings_curve_needs_a_cost(infra, api_db: StoredSample, model_bundle, tmp_path) -> None:
    settings = api_settings(infra, api_db.database_url, model_bundle, tmp_path)
    with serve(settings) as base_url, httpx.Client(base_url=base_url, timeout=60) as client:
        refused = client.get("/api/model/savings")
        assert refused.status_code == 409 and "FRAUDSTREAM_COST_PER_ALERT" in refused.json()["detail"]
        assert client.get("/api/model/savings", params={"cost_per_alert": 2}).json()["cost_per_alert"] == 2.0


def test_a_threshold_inside_a_dense_score_bin_is_never_reported_as_exact(
    http: httpx.Client, api_db: StoredSample, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past `SPLIT_ROWS` the champion's threshold is no candidate of its own: its point is the next
    candidate above, at that candidate's threshold, and every point still equals the definition."""
    monkeypatch.setattr(savings_route, "SPLIT_ROWS", -1)  # no bin is split, not even an empty one
    threshold = api_db.ensemble.threshold
    assert savings_route._fixed_bin_of(threshold) is not None  # inside a 0.001-wide bin
    curve = http.get("/api/model/savings", params={"bins": 100, "cost_per_alert": 7}).json()
    known = asyncio.run(fetch(api_db.database_url, "SELECT id, label FROM known_labels WHERE run_id = ''"))
    label_of = {r["id"]: r["label"] for r in known}
    rows = [i for i, tx in enumerate(api_db.ids) if tx in label_of]
    labels = np.array([label_of[api_db.ids[i]] for i in rows])
    scores, amounts = api_db.score[rows], api_db.raw[rows, -1]
    assert threshold not in curve["thresholds"]
    for i, candidate in enumerate(curve["thresholds"]):
        assert curve["alerts"][i] == savings_at(labels, scores, amounts, candidate, 7.0).alerts
    current = curve["current"]
    assert current["threshold"] == min(x for x in curve["thresholds"] if x >= threshold)
    exact = savings_at(labels, scores, amounts, current["threshold"], 7.0)
    assert (current["alerts"], current["net_savings"]) == (exact.alerts, pytest.approx(exact.net_savings))
    assert curve["current_threshold"] == threshold
