"""What users do to a running rollout: pause, resume, cancel, retry.

Each is a change of state in the database; the process that drives the job (and every
worker delivering its shards) sees it at its next step.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from campaignctl import audit, db, dialect, jobs, store
from campaignctl.errors import ConflictError, InputError
from campaignctl.rollout import Rollout
from campaignctl.suggest import not_found

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine


def campaign_row(conn: "Connection", name: str) -> Any:
    """The campaign's id, name, status and reason; locked in a write transaction, so
    that two users' commands on it happen one after the other."""
    lock = dialect.for_update(conn) if conn.get_execution_options().get("write") else ""
    row = db.run(
        conn, "SELECT id, name, status, reason FROM campaign WHERE name = :name" + lock, {"name": name}
    ).one_or_none()
    if row is None:
        raise not_found(conn, "campaign", name)
    return row


def pause(engine: "Engine", name: str) -> None:
    stamp = db.utcnow()
    with db.write(engine) as conn:
        row = campaign_row(conn, name)
        if row.status == "paused":
            return
        if row.status != "running":
            raise ConflictError(f"campaign {name!r} is {row.status}: only a running campaign can be paused")
        mark_paused(conn, name, f"paused by a user at {stamp}")


def mark_paused(conn: "Connection", name: str, reason: str) -> None:
    """Pause a scheduled, running or paused campaign with this reason, in the caller's
    write transaction (a scheduled one goes back to scheduled when resumed)."""
    row = campaign_row(conn, name)
    db.run(
        conn,
        "UPDATE campaign SET status = 'paused', reason = :reason, updated_at = :now WHERE id = :id",
        {"reason": reason, "now": db.utcnow(), "id": row.id},
    )
    db.run(conn, "UPDATE job SET status = 'paused' WHERE campaign_id = :id AND step != 'done'", {"id": row.id})
    audit.record(conn, "campaign.paused", campaign=name, details={"reason": reason})


def resume(engine: "Engine", name: str) -> int | None:
    """Resume a paused campaign where it stopped; a batch that tripped the breaker is
    accepted as it is (no more thresholds for it). Returns the job id (None: the
    campaign had not started, and is scheduled again)."""
    stamp = db.utcnow()
    with db.write(engine) as conn:
        row = campaign_row(conn, name)
        if row.status != "paused":
            raise ConflictError(f"campaign {name!r} is {row.status}: only a paused campaign can be resumed")
        job_id = jobs.latest_job(conn, row.id)
        if job_id is None:  # paused before it started (a firmware recall): scheduled again
            _refuse_recalled(conn, name, None)
            db.run(
                conn,
                "UPDATE campaign SET status = 'scheduled', reason = NULL, updated_at = :now WHERE id = :id",
                {"now": stamp, "id": row.id},
            )
            audit.record(conn, "campaign.resumed", campaign=name, details={"job": None, "status": "scheduled"})
            return None
        _refuse_recalled(conn, name, job_id)
        db.run(
            conn,
            "UPDATE campaign SET status = 'running', reason = NULL, updated_at = :now WHERE id = :id",
            {"now": stamp, "id": row.id},
        )
        tripped = db.run(
            conn,
            "SELECT number, delivered_at FROM job_batch WHERE job_id = :job AND status = 'tripped'",
            {"job": job_id},
        ).first()
        if tripped is not None:
            pending = db.run(
                conn,
                "SELECT count(*) FROM job_item WHERE job_id = :job AND batch = :batch AND status = 'pending'",
                {"job": job_id, "batch": tripped[0]},
            ).scalar()
            # Back to the phase it tripped in: releasing, delivering, or baking.
            phase = "releasing" if pending else "baking" if tripped[1] else "delivering"
            db.run(
                conn,
                "UPDATE job_batch SET status = :phase, accepted = true, finished_at = NULL, "
                "reason = 'resumed by a user after: ' || coalesce(reason, '') WHERE job_id = :job AND number = :number",
                {"phase": phase, "job": job_id, "number": tripped[0]},
            )
        db.run(conn, "UPDATE job SET status = 'in_progress' WHERE id = :id", {"id": job_id})
        accepted = {"accepted_batch": tripped[0]} if tripped is not None else {}
        audit.record(conn, "campaign.resumed", campaign=name, details={"job": job_id, "status": "running", **accepted})
    return job_id


def _refuse_recalled(conn: "Connection", name: str, job_id: int | None) -> None:
    """A campaign paused because its firmware was recalled resumes once the recall is
    lifted, not before."""
    from campaignctl.campaigns import fail_stored, get_spec, resolve_devices
    from campaignctl.firmwares import recalled_in

    _row, spec = get_spec(conn, name)
    if not spec.firmware:
        return
    if job_id is not None:
        plan = db.loads(db.run(conn, "SELECT plan FROM job WHERE id = :id", {"id": job_id}).scalar_one(), dict)
        types = {int(t) for t in plan}
    else:  # not started: the device types it selects now
        types = {t for _, t in resolve_devices(conn, spec, fail_stored(name))}
    why = recalled_in(conn, spec, types)
    if why:
        raise ConflictError(f"campaign {name!r} cannot resume: {why} (campaignctl firmwares unrecall, or cancel it)")


def cancel(engine: "Engine", name: str, *, wait: float = 10.0) -> dict[str, Any]:
    """Cancel a scheduled, running or paused campaign: what was delivered stays, the
    rest is never touched. Returns the job's summary (None when it never started)."""
    stamp = db.utcnow()
    with db.write(engine) as conn:
        row = campaign_row(conn, name)
        if row.status not in ("scheduled", "running", "paused"):
            raise ConflictError(
                f"campaign {name!r} is {row.status}: only a scheduled, running or paused campaign "
                "can be cancelled" + (" (delete a draft instead)" if row.status == "draft" else "")
            )
        mark_cancelled(conn, name, f"cancelled by a user at {stamp}")
    return finish_cancel(engine, name, wait=wait)


def mark_cancelled(conn: "Connection", name: str, reason: str) -> None:
    stamp = db.utcnow()
    db.run(
        conn,
        "UPDATE campaign SET status = 'cancelled', reason = :reason, updated_at = :now, "
        "completed_at = :now WHERE id = :id",
        {"reason": reason, "now": stamp, "id": campaign_row(conn, name).id},
    )
    audit.record(conn, "campaign.cancelled", campaign=name, details={"reason": reason})


def finish_cancel(engine: "Engine", name: str, *, wait: float = 10.0) -> dict[str, Any]:
    """Finish a cancelled campaign's job here, unless the process that runs it does
    first; past ``wait`` seconds that process stops at its next step."""
    with db.read(engine) as conn:
        job_id = jobs.latest_job(conn, campaign_row(conn, name).id)
    if job_id is None:
        return {"job": None}
    from campaignctl.worker import drive

    deadline = time.monotonic() + wait
    while drive(engine, job_id) is None and time.monotonic() < deadline:
        time.sleep(0.1)
    with db.read(engine) as conn:
        return {"job": jobs.summary(conn, job_id)}


def _refuse_outside_windows(conn: "Connection", name: str, settings: dict[str, Any], device_ids: list[int]) -> None:
    """A retry sends at once: with maintenance windows, only to devices whose window is
    open now (the others would get a document outside their window)."""
    from campaignctl import windows

    closed = windows.outside_windows(conn, Rollout.from_dict(settings.get("rollout")), device_ids)
    if closed:
        shown = "; ".join(f"{device}: {reason}" for device, reason in list(closed.items())[:5])
        more = f" and {len(closed) - 5} more" if len(closed) > 5 else ""
        raise ConflictError(
            f"campaign {name!r} delivers only inside its maintenance windows, and {len(closed)} of the devices "
            f"to retry are outside theirs ({shown}{more}): retry them once their window is open, or name the "
            "others with --device"
        )


def retry(
    engine: "Engine", name: str, *, devices: list[str] | None = None, timed_out: bool = False
) -> tuple[int, list[str]]:
    """Re-deliver to failed (and, with ``timed_out``, timed-out) devices only, as a new
    step of the job; their previous outcome is kept in the job's history. Returns (job
    id, the devices retried)."""
    from campaignctl.supervision import device_statuses

    stamp = db.utcnow()
    with db.write(engine) as conn:
        row = campaign_row(conn, name)
        if row.status not in ("running", "completed"):
            hint = " (resume it first: a paused campaign delivers nothing)" if row.status == "paused" else ""
            raise ConflictError(
                f"campaign {name!r} is {row.status}: only a running or completed campaign can be retried{hint}"
            )
        job_id = jobs.latest_job(conn, row.id)
        assert job_id is not None  # running and completed campaigns have their job
        job = jobs.job_row(conn, job_id)
        settings = db.loads(job.settings, dict)
        wanted = {"failed", "timed_out"} if timed_out else {"failed"}
        eligible = {
            d["device"]: d
            for d in device_statuses(
                conn, job_id, db.loads(job.plan, dict), Rollout.from_dict(settings.get("rollout")), only=wanted
            )
        }
        if devices:
            unknown = [d for d in devices if d not in eligible]
            if unknown:
                kinds = " or timed out" if timed_out else ""
                raise InputError(f"not failed{kinds} in campaign {name!r}: {', '.join(unknown)}", field="--device")
            targets = [eligible[d] for d in devices]
        else:
            targets = list(eligible.values())
        if not targets:
            raise ConflictError(
                f"campaign {name!r} has no failed{' or timed-out' if timed_out else ''} device to retry"
            )
        ids = store.by_name(conn, [t["device"] for t in targets], "id")
        _refuse_outside_windows(conn, name, settings, list(ids.values()))
        step = db.run(
            conn, "SELECT coalesce(max(number), 0) + 1 FROM job_step WHERE job_id = :job", {"job": job_id}
        ).scalar()
        db.run(
            conn,
            "INSERT INTO job_step (job_id, number, kind, devices, started_at) "
            "VALUES (:job, :step, 'retry', :devices, :now)",
            {"job": job_id, "step": step, "devices": len(targets), "now": stamp},
        )
        db.run(
            conn,
            "INSERT INTO job_item_history (job_id, device_id, step, status, attempts, error, at) "
            "SELECT job_id, device_id, :step, :status, attempts, coalesce(error, CAST(:reason AS TEXT)), :now "
            "FROM job_item WHERE job_id = :job AND device_id = :device",
            [
                {
                    "step": step,
                    "status": t["status"],
                    "reason": t["reason"],
                    "now": stamp,
                    "job": job_id,
                    "device": ids[t["device"]],
                }
                for t in targets
            ],
        )
        db.run(
            conn,
            "UPDATE job_item SET status = 'syncing', error = NULL, delivered_at = NULL, updated_at = :now "
            "WHERE job_id = :job AND device_id = :device",
            [{"now": stamp, "job": job_id, "device": ids[t["device"]]} for t in targets],
        )
        db.run(
            conn,
            "UPDATE job SET status = 'in_progress', step = 'deliver', finished_at = NULL WHERE id = :id",
            {"id": job_id},
        )
        if row.status == "completed":
            db.run(
                conn,
                "UPDATE campaign SET status = 'running', completed_at = NULL, updated_at = :now WHERE id = :id",
                {"now": stamp, "id": row.id},
            )
        details = {"job": job_id, "step": step, "devices": len(targets), "timed_out": timed_out}
        audit.record(conn, "campaign.retried", campaign=name, details=details)
    return job_id, [t["device"] for t in targets]
