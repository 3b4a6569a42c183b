"""TreeSHAP explanations with the model-space input values beside each contribution."""

from __future__ import annotations

import numpy as np

from api.schemas import Contribution
from core.ensemble import Ensemble, autoencoder_features, base_inputs, hour_of_day, model_matrix


def model_inputs(ensemble: Ensemble, raw: np.ndarray) -> np.ndarray:
    """The XGBoost input rows (scaled features, hour, autoencoder columns) for raw rows."""
    scaled = ensemble.scaler.transform(base_inputs(raw))
    ae_columns = autoencoder_features(ensemble.autoencoder, scaled, ensemble.ae_kinds)
    return model_matrix(scaled, hour_of_day(raw), ae_columns, ensemble.ae_kinds)


def contributions(ensemble: Ensemble, raw: np.ndarray, top: int | None = None) -> tuple[list, object]:
    """Per row, the contributions sorted by |value| (largest first, `top` of them), and the Explanation."""
    explanation = ensemble.explain(raw)
    inputs = model_inputs(ensemble, raw)
    names = explanation.feature_names
    rows: list[list[Contribution]] = []
    for i in range(explanation.contributions.shape[0]):
        values = explanation.contributions[i]
        order = np.argsort(-np.abs(values), kind="stable")
        if top is not None:
            order = order[:top]
        rows.append(
            [
                Contribution(feature=names[j], contribution=float(values[j]), value=float(inputs[i, j]))
                for j in order
            ]
        )
    return rows, explanation
