"""The dashboard's pure parts: the tick cache, settings, the client's error mapping and
the figure builders, fed with bodies shaped like the API's response models."""

from __future__ import annotations

import math
import socket
import threading
import time

import httpx
import pytest

from dashboard.cache import TickCache
from dashboard.client import ApiClient, ApiUnreachable
from dashboard.settings import DashboardSettings
from dashboard.views import explore, live, model, review, savings, try_it
from dashboard.waterfall import logit, waterfall_figure


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_tick_cache_reuses_an_answer_until_it_expires() -> None:
    clock = FakeClock()
    cache = TickCache(ttl=1.0, clock=clock)
    calls: list[int] = []

    def fetch() -> int:
        calls.append(1)
        return len(calls)

    assert cache.get("stats", fetch) == 1
    clock.now = 0.9
    assert cache.get("stats", fetch) == 1
    assert cache.get("alerts", fetch) == 2  # another key is another request
    clock.now = 1.1
    assert cache.get("stats", fetch) == 3


def test_tick_cache_caches_errors_for_the_tick() -> None:
    clock = FakeClock()
    cache = TickCache(ttl=1.0, clock=clock)
    calls: list[int] = []

    def failing() -> None:
        calls.append(1)
        raise ApiUnreachable("down")

    for _ in range(3):
        with pytest.raises(ApiUnreachable):
            cache.get("health", failing)
    assert len(calls) == 1
    clock.now = 2.0
    assert cache.get("health", lambda: "back") == "back"


def test_tick_cache_lets_one_thread_fetch_while_the_others_wait() -> None:
    cache = TickCache(ttl=5.0)
    calls: list[int] = []
    started = threading.Event()

    def slow() -> str:
        calls.append(1)
        started.set()
        time.sleep(0.2)
        return "answer"

    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(cache.get("k", slow))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == ["answer"] * 8
    assert len(calls) == 1


def test_tick_cache_stays_bounded() -> None:
    clock = FakeClock()
    cache = TickCache(ttl=10.0, clock=clock, max_entries=4)
    for i in range(20):
        cache.get(i, lambda i=i: i)
    assert len(cache._entries) <= 4
    assert cache.get(19, lambda: "refetched") == 19  # the newest is still cached


def test_settings_follow_the_fraudstream_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRAUDSTREAM_API_PORT", "8123")
    monkeypatch.setenv("FRAUDSTREAM_HOST", "0.0.0.0")
    monkeypatch.setenv("FRAUDSTREAM_DASHBOARD_PORT", "8124")
    s = DashboardSettings(_env_file=None)
    assert s.resolved_api_url == "http://127.0.0.1:8123"  # a wildcard bind is reached through loopback
    assert s.dashboard_port == 8124
    monkeypatch.setenv("FRAUDSTREAM_API_URL", "http://10.0.0.5:9000/")
    assert DashboardSettings(_env_file=None).resolved_api_url == "http://10.0.0.5:9000"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_client_reports_an_unreachable_api_once_per_tick() -> None:
    client = ApiClient(f"http://127.0.0.1:{_closed_port()}", timeout=1.0, live_ttl=5.0)
    try:
        with pytest.raises(ApiUnreachable, match="unreachable"):
            client.stats()
        with pytest.raises(ApiUnreachable):
            client.stats()  # served from the tick cache: the same error, no new request
    finally:
        client.close()


STATS = {
    "run_id": "",
    "volume": 12_345,
    "labelled": 12_345,
    "frauds": 40,
    "alerts": 37,
    "true_alerts": 33,
    "alert_rate": 37 / 12_345,
    "fraud_rate": 40 / 12_345,
    "window_minutes": 1.0,
    "window_scored": 600,
    "window_alerts": 2,
    "throughput_per_s": 10.0,
    "latency_ms": {"count": 600, "p50": 4.2, "p95": 9.9, "p99": 15.25, "max": 20.0},
}


def test_kpis_show_the_stats_answer() -> None:
    values, subs = live.kpi_values(STATS)
    assert values == ["12,345", "37", "0.30%", "33", "10.0", "15.2 ms"]
    assert "of 40 labelled frauds" in subs[3]
    assert "p50 4.2" in subs[5]


def test_kpis_survive_an_empty_database() -> None:
    empty = {**STATS, "volume": 0, "alerts": 0, "true_alerts": 0, "alert_rate": 0.0, "throughput_per_s": 0.0}
    empty["latency_ms"] = {"count": 0, "p50": None, "p95": None, "p99": None, "max": None}
    values, _ = live.kpi_values(empty)
    assert values[0] == "0" and values[5] == "–"


def test_timeseries_plots_rates_and_says_when_empty() -> None:
    points = [
        {"t": f"2026-01-01T00:{m:02d}:00Z", "seconds": 60.0, "scored": 600 * m, "alerts": m % 3, "frauds": 0}
        for m in range(6)
    ]
    points[-1]["seconds"] = 12.0  # the current minute so far: its rate is over what has passed
    fig = live.timeseries_figure({"minutes": 6, "bucket_seconds": 60, "points": points})
    assert [trace.name for trace in fig.data] == ["scored / s", "alerts / 1 min"]
    assert list(fig.data[0].y) == [10.0 * m for m in range(5)] + [3000 / 12]
    empty = live.timeseries_figure({"minutes": 5, "bucket_seconds": 60, "points": []})
    assert not empty.data and "Nothing scored" in empty.layout.annotations[0].text


def test_histogram_is_per_class_share() -> None:
    dist = {
        "feature": "V14",
        "scale": "linear",
        "edges": [0.0, 1.0, 2.0, 3.0],
        "series": [
            {"name": "normal", "counts": [50, 30, 20], "total": 100, "mean": 1.0},
            {"name": "fraud", "counts": [1, 1, 2], "total": 4, "mean": 2.0},
            {"name": "alert", "counts": [0, 1, 2], "total": 3, "mean": 2.0},
        ],
    }
    fig = explore.histogram_figure(dist)
    assert [t.name.split()[0] for t in fig.data] == ["normal", "fraud"]
    assert list(fig.data[0].y) == [0.5, 0.3, 0.2]
    assert list(fig.data[1].y) == [0.25, 0.25, 0.5]
    assert math.isclose(sum(fig.data[1].y), 1.0)


def test_log_scale_histogram_places_bins_in_log_space() -> None:
    edges = [0.0, 9.0, 99.0, 999.0]
    dist = {
        "feature": "Amount",
        "scale": "log",
        "edges": edges,
        "series": [{"name": "normal", "counts": [1, 2, 1], "total": 4, "mean": 1.0}],
    }
    fig = explore.histogram_figure(dist)
    assert list(fig.data[0].x) == pytest.approx([0.5, 1.5, 2.5])
    assert list(fig.data[0].width) == pytest.approx([1.0, 1.0, 1.0])


def test_scatter_splits_classes() -> None:
    points = [
        {"id": f"id{i}", "x": float(i), "y": float(-i), "label": i % 2, "score": 0.1, "alert": i % 4 == 1}
        for i in range(10)
    ]
    fig = explore.scatter_figure({"x": "V14", "y": "V17", "points": points})
    by_name = {t.name.split()[0]: t for t in fig.data}
    assert len(by_name["normal"].x) == 5 and len(by_name["fraud"].x) == 5
    assert fig.layout.xaxis.title.text == "V14"


def test_waterfall_adds_up_to_the_model_log_odds() -> None:
    contributions = [
        {"feature": f"f{i}", "contribution": (-1) ** i * (i + 1) / 10, "value": 0.0} for i in range(20)
    ]
    base = -6.0
    total = base + sum(c["contribution"] for c in contributions)
    score = 1 / (1 + math.exp(-total))
    fig = waterfall_figure(
        {"base_value": base, "contributions": contributions, "score": score, "threshold": 0.5}, top=5
    )
    bars = fig.data[0]
    assert list(bars.measure) == ["absolute", *["relative"] * 6, "total"]
    assert bars.y[1] == "f19"  # largest |contribution| first
    assert bars.x[-1] == pytest.approx(total)
    assert base + sum(bars.x[1:-1]) == pytest.approx(total)
    assert fig.layout.shapes[0].x0 == pytest.approx(logit(0.5))


def test_model_views_pick_the_active_version() -> None:
    curve = {"x": [0.0, 0.5, 1.0], "y": [0.0, 0.9, 1.0], "thresholds": [1.0, 0.5, 0.0]}
    version = {
        "model_version": "abc",
        "threshold": 0.4,
        "rows": 100,
        "labelled": 100,
        "frauds": 5,
        "confusion": {"tp": 4, "fp": 1, "tn": 94, "fn": 1},
        "precision": 0.8,
        "recall": 0.8,
        "f1": 0.8,
        "auprc": 0.77,
        "roc_auc": 0.97,
        "roc": curve,
        "pr": curve,
    }
    perf = {
        "active_version": "abc",
        "versions": [{**version, "model_version": "old"}, version],
        "feature_importance": [{"feature": "V14", "importance": 0.4}, {"feature": "V4", "importance": 0.1}],
        "importance_type": "share of total gain",
        "offline_evaluation": {
            "test": {
                "ensemble": {"auprc": 0.8, "roc_auc": 0.98, "precision": 0.7, "recall": 0.75, "f1": 0.72}
            },
            "curves": {
                "ensemble": {
                    "roc": {"fpr": [0, 1], "tpr": [0, 1]},
                    "pr": {"recall": [0, 1], "precision": [1, 0]},
                }
            },
        },
    }
    assert model.active_performance(perf) is version
    roc = model.curve_figure(perf, "roc")
    assert [t.name for t in roc.data][:2] == ["offline test (0.980)", "live (0.970)"]
    metrics = model.metrics_figure(perf)
    assert list(metrics.data[0].y) == [0.8, 0.98, 0.7, 0.75, 0.72]
    assert list(metrics.data[1].y) == [0.77, 0.97, 0.8, 0.8, 0.8]
    confusion = model.confusion_figure(perf)
    assert confusion.data[0].text[1][1] == "TP<br>4"


def test_try_it_body_validates_and_keeps_an_unedited_examples_id() -> None:
    item = {"id": "tx1", "time": 10.0, "amount": 5.5, "features": {f"V{i}": float(i) for i in range(1, 29)}}
    rows = try_it.example_rows(item)
    assert [r["feature"] for r in rows] == list(try_it.FEATURES)
    example = {"id": "tx1", "values": {r["feature"]: float(r["value"]) for r in rows}}
    assert try_it.request_body(rows, example)["id"] == "tx1"
    edited = [dict(r) for r in rows]
    edited[-1]["value"] = 999.0
    assert "id" not in try_it.request_body(edited, example)
    edited[3]["value"] = "abc"
    with pytest.raises(ValueError, match="V3 must be a number"):
        try_it.request_body(edited, example)
    edited[3]["value"] = None
    with pytest.raises(ValueError, match="V3 has no value"):
        try_it.request_body(edited, example)


def test_cli_refuses_bad_flags_with_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    from dashboard.cli import main

    assert main(["--bogus"]) == 2
    assert main(["--port", "70000"]) == 2
    assert main(["--api-url", "ftp://example"]) == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments: --bogus" in err and "--port must be 1..65535" in err


def test_cli_says_when_the_port_is_taken(capsys: pytest.CaptureFixture[str]) -> None:
    from dashboard.cli import main

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["--port", str(port), "--api-url", "http://127.0.0.1:9"]) == 1
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


# --------------------------------------------------------------------------- login, banner, tokens


def test_a_login_is_needed_whenever_credentials_or_the_network_are_involved() -> None:
    bare = DashboardSettings(_env_file=None)
    assert not bare.login_required("127.0.0.1") and not bare.login_required("localhost")
    assert bare.login_required("0.0.0.0") and bare.login_required("192.168.1.20")
    assert bare.login_secrets == []
    with_token = DashboardSettings(_env_file=None, api_read_token="r" * 20, api_token="w" * 20)
    assert with_token.login_required("127.0.0.1") and with_token.login_secrets == ["r" * 20, "w" * 20]
    with_password = DashboardSettings(_env_file=None, api_token="w" * 20, dashboard_password="pw")
    assert with_password.login_secrets == ["pw"]  # the password replaces the tokens as a login


def test_a_needed_login_without_anything_to_check_refuses_to_start() -> None:
    from dashboard.app import create_app

    with pytest.raises(ValueError, match="FRAUDSTREAM_DASHBOARD_PASSWORD"):
        create_app("http://127.0.0.1:1", DashboardSettings(_env_file=None), host="0.0.0.0")
    served = create_app(
        "http://127.0.0.1:1", DashboardSettings(_env_file=None, dashboard_password="pw"), host="0.0.0.0"
    )
    anonymous = served.server.test_client()
    assert anonymous.get("/").status_code == 302 and anonymous.get("/_dash-layout").status_code == 401
    assert anonymous.post("/login", data={"secret": "pw"}).status_code == 302
    assert anonymous.get("/_dash-layout").status_code == 200
    open_app = create_app("http://127.0.0.1:1", DashboardSettings(_env_file=None), host="127.0.0.1")
    assert open_app.server.test_client().get("/_dash-layout").status_code == 200  # loopback, no tokens


def test_failed_logins_lock_an_address_out_for_a_while() -> None:
    from dashboard.auth import LOCKOUT_S, MAX_FAILURES, LoginLimiter, _safe_next

    clock = FakeClock()
    limiter = LoginLimiter(clock)
    for _ in range(MAX_FAILURES):
        assert not limiter.locked("10.0.0.1")
        limiter.failed("10.0.0.1")
    assert limiter.locked("10.0.0.1") and not limiter.locked("10.0.0.2")
    clock.now += LOCKOUT_S + 1
    assert not limiter.locked("10.0.0.1")
    for target, safe in (
        ("/model?x=1", "/model?x=1"),
        ("//evil.example", "/"),
        ("https://evil", "/"),
        (None, "/"),
    ):
        assert _safe_next(target) == safe


def test_the_banner_says_degraded_with_the_reasons() -> None:
    from dashboard.app import status_message

    degraded = {
        "status": "degraded",
        "reasons": ["scorer worker w1 is stalled: x", "broker unreachable at b"],
    }
    text, css = status_message(degraded, None, "http://api")
    assert (
        text == "Degraded: scorer worker w1 is stalled: x; broker unreachable at b."
        and css == "banner banner-warn"
    )
    down = {"status": "unavailable", "not_ready": ["database"], "reasons": ["database unreachable: refused"]}
    text, css = status_message(down, None, "http://api")
    assert text == "The API is not ready (database unreachable: refused)." and css == "banner banner-error"
    assert status_message({"status": "ok"}, None, "http://api") == ("", "banner hidden")


def test_reads_carry_the_read_token_and_predictions_the_write_token() -> None:
    seen: list[tuple[str, str | None]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.url.path, request.headers.get("authorization")))
        return httpx.Response(200, json={})

    client = ApiClient("http://api", token="W", read_token="R", transport=httpx.MockTransport(handler))
    client.stats()
    client.explain({"time": 1})
    client.predict({"time": 1})
    client.health()
    assert seen == [
        ("/api/stats", "Bearer R"),
        ("/api/explain", "Bearer R"),
        ("/api/predict", "Bearer W"),
        ("/health", None),
    ]


def _item(tx: str) -> dict:
    return {"id": tx}


def test_the_review_page_keeps_the_shown_alert_and_comes_back_to_skipped_ones_last() -> None:
    items = [_item("a"), _item("b"), _item("c")]
    shown = {"id": "b", "review_id": "r1"}
    assert review.next_alert(items, shown, []) is shown  # still waiting: kept (same review id)
    assert review.next_alert(items, {"id": "gone"}, []) == _item("a")  # decided elsewhere: the next
    assert review.next_alert(items, None, ["a"]) == _item("b")
    assert review.next_alert([], None, ["a"]) is None
    # only skipped ones left: the one skipped longest ago
    skipped = review.skip(review.skip(review.skip([], "c"), "a"), "b")
    assert skipped == ["c", "a", "b"] and review.next_alert(items, None, skipped) == _item("c")
    assert review.skip(skipped, "c") == ["a", "b", "c"]  # skipped again: now the last
    assert review.skip([str(i) for i in range(10)], "x", keep=3) == ["8", "9", "x"]


def test_the_review_counts_name_the_reviewer_and_the_live_precision() -> None:
    summary = {
        "backlog": 1234,
        "overall": {"reviewed": 3, "confirmed_fraud": 2, "precision": 2 / 3},
        "reviewers": [{"who": "alice", "decisions": 5, "fraud": 4, "not_fraud": 1, "last_24h": 2}],
    }
    mine = review.counts_text(summary, "alice")
    assert (mine["backlog"], mine["reviewed"], mine["precision"], mine["mine"]) == (
        "1,234",
        "3",
        "66.7%",
        "5",
    )
    assert mine["mine_sub"] == "4 fraud · 1 not fraud · 2 in 24 h"
    assert review.counts_text(summary, "bob")["mine"] == "0"
    assert review.counts_text(summary, None)["mine_sub"] == "enter your name to review"
    assert live.review_precision(summary) == ("66.7%", "2 fraud of 3 reviewed · backlog 1,234")
    assert live.review_precision({"overall": {"reviewed": 0, "precision": None}})[0] == "–"
    item = {"time": 5.0, "amount": 9.5, "features": {f"V{i}": float(i) for i in range(1, 29)}}
    body = review.explain_body(item)
    assert list(body) == ["time", *(f"V{i}" for i in range(1, 29)), "amount"] and body["V7"] == 7.0


def _curve(**overrides) -> dict:
    curve = {
        "run_id": "",
        "cost_per_alert": 5.0,
        "capacity_per_day": 20,
        "rows": 1000,
        "thresholds": [0.9, 0.7, 0.5, 0.2],
        "alerts": [5, 12, 30, 90],
        "alerts_per_day": [5.0, 12.0, 30.0, 90.0],
        "amount_caught": [400.0, 700.0, 800.0, 820.0],
        "amount_missed": [420.0, 120.0, 20.0, 0.0],
        "net_savings": [375.0, 640.0, 650.0, 370.0],
        "best": {"threshold": 0.7, "net_savings": 640.0, "alerts": 12},
        "current": {"threshold": 0.5, "net_savings": 650.0, "alerts": 30},
        "current_threshold": 0.5,
        "live_threshold": 0.5,
    }
    return {**curve, **overrides}


def test_the_savings_curve_marks_live_best_and_capacity() -> None:
    curve = _curve()
    assert savings.capacity_threshold(curve) == 0.7  # 30/day at 0.5 is past 20/day
    assert savings.capacity_threshold(_curve(capacity_per_day=None)) is None
    assert savings.capacity_threshold(_curve(capacity_per_day=1)) is None
    fig = savings.savings_figure(curve)
    assert list(fig.data[0].x) == curve["thresholds"] and list(fig.data[0].y) == curve["net_savings"]
    marks = {a.text: a.x for a in fig.layout.annotations}
    assert marks == {"live": 0.5, "best": 0.7, "capacity": 0.7}  # the run's threshold is the live one
    run = savings.savings_figure(_curve(current_threshold=0.2, run_id="bt-1"))
    assert {a.text: a.x for a in run.layout.annotations}["run"] == 0.2
    caption = savings.savings_caption(curve)
    assert caption.startswith("best 0.700: net 640.00 with 12 alerts") and "current 0.500" in caption
    assert "no threshold saves" in savings.savings_caption(_curve(best=None))
    empty = savings.savings_figure(_curve(thresholds=[]))
    assert not empty.data and "No scored rows" in empty.layout.annotations[0].text


def _comparison(rows: int, frauds: int) -> dict:
    version = {
        "version": "a" * 16,
        "role": "champion",
        "auprc": 0.8,
        "auprc_interval": [0.7, 0.9],
        "precision": 0.9,
        "precision_interval": [0.85, 0.95],
        "recall": 0.75,
        "recall_interval": [0.6, 0.85],
    }
    return {
        "a": version,
        "b": {**version, "version": "b" * 16, "role": "shadow", "auprc": 0.7},
        "rows": rows,
        "frauds": frauds,
        "left_out_in_sample": 12,
        "auprc_difference": -0.1,
        "auprc_difference_interval": [-0.2, 0.01],
        "b_better_share": 0.04,
        "resamples": 1000,
        "only_a_alerts": 3,
        "only_a_frauds": 2,
        "only_b_alerts": 1,
        "only_b_frauds": 0,
        "top_disagreements": [
            {
                "id": "x" * 40,
                "time": 10.4,
                "amount": 12.345,
                "label": 1,
                "score_a": 0.9,
                "score_b": 0.1,
                "alert_a": True,
                "alert_b": False,
            }
        ],
        "notes": ["12 rows inside a version's in-sample stretch were left out", "the cap was hit"],
    }


def test_comparison_panel_shows_both_versions_with_their_intervals_and_the_paired_difference() -> None:
    body = _comparison(5000, 40)
    fig = model.comparison_figure(body)
    assert [t.name for t in fig.data] == ["champion aaaaaaaaaaaa", "shadow bbbbbbbbbbbb"]
    champion = fig.data[0]
    assert list(champion.y) == [0.8, 0.9, 0.75]
    assert list(champion.error_y.array) == pytest.approx([0.1, 0.05, 0.1])
    assert list(champion.error_y.arrayminus) == pytest.approx([0.1, 0.05, 0.15])
    lines = model.comparison_summary(body)
    assert "5,000 labelled rows" in lines[0] and "12 left out" in lines[0]
    assert "-0.100" in lines[1] and "[-0.200, +0.010]" in lines[1] and "4%" in lines[1]
    assert "4 alerts" in lines[2]
    assert lines[3:] == ["the cap was hit"]  # the in-sample note is in the first line already
    costed = {
        **body,
        "cost_per_alert": 2.5,
        "a": {**body["a"], "net_savings": 1200.0},
        "b": {**body["b"], "net_savings": 950.5},
    }
    assert model.comparison_summary(costed)[3] == (
        "Net savings at 2.5 per alert: champion 1,200.00, shadow 950.50 (-249.50)."
    )
    assert model.disagreement_rows(body) == [
        {
            "id": "x" * 16,
            "time": 10,
            "amount": 12.35,
            "label": "yes",
            "score_a": 0.9,
            "score_b": 0.1,
            "alerted_by": "champion",
        }
    ]
    assert not model.comparison_figure(_comparison(5000, 0)).data  # no fraud: a message, no bars
