"""Reference histograms and the population stability index (PSI), as pure numpy functions.

A model bundle keeps, from the data it was trained on, one fixed-bin histogram per watched
quantity (`manifest["reference"]`, written by `training.reference`). Drift is then new data
counted into the same bins and compared with `psi`:

    >>> import numpy as np
    >>> ref = reference_histogram(np.arange(1000.0), bins=4)
    >>> ref["edges"], ref["counts"]
    ([249.75, 499.5, 749.25], [250, 250, 250, 250])
    >>> round(psi_against(ref, np.arange(1000.0)), 6)
    0.0
    >>> psi_against(ref, np.arange(500.0, 1500.0)) > PSI_MAJOR
    True

**The structure.** A histogram is `{"edges": [e_1, ..., e_k], "counts": [c_0, ..., c_k]}`,
plain numbers: `k` interior edges, strictly increasing, and `k + 1` counts. Bin 0 holds
`x < e_1`, bin `i` holds `e_i <= x < e_(i+1)`, the last bin holds `x >= e_k`: the outer bins
are open-ended, so every finite value of new data falls in some bin (`bin_counts`; in SQL,
PostgreSQL's `width_bucket(x, ARRAY[e_1, ..., e_k])` gives the same bin numbers). Edges
are quantiles of the reference data, so each bin starts with a similar share of rows and
PSI weighs every part of the distribution alike; tied quantiles (a value that fills more
than one decile, such as a common amount) collapse into one edge.

`manifest["reference"]` (format `fraudstream-reference/1`):

- `features`: one histogram per raw input, V1..V28 and Amount, from the training stretch.
  Time is left out: it only grows, and hour of day is constant within an hour of data, so
  either would always read as drift.
- `recon_error`: the autoencoder's mean squared reconstruction error on the training stretch.
- `score`: the fraud score on the validation stretch (`stretch` says which rows and
  `model` which model: the training stretch's scores are in-sample).
- `recon_error` and `score` get extra edges at their 99th and 99.9th percentiles, where the
  frauds are; deciles alone would put the whole alerting tail into one bin.
- `alert_rate`: `{"expected": share of validation rows at or above the threshold,
  "threshold": ..., "rows": ...}`: the alert rate live traffic is compared with.
- each histogram also says `stretch` (`train` / `validation`) and `rows`.

PSI below 0.1 is usually read as stable, 0.1-0.25 as a moderate shift, above 0.25 as a
major one (`PSI_MODERATE`, `PSI_MAJOR`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

REFERENCE_FORMAT = "fraudstream-reference/1"
PSI_MODERATE = 0.1
PSI_MAJOR = 0.25
#: Share floor for a bin with no rows on one side: PSI's log would be infinite at 0.
PSI_EPSILON = 1e-4
DECILES: tuple[float, ...] = tuple(i / 10 for i in range(1, 10))
#: Deciles plus the tail where the frauds are, for the score and the reconstruction error.
DECILES_AND_TAIL: tuple[float, ...] = (*DECILES, 0.99, 0.999)


def quantile_edges(values: np.ndarray, quantiles: Sequence[float]) -> list[float]:
    """Strictly increasing interior edges at the given quantiles of `values` (ties merged)."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        raise ValueError("cannot place histogram edges: no finite values")
    edges = np.unique(np.quantile(values, list(quantiles)))
    return [float(e) for e in edges]


def bin_counts(edges: Sequence[float], values: np.ndarray) -> np.ndarray:
    """Counts of `values` in the bins `edges` define (open-ended outer bins); non-finite values are dropped."""
    edges_array = np.asarray(edges, dtype=np.float64)
    if edges_array.ndim != 1 or np.any(np.diff(edges_array) <= 0):
        raise ValueError("edges must be a strictly increasing list of numbers")
    values = np.asarray(values, dtype=np.float64).ravel()
    values = values[np.isfinite(values)]
    index = np.searchsorted(edges_array, values, side="right")
    return np.bincount(index, minlength=edges_array.size + 1).astype(np.int64)


def reference_histogram(
    values: np.ndarray, *, bins: int | None = None, quantiles: Sequence[float] | None = None
) -> dict[str, list]:
    """`{"edges", "counts"}` of `values` with edges at `quantiles` (or `bins` equal-share bins)."""
    if quantiles is None:
        if bins is None or bins < 2:
            raise ValueError("give quantiles, or bins >= 2")
        quantiles = [i / bins for i in range(1, bins)]
    edges = quantile_edges(values, quantiles)
    return {"edges": edges, "counts": [int(c) for c in bin_counts(edges, values)]}


def psi(expected: Sequence[float] | np.ndarray, actual: Sequence[float] | np.ndarray) -> float:
    """Population stability index of `actual` counts against `expected` counts, bin by bin.

    `sum((a - e) * ln(a / e))` over the bins' shares, each share floored at `PSI_EPSILON`.
    Symmetric in its arguments, 0 for identical shares. NaN when either side has no rows.
    """
    e = np.asarray(expected, dtype=np.float64)
    a = np.asarray(actual, dtype=np.float64)
    if e.shape != a.shape or e.ndim != 1:
        raise ValueError(
            f"expected and actual counts must be equal-length lists, got {e.shape} and {a.shape}"
        )
    return float(psi_rows(e[None, :], a[None, :])[0])


def psi_rows(expected: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """`psi` of each row of two (quantities, bins) count arrays, in one pass.

    An hour's drift is ~31 PSIs of ~12 bins: a dozen numpy calls each cost more than the
    arithmetic, so `hour_drift` computes the quantities with equal bins together.
    """
    if expected.shape != actual.shape or expected.ndim != 2:
        raise ValueError(
            f"expected and actual counts must have one shape, got {expected.shape} and {actual.shape}"
        )
    if (expected < 0).any() or (actual < 0).any():
        raise ValueError("counts cannot be negative")
    e_total = expected.sum(axis=1, keepdims=True)
    a_total = actual.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        e_share = np.maximum(expected / e_total, PSI_EPSILON)
        a_share = np.maximum(actual / a_total, PSI_EPSILON)
        values = np.sum((a_share - e_share) * np.log(a_share / e_share), axis=1)
    values[(e_total[:, 0] <= 0) | (a_total[:, 0] <= 0)] = np.nan
    return values


def psi_against(reference: Mapping[str, Any], values: np.ndarray) -> float:
    """PSI of raw `values` against one reference histogram (`{"edges", "counts"}`)."""
    return psi(reference["counts"], bin_counts(reference["edges"], values))


#: Fewer rows than this in an hour and its PSI is not reported: with ~10 bins, PSI of an
#: unshifted sample of n rows is about (bins - 1) / n by chance alone (0.03 at 300 rows),
#: so below a few hundred rows sampling noise alone approaches the 0.1 threshold.
MIN_ROWS_FOR_PSI = 300


def psi_level(value: float | None) -> str | None:
    """`stable` (< 0.1), `moderate` (0.1-0.25) or `major` (>= 0.25); None when not computed."""
    if value is None or not np.isfinite(value):
        return None
    if value >= PSI_MAJOR:
        return "major"
    return "moderate" if value >= PSI_MODERATE else "stable"


def hour_drift(
    reference: Mapping[str, Any], counts: Mapping[str, Sequence[int]], rows: int, alerts: int
) -> dict[str, Any]:
    """One hour of data against a bundle's reference: PSI per watched quantity, the alert rate.

    `counts` maps each quantity (`V1`..`V28`, `Amount`, `recon_error`, `score`) to its counts
    in the reference's bins (the rollup's shape: one row per quantity and bin). With fewer
    than `MIN_ROWS_FOR_PSI` rows, no PSI is given (None) and `enough_rows` says why.
    """
    histograms = {
        **reference["features"],
        "recon_error": reference["recon_error"],
        "score": reference["score"],
    }
    enough = rows >= MIN_ROWS_FOR_PSI
    values: dict[str, float | None] = dict.fromkeys(histograms)
    by_bins: dict[int, list[str]] = {}  # the quantities to compute, grouped by their number of bins
    for name, histogram in histograms.items():
        actual = counts.get(name)
        if enough and actual is not None:
            if len(actual) != len(histogram["counts"]):
                raise ValueError(f"{name}: {len(actual)} counts for {len(histogram['counts'])} bins")
            by_bins.setdefault(len(actual), []).append(name)
    for names in by_bins.values():
        computed = psi_rows(
            np.array([histograms[name]["counts"] for name in names], dtype=np.float64),
            np.array([counts[name] for name in names], dtype=np.float64),
        )
        values.update(zip(names, computed.tolist(), strict=True))
    expected = reference.get("alert_rate", {}).get("expected")
    return {
        "rows": rows,
        "enough_rows": enough,
        "psi": values,
        "level": {name: psi_level(value) for name, value in values.items()},
        "alert_rate": alerts / rows if rows else None,
        "expected_alert_rate": expected,
    }
