"""Rolling-origin evaluation on the shipped sample: forward windows only, pooled AUPRC with intervals."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest

from core.dataset import SAMPLE_PATH, load_csv
from core.metrics import average_precision
from training.cli import main
from training.rolling import format_report, windows


def test_windows_move_forward_and_stay_out_of_the_test_stretch() -> None:
    plan = windows(1000)
    assert [(w.cut, w.end) for w in plan] == [(600, 650), (650, 700), (700, 750), (750, 800)]
    with pytest.raises(ValueError, match="test stretch"):
        windows(1000, origins=(0.78,))


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str]:
    """One real `train --rolling-origin` on the sample (cap 50 rounds), shared by the tests below."""
    out = tmp_path_factory.mktemp("rolling") / "bundle"
    printed = io.StringIO()
    argv = ["--out", str(out), "--epochs", "1", "--max-rounds", "50", "--threads", "2", "--quiet"]
    with contextlib.redirect_stdout(printed):
        code = main([*argv, "--rolling-origin"])
    assert code == 0
    return json.loads((out / "manifest.json").read_text()), printed.getvalue()


@pytest.fixture(scope="module")
def report(cli_run: tuple[dict, str]) -> dict:
    return cli_run[0]["evaluation"]["rolling_origin"]


def test_report_pools_four_forward_windows(report: dict) -> None:
    data = load_csv(SAMPLE_PATH)
    order = np.argsort(data.time, kind="stable")
    test_starts = data.time[order][int(round(len(data) * 0.8))]
    assert [w["origin"] for w in report["windows"]] == [0.6, 0.65, 0.7, 0.75]
    for before, after in zip(report["windows"], report["windows"][1:], strict=False):
        assert before["time_to"] <= after["time_from"]
        assert after["train_rows"] == before["train_rows"] + before["scored_rows"]
    for window in report["windows"]:
        assert window["time_from"] >= data.time[order][window["train_rows"] - 1]  # scored after trained
        assert window["time_to"] <= test_starts  # never the test stretch
        assert window["scored_frauds"] > 0
    assert report["rounds_cap"] == 50
    for name in ("none", "recon_error", "latent", "residuals"):
        pooled = report["pooled"][name]
        # Scored up to 200 rounds past the pipeline's cap, to see whether a higher cap would help.
        assert sorted(map(int, pooled["by_rounds"])) == [50, 100, 150, 200, 250]
        assert pooled["by_rounds"]["50"] == pooled["at_cap"]["auprc"]
        low, high = pooled["at_cap"]["ci95"]
        assert 0.0 < low <= pooled["at_cap"]["auprc"] <= high <= 1.0
        assert len(pooled["per_window_at_cap"]) == 4
    assert set(report["differences"]) == {
        "none - recon_error",
        "latent - recon_error",
        "residuals - recon_error",
    }
    assert report["settled"]["rounds_enough"] in (50, 100, 150, 200, 250)
    retraining = report["retraining"]["recon_error"]
    assert 0.0 < retraining["static_auprc"] <= 1.0
    assert retraining["retrained_auprc"] == report["pooled"]["recon_error"]["at_cap"]["auprc"]
    json.dumps(report, allow_nan=False)  # plain data: it goes into the manifest


def test_report_reads_as_text(report: dict) -> None:
    text = format_report(report)
    assert "Pooled AUPRC" in text and "Retraining on newer labels" in text
    for name in ("none", "recon_error", "latent", "residuals"):
        assert name in text


def test_pooled_auprc_is_one_ranking_over_all_windows() -> None:
    # Pooling is not averaging: a model that ranks well inside each window but puts one
    # window's scores above another's is penalised, as an analyst's one queue would be.
    labels = np.array([1, 0, 0, 1, 0, 0])
    within = np.array([0.5, 0.1, 0.2, 0.99, 0.98, 0.97])
    assert average_precision(labels[:3], within[:3]) == average_precision(labels[3:], within[3:]) == 1.0
    assert average_precision(labels, within) == pytest.approx((1 + 2 / 4) / 2)


def test_cli_flag_puts_the_report_in_the_manifest(cli_run: tuple[dict, str]) -> None:
    manifest, printed = cli_run
    rolling = manifest["evaluation"]["rolling_origin"]
    assert set(rolling["pooled"]) == {"none", "recon_error", "latent", "residuals"}
    assert "Rolling-origin evaluation" in printed
    assert "rolling_origin" in [s["stage"] for s in manifest["training"]["timing"]["stages"]]
