"""Operators: the people and scripts allowed into the operator API and the web front-end.

An operator's token is shown once, when it is made; the database keeps its SHA-256 (a
256-bit random token, like a device secret: nothing to brute-force, so no slow hash).
Tokens carry a prefix of their own, so that an operator token never passes for a device
secret and the other way round: the two are looked up in different tables anyway.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Any

from campaignctl import audit, db
from campaignctl.credentials import digest
from campaignctl.errors import ConflictError, InputError, NotFoundError
from campaignctl.names import name_problem

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

PREFIX = "cco_"


def _check(name: str) -> str:
    problem = name_problem(name, "an operator name")
    if problem:
        raise InputError(problem)
    return name


def add(engine: "Engine", name: str) -> str:
    """A new operator; returns the token, which is not kept."""
    _check(name)
    token = PREFIX + secrets.token_urlsafe(32)
    with db.write(engine) as conn:
        row = db.run(conn, "SELECT revoked_at FROM operator WHERE name = :name", {"name": name}).first()
        if row is not None and row.revoked_at is not None:
            # Kept taken: the audit trail's events under this name speak of one operator.
            raise ConflictError(f"operator {name} was revoked and its name stays taken; pick another name")
        if row is not None:
            raise ConflictError(f"operator {name} exists (revoke it and add another name to replace the token)")
        db.run(
            conn,
            "INSERT INTO operator (name, token_hash, created_at) VALUES (:name, :hash, :now)",
            {"name": name, "hash": digest(token), "now": db.utcnow()},
        )
        audit.record(conn, "operator.added", details={"operator": name})
    return token


def list_operators(engine: "Engine") -> list[dict[str, Any]]:
    with db.read(engine) as conn:
        rows = db.run(conn, "SELECT name, created_at, revoked_at, last_used_at FROM operator ORDER BY name").all()
    return [
        {
            "name": r.name,
            "status": "revoked" if r.revoked_at else "active",
            "created_at": r.created_at,
            "revoked_at": r.revoked_at,
            "last_used_at": r.last_used_at,
        }
        for r in rows
    ]


def revoke(engine: "Engine", name: str) -> None:
    with db.write(engine) as conn:
        row = db.run(conn, "SELECT revoked_at FROM operator WHERE name = :name", {"name": name}).first()
        if row is None:
            raise NotFoundError(f"no operator named {name}")
        if row.revoked_at is not None:
            return  # revoking twice is what the user wanted anyway
        db.run(conn, "UPDATE operator SET revoked_at = :now WHERE name = :name", {"now": db.utcnow(), "name": name})
        audit.record(conn, "operator.revoked", details={"operator": name})


def authenticate(conn: "Connection", token: str) -> str | None:
    """The active operator whose token this is, else None. Only tokens of the operator
    form are looked up: a device secret never names an operator."""
    if not token.startswith(PREFIX) or len(token) > 200:
        return None
    row = db.run(
        conn, "SELECT name FROM operator WHERE token_hash = :hash AND revoked_at IS NULL", {"hash": digest(token)}
    ).first()
    return None if row is None else str(row.name)


def touch(engine: "Engine", name: str) -> None:
    """Record that ``name`` used their token now (``operators list`` shows it)."""
    with db.write(engine) as conn:
        db.run(conn, "UPDATE operator SET last_used_at = :now WHERE name = :name", {"now": db.utcnow(), "name": name})
