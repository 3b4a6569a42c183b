"""The CSV schema is enforced at the boundary, with errors that name the column and row."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import numpy as np
import pytest

from core.dataset import SAMPLE_PATH, CsvSchemaError, iter_csv_rows, load_csv
from core.features import CSV_COLUMNS, RAW_FEATURES


def _row(time: float, label: int = 0, **overrides: str) -> list[str]:
    values = {name: f"{0.1 * i:.3f}" for i, name in enumerate(CSV_COLUMNS)}
    values["Time"] = str(time)
    values["Amount"] = "12.5"
    values["Class"] = f'"{label}"'
    values.update(overrides)
    return [values[name] for name in CSV_COLUMNS]


def _write(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    lines = [",".join(f'"{h}"' for h in header)] + [",".join(r) for r in rows]
    text = "\n".join(lines) + "\n"
    if path.suffix == ".gz":
        with gzip.open(path, "wt") as handle:
            handle.write(text)
    else:
        path.write_text(text)
    return path


def test_sample_loads_with_expected_shape_and_types() -> None:
    data = load_csv(SAMPLE_PATH)
    assert data.raw.shape == (28_930, len(RAW_FEATURES))
    assert data.raw.dtype == np.float64
    assert data.labels.dtype == np.int8
    assert data.fraud_count == 492
    assert np.array_equal(data.time, data.raw[:, 0])
    assert np.all(np.diff(data.time) >= 0)


def test_plain_csv_and_gzip_read_the_same(tmp_path: Path) -> None:
    rows = [_row(0), _row(1, label=1), _row(2)]
    a = load_csv(_write(tmp_path / "a.csv", list(CSV_COLUMNS), rows))
    b = load_csv(_write(tmp_path / "b.csv.gz", list(CSV_COLUMNS), rows))
    assert np.array_equal(a.raw, b.raw)
    assert a.labels.tolist() == [0, 1, 0]
    assert a.raw[1, -1] == 12.5


def test_missing_column_is_named(tmp_path: Path) -> None:
    header = [c for c in CSV_COLUMNS if c != "V7"]
    rows = [[v for c, v in zip(CSV_COLUMNS, _row(0), strict=True) if c != "V7"]]
    with pytest.raises(CsvSchemaError, match="missing column 'V7'"):
        load_csv(_write(tmp_path / "d.csv", header, rows))


def test_extra_column_is_named(tmp_path: Path) -> None:
    header = [*CSV_COLUMNS, "Merchant"]
    with pytest.raises(CsvSchemaError, match="unexpected column 'Merchant'"):
        load_csv(_write(tmp_path / "d.csv", header, [[*_row(0), "7"]]))


def test_non_numeric_value_names_column_and_row(tmp_path: Path) -> None:
    rows = [_row(0), _row(1), _row(2, V12="abc")]
    with pytest.raises(CsvSchemaError, match=r"column 'V12' has a non-numeric value 'abc' at row 3"):
        load_csv(_write(tmp_path / "d.csv", list(CSV_COLUMNS), rows))


@pytest.mark.parametrize("bad", ["", "nan", "inf"])
def test_missing_or_non_finite_value_names_column(tmp_path: Path, bad: str) -> None:
    rows = [_row(0), _row(1, Amount=bad)]
    with pytest.raises(CsvSchemaError, match=r"column 'Amount' has a missing or non-finite value at row 2"):
        load_csv(_write(tmp_path / "d.csv", list(CSV_COLUMNS), rows))


def test_label_must_be_zero_or_one(tmp_path: Path) -> None:
    rows = [_row(0), _row(1, Class="2")]
    with pytest.raises(CsvSchemaError, match="column 'Class' must be 0 or 1"):
        load_csv(_write(tmp_path / "d.csv", list(CSV_COLUMNS), rows))


def test_iter_csv_rows_reports_bad_rows_and_carries_on(tmp_path: Path) -> None:
    rows = [
        _row(0),
        _row(1, V3="x1"),
        _row(2, label=1),
        _row(3, V5="nan"),
        _row(4)[:-3],
        _row(5, Class="7"),
        _row(6),
    ]
    path = _write(tmp_path / "d.csv.gz", list(CSV_COLUMNS), rows)
    out = list(iter_csv_rows(path))
    assert [r[0] for r in out] == [1, 2, 3, 4, 5, 6, 7]
    good = {r[0]: r for r in out if r[3] is None}
    bad = {r[0]: r[3] for r in out if r[3] is not None}
    assert sorted(good) == [1, 3, 7]
    assert "'V3'" in bad[2] and "x1" in bad[2]
    assert "'V5'" in bad[4]
    assert "expected 31 fields, got 28" in bad[5]
    assert "'Class'" in bad[6]
    number, values, label, error = good[3]
    assert label == 1 and error is None
    assert values is not None and len(values) == 30 and values[0] == 2.0 and values[-1] == 12.5
    assert all(r[1] is None and r[2] is None for r in out if r[3] is not None)


def test_iter_csv_rows_matches_load_csv_on_the_sample() -> None:
    data = load_csv(SAMPLE_PATH)
    rows = list(iter_csv_rows(SAMPLE_PATH))
    assert len(rows) == len(data)
    assert all(r[3] is None for r in rows)
    assert np.array_equal(np.array([r[1] for r in rows[:500]]), data.raw[:500])
    assert [r[2] for r in rows] == data.labels.tolist()


def test_iter_csv_rows_refuses_a_bad_header_up_front(tmp_path: Path) -> None:
    header = [c for c in CSV_COLUMNS if c != "Amount"]
    path = _write(tmp_path / "d.csv", header, [_row(0)[:-2] + ['"0"']])
    with pytest.raises(CsvSchemaError, match="missing column 'Amount'"):
        next(iter_csv_rows(path))


def test_iter_csv_rows_without_label_column(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.csv", list(RAW_FEATURES), [_row(0)[:-1]])
    [(number, values, label, error)] = list(iter_csv_rows(path))
    assert (number, label, error) == (1, None, None)
    assert values is not None and len(values) == 30


@pytest.mark.parametrize(
    ("overrides", "column", "problem"),
    [
        ({"Time": "-1"}, "Time", "must be >= 0, got -1.0"),
        ({"Amount": "-0.5"}, "Amount", "must be >= 0, got -0.5"),
        ({"V4": "1e10"}, "V4", "must be within ±1e+09"),
        ({"V28": "-2e9"}, "V28", "must be within ±1e+09"),
    ],
)
def test_both_readers_refuse_what_the_event_contract_refuses(
    tmp_path: Path, overrides: dict, column: str, problem: str
) -> None:
    """A row the producer could send is a row the scorer accepts: the CSV readers apply the event rules."""
    row = _row(1)
    for name, value in overrides.items():
        row[CSV_COLUMNS.index(name)] = value
    path = _write(tmp_path / "d.csv", list(CSV_COLUMNS), [_row(0), row, _row(2)])
    with pytest.raises(CsvSchemaError, match=re.escape(f"column '{column}' {problem}") + ".* at row 2"):
        load_csv(path)
    out = list(iter_csv_rows(path))
    assert [r[3] is None for r in out] == [True, False, True]
    assert out[1][3].startswith(f"column '{column}': {problem}")


def test_values_at_the_bound_are_accepted_by_both_readers(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.csv", list(CSV_COLUMNS), [_row(0, V4="1e9", V5="-1e9")])
    assert load_csv(path).raw[0, 4] == 1e9
    assert next(iter_csv_rows(path))[3] is None
