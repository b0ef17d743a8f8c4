"""The firmware registry: versions per device type and firmware type."""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Any

from campaignctl import db
from campaignctl.errors import ConflictError, InputError, NotFoundError
from campaignctl.values import mask

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")


def add(engine: "Engine", *, device_type: str, firmware_type: str, version: str, url: str,
        token_env: str | None = None, sha256: str | None = None, size: int | None = None,
        description: str | None = None) -> dict[str, Any]:
    if not version.strip():
        raise InputError("must not be empty", field="--version")
    if not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", url):
        raise InputError(f"{url!r} is not a URL", field="--url")
    if sha256 is not None and not _SHA256.match(sha256):
        raise InputError("must be 64 hexadecimal digits", field="--sha256")
    if size is not None and not 0 <= size < 2**63:
        raise InputError("must be between 0 and 2^63-1 bytes", field="--size")
    token = None
    if token_env is not None:
        token = os.environ.get(token_env)
        if token is None:
            raise InputError(f"environment variable {token_env} is not set", field="--token-env")
    with db.write(engine) as conn:
        type_id = db.run(conn, "SELECT id FROM device_type WHERE name = :name", {"name": device_type}).scalar()
        if type_id is None:
            raise NotFoundError(f"no device type named {device_type!r}")
        if db.run(conn, "SELECT 1 FROM firmware_type WHERE device_type_id = :type_id AND name = :name",
                  {"type_id": type_id, "name": firmware_type}).first() is None:
            raise NotFoundError(f"device type {device_type!r} has no firmware type {firmware_type!r} "
                                "(declare it in the fleet manifest)")
        # The unique (device type, firmware type, version) decides, even against another
        # process adding the same version at the same moment.
        added = db.run(
            conn,
            "INSERT INTO firmware (device_type_id, firmware_type, version, url, token, sha256, size, description, "
            "created_at) VALUES (:type_id, :firmware_type, :version, :url, :token, :sha256, :size, :description, "
            ":now) ON CONFLICT (device_type_id, firmware_type, version) DO NOTHING",
            {"type_id": type_id, "firmware_type": firmware_type, "version": version, "url": url, "token": token,
             "sha256": sha256.lower() if sha256 else None, "size": size, "description": description,
             "now": db.utcnow()}).rowcount
        if added != 1:
            raise ConflictError(f"{device_type} {firmware_type} firmware {version!r} is already in the registry")
    return {"device_type": device_type, "firmware_type": firmware_type, "version": version}


def list_firmwares(engine: "Engine", *, device_type: str | None = None, show_secrets: bool = False) -> list[dict]:
    sql = ("SELECT t.name, f.firmware_type, f.version, f.url, f.token, f.sha256, f.size, f.description, f.created_at "
           "FROM firmware f JOIN device_type t ON t.id = f.device_type_id")
    params: dict[str, Any] = {}
    if device_type is not None:
        sql += " WHERE t.name = :device_type"
        params["device_type"] = device_type
    with db.read(engine) as conn:
        rows = db.run(conn, sql + " ORDER BY t.name, f.firmware_type, f.created_at, f.id", params).all()
    return [{"device_type": r[0], "firmware_type": r[1], "version": r[2], "url": r[3],
             "token": None if r[4] is None else mask(r[4], True, show_secrets=show_secrets),
             "sha256": r[5], "size": r[6], "description": r[7], "created_at": r[8]} for r in rows]
