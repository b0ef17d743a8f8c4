"""Which devices a campaign's job takes, in which batches, and which it leaves out and why.

One computation behind ``launch`` (and a scheduled start) and ``plan``, so that a plan
shows exactly the devices and batches the launch that follows makes. A device is left
out of the deliveries when:

- ``installed``: it already reports the firmware version the campaign ships, and its
  desired entries name no other (it is valid without receiving anything);
- ``skipped``: the firmware would be a downgrade, its reported version is not among the
  manifest's ``firmware.from`` patterns, or its device type has no such firmware; or,
  for a rollback, the campaign it rolls back wrote nothing to it, or someone changed
  the value since;
- ``superseded``: a campaign of higher priority, scheduled, running or paused, sets one
  of the same keys on it.

Left-out devices are items of the job all the same (in batch 0, which is never
delivered), so that ``status`` lists them with their reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable

from campaignctl import db, jobs, versions
from campaignctl.rollout import Rollout, batch_sizes, order_devices

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from campaignctl.campaigns import Fail
    from campaignctl.spec import CampaignSpec

#: Campaigns whose keys a launch must not fight over.
ACTIVE = ("scheduled", "running", "paused")


@dataclass
class Claim:
    """Another campaign's hold on keys of devices."""

    campaign: str
    status: str
    priority: int
    job_id: int | None
    devices: set[int]
    keys: dict[int, frozenset[str]]  # device type id → the configuration keys it sets


@dataclass
class Conflict:
    claim: Claim
    device_id: int
    key: str


@dataclass
class Membership:
    devices: list[tuple[int, int]]  # every selected (device id, device type id), by id
    plan: dict[str, Any]
    left_out: dict[int, tuple[str, str]]  # device id → (item status, reason)
    order: list[int]  # the devices delivered, in rollout order (canaries first)
    sizes: list[int]  # the batches' sizes, in order
    conflicts: list[Conflict] = field(default_factory=list)

    def batches(self) -> Iterable[tuple[int, list[int]]]:
        position = 0
        for number, size in enumerate(self.sizes, start=1):
            yield number, self.order[position : position + size]
            position += size


def resolve(
    conn: "Connection",
    name: str,
    spec: "CampaignSpec",
    fail: "Fail",
    *,
    dry_run: bool = False,
    conflict_statuses: tuple[str, ...] = ACTIVE,
) -> Membership:
    """The membership of campaign ``name``'s job if it started now. ``dry_run`` (plan):
    a recalled firmware leaves the devices out instead of being an error."""
    from campaignctl.campaigns import build_plan, canaries, resolve_devices

    devices = resolve_devices(conn, spec, fail)
    problems: dict[int, str] = {}
    plan = build_plan(conn, spec, {t for _, t in devices}, fail, problems=problems, dry_run=dry_run)
    left_out, conflicts = leave_out(conn, name, spec, devices, plan, problems, conflict_statuses)
    ids = [d for d, _ in devices]
    picked = canaries(conn, spec, set(ids), fail)
    delivered = [d for d in ids if d not in left_out]
    rollout = Rollout.from_dict(spec.rollout)
    order = delivered
    if rollout.explicit and delivered:
        names = dict(db.run(conn, "SELECT id, name FROM device").all())
        order = order_devices(name, [(d, names[d], d in picked) for d in delivered])
    sizes = batch_sizes(rollout, len(order)) if order else []
    return Membership(devices, plan, left_out, order, sizes, conflicts)


def leave_out(
    conn: "Connection",
    name: str,
    spec: "CampaignSpec",
    devices: list[tuple[int, int]],
    plan: dict[str, Any],
    problems: dict[int, str],
    conflict_statuses: tuple[str, ...] = ACTIVE,
) -> tuple[dict[int, tuple[str, str]], list[Conflict]]:
    """Which of ``devices`` (device id, device type id) the job leaves out, and why, and
    the other campaigns' claims on the rest: at launch, and for each device that joins a
    dynamic campaign later (``campaignctl.dynamic``). ``problems``: the device types
    ``build_plan`` left out, with the reason."""
    left_out: dict[int, tuple[str, str]] = {d: ("skipped", problems[t]) for d, t in devices if t in problems}
    if spec.rollback_of:
        from campaignctl import rollback

        left_out.update(rollback.left_out(conn, spec.rollback_of, [d for d, _ in devices if d not in left_out]))
    elif spec.firmware:
        # Not for a rollback: it rewrites the firmware entries even of devices that
        # report the version it goes back to (their desired entries hold the other one).
        left_out.update(_version_rules(conn, spec, plan, devices))
    claims = active_claims(conn, spec, name, conflict_statuses)
    # Devices the campaign leaves out anyway (version rules) compete with nobody.
    conflicts = find_conflicts([d for d in devices if d[0] not in left_out], plan, claims)
    for conflict in conflicts:
        other = conflict.claim
        if other.status in ACTIVE and other.priority > spec.priority and conflict.device_id not in left_out:
            left_out[conflict.device_id] = (
                "superseded",
                f"superseded by campaign {other.campaign} (priority {other.priority}), which also sets {conflict.key}",
            )
    return left_out, conflicts


def _version_rules(
    conn: "Connection", spec: "CampaignSpec", plan: dict[str, Any], devices: list[tuple[int, int]]
) -> dict[int, tuple[str, str]]:
    """Devices already at the target version, or that the version rules skip."""
    assert spec.firmware is not None
    target = spec.firmware["version"]
    allow_downgrade = bool(spec.firmware.get("allow_downgrade"))
    patterns: list[str] | None = spec.firmware.get("from")
    out: dict[int, tuple[str, str]] = {}
    for type_id, entry in plan.items():
        if not entry.get("firmware_keys"):
            continue
        version_key = entry["firmware_keys"][0]
        wanted = entry["configurations"][version_key]
        entries = {
            r[0]: (r[1], r[2])
            for r in db.run(
                conn,
                "SELECT c.device_id, c.reported, c.desired FROM device_config c JOIN device d ON d.id = c.device_id "
                "WHERE c.key = :key AND d.device_type_id = :type_id",
                {"key": version_key, "type_id": int(type_id)},
            )
        }
        cache: dict[str | None, tuple[str, str | None]] = {}
        for device_id, device_type in devices:
            if device_type != int(type_id):
                continue
            text, desired = entries.get(device_id, (None, None))
            decided = cache.get(text)
            if decided is None:
                decided = cache[text] = versions.rule(
                    versions.reported_text(text), target, allow_downgrade=allow_downgrade, from_=patterns
                )
            if decided[0] == "installed" and desired is not None and desired != wanted:
                continue  # its desired entries still name another version: they are rewritten
            if decided[0] != "deliver":
                out[device_id] = (decided[0], str(decided[1]))
    return out


def _related(conn: "Connection", spec: "CampaignSpec", name: str) -> set[str]:
    """A campaign and its rollbacks do not compete: a rollback puts back what the other
    wrote."""
    related = {name}
    if spec.rollback_of:
        related.add(spec.rollback_of)
    related.update(r[0] for r in db.run(conn, "SELECT name FROM campaign WHERE rollback_of = :name", {"name": name}))
    return related


def active_claims(
    conn: "Connection", spec: "CampaignSpec", name: str, statuses: tuple[str, ...] = ACTIVE
) -> list[Claim]:
    """What the other campaigns of these statuses set, on which devices."""
    from campaignctl.campaigns import build_plan, fail_stored, resolve_devices
    from campaignctl.errors import CampaignctlError
    from campaignctl.spec import CampaignSpec

    related = _related(conn, spec, name)
    rows = db.run(
        conn,
        "SELECT id, name, status, spec, secret_keys FROM campaign WHERE status IN :statuses ORDER BY id",
        {"statuses": list(statuses)},
        "statuses",
    ).all()
    claims = []
    for campaign_id, other, status, text, secret_keys in rows:
        if other in related:
            continue
        other_spec = CampaignSpec.from_json(text, db.loads(secret_keys, list))
        job = db.run(
            conn, "SELECT id, plan FROM job WHERE campaign_id = :id ORDER BY id DESC", {"id": campaign_id}
        ).first()
        if job is not None:
            plan = db.loads(job.plan, dict)
            devices = {
                r[0]
                for r in db.run(
                    conn,
                    "SELECT device_id FROM job_item WHERE job_id = :job AND status NOT IN :done",
                    {"job": job.id, "done": ["cancelled", *jobs.LEFT_OUT]},
                    "done",
                )
            }
        else:
            try:
                selected = resolve_devices(conn, other_spec, fail_stored(other))
                plan = build_plan(
                    conn, other_spec, {t for _, t in selected}, fail_stored(other), problems={}, dry_run=True
                )
            except CampaignctlError:
                continue  # a draft that no longer resolves sets nothing
            devices = {d for d, _ in selected}
        keys = {int(t): frozenset(p["configurations"]) for t, p in plan.items()}
        claims.append(Claim(other, status, other_spec.priority, job.id if job is not None else None, devices, keys))
    return claims


def find_conflicts(devices: list[tuple[int, int]], plan: dict[str, Any], claims: list[Claim]) -> list[Conflict]:
    """Each (other campaign, device, key) both set, in device id then key order."""
    mine = {int(t): frozenset(p["configurations"]) for t, p in plan.items()}
    out: list[Conflict] = []
    for claim in claims:
        shared = {t: sorted(keys & claim.keys.get(t, frozenset())) for t, keys in mine.items()}
        if not any(shared.values()):
            continue
        for device_id, type_id in devices:
            keys = shared.get(type_id)
            if keys and device_id in claim.devices:
                out.extend(Conflict(claim, device_id, key) for key in keys)
    return out


def supersedes(found: Membership, priority: int) -> dict[str, dict[str, Any]]:
    """The campaigns of lower priority this one takes devices from, by job: their device
    types and keys in common. The devices become theirs no more (``superseded``) when
    this campaign's write step writes them — not before, so that a device whose write
    never comes (this campaign cancelled first) stays the other campaign's."""
    out: dict[str, dict[str, Any]] = {}
    type_of = dict(found.devices)
    for conflict in found.conflicts:
        claim = conflict.claim
        if claim.job_id is None or claim.priority >= priority or conflict.device_id in found.left_out:
            continue
        entry = out.setdefault(str(claim.job_id), {"campaign": claim.campaign, "types": set(), "keys": set()})
        entry["types"].add(type_of[conflict.device_id])
        entry["keys"].add(conflict.key)
    return {
        job: {"campaign": e["campaign"], "types": sorted(e["types"]), "keys": sorted(e["keys"])}
        for job, e in out.items()
    }
