"""The analytics bins: fixed, versioned bin edges for every histogram the rollups keep.

The API's distributions, model curves and latency percentiles are read from rollups
(migration 0009) that count each stored row into fixed bins as it arrives, so a bin must
mean the same thing for every row ever stored. The edges are frozen here (`BINS_VERSION`)
and copied into PostgreSQL's `analytics_bins` table by the migration that created the
rollups; a change of edges is a new version with a migration of its own.

**Bins.** Like `core.drift`, a histogram is described by its *interior* edges
`e_1 < ... < e_k`: bin 0 holds `x < e_1` (the underflow bin), bin `i` holds
`e_i <= x < e_(i+1)`, bin `k` holds `x >= e_k` (the overflow bin). PostgreSQL's
`width_bucket(x, ARRAY[e_1, ..., e_k])` and `np.searchsorted(edges, x, side="right")`
give the same bin numbers, comparison for comparison, so the rollups kept by numpy and
any count made in SQL agree exactly.

    >>> b = QUANTITY_BINS["v14"]
    >>> b.count, b.edges[0], b.edges[-1]
    (102, -18.0, 7.0)
    >>> b.index(np.array([-100.0, -18.0, -17.9, 6.99, 7.0])).tolist()
    [0, 1, 1, 100, 101]
    >>> SCORE_BINS.count, SCORE_BINS.lower(1079), LATENCY_BINS.upper(LATENCY_BINS.index(np.array([50.0]))[0])
    (1080, 0.999, 50.12)

- **Inputs V1..V28**: equal-width bins over a fixed robust range taken from the Kaggle
  data's spread (the 0.01% and 99.99% quantiles of all rows widened to hold the 1% and 99%
  quantiles of the frauds, rounded out to whole numbers), 100-184 bins each with a width
  that is a power of two (0.5 ... 0.03125), so every edge is exact in binary floating point.
  Less than 0.02% of the Kaggle rows fall in the outer bins.
- **Amount** and the **reconstruction error**: log-spaced, 20 bins per decade (edges
  `10 ** (k / 20)` rounded to 4 significant digits), amount from 0.01 to 100,000, the error
  from 0.0001 to 10,000; an amount of 0 is in the underflow bin.
- **Score**: 1000 equal bins on [0, 1] (edges 0.001 ... 0.999; 1.0 is in the last bin),
  the first of them split further into log-spaced bins from 1e-7 (20 per decade): most
  normal rows score far below 0.001, and the model curves (ROC AUC above all) need their
  order against the missed frauds there. 1080 bins.
- **Latency** (ms, producer to stored row): log-spaced, 20 bins per decade from 0.1 ms to
  100 s. A percentile read from these counts is the geometric middle of the bin holding
  the row of that rank, so it is within a factor `10 ** (1 / 40)` (5.9%) of the exact
  value; the underflow bin (< 0.1 ms, clock skew included) reads as 0.1 ms.

Hour of day and data time are not binned here: the rollups count rows per hour of data
time, which gives both.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

from core.features import PCA_COLUMNS

#: Bump (with a migration that rewrites `analytics_bins` and the rollups) whenever an edge changes.
BINS_VERSION = 1

#: (low, high, width) of each V feature's equal-width range; see the module docstring.
V_RANGES: Mapping[str, tuple[int, int, float]] = {
    "V1": (-32, 3, 0.25),
    "V2": (-35, 17, 0.5),
    "V3": (-31, 4, 0.25),
    "V4": (-5, 12, 0.125),
    "V5": (-21, 18, 0.25),
    "V6": (-12, 14, 0.25),
    "V7": (-32, 22, 0.5),
    "V8": (-38, 18, 0.5),
    "V9": (-10, 9, 0.125),
    "V10": (-23, 13, 0.25),
    "V11": (-4, 12, 0.125),
    "V12": (-18, 5, 0.125),
    "V13": (-4, 4, 0.0625),
    "V14": (-18, 7, 0.25),
    "V15": (-4, 4, 0.0625),
    "V16": (-13, 5, 0.125),
    "V17": (-23, 7, 0.25),
    "V18": (-10, 4, 0.125),
    "V19": (-4, 5, 0.0625),
    "V20": (-18, 13, 0.25),
    "V21": (-14, 28, 0.25),
    "V22": (-9, 5, 0.125),
    "V23": (-17, 13, 0.25),
    "V24": (-3, 4, 0.0625),
    "V25": (-4, 4, 0.0625),
    "V26": (-2, 3, 0.03125),
    "V27": (-7, 6, 0.125),
    "V28": (-7, 10, 0.125),
}


@dataclass(frozen=True)
class Bins:
    """Fixed bins of one quantity: interior `edges`, open-ended outer bins (see the module docstring)."""

    name: str
    edges: tuple[float, ...]
    scale: Literal["linear", "log"]

    @property
    def count(self) -> int:
        """Number of bins, the two outer ones included."""
        return len(self.edges) + 1

    def index(self, values: np.ndarray) -> np.ndarray:
        """The bin of each value (as PostgreSQL's `width_bucket(x, edges)`)."""
        return np.searchsorted(np.asarray(self.edges), values, side="right")

    def lower(self, i: int) -> float:
        """Lower edge of bin `i` (-inf for the underflow bin)."""
        return -math.inf if i == 0 else self.edges[i - 1]

    def upper(self, i: int) -> float:
        """Upper edge of bin `i` (+inf for the overflow bin)."""
        return math.inf if i >= len(self.edges) else self.edges[i]


def _linear(name: str, low: float, high: float, width: float) -> Bins:
    steps = round((high - low) / width)
    return Bins(name, tuple(low + k * width for k in range(steps + 1)), "linear")


def _log(name: str, low_exponent: int, high_exponent: int) -> Bins:
    """Edges 10 ** (k / 20) for k in [20 * low_exponent, 20 * high_exponent], 4 significant digits."""
    return Bins(
        name,
        tuple(float(f"{10 ** (k / 20):.4g}") for k in range(20 * low_exponent, 20 * high_exponent + 1)),
        "log",
    )


#: Quantity name (as in the rollup tables: lower case) -> its bins, in storage order.
QUANTITY_BINS: Mapping[str, Bins] = {
    **{name.lower(): _linear(name.lower(), *V_RANGES[name]) for name in PCA_COLUMNS},
    "amount": _log("amount", -2, 5),
    "recon_error": _log("recon_error", -4, 4),
    "score": Bins(
        "score",
        tuple(float(f"{10 ** (k / 20):.4g}") for k in range(-140, -60))
        + tuple(k / 1000 for k in range(1, 1000)),
        "linear",
    ),
}
#: The quantities the rollups histogram, in order: V1..V28, amount (the model's inputs), then its outputs.
QUANTITIES: tuple[str, ...] = tuple(QUANTITY_BINS)
INPUT_QUANTITIES: tuple[str, ...] = QUANTITIES[:29]
SCORE_BINS: Bins = QUANTITY_BINS["score"]
LATENCY_BINS: Bins = _log("latency_ms", -1, 5)
#: A latency percentile read from LATENCY_BINS is within this factor of the exact one: the widest
#: bin's half-width in log terms. Not 10 ** (1 / 40): the edges are rounded to 4 digits, so a bin
#: such as [1995, 2239] is a little wider than 10 ** (1 / 20), and a value just above 1995 read as
#: the bin's geometric middle is up to 1.0594x off.
LATENCY_ERROR_FACTOR = max(
    math.sqrt(high / low) for low, high in zip(LATENCY_BINS.edges, LATENCY_BINS.edges[1:], strict=False)
)


def percentile_from_counts(bins: Bins, counts: np.ndarray, q: float) -> float | None:
    """The `q`-th percentile (0-100, nearest rank) of the values counted in `bins`, as the geometric
    middle of the bin holding that rank (log bins; the arithmetic middle for linear ones).

    None when nothing is counted. The outer bins read as their finite edge.
    """
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    if total <= 0:
        return None
    rank = max(1, math.ceil(q / 100 * total))
    i = int(np.searchsorted(np.cumsum(counts), rank, side="left"))
    low, high = bins.lower(i), bins.upper(i)
    if not math.isfinite(low):
        return high
    if not math.isfinite(high):
        return low
    return math.sqrt(low * high) if bins.scale == "log" and low > 0 else (low + high) / 2
