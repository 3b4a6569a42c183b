"""The analytics API against a real PostgreSQL filled through the scorer's write path.

A real uvicorn serves the real app (real model bundle, real broker); every answer is
checked against what was stored, computed independently with numpy/sklearn.
"""

from __future__ import annotations

import asyncio
import math
import uuid
from datetime import datetime

import asyncpg
import httpx
import numpy as np
import pytest
from aiokafka import AIOKafkaConsumer
from sklearn.metrics import average_precision_score, roc_auc_score

from api.curves import metrics_from_bins
from core.bins import QUANTITY_BINS, SCORE_BINS
from core.events import decode_batch
from core.features import EVENT_FEATURES, PCA_COLUMNS
from tests.api_fixtures import StoredSample, api_db_fixture, api_settings, serve  # noqa: F401
from tests.test_scatter_sample import key_of

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def server(infra, api_db: StoredSample, model_bundle, tmp_path_factory) -> str:
    settings = api_settings(infra, api_db.database_url, model_bundle, tmp_path_factory.mktemp("api"))
    with serve(settings) as base_url:
        yield base_url


@pytest.fixture(scope="module")
def http(server: str):
    with httpx.Client(base_url=server, timeout=30) as client:
        yield client


def body_of(sample: StoredSample, i: int, **extra) -> dict:
    body = dict(zip(EVENT_FEATURES, sample.raw[i].tolist(), strict=True))
    body.update(extra)
    return body


def all_pages(http: httpx.Client, path: str, **params) -> list[dict]:
    items, cursor, seen_cursors = [], None, set()
    while True:
        query = dict(params, **({"cursor": cursor} if cursor else {}))
        page = http.get(path, params=query)
        assert page.status_code == 200, page.text
        data = page.json()
        items += data["items"]
        cursor = data["next_cursor"]
        if cursor is None:
            return items
        assert cursor not in seen_cursors
        seen_cursors.add(cursor)


# --------------------------------------------------------------------------- meta


def test_heartbeat_health_and_openapi(http: httpx.Client, api_db: StoredSample) -> None:
    beat = http.get("/").json()
    assert beat["name"] == "fraudstream-api" and beat["model_version"] == api_db.ensemble.version
    health = http.get("/health")
    assert health.status_code == 200, health.text
    body = health.json()
    assert {key: body[key] for key in ("database", "model", "champion", "broker", "not_ready")} == {
        "database": "ok",
        "model": api_db.ensemble.version,
        "champion": api_db.ensemble.version,
        "broker": "ok",
        "not_ready": [],
    }
    # No scorer worker runs in this module: serving, but degraded (tests/test_api_health.py has every state).
    assert body["status"] == "degraded" and body["scorer"] == {"live": 0, "workers": []}
    assert body["reasons"] == ["no live scorer worker (no heartbeat in the last 15 s)"]
    spec = http.get("/openapi.json").json()
    for path in ("/api/stats", "/api/transactions", "/api/predict", "/api/distributions/feature/{name}"):
        assert path in spec["paths"]
    assert http.get("/docs").status_code == 200


# --------------------------------------------------------------------------- stats


def test_stats_match_the_stored_rows(http: httpx.Client, api_db: StoredSample) -> None:
    stats = http.get("/api/stats", params={"minutes": 60}).json()
    n = len(api_db.ids)
    assert stats["volume"] == n and stats["labelled"] == n
    assert stats["frauds"] == int(api_db.labels.sum())
    assert stats["alerts"] == int(api_db.alert.sum())
    assert stats["true_alerts"] == int((api_db.alert & (api_db.labels == 1)).sum())
    assert stats["alert_rate"] == pytest.approx(api_db.alert.mean())
    assert stats["window_scored"] == n
    assert stats["throughput_per_s"] > 0
    latency = stats["latency_ms"]
    assert latency["count"] == n and 0 <= latency["p50"] <= latency["p95"] <= latency["p99"] <= latency["max"]


def test_timeseries_buckets_cover_the_window(http: httpx.Client, api_db: StoredSample) -> None:
    series = http.get("/api/stats/timeseries", params={"minutes": 60, "bucket_seconds": 60}).json()
    points = series["points"]
    assert len(points) in (60, 61)
    starts = [datetime.fromisoformat(p["t"]) for p in points]
    assert all((b - a).total_seconds() == 60 for a, b in zip(starts, starts[1:], strict=False))
    assert sum(p["scored"] for p in points) == len(api_db.ids)
    assert sum(p["alerts"] for p in points) == int(api_db.alert.sum())
    assert sum(p["frauds"] for p in points) == int(api_db.labels.sum())


# --------------------------------------------------------------------------- lists


def test_pagination_has_no_duplicates_and_no_gaps(http: httpx.Client, api_db: StoredSample) -> None:
    items = all_pages(http, "/api/transactions", limit=1000, features="false")
    ids = [item["id"] for item in items]
    assert len(ids) == len(set(ids)) == len(api_db.ids)
    assert set(ids) == set(api_db.ids)
    keys = [(datetime.fromisoformat(item["scored_at"]), item["id"]) for item in items]
    assert keys == sorted(keys, reverse=True)
    # the same walk in small pages gives the same order
    small = all_pages(http, "/api/transactions", limit=997, features="false", label=1)
    assert [i["id"] for i in small] == [i["id"] for i in items if i["label"] == 1]


def test_transaction_rows_carry_features_and_scores(http: httpx.Client, api_db: StoredSample) -> None:
    item = http.get("/api/transactions", params={"limit": 1}).json()["items"][0]
    i = api_db.ids.index(item["id"])
    assert item["amount"] == api_db.raw[i, -1] and item["time"] == api_db.raw[i, 0]
    assert [item["features"][name] for name in PCA_COLUMNS] == api_db.raw[i, 1:-1].tolist()
    assert item["score"] == pytest.approx(api_db.score[i])
    assert item["label"] == api_db.labels[i] and item["alert"] == bool(api_db.alert[i])


def test_filters(http: httpx.Client, api_db: StoredSample) -> None:
    frauds = all_pages(http, "/api/transactions", label=1, limit=1000, features="false")
    assert len(frauds) == int(api_db.labels.sum()) and all(i["label"] == 1 for i in frauds)
    quiet = all_pages(http, "/api/transactions", alert="false", score_min=0.2, limit=1000, features="false")
    expected = int(((~api_db.alert) & (api_db.score >= 0.2)).sum())
    assert len(quiet) == expected and all(not i["alert"] and i["score"] >= 0.2 for i in quiet)
    window = all_pages(
        http, "/api/transactions", time_from=1000, time_to=5000, score_max=0.5, limit=1000, features="false"
    )
    time, score = api_db.raw[:, 0], api_db.score
    assert len(window) == int(((time >= 1000) & (time <= 5000) & (score <= 0.5)).sum())
    # ranges across a data day's edge (86,400 s) and open on one side: the days they read follow
    ids = np.array(api_db.ids)
    for bounds, inside in (
        ({"time_from": 80_000.5, "time_to": 90_000}, (time >= 80_000.5) & (time <= 90_000)),
        ({"time_from": 86_400}, time >= 86_400),
        ({"time_to": 86_399.5}, time <= 86_399.5),
    ):
        got = all_pages(http, "/api/transactions", **bounds, limit=1000, features="false")
        assert sorted(i["id"] for i in got) == sorted(ids[inside].tolist()), bounds


def test_anomalies_and_alerts(http: httpx.Client, api_db: StoredSample) -> None:
    anomalies = all_pages(http, "/api/anomalies", limit=100)
    assert len(anomalies) == int(api_db.labels.sum()) and {a["label"] for a in anomalies} == {1}
    alerts = all_pages(http, "/api/alerts", limit=1000, features="false")
    assert len(alerts) == int(api_db.alert.sum()) and all(a["alert"] for a in alerts)
    # small pages (keys from `alert_keys`, then each page's rows): the same alerts in the same
    # order, newest first, each with its stored values
    paged = all_pages(http, "/api/alerts", limit=7)
    assert [a["id"] for a in paged] == [a["id"] for a in alerts]
    order = [(a["scored_at"], a["id"]) for a in paged]
    assert order == sorted(order, reverse=True)
    position = {id_: i for i, id_ in enumerate(api_db.ids)}
    for item in paged:
        i = position[item["id"]]
        assert (item["time"], item["amount"], item["label"]) == (
            api_db.raw[i, 0],
            api_db.raw[i, -1],
            api_db.labels[i],
        )
        assert [item["features"][name] for name in PCA_COLUMNS] == api_db.raw[i, 1:-1].tolist()
        assert item["score"] == pytest.approx(api_db.score[i])
    explained = http.get("/api/alerts", params={"limit": 5, "explain": "true", "top": 3}).json()["items"]
    assert len(explained) == 5
    for item in explained:
        tops = item["top_features"]
        assert len(tops) == 3
        assert [abs(t["contribution"]) for t in tops] == sorted(
            (abs(t["contribution"]) for t in tops), reverse=True
        )
    assert http.get("/api/alerts", params={"limit": 101, "explain": "true"}).status_code == 422


# --------------------------------------------------------------------------- distributions and scatter


def _binned_like_the_answer(values: np.ndarray, edges: list[float]) -> np.ndarray:
    """Counts per answered bin [e_j, e_j+1); the outer bins open-ended, as the fixed bins are."""
    return np.bincount(
        np.searchsorted(np.asarray(edges[1:-1]), values, side="right"), minlength=len(edges) - 1
    )


def test_amount_distribution_matches_numpy(http: httpx.Client, api_db: StoredSample) -> None:
    dist = http.get("/api/distributions/amount", params={"bins": 30}).json()
    assert dist["scale"] == "log" and 15 < len(dist["edges"]) <= 31 and dist["bins"] == len(dist["edges"]) - 1
    assert set(dist["edges"][1:-1]) <= set(QUANTITY_BINS["amount"].edges)  # fixed edges, merged
    series = {s["name"]: s for s in dist["series"]}
    amount = api_db.raw[:, -1]
    for name, mask in (
        ("normal", api_db.labels == 0),
        ("fraud", api_db.labels == 1),
        ("alert", api_db.alert),
    ):
        assert series[name]["counts"] == _binned_like_the_answer(amount[mask], dist["edges"]).tolist()
        assert series[name]["mean"] == pytest.approx(amount[mask].mean())
    assert series["unlabelled"]["total"] == 0 and dist["rows"] == len(api_db.ids)


@pytest.mark.parametrize("name", ["v14", "V3", "AMOUNT", "recon_error", "Score", "time"])
def test_feature_distributions(http: httpx.Client, api_db: StoredSample, name: str) -> None:
    response = http.get(f"/api/distributions/feature/{name}", params={"bins": 20, "scale": "auto"})
    assert response.status_code == 200, response.text
    dist = response.json()
    assert dist["feature"].lower() == name.lower()
    assert sum(s["total"] for s in dist["series"] if s["name"] != "alert") == len(api_db.ids)
    assert all(len(s["counts"]) == dist["bins"] <= 20 for s in dist["series"])
    columns = {f.lower(): api_db.raw[:, j] for j, f in enumerate(EVENT_FEATURES)}
    columns |= {"recon_error": api_db.recon_error, "score": api_db.score}
    column = columns[name.lower()]
    fraud = {s["name"]: s for s in dist["series"]}["fraud"]
    assert fraud["counts"] == _binned_like_the_answer(column[api_db.labels == 1], dist["edges"]).tolist()


def test_v14_histogram_is_exact(http: httpx.Client, api_db: StoredSample) -> None:
    dist = http.get("/api/distributions/feature/V14", params={"bins": 200}).json()
    v14 = api_db.raw[:, 14]
    edges = dist["edges"]
    assert edges[1] <= v14.min() or edges[0] == -18.25  # the occupied run of fixed bins
    assert dist["bins"] <= 200 and set(edges[1:-1]) <= set(QUANTITY_BINS["v14"].edges)
    for name, mask in (("fraud", api_db.labels == 1), ("normal", api_db.labels == 0)):
        got = {s["name"]: s for s in dist["series"]}[name]
        assert got["counts"] == _binned_like_the_answer(v14[mask], edges).tolist()
        assert got["mean"] == pytest.approx(v14[mask].mean())


def test_unknown_feature_names(http: httpx.Client) -> None:
    missing = http.get("/api/distributions/feature/V29")
    assert missing.status_code == 404
    assert "V14" in missing.json()["valid"] and "recon_error" in missing.json()["valid"]
    assert http.get("/api/distributions/feature/V14", params={"scale": "log"}).status_code == 422
    bad_x = http.get("/api/scatter", params={"x": "V1; DROP TABLE scores"})
    assert bad_x.status_code == 422 and "valid" in bad_x.json()


def test_scatter_is_a_balanced_sample(http: httpx.Client, api_db: StoredSample) -> None:
    """Half frauds, half normal rows: in each class the rows with the smallest keys (md5 of the
    run and id, as `tests.test_scatter_sample` recomputes it), with their stored values."""
    data = http.get("/api/scatter", params={"x": "v14", "y": "Amount", "n": 200}).json()
    assert data["x"] == "V14" and data["y"] == "Amount"
    assert data["frauds"] == 100 and data["normals"] == 100
    index = {id_: i for i, id_ in enumerate(api_db.ids)}
    for point in data["points"]:
        i = index[point["id"]]
        assert point["x"] == api_db.raw[i, 14] and point["y"] == api_db.raw[i, -1]
        assert point["label"] == api_db.labels[i]
        assert (point["score"], point["alert"]) == (api_db.score[i], api_db.alert[i])
    by_key = sorted(range(len(api_db.ids)), key=lambda i: (key_of("", api_db.ids[i]), api_db.ids[i]))
    frauds = [api_db.ids[i] for i in by_key if api_db.labels[i] == 1][:100]
    normals = [api_db.ids[i] for i in by_key if api_db.labels[i] != 1][:100]
    assert [p["id"] for p in data["points"]] == frauds + normals
    wider = http.get("/api/scatter", params={"x": "score", "y": "score", "n": 400}).json()
    assert [p["id"] for p in wider["points"][:100]] == frauds  # more points add to the same ones
    assert all(p["x"] == p["y"] == p["score"] for p in wider["points"])


# --------------------------------------------------------------------------- model


def test_model_performance_matches_sklearn_out_of_sample(http: httpx.Client, api_db: StoredSample) -> None:
    """Live metrics leave out every data hour that overlaps the version's in-sample stretch."""
    perf = http.get("/api/model/performance").json()
    assert perf["active_version"] == api_db.ensemble.version
    (version,) = [v for v in perf["versions"] if v["model_version"] == api_db.ensemble.version]
    in_sample = api_db.ensemble.manifest["training"]["data"]["in_sample"]
    assert version["in_sample"] == in_sample
    hour = np.floor(api_db.raw[:, 0] / 3600)
    inside = (hour >= math.floor(in_sample["time_from"] / 3600)) & (
        hour <= math.floor(in_sample["time_to"] / 3600)
    )
    assert 0 < inside.sum() < len(inside)  # the fixture's bundle was trained on part of these rows
    assert version["rows"] == len(inside) and version["in_sample_rows"] == int(inside.sum())
    y, alert, score = api_db.labels[~inside], api_db.alert[~inside], api_db.score[~inside]
    tp = int((alert & (y == 1)).sum())
    fp = int((alert & (y == 0)).sum())
    fn = int((~alert & (y == 1)).sum())
    assert version["confusion"] == {"tp": tp, "fp": fp, "tn": len(y) - tp - fp - fn, "fn": fn}
    assert version["precision"] == pytest.approx(tp / (tp + fp))
    assert version["recall"] == pytest.approx(tp / (tp + fn))
    assert version["auprc"] == pytest.approx(average_precision_score(y, score), abs=0.01)
    assert version["roc_auc"] == pytest.approx(roc_auc_score(y, score), abs=0.005)
    assert version["threshold"] == api_db.ensemble.threshold
    assert version["roc"]["x"][-1] == 1.0 and version["roc"]["y"][-1] == 1.0
    names = [f["feature"] for f in perf["feature_importance"]]
    assert set(names) <= set(api_db.ensemble.feature_names) and names
    assert perf["offline_evaluation"]["test"] == api_db.ensemble.manifest["evaluation"]["test"]
    # merged bins: the same counts, thresholds at the merged bins' lower edges
    coarse = http.get("/api/model/performance", params={"bins": 30}).json()
    (merged,) = [v for v in coarse["versions"] if v["model_version"] == api_db.ensemble.version]
    assert merged["confusion"] == version["confusion"] and coarse["score_bins"] == 30
    firsts = np.searchsorted(np.arange(1080) * 30 // 1080, np.arange(30))
    assert set(merged["roc"]["thresholds"]) <= {0.0, *(SCORE_BINS.edges[b - 1] for b in firsts[1:])}


def test_binned_metrics_agree_with_sklearn() -> None:
    rng = np.random.default_rng(3)
    y = rng.random(20_000) < 0.02
    score = np.clip(rng.normal(0.3 + 0.4 * y, 0.15), 0, 1)
    bins = np.minimum((score * 1000).astype(int), 999)
    m = metrics_from_bins(np.bincount(bins[y], minlength=1000), np.bincount(bins[~y], minlength=1000))
    assert m.auprc == pytest.approx(average_precision_score(y, score), abs=0.005)
    assert m.roc_auc == pytest.approx(roc_auc_score(y, score), abs=0.001)
    empty = metrics_from_bins([0] * 10, [3] * 10)
    assert empty.auprc is None and empty.roc_auc is None


def test_models_list_marks_the_loaded_bundle_active(http: httpx.Client, api_db: StoredSample) -> None:
    data = http.get("/api/models").json()
    assert data["active"] == data["loaded"] == api_db.ensemble.version
    (row,) = data["versions"]
    assert row["active"] and row["loaded"] and row["threshold"] == api_db.ensemble.threshold
    assert "curves" not in row["evaluation"] and "test" in row["evaluation"]


# --------------------------------------------------------------------------- backtests


def test_backtests_read_what_is_recorded(http: httpx.Client, api_db: StoredSample) -> None:
    assert http.get("/api/backtests/nope").status_code == 404

    async def record() -> None:
        conn = await asyncpg.connect(api_db.database_url)
        try:
            await conn.execute(
                "INSERT INTO backtest_runs (id, model_version, bundle_path, threshold, time_from, time_to,"
                " status, metrics) VALUES ('bt-1', $1, '/b', 0.5, 0, 1000, 'done', '{\"auprc\": 0.5}')",
                api_db.ensemble.version,
            )
        finally:
            await conn.close()

    asyncio.run(record())
    runs = http.get("/api/backtests").json()["runs"]
    assert [r["id"] for r in runs] == ["bt-1"] and runs[0]["metrics"] == {"auprc": 0.5}
    one = http.get("/api/backtests/bt-1").json()
    assert one["status"] == "done" and one["scored"] == 0


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/api/transactions", {"limit": 0}),
        ("/api/transactions", {"limit": 1001}),
        ("/api/transactions", {"score_min": "nan"}),
        ("/api/transactions", {"time_from": "inf"}),
        ("/api/transactions", {"label": 2}),
        ("/api/transactions", {"score_min": 0.9, "score_max": 0.1}),
        ("/api/transactions", {"run_id": "x" * 65}),
        ("/api/stats", {"minutes": 0}),
        ("/api/stats/timeseries", {"minutes": 1440, "bucket_seconds": 1}),
        ("/api/distributions/amount", {"bins": 0}),
        ("/api/scatter", {"n": 100000}),
        ("/api/model/performance", {"bins": 5}),
    ],
)
def test_bad_parameters_get_422(http: httpx.Client, path: str, params: dict) -> None:
    response = http.get(path, params=params)
    assert response.status_code == 422, response.text
    assert response.json()["detail"]


@pytest.mark.parametrize("cursor", ["garbage", "W10", "WyJ4IiwgMV0", "!!!"])
def test_bad_cursor_gets_400(http: httpx.Client, cursor: str) -> None:
    response = http.get("/api/transactions", params={"cursor": cursor})
    assert response.status_code == 400 and "cursor" in response.json()["detail"]


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b'{"time": NaN}',
        b"[]",
        b'{"time": 1, "amount": 1}',
        b'{"time": 1, "amount": 1e999}',
        b'{"time": -1, "amount": 1}',
    ],
)
def test_malformed_bodies_get_422(http: httpx.Client, api_db: StoredSample, content: bytes) -> None:
    for path in ("/api/predict", "/api/explain", "/api/transactions"):
        response = http.post(path, content=content, headers={"content-type": "application/json"})
        assert response.status_code == 422, (path, response.text)
        assert "message" in response.json()


def test_values_the_model_cannot_take_and_nul_text_get_422(http: httpx.Client, api_db: StoredSample) -> None:
    huge = http.post("/api/predict", json=body_of(api_db, 0, V5=1e300))
    assert huge.status_code == 422 and "V5" in huge.json()["detail"]
    nul = http.post("/api/explain", json=body_of(api_db, 0, id="a\x00b"))
    assert nul.status_code == 422 and "NUL" in nul.json()["detail"]
    assert http.get("/api/stats", params={"run_id": "a\x00b"}).status_code == 422
    assert http.get("/api/backtests/a%00b").status_code == 422


def test_non_numeric_and_extra_fields_are_named(http: httpx.Client, api_db: StoredSample) -> None:
    body = body_of(api_db, 0, V3="1.5", color="red")
    response = http.post("/api/predict", json=body)
    assert response.status_code == 422
    message = response.json()["message"]
    assert "V3" in message and "color" in message


# --------------------------------------------------------------------------- predict / explain / publish


def test_predict_scores_like_the_scorer_and_stores(http: httpx.Client, api_db: StoredSample) -> None:
    run_id = f"predict-{uuid.uuid4().hex[:8]}"
    i = int(np.argmax(api_db.score))
    first = http.post("/api/predict", json=body_of(api_db, i, run_id=run_id, id="tx-1", label=1))
    assert first.status_code == 200, first.text
    result = first.json()
    assert result["id"] == "tx-1" and result["run_id"] == run_id and result["stored"] is True
    assert result["score"] == pytest.approx(api_db.score[i], rel=1e-6)
    assert result["recon_error"] == pytest.approx(api_db.recon_error[i], rel=1e-6)
    assert result["alert"] == bool(api_db.alert[i])
    assert result["threshold"] == api_db.ensemble.threshold
    again = http.post("/api/predict", json=body_of(api_db, i, run_id=run_id, id="tx-1")).json()
    assert again["stored"] is False
    page = http.get("/api/transactions", params={"run_id": run_id}).json()
    assert [item["id"] for item in page["items"]] == ["tx-1"]
    assert page["items"][0]["label"] == 1 and page["items"][0]["latency_ms"] >= 0
    generated = http.post("/api/predict", json=body_of(api_db, 1, run_id=run_id)).json()
    assert len(generated["id"]) == 32 and generated["stored"]
    stats = http.get("/api/stats", params={"run_id": run_id}).json()
    assert stats["volume"] == 2 and stats["labelled"] == 1


def test_concurrent_predictions_are_each_stored_once(http: httpx.Client, api_db: StoredSample) -> None:
    run_id = f"burst-{uuid.uuid4().hex[:8]}"

    async def burst() -> list[dict]:
        async with httpx.AsyncClient(base_url=str(http.base_url), timeout=30) as client:
            bodies = [body_of(api_db, i, run_id=run_id, id=f"id-{i % 40}") for i in range(60)]
            responses = await asyncio.gather(*(client.post("/api/predict", json=b) for b in bodies))
        return [r.json() for r in responses]

    results = asyncio.run(burst())
    assert sum(r["stored"] for r in results) == 40
    stats = http.get("/api/stats", params={"run_id": run_id}).json()
    assert stats["volume"] == 40


def test_explain_contributions_add_up(http: httpx.Client, api_db: StoredSample) -> None:
    i = int(np.argmax(api_db.score))
    response = http.post("/api/explain", json=body_of(api_db, i))
    assert response.status_code == 200, response.text
    data = response.json()
    contributions = data["contributions"]
    assert {c["feature"] for c in contributions} == set(api_db.ensemble.feature_names)
    sizes = [abs(c["contribution"]) for c in contributions]
    assert sizes == sorted(sizes, reverse=True)
    margin = data["base_value"] + sum(c["contribution"] for c in contributions)
    assert 1 / (1 + math.exp(-margin)) == pytest.approx(data["score"], abs=1e-4)
    assert data["score"] == pytest.approx(api_db.score[i], abs=1e-4)
    assert data["inputs"]["amount"] == api_db.raw[i, -1]


def test_publish_puts_the_event_on_the_topic(http: httpx.Client, api_db: StoredSample, infra) -> None:
    response = http.post("/api/transactions", json=body_of(api_db, 5, id="pub-1", label=0))
    assert response.status_code == 202, response.text
    topic = response.json()["topic"]

    async def read_one():
        consumer = AIOKafkaConsumer(
            topic, bootstrap_servers=infra.bootstrap_servers, auto_offset_reset="earliest"
        )
        await consumer.start()
        try:
            batches = await consumer.getmany(timeout_ms=10_000)
            return [m for messages in batches.values() for m in messages]
        finally:
            await consumer.stop()

    messages = asyncio.run(read_one())
    assert [m.key for m in messages] == [b"pub-1"]
    batch, dead = decode_batch([m.value for m in messages])
    assert not dead and batch.ids == ["pub-1"] and batch.labels == [0]
    assert batch.features[0].tolist() == api_db.raw[5].tolist()


def test_metrics_count_requests_and_predictions(http: httpx.Client) -> None:
    # Its own requests, so the test holds when it runs alone.
    assert http.get("/api/stats").status_code == 200
    http.get("/api/backtests/no-such-run")
    text = http.get("/metrics").text
    assert 'fraudstream_api_requests_total{method="GET",route="/api/stats",status="200"}' in text
    assert "fraudstream_api_predictions_total" in text
    assert 'route="/api/backtests/{run_id}"' in text


def cache_answers(http: httpx.Client) -> dict[str, float]:
    return {
        line.split('"')[1]: float(line.rsplit(" ", 1)[1])
        for line in http.get("/metrics").text.splitlines()
        if line.startswith("fraudstream_api_cache_answers_total{")
    }


def test_metrics_count_cache_answers(http: httpx.Client) -> None:
    before = cache_answers(http)
    assert set(before) == {"fresh", "stale", "computed"}
    for _ in range(2):  # a question nobody asked before: the first answer is computed
        assert http.get("/api/distributions/amount", params={"bins": 7}).status_code == 200
    after = cache_answers(http)
    assert sum(after.values()) - sum(before.values()) == 2
    assert after["computed"] - before["computed"] >= 1


def test_live_predict_shows_up_in_the_live_view(http: httpx.Client, api_db: StoredSample) -> None:
    before = http.get("/api/stats").json()["volume"]
    made = http.post("/api/predict", json=body_of(api_db, 7)).json()
    assert made["run_id"] == ""
    assert http.get("/api/stats").json()["volume"] == before + 1
    assert http.get("/api/transactions", params={"limit": 1}).json()["items"][0]["id"] == made["id"]


# --------------------------------------------------------------------------- token and CORS


def test_token_guards_reads_and_writes_and_cors_is_configurable(
    infra, api_db: StoredSample, model_bundle, tmp_path
) -> None:
    settings = api_settings(
        infra,
        api_db.database_url,
        model_bundle,
        tmp_path,
        api_token="s3cret",
        cors_origins=["http://dash.local"],
    )
    body = body_of(api_db, 3, run_id="token-test")
    with serve(settings) as base_url, httpx.Client(base_url=base_url, timeout=30) as client:
        for path in ("/api/predict", "/api/explain", "/api/transactions"):
            assert client.post(path, json=body).status_code == 401
            wrong = client.post(path, json=body, headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
        ok = client.post("/api/predict", json=body, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        assert client.get("/api/stats").status_code == 401  # reads need it too
        assert client.get("/api/stats", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert client.get("/health").status_code == 200 and client.get("/").status_code == 200
        allowed = client.get("/", headers={"Origin": "http://dash.local"})
        assert allowed.headers["access-control-allow-origin"] == "http://dash.local"
        other = client.get("/", headers={"Origin": "http://evil.example"})
        assert "access-control-allow-origin" not in other.headers


def test_no_cors_by_default(http: httpx.Client) -> None:
    response = http.get("/", headers={"Origin": "http://dash.local"})
    assert "access-control-allow-origin" not in response.headers
