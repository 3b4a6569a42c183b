"""Names of the Kaggle columns and of the event fields, in one place.

The raw feature order below is the contract between the producer, the scorer, the API
and the model bundle: every numpy batch handed to `Ensemble.score` has these columns,
in this order.
"""

from __future__ import annotations

PCA_COLUMNS: tuple[str, ...] = tuple(f"V{i}" for i in range(1, 29))

#: Columns of the Kaggle CSV, in file order.
CSV_COLUMNS: tuple[str, ...] = ("Time", *PCA_COLUMNS, "Amount", "Class")

#: The numeric inputs of one transaction as they appear in the CSV (no label).
RAW_FEATURES: tuple[str, ...] = ("Time", *PCA_COLUMNS, "Amount")

#: The same inputs as event / database field names (lower-case time and amount).
EVENT_FEATURES: tuple[str, ...] = ("time", *PCA_COLUMNS, "amount")

LABEL_COLUMN = "Class"
