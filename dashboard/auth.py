"""The dashboard's login: a signed session cookie on the Dash server (Flask), checked before
every request it serves.

The dashboard calls the API with the tokens it was given; serving its pages to anyone
who reaches it would lend those tokens to anonymous visitors. So whenever it holds a
token, a password is set, or it listens beyond this machine, every route (the pages, the
callback endpoint `/_dash-update-component`, `/_dash-layout`, the component bundles and
the assets) refuses a visitor without a session: pages redirect to `/login`, everything
else answers 401. A person logs in with `FRAUDSTREAM_DASHBOARD_PASSWORD` or, without
one, with an API token the dashboard holds (so nobody gets more through the dashboard
than they already have). Secrets are compared in constant time; five failed logins from
one address within five minutes lock that address out for a minute.

The session cookie is signed with `FRAUDSTREAM_DASHBOARD_SECRET_KEY` (or a random key per
process), HttpOnly and SameSite=Lax, and lasts 12 hours.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import secrets
import threading
import time
from collections import defaultdict, deque
from datetime import timedelta
from urllib.parse import urlencode

from flask import Flask, Response, redirect, request, session

LOGIN_PATH = "/login"
LOGOUT_PATH = "/logout"
MAX_FAILURES = 5
FAILURE_WINDOW_S = 300.0
LOCKOUT_S = 60.0
SESSION_HOURS = 12


class LoginLimiter:
    """Failed logins per client address; too many in a window lock the address out for a while."""

    def __init__(self, clock=time.monotonic) -> None:  # type: ignore[no-untyped-def]
        self._clock = clock
        self._failures: dict[str, deque[float]] = defaultdict(deque)
        self._guard = threading.Lock()

    def locked(self, client: str) -> bool:
        now = self._clock()
        with self._guard:
            failures = self._failures.get(client)
            if not failures:
                return False
            while failures and now - failures[0] > FAILURE_WINDOW_S:
                failures.popleft()
            return len(failures) >= MAX_FAILURES and now - failures[-1] < LOCKOUT_S

    def failed(self, client: str) -> None:
        with self._guard:
            self._failures[client].append(self._clock())

    def succeeded(self, client: str) -> None:
        with self._guard:
            self._failures.pop(client, None)


def _matches(given: str, accepted: list[str]) -> bool:
    digest = hashlib.sha256(given.encode()).digest()
    found = False
    for secret in accepted:  # every one, in constant time
        found |= hmac.compare_digest(digest, hashlib.sha256(secret.encode()).digest())
    return found


def _safe_next(target: str | None) -> str:
    """Only a path on this server (no scheme, no other host): never an open redirect."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>fraudstream · sign in</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body {{ font-family: system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif; background: #f3f4f6; margin: 0; }}
main {{ max-width: 360px; margin: 12vh auto; background: #fff; padding: 28px 32px; border-radius: 10px;
       box-shadow: 0 1px 3px rgba(0,0,0,.12); }}
h1 {{ font-size: 20px; margin: 0 0 4px; }} p {{ color: #6b7280; margin: 0 0 18px; font-size: 14px; }}
label {{ display: block; font-size: 13px; font-weight: 600; margin-bottom: 6px; }}
input {{ width: 100%; box-sizing: border-box; padding: 9px 10px; border: 1px solid #d1d5db; border-radius: 6px;
        font-size: 14px; }}
button {{ margin-top: 16px; width: 100%; padding: 10px; border: 0; border-radius: 6px; background: #4c78a8;
         color: #fff; font-weight: 600; font-size: 14px; cursor: pointer; }}
.error {{ background: #fde8e8; color: #9b1c1c; padding: 8px 10px; border-radius: 6px; font-size: 13px;
         margin-bottom: 14px; }}
</style></head>
<body><main>
<h1>◆ fraudstream</h1><p>{hint}</p>
{error}
<form method="post" action="{action}">
<label for="secret">{label}</label>
<input id="secret" name="secret" type="password" autocomplete="current-password" autofocus required>
<button id="sign-in" type="submit">Sign in</button>
</form></main></body></html>
"""


def _login_page(error: str | None, has_password: bool, next_path: str, status: int = 200) -> Response:
    label = "Password" if has_password else "API token"
    hint = (
        "Sign in to the fraud dashboard."
        if has_password
        else "Sign in with the API token this dashboard was given (FRAUDSTREAM_API_READ_TOKEN or _TOKEN)."
    )
    body = _PAGE.format(
        hint=html.escape(hint),
        label=label,
        action=html.escape(f"{LOGIN_PATH}?{urlencode({'next': next_path})}"),
        error=f'<div class="error" id="login-error" role="alert">{html.escape(error)}</div>' if error else "",
    )
    response = Response(body, status=status, mimetype="text/html")
    response.headers["Cache-Control"] = "no-store"
    return response


def install_login(server: Flask, accepted: list[str], *, has_password: bool, secret_key: str | None) -> None:
    """Require a session for every route of `server` except the login and logout pages."""
    if not accepted:
        raise ValueError(
            "the dashboard needs a login here (it holds an API token or listens beyond 127.0.0.1) "
            "but has nothing to check it against: set FRAUDSTREAM_DASHBOARD_PASSWORD"
        )
    server.secret_key = secret_key or secrets.token_hex(32)
    server.config.update(
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_NAME="fraudstream_session",
        PERMANENT_SESSION_LIFETIME=timedelta(hours=SESSION_HOURS),
    )
    limiter = LoginLimiter()

    @server.before_request
    def _require_session():  # type: ignore[no-untyped-def]
        if request.path in (LOGIN_PATH, LOGOUT_PATH) or session.get("user"):
            return None
        if request.method == "GET" and not request.path.startswith(("/_", "/assets/")):  # a page
            return redirect(f"{LOGIN_PATH}?{urlencode({'next': _safe_next(request.full_path.rstrip('?'))})}")
        return Response('{"error": "sign in first"}', status=401, mimetype="application/json")

    @server.route(LOGIN_PATH, methods=["GET", "POST"])
    def _login():  # type: ignore[no-untyped-def]
        next_path = _safe_next(request.args.get("next"))
        if request.method == "GET":
            return _login_page(None, has_password, next_path)
        client = request.remote_addr or "unknown"
        if limiter.locked(client):
            return _login_page("Too many failed attempts: wait a minute.", has_password, next_path, 429)
        if not _matches(request.form.get("secret", ""), accepted):
            limiter.failed(client)
            return _login_page("That is not it. Try again.", has_password, next_path, 401)
        limiter.succeeded(client)
        session.clear()
        session.permanent = True
        session["user"] = "dashboard"
        return redirect(next_path)

    @server.route(LOGOUT_PATH, methods=["GET", "POST"])
    def _logout():  # type: ignore[no-untyped-def]
        session.clear()
        return redirect(LOGIN_PATH)
