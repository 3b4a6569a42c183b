"""`fraudstream scorer`: run scorer worker(s) of the Faust app `scorer.app`.

    fraudstream scorer                    # one worker, metrics at http://127.0.0.1:6066/metrics,
                                          #   its health at http://127.0.0.1:6066/health
    fraudstream scorer --workers 2        # two worker processes in one consumer group
    fraudstream scorer --web-port 6067    # a second worker beside a first one
    fraudstream scorer --no-web           # no HTTP server (metrics and /health off; the
                                          #   heartbeat rows in scorer_workers still come)

The same as `faust -A scorer.app worker --web-bind 127.0.0.1`; settings (broker, database,
topics, model) come from FRAUDSTREAM_* variables or a running embedded stack.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
from pathlib import Path

from core.runtime.stack import NotConfigured, resolve_endpoints
from core.settings import Settings

#: Faust's worker takes its own spelling of the log levels.
_FAUST_LEVELS = {"warning": "warn", "critical": "crit"}


def build_parser(settings: Settings) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fraudstream scorer", description="Run the scoring worker(s).")
    parser.add_argument("--workers", type=int, default=1, help="worker processes in the consumer group")
    parser.add_argument(
        "--web-port",
        type=int,
        default=settings.scorer_web_port,
        help="port of the metrics server (worker i of --workers N uses port + i)",
    )
    parser.add_argument("--no-web", action="store_true", help="run without the HTTP server")
    parser.add_argument(
        "--loglevel", "-l", default=settings.log_level.lower(), help="log level (default: info)"
    )
    return parser


def worker_argv(args: argparse.Namespace, host: str, port: int) -> list[str]:
    """Arguments of Faust's `worker` command for one worker."""
    level = args.loglevel.lower()
    argv = ["worker", "--loglevel", _FAUST_LEVELS.get(level, level)]
    if args.no_web:
        argv.append("--without-web")
    else:
        argv += ["--web-bind", host, "--web-host", host, "--web-port", str(port)]
    return argv


def _champion_registered(database_url: str) -> bool:
    """Whether the registry names a champion (a database that cannot be reached: assume so, the
    worker waits for it and says so)."""
    import asyncio

    import asyncpg

    from core.db.registry import active_model
    from core.db.urls import asyncpg_dsn

    async def ask() -> bool:
        conn = await asyncpg.connect(asyncpg_dsn(database_url), timeout=5)
        try:
            return await active_model(conn) is not None
        finally:
            await conn.close()

    try:
        return asyncio.run(ask())
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return True


def _run_worker(argv: list[str]) -> int:
    from scorer.app import app  # imported late: the app reads settings and endpoints at import

    sys.argv = ["fraudstream scorer", *argv]
    try:
        app.main()
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    return 0


def _run_many(args: argparse.Namespace) -> int:
    """Start `--workers` processes of this command and wait; Ctrl-C/SIGTERM stop them all."""
    children = []
    for i in range(args.workers):
        child = [sys.executable, "-m", "scorer.cli", "--loglevel", args.loglevel]
        child += ["--no-web"] if args.no_web else ["--web-port", str(args.web_port + i)]
        children.append(subprocess.Popen(child))

    def forward(signum: int, _frame: object) -> None:
        for process in children:
            if process.poll() is None:
                process.send_signal(signum)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    codes = [process.wait() for process in children]
    return max(codes, key=abs)


def main(argv: list[str] | None = None) -> int:
    settings = Settings()
    parser = build_parser(settings)
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    if not args.no_web and not 0 < args.web_port + args.workers - 1 <= 65535:
        parser.error(f"--web-port {args.web_port} is not a valid port")
    try:
        endpoints = resolve_endpoints(settings)
    except NotConfigured as exc:
        print(f"fraudstream scorer: {exc}", file=sys.stderr)
        return 1
    manifest = Path(settings.model_path) / "manifest.json"
    if not manifest.is_file() and not _champion_registered(endpoints.database_url):
        print(
            "fraudstream scorer: no champion in the model registry and no model bundle at "
            f"{settings.model_path} (train one with `fraudstream train --activate`, or set "
            "FRAUDSTREAM_MODEL_PATH)",
            file=sys.stderr,
        )
        return 1
    if args.workers > 1:
        return _run_many(args)
    return _run_worker(worker_argv(args, settings.host, args.web_port))


if __name__ == "__main__":
    raise SystemExit(main())
