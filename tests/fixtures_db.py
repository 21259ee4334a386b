"""Store fixtures: every store test runs on SQLite and, when DUBAN_TEST_POSTGRES_URL is set,
on PostgreSQL, each test in a fresh database (SQLite file) or a fresh schema (PostgreSQL)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool
from typer.testing import CliRunner

from infra.db.engine import make_engine
from infra.db.migrate import upgrade
from infra.db.store import EventStore

POSTGRES_ENV = "DUBAN_TEST_POSTGRES_URL"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL to an empty database of the parametrised backend."""
    with empty_database(request.param, tmp_path) as url:
        yield url


@contextmanager
def empty_database(backend: str, tmp_path: Path) -> Iterator[str]:
    """A URL to an empty database: a SQLite file under `tmp_path`, or a fresh PostgreSQL schema
    (skipped without DUBAN_TEST_POSTGRES_URL), dropped afterwards."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'store' / 'duban.db'}"
        return
    base = os.environ.get(POSTGRES_ENV)
    if not base:
        pytest.skip(f"{POSTGRES_ENV} is not set")
    schema = f"t_{uuid.uuid4().hex}"
    admin = create_engine(base, poolclass=NullPool)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    # search_path as a connection option: every connection of every engine built from this
    # URL (including Alembic's and worker processes') lands in the test's own schema.
    url = make_url(base).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def store(db_url: str) -> Iterator[EventStore]:
    """A migrated EventStore on `db_url`."""
    upgrade(db_url)
    engine = make_engine(db_url)
    try:
        yield EventStore(engine)
    finally:
        engine.dispose()


@pytest.fixture
def cli(db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Run starter.py commands (typer's CliRunner) against the database at `db_url`."""
    import starter
    from infra.settings import get_settings

    monkeypatch.setenv("DATABASE_URL", db_url)
    get_settings.cache_clear()
    runner = CliRunner()

    def run(*args: str) -> Any:
        return runner.invoke(starter.app, list(args))

    try:
        yield run
    finally:
        get_settings.cache_clear()
