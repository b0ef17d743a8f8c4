"""What differs between SQLite and PostgreSQL, and nothing else.

Every other module writes portable SQL (named parameters, ``IS DISTINCT FROM``,
``ON CONFLICT``, ``RETURNING``, boolean ``OR``/``CASE`` rather than arithmetic) and asks
here for the few fragments that cannot be: building a device's JSON document, looking
up a tag, the separator of packed subquery results, the database's clock, and row locks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection


def is_postgres(conn: "Connection | Any") -> bool:
    return bool(conn.dialect.name == "postgresql")


def document_object(conn: "Connection", key: str, value: str, where: str) -> str:
    """An aggregate building ``{"key":value,...}`` from canonical JSON texts, keys in
    byte order, no spaces: devices compare documents, so both backends must give the
    same bytes (PostgreSQL's ``json_object_agg`` adds spaces). NULL or ``{}`` when
    ``where`` keeps no row."""
    if is_postgres(conn):
        return (
            f"'{{' || string_agg(to_json({key})::text || ':' || {value}, ',' ORDER BY {key} COLLATE \"C\") "
            f"FILTER (WHERE {where}) || '}}'"
        )
    # SQLite aggregates in scan order: the (device_id, key) primary key's byte order.
    return f"json_group_object({key}, json({value})) FILTER (WHERE {where})"


def tag_equals(conn: "Connection", alias: str, key: str, value: str, n: int) -> tuple[str, dict[str, Any]]:
    """A clause: the device's tag ``key`` equals ``value`` (tags are a JSON object of strings)."""
    tag, params = tag_value(conn, alias, key, f"tag_key_{n}")
    return f"{tag} = :tag_value_{n}", {**params, f"tag_value_{n}": value}


def tag_value(conn: "Connection | Any", alias: str, key: str, name: str) -> tuple[str, dict[str, Any]]:
    """An expression: the device's tag ``key`` (NULL without it); ``name``: its parameter."""
    if is_postgres(conn):
        return f"(CAST({alias}.tags AS jsonb) ->> :{name})", {name: key}
    return f"json_extract({alias}.tags, :{name})", {name: '$."' + key.replace('"', '\\"') + '"'}


def separator(conn: "Connection") -> str:
    """A character no key, name or timestamp holds, to pack several values in one
    scalar subquery's result."""
    return "chr(31)" if is_postgres(conn) else "char(31)"


def clock(conn: "Connection") -> str:
    """The database's clock in epoch seconds: leases are timed by it, not by each
    worker's own clock (SQLite's is the one machine's)."""
    if is_postgres(conn):
        return "CAST(extract(epoch FROM clock_timestamp()) AS double precision)"
    return "((julianday('now') - 2440587.5) * 86400.0)"


def bulk_insert(conn: "Connection", table: Any, columns: tuple[str, ...], rows: Iterable[tuple]) -> None:
    """Insert many rows at once: PostgreSQL's COPY (ten times an executemany), SQLite's
    executemany (its own fastest way)."""
    if is_postgres(conn):
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        with cursor.copy(f"COPY {table.name} ({', '.join(columns)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        return
    # The driver's own executemany of tuples: SQLAlchemy's insert() took as long again to
    # bind each row's parameters.
    statement = f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
    batch: list[tuple] = []
    for row in rows:
        batch.append(tuple(row))
        if len(batch) == 50_000:
            conn.exec_driver_sql(statement, batch)
            batch = []
    if batch:
        conn.exec_driver_sql(statement, batch)


def analyze(conn: "Connection", table: str) -> None:
    """Refresh the planner's statistics of a table that just grew by a bulk insert
    (PostgreSQL plans joins on them; autovacuum would do it only later)."""
    if is_postgres(conn):
        conn.exec_driver_sql(f"ANALYZE {table}")


def reading_all_rows(conn: "Connection") -> None:
    """For the rest of this transaction, a streamed query (a server-side cursor) is
    planned to read all its rows, not its first ones. PostgreSQL plans a cursor for its
    first tenth (index lookups one row at a time); a listing of every device reads them
    all, which hash joins and one sort do faster (a 100k-device export: 3.4 s → 2.7 s).
    SQLite has no such setting."""
    if is_postgres(conn):
        conn.exec_driver_sql("SET LOCAL cursor_tuple_fraction = 1.0")


def for_update(conn: "Connection", *, skip_locked: bool = False) -> str:
    """The row-lock suffix of a SELECT in a write transaction. SQLite needs none: its
    writers hold the database's write lock from BEGIN IMMEDIATE on."""
    if not is_postgres(conn):
        return ""
    return " FOR UPDATE SKIP LOCKED" if skip_locked else " FOR UPDATE"


def exclusive(conn: "Connection", name: str) -> None:
    """Until this write transaction ends, no other one passes ``exclusive`` with the same
    ``name``: for work that reads, decides and writes rows that may not exist yet (a
    fleet import), which row locks cannot cover. SQLite: its write lock already does."""
    if is_postgres(conn):
        from sqlalchemy import text

        conn.execute(text("SELECT pg_advisory_xact_lock(7350451, hashtext(:name))"), {"name": name})


def autocommit(conn: "Connection") -> "Connection":
    """``conn`` for reads that are each one statement, without BEGIN and COMMIT: on
    PostgreSQL in autocommit (two round trips fewer a read); SQLite's connections are
    in autocommit already outside the transactions ``campaignctl.db`` begins."""
    return conn.execution_options(isolation_level="AUTOCOMMIT") if is_postgres(conn) else conn
