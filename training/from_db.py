"""Training data from the stream: the live run's stored rows with the labels known at a cutoff.

    stored = load_stored(database_url, until=120_000.0)
    train_from(lambda: stored.training_data(), "models/retrained", TrainConfig())

`fraudstream train --from-db [--until T]` reads the transactions the scorer stored for the
live run (`run_id` ''), in data-time order, with each one's label as the system knew it at
the cutoff: the one definition of a known label, `known_labels_as_of` (migration 0008:
the latest analyst review or chargeback decided by then, else a replayed label, else the
inline label). Rows with no known label are left out and counted.

**The cutoff.** `--until T` is data time (the `Time` column's seconds): rows with `time <= T`
are read, and the labels are those decided by the moment the stream reached T, that is
the latest `produced_at` (or, without one, `ingested_at`) of those rows. So a review or a
chargeback given after the stream passed T does not count, as it could not have been used
by a model trained then; the same rows and verdicts give the same training set whenever
the command runs. Without `--until`, every stored row and every verdict decided so far.

The rows come back as the `Dataset` that `load_csv` yields and go through the same
time-ordered 60/20/20 split and the same stages as CSV training (`training.pipeline`),
refused when there is too little to train and evaluate on (`MIN_LABELLED_ROWS`,
`MIN_FRAUDS_PER_STRETCH`).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import numpy as np
from tqdm.auto import tqdm

from core.dataset import Dataset
from core.db.schema import FEATURE_COLUMNS, LIVE_RUN
from core.db.urls import asyncpg_dsn, redacted
from core.events import first_refused_row
from core.features import RAW_FEATURES
from training.pipeline import TrainingData, split_checked

#: Fewer labelled rows than this and the scaler, the autoencoder and three stretches are noise.
MIN_LABELLED_ROWS = 1000
#: Each of train, validation and test needs this many frauds: the rounds and the threshold
#: are chosen on validation's frauds and the evaluation is read from test's; with fewer,
#: one fraud more or less moves AUPRC by tenths.
MIN_FRAUDS_PER_STRETCH = 10
#: Rows fetched per round trip (and per step of the progress bar).
CHUNK_ROWS = 10_000

assert tuple(name.lower() for name in RAW_FEATURES) == FEATURE_COLUMNS  # one column order

#: The moment the stream reached data time $1: the latest write time of the rows at or before it.
CUTOFF_MOMENT = """
SELECT max(coalesce(produced_at, ingested_at)) AS at, count(*) AS rows
FROM transactions WHERE run_id = $1 AND time <= $2
"""

#: Every stored row of the run up to the cutoff, in data-time order, with its known label at
#: `labels_as_of` (NULL when none): the one definition, `known_labels_as_of` (migration 0008).
STORED_ROWS = f"""
SELECT ARRAY[{", ".join(f"t.{name}" for name in FEATURE_COLUMNS)}] AS features,
       k.label, CASE WHEN k.decided_at IS NULL THEN 'inline' ELSE k.source END AS source
FROM transactions t
LEFT JOIN known_labels_as_of($2) k ON k.run_id = t.run_id AND k.id = t.id
WHERE t.run_id = $1 AND ($3::float8 IS NULL OR t.time <= $3)
ORDER BY t.time, t.id
"""

COUNT_ROWS = "SELECT count(*) FROM transactions WHERE run_id = $1 AND ($2::float8 IS NULL OR time <= $2)"


class NotEnoughLabels(ValueError):
    """The stored rows hold too few labelled rows or frauds to train and evaluate a model."""


@dataclass(frozen=True)
class StoredData:
    """The labelled rows read from PostgreSQL, and what the manifest says about where they came from."""

    data: Dataset
    source: dict[str, Any]

    def training_data(self) -> TrainingData:
        """Split 60/20/20 by time, refusing a stretch with fewer than `MIN_FRAUDS_PER_STRETCH` frauds."""
        try:
            split = split_checked(self.data, min_frauds=MIN_FRAUDS_PER_STRETCH)
        except ValueError as error:
            raise NotEnoughLabels(f"{error} ({self._counts()})") from None
        return TrainingData(self.data, split, self.source)

    def _counts(self) -> str:
        labels = self.source["source"]["labels"]
        return (
            f"{len(self.data)} labelled rows, {self.data.fraud_count} frauds; "
            f"{labels['unlabelled']} stored rows have no known label yet"
        )


async def cutoff_moment(conn: asyncpg.Connection, until: float | None) -> datetime:
    """When the labels are read as of: the moment the stream reached data time `until`, or now."""
    if until is None:
        return await conn.fetchval("SELECT now()")
    row = await conn.fetchrow(CUTOFF_MOMENT, LIVE_RUN, until)
    if row["at"] is None:
        raise NotEnoughLabels(f"no stored transactions at or before data time {until:g} s")
    return row["at"]


async def read_stored(
    conn: asyncpg.Connection, *, until: float | None = None, progress: bool = True
) -> tuple[Dataset, dict[str, Any]]:
    """The run's labelled rows (time-ordered) and the counts behind them, in one snapshot.

    One repeatable-read transaction, so the cutoff, the rows and their labels agree even
    while the scorer keeps writing.
    """
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        labels_as_of = await cutoff_moment(conn, until)
        total = await conn.fetchval(COUNT_ROWS, LIVE_RUN, until)
        features: list[np.ndarray] = []
        labels: list[np.ndarray] = []
        by_source: dict[str, int] = {"analyst": 0, "chargeback": 0, "replay": 0, "inline": 0}
        unlabelled = 0
        with tqdm(
            total=total, desc="stored rows", unit="row", unit_scale=True, disable=not progress, leave=False
        ) as bar:
            cursor = await conn.cursor(STORED_ROWS, LIVE_RUN, labels_as_of, until)
            while chunk := await cursor.fetch(CHUNK_ROWS):
                known = [r for r in chunk if r["label"] is not None]
                unlabelled += len(chunk) - len(known)
                for record in known:
                    by_source[record["source"]] += 1
                if known:
                    features.append(np.array([r["features"] for r in known], dtype=np.float64))
                    labels.append(np.array([r["label"] for r in known], dtype=np.int8))
                bar.update(len(chunk))
    raw = np.concatenate(features) if features else np.empty((0, len(FEATURE_COLUMNS)))
    label_array = np.concatenate(labels) if labels else np.empty(0, dtype=np.int8)
    refused = first_refused_row(raw)
    if refused is not None:  # stored rows passed the event contract; anything else is not ours to train on
        raise ValueError(f"stored row {refused} breaks the event contract; not training on it")
    source = {
        "kind": "database",
        "run_id": LIVE_RUN,
        "until": until,
        "labels_as_of": labels_as_of.isoformat(),
        "labels": {**by_source, "unlabelled": unlabelled},
        "known_label": "known_labels_as_of(labels_as_of): reviews and chargebacks over replayed "
        "and inline labels",
    }
    return Dataset(raw=raw, labels=label_array, time=raw[:, 0]), source


def check_enough(data: Dataset, unlabelled: int) -> None:
    """Refuse, saying what is there and what is needed, before any training starts."""
    needed_frauds = 3 * MIN_FRAUDS_PER_STRETCH
    if len(data) >= MIN_LABELLED_ROWS and data.fraud_count >= needed_frauds:
        return
    raise NotEnoughLabels(
        f"too few labelled rows to train on: {len(data)} labelled rows with {data.fraud_count} frauds "
        f"(at least {MIN_LABELLED_ROWS} rows and {needed_frauds} frauds, {MIN_FRAUDS_PER_STRETCH} in each "
        f"of train, validation and test); {unlabelled} stored rows have no known label yet. "
        "Wait for more verdicts or chargebacks, or give a later --until"
    )


def load_stored(database_url: str, *, until: float | None = None, progress: bool = True) -> StoredData:
    """Read the labelled rows from the database at `database_url`; refuse when there are too few."""

    async def run() -> tuple[Dataset, dict[str, Any]]:
        conn = await asyncpg.connect(asyncpg_dsn(database_url))
        try:
            return await read_stored(conn, until=until, progress=progress)
        finally:
            await conn.close()

    data, source = asyncio.run(run())
    check_enough(data, source["labels"]["unlabelled"])
    return StoredData(data, {"source": {**source, "database": redacted(database_url)}})
