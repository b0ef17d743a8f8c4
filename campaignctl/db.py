"""The database: where it is, the engine for either backend, transactions, the schema check.

``--db`` / ``CAMPAIGNCTL_DB`` is a file path (SQLite, the embedded default) or a
``postgresql://`` URL (the shared store for teams and scale-out). Everything above this
module is the same on both: SQL is written with named parameters, and what really
differs between the two lives in ``campaignctl.dialect``.

SQLite: WAL, ``BEGIN IMMEDIATE`` for writers (one writer at a time, waiting on the
busy timeout), the file created 0600 and migrated on first use.
PostgreSQL: READ COMMITTED writers that lock the rows they decide on, REPEATABLE READ
read-only snapshots for readers, and a schema migrated only by ``campaignctl db upgrade``
(never silently under running workers).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from campaignctl.errors import CampaignctlError
from campaignctl.values import cut

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine
    from sqlalchemy.sql.elements import TextClause

BUSY_TIMEOUT_MS = 30_000
POOL_SIZE = 40
CONNECT_TIMEOUT_S = 10
#: Characters kept of a driver's error text: some quote the value they refused (a
#: device's report among them), which a log line or an error message must not carry whole.
MAX_DETAIL = 300


def data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "campaignctl"


def default_path() -> str:
    return os.environ.get("CAMPAIGNCTL_DB") or str(data_dir() / "campaignctl.db")


def utcnow() -> str:
    """Timestamps are stored as ISO 8601 UTC text, which sorts like time."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Location:
    """Where the database is: ``backend`` is ``sqlite`` or ``postgresql``; ``shown``
    names it for people (a URL never shows its password)."""

    backend: str
    target: str  # SQLite: the file path; PostgreSQL: the URL as given
    shown: str

    @property
    def is_postgres(self) -> bool:
        return self.backend == "postgresql"


def locate(target: str | os.PathLike[str]) -> Location:
    text = os.fspath(target)
    scheme = text.split("://", 1)[0].lower() if "://" in text else ""
    if scheme in ("postgresql", "postgres", "postgresql+psycopg"):
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            url = make_url(text)
        except (ArgumentError, ValueError):
            raise CampaignctlError("the database URL is not valid (postgresql://USER@HOST[:PORT]/DATABASE)") from None
        return Location("postgresql", text, _describe(url))
    if scheme and scheme != "sqlite":
        raise CampaignctlError(
            f"unsupported database URL scheme {scheme!r}: give a file path (SQLite) or a postgresql:// URL"
        )
    if scheme == "sqlite":  # sqlite:///relative/path, sqlite:////absolute/path
        from sqlalchemy.engine import make_url

        text = make_url(text).database or ""
    return Location("sqlite", text, text)


def _describe(url: Any) -> str:
    host = url.host or url.query.get("host") or "localhost"
    port = f":{url.port}" if url.port else ""
    return f"PostgreSQL database {url.database or '(default)'!s} on {host}{port}"


def create_engine(target: str | os.PathLike[str], *, upgrade: bool | None = None, check: bool = True) -> "Engine":
    """An engine on ``target``, checked to hold campaignctl's current schema.

    ``upgrade``: migrate the schema first (default: on SQLite only; on PostgreSQL
    ``campaignctl db upgrade`` does it, and an outdated schema is an error here).
    ``check=False``: no schema check at all (``db status``), only a connection.
    """
    location = locate(target)
    engine = _sqlite_engine(location) if not location.is_postgres else _postgres_engine(location)
    engine.info_location = location  # type: ignore[attr-defined]
    from campaignctl.migrations import ensure_schema

    try:
        if not check:
            engine.connect().close()
            return engine
        ensure_schema(engine, upgrade=(not location.is_postgres) if upgrade is None else upgrade)
    except CampaignctlError:
        engine.dispose()
        raise
    except Exception as exc:  # noqa: BLE001 - any failure to open: one line naming the database
        engine.dispose()
        raise friendly(exc, location) from None
    return engine


def location_of(engine: "Engine") -> Location:
    return engine.info_location  # type: ignore[attr-defined]


def friendly(exc: BaseException, location: Location) -> CampaignctlError:
    """A database error as one line naming the database (never a password)."""
    from sqlalchemy.exc import DBAPIError

    orig = exc.orig if isinstance(exc, DBAPIError) else exc
    # PostgreSQL's own text only: its DETAIL repeats the values of the failing row
    # ("Failing row contains (…)"), secrets among them.
    primary = getattr(getattr(orig, "diag", None), "message_primary", None)
    detail = " ".join(str(primary or orig).split()) or type(orig).__name__
    if location.is_postgres:
        # Scrubbed before it is cut: a cut could leave a password's head unmatched.
        detail = cut(_scrub(detail, location.target), MAX_DETAIL)
        return CampaignctlError(f"cannot use the {location.shown}: {detail}")
    detail = cut(detail, MAX_DETAIL)
    return CampaignctlError(_sqlite_problem(orig or exc, location.target, detail))


# SQLite's primary result codes (https://sqlite.org/rescode.html) that say what the
# operator must do, rather than SQLite's own terse text.
_SQLITE_READONLY, _SQLITE_IOERR, _SQLITE_CORRUPT, _SQLITE_FULL, _SQLITE_CANTOPEN = 8, 10, 11, 13, 14


def _sqlite_problem(orig: BaseException, path: str, detail: str) -> str:
    code = getattr(orig, "sqlite_errorcode", 0) & 0xFF
    if code == _SQLITE_FULL:
        return f"{path}: the disk is full ({detail}); the transaction was rolled back: free some space and try again"
    if code == _SQLITE_READONLY or (code == _SQLITE_CANTOPEN and not _writable(Path(path))):
        return (
            f"{path} is read-only ({detail}): campaignctl writes to the database, and to its -wal and -shm "
            "files in the same directory, even to read it"
        )
    if code == _SQLITE_CORRUPT:
        return f"{path} is damaged ({detail}): restore it from a backup"
    if code == _SQLITE_IOERR:
        return f"{path}: input/output error ({detail}); the transaction was rolled back"
    return f"{path} cannot be used as a campaignctl database: {detail}"


def _writable(path: Path) -> bool:
    """Whether this process may write ``path`` and create files beside it (a read-only
    file system included, which file modes do not show)."""
    directory = path.parent if str(path.parent) else Path(".")
    return os.access(directory, os.W_OK) and (not path.exists() or os.access(path, os.W_OK))


class UnreadableData(Exception):
    """Stored data that does not decode. campaignctl checks all it stores, so the
    database was changed outside it, or bytes of it were damaged. Not a ValueError: no
    handler of bad input may take it for the user's mistake."""


def loads(text: str | None, of: type | None = None) -> Any:
    """A stored JSON column's value (None for NULL), which must be an ``of`` (e.g. dict)
    when given. Only stored text goes through here, so that a decoding error is known to
    be the database's (``UnreadableData``), and never confused with a bad file or flag."""
    import json

    try:
        value = None if text is None else json.loads(text)
    except (ValueError, TypeError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise UnreadableData(f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}") from None
    if of is not None and not isinstance(value, of):
        raise UnreadableData(f"a {of.__name__} was stored as {type(value).__name__}")
    return value


def unreadable_data(exc: UnreadableData, location: Location) -> CampaignctlError:
    """``exc`` as one line naming the database."""
    return CampaignctlError(
        f"{location.shown} holds data campaignctl cannot read ({exc}): it was changed "
        "outside campaignctl or is damaged; restore it from a backup"
    )


def describe(exc: BaseException, engine: "Engine | None") -> str:
    """One line for a log: campaignctl's own message, a database error without its SQL
    (whose parameters may hold document values and secrets), or the exception's type and
    text, cut (``engine`` is None when it could not be made)."""
    from sqlalchemy.exc import DBAPIError

    if isinstance(exc, CampaignctlError):
        return exc.message
    if isinstance(exc, DBAPIError) and engine is not None:
        return friendly(exc, location_of(engine)).message
    if isinstance(exc, DBAPIError):  # the driver's first line: PostgreSQL's DETAIL repeats row values
        first = (str(exc.orig).splitlines() or [""])[0]
        return f"{type(exc.orig).__name__}: {cut(first, MAX_DETAIL)}"
    return f"{type(exc).__name__}: {cut(' '.join(str(exc).split()), MAX_DETAIL)}"


def _scrub(text: str, url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        password = make_url(url).password
    except Exception:  # noqa: BLE001 - nothing to scrub then
        return text
    return text.replace(str(password), "***") if password else text


def _create_private_file(path: Path) -> None:
    # The database holds tokens and secrets: only its owner may read it. SQLite gives
    # the -wal and -shm files the mode of the database file.
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
    os.close(fd)


def keep_private(files: Iterable[Path]) -> None:
    """Tighten each existing file that others may read to 0600 (a database holds the
    hashes of device secrets and download tokens, a key file the key to them). A file of
    another user, or on a read-only file system, cannot be changed: a warning says so."""
    for file in files:
        try:
            mode = file.stat().st_mode & 0o777
        except OSError:
            continue
        if not mode & 0o077:
            continue
        try:
            os.chmod(file, 0o600)
        except OSError as exc:
            import sys

            print(
                f"Warning: {file} can be read by other users (mode {mode:04o}) and could not be made private "
                f"({exc.strerror}): it holds secrets; chmod 600 it",
                file=sys.stderr,
            )


def _sqlite_engine(location: Location) -> "Engine":
    from sqlalchemy import create_engine as sa_create_engine
    from sqlalchemy import event

    path = Path(location.target)
    if not path.exists():
        try:
            _create_private_file(path)
        except OSError as exc:
            raise CampaignctlError(f"cannot create database {path}: {exc.strerror}") from None
    if path.is_dir():
        raise CampaignctlError(f"{path} is a directory, not a database file")
    keep_private([path, Path(f"{path}-wal"), Path(f"{path}-shm")])  # SQLite's files beside it
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
    def _on_connect(dbapi_connection, _record):
        # Take transaction control away from the sqlite3 module so that BEGIN is ours
        # (SQLAlchemy's documented recipe), then set the pragmas every connection needs.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        # Sorts and groupings (the supervision's, over a million job items) in memory
        # rather than in a temporary file: a third faster, a few tens of MB.
        cursor.execute("PRAGMA temp_store=MEMORY")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        # Writers take the write lock up front: a deferred transaction that reads, then
        # writes, fails with SQLITE_BUSY instead of waiting when another writer got there first.
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("write") else "BEGIN")

    return engine


def _postgres_engine(location: Location) -> "Engine":
    from sqlalchemy import create_engine as sa_create_engine
    from sqlalchemy.engine import make_url

    url = make_url(location.target).set(drivername="postgresql+psycopg")
    try:
        import psycopg  # noqa: F401
    except ImportError:  # pragma: no cover - a dependency
        raise CampaignctlError("PostgreSQL needs the psycopg package (pip install 'psycopg[binary]')") from None
    return sa_create_engine(
        url,
        hide_parameters=True,
        pool_size=POOL_SIZE,
        max_overflow=POOL_SIZE,
        pool_pre_ping=True,
        # JIT compilation: queries over every device of a large job are estimated costly
        # enough to be compiled first, which takes longer (~0.5 s) than running them.
        connect_args={"connect_timeout": CONNECT_TIMEOUT_S, "application_name": "campaignctl", "options": "-c jit=off"},
    )


@contextmanager
def write(engine: "Engine") -> Iterator["Connection"]:
    """A write transaction, committed on success, rolled back on error.

    SQLite: BEGIN IMMEDIATE, one writer at a time. PostgreSQL: READ COMMITTED; a
    writer that decides on what it read locks those rows (``dialect.for_update``).
    """
    with _connect(engine) as conn:
        conn = conn.execution_options(write=True)
        with conn.begin():
            yield conn


@contextmanager
def read(engine: "Engine") -> Iterator["Connection"]:
    """A read transaction: one consistent snapshot of the database."""
    with _connect(engine) as conn:
        if conn.dialect.name == "postgresql":
            # READ COMMITTED would give each statement its own snapshot.
            conn = conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
        with conn.begin():
            yield conn


@contextmanager
def _connect(engine: "Engine") -> Iterator["Connection"]:
    from sqlalchemy.exc import OperationalError

    try:
        conn = engine.connect()
    except OperationalError as exc:
        raise friendly(exc, location_of(engine)) from None
    with conn:
        yield conn


def session(engine: "Engine", *, write: bool = False):
    """A SQLModel session; ``write=True`` makes its transaction BEGIN IMMEDIATE on SQLite."""
    from sqlmodel import Session

    return Session(engine.execution_options(write=True) if write else engine)


def sql(statement: str, *expanding: str) -> "TextClause":
    """A statement with named parameters (``:name``); the names in ``expanding`` take a
    list (``WHERE name IN :names``)."""
    from sqlalchemy import bindparam, text

    clause = text(statement)
    if expanding:
        clause = clause.bindparams(*(bindparam(name, expanding=True) for name in expanding))
    return clause


def run(conn: "Connection", statement: str, params: Any = None, *expanding: str) -> Any:
    """Execute ``statement`` (named parameters) with a dict, or a list of dicts (executemany)."""
    return conn.execute(sql(statement, *expanding), params if params is not None else {})
