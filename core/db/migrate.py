"""Apply the schema migrations (Alembic) to a database, from code or the command line."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from core.db.urls import sqlalchemy_url

MIGRATIONS = Path(__file__).resolve().parents[1] / "migrations"


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", sqlalchemy_url(database_url).replace("%", "%%"))
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """Bring the database to `revision` (idempotent: an up-to-date database is left as it is)."""
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str) -> None:
    command.downgrade(alembic_config(database_url), revision)


def include_name(name: str | None, type_: str, parent_names: object) -> bool:
    """Alembic's filter: the partitions of the row tables (made by migration 0013 and the
    maintenance task, `core.db.partitions`) are not tables of `core.db.schema`."""
    from core.db.partitions import is_partition

    return not (type_ == "table" and name is not None and is_partition(name))
