"""Reach the app's API client and settings from inside a callback or a page layout.

Dash Pages callbacks are module-level functions, so they cannot be handed the client as
an argument; `create_app` stores it on the Flask server (Flask's `extensions` convention)
and callbacks, which run inside a Flask request, read it back here. Nothing is held in a
module global, so two apps in one process never share a client.
"""

from __future__ import annotations

from flask import current_app

from dashboard.client import ApiClient
from dashboard.settings import DashboardSettings

EXTENSION = "fraudstream_dashboard"


def api() -> ApiClient:
    """The API client of the app serving the current request."""
    return current_app.extensions[EXTENSION]["client"]


def settings() -> DashboardSettings:
    """The settings of the app serving the current request."""
    return current_app.extensions[EXTENSION]["settings"]
