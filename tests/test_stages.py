"""The stage histograms (`scorer.stages`) and the bench's reading of them (`bench.stages`)."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.stages import StageCounts
from scorer.metrics import ScorerMetrics
from scorer.stages import STAGE_BUCKETS, STAGES, BatchStamps, StageLatency

latencies = st.lists(st.floats(min_value=0.0, max_value=100.0, allow_nan=False), min_size=1, max_size=300)


@given(latencies)
def test_the_histogram_counts_what_prometheus_would(values: list[float]) -> None:
    """Each bucket counts the values <= its bound (Prometheus' `le`), the sum is the values' sum."""
    histogram = StageLatency()
    histogram.observe("stored", np.asarray(values))
    cumulative = np.cumsum(histogram.counts["stored"])
    for bound, count in zip(STAGE_BUCKETS, cumulative[:-1], strict=True):
        assert count == sum(value <= bound for value in values)
    assert cumulative[-1] == len(values)
    assert math.isclose(histogram.sums["stored"], sum(values), rel_tol=1e-9, abs_tol=1e-12)


@settings(max_examples=50)
@given(latencies, st.sampled_from([0.5, 0.95, 0.99]))
def test_the_bench_reads_a_quantile_within_its_bucket(values: list[float], q: float) -> None:
    """Through the exposition and the parser, the quantile lies in the bucket that holds the true one."""
    metrics = ScorerMetrics()
    metrics.stages.observe("stored", np.asarray(values))
    counts = StageCounts()
    counts.add(metrics.exposition().decode())
    assert counts.count("stored") == len(values)
    got = counts.quantile("stored", q)
    rank = math.ceil(q * len(values))  # the value of that rank is what the interpolation brackets
    true = sorted(values)[rank - 1]
    bounds = [0.0, *STAGE_BUCKETS]
    upper = next((b for b in STAGE_BUCKETS if b >= true), math.inf)
    lower = max(b for b in bounds if b < upper) if upper != math.inf else STAGE_BUCKETS[-1]
    assert lower - 1e-12 <= got <= upper + 1e-12


def test_a_window_is_the_difference_of_two_reads() -> None:
    metrics = ScorerMetrics()
    metrics.stages.observe("fetched", np.asarray([0.001, 0.003]))
    before = StageCounts()
    before.add(metrics.exposition().decode())
    metrics.stages.observe("fetched", np.asarray([0.05, 0.07, 0.09]))
    after = StageCounts()
    after.add(metrics.exposition().decode())
    window = after - before
    assert window.count("fetched") == 3
    assert 0.065 <= window.quantile("fetched", 0.5) <= 0.07  # the median of the window alone is 0.07
    assert math.isnan(window.quantile("stored", 0.5))


@given(
    st.lists(
        st.one_of(st.none(), st.floats(min_value=1e9, max_value=2e9, allow_nan=False)),
        min_size=1,
        max_size=50,
    ),
    st.lists(st.floats(min_value=0.0, max_value=5.0, allow_nan=False), min_size=6, max_size=6),
)
def test_every_row_with_a_producer_timestamp_is_counted_once_per_stage_in_order(
    produced: list[float | None], steps: list[float]
) -> None:
    """Rows without `produced_at` are left out; the others count once at every stage, and since
    the stages follow one another, no stage is reached sooner than the one before it."""
    start = max((p for p in produced if p is not None), default=1e9)
    at = np.cumsum(steps) + start
    positions = list(range(len(produced)))
    stamps = BatchStamps(np.full(len(produced), at[0]), *at[1:].tolist())
    histogram = StageLatency()
    histogram.observe_batch(stamps, [(produced, positions)])
    known = sum(p is not None for p in produced)
    cumulative = {stage: np.cumsum(histogram.counts[stage]) for stage in STAGES}
    for stage in STAGES:
        assert cumulative[stage][-1] == known
    for earlier, later in zip(STAGES, STAGES[1:], strict=False):
        assert np.all(cumulative[later] <= cumulative[earlier])


def test_stamps_of_one_fetch() -> None:
    stamps = BatchStamps.fetched_together(3, at=100.0)
    assert stamps.fetched.tolist() == [100.0] * 3 and stamps.taken == 100.0 and stamps.stored is None
    reached = dict(stamps.since_produced([99.5, None, 99.0], [0, 1, 2]))
    assert set(reached) == {"fetched", "taken"}
    assert reached["fetched"].tolist() == [0.5, 1.0]
