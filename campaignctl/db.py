"""The SQLite database: location, engine factory with pragmas, transactions, migrations."""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from campaignctl.errors import CampaignctlError

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

BUSY_TIMEOUT_MS = 30_000
POOL_SIZE = 40


def default_path() -> Path:
    env = os.environ.get("CAMPAIGNCTL_DB")
    if env:
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "campaignctl" / "campaignctl.db"


def utcnow() -> str:
    """Timestamps are stored as ISO 8601 UTC text, which sorts like time."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _create_private_file(path: Path) -> None:
    # The database holds tokens and secrets: only its owner may read it. SQLite gives
    # the -wal and -shm files the mode of the database file.
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
    os.close(fd)


def create_engine(path: str | os.PathLike[str]) -> "Engine":
    """An engine on ``path`` with campaignctl's pragmas; the file is created 0600, then migrated."""
    from sqlalchemy import create_engine as sa_create_engine, event

    path = Path(path)
    if not path.exists():
        try:
            _create_private_file(path)
        except OSError as exc:
            raise CampaignctlError(f"cannot create database {path}: {exc.strerror}") from None
    if path.is_dir():
        raise CampaignctlError(f"{path} is a directory, not a database file")
    engine = sa_create_engine(
        f"sqlite:///{path}",
        connect_args={"timeout": BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
        # SQL errors would print their parameters: desired values, tokens among them.
        hide_parameters=True,
        # Enough pooled connections for a server's worker threads (anyio runs up to 40):
        # past pool_size, SQLAlchemy closes returned connections and opens new ones,
        # pragmas included, on every request.
        pool_size=POOL_SIZE,
        max_overflow=POOL_SIZE,
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):  # noqa: ANN001
        # Take transaction control away from the sqlite3 module so that BEGIN is ours
        # (SQLAlchemy's documented recipe), then set the pragmas every connection needs.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):  # noqa: ANN001
        # Writers take the write lock up front: a deferred transaction that reads, then
        # writes, fails with SQLITE_BUSY instead of waiting when another writer got there first.
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("write") else "BEGIN")

    from sqlalchemy.exc import DatabaseError, OperationalError

    from campaignctl.migrations import migrate

    try:
        migrate(engine)
    except (DatabaseError, OperationalError) as exc:
        engine.dispose()
        raise CampaignctlError(f"{path} cannot be used as a campaignctl database: {exc.orig}") from None
    except Exception:
        engine.dispose()
        raise
    return engine


@contextmanager
def write(engine: "Engine") -> Iterator["Connection"]:
    """A write transaction (BEGIN IMMEDIATE), committed on success, rolled back on error."""
    with engine.connect() as conn:
        conn = conn.execution_options(write=True)
        with conn.begin():
            yield conn


@contextmanager
def read(engine: "Engine") -> Iterator["Connection"]:
    """A read transaction: one consistent snapshot of the database."""
    with engine.connect() as conn, conn.begin():
        yield conn


def session(engine: "Engine", *, write: bool = False):  # noqa: ANN201
    """A SQLModel session; ``write=True`` makes its transaction BEGIN IMMEDIATE."""
    from sqlmodel import Session

    return Session(engine.execution_options(write=True) if write else engine)


def epoch() -> float:
    return time.time()
