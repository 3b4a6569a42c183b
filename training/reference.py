"""The bundle's reference histograms for drift (`manifest["reference"]`; `core.drift` defines it).

Built from what training already holds: the raw training rows, the autoencoder's error on
them, and the train-only model's validation scores (the scores the threshold was chosen on).
The shipped model may have been refitted on train + validation; its own scores on those
rows would be in-sample, so they are not the reference.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from core.drift import DECILES, DECILES_AND_TAIL, REFERENCE_FORMAT, reference_histogram
from core.features import RAW_FEATURES

#: Raw inputs watched for drift: everything but Time (see `core.drift`).
WATCHED_FEATURES: tuple[str, ...] = tuple(name for name in RAW_FEATURES if name != "Time")


def input_reference(train_raw: np.ndarray, train_recon_error: np.ndarray) -> dict[str, Any]:
    """The histograms that need only the training stretch: every watched input and the reconstruction error."""
    features = {}
    for name in WATCHED_FEATURES:
        column = train_raw[:, RAW_FEATURES.index(name)]
        features[name] = {
            **reference_histogram(column, quantiles=DECILES),
            "stretch": "train",
            "rows": int(column.size),
        }
    return {
        "format": REFERENCE_FORMAT,
        "features": features,
        "recon_error": {
            **reference_histogram(train_recon_error, quantiles=DECILES_AND_TAIL),
            "stretch": "train",
            "rows": int(train_recon_error.size),
        },
    }


def score_reference(validation_scores: np.ndarray, threshold: float, score_model: str) -> dict[str, Any]:
    """The score's histogram and the expected alert rate, from the validation stretch."""
    alerts = int(np.sum(validation_scores >= threshold))
    return {
        "score": {
            **reference_histogram(validation_scores, quantiles=DECILES_AND_TAIL),
            "stretch": "validation",
            "model": score_model,
            "rows": int(validation_scores.size),
        },
        "alert_rate": {
            "expected": alerts / max(int(validation_scores.size), 1),
            "threshold": float(threshold),
            "stretch": "validation",
            "model": score_model,
            "rows": int(validation_scores.size),
        },
    }
