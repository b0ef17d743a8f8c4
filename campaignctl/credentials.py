"""Device secrets for the HTTP device API.

A device's secret is HMAC-SHA256(key, salt): the salt is in the database, the key in a
separate file (``<database>.key`` by default, or ``$CAMPAIGNCTL_KEY_FILE``), created
0600 on first use. The database holds only the salt and the SHA-256 of the secret, so a
leaked database hands out no working credentials, while ``devices credentials`` can
still print a device's secret for whoever holds the key file.

SHA-256 rather than a slow password hash: these secrets are 256-bit random values, not
passwords a person chose, so there is nothing to brute-force, and every poll of every
device checks one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from campaignctl import db, store
from campaignctl.errors import CampaignctlError, InputError
from campaignctl.values import check_key, check_text, decode_utf8

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

#: Names per ``IN`` list: lists of any length, in statements of a bounded size.
CHUNK = 5000


def key_path(engine: "Engine") -> Path:
    """``$CAMPAIGNCTL_KEY_FILE``, else ``<database file>.key`` (SQLite), else a file
    named after the PostgreSQL database in campaignctl's data directory (every machine
    that serves the device API needs the same key: set CAMPAIGNCTL_KEY_FILE there)."""
    env = os.environ.get("CAMPAIGNCTL_KEY_FILE")
    if env:
        return Path(env)
    location = db.location_of(engine)
    if not location.is_postgres:
        return Path(f"{location.target}.key")
    url = engine.url
    return db.data_dir() / f"{url.database}@{url.host or 'localhost'}-{url.port or 5432}.key"


def load_key(engine: "Engine", *, create: bool = False) -> bytes:
    path = key_path(engine)
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        if not create:
            raise CampaignctlError(
                f"the device key file {path} is missing: device secrets cannot be shown "
                "(rotate them with campaignctl devices rotate-secret)"
            ) from None
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first
            return load_key(engine)
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(32))
        return load_key(engine)
    if len(key) != 32:
        raise CampaignctlError(f"the device key file {path} is damaged")
    db.keep_private([path])
    return key


def derive(key: bytes, salt: str) -> str:
    return base64.urlsafe_b64encode(hmac.new(key, salt.encode(), hashlib.sha256).digest()).rstrip(b"=").decode()


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def matches(stored_hash: str | None, presented: str) -> bool:
    return stored_hash is not None and hmac.compare_digest(stored_hash, digest(presented))


def provision(conn: "Connection", key: bytes, *, rotate_ids: list[int] | None = None) -> int:
    """Give a secret to every HTTP device that has none (or to ``rotate_ids``)."""
    if rotate_ids is None:
        ids = [
            r[0]
            for r in db.run(
                conn,
                "SELECT d.id FROM device d JOIN interface i ON i.id = d.interface_id "
                "WHERE i.type = 'http' AND d.secret_hash IS NULL ORDER BY d.id",
            )
        ]
    else:
        ids = rotate_ids
    rows = []
    for device_id in ids:
        salt = secrets.token_hex(16)
        rows.append({"salt": salt, "hash": digest(derive(key, salt)), "id": device_id})
    if rows:
        db.run(conn, "UPDATE device SET secret_salt = :salt, secret_hash = :hash WHERE id = :id", rows)
    return len(rows)


def _http_device(conn: "Connection", name: str):
    device = store.device_row(conn, name)
    if device.interface_type != "http":
        raise CampaignctlError(
            f"device {name!r} is on {device.interface_type} interface {device.interface!r}; "
            "only devices on http interfaces have secrets"
        )
    return device


def show_secret(engine: "Engine", name: str) -> str:
    with db.read(engine) as conn:
        _http_device(conn, name)
        salt = db.run(conn, "SELECT secret_salt FROM device WHERE name = :name", {"name": name}).scalar()
    if salt is None:
        raise CampaignctlError(f"device {name!r} has no secret yet (campaignctl devices rotate-secret {name})")
    return derive(load_key(engine), salt)


def rotate(engine: "Engine", name: str) -> None:
    key = load_key(engine, create=True)
    with db.write(engine) as conn:
        device = _http_device(conn, name)
        provision(conn, key, rotate_ids=[device.id])


def secrets_of(engine: "Engine", names: list[str]) -> dict[str, str]:
    """The secrets of many devices at once (the simulator's HTTP devices)."""
    key = load_key(engine)
    out: dict[str, str] = {}
    with db.read(engine) as conn:
        for start in range(0, len(names), CHUNK):
            for name, salt in db.run(
                conn,
                "SELECT name, secret_salt FROM device WHERE secret_salt IS NOT NULL AND name IN :names",
                {"names": names[start : start + CHUNK]},
                "names",
            ):
                out[name] = derive(key, salt)
    return out


def with_hidden_values(
    values: dict[str, Any], *, stdin_key: str | None, env_pairs: list[str], stdin: BinaryIO
) -> dict[str, Any]:
    """``values`` plus the secret values given out of sight of ``ps``: ``stdin_key``'s
    from ``stdin``, bytes that must be UTF-8 (one trailing newline removed, as ``echo``
    and here-strings add one), and each ``KEY=VAR`` of ``env_pairs`` from the environment
    variable VAR. They are strings, checked as ``KEY=VALUE`` arguments are; an empty one
    is refused (an unset or empty variable is never a secret)."""
    env = os.environ
    source = "<command line>"
    hidden: dict[str, str] = {}
    for pair in env_pairs:
        key, _, var = pair.partition("=")
        if not var:
            raise InputError(f"--secret-env takes KEY=VAR, got {pair!r}", source=source)
        if var not in env:
            raise InputError(f"--secret-env {key}: environment variable {var} is not set", source=source)
        _add_hidden(hidden, values, check_key(key, source=source), env[var], f"--secret-env {key}={var}")
    if stdin_key is not None:
        text = decode_utf8(stdin.read(), source=f"--secret-stdin {stdin_key}")
        text = text[:-2] if text.endswith("\r\n") else text.removesuffix("\n")
        _add_hidden(hidden, values, check_key(stdin_key, source=source), text, f"--secret-stdin {stdin_key}")
    return {**values, **hidden}


def _add_hidden(hidden: dict[str, str], values: dict[str, Any], key: str, value: str, option: str) -> None:
    if key in hidden or key in values:
        raise InputError(f"{key} is given more than once", source="<command line>")
    if not value:
        raise InputError(f"the value of {key} is empty", source="<command line>")
    # Bytes that are not UTF-8 reach os.environ as lone surrogates, which nothing can store.
    hidden[key] = check_text(value, option, source="<command line>")
