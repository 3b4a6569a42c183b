"""Net savings by threshold (`core.costs`) against plain numpy on hand-made and random cases."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.costs import (
    alert_budget,
    data_days,
    precision_at_capacity,
    savings_at,
    sweep,
    sweep_binned,
)

# Ten transactions: three frauds (amounts 500, 20, 80), scores with a tie at 0.6.
LABELS = np.array([1, 0, 0, 1, 0, 0, 1, 0, 0, 0])
SCORES = np.array([0.95, 0.9, 0.6, 0.6, 0.5, 0.3, 0.2, 0.1, 0.05, 0.01])
AMOUNTS = np.array([500.0, 10.0, 30.0, 20.0, 7.0, 3.0, 80.0, 1.0, 2.0, 4.0])


def brute(labels, scores, amounts, threshold, cost):
    """The definition, spelled out row by row."""
    alerts = caught = 0
    amount_caught = amount_missed = 0.0
    for label, score, amount in zip(labels, scores, amounts, strict=True):
        if score >= threshold:
            alerts += 1
            if label:
                caught += 1
                amount_caught += amount
        elif label:
            amount_missed += amount
    return alerts, caught, amount_caught, amount_missed, alerts * cost, amount_caught - alerts * cost


def test_savings_at_on_a_hand_made_case() -> None:
    s = savings_at(LABELS, SCORES, AMOUNTS, 0.6, cost_per_alert=15.0)
    # alerts: 0.95, 0.9, 0.6, 0.6 -> frauds 500 and 20 caught, 80 missed
    assert (s.alerts, s.frauds_caught, s.amount_caught, s.amount_missed) == (4, 2, 520.0, 80.0)
    assert (s.review_cost, s.net_savings, s.precision) == (60.0, 460.0, 0.5)
    nothing = savings_at(LABELS, SCORES, AMOUNTS, 0.99, cost_per_alert=15.0)
    assert (nothing.alerts, nothing.net_savings, nothing.amount_missed, nothing.precision) == (
        0,
        0.0,
        600.0,
        None,
    )


def test_the_sweep_matches_the_definition_at_every_threshold() -> None:
    curve = sweep(LABELS, SCORES, AMOUNTS, cost_per_alert=15.0, days=0.5)
    assert curve.thresholds.tolist() == [
        0.95,
        0.9,
        0.6,
        0.5,
        0.3,
        0.2,
        0.1,
        0.05,
        0.01,
    ]  # the tie is one point
    for i, threshold in enumerate(curve.thresholds):
        expected = brute(LABELS, SCORES, AMOUNTS, threshold, 15.0)
        got = curve.at(i)
        assert (
            got.alerts,
            got.frauds_caught,
            got.amount_caught,
            got.amount_missed,
            got.review_cost,
            got.net_savings,
        ) == pytest.approx(expected)
    assert curve.alerts_per_day.tolist() == (curve.alerts * 2).tolist()
    assert (curve.rows, curve.frauds, curve.fraud_amount) == (10, 3, 600.0)


def test_the_best_threshold_with_and_without_capacity() -> None:
    curve = sweep(LABELS, SCORES, AMOUNTS, cost_per_alert=15.0, days=1.0)
    # net: 0.95 -> 485, 0.9 -> 470, 0.6 -> 460, 0.5 -> 445, 0.3 -> 430, 0.2 -> 600 - 105 = 495
    assert curve.thresholds[curve.best()] == 0.2
    dearer = sweep(LABELS, SCORES, AMOUNTS, cost_per_alert=30.0, days=1.0)
    assert dearer.thresholds[dearer.best()] == 0.95  # 470 against 600 - 210 = 390
    cheap = sweep(LABELS, SCORES, AMOUNTS, cost_per_alert=1.0, days=1.0)
    assert cheap.thresholds[cheap.best()] == 0.2  # 600 - 7 beats 520 - 4
    assert cheap.thresholds[cheap.best(capacity_per_day=4)] == 0.6  # 7 alerts a day are too many
    assert cheap.best(capacity_per_day=0.5) is None  # not even the top alert fits
    dear = sweep(LABELS, SCORES, AMOUNTS, cost_per_alert=1000.0, days=1.0)
    assert dear.best() is None  # no threshold saves more than alerting on nothing
    with pytest.raises(ValueError, match="days"):
        sweep(LABELS, SCORES, AMOUNTS, cost_per_alert=1.0).best(capacity_per_day=3)


def test_index_of_finds_the_point_that_alerts_the_same() -> None:
    curve = sweep(LABELS, SCORES, AMOUNTS, cost_per_alert=1.0)
    for threshold in (0.95, 0.7, 0.6, 0.55, 0.011, 0.0):
        i = curve.index_of(threshold)
        expected = np.count_nonzero(np.greater_equal(SCORES, threshold))
        assert curve.alerts[i] == expected
    assert curve.index_of(0.99) is None


def test_the_binned_sweep_equals_the_row_sweep_when_bins_split_no_ties() -> None:
    edges = np.arange(100) / 100
    bins = np.minimum((SCORES * 100).astype(int), 99)
    counts = np.bincount(bins, minlength=100)
    frauds = np.bincount(bins, weights=LABELS, minlength=100).astype(int)
    amounts = np.bincount(bins, weights=LABELS * AMOUNTS, minlength=100)
    binned = sweep_binned(counts, frauds, amounts, edges, cost_per_alert=15.0, days=2.0)
    rows = sweep(LABELS, SCORES, AMOUNTS, cost_per_alert=15.0, days=2.0)
    assert binned.thresholds.tolist() == pytest.approx(rows.thresholds.tolist())
    for name in ("alerts", "frauds_caught", "amount_caught", "amount_missed", "review_cost", "net_savings"):
        assert getattr(binned, name).tolist() == pytest.approx(getattr(rows, name).tolist()), name


def test_precision_at_capacity_and_the_budget() -> None:
    assert alert_budget(2.5, 2.0) == 5 and alert_budget(0.1, 1.0) == 1
    assert precision_at_capacity(LABELS, SCORES, 1) == 1.0
    assert precision_at_capacity(LABELS, SCORES, 4) == 0.5  # the stable order takes both tied rows
    assert precision_at_capacity(LABELS, SCORES, 100) == 0.3
    assert precision_at_capacity([], [], 3) is None
    assert data_days([0.0, 43_200.0]) == 0.5 and data_days([]) is None


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="equal-length"):
        sweep(LABELS, SCORES[:3], AMOUNTS, cost_per_alert=1.0)
    with pytest.raises(ValueError, match="finite"):
        sweep(LABELS, np.r_[SCORES[:9], np.nan], AMOUNTS, cost_per_alert=1.0)
    with pytest.raises(ValueError, match="cost_per_alert"):
        savings_at(LABELS, SCORES, AMOUNTS, 0.5, cost_per_alert=-1.0)


@settings(max_examples=200, deadline=None)
@given(
    data=st.lists(
        st.tuples(
            st.booleans(),
            st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.5, 0.75, 0.9, 0.99, 1.0]),
            st.floats(0, 5000, allow_nan=False),
        ),
        min_size=1,
        max_size=60,
    ),
    cost=st.floats(0, 500, allow_nan=False),
    capacity=st.none() | st.floats(0.5, 80),
)
def test_random_cases_against_the_definition(data, cost: float, capacity: float | None) -> None:
    labels = np.array([d[0] for d in data])
    scores = np.array([d[1] for d in data])
    amounts = np.array([d[2] for d in data])
    curve = sweep(labels, scores, amounts, cost_per_alert=cost, days=1.0)
    assert sorted(curve.thresholds.tolist(), reverse=True) == sorted(set(scores.tolist()), reverse=True)
    for i, threshold in enumerate(curve.thresholds):
        assert (curve.at(i).alerts, curve.at(i).net_savings) == pytest.approx(
            brute(labels, scores, amounts, threshold, cost)[::5]
        )
    best = curve.best(capacity)
    candidates = [
        (brute(labels, scores, amounts, t, cost)[5], t)
        for t in curve.thresholds
        if capacity is None or brute(labels, scores, amounts, t, cost)[0] <= capacity
    ]
    positive = [c for c in candidates if c[0] > 0]
    if not positive:
        assert best is None
    else:
        assert curve.net_savings[best] == pytest.approx(max(positive)[0])


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=300),
    bins=st.sampled_from([10, 20, 25, 40, 50, 100, 125, 200, 250, 500, 1000]),
    marked=st.lists(st.floats(1e-9, 1.0), max_size=3),
)
def test_regrouped_fixed_bins_equal_binning_the_values_directly(values, bins, marked) -> None:
    """The savings curve's counts from the rollup's fixed score bins (and the rows of the fixed
    bins its marked thresholds fall in) are the counts of binning every value directly."""
    from core.bins import SCORE_BINS
    from core.costs import regroup_bins

    scores = np.array(values)
    fixed = np.asarray(SCORE_BINS.edges)
    per = np.bincount(SCORE_BINS.index(scores), minlength=SCORE_BINS.count)[None, :]
    edges = np.unique(np.r_[np.arange(bins) / bins, marked])
    splits = {}
    for x in marked:
        j = int(SCORE_BINS.index(np.array([x]))[0])
        upper = SCORE_BINS.upper(j)
        splits[x] = np.array([int(((scores >= x) & (scores < upper)).sum())])
    got = regroup_bins(fixed, per, edges, splits)[0]
    expected = np.bincount(
        np.clip(np.searchsorted(edges, scores, side="right") - 1, 0, None), minlength=edges.size
    )
    assert got.tolist() == expected.tolist()
