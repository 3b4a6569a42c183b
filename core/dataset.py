"""The Kaggle CSV schema and access to the data set, validated once at the boundary.

Two readers, for two jobs:

- `load_csv` reads a whole file into numpy for training and backtests. It is strict: a
  file with a missing, extra or non-numeric column, a NaN/inf, a value the event contract
  refuses (`core.events.feature_problem`: negative Time/Amount, a magnitude beyond
  ±1e9) or a label other than 0/1 is refused with a `CsvSchemaError` that names the
  column (and the row), because a model trained on silently coerced data is worse than
  no model.
- `iter_csv_rows` streams a file row by row for the producer. The header is checked up
  front (a wrong header means the wrong file, so it raises), but a bad row is reported
  with its number and reason and the reader carries on, so one broken line does not stop
  a replay.

Row numbers are 1-based over data rows (the header is row 0), so row N is line N + 1 of
the file.

    >>> ds = load_csv(SAMPLE_PATH)
    >>> ds.raw.shape, int(ds.labels.sum())
    ((28930, 30), 492)
"""

from __future__ import annotations

import csv
import gzip
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import pandas as pd

from core.events import feature_problem, first_refused_row
from core.features import CSV_COLUMNS, LABEL_COLUMN, RAW_FEATURES

#: The sample shipped with the repository (all frauds + every 10th normal row).
SAMPLE_PATH = Path(__file__).resolve().parents[1] / "data" / "creditcard-sample.csv.gz"

#: Where `fraudstream data fetch` stores the full Kaggle file (relative to the working directory).
DEFAULT_FULL_PATH = Path("data/creditcard.csv")

#: One row from `iter_csv_rows`: (row number, 30 values or None, label or None, error or None).
CsvRow = tuple[int, tuple[float, ...] | None, int | None, str | None]


class CsvSchemaError(ValueError):
    """The file does not follow the Kaggle credit-card schema; the message names the column."""


@dataclass(frozen=True)
class Dataset:
    """Labelled transactions as numpy arrays, rows in file order.

    `raw` has the columns of `RAW_FEATURES` (Time, V1..V28, Amount) as float64; that is the
    layout `Ensemble.score` takes. `time` is the Time column (seconds from the first
    transaction), kept separately because splits and backtests are by time.
    """

    raw: np.ndarray
    labels: np.ndarray
    time: np.ndarray

    def __len__(self) -> int:
        return int(self.raw.shape[0])

    def take(self, index: np.ndarray | slice) -> Dataset:
        """The rows selected by `index` (a slice, integer positions or a boolean mask)."""
        raw = self.raw[index]
        return Dataset(raw=raw, labels=self.labels[index], time=raw[:, 0])

    @property
    def fraud_count(self) -> int:
        return int(self.labels.sum())


def _open_text(path: Path) -> IO[str]:
    if path.suffix == ".gz":
        return gzip.open(path, "rt", newline="")
    return open(path, newline="")  # noqa: SIM115 - the caller closes it


def check_header(columns: list[str], *, require_label: bool = True) -> None:
    """Refuse a header with a missing or unexpected column, naming it.

    Column order is not checked: the readers select columns by name.
    """
    expected = list(CSV_COLUMNS) if require_label else list(RAW_FEATURES)
    optional = set() if require_label else {LABEL_COLUMN}
    seen: set[str] = set()
    for name in columns:
        if name in seen:
            raise CsvSchemaError(f"column {name!r} appears more than once in the header")
        seen.add(name)
    missing = [c for c in expected if c not in seen]
    if missing:
        raise CsvSchemaError(f"missing column {missing[0]!r} (missing: {', '.join(missing)})")
    extra = [c for c in columns if c not in expected and c not in optional]
    if extra:
        raise CsvSchemaError(f"unexpected column {extra[0]!r} (expected exactly: {', '.join(CSV_COLUMNS)})")


def load_csv(path: str | Path) -> Dataset:
    """Read a whole Kaggle-format CSV (.csv or .csv.gz) and validate every value.

    Raises `FileNotFoundError` for a missing file and `CsvSchemaError` for anything that
    does not follow the schema, naming the column and the first offending row.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such data file: {path}")
    try:
        frame = pd.read_csv(path, dtype=None, low_memory=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as exc:
        raise CsvSchemaError(f"{path}: not a readable CSV file: {exc}") from exc
    check_header([str(c) for c in frame.columns])
    if frame.empty:
        raise CsvSchemaError(f"{path}: no data rows")

    columns: dict[str, np.ndarray] = {}
    for name in CSV_COLUMNS:
        series = frame[name]
        if not pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series):
            coerced = pd.to_numeric(series, errors="coerce")
            bad = np.flatnonzero(coerced.isna().to_numpy() & series.notna().to_numpy())
            if bad.size:
                row = int(bad[0]) + 1
                raise CsvSchemaError(
                    f"column {name!r} has a non-numeric value {series.iloc[bad[0]]!r} at row {row}"
                )
            series = coerced
        values = series.to_numpy(dtype=np.float64, na_value=np.nan)
        not_finite = np.flatnonzero(~np.isfinite(values))
        if not_finite.size:
            row = int(not_finite[0]) + 1
            raise CsvSchemaError(
                f"column {name!r} has a missing or non-finite value at row {row} "
                f"({not_finite.size} such rows)"
            )
        columns[name] = values

    labels = columns[LABEL_COLUMN]
    bad_label = np.flatnonzero((labels != 0) & (labels != 1))
    if bad_label.size:
        row = int(bad_label[0]) + 1
        raise CsvSchemaError(
            f"column {LABEL_COLUMN!r} must be 0 or 1, got {labels[bad_label[0]]!r} at row {row}"
        )

    raw = np.column_stack([columns[name] for name in RAW_FEATURES])
    refused = first_refused_row(raw)
    if refused is not None:  # the event contract's rules: a row we train on is one the scorer accepts
        problem = feature_problem(raw[refused].tolist())
        assert problem is not None
        position, _, text = problem
        raise CsvSchemaError(f"column {RAW_FEATURES[position]!r} {text} at row {refused + 1}")
    return Dataset(raw=raw, labels=labels.astype(np.int8), time=raw[:, 0])


def _parse_float(text: str) -> float:
    """Parse one field; the Kaggle file quotes some numbers, csv has already unquoted them."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("not finite")
    return value


def iter_csv_rows(path: str | Path) -> Iterator[CsvRow]:
    """Stream a Kaggle-format CSV row by row, reporting bad rows instead of stopping.

    Yields `(row_number, values, label, error)`: for a good row `values` holds the 30
    `RAW_FEATURES` floats, `label` is 0/1 (None when the file has no Class column) and
    `error` is None; for a bad row `values` and `label` are None and `error` says what is
    wrong, naming the column. The header is validated before the first row is yielded:
    a file with a missing or unexpected column raises `CsvSchemaError`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such data file: {path}")
    with _open_text(path) as handle:
        reader = csv.reader(handle)
        try:
            header = next(reader)
        except StopIteration:
            raise CsvSchemaError(f"{path}: empty file, no header") from None
        check_header(header, require_label=False)
        positions = [header.index(name) for name in RAW_FEATURES]
        label_position = header.index(LABEL_COLUMN) if LABEL_COLUMN in header else None
        width = len(header)

        for row_number, fields in enumerate(reader, start=1):
            if not fields:
                yield row_number, None, None, "empty line"
                continue
            if len(fields) != width:
                yield row_number, None, None, f"expected {width} fields, got {len(fields)}"
                continue
            values: list[float] = []
            error: str | None = None
            for name, position in zip(RAW_FEATURES, positions, strict=True):
                text = fields[position].strip()
                try:
                    values.append(_parse_float(text))
                except ValueError:
                    error = f"column {name!r}: not a finite number: {text!r}"
                    break
            if error is None:
                problem = feature_problem(values)
                if problem is not None:
                    error = f"column {RAW_FEATURES[problem[0]]!r}: {problem[2]}"
            if error is not None:
                yield row_number, None, None, error
                continue
            label: int | None = None
            if label_position is not None:
                text = fields[label_position].strip()
                if text not in ("0", "1"):
                    yield row_number, None, None, f"column {LABEL_COLUMN!r}: must be 0 or 1, got {text!r}"
                    continue
                label = int(text)
            yield row_number, tuple(values), label, None
