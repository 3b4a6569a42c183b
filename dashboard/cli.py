"""`fraudstream dashboard`: serve the Dash app until interrupted.

    fraudstream dashboard [--host 127.0.0.1] [--port 8050] [--api-url http://127.0.0.1:8000]

Defaults come from FRAUDSTREAM_HOST, FRAUDSTREAM_DASHBOARD_PORT and FRAUDSTREAM_API_URL.
With API tokens configured, or bound beyond 127.0.0.1, it asks for a login
(FRAUDSTREAM_DASHBOARD_PASSWORD, or the API token it holds): see `dashboard.auth`.
The app is served by Werkzeug's threaded WSGI server with debug off: one process, one
thread per request, enough for a handful of analysts on a loopback or LAN address.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from types import FrameType

from pydantic import ValidationError
from werkzeug.serving import make_server

from dashboard.settings import DashboardSettings

log = logging.getLogger("fraudstream.dashboard")


def build_parser(settings: DashboardSettings) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fraudstream dashboard", description="Serve the live fraudstream dashboard (Plotly Dash)."
    )
    parser.add_argument("--host", default=settings.host, help=f"address to bind (default {settings.host})")
    parser.add_argument(
        "--port", type=int, default=settings.dashboard_port, help=f"port (default {settings.dashboard_port})"
    )
    parser.add_argument(
        "--api-url",
        default=settings.resolved_api_url,
        help=f"the API's base URL (default {settings.resolved_api_url})",
    )
    return parser


def _stop(_signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> int:
    """Parse flags, build the app and serve it; 2 for bad flags, 1 when it cannot serve."""
    try:
        settings = DashboardSettings()
    except ValidationError as exc:
        print(f"fraudstream dashboard: invalid FRAUDSTREAM_* setting:\n{exc}", file=sys.stderr)
        return 2
    parser = build_parser(settings)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed the message (or --help)
        return int(exc.code or 0)
    if not 0 < args.port < 65536:
        parser.print_usage(sys.stderr)
        print(f"fraudstream dashboard: error: --port must be 1..65535, got {args.port}", file=sys.stderr)
        return 2
    if not args.api_url.startswith(("http://", "https://")):
        parser.print_usage(sys.stderr)
        print(
            f"fraudstream dashboard: error: --api-url must be an http(s) URL, got {args.api_url!r}",
            file=sys.stderr,
        )
        return 2

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per poll request

    from dashboard.app import create_app  # imported here so `--help` stays fast

    try:
        app = create_app(args.api_url, settings, host=args.host)
    except ValueError as exc:
        print(f"fraudstream dashboard: {exc}", file=sys.stderr)
        return 2
    try:
        server = make_server(args.host, args.port, app.server, threaded=True)
    except (OSError, SystemExit) as exc:  # Werkzeug reports a taken port by exiting
        print(
            f"fraudstream dashboard: cannot listen on {args.host}:{args.port}: {getattr(exc, 'strerror', None) or 'address in use or not available'}",
            file=sys.stderr,
        )
        return 1
    signal.signal(signal.SIGTERM, _stop)
    log.info("dashboard on http://%s:%d (API %s)", args.host, server.port, args.api_url)
    print(f"fraudstream dashboard: http://{args.host}:{server.port}", flush=True)
    try:
        server.serve_forever()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
