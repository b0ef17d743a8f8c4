"""Small shared database helpers: revisions, lookups by name, configuration writes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from campaignctl import db
from campaignctl.suggest import not_found

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

UPSERT_DESIRED = (
    "INSERT INTO device_config (device_id, key, desired, desired_at, desired_revision, desired_by, secret) "
    "VALUES (:device_id, :key, :desired, :desired_at, :desired_revision, :desired_by, :secret) "
    "ON CONFLICT (device_id, key) DO UPDATE SET desired = excluded.desired, desired_at = excluded.desired_at, "
    "desired_revision = excluded.desired_revision, desired_by = excluded.desired_by, "
    # Once secret, always secret: the device may still report the old secret value.
    "secret = (device_config.secret OR excluded.secret)"
)
UPSERT_REPORTED = (
    "INSERT INTO device_config (device_id, key, reported, reported_at) "
    "VALUES (:device_id, :key, :reported, :reported_at) "
    "ON CONFLICT (device_id, key) DO UPDATE SET reported = excluded.reported, reported_at = excluded.reported_at"
)
_DESIRED = ("device_id", "key", "desired", "desired_at", "desired_revision", "desired_by", "secret")
_REPORTED = ("device_id", "key", "reported", "reported_at")


def next_revision(conn: "Connection") -> int:
    """The next value of the global revision counter; must run in a write transaction.

    A device's document version is the highest revision among its desired entries, so
    it only grows, whoever writes.
    """
    return int(db.run(conn, "UPDATE meta SET value = value + 1 WHERE key = 'revision' RETURNING value").scalar_one())


#: Device names per ``IN`` list: lists of any length, in statements of a bounded size.
NAMES_PER_STATEMENT = 5000


def by_name(conn: "Connection", names: Sequence[str], column: str) -> dict[str, Any]:
    """``column`` of each of these devices that exists, by name."""
    found: dict[str, Any] = {}
    for start in range(0, len(names), NAMES_PER_STATEMENT):
        found.update(
            db.run(
                conn,
                f"SELECT name, {column} FROM device WHERE name IN :names",
                {"names": list(names[start : start + NAMES_PER_STATEMENT])},
                "names",
            ).all()
        )
    return found


def device_row(conn: "Connection", name: str) -> Any:
    row = db.run(
        conn,
        "SELECT d.id, d.name, d.tags, d.created_at, d.updated_at, t.name AS type, i.name AS interface, "
        "i.type AS interface_type, i.settings AS interface_settings "
        "FROM device d JOIN device_type t ON t.id = d.device_type_id JOIN interface i ON i.id = d.interface_id "
        "WHERE d.name = :name",
        {"name": name},
    ).one_or_none()
    if row is None:
        raise not_found(conn, "device", name)
    return row


def _in_key_order(rows: Sequence[tuple]) -> list[tuple]:
    """One row per (device_id, key), the last one given, in key order: concurrent writers
    (PostgreSQL) lock the rows they upsert in the same order, so they wait for each other
    instead of deadlocking."""
    return sorted({(row[0], row[1]): row for row in rows}.values(), key=lambda row: (row[0], row[1]))


def write_desired(conn: "Connection", rows: Sequence[tuple]) -> None:
    """Bulk upsert of desired entries: (device_id, key, json, at, revision, by, secret)."""
    if rows:
        # secret as a boolean: PostgreSQL's column takes no 0 or 1.
        db.run(
            conn, UPSERT_DESIRED, [{**dict(zip(_DESIRED, row)), "secret": bool(row[6])} for row in _in_key_order(rows)]
        )


def write_reported(conn: "Connection", rows: Sequence[tuple]) -> None:
    """Bulk upsert of reported entries: (device_id, key, json, at)."""
    if rows:
        db.run(conn, UPSERT_REPORTED, [dict(zip(_REPORTED, row)) for row in _in_key_order(rows)])
