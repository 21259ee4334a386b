"""Engines and sessions for the store (SQLite file by default, PostgreSQL in production)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.orm import Session, sessionmaker

__all__ = [
    "IMMEDIATE",
    "configure_sqlite",
    "is_sqlite",
    "make_engine",
    "session_factory",
    "write_options",
]

# Execution option understood by the SQLite "begin" hook below: {"duban_begin": IMMEDIATE}
# starts the transaction with BEGIN IMMEDIATE (take the write lock now).
IMMEDIATE = "IMMEDIATE"
_BEGIN_OPTION = "duban_begin"
_BUSY_TIMEOUT_MS = 30_000


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for `url`. SQLite: creates the file's folder, WAL journal (readers do not
    block the writer), foreign keys, a busy timeout, and transactions begun by SQLAlchemy
    rather than by the driver, so that writers can use BEGIN IMMEDIATE. PostgreSQL: pre-ping
    pooled connections, so a restarted server costs a reconnect, not an error."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, **kwargs)
        configure_sqlite(engine)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(url, **kwargs)


def configure_sqlite(engine: Engine) -> None:
    """Install the SQLite connection hooks once (idempotent: stores may call it again)."""
    if event.contains(engine, "connect", _on_sqlite_connect):
        return
    event.listen(engine, "connect", _on_sqlite_connect)
    event.listen(engine, "begin", _on_sqlite_begin)


def _on_sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # The stdlib driver's own transaction handling only BEGINs (deferred) before DML; taking it
    # over lets SQLAlchemy's "begin" hook choose DEFERRED or IMMEDIATE. A deferred transaction
    # that later writes can fail with SQLITE_BUSY at once (busy_timeout does not apply to lock
    # upgrades), so every writer in this project begins IMMEDIATE.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        # FULL (not NORMAL): an acknowledged event must survive a power cut too, since the
        # workflow will not record it again. It costs an fsync per commit.
        cursor.execute("PRAGMA synchronous = FULL")
        cursor.execute("PRAGMA foreign_keys = ON")
    finally:
        cursor.close()


def _on_sqlite_begin(conn: Connection) -> None:
    mode = conn.get_execution_options().get(_BEGIN_OPTION, "DEFERRED")
    conn.exec_driver_sql(f"BEGIN {mode}")


def write_options() -> dict[str, str]:
    """Execution options for a connection that will write (BEGIN IMMEDIATE on SQLite)."""
    return {_BEGIN_OPTION: IMMEDIATE}


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions that keep loaded objects usable after commit (read models are passed around)."""
    return sessionmaker(engine, expire_on_commit=False)
