"""`fraudstream train --from-db --until T`: the stored rows only, with the labels known at T.

Against the real PostgreSQL: a quarter of the shipped sample is stored through the scorer's
own write (`store_scored`), as a replay at real pace would store it (`produced_at` = data
time after a fixed start), and verdicts through the labels agent's statement
(`store_labels`), some decided before the stream reached T and some after. The expected
training set is worked out here in numpy, from the rule as users read it, and compared
with what the database gives and what the command trained on and registered.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import numpy as np
import pytest

from core.bundle import read_manifest
from core.dataset import SAMPLE_PATH, Dataset, load_csv
from core.db.labels import store_labels
from core.db.registry import model_events, registry_head
from core.db.store import ScoredRows, store_scored
from core.labels import build_label
from training.cli import main
from training.from_db import MIN_FRAUDS_PER_STRETCH, read_stored
from training.split import time_split

ROOT = Path(__file__).resolve().parents[1]
START = 1_764_000_000.0  # the replay's wall clock at data time 0
FAST = ["--epochs", "1", "--max-rounds", "30", "--threads", "1", "--quiet"]


@dataclass(frozen=True)
class Stream:
    database_url: str
    until: float
    expected: Dataset  # the labelled rows at `until`, as the rule says
    inline: Dataset  # the rows stored with their label: all that is known before any verdict
    counts: dict[str, int]  # by where the label came from, and the unlabelled


def _verdict(tx: str, label: int, source: str, at: float, who: str = "alice"):
    return build_label(transaction_id=tx, label=label, source=source, who=who, decided_at=at)


def _stored(ids: list[str], raw: np.ndarray, labels: list[int | None], run_id: str | None) -> ScoredRows:
    n = len(ids)
    return ScoredRows(
        ids=ids,
        features=raw,
        labels=labels,
        run_ids=[run_id] * n,
        produced_at=(START + raw[:, 0]).tolist(),
        model_version="champion-v",
        score=np.zeros(n),
        recon_error=np.zeros(n),
        alert=np.zeros(n, dtype=bool),
    )


@pytest.fixture(scope="module")
def stream(infra) -> Iterator[Stream]:
    data = load_csv(SAMPLE_PATH)
    order = np.argsort(data.time, kind="stable")[::4]  # every 4th row by time: 7,233 rows
    raw, inline = data.raw[order], data.labels[order].astype(int)
    n = len(order)
    cut = int(n * 0.85)
    until = float(raw[cut - 1, 0])
    assert raw[cut, 0] > until  # the rows after the cutoff are strictly later
    ids = [f"tx-{i:05d}" for i in range(n)]
    before, after = START + until - 30.0, START + until + 30.0  # around the moment the stream reached T

    stored_label: list[int | None] = inline.tolist()
    expected: list[int | None] = inline.tolist()
    early = np.arange(cut)
    normal = [int(i) for i in early if inline[i] == 0]
    fraud = [int(i) for i in early if inline[i] == 1]
    verdicts = []
    # Rows replayed without their label: unknown until a verdict says otherwise.
    unlabelled = normal[5::40]
    for i in unlabelled:
        stored_label[i] = expected[i] = None
    # A review decided before T overrides the inline label, either way.
    for i in normal[-300::60]:
        verdicts.append(_verdict(ids[i], 1, "analyst", before))
        expected[i] = 1
    for i in fraud[-2:]:
        verdicts.append(_verdict(ids[i], 0, "analyst", before))
        expected[i] = 0
    # A verdict decided after the stream passed T does not count: the inline label stands...
    for i in fraud[-8:-2]:
        verdicts.append(_verdict(ids[i], 0, "analyst", after, who="bob"))
    # ... nor does a review that overturns an earlier one after T.
    for i in normal[-301::90]:
        verdicts.append(_verdict(ids[i], 1, "analyst", before))
        verdicts.append(_verdict(ids[i], 0, "analyst", after, who="bob"))
        expected[i] = 1
    # Chargebacks label unlabelled rows, when they came in time.
    for i in unlabelled[:4]:
        verdicts.append(_verdict(ids[i], 1, "chargeback", before, who="card-network"))
        expected[i] = 1
    for i in unlabelled[4:8]:
        verdicts.append(_verdict(ids[i], 1, "chargeback", after, who="card-network"))
    # Rows after T never count, whatever is known of them.
    for i in range(cut, cut + 3):
        verdicts.append(_verdict(ids[i], 1, "analyst", before))

    analysts = {e.transaction_id for e in verdicts if e.source == "analyst" and e.decided_at <= before}
    chargebacks = {e.transaction_id for e in verdicts if e.source == "chargeback" and e.decided_at <= before}
    known = [i for i in range(cut) if expected[i] is not None]
    counts = {
        "analyst": sum(ids[i] in analysts for i in known),
        "chargeback": sum(ids[i] in chargebacks for i in known),
        "replay": 0,
        "inline": sum(ids[i] not in analysts | chargebacks for i in known),
        "unlabelled": cut - len(known),
    }
    expected_raw = raw[known]
    expected_data = Dataset(
        raw=expected_raw,
        labels=np.array([expected[i] for i in known], dtype=np.int8),
        time=expected_raw[:, 0],
    )

    with_label = [i for i in range(n) if stored_label[i] is not None]
    inline_data = Dataset(
        raw=raw[with_label], labels=inline[with_label].astype(np.int8), time=raw[with_label, 0]
    )

    name, url = infra.create_database("fromdb")

    async def fill() -> None:
        conn = await asyncpg.connect(url)
        try:
            await store_scored(conn, _stored(ids, raw, stored_label, None))
            # A backtest run's rows are not the stream's: never trained on.
            await store_scored(conn, _stored(ids[:500], raw[:500], inline[:500].tolist(), "bt-1"))
            await store_labels(conn, verdicts)
        finally:
            await conn.close()

    asyncio.run(fill())
    yield Stream(url, until, expected_data, inline_data, counts)
    infra.drop_database(name)


def _rows(data: Dataset) -> np.ndarray:
    """Rows with their label, in a canonical order (the comparison ignores ties in time)."""
    table = np.column_stack([data.raw, data.labels])
    return table[np.lexsort(table.T[::-1])]


def test_reads_the_stored_rows_with_the_labels_known_at_the_cutoff(stream: Stream) -> None:
    async def read():
        conn = await asyncpg.connect(stream.database_url)
        try:
            return await read_stored(conn, until=stream.until, progress=False)
        finally:
            await conn.close()

    data, source = asyncio.run(read())
    assert np.all(np.diff(data.time) >= 0)  # data-time order, as the split needs
    assert len(data) == len(stream.expected) and data.fraud_count == stream.expected.fraud_count
    np.testing.assert_array_equal(_rows(data), _rows(stream.expected))
    assert source["labels"] == stream.counts
    assert source["until"] == stream.until
    assert datetime.fromisoformat(source["labels_as_of"]) == datetime.fromtimestamp(START + stream.until, UTC)


def test_train_from_db_registers_a_shadow_trained_on_those_rows(stream: Stream, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRAUDSTREAM_")}
    env.update(
        FRAUDSTREAM_DATABASE_URL=stream.database_url,
        FRAUDSTREAM_MODEL_STORE=str(tmp_path / "store"),
        FRAUDSTREAM_STATE_DIR=str(tmp_path / "state"),
        USER="retrainer",
    )
    out = tmp_path / "retrained"
    command = ["--from-db", "--until", repr(stream.until), "--shadow", "--out", str(out), *FAST]
    done = subprocess.run(
        [sys.executable, "-m", "fraudstream", "train", *command],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert "registered and made the shadow" in done.stdout
    assert f"rows up to data time {stream.until:g} s" in done.stdout

    manifest = read_manifest(out)
    data = manifest["training"]["data"]
    assert (data["rows"], data["frauds"]) == (len(stream.expected), stream.expected.fraud_count)
    assert data["splits"] == time_split(stream.expected).describe()  # the same protocol, on these rows
    assert min(part["frauds"] for part in data["splits"].values()) >= MIN_FRAUDS_PER_STRETCH
    source = data["source"]
    assert source["kind"] == "database" and source["until"] == stream.until
    assert source["labels"] == stream.counts and "password" not in source["database"]
    assert manifest["evaluation"]["test"]["ensemble"]["auprc"] > 0

    async def registry():
        conn = await asyncpg.connect(stream.database_url)
        try:
            return await registry_head(conn), await model_events(conn)
        finally:
            await conn.close()

    head, events = asyncio.run(registry())
    assert head.shadow is not None and head.shadow.version == manifest["version"]
    assert head.champion is None  # --shadow never promotes
    assert [(e.version, e.action, e.actor) for e in events[:2]] == [
        (manifest["version"], "shadow_on", "retrainer"),
        (manifest["version"], "registered", "retrainer"),
    ]


def _train(*argv: str) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(list(argv))
    return code, err.getvalue()


def test_refuses_too_few_labels_clearly(stream: Stream, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("FRAUDSTREAM_DATABASE_URL", stream.database_url)
    out = tmp_path / "never"
    times = np.sort(stream.inline.time)

    def labelled_until(cutoff: float) -> Dataset:
        """Every verdict came after the stream passed these early cutoffs: the inline labels alone."""
        return stream.inline.take(stream.inline.time <= cutoff)

    # An early cutoff: too few labelled rows at all.
    early = float(times[800])
    code, err = _train("--from-db", "--until", repr(early), "--out", str(out), *FAST)
    few = labelled_until(early)
    assert code == 2 and f"too few labelled rows to train on: {len(few)} labelled rows" in err, err
    assert f"with {few.fraud_count} frauds" in err, err
    # Enough rows and frauds in all, but a stretch with too few frauds to choose or evaluate on.
    later = float(times[1499])
    sub = labelled_until(later)
    parts = time_split(sub).describe()
    short = next(name for name, part in parts.items() if part["frauds"] < MIN_FRAUDS_PER_STRETCH)
    assert len(sub) >= 1000 and sub.fraud_count >= 3 * MIN_FRAUDS_PER_STRETCH
    code, err = _train("--from-db", "--until", repr(later), "--out", str(out), *FAST)
    assert code == 2 and f"the {short} stretch has only {parts[short]['frauds']} frauds" in err, err
    assert not out.exists()


def test_refuses_a_cutoff_before_any_stored_row(database_url: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("FRAUDSTREAM_DATABASE_URL", database_url)
    code, err = _train("--from-db", "--until", "0.5", "--out", str(tmp_path / "never"), *FAST)
    assert code == 2 and "no stored transactions at or before data time 0.5 s" in err, err
    code, err = _train("--from-db", "--out", str(tmp_path / "never"), *FAST)
    assert code == 2 and "too few labelled rows to train on: 0 labelled rows" in err, err


def test_flags_that_do_not_go_together_are_refused() -> None:
    assert _train("--until", "100")[0] == 2
    assert _train("--from-db", "--data", str(SAMPLE_PATH))[0] == 2
    assert _train("--from-db", "--shadow", "--activate")[0] == 2
    assert _train("--from-db", "--until", "-1")[0] == 2
