"""Dynamic campaigns: devices that come to match a running campaign's selector join it.

A campaign with ``devices.dynamic: true`` keeps admitting devices after its launch: one
imported later, re-tagged or given another device type so that its selector now picks it.
Joiners go through the same machinery as the devices of the launch: once every batch of
the job is promoted, the engine's pass (``campaignctl.engine``) gathers the devices that
match and are not yet items of the job into a new trailing batch, which is written,
delivered, baked and judged like any other (thresholds, rate limit, windows). Devices that
match while a batch is still under way wait for the last one.

The left-out rules are the launch's (``membership.leave_out``): version rules,
campaigns of higher priority. A joiner's device type may be one the job's plan lacks (a
new type, or a device whose type changed): its values are added to the plan, from the
firmware registry as it is when it joins; a type the campaign cannot set (no such
firmware) leaves the device out as ``skipped`` with the reason.

A device whose item is still ``pending`` and that no longer matches is left out
(``skipped``, "no longer matches the campaign's selector") when its batch starts: nothing
is written to it. What was written stays as it is. A device is admitted once: an item,
whatever became of it, is never admitted again.

``max_devices`` caps the job's devices (those of the launch included); ``end_at`` ends
the admissions, after which the campaign completes once its batches are done. Without
``end_at`` it runs until it is cancelled.

Looking for joiners reads the tags of every device without an item in the job (the
selector is applied to JSON): 140 ms at 100k devices whose selector matches 5k, far too
much for every engine pass of a campaign that may run for months. So the engine looks
only when the fleet changed since it last looked: the fleet's mark (its number of
devices and the latest ``device.updated_at``, which an import sets on every device it
creates or whose type, interface or tags it changes) is kept in the job's settings after
a look that found nobody; an idle pass reads the mark (one aggregate over one column)
and compares. A look is made anyway every ``RECHECK_SECONDS``: stamps are wall-clock
times, and a clock set back could hide a change. Admission itself is made under the
job's lease, in a write transaction that first checks the lease (the driver's fence), so
that two workers never admit a device twice.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from campaignctl import audit, db, dialect, jobs
from campaignctl.errors import InputError

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

    from campaignctl.engine import Context
    from campaignctl.spec import CampaignSpec

#: Up to this many devices joining in one pass, one ``device.joined`` event each; beyond,
#: one event for them all, with their count (an import of 100k devices is one change).
EVENTS_PER_DEVICE = 100

#: Seconds after which an unchanged fleet is looked at again for joiners (a safety net).
RECHECK_SECONDS = 600.0

#: The reason of a pending device left out because it no longer matches.
NO_LONGER_MATCHES = "no longer matches the campaign's selector: left alone"


def admitting(spec: "CampaignSpec", now: str | None = None) -> bool:
    """Whether the campaign still takes devices that come to match."""
    return spec.dynamic and spec.selector is not None and (spec.end_at is None or (now or db.utcnow()) < spec.end_at)


def endless(spec: "CampaignSpec") -> bool:
    """A dynamic campaign without ``end_at``: it never completes by itself."""
    return spec.dynamic and spec.end_at is None


def wait_refusal(engine: "Engine", name: str) -> str | None:
    """Why ``--wait`` cannot wait for this campaign (it never ends by itself), or None."""
    from campaignctl.campaigns import get_spec

    with db.read(engine) as conn:
        _row, spec = get_spec(conn, name)
    if not endless(spec):
        return None
    return (
        f"campaign {name!r} is dynamic without end_at: it runs until it is cancelled, so there is "
        "no outcome to wait for (give it an end_at, or follow it with status --watch)"
    )


def check_launch(name: str, spec: "CampaignSpec", selected: int) -> None:
    """A launch whose selection already exceeds ``max_devices`` is refused: the cap is the
    job's total, the devices of the launch included."""
    if spec.max_devices is not None and selected > spec.max_devices:
        raise InputError(
            f"the campaign selects {selected} devices at launch, more than its max_devices ({spec.max_devices})",
            source=f"campaign {name}",
            field="devices.max_devices",
        )


def _spec(conn: "Connection", ctx: "Context") -> "CampaignSpec":
    from campaignctl.campaigns import get_spec

    return get_spec(conn, ctx.campaign)[1]


def _selector_clause(conn: "Connection", spec: "CampaignSpec", alias: str) -> tuple[str, dict[str, Any]]:
    """The selector as a condition on device ``alias`` (and its parameters)."""
    from campaignctl.fleet import device_filter

    sel = spec.selector or {}
    where, params = device_filter(conn, type=sel.get("type"), tags=sel.get("tags"), alias=alias)
    return (where.removeprefix("WHERE ") or "1 = 1"), params


def _newcomers(
    conn: "Connection", ctx: "Context", spec: "CampaignSpec", room: int | None
) -> list[tuple[int, int, str]]:
    """The devices that match the selector and are not items of the job, by id: (id,
    device type id, name), at most ``room``."""
    clause, params = _selector_clause(conn, spec, "d")
    # One plain condition for each planner to order: the selector (tags read from JSON)
    # and no item in the job (an index probe). Both are paid for every device the
    # campaign does not target, often most of the fleet: hence ``_looked_at`` before.
    # (A subquery of the devices without an item, fenced by a LIMIT, read first, made
    # PostgreSQL join it to the selector's devices in a nested loop: minutes at 100k.)
    return [
        (r[0], r[1], r[2])
        for r in db.run(
            conn,
            f"SELECT d.id, d.device_type_id, d.name FROM device d WHERE {clause} AND NOT EXISTS "
            "(SELECT 1 FROM job_item ji WHERE ji.job_id = :job AND ji.device_id = d.id) ORDER BY d.id"
            + ("" if room is None else " LIMIT :room"),
            {**params, "job": ctx.job_id, **({} if room is None else {"room": room})},
        )
    ]


def _fleet_mark(conn: "Connection") -> str:
    """What changes whenever a device may come to match: the number of devices and the
    latest time one was created or changed (``fleet.import_fleet`` stamps it, taken
    under the import lock: stamps follow the order imports commit in)."""
    count, latest = db.run(conn, "SELECT count(*), max(updated_at) FROM device").one()
    return f"{count} {latest}"


def _settings(conn: "Connection", ctx: "Context") -> dict[str, Any]:
    return db.loads(db.run(conn, "SELECT settings FROM job WHERE id = :id", {"id": ctx.job_id}).scalar_one(), dict)


def _looked_at(conn: "Connection", ctx: "Context", mark: str) -> bool:
    """Whether the engine looked for joiners, and found none, with the fleet as it is
    now, less than ``RECHECK_SECONDS`` ago."""
    last = _settings(conn, ctx).get("admission") or {}
    return last.get("mark") == mark and time.time() - float(last.get("at", 0)) < RECHECK_SECONDS


def _remember(conn: "Connection", ctx: "Context", mark: str) -> None:
    """Keep in the job's settings that nobody matched with the fleet at ``mark``."""
    settings = {**_settings(conn, ctx), "admission": {"mark": mark, "at": time.time()}}
    db.run(
        conn, "UPDATE job SET settings = :settings WHERE id = :id", {"settings": json.dumps(settings), "id": ctx.job_id}
    )


def _room(conn: "Connection", ctx: "Context", spec: "CampaignSpec") -> int | None:
    """How many more devices may join (None: no cap)."""
    if spec.max_devices is None:
        return None
    total = db.run(conn, "SELECT total FROM job WHERE id = :id", {"id": ctx.job_id}).scalar_one()
    return max(0, spec.max_devices - int(total or 0))


def admit(ctx: "Context") -> bool:
    """Admit the devices that came to match, when every batch is done: True when some go
    out, as a new batch of the job (the caller then drives it like the others)."""
    from campaignctl.engine import stop_if_not_ours

    with db.read(ctx.engine) as conn:
        spec = _spec(conn, ctx)
        if not admitting(spec):
            return False
        room = _room(conn, ctx, spec)
        if room == 0:
            return False
        mark = _fleet_mark(conn)
        if _looked_at(conn, ctx, mark):
            return False  # the usual pass: the fleet is as it was when nobody matched
        found = bool(_newcomers(conn, ctx, spec, 1))
    if not found:
        with db.write(ctx.engine) as conn:
            stop_if_not_ours(conn, ctx)
            _remember(conn, ctx, mark)
        return False
    with db.write(ctx.engine) as conn:
        # Claims on devices (launches, recalls, other joins) are read and made one at a
        # time; taken first, as they all do, so that no two of them wait for each other.
        dialect.exclusive(conn, jobs.CLAIMS)
        stop_if_not_ours(conn, ctx)  # the lease: one driver admits, under the job's locked row
        room = _room(conn, ctx, spec)
        joiners = _newcomers(conn, ctx, spec, room) if room != 0 else []
        if not joiners:
            return False
        return _join(conn, ctx, spec, joiners)


def _join(conn: "Connection", ctx: "Context", spec: "CampaignSpec", joiners: list[tuple[int, int, str]]) -> bool:
    """Make the joiners items of the job, in the caller's transaction: those delivered in
    a new trailing batch, those left out in batch 0 with their reason."""
    from campaignctl import membership
    from campaignctl.models import JobItem

    devices = [(d, t) for d, t, _ in joiners]
    added, problems = _extend_plan(conn, ctx, spec, {t for _, t in devices})
    plan = {**ctx.plan, **added}
    left_out, conflicts = membership.leave_out(conn, ctx.campaign, spec, devices, plan, problems)
    for conflict in conflicts:
        # At launch a campaign of the same priority is refused (or forced by a user); a
        # device that joins has nobody to decide, so it stays the other campaign's.
        other = conflict.claim
        if other.status in membership.ACTIVE and other.priority == spec.priority:
            left_out.setdefault(
                conflict.device_id,
                (
                    "skipped",
                    f"campaign {other.campaign} (same priority {other.priority}) also sets {conflict.key} on it",
                ),
            )
    found = membership.Membership(devices, plan, left_out, [], [], conflicts)
    supersedes = _merge(dict(ctx.supersedes), membership.supersedes(found, spec.priority))
    delivered = [d for d, _ in devices if d not in left_out]
    number = None
    if delivered:
        number = (
            db.run(conn, "SELECT coalesce(max(number), 0) + 1 FROM job_batch WHERE job_id = :job", {"job": ctx.job_id})
        ).scalar_one()
        db.run(
            conn,
            "INSERT INTO job_batch (job_id, number, size) VALUES (:job, :number, :size)",
            {"job": ctx.job_id, "number": number, "size": len(delivered)},
        )
    stamp = db.utcnow()
    dialect.bulk_insert(
        conn,
        JobItem.__table__,  # type: ignore[attr-defined]
        ("job_id", "device_id", "status", "attempts", "batch", "error", "joined_at", "updated_at"),
        (
            (ctx.job_id, d, "pending", 0, number, None, stamp, stamp)
            if d not in left_out
            else (ctx.job_id, d, left_out[d][0], 0, 0, left_out[d][1], stamp, stamp)
            for d, _ in devices
        ),
    )
    settings = _settings(conn, ctx)
    db.run(
        conn,
        "UPDATE job SET total = total + :joined, plan = :plan, settings = :settings WHERE id = :id",
        {
            "joined": len(devices),
            "plan": json.dumps(plan),
            "settings": json.dumps({**settings, "supersedes": supersedes}),
            "id": ctx.job_id,
        },
    )
    _record(conn, ctx, joiners, left_out, number)
    # The driver goes on with them in this pass: its copy of the plan is the stored one.
    ctx.plan.update(added)
    ctx.supersedes.clear()
    ctx.supersedes.update(supersedes)
    return number is not None


def _extend_plan(
    conn: "Connection", ctx: "Context", spec: "CampaignSpec", types: set[int]
) -> tuple[dict[str, Any], dict[int, str]]:
    """The plan's entries of the joiners' device types it lacks, and the types the
    campaign cannot set (with the reason): each built as at launch, one type at a time
    so that one type's problem leaves out only its devices."""
    from campaignctl.campaigns import build_plan, fail_stored
    from campaignctl.errors import CampaignctlError

    added: dict[str, Any] = {}
    problems: dict[int, str] = {}
    for type_id in sorted(t for t in types if str(t) not in ctx.plan):
        try:
            added.update(build_plan(conn, spec, {type_id}, fail_stored(ctx.campaign)))
        except CampaignctlError as exc:  # no such firmware for that type, or it was recalled
            problems[type_id] = getattr(exc, "detail", None) or str(exc)
    return added, problems


def _merge(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Two ``supersedes`` maps (job → campaign, device types, keys) as one."""
    for job, entry in new.items():
        mine = old.get(job)
        old[job] = (
            entry
            if mine is None
            else {
                "campaign": entry["campaign"],
                "types": sorted(set(mine["types"]) | set(entry["types"])),
                "keys": sorted(set(mine["keys"]) | set(entry["keys"])),
            }
        )
    return old


def _record(
    conn: "Connection",
    ctx: "Context",
    joiners: list[tuple[int, int, str]],
    left_out: dict[int, tuple[str, str]],
    batch: int | None,
) -> None:
    """``device.joined`` events, in the transaction that admits the devices."""
    if len(joiners) > EVENTS_PER_DEVICE:
        audit.record(
            conn,
            "device.joined",
            campaign=ctx.campaign,
            details={"count": len(joiners), "batch": batch, "left_out": len(left_out)},
            by=audit.ENGINE,
        )
        return
    for device_id, _type, name in joiners:
        status, reason = left_out.get(device_id, ("pending", None))
        details: dict[str, Any] = {"batch": batch if status == "pending" else 0, "status": status}
        if reason:
            details["reason"] = reason
        audit.record(conn, "device.joined", campaign=ctx.campaign, device=name, details=details, by=audit.ENGINE)


def keeps_open(conn: "Connection", ctx: "Context") -> bool:
    """Whether a job whose batches are all done stays open for devices to join."""
    return admitting(_spec(conn, ctx))


def drop_unmatched(ctx: "Context", number: int) -> bool:
    """Before a batch of a dynamic campaign writes: its pending devices that no longer
    match the selector (and were not named in the manifest) are left out, and the batch
    no longer counts them. True when some were."""
    with db.read(ctx.engine) as conn:
        spec = _spec(conn, ctx)
        if not spec.dynamic or spec.selector is None:
            return False
        gone = _unmatched(conn, ctx, spec, number)
    if not gone:
        return False
    from campaignctl.engine import stop_if_not_ours

    with db.write(ctx.engine) as conn:
        stop_if_not_ours(conn, ctx)
        gone = _unmatched(conn, ctx, spec, number)  # again, on what is committed now
        if not gone:
            return False
        stamp = db.utcnow()
        for start in range(0, len(gone), 5000):
            db.run(
                conn,
                "UPDATE job_item SET status = 'skipped', batch = 0, error = :reason, updated_at = :now "
                "WHERE job_id = :job AND status = 'pending' AND device_id IN :ids",
                {
                    "reason": NO_LONGER_MATCHES,
                    "now": stamp,
                    "job": ctx.job_id,
                    "ids": [d for d, _ in gone[start : start + 5000]],
                },
                "ids",
            )
        db.run(
            conn,
            "UPDATE job_batch SET size = size - :gone WHERE job_id = :job AND number = :number",
            {"gone": len(gone), "job": ctx.job_id, "number": number},
        )
        if len(gone) > EVENTS_PER_DEVICE:
            audit.record(
                conn,
                "device.left",
                campaign=ctx.campaign,
                details={"count": len(gone), "batch": number},
                by=audit.ENGINE,
            )
        else:
            for _id, name in gone:
                audit.record(
                    conn,
                    "device.left",
                    campaign=ctx.campaign,
                    device=name,
                    details={"batch": number},
                    by=audit.ENGINE,
                )
    return True


def _unmatched(conn: "Connection", ctx: "Context", spec: "CampaignSpec", number: int) -> list[tuple[int, str]]:
    """The batch's pending devices the selector no longer picks, not named in the manifest."""
    clause, params = _selector_clause(conn, spec, "m")
    named = set(spec.names)
    return [
        (r[0], r[1])
        for r in db.run(
            conn,
            "SELECT ji.device_id, d.name FROM job_item ji JOIN device d ON d.id = ji.device_id "
            "WHERE ji.job_id = :job AND ji.batch = :batch AND ji.status = 'pending' AND NOT EXISTS "
            f"(SELECT 1 FROM device m WHERE m.id = ji.device_id AND {clause}) ORDER BY ji.device_id",
            {**params, "job": ctx.job_id, "batch": number},
        )
        if r[1] not in named
    ]
