"""The dashboard's own settings, read from the same FRAUDSTREAM_* variables as the rest.

The dashboard imports nothing from `core` (it only talks HTTP), so it reads the handful of
variables it needs itself, with the same names and defaults as `core.settings.Settings`:
a supervisor that hands every service `settings_env(...)` configures it unchanged.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

_WILDCARD_HOSTS = {"", "0.0.0.0", "::", "[::]"}


class DashboardSettings(BaseSettings):
    """Where the API is, where to serve, and how often the live page refreshes."""

    model_config = SettingsConfigDict(env_prefix="FRAUDSTREAM_", env_file=".env", extra="ignore")

    api_url: str | None = Field(default=None, description="the API's base URL; unset = host:api_port")
    host: str = "127.0.0.1"
    api_port: int = Field(default=8000, ge=1, le=65535)
    dashboard_port: int = Field(default=8050, ge=1, le=65535)
    api_token: str | None = Field(default=None, description="bearer token for POST /api/predict")
    api_timeout: float = Field(default=5.0, gt=0, le=120, description="seconds per API request")
    refresh_ms: int = Field(default=1500, ge=250, le=60_000, description="live page refresh period")

    @property
    def resolved_api_url(self) -> str:
        """The API's base URL; a wildcard bind address is reached through loopback."""
        if self.api_url:
            return self.api_url.rstrip("/")
        host = "127.0.0.1" if self.host in _WILDCARD_HOSTS else self.host
        return f"http://{host}:{self.api_port}"
