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

from campaignctl import audit, db, dialect, store, versions
from campaignctl.errors import CampaignctlError, ConflictError, InputError
from campaignctl.spec import CampaignSpec
from campaignctl.suggest import not_found

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

#: Items whose devices got the campaign's entries written.
WRITTEN = ("syncing", "delivered", "failed")


def default_name(conn: "Connection", name: str, taken: set[str] | None = None) -> str:
    """``NAME-rollback``, or ``NAME-rollback-2``… when taken (in the database or in
    ``taken``); an error when too long for a name (then give one with --name)."""
    from campaignctl.names import name_problem

    base = f"{name}-rollback"
    candidate, n = base, 1
    while (
        candidate in (taken or set())
        or db.run(conn, "SELECT 1 FROM campaign WHERE name = :name", {"name": candidate}).first() is not None
    ):
        n += 1
        candidate = f"{base}-{n}"
    problem = name_problem(candidate)
    if problem:
        raise InputError(
            f"the rollback's name {candidate!r} is not a valid name ({problem}): give one with --name", field="--name"
        )
    return candidate


def _source_job(conn: "Connection", name: str) -> tuple[Any, Any]:
    row = db.run(conn, "SELECT id, status FROM campaign WHERE name = :name", {"name": name}).one_or_none()
    if row is None:
        raise not_found(conn, "campaign", name)
    job = db.run(conn, "SELECT id, plan FROM job WHERE campaign_id = :id ORDER BY id DESC", {"id": row.id}).first()
    if job is None:
        raise ConflictError(f"campaign {name!r} was never launched ({row.status}): there is nothing to roll back")
    return row, job


def _written(conn: "Connection", job: Any, up_to_batch: int | None) -> list[tuple[int, str, str | None]]:
    """The devices whose entries the job wrote, by name: (id, name, why it is left alone
    or None). Left alone: a campaign key's entry was written by someone since."""
    from campaignctl.supervision import plan_values, writer_name

    cte, params = plan_values("v", db.loads(job.plan, dict), "configurations")
    sep = dialect.separator(conn)
    rows = db.run(
        conn,
        f"""
        WITH {cte}
        SELECT d.id, d.name,
          (SELECT c.key || {sep} || coalesce(c.desired_by, '') || {sep} || coalesce(c.desired_at, '')
           FROM v JOIN device_config c ON c.device_id = ji.device_id AND c.key = v.key
           WHERE v.type_id = d.device_type_id AND c.desired_revision IS DISTINCT FROM ji.revision
           ORDER BY v.n LIMIT 1)
        FROM job_item ji JOIN device d ON d.id = ji.device_id
        WHERE ji.job_id = :job AND ji.status IN :written AND ji.revision > 0
        {"" if up_to_batch is None else "AND ji.batch <= :batch"}
        ORDER BY d.name""",
        {**params, "job": job.id, "written": list(WRITTEN), "batch": up_to_batch},
        "written",
    ).all()
    writers: dict[str, str] = {}
    out = []
    for device_id, name, changed in rows:
        why = None
        if changed is not None:
            key, by, at = changed.split("\x1f")
            why = f"{key} was changed after the campaign set it" + (
                f" (by {writer_name(conn, by, writers)} at {at})" if by else ""
            )
        out.append((device_id, name, why))
    return out


def targets(
    conn: "Connection", name: str, *, devices: list[str] | None = None, up_to_batch: int | None = None
) -> tuple[int, list[str], list[dict[str, str]]]:
    """The source job, the devices to roll back (by name), and those left alone with why."""
    row, job = _source_job(conn, name)
    if row.status == "running" and up_to_batch is None:
        raise ConflictError(f"campaign {name!r} is running: pause or cancel it before rolling it back")
    written = _written(conn, job, up_to_batch)
    reasons = {device: why for _id, device, why in written}
    chosen = list(reasons)
    if devices:
        unknown = [d for d in devices if d not in reasons]
        if unknown:
            raise InputError(
                f"campaign {name!r} wrote nothing to: {', '.join(unknown[:10])}"
                + (f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""),
                field="--device",
            )
        chosen = sorted(set(devices))
    left_alone = [{"device": d, "reason": str(reasons[d])} for d in chosen if reasons[d] is not None]
    return job.id, [d for d in chosen if reasons[d] is None], left_alone


def left_out(conn: "Connection", source: str, device_ids: list[int]) -> dict[int, tuple[str, str]]:
    """A rollback's devices it must not touch, with why: those the source campaign wrote
    nothing to, and those someone changed since (a hand-written ``rollback_of`` manifest
    may select any device)."""
    _row, job = _source_job(conn, source)
    written = {device_id: why for device_id, _name, why in _written(conn, job, None)}
    out: dict[int, tuple[str, str]] = {}
    for device_id in device_ids:
        if device_id not in written:
            out[device_id] = ("skipped", f"campaign {source} wrote nothing to it: nothing to put back")
        elif written[device_id] is not None:
            out[device_id] = ("skipped", f"left alone: {written[device_id]}")
    return out


def previous_firmwares(
    conn: "Connection", plan: dict[str, Any], firmware: dict[str, Any], type_ids: set[int]
) -> dict[int, str]:
    """Per device type (of those given), the newest firmware of the registry older than
    the one shipped, and not recalled."""
    found: dict[int, str | None] = {}
    for type_id, entry in plan.items():
        if int(type_id) not in type_ids or not entry.get("firmware_keys"):
            continue
        known = [
            r[0]
            for r in db.run(
                conn,
                "SELECT version FROM firmware WHERE device_type_id = :type_id AND firmware_type = :firmware_type "
                "AND recalled_at IS NULL",
                {"type_id": int(type_id), "firmware_type": firmware["type"]},
            )
        ]
        found[int(type_id)] = versions.newest_before(firmware["version"], known)
    missing = [plan[str(t)]["type"] for t, v in found.items() if v is None]
    if missing:
        raise ConflictError(
            f"the registry has no {firmware['type']} firmware older than {firmware['version']} "
            f"(and not recalled) for {', '.join(sorted(missing))} to roll back to"
        )
    return {t: str(v) for t, v in found.items()}


def build_specs(conn: "Connection", name: str, new_name: str, devices: list[str], job_id: int) -> list[CampaignSpec]:
    """The rollback campaign(s): one, unless an OTA campaign's device types go back to
    different firmwares (one per firmware then: NEW, then NAME-rollback-2…)."""
    from campaignctl.campaigns import get_spec

    _row, source = get_spec(conn, name)

    def spec(spec_name: str, names: list[str], firmware: dict[str, Any] | None) -> CampaignSpec:
        return CampaignSpec(
            name=spec_name,
            description=f"rolls back {name}",
            names=names,
            selector=None,
            configurations={},
            expected_state={},
            firmware=firmware,
            priority=source.priority,
            rollback_of=name,
            source=f"rollback of {name}",
        )

    if not source.firmware:
        return [spec(new_name, devices, None)]
    plan = db.loads(db.run(conn, "SELECT plan FROM job WHERE id = :id", {"id": job_id}).scalar_one(), dict)
    type_of: dict[str, int] = store.by_name(conn, devices, "device_type_id")
    previous = previous_firmwares(conn, plan, source.firmware, set(type_of.values()))
    groups: dict[str, list[str]] = {}
    for device in devices:
        groups.setdefault(previous[type_of[device]], []).append(device)
    specs: list[CampaignSpec] = []
    for version, names in sorted(groups.items()):
        # Back down: the devices report the version being rolled back.
        firmware = {"type": source.firmware["type"], "version": version, "allow_downgrade": True}
        # The next ones: NAME-rollback-2… (free in the database, and among these).
        spec_name = new_name if not specs else default_name(conn, name, {s.name for s in specs})
        specs.append(spec(spec_name, names, firmware))
    return specs


def create(
    engine: "Engine", name: str, *, new_name: str | None = None, devices: list[str] | None = None
) -> dict[str, Any]:
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
            raise ConflictError(
                f"campaign {name!r} has no device to roll back"
                + (f" ({len(left_alone)} changed by someone since: left alone)" if left_alone else "")
            )
        new_name = new_name or default_name(conn, name)
        specs = build_specs(conn, name, new_name, chosen, job_id)
        if len(specs) > 1:
            raise ConflictError(
                "the devices go back to different firmwares ("
                + ", ".join(
                    f"{s.firmware['version']}: {len(s.names)} device(s)"  # type: ignore[index]
                    for s in specs
                )
                + "): roll each device type back with --device"
            )
        spec = specs[0]
        insert_validated(conn, spec, fail_stored(new_name))
        _record_created(conn, new_name, name, len(chosen), len(left_alone))
    return {
        "campaign": new_name,
        "rollback_of": name,
        "devices": len(chosen),
        "firmware": spec.firmware,
        "left_alone": left_alone,
    }


def revert(conn: "Connection", campaign_id: int, up_to_batch: int, settings: dict[str, Any]) -> dict[str, Any] | None:
    """``on_error: revert``: in the transaction that aborts the campaign, the rollback
    of the devices of the tripped batch and those before it, started at once (any engine
    drives it). None when no device got the change."""
    from campaignctl import jobs
    from campaignctl.campaigns import fail_stored, get_spec, insert_validated

    name = db.run(conn, "SELECT name FROM campaign WHERE id = :id", {"id": campaign_id}).scalar_one()
    job_id, chosen, left_alone = targets(conn, name, up_to_batch=up_to_batch)
    if not chosen:
        return None
    delivery = {k: v for k, v in settings.items() if k not in ("rollout", "supersedes", "priority")}
    started: list[str] = []
    try:
        # In a savepoint: a rollback that cannot be made (no older firmware, a name too
        # long) must not undo the abort around it; the reason says why instead.
        with conn.begin_nested():
            for spec in build_specs(conn, name, default_name(conn, name), chosen, job_id):
                insert_validated(conn, spec, fail_stored(spec.name))
                _record_created(conn, spec.name, name, len(spec.names), len(left_alone), by=audit.ENGINE)
                row, stored = get_spec(conn, spec.name, lock=True)
                new_job, _owner = jobs.start(conn, row, stored, delivery)
                jobs.record_start(conn, "campaign.launched", spec.name, new_job, by=audit.ENGINE)
                # Free for any engine at once (this process drives it next, or another does).
                db.run(
                    conn, "UPDATE job SET lease_owner = NULL, lease_expires_at = NULL WHERE id = :id", {"id": new_job}
                )
                started.append(spec.name)
    except CampaignctlError as exc:
        return {"campaigns": [], "error": exc.message, "devices": len(chosen), "left_alone": left_alone}
    return {"campaigns": started, "devices": len(chosen), "left_alone": left_alone}


def _record_created(
    conn: "Connection", name: str, source: str, devices: int, left_alone: int, *, by: str | None = None
) -> None:
    details = {"rollback_of": source, "devices": devices, "left_alone": left_alone}
    audit.record(conn, "rollback.created", campaign=name, details=details, by=by)


def describe(result: dict[str, Any]) -> str:
    if not result["campaigns"]:
        return f"could not revert {result['devices']} device(s): {result['error']}"
    text = f"reverting {result['devices']} device(s) with campaign {', '.join(result['campaigns'])}"
    if result["left_alone"]:
        text += f" ({len(result['left_alone'])} changed by someone since: left alone)"
    return text
