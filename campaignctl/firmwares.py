"""The firmware registry: versions per device type and firmware type."""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Any

from campaignctl import audit, db
from campaignctl.errors import ConflictError, InputError, NotFoundError
from campaignctl.suggest import did_you_mean, not_found
from campaignctl.values import mask

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")


def add(
    engine: "Engine",
    *,
    device_type: str,
    firmware_type: str,
    version: str,
    url: str,
    token_env: str | None = None,
    token: str | None = None,
    sha256: str | None = None,
    size: int | None = None,
    description: str | None = None,
) -> dict[str, Any]:
    if not version.strip():
        raise InputError("must not be empty", field="--version")
    if not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", url):
        raise InputError(f"{url!r} is not a URL", field="--url")
    if sha256 is not None and not _SHA256.match(sha256):
        raise InputError("must be 64 hexadecimal digits", field="--sha256")
    if size is not None and not 0 <= size < 2**63:
        raise InputError("must be between 0 and 2^63-1 bytes", field="--size")
    # ``token``: the value itself, from the operator API, which never reads the server's environment.
    if token_env is not None:
        if token is not None:
            raise InputError("give the token or the variable that holds it, not both", field="--token-env")
        token = os.environ.get(token_env)
        if token is None:
            raise InputError(f"environment variable {token_env} is not set", field="--token-env")
    with db.write(engine) as conn:
        type_id = db.run(conn, "SELECT id FROM device_type WHERE name = :name", {"name": device_type}).scalar()
        if type_id is None:
            raise not_found(conn, "device_type", device_type)
        firmware_types = (
            db.run(conn, "SELECT name FROM firmware_type WHERE device_type_id = :type_id", {"type_id": type_id})
            .scalars()
            .all()
        )
        if firmware_type not in firmware_types:
            raise NotFoundError(
                f"device type {device_type!r} has no firmware type {firmware_type!r}"
                + (did_you_mean(firmware_type, firmware_types) or " (declare it in the fleet manifest)")
            )
        # The unique (device type, firmware type, version) decides, even against another
        # process adding the same version at the same moment.
        added = db.run(
            conn,
            "INSERT INTO firmware (device_type_id, firmware_type, version, url, token, sha256, size, description, "
            "created_at) VALUES (:type_id, :firmware_type, :version, :url, :token, :sha256, :size, :description, "
            ":now) ON CONFLICT (device_type_id, firmware_type, version) DO NOTHING",
            {
                "type_id": type_id,
                "firmware_type": firmware_type,
                "version": version,
                "url": url,
                "token": token,
                "sha256": sha256.lower() if sha256 else None,
                "size": size,
                "description": description,
                "now": db.utcnow(),
            },
        ).rowcount
        if added != 1:
            raise ConflictError(f"{device_type} {firmware_type} firmware {version!r} is already in the registry")
        # Never the token; the URL neither, which may carry one in its query.
        details = {**_what(device_type, firmware_type, version), "token": bool(token)}
        audit.record(conn, "firmware.added", details=details)
    return {"device_type": device_type, "firmware_type": firmware_type, "version": version}


def list_firmwares(engine: "Engine", *, device_type: str | None = None, show_secrets: bool = False) -> list[dict]:
    sql = (
        "SELECT t.name, f.firmware_type, f.version, f.url, f.token, f.sha256, f.size, f.description, f.created_at, "
        "f.recalled_at, f.recall_reason FROM firmware f JOIN device_type t ON t.id = f.device_type_id"
    )
    params: dict[str, Any] = {}
    if device_type is not None:
        sql += " WHERE t.name = :device_type"
        params["device_type"] = device_type
    with db.read(engine) as conn:
        rows = db.run(conn, sql + " ORDER BY t.name, f.firmware_type, f.created_at, f.id", params).all()
    return [
        {
            "device_type": r[0],
            "firmware_type": r[1],
            "version": r[2],
            "url": r[3],
            "token": None if r[4] is None else mask(r[4], True, show_secrets=show_secrets),
            "sha256": r[5],
            "size": r[6],
            "description": r[7],
            "created_at": r[8],
            "recalled": None if r[9] is None else {"at": r[9], "reason": r[10]},
        }
        for r in rows
    ]


def _firmware_id(conn: "Connection", device_type: str, firmware_type: str, version: str) -> int:
    found = db.run(
        conn,
        "SELECT f.id FROM firmware f JOIN device_type t ON t.id = f.device_type_id WHERE t.name = :device_type "
        "AND f.firmware_type = :firmware_type AND f.version = :version",
        {"device_type": device_type, "firmware_type": firmware_type, "version": version},
    ).scalar()
    if found is None:
        raise NotFoundError(f"no {device_type} {firmware_type} firmware {version!r} in the registry")
    return int(found)


def recall(
    engine: "Engine", *, device_type: str, firmware_type: str, version: str, reason: str, cancel: bool = False
) -> dict[str, Any]:
    """Mark a version recalled: no campaign may ship it any more, and every scheduled,
    running or paused campaign that ships it to that device type is paused (``cancel``:
    cancelled) with the reason, in the same transaction. Returns the campaigns stopped."""
    from campaignctl import control

    if not reason.strip():
        raise InputError("say why the firmware is recalled", field="--reason")
    stamp = db.utcnow()
    what = f"{device_type} {firmware_type} firmware {version}"
    why = f"{what} was recalled: {reason}"
    with db.write(engine) as conn:
        from campaignctl import dialect
        from campaignctl.jobs import CLAIMS

        dialect.exclusive(conn, CLAIMS)  # a launch in progress commits first, then is paused here
        firmware_id = _firmware_id(conn, device_type, firmware_type, version)
        db.run(
            conn,
            "UPDATE firmware SET recalled_at = :now, recall_reason = :reason WHERE id = :id",
            {"now": stamp, "reason": reason, "id": firmware_id},
        )
        stopped = _shipping(conn, device_type, firmware_type, version)
        for name in stopped:
            if cancel:
                control.mark_cancelled(conn, name, why)
            else:
                control.mark_paused(conn, name, why)
        details = {**_what(device_type, firmware_type, version), "reason": reason}
        audit.record(conn, "firmware.recalled", details={**details, "cancelled" if cancel else "paused": stopped})
    if cancel:
        for name in stopped:
            control.finish_cancel(engine, name)
    return {
        "firmware": {"device_type": device_type, "firmware_type": firmware_type, "version": version},
        "recalled_at": stamp,
        "reason": reason,
        "cancelled" if cancel else "paused": stopped,
    }


def unrecall(engine: "Engine", *, device_type: str, firmware_type: str, version: str) -> None:
    """Lift a recall; campaigns it paused stay paused until resumed."""
    with db.write(engine) as conn:
        firmware_id = _firmware_id(conn, device_type, firmware_type, version)
        if not db.run(
            conn,
            "UPDATE firmware SET recalled_at = NULL, recall_reason = NULL WHERE id = :id AND recalled_at IS NOT NULL",
            {"id": firmware_id},
        ).rowcount:
            raise ConflictError(f"{device_type} {firmware_type} firmware {version!r} is not recalled")
        audit.record(conn, "firmware.unrecalled", details=_what(device_type, firmware_type, version))


def _what(device_type: str, firmware_type: str, version: str) -> dict[str, str]:
    return {"device_type": device_type, "firmware_type": firmware_type, "version": version}


def recalls(conn: "Connection", spec: Any, type_ids: set[int]) -> list[dict[str, Any]]:
    """The recalls of the firmware a campaign ships, for these device types."""
    if not spec.firmware:
        return []
    rows = db.run(
        conn,
        "SELECT t.name, f.recalled_at, f.recall_reason FROM firmware f JOIN device_type t ON t.id = f.device_type_id "
        "WHERE f.firmware_type = :type AND f.version = :version AND f.recalled_at IS NOT NULL "
        "AND f.device_type_id IN :types ORDER BY t.name",
        {"type": spec.firmware["type"], "version": spec.firmware["version"], "types": sorted(type_ids) or [0]},
        "types",
    ).all()
    return [{"device_type": r[0], "at": r[1], "reason": r[2]} for r in rows]


def recalled_in(conn: "Connection", spec: Any, type_ids: set[int]) -> str | None:
    """Why the firmware a campaign ships may not go out to these device types, or None."""
    found = recalls(conn, spec, type_ids)
    if not found:
        return None
    return (
        f"{found[0]['device_type']} {spec.firmware['type']} firmware {spec.firmware['version']} is recalled: "
        f"{found[0]['reason']}"
    )


def _shipping(conn: "Connection", device_type: str, firmware_type: str, version: str) -> list[str]:
    """The scheduled, running and paused campaigns shipping this firmware to devices of
    this type."""
    from campaignctl.campaigns import fail_stored, resolve_devices
    from campaignctl.errors import CampaignctlError
    from campaignctl.spec import CampaignSpec

    type_id = db.run(conn, "SELECT id FROM device_type WHERE name = :name", {"name": device_type}).scalar()
    out = []
    for campaign_id, name, text in db.run(
        conn, "SELECT id, name, spec FROM campaign WHERE status IN ('scheduled', 'running', 'paused') ORDER BY id"
    ).all():
        spec = CampaignSpec.from_json(text, [])
        if not spec.firmware or (spec.firmware["type"], spec.firmware["version"]) != (firmware_type, version):
            continue
        plan = db.run(
            conn, "SELECT plan FROM job WHERE campaign_id = :id ORDER BY id DESC", {"id": campaign_id}
        ).scalar()
        if plan is not None:
            types = {int(t) for t in db.loads(plan, dict)}
        else:
            try:
                types = {t for _, t in resolve_devices(conn, spec, fail_stored(name))}
            except CampaignctlError:
                types = {type_id}  # cannot tell: stop it rather than let it ship
        if type_id in types:
            out.append(name)
    return out
