"""Time-ordered train / validation / test split.

Never random: fraud patterns drift, and a random split lets the model see the future (and
exact duplicates of test rows), which flatters every metric. The rows are ordered by Time
(stable, so the file order breaks ties) and cut 60/20/20 by count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from core.dataset import Dataset

FRACTIONS: tuple[float, float, float] = (0.6, 0.2, 0.2)


@dataclass(frozen=True)
class Split:
    train: Dataset
    validation: Dataset
    test: Dataset

    def describe(self) -> dict[str, Any]:
        """Row counts, fraud counts and Time range of each part, for the manifest."""
        parts = {"train": self.train, "validation": self.validation, "test": self.test}
        return {
            name: {
                "rows": len(part),
                "frauds": part.fraud_count,
                "time_min": float(part.time.min()),
                "time_max": float(part.time.max()),
            }
            for name, part in parts.items()
        }


def time_split(data: Dataset, fractions: tuple[float, float, float] = FRACTIONS) -> Split:
    """Cut `data` into train / validation / test by Time order, with the given row fractions."""
    if len(fractions) != 3 or any(f <= 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-9:
        raise ValueError(f"fractions must be three positive numbers summing to 1, got {fractions}")
    n = len(data)
    if n < 10:
        raise ValueError(f"need at least 10 rows to split, got {n}")
    order = np.argsort(data.time, kind="stable")
    cut1 = int(round(n * fractions[0]))
    cut2 = int(round(n * (fractions[0] + fractions[1])))
    return Split(
        train=data.take(order[:cut1]),
        validation=data.take(order[cut1:cut2]),
        test=data.take(order[cut2:]),
    )
