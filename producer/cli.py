"""`fraudstream replay`: publish the CSV's transactions to Kafka at the chosen pace.

    fraudstream replay                      # the shipped sample, as fast as possible
    fraudstream replay --rate 2000          # 2,000 transactions per second
    fraudstream replay --speed 60 --from 3600 --to 7200   # the second hour, in one minute
    fraudstream replay --label-delay 86400  # labels arrive a data day later, as chargebacks
    fraudstream replay --data data/creditcard.csv --limit 10000 --run-id bt-1

Ctrl-C or SIGTERM stops the replay: what was sent is flushed to the broker and the
command says how far it got (exit code 130). The flush waits at most
FRAUDSTREAM_REPLAY_FLUSH_SECONDS (10 s) for a broker that is gone or frozen, a second
Ctrl-C/SIGTERM gives up at once; then the command says how many events the broker may
not have received and exits with 1. Bad CSV rows are listed (row number, reason) and skipped.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Coroutine
from pathlib import Path

from aiokafka.errors import KafkaError

from core.dataset import SAMPLE_PATH, CsvSchemaError, iter_csv_rows
from core.events import MAX_RUN_ID_LENGTH
from core.kafka import ensure_topics
from core.runtime.stack import NotConfigured, resolve_bootstrap_servers, topic_partitions
from core.settings import Settings
from producer.pacing import Pacing
from producer.replay import ReplayReport, replay

#: Bad rows printed one by one; beyond that, only their number.
_SHOWN_SKIPS = 20


def _positive(kind: type) -> object:
    def parse(text: str) -> float | int:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value

    return parse


def seconds_argument(text: str) -> float:
    """An argparse type for data seconds (`--from`/`--to`): a number >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if value < 0 or value != value:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _run_id(text: str) -> str:
    if not 0 < len(text) <= MAX_RUN_ID_LENGTH:
        raise argparse.ArgumentTypeError(f"run id must have 1-{MAX_RUN_ID_LENGTH} characters")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fraudstream replay",
        description="Replay a Kaggle-format credit-card CSV onto the transactions topic.",
    )
    parser.add_argument("--data", type=Path, default=None, help="CSV or CSV.gz (default: the shipped sample)")
    pace = parser.add_mutually_exclusive_group()
    pace.add_argument("--rate", type=_positive(float), help="events per second")
    pace.add_argument(
        "--speed", type=_positive(float), help="data seconds per wall-clock second (60 = 1h/min)"
    )
    pace.add_argument("--max", action="store_true", help="as fast as possible (the default)")
    parser.add_argument(
        "--from", dest="time_from", type=seconds_argument, help="first data second (inclusive)"
    )
    parser.add_argument("--to", dest="time_to", type=seconds_argument, help="last data second (exclusive)")
    parser.add_argument("--limit", type=_positive(int), help="stop after this many events")
    parser.add_argument("--run-id", type=_run_id, help="tag every event with this backtest run id")
    parser.add_argument(
        "--label-delay",
        type=seconds_argument,
        metavar="SECONDS",
        help="publish transactions without their label and each label later on the labels topic, as a "
        "chargeback, once the data clock passes the row's time plus SECONDS",
    )
    parser.add_argument("--topic", help="topic to publish to (default: from settings)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def describe(report: ReplayReport) -> list[str]:
    """The human summary printed at the end (also on Ctrl-C)."""
    lines = []
    where = (
        f"last row {report.last_row}, data time {report.last_time:g} s"
        if report.last_row is not None
        else "nothing sent"
    )
    if report.unconfirmed:
        confirmed = report.sent - report.unconfirmed
        lines.append(
            f"{'interrupted' if report.interrupted else 'stopped'}: {report.sent:,} events sent ({where}); "
            f"gave up waiting for the broker: at least {confirmed:,} confirmed, "
            f"up to {report.unconfirmed:,} may not have reached it"
        )
    elif report.interrupted:
        lines.append(f"interrupted: {report.sent:,} events sent and flushed ({where})")
    else:
        lines.append(f"sent {report.sent:,} events")
    if report.labels_sent or report.labels_held:
        lines.append(
            f"labels: {report.labels_sent:,} published as delayed chargebacks"
            + (f", {report.labels_held:,} still held back (not published)" if report.labels_held else "")
        )
    lines.append(
        f"{report.elapsed:.1f} s, {report.rate_achieved:,.0f} events/s achieved ({report.pacing} asked)"
    )
    if report.skipped_rows:
        lines.append(f"skipped {len(report.skipped_rows)} bad rows:")
        for number, reason in report.skipped_rows[:_SHOWN_SKIPS]:
            lines.append(f"  row {number}: {reason}")
        if len(report.skipped_rows) > _SHOWN_SKIPS:
            lines.append(f"  ... and {len(report.skipped_rows) - _SHOWN_SKIPS} more")
    return lines


async def _run(args: argparse.Namespace, settings: Settings) -> ReplayReport:
    bootstrap_servers = resolve_bootstrap_servers(settings)  # the producer needs no database
    topic = args.topic or settings.topic_transactions
    partitions = topic_partitions(settings).get(topic, settings.topic_partitions)
    wanted = {topic: partitions}
    if args.label_delay is not None:
        labels = settings.topic_labels
        wanted[labels] = topic_partitions(settings).get(labels, settings.topic_partitions)
    stop, abandon = asyncio.Event(), asyncio.Event()

    def on_signal() -> None:  # the first asks to stop and flush, the second gives up the flush
        (abandon if stop.is_set() else stop).set()

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal)
    try:
        if not await _unless_stopped(ensure_topics(bootstrap_servers, wanted), stop):
            return ReplayReport(
                0, [], 0.0, 0.0, interrupted=True, pacing=Pacing(args.rate, args.speed).describe()
            )
        return await replay(
            args.data,
            bootstrap_servers=bootstrap_servers,
            topic=topic,
            rate=args.rate,
            speed=args.speed,
            time_from=args.time_from,
            time_to=args.time_to,
            limit=args.limit,
            run_id=args.run_id,
            progress=not args.quiet,
            stop=stop,
            abandon=abandon,
            stop_grace=settings.replay_flush_seconds,
            label_delay=args.label_delay,
            labels_topic=settings.topic_labels,
        )
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        loop.remove_signal_handler(signal.SIGTERM)


async def _unless_stopped(work: Coroutine[object, object, object], stop: asyncio.Event) -> bool:
    """Run `work` unless `stop` comes first (then cancel it); True when it completed."""
    task = asyncio.ensure_future(work)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
    if not task.done():
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return False
    task.result()
    return True


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.time_from is not None and args.time_to is not None and args.time_to <= args.time_from:
        parser.error(f"--to ({args.time_to:g}) must be after --from ({args.time_from:g})")
    settings = Settings()
    args.data = Path(args.data or settings.data_path or SAMPLE_PATH)
    try:
        next(iter_csv_rows(args.data), None)  # a missing or wrong file fails before we connect
        report = asyncio.run(_run(args, settings))
    except (FileNotFoundError, CsvSchemaError) as exc:
        print(f"fraudstream replay: {exc}", file=sys.stderr)
        return 2
    except NotConfigured as exc:
        print(f"fraudstream replay: {exc}", file=sys.stderr)
        return 1
    except (KafkaError, OSError) as exc:
        print(f"fraudstream replay: broker error: {exc!r}", file=sys.stderr)
        return 1
    for line in describe(report):
        print(line)
    if report.unconfirmed:
        return 1
    return 130 if report.interrupted else 0


if __name__ == "__main__":
    raise SystemExit(main())
