"""The Dash app: pages, navbar and the API status banner shared by every page.

    app = create_app("http://127.0.0.1:8000")
    app.server  # the Flask (WSGI) application to serve

Pages live in `dashboard/pages/` (Dash Pages: one module per page, layout and callbacks
side by side). The banner polls `/health` through the shared, tick-cached client and says
plainly when the API is unreachable, not ready, or degraded (a stalled or missing scorer,
a version mismatch, the broker), with the API's reasons; it disappears by itself when the
API comes back, and so do the pages' "unreachable" placeholders, because every panel keeps
polling. Whenever the dashboard holds API tokens or listens beyond 127.0.0.1, every route
needs a signed-in session (`dashboard.auth`).
"""

from __future__ import annotations

from pathlib import Path

import dash
from dash import Input, Output, dcc, html

from dashboard.auth import LOGOUT_PATH, install_login
from dashboard.client import ApiClient, ApiError, ApiUnreachable
from dashboard.context import EXTENSION, api
from dashboard.settings import DashboardSettings

HERE = Path(__file__).resolve().parent
STATUS_INTERVAL_MS = 2000


def _navbar(api_url: str, login: bool) -> html.Header:
    links = [
        dcc.Link(
            page["name"],
            href=page["relative_path"],
            className="nav-link",
            id=f"nav-{page['module'].rsplit('.', 1)[-1]}",
        )
        for page in dash.page_registry.values()
    ]
    return html.Header(
        [
            html.Div([html.Span("◆", className="brand-mark"), "fraudstream"], className="brand"),
            html.Nav(links, className="nav"),
            html.Div(["API ", html.Code(api_url)], className="nav-api", title="FRAUDSTREAM_API_URL"),
            *([html.A("Sign out", href=LOGOUT_PATH, id="sign-out", className="nav-link")] if login else []),
        ],
        className="navbar",
    )


def _layout(api_url: str, login: bool) -> html.Div:
    return html.Div(
        [
            _navbar(api_url, login),
            html.Div(id="status-banner", className="banner hidden", role="status"),
            dcc.Interval(id="status-tick", interval=STATUS_INTERVAL_MS),
            html.Main(dash.page_container, className="content"),
        ],
        className="shell",
    )


def status_message(health: dict | None, error: Exception | None, api_url: str) -> tuple[str, str]:
    """(banner text, CSS class) for the API's health answer or the error raised asking for it."""
    if isinstance(error, ApiUnreachable):
        return (
            f"The API at {api_url} is unreachable. The dashboard keeps retrying and recovers by itself.",
            "banner banner-error",
        )
    if error is not None:
        detail = error.detail if isinstance(error, ApiError) else str(error)
        return f"The API answered with an error: {detail}", "banner banner-error"
    if health and health.get("status") == "degraded":
        reasons = health.get("reasons") or ["unknown reason"]
        return "Degraded: " + "; ".join(reasons) + ".", "banner banner-warn"
    if health and health.get("status") != "ok":
        parts = health.get("reasons") or [
            f"{part}: {health.get(part)}" for part in health.get("not_ready", [])
        ]
        return "The API is not ready (" + "; ".join(parts or ["unknown reason"]) + ").", "banner banner-error"
    return "", "banner hidden"


def _update_status(_n: int | None) -> tuple[str, str]:
    client = api()
    try:
        health = client.health()
    except (ApiError, ApiUnreachable) as exc:
        return status_message(None, exc, client.base_url)
    return status_message(health, None, client.base_url)


def create_app(
    api_url: str | None = None, settings: DashboardSettings | None = None, *, host: str | None = None
) -> dash.Dash:
    """Build the dashboard for the API at `api_url` (default: from FRAUDSTREAM_* settings), to be
    served on `host` (default: settings.host; beyond loopback it always needs a login).

    Raises ValueError when a login is needed and nothing to check it against is configured."""
    settings = settings or DashboardSettings()
    if api_url is not None:
        settings = settings.model_copy(update={"api_url": api_url})
    login = settings.login_required(host or settings.host)
    client = ApiClient(
        settings.resolved_api_url,
        token=settings.api_token,
        read_token=settings.api_read_token,
        timeout=settings.api_timeout,
        live_ttl=max(0.2, settings.refresh_ms / 1000.0 * 0.8),
    )
    app = dash.Dash(
        __name__,
        use_pages=True,
        pages_folder=str(HERE / "pages"),
        assets_folder=str(HERE / "assets"),
        title="fraudstream",
        update_title=None,
        suppress_callback_exceptions=True,
        serve_locally=True,
    )
    if login:
        install_login(
            app.server,
            settings.login_secrets,
            has_password=bool(settings.dashboard_password),
            secret_key=settings.dashboard_secret_key,
        )
    app.server.extensions[EXTENSION] = {"client": client, "settings": settings}
    app.layout = _layout(client.base_url, login)
    # Registered on this app (not with the global `dash.callback`) so every app gets its own.
    app.callback(
        Output("status-banner", "children"),
        Output("status-banner", "className"),
        Input("status-tick", "n_intervals"),
    )(_update_status)
    return app
