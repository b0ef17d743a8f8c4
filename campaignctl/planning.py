"""``campaignctl plan``: what a launch would do, computed the way the launch computes it
(``campaignctl.membership``), in one read-only snapshot: nothing is written."""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from campaignctl import db, membership, windows
from campaignctl.errors import ConflictError
from campaignctl.rollout import Rollout
from campaignctl.spec import CampaignSpec
from campaignctl.values import SECRET_MASK

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

#: Value changes shown per key, most frequent first.
EXAMPLES = 3
#: Devices whose names a batch lists in the table (-o json lists them all).
FIRST_MEMBERS = 5


def plan(engine: "Engine", *, name: str | None = None, spec: CampaignSpec | None = None) -> dict[str, Any]:
    """The plan of a stored draft or scheduled campaign (``name``), or of a manifest not
    stored (``spec``), as documented for ``plan -o json``."""
    from campaignctl.campaigns import _fail_for, fail_stored, get_spec

    with db.read(engine) as conn:
        if spec is None:
            assert name is not None
            row, spec = get_spec(conn, name)
            if row.status not in ("draft", "scheduled"):
                raise ConflictError(
                    f"campaign {name!r} is {row.status}: plan shows what a launch would do, for a "
                    "draft or scheduled campaign (campaignctl status shows what it did)"
                )
            fail = fail_stored(name)
        else:
            fail = _fail_for(spec)
        found = membership.resolve(
            conn, spec.name, spec, fail, dry_run=True, conflict_statuses=("draft", *membership.ACTIVE)
        )
        names = dict(db.run(conn, "SELECT id, name FROM device").all())
        changes = _changes(conn, found)
        from campaignctl.firmwares import recalls

        recalled = recalls(conn, spec, {t for _, t in found.devices}) or None
    rollout = Rollout.from_dict(spec.rollout)
    batches = [
        {"number": n, "size": len(members), "devices": [names[d] for d in members]} for n, members in found.batches()
    ]
    start, seconds = _estimate(spec, rollout, found.sizes)
    return {
        "campaign": spec.name,
        "priority": spec.priority,
        "firmware": None if not spec.firmware else {**spec.firmware, "recalled": recalled},
        "devices": {
            "count": len(found.devices),
            "delivered": len(found.order),
            "excluded": sorted(
                (
                    {"device": names[d], "status": status, "reason": reason}
                    for d, (status, reason) in found.left_out.items()
                ),
                key=lambda e: e["device"],
            ),
        },
        "changes": changes,
        "batches": batches,
        "conflicts": [
            {
                "campaign": c.claim.campaign,
                "status": c.claim.status,
                "priority": c.claim.priority,
                "device": names[c.device_id],
                "key": c.key,
            }
            for c in found.conflicts
        ],
        "start_at": start,
        "estimate_seconds": seconds,
        "rollout": rollout.describe(),
        "window": windows.summary_of(rollout, at=_window_from(spec)),
    }


def _window_from(spec: CampaignSpec) -> datetime:
    """When the plan's next window is looked for: now, or the campaign's later start."""
    at = windows.now()
    if spec.start_at:
        at = max(at, datetime.fromisoformat(spec.start_at.replace("Z", "+00:00")))
    return at


def _changes(conn: "Connection", found: membership.Membership) -> dict[str, dict[str, Any]]:
    """Per key, how many delivered devices change value, keep it, or get it first; with
    the most frequent changes as examples (secret values masked)."""
    delivered = set(found.order)
    type_of = dict(found.devices)
    keys = sorted({k for p in found.plan.values() for k in p["configurations"]})
    if not keys or not delivered:
        return {k: {"changed": 0, "unchanged": 0, "new": 0, "examples": []} for k in keys}
    current: dict[tuple[int, str], str | None] = {}
    # Once secret, always secret: a value stored secret is masked whatever the manifest says.
    secret_keys = {k for p in found.plan.values() for k in p["secret"]}
    for device_id, key, desired, secret in db.run(
        conn,
        "SELECT device_id, key, desired, secret FROM device_config WHERE key IN :keys AND desired IS NOT NULL",
        {"keys": keys},
        "keys",
    ):
        if device_id in delivered:
            current[(device_id, key)] = desired
            if secret:
                secret_keys.add(key)
    restore_job = next((p.get("restore_job") for p in found.plan.values() if p.get("restore_job")), None)
    before: dict[tuple[int, str], str | None] = {}
    if restore_job is not None:
        for device_id, key, desired, secret in db.run(
            conn,
            "SELECT device_id, key, desired, secret FROM job_item_before WHERE job_id = :job",
            {"job": restore_job},
        ):
            before[(device_id, key)] = desired
            if secret:
                secret_keys.add(key)
    out: dict[str, dict[str, Any]] = {}
    for key in keys:
        counts = {"changed": 0, "unchanged": 0, "new": 0}
        moves: Counter = Counter()
        secret = key in secret_keys
        for device_id in found.order:
            entry = found.plan[str(type_of[device_id])]
            if key not in entry["configurations"]:
                continue
            target = entry["configurations"][key]
            if target is None:  # a rollback: the device's own value from before (None: withdrawn)
                target = before.get((device_id, key))
            now = current.get((device_id, key))
            if now is None:
                counts["new" if target is not None else "unchanged"] += 1
            elif now == target:
                counts["unchanged"] += 1
            else:
                counts["changed"] += 1
            if now != target:
                moves[(now, target)] += 1
        out[key] = {
            **counts,
            "examples": [
                {"from": _shown(old, secret), "to": _shown(new, secret), "devices": n}
                for (old, new), n in moves.most_common(EXAMPLES)
            ],
        }
    return out


def _shown(value: str | None, secret: bool) -> Any:
    if value is None:
        return None
    return SECRET_MASK if secret else json.loads(value)


def _estimate(spec: CampaignSpec, rollout: Rollout, sizes: list[int]) -> tuple[str, float]:
    """When the rollout starts, and how long its batches take at least: the rate limit
    and the bake time of each batch (the deliveries themselves add seconds, and devices
    that report late add their own time)."""
    now = datetime.now(timezone.utc)
    start = now
    if spec.start_at:
        scheduled = datetime.fromisoformat(spec.start_at.replace("Z", "+00:00"))
        start = max(now, scheduled)
    seconds = 0.0
    for size in sizes:
        if rollout.max_per_minute:
            seconds += size * 60.0 / rollout.max_per_minute
        seconds += rollout.bake_time
    stamp = start.isoformat(timespec="seconds").replace("+00:00", "Z")
    return stamp, round(seconds, 1)


def end_of(start: str, seconds: float) -> str:
    when = datetime.fromisoformat(start.replace("Z", "+00:00")) + timedelta(seconds=seconds)
    return when.isoformat(timespec="seconds").replace("+00:00", "Z")
