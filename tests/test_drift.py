"""Reference histograms and PSI: by hand, against hostile input, and in a trained bundle."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from core.dataset import SAMPLE_PATH, load_csv
from core.drift import (
    MIN_ROWS_FOR_PSI,
    PSI_EPSILON,
    PSI_MAJOR,
    PSI_MODERATE,
    REFERENCE_FORMAT,
    bin_counts,
    hour_drift,
    psi,
    psi_against,
    quantile_edges,
    reference_histogram,
)
from core.features import RAW_FEATURES
from training.pipeline import TrainResult
from training.split import time_split


def test_bins_are_open_ended_and_half_open() -> None:
    edges = [0.0, 1.0, 2.0]
    # bin 0: x < 0; bin 1: 0 <= x < 1; bin 2: 1 <= x < 2; bin 3: x >= 2
    counts = bin_counts(edges, np.array([-1e300, -0.5, 0.0, 0.99, 1.0, 1.5, 2.0, 1e300, np.nan, np.inf]))
    assert counts.tolist() == [2, 2, 2, 2]


def test_psi_by_hand() -> None:
    # shares 0.5/0.5 against 0.25/0.75: (0.25-0.5)ln(0.5) + (0.75-0.5)ln(1.5)
    expected = -0.25 * np.log(0.5) + 0.25 * np.log(1.5)
    assert psi([50, 50], [25, 75]) == pytest.approx(expected)
    assert psi([10, 20, 30], [1, 2, 3]) == pytest.approx(0.0)
    assert np.isnan(psi([1, 2], [0, 0]))
    with pytest.raises(ValueError, match="equal-length"):
        psi([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="negative"):
        psi([1, -2], [1, 2])


def test_tied_quantiles_merge_into_one_edge() -> None:
    values = np.r_[np.zeros(800), np.arange(1.0, 201.0)]
    edges = quantile_edges(values, [i / 10 for i in range(1, 10)])
    assert edges[0] == 0.0 and edges.count(0.0) == 1
    assert all(b > a for a, b in zip(edges, edges[1:], strict=False))
    with pytest.raises(ValueError, match="no finite values"):
        quantile_edges(np.array([np.nan]), [0.5])
    with pytest.raises(ValueError, match="strictly increasing"):
        bin_counts([1.0, 1.0], np.array([0.5]))


def test_a_shifted_sample_is_flagged_and_a_fresh_one_is_not() -> None:
    rng = np.random.default_rng(0)
    reference = reference_histogram(rng.standard_normal(20_000), bins=10)
    assert psi_against(reference, rng.standard_normal(5_000)) < PSI_MODERATE
    assert psi_against(reference, rng.standard_normal(5_000) + 0.6) > PSI_MAJOR
    assert psi_against(reference, rng.standard_normal(5_000) * 2.0) > PSI_MAJOR


@given(
    arrays(np.float64, st.integers(1, 200), elements=st.floats(allow_nan=True, allow_infinity=True)),
    arrays(np.float64, st.integers(0, 200), elements=st.floats(allow_nan=True, allow_infinity=True)),
)
def test_counts_and_psi_hold_for_any_values(reference_values: np.ndarray, new_values: np.ndarray) -> None:
    finite = reference_values[np.isfinite(reference_values)]
    if finite.size == 0:
        with pytest.raises(ValueError):
            reference_histogram(reference_values, bins=10)
        return
    reference = reference_histogram(reference_values, bins=10)
    assert sum(reference["counts"]) == finite.size
    assert len(reference["counts"]) == len(reference["edges"]) + 1
    counts = bin_counts(reference["edges"], new_values)
    assert counts.sum() == np.isfinite(new_values).sum()
    value = psi(reference["counts"], counts)
    if counts.sum() == 0:
        assert np.isnan(value)
    else:
        assert value >= 0.0 and np.isfinite(value)
        assert value == pytest.approx(psi(counts, reference["counts"]))


def _psi_by_hand(expected: list[int], actual: list[int]) -> float:
    """The PSI formula written out, bin by bin, in plain Python."""
    if sum(expected) <= 0 or sum(actual) <= 0:
        return math.nan
    total = 0.0
    for e, a in zip(expected, actual, strict=True):
        e_share, a_share = max(e / sum(expected), PSI_EPSILON), max(a / sum(actual), PSI_EPSILON)
        total += (a_share - e_share) * math.log(a_share / e_share)
    return total


#: Bin counts drawn from a few lengths, so quantities often share one and are computed together.
_counts = st.sampled_from([1, 3, 12]).flatmap(
    lambda n: st.lists(st.integers(0, 10**9), min_size=n, max_size=n)
)


@given(
    st.lists(st.tuples(_counts, st.data()), min_size=1, max_size=10),
    st.integers(0, 2 * MIN_ROWS_FOR_PSI),
)
def test_an_hours_psis_are_each_quantitys_psi(quantities: list, rows: int) -> None:
    """`hour_drift` computes quantities with equal bins together (`psi_rows`): each value is
    still that quantity's PSI, whatever the mix of bin counts, zeros and sizes."""
    features, counts = {}, {}
    for i, (expected, data) in enumerate(quantities):
        features[f"V{i + 1}"] = {"edges": [0.0] * (len(expected) - 1), "counts": expected}
        if data.draw(st.booleans()):  # a quantity the hour has no counts for
            counts[f"V{i + 1}"] = data.draw(
                st.lists(st.integers(0, 10**9), min_size=len(expected), max_size=len(expected))
            )
    reference = {"features": features, "recon_error": features["V1"], "score": features["V1"]}
    counts_with = {**counts, **({"score": counts["V1"]} if "V1" in counts else {})}
    report = hour_drift(reference, counts_with, rows, 0)
    for name, value in report["psi"].items():
        wanted = counts_with.get(name)
        expected = reference["features"].get(name, features["V1"])["counts"]
        if rows < MIN_ROWS_FOR_PSI or wanted is None:
            assert value is None, name
        elif math.isnan(by_hand := _psi_by_hand(expected, wanted)):
            assert math.isnan(value), name
        else:
            assert value == pytest.approx(by_hand, rel=1e-9, abs=1e-12), name
            assert value == pytest.approx(psi(expected, wanted), rel=1e-12, abs=1e-15), name


# --------------------------------------------------------------------------- in the bundle


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    from training.pipeline import train

    return train(
        SAMPLE_PATH,
        tmp_path_factory.mktemp("m") / "bundle",
        epochs=2,
        max_rounds=60,
        threads=2,
        progress=False,
    )


def test_the_bundle_keeps_reference_histograms(trained: TrainResult) -> None:
    manifest = trained.manifest
    reference = manifest["reference"]
    splits = manifest["training"]["data"]["splits"]
    assert reference["format"] == REFERENCE_FORMAT
    assert set(reference["features"]) == set(RAW_FEATURES) - {"Time"}
    for name, histogram in reference["features"].items():
        assert histogram["stretch"] == "train", name
        assert sum(histogram["counts"]) == histogram["rows"] == splits["train"]["rows"], name
        assert len(histogram["counts"]) == len(histogram["edges"]) + 1 >= 3, name
    assert sum(reference["recon_error"]["counts"]) == splits["train"]["rows"]
    assert reference["score"]["stretch"] == "validation"
    assert sum(reference["score"]["counts"]) == splits["validation"]["rows"]
    # The expected alert rate is the one the threshold achieved where it was chosen.
    chosen = manifest["training"]["threshold_on_validation"]["ensemble"]
    assert reference["alert_rate"]["expected"] == pytest.approx(chosen["alert_rate"])
    assert reference["alert_rate"]["threshold"] == manifest["model"]["threshold"]


def test_the_bundle_says_which_rows_are_in_sample(trained: TrainResult) -> None:
    data = trained.manifest["training"]["data"]
    in_sample = data["in_sample"]
    assert in_sample["time_from"] == data["splits"]["train"]["time_min"]
    assert in_sample["time_to"] == data["splits"]["validation"]["time_max"]  # refitted on validation
    assert in_sample["time_to"] <= data["splits"]["test"]["time_min"]


def test_reference_flags_a_shifted_window_of_real_rows(trained: TrainResult) -> None:
    reference = trained.manifest["reference"]["features"]
    later = time_split(load_csv(SAMPLE_PATH)).test.raw
    column = RAW_FEATURES.index("V14")
    assert psi_against(reference["V14"], later[:, column]) < PSI_MODERATE
    shifted = later[:, column] + 0.5 * later[:, column].std()
    assert psi_against(reference["V14"], shifted) > PSI_MAJOR
