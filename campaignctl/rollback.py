"""Rollbacks: a campaign that puts back what another campaign's job wrote.

Every write of a job keeps the desired entries it overwrote (``job_item_before``). A
rollback campaign (``rollback_of: NAME``) writes, on each device, those values back —
or withdraws the key when the device had none — through the same write step, delivery
and supervision as any campaign. An OTA campaign's rollback ships the previous firmware
of the registry instead of the firmware keys' old values.

The one-off rule holds both ways: a device whose value someone changed after the
campaign wrote it is left alone, and listed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from campaignctl import db, dialect, versions
from campaignctl.errors import ConflictError, InputError, NotFoundError
from campaignctl.spec import CampaignSpec

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

#: Items whose devices got the campaign's entries written.
WRITTEN = ("syncing", "delivered", "failed")


def default_name(conn: "Connection", name: str) -> str:
    """``NAME-rollback``, or ``NAME-rollback-2``… when taken."""
    candidate, n = f"{name}-rollback", 1
    while db.run(conn, "SELECT 1 FROM campaign WHERE name = :name", {"name": candidate}).first() is not None:
        n += 1
        candidate = f"{name}-rollback-{n}"
    return candidate


def targets(conn: "Connection", name: str, *, devices: list[str] | None = None,
            up_to_batch: int | None = None) -> tuple[int, list[str], list[dict[str, str]]]:
    """The source job, the devices to roll back (by name), and those left alone with why."""
    from campaignctl.supervision import plan_values, writer_name

    row = db.run(conn, "SELECT id, status FROM campaign WHERE name = :name", {"name": name}).one_or_none()
    if row is None:
        raise NotFoundError(f"no campaign named {name!r}")
    job = db.run(conn, "SELECT id, plan FROM job WHERE campaign_id = :id ORDER BY id DESC", {"id": row.id}).first()
    if job is None:
        raise ConflictError(f"campaign {name!r} was never launched ({row.status}): there is nothing to roll back")
    if row.status == "running" and up_to_batch is None:
        raise ConflictError(f"campaign {name!r} is running: pause or cancel it before rolling it back")
    cte, params = plan_values("v", db.loads(job.plan, dict), "configurations")
    sep = dialect.separator(conn)
    rows = db.run(conn, f"""
        WITH {cte}
        SELECT d.name,
          (SELECT c.key || {sep} || coalesce(c.desired_by, '') || {sep} || coalesce(c.desired_at, '')
           FROM v JOIN device_config c ON c.device_id = ji.device_id AND c.key = v.key
           WHERE v.type_id = d.device_type_id AND c.desired_revision IS DISTINCT FROM ji.revision
           ORDER BY v.n LIMIT 1)
        FROM job_item ji JOIN device d ON d.id = ji.device_id
        WHERE ji.job_id = :job AND ji.status IN :written AND ji.revision > 0
        {'' if up_to_batch is None else 'AND ji.batch <= :batch'}
        ORDER BY d.name""", {**params, "job": job.id, "written": list(WRITTEN), "batch": up_to_batch},
        "written").all()
    changed = {device: why for device, why in rows if why is not None}
    chosen = [device for device, _ in rows]
    if devices:
        known = set(chosen)
        unknown = [d for d in devices if d not in known]
        if unknown:
            raise InputError(f"campaign {name!r} wrote nothing to: {', '.join(unknown[:10])}"
                             + (f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""), field="--device")
        chosen = sorted(set(devices))
    left_alone = []
    writers: dict[str, str] = {}
    for device in chosen:
        if device in changed:
            key, by, at = changed[device].split("\x1f")
            left_alone.append({"device": device, "reason": f"{key} was changed after the campaign set it"
                               + (f" (by {writer_name(conn, by, writers)} at {at})" if by else "")})
    return job.id, [d for d in chosen if d not in changed], left_alone


def previous_firmware(conn: "Connection", plan: dict[str, Any], firmware: dict[str, Any]) -> str:
    """The newest firmware of the registry older than the one shipped, not recalled, the
    same for every device type of the campaign."""
    found: dict[str, str | None] = {}
    for type_id, entry in plan.items():
        if not entry.get("firmware_keys"):
            continue
        known = [r[0] for r in db.run(conn,
            "SELECT version FROM firmware WHERE device_type_id = :type_id AND firmware_type = :firmware_type "
            "AND recalled_at IS NULL", {"type_id": int(type_id), "firmware_type": firmware["type"]})]
        found[entry["type"]] = versions.newest_before(firmware["version"], known)
    missing = [t for t, v in found.items() if v is None]
    if missing:
        raise ConflictError(f"the registry has no {firmware['type']} firmware older than {firmware['version']} "
                            f"(and not recalled) for {', '.join(missing)} to roll back to")
    chosen = set(found.values())
    if len(chosen) > 1:
        raise ConflictError("the device types' previous firmwares differ ("
                            + ", ".join(f"{t}: {v}" for t, v in sorted(found.items()))
                            + "): roll each type back with --device")
    return str(chosen.pop())


def build_spec(conn: "Connection", name: str, new_name: str, devices: list[str], job_id: int) -> CampaignSpec:
    _row, source = _source(conn, name)
    plan = db.loads(db.run(conn, "SELECT plan FROM job WHERE id = :id", {"id": job_id}).scalar_one(), dict)
    firmware = None
    if source.firmware:
        # Back down: the devices report the version being rolled back.
        firmware = {"type": source.firmware["type"], "version": previous_firmware(conn, plan, source.firmware),
                    "allow_downgrade": True}
    return CampaignSpec(name=new_name, description=f"rolls back {name}", names=devices, selector=None,
                        configurations={}, expected_state={}, firmware=firmware, priority=source.priority,
                        rollback_of=name, source=f"rollback of {name}")


def _source(conn: "Connection", name: str) -> tuple[Any, CampaignSpec]:
    from campaignctl.campaigns import get_spec

    return get_spec(conn, name)


def create(engine: "Engine", name: str, *, new_name: str | None = None,
           devices: list[str] | None = None) -> dict[str, Any]:
    """``campaignctl rollback NAME``: a draft campaign putting back what NAME wrote."""
    from campaignctl.campaigns import fail_stored, insert_validated
    from campaignctl.names import check_name

    if new_name is not None:
        try:
            check_name(new_name)
        except ValueError as exc:
            raise InputError(str(exc), field="--name") from None
    with db.write(engine) as conn:
        job_id, chosen, left_alone = targets(conn, name, devices=devices)
        if not chosen:
            raise ConflictError(f"campaign {name!r} has no device to roll back"
                                + (f" ({len(left_alone)} changed by someone since: left alone)" if left_alone else ""))
        new_name = new_name or default_name(conn, name)
        spec = build_spec(conn, name, new_name, chosen, job_id)
        insert_validated(conn, spec, fail_stored(new_name))
    return {"campaign": new_name, "rollback_of": name, "devices": len(chosen), "firmware": spec.firmware,
            "left_alone": left_alone}


def revert(conn: "Connection", campaign_id: int, up_to_batch: int, settings: dict[str, Any]) -> dict[str, Any] | None:
    """``on_error: revert``: in the transaction that aborts the campaign, a rollback of
    the devices of the tripped batch and those before it, started at once (any engine
    drives it). None when no device got the change."""
    from campaignctl import jobs
    from campaignctl.campaigns import fail_stored, insert_validated

    name = db.run(conn, "SELECT name FROM campaign WHERE id = :id", {"id": campaign_id}).scalar_one()
    job_id, chosen, left_alone = targets(conn, name, up_to_batch=up_to_batch)
    if not chosen:
        return None
    new_name = default_name(conn, name)
    try:
        spec = build_spec(conn, name, new_name, chosen, job_id)
    except ConflictError as exc:  # no firmware to go back to: say so where the abort is told
        return {"campaign": None, "error": exc.message, "left_alone": left_alone}
    insert_validated(conn, spec, fail_stored(new_name))
    from campaignctl.campaigns import get_spec

    row, stored = get_spec(conn, new_name, lock=True)
    delivery = {k: v for k, v in settings.items() if k != "rollout"}
    new_job, _owner = jobs.start(conn, row, stored, delivery)
    # Free for any engine at once (this process drives it next, or another does).
    db.run(conn, "UPDATE job SET lease_owner = NULL, lease_expires_at = NULL WHERE id = :id", {"id": new_job})
    return {"campaign": new_name, "job": new_job, "devices": len(chosen), "left_alone": left_alone}


def describe(result: dict[str, Any]) -> str:
    if result.get("campaign") is None:
        return f"could not revert: {result['error']}"
    text = f"reverting {result['devices']} device(s) with campaign {result['campaign']}"
    if result["left_alone"]:
        text += f" ({len(result['left_alone'])} changed by someone since: left alone)"
    return text
