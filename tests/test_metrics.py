"""Metrics checked against cases small enough to work out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from core import metrics

# Eight rows, best score first: labels 1 0 1 1 0 0 1 0 (4 frauds).
SCORES = np.array([0.95, 0.90, 0.80, 0.70, 0.60, 0.40, 0.30, 0.10])
LABELS = np.array([1, 0, 1, 1, 0, 0, 1, 0])


def test_average_precision_by_hand() -> None:
    # Precision at each fraud as it is reached: 1/1, 2/3, 3/4, 4/7; AP is their mean.
    expected = (1 + 2 / 3 + 3 / 4 + 4 / 7) / 4
    assert metrics.average_precision(LABELS, SCORES) == pytest.approx(expected)
    shuffled = np.random.default_rng(3).permutation(8)
    assert metrics.average_precision(LABELS[shuffled], SCORES[shuffled]) == pytest.approx(expected)


def test_average_precision_with_ties_counts_the_tied_block_once() -> None:
    # The top two tie (one fraud, one normal): precision 1/2 at recall 1/2, then 2/3 at recall 1.
    labels = np.array([1, 0, 1, 0])
    scores = np.array([0.9, 0.9, 0.5, 0.1])
    assert metrics.average_precision(labels, scores) == pytest.approx(0.5 * 0.5 + 0.5 * (2 / 3))


def test_weights_act_as_repeated_rows() -> None:
    weights = np.array([2, 0, 1, 3, 1, 0, 1, 2])
    repeated = np.repeat(np.arange(8), weights)
    assert metrics.average_precision(LABELS, SCORES, weights) == pytest.approx(
        metrics.average_precision(LABELS[repeated], SCORES[repeated])
    )


def test_roc_auc_by_hand() -> None:
    # Pairs (fraud, normal) ranked correctly: 0.95 beats 4, 0.80 beats 3, 0.70 beats 3, 0.30 beats 1 = 11 of 16.
    assert metrics.roc_auc(LABELS, SCORES) == pytest.approx(11 / 16)


def test_confusion_at_threshold() -> None:
    result = metrics.confusion(LABELS, SCORES, 0.7)
    assert (result["tp"], result["fp"], result["fn"], result["tn"]) == (3, 1, 1, 3)
    assert result["precision"] == pytest.approx(3 / 4)
    assert result["recall"] == pytest.approx(3 / 4)
    assert result["f1"] == pytest.approx(3 / 4)


def test_recall_at_alert_rate() -> None:
    # 25% of 8 rows = the top 2 rows, which hold 1 of the 4 frauds.
    assert metrics.recall_at_alert_rate(LABELS, SCORES, 0.25) == pytest.approx(1 / 4)
    # 50% = top 4 rows: 3 of 4 frauds.
    assert metrics.recall_at_alert_rate(LABELS, SCORES, 0.5) == pytest.approx(3 / 4)


def test_threshold_rules() -> None:
    # F1 at each cut: 0.4, 0.33, 0.57, 0.75 (at 0.70), 0.67, 0.6, 0.73, 0.67.
    threshold, achieved = metrics.choose_threshold(LABELS, SCORES, "f1")
    assert threshold == 0.70 and achieved["precision"] == pytest.approx(0.75)
    # Precision >= 0.7: reached at 0.95 (1.0) and 0.70 (0.75); the lowest such threshold is 0.70.
    threshold, _ = metrics.choose_threshold(LABELS, SCORES, "precision", target_precision=0.7)
    assert threshold == 0.70
    # Alert on at most 30% of 8 rows = 2 rows: threshold 0.90.
    threshold, achieved = metrics.choose_threshold(LABELS, SCORES, "alert-rate", alert_rate=0.3)
    assert threshold == 0.90 and achieved["alert_rate"] == pytest.approx(0.25)
    threshold, achieved = metrics.choose_threshold(LABELS, SCORES, "precision", target_precision=1.01)
    assert threshold == 0.95 and "note" in achieved
    with pytest.raises(ValueError, match="unknown threshold rule"):
        metrics.choose_threshold(LABELS, SCORES, "magic")


def test_sklearn_agrees_on_random_data() -> None:
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    labels = (rng.random(2000) < 0.05).astype(int)
    scores = np.round(rng.random(2000) + labels * 0.3, 2)  # rounding makes ties
    assert metrics.average_precision(labels, scores) == pytest.approx(
        sklearn_metrics.average_precision_score(labels, scores)
    )
    assert metrics.roc_auc(labels, scores) == pytest.approx(sklearn_metrics.roc_auc_score(labels, scores))


def test_paired_bootstrap_is_paired_and_brackets_the_point_estimate() -> None:
    rng = np.random.default_rng(1)
    labels = (rng.random(3000) < 0.03).astype(int)
    a = rng.random(3000) + 0.5 * labels
    draws = metrics.paired_bootstrap_ap(labels, {"a": a, "same": a.copy()}, resamples=200, seed=2)
    assert np.array_equal(draws["a"], draws["same"])  # same rows in each resample
    low, high = metrics.interval(draws["a"])
    assert low < metrics.average_precision(labels, a) < high


def test_paired_resamples_equal_the_row_by_row_metrics_for_any_weights() -> None:
    # Cells are a shortcut: for any row weights (the data, a resample's counts) AP, precision
    # and recall must equal the direct weighted computation, ties and empty resamples included.
    rng = np.random.default_rng(4)
    n = 400
    labels = (rng.random(n) < 0.1).astype(int)
    scores = {"a": np.round(rng.random(n) + 0.3 * labels, 1), "b": np.round(rng.random(n), 2)}
    flags = {"a": scores["a"] > 0.8, "b": scores["b"] > 0.5}
    cells = metrics.PairedResamples(labels, scores, flags)
    weights = np.vstack([np.ones(n), rng.integers(0, 3, size=(5, n)), np.zeros(n)])
    got = cells.metrics(weights)
    for k, w in enumerate(weights):
        frauds = float(w @ labels)
        for name in scores:
            expected_ap = metrics.average_precision(labels, scores[name], w) if frauds else np.nan
            alerts, caught = float(w @ flags[name]), float(w @ (flags[name] & (labels == 1)))
            expected = [
                expected_ap,
                caught / alerts if alerts else np.nan,
                caught / frauds if frauds else np.nan,
            ]
            actual = [got.auprc[name][k], got.precision[name][k], got.recall[name][k]]
            np.testing.assert_allclose(actual, expected, rtol=1e-12, equal_nan=True)
    draws = cells.draw(300, seed=5)
    again = cells.draw(300, seed=5)
    assert np.array_equal(draws.auprc["a"], again.auprc["a"])  # seeded
    assert draws.auprc["a"].shape == (300,) and draws.recall["b"].shape == (300,)


def test_downsample_curve_keeps_ends() -> None:
    curve = {"x": np.linspace(0, 1, 5000), "y": np.linspace(1, 0, 5000)}
    small = metrics.downsample_curve(curve, points=300)
    assert len(small["x"]) == 300
    assert small["x"][0] == 0.0 and small["x"][-1] == 1.0
