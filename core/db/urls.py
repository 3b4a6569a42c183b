"""Turn one configured PostgreSQL URL into the forms each driver wants."""

from __future__ import annotations

from sqlalchemy.engine import make_url


def sqlalchemy_url(database_url: str) -> str:
    """`postgresql+asyncpg://...` for SQLAlchemy's async engine."""
    return make_url(database_url).set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)


def asyncpg_dsn(database_url: str) -> str:
    """`postgresql://...` for asyncpg itself (the scorer's hot path)."""
    return make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)


def redacted(database_url: str) -> str:
    """The URL with its password hidden, for logs and messages."""
    return make_url(database_url).render_as_string(hide_password=True)
