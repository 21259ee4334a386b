"""Schema migrations, run from code: `upgrade(url)` brings a database to the latest revision.

The Alembic configuration is built here rather than read from an alembic.ini, so that the
worker, the CLI and the tests all migrate the same way, wherever they run from.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

__all__ = ["MIGRATIONS_DIR", "alembic_config", "upgrade"]

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    # ConfigParser interpolates "%": URL-encoded characters (e.g. in passwords) must be doubled.
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str) -> None:
    """Migrate the database at `url` to the head revision (idempotent)."""
    command.upgrade(alembic_config(url), "head")
