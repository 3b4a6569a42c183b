"""TreeSHAP explanations with the model-space input values beside each contribution."""

from __future__ import annotations

import asyncio
from collections import OrderedDict

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


#: Rows whose explanations are kept (a few alert pages of every analyst; ~40 contributions each).
MEMO_ROWS = 4096


class ExplanationMemo:
    """The stored rows' TreeSHAP contributions, kept per (model version, run, row id).

    A stored row's inputs never change, so its explanation by one model version never
    does: the review queue and the alert list explain the same top alerts on every
    refresh, and recomputing them was most of those reads (`bench.scale`: the queue's p50).
    Bounded, least recently used out first. Misses are explained in a worker thread
    (XGBoost releases the GIL), so the event loop keeps serving meanwhile.
    """

    def __init__(self, rows: int = MEMO_ROWS) -> None:
        self.rows = rows
        self._kept: OrderedDict[tuple[str, str, str], list[Contribution]] = OrderedDict()
        self.hits = self.misses = 0

    async def top(
        self, ensemble: Ensemble, run_id: str, ids: list[str], raw: np.ndarray, top: int
    ) -> list[list[Contribution]]:
        """Each row's `top` contributions by |value|; `raw[i]` holds the inputs of `ids[i]`."""
        keys = [(ensemble.version, run_id, row_id) for row_id in ids]
        found = {key: self._kept[key] for key in keys if key in self._kept}  # before any await
        missing = [i for i, key in enumerate(keys) if key not in found]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        if missing:
            explained, _ = await asyncio.to_thread(contributions, ensemble, raw[missing])
            found.update((keys[i], row) for i, row in zip(missing, explained, strict=True))
        for key in keys:
            self._kept[key] = found[key]
            self._kept.move_to_end(key)
        while len(self._kept) > self.rows:
            self._kept.popitem(last=False)
        return [found[key][:top] for key in keys]
