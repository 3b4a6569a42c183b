"""Backtests through the real stream: run-scoped rows, same scores as offline, hot reload."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import asyncpg
import numpy as np
import pytest
from aiokafka import AIOKafkaProducer

from core.db.registry import register_model
from core.db.schema import FEATURE_COLUMNS
from core.ensemble import Ensemble
from core.events import build_event, encode_event
from core.runtime.processes import wait_until
from core.settings import Settings, settings_env
from producer.backtest import backtest_metrics
from tests.streaming_fixtures import fetch, read_topic, write_csv

ROOT = Path(__file__).resolve().parents[1]
WINDOW = (40_000.0, 60_000.0)


def _cli(settings: Settings, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRAUDSTREAM_")}
    env.update(settings_env(settings))
    return subprocess.run(
        [sys.executable, "-m", "fraudstream", "backtest", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )


def test_backtest_metrics_on_a_hand_checked_case() -> None:
    labels = np.array([1, 0, 1, 0, 0, 1])
    scores = np.array([0.9, 0.8, 0.4, 0.2, 0.1, 0.7])
    amounts = np.array([100.0, 5.0, 30.0, 1.0, 2.0, 50.0])
    times = np.array([10.0, 20.0, 3700.0, 3800.0, 7300.0, 7400.0])
    m = backtest_metrics(labels, scores, amounts, times, threshold=0.5)
    # alerts at 0.9 (fraud), 0.8 (normal), 0.7 (fraud): 2 of 3 frauds caught, 1 false alert
    assert (m["alerts"], m["frauds_caught"], m["frauds_missed"], m["false_alerts"]) == (3, 2, 1, 1)
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert (m["amount_caught"], m["amount_missed"]) == (150.0, 30.0)
    # ranking 1,0,1(0.7),1(0.4)... : AP = (1/1 + 2/3 + 3/4) / 3
    assert m["auprc"] == pytest.approx((1 + 2 / 3 + 3 / 4) / 3)
    assert [h["hour"] for h in m["per_hour"]] == [0, 1, 2]
    assert [h["frauds_caught"] for h in m["per_hour"]] == [1, 0, 1]
    assert m["per_hour"][1]["auprc"] == 1.0  # one fraud, ranked first in its hour
    assert "net_savings" not in m and "precision_at_capacity" not in m  # without the cost settings


def test_backtest_metrics_report_net_savings_and_precision_at_capacity() -> None:
    labels = np.array([1, 0, 1, 0, 0, 1])
    scores = np.array([0.9, 0.8, 0.4, 0.2, 0.1, 0.7])
    amounts = np.array([100.0, 5.0, 30.0, 1.0, 2.0, 50.0])
    times = np.array([0.0, 20.0, 3700.0, 3800.0, 7300.0, 43_200.0])  # half a day of data
    m = backtest_metrics(labels, scores, amounts, times, threshold=0.5, cost_per_alert=10.0, capacity=4)
    # 3 alerts cost 30; they catch 100 + 50 of fraud
    assert (m["review_cost"], m["net_savings"], m["cost_per_alert"]) == (30.0, 120.0, 10.0)
    # 4 a day over half a day: the top 2 scores (0.9 fraud, 0.8 normal) are what the team sees
    assert (m["alert_budget"], m["precision_at_capacity"], m["capacity_per_day"]) == (2, 0.5, 4)
    assert m["auprc"] is not None  # beside AUPRC
    from producer.backtest_cli import render_run

    shown = render_run(
        {"id": "bt-1", "model_version": "v", "threshold": 0.5, "status": "finished", "metrics": m}
    )
    assert "net_savings" in shown and "120.00" in shown and "precision_at_capacity" in shown


@pytest.mark.slow
def test_backtest_scores_through_the_stream_like_offline(settings, workers, model_bundle) -> None:
    worker = workers()
    worker.wait_partitions(4)
    done = _cli(
        settings,
        "--model",
        str(model_bundle),
        "--from",
        str(WINDOW[0]),
        "--to",
        str(WINDOW[1]),
        "--threshold",
        "0.3",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (run,) = asyncio.run(fetch(settings.database_url, "SELECT * FROM backtest_runs"))
    assert run["status"] == "finished" and run["threshold"] == 0.3 and run["id"] in done.stdout
    rows = asyncio.run(
        fetch(
            settings.database_url,
            f"SELECT s.score, s.alert, s.model_version, t.label, {', '.join(FEATURE_COLUMNS)} "
            "FROM scores s JOIN transactions t USING (run_id, id) WHERE s.run_id = $1 ORDER BY t.time, t.id",
            run["id"],
        )
    )
    assert len(rows) == run["expected_count"] > 1000
    assert all(WINDOW[0] <= r["time"] < WINDOW[1] for r in rows)
    features = np.array([[r[name] for name in FEATURE_COLUMNS] for r in rows])
    offline = Ensemble.load(model_bundle).with_threshold(0.3).score(features)
    np.testing.assert_allclose([r["score"] for r in rows], offline.score, rtol=0, atol=1e-9)
    assert [r["alert"] for r in rows] == offline.alert.tolist()
    assert {r["model_version"] for r in rows} == {run["model_version"]}
    metrics = json.loads(run["metrics"])
    assert metrics["transactions"] == len(rows)
    assert metrics["frauds"] == sum(r["label"] for r in rows)
    assert metrics["alerts"] == int(offline.alert.sum())
    assert [h["hour"] for h in metrics["per_hour"]] == sorted({int(r["time"] // 3600) for r in rows})
    live = asyncio.run(fetch(settings.database_url, "SELECT count(*) AS n FROM scores WHERE run_id = ''"))
    assert live[0]["n"] == 0  # never mixed with live scores

    second = _cli(settings, "--model", str(model_bundle), "--from", str(WINDOW[0]), "--to", str(WINDOW[1]))
    assert second.returncode == 0, second.stderr[-2000:]
    ids = [
        r["id"]
        for r in asyncio.run(fetch(settings.database_url, "SELECT id FROM backtest_runs ORDER BY created_at"))
    ]
    compared = _cli(settings, "--compare", *ids)
    assert compared.returncode == 0, compared.stderr
    assert ids[0] in compared.stdout and ids[1] in compared.stdout and "0.3000" in compared.stdout
    listed = _cli(settings, "--list")
    assert all(run_id in listed.stdout for run_id in ids)


def test_backtest_refuses_bad_input_clearly(settings) -> None:
    bad_threshold = _cli(settings, "--model", "models/x", "--threshold", "1.5")
    assert bad_threshold.returncode == 2 and "threshold is a probability" in bad_threshold.stderr
    backwards = _cli(settings, "--model", "models/x", "--from", "100", "--to", "50")
    assert backwards.returncode == 2 and "must be after --from" in backwards.stderr
    no_bundle = _cli(settings, "--model", str(settings.state_dir / "missing"))
    assert no_bundle.returncode == 2 and "error:" in no_bundle.stderr and "Traceback" not in no_bundle.stderr
    unknown = _cli(settings, "--compare", "bt-nope", "bt-nada")
    assert unknown.returncode == 2 and "no backtest run 'bt-nope'" in unknown.stderr


async def _publish(bootstrap: str, topic: str, events: list[dict]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for event in events:
            await producer.send_and_wait(topic, encode_event(event), key=event["id"].encode())
    finally:
        await producer.stop()


async def _activate(database_url: str, bundle: Path) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await register_model(conn, Ensemble.load(bundle), bundle, activate=True)
    finally:
        await conn.close()


@pytest.mark.slow
def test_unknown_runs_are_dead_lettered_and_new_model_versions_load_without_restart(
    settings, workers, model_bundle, tmp_path
) -> None:
    from training.pipeline import train

    worker = workers()
    worker.wait_partitions(4)
    values = [100.0, *([0.5] * 28), 12.0]
    first = build_event(values, event_id="before-switch", label=0)
    stray = build_event(values, event_id="stray", label=0, run_id="bt-never-created")
    asyncio.run(_publish(settings.kafka_bootstrap_servers, settings.topic_transactions, [first, stray]))
    (letter,) = asyncio.run(read_topic(settings.kafka_bootstrap_servers, settings.topic_dead_letters, 1))
    assert letter[1] == encode_event(stray)
    assert b"unknown backtest run_id 'bt-never-created'" in dict(letter[2])["fraudstream.error.reason"]

    train(write_csv(tmp_path / "small.csv", 6000), tmp_path / "other", epochs=1, progress=False)
    other_version = Ensemble.load(tmp_path / "other").version
    old_version = Ensemble.load(model_bundle).version
    assert other_version != old_version
    asyncio.run(_activate(settings.database_url, tmp_path / "other"))
    wait_until(lambda: worker.metric("fraudstream_model_reloads_total") >= 1, timeout=30, what="model reload")
    after = build_event(values, event_id="after-switch", label=0)
    asyncio.run(_publish(settings.kafka_bootstrap_servers, settings.topic_transactions, [after]))
    wait_until(
        lambda: len(asyncio.run(fetch(settings.database_url, "SELECT 1 FROM scores"))) == 2,
        timeout=30,
        what="both live rows stored",
    )
    versions = dict(asyncio.run(fetch(settings.database_url, "SELECT id, model_version FROM scores")))
    assert versions == {"before-switch": old_version, "after-switch": other_version}
    assert worker.process.poll() is None
