"""The producer: rows → events with stable ids, pacing, windows, bad rows, Ctrl-C, the command."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest

from core.dataset import SAMPLE_PATH, iter_csv_rows
from core.events import parse_event, transaction_id
from producer import cli
from producer.pacing import Pacing
from producer.replay import read_rows, replay, select_rows
from tests.streaming_fixtures import read_topic, write_csv


def test_pacing_schedules_are_absolute() -> None:
    assert Pacing().unlimited and Pacing().due(10_000, 99.0) == 0.0
    assert Pacing(rate=2000).due(4000, 0.0) == pytest.approx(2.0)
    assert Pacing(speed=60).due(0, 3660.0, first_time=60.0) == pytest.approx(60.0)
    with pytest.raises(ValueError, match="not both"):
        Pacing(rate=1, speed=1)
    with pytest.raises(ValueError, match="positive"):
        Pacing(rate=0)


def test_duplicate_rows_get_distinct_stable_ids() -> None:
    row = tuple([1.0] * 30)
    rows = [(1, row, 0, None), (2, None, None, "column 'V3': not a finite number: 'x'"), (3, row, 0, None)]
    skipped: list[tuple[int, str]] = []
    chosen = list(select_rows(rows, skipped))
    assert [c.event_id for c in chosen] == [transaction_id(row, 0), transaction_id(row, 1)]
    assert chosen[0].event_id != chosen[1].event_id
    assert skipped == [(2, "column 'V3': not a finite number: 'x'")]


def test_window_and_limit_keep_ids_of_the_full_file() -> None:
    full = {c.row_number: c.event_id for c in select_rows(read_rows(SAMPLE_PATH), [])}
    window = list(select_rows(read_rows(SAMPLE_PATH), [], time_from=3600, time_to=7200, limit=50))
    assert len(window) == 50
    assert all(3600 <= c.values[0] < 7200 for c in window)
    assert all(full[c.row_number] == c.event_id for c in window)
    assert len(set(full.values())) == len(full), "every row of the sample has its own id"


def test_fast_reader_matches_the_row_by_row_reader(tmp_path: Path) -> None:
    clean = write_csv(tmp_path / "clean.csv", 300)
    assert list(read_rows(clean)) == list(iter_csv_rows(clean))


def test_replay_publishes_events_and_reports_bad_rows(tmp_path: Path, infra, topics) -> None:
    asyncio.run(_publishes_and_reports(tmp_path, infra, topics))


async def _publishes_and_reports(tmp_path: Path, infra, topics) -> None:
    width = 31
    bad = {
        5: ",".join(["1"] * (width - 2)),  # a field short
        9: ",".join(["0", "oops"] + ["1"] * (width - 2)),
        12: ",".join(["0"] + ["nan"] + ["1"] * (width - 2)),
    }
    path = write_csv(tmp_path / "bad.csv", 200, extra_lines=bad)
    report = await replay(
        path,
        bootstrap_servers=infra.bootstrap_servers,
        topic=topics.transactions,
        progress=False,
        run_id="r1",
    )
    assert report.sent == 200 and not report.interrupted
    assert [number for number, _ in report.skipped_rows] == [5, 9, 12]
    assert "expected 31 fields" in report.skipped_rows[0][1]
    assert "'V1'" in report.skipped_rows[1][1] and "'V1'" in report.skipped_rows[2][1]

    messages = await read_topic(infra.bootstrap_servers, topics.transactions, 200)
    assert len(messages) == 200
    expected_ids = {c.event_id for c in select_rows(iter_csv_rows(path), [])}
    seen = set()
    for key, value, _ in messages:
        event_id, values, label, run_id, produced_at = parse_event(orjson.loads(value))
        assert key == event_id.encode()
        assert run_id == "r1" and label in (0, 1) and produced_at is not None
        seen.add(event_id)
    assert seen == expected_ids


def test_stop_flushes_what_was_sent(infra, topics) -> None:
    asyncio.run(_stop_flushes(infra, topics))


async def _stop_flushes(infra, topics) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(
        replay(
            SAMPLE_PATH,
            bootstrap_servers=infra.bootstrap_servers,
            topic=topics.transactions,
            rate=400,
            progress=False,
            stop=stop,
        )
    )
    while True:  # wait for the replay to be under way, then stop it as Ctrl-C would
        await asyncio.sleep(0.05)
        messages = await read_topic(infra.bootstrap_servers, topics.transactions, 1, timeout=0.5)
        if messages:
            break
    stop.set()
    report = await task
    assert report.interrupted and 0 < report.sent < 28_930
    assert report.last_row is not None and report.last_row >= report.sent
    messages = await read_topic(infra.bootstrap_servers, topics.transactions, report.sent)
    assert len(messages) == report.sent


def test_command_replays_a_window(monkeypatch, capsys, infra, topics, settings) -> None:
    monkeypatch.setenv("FRAUDSTREAM_KAFKA_BOOTSTRAP_SERVERS", infra.bootstrap_servers)
    monkeypatch.setenv("FRAUDSTREAM_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("FRAUDSTREAM_TOPIC_TRANSACTIONS", topics.transactions)
    monkeypatch.setenv("FRAUDSTREAM_STATE_DIR", str(settings.state_dir))
    code = cli.main(["--from", "0", "--to", "100", "--rate", "5000", "--quiet"])
    out = capsys.readouterr().out
    assert code == 0, out
    expected = sum(1 for c in select_rows(read_rows(SAMPLE_PATH), [], time_to=100))
    assert f"sent {expected:,} events" in out
    messages = asyncio.run(read_topic(infra.bootstrap_servers, topics.transactions, expected))
    assert len(messages) == expected


def test_command_refuses_bad_input(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--rate", "10", "--speed", "2"])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit):
        cli.main(["--from", "10", "--to", "5"])
    assert "must be after" in capsys.readouterr().err
    (tmp_path / "wrong.csv").write_text("a,b\n1,2\n")
    assert cli.main(["--data", str(tmp_path / "wrong.csv")]) == 2
    assert "missing column" in capsys.readouterr().err
    assert cli.main(["--data", str(tmp_path / "absent.csv")]) == 2
