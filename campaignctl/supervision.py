"""The supervision: per device, what a campaign asked for against desired and reported values.

Device statuses, in the order they are decided:

- ``pending``: the campaign's configuration is not yet written for this device;
- ``invalid``: a campaign key's desired value was changed after the campaign set it;
- ``failed``: delivery failed after every retry (reason: the last error);
- ``syncing``: written, not yet delivered to the interface;
- ``valid``: every campaign key's desired value and every expected-state key's reported
  value equal the campaign's (compared as JSON);
- ``waiting``: delivered, the reported state does not yet equal the expected state.

The comparisons run in SQLite over canonical JSON texts, so a 100k-device campaign is
judged in one query.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from campaignctl import db
from campaignctl.values import SECRET_MASK

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

DEVICE_STATES = ("pending", "syncing", "waiting", "valid", "invalid", "failed")


def _values_cte(name: str, rows: list[tuple[int, str, str, int]]) -> tuple[str, list[Any]]:
    # Rows in key order: the subqueries below take the first mismatch in scan order,
    # which for a VALUES table is this order (an ORDER BY per device costs ~20% more).
    rows = sorted(rows, key=lambda r: (r[0], r[1]))
    if not rows:
        return f"{name}(type_id, key, value, secret) AS (SELECT NULL, NULL, NULL, 0 WHERE 0)", []
    return (f"{name}(type_id, key, value, secret) AS (VALUES {','.join('(?, ?, ?, ?)' for _ in rows)})",
            [x for r in rows for x in r])


def campaign_status(engine: "Engine", name: str) -> dict[str, Any]:
    """The supervision of a campaign, as documented for ``status -o json``."""
    from campaignctl import jobs
    from campaignctl.campaigns import _fail_launched, get_spec, resolve_devices
    from campaignctl.errors import InputError

    with db.read(engine) as conn:
        row, spec = get_spec(conn, name)
        job_id = conn.exec_driver_sql("SELECT max(id) FROM job WHERE campaign_id = ?", (row.id,)).scalar()
        if job_id is None:
            try:
                ids = [d for d, _ in resolve_devices(conn, spec, _fail_launched(name))]
            except InputError:
                ids = []
            names = _names(conn, ids)
            devices = [{"device": n, "status": "pending", "reason": "the campaign is not launched",
                        "attempts": 0, "updated_at": None} for n in names]
            job = None
        else:
            job = jobs.summary(conn, job_id)
            plan = json.loads(conn.exec_driver_sql("SELECT plan FROM job WHERE id = ?", (job_id,)).scalar())
            devices = _judge(conn, job_id, plan)
    summary = dict.fromkeys(DEVICE_STATES, 0)
    for device in devices:
        summary[device["status"]] += 1
    return {
        "campaign": row.name,
        "status": row.status,
        "job": job,
        "summary": {"total": len(devices), **summary},
        "devices": devices,
    }


def _names(conn: Any, ids: list[int]) -> list[str]:
    names: list[str] = []
    for start in range(0, len(ids), 500):
        part = ids[start : start + 500]
        names += [r[0] for r in conn.exec_driver_sql(
            f"SELECT name FROM device WHERE id IN ({','.join('?' * len(part))})", tuple(part))]
    return sorted(names)


def _judge(conn: Any, job_id: int, plan: dict[str, Any]) -> list[dict[str, Any]]:
    config_rows = [(int(t), k, v, k in p["secret"]) for t, p in plan.items() for k, v in p["configurations"].items()]
    state_rows = [(int(t), k, v, k in p["secret"]) for t, p in plan.items() for k, v in p["expected_state"].items()]
    cfg_cte, cfg_params = _values_cte("cfg", config_rows)
    exp_cte, exp_params = _values_cte("exp", state_rows)
    # For each device: the first campaign key whose desired value differs (invalid), and
    # the first expected key whose reported value differs (waiting), with what is there.
    sql = f"""
        WITH {cfg_cte}, {exp_cte}
        SELECT d.name, ji.status, ji.error, ji.attempts, ji.updated_at,
          (SELECT cfg.key || char(31) || coalesce(c.desired_by, '') || char(31) || coalesce(c.desired_at, '')
             FROM cfg JOIN device_config c ON c.device_id = ji.device_id AND c.key = cfg.key
            WHERE cfg.type_id = d.device_type_id AND c.desired IS NOT cfg.value LIMIT 1),
          (SELECT exp.key || char(31) || exp.secret || char(31) || coalesce(c.reported, '')
             FROM exp LEFT JOIN device_config c ON c.device_id = ji.device_id AND c.key = exp.key
            WHERE exp.type_id = d.device_type_id AND c.reported IS NOT exp.value LIMIT 1)
        FROM job_item ji JOIN device d ON d.id = ji.device_id
        WHERE ji.job_id = ?
        ORDER BY d.name
    """
    # Plain DB-API tuples: SQLAlchemy's row objects cost more than the query at 100k rows.
    rows = conn.connection.driver_connection.execute(sql, (*cfg_params, *exp_params, job_id)).fetchall()
    devices = []
    for name, item, error, attempts, updated_at, changed, mismatch in rows:
        reason = None
        if item == "pending":
            status = "pending"
        elif changed is not None:
            key, by, at = changed.split("\x1f")
            status = "invalid"
            reason = f"{key} was changed after the campaign set it" + (f" (by {by} at {at})" if by else "")
        elif item == "failed":
            status, reason = "failed", error
        elif item == "syncing":
            status = "syncing"
        elif mismatch is not None:
            key, secret, reported = mismatch.split("\x1f", 2)
            status = "waiting"
            if not reported:
                reason = f"{key} not reported yet"
            else:
                reason = f"{key} reported {SECRET_MASK if secret == '1' else reported}"
        else:
            status = "valid"
        devices.append({"device": name, "status": status, "reason": reason, "attempts": attempts,
                        "updated_at": updated_at})
    return devices
