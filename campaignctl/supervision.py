"""The supervision: per device, what a campaign asked for against desired and reported values.

Device statuses, in the order they are decided:

- ``pending``: the campaign's configuration is not yet written for this device (its
  batch has not started, or the campaign is not launched);
- ``cancelled``: the campaign was cancelled or aborted before the device got anything;
- ``invalid``: a campaign key's desired value was changed after the campaign set it;
- ``failed``: delivery failed after every retry (reason: the last error), unless the
  device reports the expected state all the same (it got the values another way): valid;
- ``valid``: delivered, and every campaign key's desired value and every expected-state
  key's reported value equal the campaign's (compared as JSON);
- ``timed_out``: ``device_timeout`` has passed since delivery (or, for a device that
  polls and never fetched, since its document was written) without becoming valid;
- ``syncing``: written, not yet delivered to the interface (or fetched by the device);
- ``waiting``: delivered, the reported state does not yet equal the expected state.

The comparisons run in SQLite over canonical JSON texts, so a 100k-device campaign is
judged in one query.
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

from campaignctl import db
from campaignctl.rollout import Rollout, format_duration
from campaignctl.values import SECRET_MASK

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

DEVICE_STATES = ("pending", "syncing", "waiting", "valid", "invalid", "failed", "timed_out", "cancelled")


def _values_cte(name: str, rows: list[tuple[int, str, str, int]]) -> tuple[str, list[Any]]:
    # Rows in key order: the subqueries below take the first mismatch in scan order,
    # which for a VALUES table is this order (an ORDER BY per device costs ~20% more).
    rows = sorted(rows, key=lambda r: (r[0], r[1]))
    if not rows:
        return f"{name}(type_id, key, value, secret) AS (SELECT NULL, NULL, NULL, 0 WHERE 0)", []
    return (f"{name}(type_id, key, value, secret) AS (VALUES {','.join('(?, ?, ?, ?)' for _ in rows)})",
            [x for r in rows for x in r])


def _epoch(text: str | None) -> float | None:
    return None if text is None else datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def device_statuses(conn: Any, job_id: int, plan: dict[str, Any], rollout: Rollout, *,
                    batch: int | None = None, now: float | None = None) -> list[dict[str, Any]]:
    """Every device of a job (or of one of its batches) with its supervision status."""
    config_rows = [(int(t), k, v, k in p["secret"]) for t, p in plan.items() for k, v in p["configurations"].items()]
    state_rows = [(int(t), k, v, k in p["secret"]) for t, p in plan.items() for k, v in p["expected_state"].items()]
    cfg_cte, cfg_params = _values_cte("cfg", config_rows)
    exp_cte, exp_params = _values_cte("exp", state_rows)
    # For each device: the first campaign key whose desired value differs (invalid), and
    # the first expected key whose reported value differs (waiting), with what is there.
    # Revisions only grow, so a campaign key can only have changed on a device that has
    # an entry written after the job's: the key-by-key look is for those alone.
    sql = f"""
        WITH {cfg_cte}, {exp_cte}
        SELECT d.name, ji.status, ji.error, ji.attempts, ji.updated_at, ji.batch,
          {"ji.delivered_at" if rollout.device_timeout is not None else "NULL"}, d.device_type_id,
          CASE WHEN ji.revision IS NOT NULL AND EXISTS (SELECT 1 FROM device_config later
                WHERE later.device_id = ji.device_id AND later.desired_revision > ji.revision) THEN
          (SELECT cfg.key || char(31) || coalesce(c.desired_by, '') || char(31) || coalesce(c.desired_at, '')
             FROM cfg JOIN device_config c ON c.device_id = ji.device_id AND c.key = cfg.key
            WHERE cfg.type_id = d.device_type_id AND c.desired IS NOT cfg.value LIMIT 1) END,
          (SELECT exp.key || char(31) || exp.secret || char(31) || coalesce(c.reported, '')
             FROM exp LEFT JOIN device_config c ON c.device_id = ji.device_id AND c.key = exp.key
            WHERE exp.type_id = d.device_type_id AND c.reported IS NOT exp.value LIMIT 1)
        FROM job_item ji JOIN device d ON d.id = ji.device_id
        WHERE ji.job_id = ? {"AND ji.batch = ?" if batch is not None else ""}
        ORDER BY d.name
    """
    params = (*cfg_params, *exp_params, job_id, *([batch] if batch is not None else []))
    raw = conn.connection.driver_connection if hasattr(conn, "connection") else conn
    # Plain DB-API tuples: SQLAlchemy's row objects cost more than the query at 100k rows.
    rows = raw.execute(sql, params).fetchall()
    started = {n for (n,) in raw.execute(
        "SELECT number FROM job_batch WHERE job_id = ? AND status != 'pending'", (job_id,))}
    timeout = rollout.device_timeout
    now = time.time() if now is None else now
    expecting = {int(t) for t, p in plan.items() if p["expected_state"]}
    devices = []
    for name, item, error, attempts, updated_at, number, delivered_at, type_id, changed, mismatch in rows:
        reason = None
        if item == "pending":
            status = "pending"
            if number not in started:
                reason = f"batch {number} has not started"
        elif item == "cancelled":
            status, reason = "cancelled", error
        elif changed is not None:
            key, by, at = changed.split("\x1f")
            status = "invalid"
            reason = f"{key} was changed after the campaign set it" + (f" (by {by} at {at})" if by else "")
        elif item == "failed" and not (mismatch is None and type_id in expecting):
            status, reason = "failed", error
        elif item in ("delivered", "failed") and mismatch is None:
            status = "valid"
        elif timeout is not None and (_epoch(delivered_at or updated_at) or now) + timeout <= now:
            status = "timed_out"
            what = "delivered" if item == "delivered" else "written, never fetched,"
            reason = f"{what} {format_duration(timeout)} ago and still not valid"
            if mismatch is not None:
                reason += f" ({_mismatch(mismatch)})"
        elif item == "syncing":
            status = "syncing"
        else:
            status, reason = "waiting", _mismatch(mismatch)
        devices.append({"device": name, "status": status, "reason": reason, "batch": number,
                        "attempts": attempts, "updated_at": updated_at})
    return devices


def _mismatch(mismatch: str) -> str:
    key, secret, reported = mismatch.split("\x1f", 2)
    if not reported:
        return f"{key} not reported yet"
    return f"{key} reported {SECRET_MASK if secret == '1' else reported}"


def campaign_status(engine: "Engine", name: str) -> dict[str, Any]:
    """The supervision of a campaign, as documented for ``status -o json``."""
    from campaignctl import jobs
    from campaignctl.campaigns import fail_stored, get_spec
    from campaignctl.errors import InputError

    with db.read(engine) as conn:
        row, spec = get_spec(conn, name)
        extra = conn.exec_driver_sql("SELECT reason, start_at FROM campaign WHERE id = ?", (row.id,)).one()
        job_id = jobs.latest_job(conn, row.id)
        batches: list[dict[str, Any]] = []
        if job_id is None:
            from campaignctl.campaigns import resolve_devices

            try:
                ids = [d for d, _ in resolve_devices(conn, spec, fail_stored(name))]
            except InputError:
                ids = []
            why = "the campaign is not launched" if row.status == "draft" else f"the campaign is {row.status}"
            devices = [{"device": n, "status": "pending", "reason": why, "batch": None, "attempts": 0,
                        "updated_at": None} for n in _names(conn, ids)]
            job = None
        else:
            job = jobs.summary(conn, job_id)
            stored = conn.exec_driver_sql("SELECT plan, settings FROM job WHERE id = ?", (job_id,)).one()
            rollout = Rollout.from_dict(json.loads(stored[1]).get("rollout"))
            devices = device_statuses(conn, job_id, json.loads(stored[0]), rollout)
            batches = _batches(conn, job_id, devices)
    summary = dict.fromkeys(DEVICE_STATES, 0)
    for device in devices:
        summary[device["status"]] += 1
    return {
        "campaign": row.name,
        "status": row.status,
        "reason": extra[0] if row.status in ("paused", "aborted", "cancelled") else None,
        "start_at": extra[1],
        "job": job,
        "summary": {"total": len(devices), **summary},
        "batches": batches,
        "devices": devices,
    }


def _batches(conn: Any, job_id: int, devices: list[dict[str, Any]]) -> list[dict[str, Any]]:
    per: dict[int, dict[str, int]] = {}
    for device in devices:
        number = device["batch"]
        if number not in per:
            per[number] = dict.fromkeys(DEVICE_STATES, 0)
        per[number][device["status"]] += 1
    return [{"number": r[0], "size": r[1], "status": r[2], "started_at": r[3], "delivered_at": r[4],
             "finished_at": r[5], "reason": r[6], "summary": per.get(r[0], dict.fromkeys(DEVICE_STATES, 0))}
            for r in conn.exec_driver_sql(
                "SELECT number, size, status, started_at, delivered_at, finished_at, reason FROM job_batch "
                "WHERE job_id = ? ORDER BY number", (job_id,))]


def _names(conn: Any, ids: list[int]) -> list[str]:
    names: list[str] = []
    for start in range(0, len(ids), 500):
        part = ids[start : start + 500]
        names += [r[0] for r in conn.exec_driver_sql(
            f"SELECT name FROM device WHERE id IN ({','.join('?' * len(part))})", tuple(part))]
    return sorted(names)
