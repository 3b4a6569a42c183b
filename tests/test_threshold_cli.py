"""`fraudstream threshold`: the best threshold by net savings, checked against a brute-force
computation of the definition on the same rows (the validation stretch, a backtest run)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import asyncpg
import numpy as np
import pytest

from core.dataset import SAMPLE_PATH, load_csv
from core.db.registry import registry_head
from core.ensemble import Ensemble
from tests.streaming_fixtures import register_run
from tests.test_dashboard_browser import score_rows, store
from training import threshold_cli
from training.split import time_split

pytestmark = pytest.mark.timeout(600)
COST = 5.0


def brute_best(labels, scores, amounts, cost: float, capacity_alerts: float | None) -> float | None:
    """The definition, threshold by threshold: the largest net savings > 0 within capacity."""
    best, best_net = None, 0.0
    for t in np.unique(scores):
        alerting = scores >= t
        alerts = int(alerting.sum())
        if capacity_alerts is not None and alerts > capacity_alerts + 1e-9:
            continue
        net = float(amounts[alerting & labels].sum()) - cost * alerts
        if net > best_net:
            best, best_net = float(t), net
    return best


def printed_best(out: str) -> float:
    return float(re.search(r"^best: ([0-9.]+):", out, re.M).group(1))


def test_the_validation_stretch_sweep_finds_the_defined_best(
    model_bundle: Path, tmp_path: Path, capsys
) -> None:
    plot = tmp_path / "curve.png"
    args = ["--cost-per-alert", str(COST), "--model", str(model_bundle), "--plot", str(plot)]
    assert threshold_cli.main(args) == 0
    out = capsys.readouterr().out
    part = time_split(load_csv(SAMPLE_PATH)).validation
    scores = Ensemble.load(model_bundle).score(part.raw).score
    labels, amounts = part.labels.astype(bool), part.raw[:, -1]
    assert printed_best(out) == pytest.approx(brute_best(labels, scores, amounts, COST, None), abs=5e-5)
    assert "validation stretch" in out and re.search(r"^\*", out, re.M) and re.search(r"^.<", out, re.M)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a capacity that binds: the best moves to fewer alerts, as the definition says
    days = max(part.raw[:, 0].max() - part.raw[:, 0].min(), 1.0) / 86_400
    unbound = brute_best(labels, scores, amounts, COST, None)
    capacity = max(1, int((scores >= unbound).sum() / days / 2))
    assert threshold_cli.main([*args, "--capacity", str(capacity)]) == 0
    bound = printed_best(capsys.readouterr().out)
    assert bound == pytest.approx(brute_best(labels, scores, amounts, COST, capacity * days), abs=5e-5)
    assert bound > unbound


def test_a_backtest_run_is_swept_on_its_stored_rows(
    model_bundle: Path, database_url: str, tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setenv("FRAUDSTREAM_DATABASE_URL", database_url)
    ensemble = Ensemble.load(model_bundle)
    run_id = asyncio.run(register_run(database_url, model_bundle, 0.5))
    data = load_csv(SAMPLE_PATH).take(slice(-4000, None))
    rows = score_rows(ensemble, data, run_id)
    assert store(database_url, rows) == len(data)
    plot = tmp_path / "bt.png"
    assert threshold_cli.main(["--backtest", run_id, "--cost-per-alert", str(COST), "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    expected = brute_best(data.labels.astype(bool), np.asarray(rows.score), data.raw[:, -1], COST, None)
    assert printed_best(out) == pytest.approx(expected, abs=5e-5) and f"backtest run {run_id}" in out
    assert threshold_cli.main(["--backtest", "bt-missing", "--cost-per-alert", "1"]) == 1
    assert "no backtest run" in capsys.readouterr().err


def test_a_cost_is_required(monkeypatch, capsys) -> None:
    monkeypatch.delenv("FRAUDSTREAM_COST_PER_ALERT", raising=False)
    assert threshold_cli.main([]) == 2 and "--cost-per-alert" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        threshold_cli.main(["--cost-per-alert", "-1"])


def test_activate_makes_the_best_threshold_live_as_a_new_version(
    model_bundle: Path, database_url: str, tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setenv("FRAUDSTREAM_DATABASE_URL", database_url)
    source = Ensemble.load(model_bundle)
    out = tmp_path / "rethresholded"
    args = ["--cost-per-alert", str(COST), "--model", str(model_bundle), "--plot", str(tmp_path / "c.png")]
    assert threshold_cli.main([*args, "--activate", "--out", str(out)]) == 0
    best = printed_best(capsys.readouterr().out)

    live = Ensemble.load(out)  # a verified bundle: files and manifest hash as written
    assert live.version != source.version and live.threshold == pytest.approx(best, abs=5e-5)
    for name in source.manifest["files"]:  # the same models, byte for byte
        assert (out / name).read_bytes() == (model_bundle / name).read_bytes()
    assert live.manifest["threshold_by_cost"]["from_version"] == source.version
    assert live.manifest["threshold_by_cost"]["cost_per_alert"] == COST
    raw = load_csv(SAMPLE_PATH).raw[:500]
    before, after = source.score(raw), live.score(raw)
    assert np.array_equal(before.score, after.score)  # only the alert flags move
    assert np.array_equal(after.alert, before.score >= live.threshold)

    async def champion() -> str | None:
        conn = await asyncpg.connect(database_url)
        try:
            return (await registry_head(conn)).champion.version
        finally:
            await conn.close()

    assert asyncio.run(champion()) == live.version  # promoted: scorers and the API follow it

    # A second activation into the same folder is refused; without a database nothing goes live.
    assert threshold_cli.main([*args, "--activate", "--out", str(out)]) == 1
    assert "is not empty" in capsys.readouterr().err
    monkeypatch.delenv("FRAUDSTREAM_DATABASE_URL")
    assert threshold_cli.main([*args, "--activate", "--out", str(tmp_path / "other")]) == 1
    assert "not registered" in capsys.readouterr().out
