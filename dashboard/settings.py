"""The dashboard's own settings, read from the same FRAUDSTREAM_* variables as the rest.

The dashboard imports nothing from `core` (it only talks HTTP), so it reads the handful of
variables it needs itself, with the same names and defaults as `core.settings.Settings`:
a supervisor that hands every service `settings_env(...)` configures it unchanged.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

_WILDCARD_HOSTS = {"", "0.0.0.0", "::", "[::]"}
_LOOPBACK_HOSTS = {"localhost", "::1", "[::1]"}


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    return host in _LOOPBACK_HOSTS or host.startswith("127.")


class DashboardSettings(BaseSettings):
    """Where the API is, where to serve, and how often the live page refreshes."""

    model_config = SettingsConfigDict(env_prefix="FRAUDSTREAM_", env_file=".env", extra="ignore")

    api_url: str | None = Field(default=None, description="the API's base URL; unset = host:api_port")
    host: str = "127.0.0.1"
    api_port: int = Field(default=8000, ge=1, le=65535)
    dashboard_port: int = Field(default=8050, ge=1, le=65535)
    api_token: str | None = Field(
        default=None, description="the API's write token (Try it stores a prediction)"
    )
    api_read_token: str | None = Field(default=None, description="the API's read token, for every read")
    dashboard_password: str | None = Field(
        default=None, description="the login password; unset = log in with the API token the dashboard holds"
    )
    dashboard_secret_key: str | None = Field(
        default=None,
        description="signs the session cookie; unset = a new one per process (logins end on restart)",
    )
    api_timeout: float = Field(default=5.0, gt=0, le=120, description="seconds per API request")
    refresh_ms: int = Field(default=1500, ge=250, le=60_000, description="live page refresh period")

    @property
    def login_secrets(self) -> list[str]:
        """What a person may log in with: the password, else the API tokens the dashboard holds."""
        if self.dashboard_password:
            return [self.dashboard_password]
        return [token for token in (self.api_read_token, self.api_token) if token]

    def login_required(self, host: str) -> bool:
        """A login whenever the dashboard holds API credentials (it must never lend them to an
        anonymous visitor), a password is set, or it is reachable from beyond this machine."""
        return bool(self.dashboard_password or self.api_token or self.api_read_token) or not is_loopback(host)

    @property
    def resolved_api_url(self) -> str:
        """The API's base URL; a wildcard bind address is reached through loopback."""
        if self.api_url:
            return self.api_url.rstrip("/")
        host = "127.0.0.1" if self.host in _WILDCARD_HOSTS else self.host
        return f"http://{host}:{self.api_port}"
