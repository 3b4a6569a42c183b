"""`fraudstream api`: serve the analytics API with uvicorn on settings.host:settings.api_port."""

from __future__ import annotations

import argparse
import sys

import uvicorn
from pydantic import ValidationError

from core.runtime.stack import NotConfigured, resolve_endpoints
from core.settings import get_settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fraudstream api",
        description="Serve the analytics API (FastAPI). Settings come from FRAUDSTREAM_* variables; "
        "set FRAUDSTREAM_API_TOKEN (and FRAUDSTREAM_API_READ_TOKEN) to require a bearer token on every /api route.",
    )
    parser.add_argument("--host", help="bind address (default: FRAUDSTREAM_HOST, 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default: FRAUDSTREAM_API_PORT, 8000)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument(
        "--log-level", default=None, help="uvicorn log level (default: FRAUDSTREAM_LOG_LEVEL)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    if args.port is not None and not 0 < args.port < 65536:
        parser.error("--port must be 1-65535")
    try:
        settings = get_settings()
        resolve_endpoints(settings)
    except (NotConfigured, ValidationError) as exc:
        print(f"fraudstream api: {exc}", file=sys.stderr)
        return 2
    uvicorn.run(
        "api.main:create_served_app",
        factory=True,
        host=args.host or settings.host,
        port=args.port or settings.api_port,
        workers=args.workers,
        log_level=(args.log_level or settings.log_level).lower(),
        access_log=False,
        loop="uvloop",  # libuv's loop and the C HTTP parser: the server's own cost per request
        http="httptools",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
