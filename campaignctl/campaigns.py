"""Campaigns: create, apply, list, show, delete; resolving devices and per-type values."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from campaignctl import approvals, audit, db, dialect
from campaignctl.errors import ConflictError, InputError
from campaignctl.spec import CampaignSpec
from campaignctl.suggest import not_found, suggestion
from campaignctl.values import canonical, mask

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

#: Device names per ``IN`` list: lists of any length, in statements of a bounded size.
CHUNK = 5000

#: Raised errors name the field; ``Fail`` builds an error for a spec path such as
#: ("devices", "names") with the file and line when the spec came from a file.
Fail = Callable[[str, tuple], Exception]


def _fail_for(spec: CampaignSpec) -> Fail:
    from campaignctl.yamlfile import YamlDocument, read_text

    def fail(message: str, path: tuple) -> Exception:
        try:
            text = spec.text if spec.text is not None else read_text(spec.source)
            return YamlDocument(text, spec.source).error(message, path)
        except InputError:  # the file is gone or changed: still name the field
            from campaignctl.yamlfile import format_path

            return InputError(message, source=spec.source, field=format_path(path))

    return fail


def fail_stored(name: str) -> Fail:
    def fail(message: str, path: tuple) -> Exception:
        from campaignctl.yamlfile import format_path

        return InputError(message, source=f"campaign {name}", field=format_path(path))

    return fail


def resolve_devices(conn: "Connection", spec: CampaignSpec, fail: Fail) -> list[tuple[int, int]]:
    """The (device_id, device_type_id) pairs a campaign selects, sorted by id."""
    selected: dict[int, int] = {}
    names = spec.names
    if names:
        found: dict[str, tuple[int, int]] = {}
        for start in range(0, len(names), CHUNK):
            for r in db.run(
                conn,
                "SELECT name, id, device_type_id FROM device WHERE name IN :names",
                {"names": names[start : start + CHUNK]},
                "names",
            ):
                found[r[0]] = (r[1], r[2])
        missing = [n for n in names if n not in found]
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            hint = suggestion(conn, "device", missing[0]) if len(missing) == 1 else ""
            raise fail(f"unknown device(s): {shown}{hint}", ("devices", "names", names.index(missing[0])))
        selected.update(found.values())
    if spec.selector is not None:
        from campaignctl.fleet import device_filter

        sel = spec.selector
        if (
            sel.get("type") is not None
            and db.run(conn, "SELECT 1 FROM device_type WHERE name = :name", {"name": sel["type"]}).first() is None
        ):
            raise fail(
                f"unknown device type {sel['type']!r}" + suggestion(conn, "device_type", sel["type"]),
                ("devices", "selector", "type"),
            )
        where, params = device_filter(conn, type=sel.get("type"), tags=sel.get("tags"))
        selected.update(
            (r[0], r[1]) for r in db.run(conn, f"SELECT d.id, d.device_type_id FROM device d {where}", params)
        )
    if not selected:
        raise fail("the campaign selects no device", ("devices",))
    return sorted(selected.items())


def build_plan(
    conn: "Connection",
    spec: CampaignSpec,
    type_ids: set[int],
    fail: Fail,
    *,
    problems: dict[int, str] | None = None,
    dry_run: bool = False,
) -> dict[str, Any]:
    """The values per device type: the campaign's, plus the firmware registry's, plus the
    keys a rollback puts back (value None: each device's own value from before).

    Returns ``{type_id: {"type", "configurations": {key: json | None}, "expected_state":
    {key: json}, "secret": [keys], "firmware_keys": [keys], "restore_job": id | None}}``
    with canonical JSON texts, ready for SQL comparisons. Device types the firmware does
    not exist for are left out (and said why in ``problems``) as long as one type
    remains; a recalled firmware is an error, unless ``dry_run`` (its types are left out).
    """
    plan: dict[str, Any] = {}
    secret_config = {k.split(".", 1)[1] for k in spec.secret_keys if k.startswith("configurations.")}
    secret_state = {k.split(".", 1)[1] for k in spec.secret_keys if k.startswith("expected_state.")}
    types = {r[0]: r[1] for r in db.run(conn, "SELECT id, name FROM device_type")}
    restore = _restore_source(conn, spec, fail) if spec.rollback_of else None
    missing: dict[int, Exception] = {}
    for type_id in sorted(type_ids):
        configurations: dict[str, Any] = {k: canonical(v) for k, v in spec.configurations.items()}
        expected = {k: canonical(v) for k, v in spec.expected_state.items()}
        secret = set(secret_config) | secret_state
        firmware_keys: list[str] = []
        if spec.firmware:
            fw_type, version = spec.firmware["type"], spec.firmware["version"]
            keys = db.run(
                conn,
                "SELECT version_key, url_key, token_key FROM firmware_type "
                "WHERE device_type_id = :type_id AND name = :name",
                {"type_id": type_id, "name": fw_type},
            ).first()
            if keys is None:
                missing[type_id] = fail(
                    f"device type {types[type_id]!r} has no firmware type {fw_type!r}", ("firmware", "type")
                )
                continue
            fw = db.run(
                conn,
                "SELECT url, token, recalled_at, recall_reason FROM firmware "
                "WHERE device_type_id = :type_id AND firmware_type = :firmware_type AND version = :version",
                {"type_id": type_id, "firmware_type": fw_type, "version": version},
            ).first()
            if fw is None:
                missing[type_id] = fail(
                    f"no {fw_type} firmware {version!r} for device type {types[type_id]!r} in "
                    "the registry (campaignctl firmwares add)",
                    ("firmware", "version"),
                )
                continue
            if fw.recalled_at is not None:
                recalled = (
                    f"{types[type_id]} {fw_type} firmware {version} was recalled at {fw.recalled_at}: "
                    f"{fw.recall_reason}"
                )
                if not dry_run or problems is None:
                    raise fail(recalled + " (campaignctl firmwares unrecall)", ("firmware", "version"))
                problems[type_id] = recalled
                continue
            filled = {keys.version_key: version, keys.url_key: fw.url}
            if keys.token_key and fw.token is not None:
                filled[keys.token_key] = fw.token
                secret.add(keys.token_key)
            for key, value in filled.items():
                if key in configurations:
                    raise fail(
                        f"{key} is set both here and by the firmware {fw_type} {version}", ("configurations", key)
                    )
                configurations[key] = canonical(value)
            if keys.version_key in expected and expected[keys.version_key] != canonical(version):
                raise fail(
                    f"{keys.version_key} must be the firmware version {version!r}", ("expected_state", keys.version_key)
                )
            expected[keys.version_key] = canonical(version)
            firmware_keys = [keys.version_key, keys.url_key] + ([keys.token_key] if keys.token_key else [])
        restore_job = None
        if restore is not None:
            restore_job, source_plan = restore
            source = source_plan.get(str(type_id)) or {"configurations": {}, "secret": []}
            for key in source["configurations"]:
                if key not in configurations:
                    configurations[key] = None  # each device's own value from before
                    if key in source["secret"]:
                        secret.add(key)
        plan[str(type_id)] = {
            "type": types[type_id],
            "configurations": configurations,
            "expected_state": expected,
            "secret": sorted(secret),
            "firmware_keys": firmware_keys,
            "restore_job": restore_job,
        }
    if missing and not plan and not (dry_run and problems):
        raise next(iter(missing.values()))
    for type_id, exc in missing.items():
        if problems is not None:
            problems[type_id] = getattr(exc, "detail", str(exc))
    return plan


def _restore_source(conn: "Connection", spec: CampaignSpec, fail: Fail) -> tuple[int, dict[str, Any]]:
    """The job whose before-values a rollback puts back, and its plan."""
    row = db.run(conn, "SELECT id, status FROM campaign WHERE name = :name", {"name": spec.rollback_of}).first()
    if row is None:
        raise fail(
            f"no campaign named {spec.rollback_of!r}" + suggestion(conn, "campaign", str(spec.rollback_of)),
            ("rollback_of",),
        )
    job = db.run(conn, "SELECT id, plan FROM job WHERE campaign_id = :id ORDER BY id DESC", {"id": row.id}).first()
    if job is None:
        raise fail(f"campaign {spec.rollback_of!r} was never launched: there is nothing to roll back", ("rollback_of",))
    return job.id, db.loads(job.plan, dict)


def _validate(conn: "Connection", spec: CampaignSpec, fail: Fail) -> list[tuple[int, int]]:
    devices = resolve_devices(conn, spec, fail)
    build_plan(conn, spec, {t for _, t in devices}, fail)
    canaries(conn, spec, {d for d, _ in devices}, fail)
    return devices


def canaries(conn: "Connection", spec: CampaignSpec, ids: set[int], fail: Fail) -> set[int]:
    """The campaign's devices that the rollout's canary selector picks; an error when it
    picks none of them (a typo in a tag would otherwise silently drop the canary stage)."""
    canary = (spec.rollout or {}).get("canary")
    if not canary:
        return set()
    selector = {"type": canary.get("type"), "tags": canary.get("tags") or {}}
    probe = CampaignSpec(
        name=spec.name,
        description=None,
        names=canary.get("names") or [],
        selector=selector if (selector["type"] or selector["tags"]) else None,
        configurations={},
        expected_state={},
        firmware=None,
    )

    nothing = "the canary selector picks none of the campaign's devices"

    def canary_fail(message: str, path: tuple) -> Exception:
        if path == ("devices",):  # selects no device at all
            return fail(nothing, ("rollout", "canary"))
        # ("devices", "names", 0) → names[0]; ("devices", "selector", "type") → type
        rest = path[2:] if path[1:2] == ("selector",) else path[1:]
        return fail(message, ("rollout", "canary", *rest))

    found = (
        {d for d, _ in resolve_devices(conn, probe, canary_fail)} & ids if (probe.names or probe.selector) else set()
    )
    if not found:
        raise fail(nothing, ("rollout", "canary"))
    return found


@dataclass
class ApplyResult:
    name: str
    action: str  # created | updated | unchanged
    changes: list[str]


def _exists(name: str) -> ConflictError:
    return ConflictError(f"a campaign named {name!r} already exists (use apply to update a draft)")


def create(engine: "Engine", spec: CampaignSpec) -> ApplyResult:
    now = db.utcnow()
    with db.write(engine) as conn:
        if _row(conn, spec.name, required=False) is not None:
            raise _exists(spec.name)
        devices = _validate(conn, spec, _fail_for(spec))
        if not _insert(conn, spec, now):
            raise _exists(spec.name)  # created by another process meanwhile
        _record_created(conn, spec, len(devices))
    return ApplyResult(spec.name, "created", [])


def _record_created(conn: "Connection", spec: CampaignSpec, devices: int) -> None:
    audit.record(conn, "campaign.created", campaign=spec.name, details={"devices": devices})


def insert_validated(conn: "Connection", spec: CampaignSpec, fail: Fail) -> None:
    """Create a draft the library built (a rollback), in the caller's transaction."""
    if _row(conn, spec.name, required=False) is not None or not (
        _validate(conn, spec, fail) and _insert(conn, spec, db.utcnow())
    ):
        raise _exists(spec.name)


def _insert(conn: "Connection", spec: CampaignSpec, now: str) -> bool:
    """Insert a draft; False when a campaign of that name exists (another process may
    have created it since this transaction looked)."""
    return bool(
        db.run(
            conn,
            "INSERT INTO campaign (name, description, status, spec, secret_keys, created_at, updated_at, rollback_of) "
            "VALUES (:name, :description, 'draft', :spec, :secret_keys, :now, :now, :rollback_of) "
            "ON CONFLICT (name) DO NOTHING",
            {
                "name": spec.name,
                "description": spec.description,
                "spec": spec.to_json(),
                "secret_keys": json.dumps(spec.secret_keys),
                "now": now,
                "rollback_of": spec.rollback_of,
            },
        ).rowcount
        == 1
    )


def apply(engine: "Engine", spec: CampaignSpec) -> ApplyResult:
    """Create the campaign, or update it while it is a draft; ``unchanged`` when identical."""
    now = db.utcnow()
    with db.write(engine) as conn:
        # Locked: a launch (or another apply) cannot change it before this one commits.
        row = _row(conn, spec.name, required=False, lock=True)
        if row is None:
            devices = _validate(conn, spec, _fail_for(spec))
            if not _insert(conn, spec, now):
                raise ConflictError(
                    f"campaign {spec.name!r} was created by another process meanwhile; apply again to update it"
                )
            _record_created(conn, spec, len(devices))
            return ApplyResult(spec.name, "created", [])
        current = CampaignSpec.from_json(row.spec, db.loads(row.secret_keys, list))
        changes = _diff(current, spec)
        if row.status != "draft":
            if not changes:
                return ApplyResult(spec.name, "unchanged", [])
            raise ConflictError(
                f"campaign {spec.name!r} was launched ({row.status}) and can no longer be changed "
                f"(would change: {', '.join(changes)}); create a campaign with a new name"
            )
        if not changes:
            return ApplyResult(spec.name, "unchanged", [])
        _validate(conn, spec, _fail_for(spec))
        db.run(
            conn,
            "UPDATE campaign SET description = :description, spec = :spec, secret_keys = :secret_keys, "
            "updated_at = :now, rollback_of = :rollback_of WHERE id = :id",
            {
                "description": spec.description,
                "spec": spec.to_json(),
                "secret_keys": json.dumps(spec.secret_keys),
                "now": now,
                "rollback_of": spec.rollback_of,
                "id": row.id,
            },
        )
        # Approvals were given to what the campaign was: a change needs them again.
        approvals.void(conn, row.id, spec.name)
        # The names of what changed (never values: secrets are among them).
        audit.record(conn, "campaign.applied", campaign=spec.name, details={"changes": changes})
    return ApplyResult(spec.name, "updated", changes)


def _diff(old: CampaignSpec, new: CampaignSpec) -> list[str]:
    changes = []
    if old.description != new.description:
        changes.append("description")
    if old.names != new.names:
        changes.append("devices.names")
    if old.selector != new.selector:
        changes.append("devices.selector")
    for section in ("configurations", "expected_state"):
        a, b = getattr(old, section), getattr(new, section)
        for key in sorted(set(a) | set(b)):
            if key not in a or key not in b or canonical(a[key]) != canonical(b[key]):
                changes.append(f"{section}.{key}")
    if old.firmware != new.firmware:
        changes.append("firmware")
    if old.start_at != new.start_at:
        changes.append("start_at")
    if canonical(old.rollout) != canonical(new.rollout):
        changes.append("rollout")
    if old.priority != new.priority:
        changes.append("priority")
    if old.rollback_of != new.rollback_of:
        changes.append("rollback_of")
    for part in ("dynamic", "max_devices"):
        if getattr(old, part) != getattr(new, part):
            changes.append(f"devices.{part}")
    if old.end_at != new.end_at:
        changes.append("end_at")
    if canonical(old.approval) != canonical(new.approval):
        changes.append("approval")
    if sorted(old.secret_keys) != sorted(new.secret_keys):
        changes.extend(k for k in sorted(set(old.secret_keys) ^ set(new.secret_keys)) if k not in changes)
    return changes


def _row(conn: "Connection", name: str, *, required: bool = True, lock: bool = False) -> Any:
    """The campaign's row; ``lock`` (in a write transaction): locked until it ends, for
    a caller that decides on its status."""
    row = db.run(
        conn,
        "SELECT id, name, description, status, spec, secret_keys, created_at, updated_at, launched_at, completed_at "
        "FROM campaign WHERE name = :name" + (dialect.for_update(conn) if lock else ""),
        {"name": name},
    ).one_or_none()
    if row is None and required:
        raise not_found(conn, "campaign", name)
    return row


def get_spec(conn: "Connection", name: str, *, lock: bool = False) -> tuple[Any, CampaignSpec]:
    """The campaign's row and spec; ``lock=True`` in a write transaction that decides on
    the campaign's status (a launch): the row stays locked until the transaction ends."""
    row = _row(conn, name, lock=lock)
    return row, CampaignSpec.from_json(row.spec, db.loads(row.secret_keys, list))


def delete(engine: "Engine", name: str) -> None:
    with db.write(engine) as conn:
        row = _row(conn, name, lock=True)
        if row.status != "draft":
            raise ConflictError(f"campaign {name!r} was launched ({row.status}); only drafts can be deleted")
        db.run(conn, "DELETE FROM campaign WHERE id = :id", {"id": row.id})
        audit.record(conn, "campaign.deleted", campaign=name)


def list_campaigns(engine: "Engine") -> list[dict[str, Any]]:
    with db.read(engine) as conn:
        rows = db.run(
            conn,
            "SELECT c.name, c.status, c.description, c.created_at, c.launched_at, c.completed_at, "
            "j.id, j.status, j.total FROM campaign c "
            "LEFT JOIN job j ON j.id = (SELECT max(id) FROM job WHERE campaign_id = c.id) ORDER BY c.created_at, c.id",
        ).all()
    return [
        {
            "name": r[0],
            "status": r[1],
            "description": r[2],
            "created_at": r[3],
            "launched_at": r[4],
            "completed_at": r[5],
            "job": None if r[6] is None else {"id": r[6], "status": r[7]},
            "devices": r[8],
        }
        for r in rows
    ]


def show(engine: "Engine", name: str, *, show_secrets: bool = False) -> dict[str, Any]:
    with db.read(engine) as conn:
        row, spec = get_spec(conn, name)
        jobs = [
            {"id": r[0], "status": r[1], "total": r[2]}
            for r in db.run(
                conn, "SELECT id, status, total FROM job WHERE campaign_id = :id ORDER BY id", {"id": row.id}
            )
        ]
        try:
            devices = len(resolve_devices(conn, spec, fail_stored(name))) if not jobs else jobs[-1]["total"]
        except InputError:
            devices = 0
        approval = approvals.state(conn, row.id, spec)
    secret = set(spec.secret_keys)
    return {
        "name": row.name,
        "description": row.description,
        "status": row.status,
        "devices": {
            "names": spec.names,
            "selector": spec.selector,
            "count": devices,
            "dynamic": spec.dynamic,
            "max_devices": spec.max_devices,
        },
        "end_at": spec.end_at,
        "configurations": {
            k: mask(v, f"configurations.{k}" in secret, show_secrets=show_secrets)
            for k, v in spec.configurations.items()
        },
        "expected_state": {
            k: mask(v, f"expected_state.{k}" in secret, show_secrets=show_secrets)
            for k, v in spec.expected_state.items()
        },
        "firmware": spec.firmware,
        "start_at": spec.start_at,
        "rollout": spec.rollout,
        "priority": spec.priority,
        "rollback_of": spec.rollback_of,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
        "launched_at": row.launched_at,
        "completed_at": row.completed_at,
        "jobs": jobs,
        "approval": approval,
    }
