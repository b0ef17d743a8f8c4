"""Jobs: what a launch creates, and who may run it.

A launch atomically turns a draft campaign into ``running`` (or ``scheduled`` until its
``start_at``) and creates its job: every selected device becomes a pending item of a
batch, decided once, deterministically, and stored. ``campaignctl.engine`` then moves
the job forward; every step is a sequence of transactions that can be replayed after a
crash.

A job is run by one process at a time. The runner holds a lease in the job row, renewed
by a heartbeat; another process may take the job over once the lease has expired, or
at once when the owner was a process of this host that no longer exists.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any, Callable

from campaignctl import db
from campaignctl.errors import ConflictError, NotFoundError
from campaignctl.interfaces.base import DeliveryPolicy
from campaignctl.rollout import Rollout, batch_sizes, order_devices

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

LEASE_SECONDS = 30.0
HEARTBEAT_SECONDS = 5.0
WRITE_CHUNK = 5000
ITEM_STATES = ("pending", "syncing", "delivered", "failed", "cancelled")

#: progress(phase, done, total): phase is "write" or "deliver".
Progress = Callable[[str, int, int], None]


def new_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _owner_alive(owner: str) -> bool:
    host, _, rest = owner.partition(":")
    if host != socket.gethostname():
        return True  # cannot tell: trust the lease's expiry
    try:
        os.kill(int(rest.split(":")[0]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError):
        return True
    return True


def _lease_held(job: Any) -> bool:
    return bool(job.lease_owner and job.lease_expires_at and job.lease_expires_at > time.time()
                and _owner_alive(job.lease_owner))


def launch(engine: "Engine", name: str, *, policy: DeliveryPolicy | None = None, chunk_size: int = WRITE_CHUNK,
           now: bool = False) -> tuple[int | None, str | None]:
    """Launch a draft campaign: ``scheduled`` when its ``start_at`` is in the future
    (unless ``now``), else ``running`` with its job created. Returns (job id, lease
    owner), or (None, None) when scheduled.

    A second launch, even from another process at the same moment, finds the campaign
    no longer a draft and is refused.
    """
    from campaignctl.campaigns import get_spec

    policy = policy or DeliveryPolicy()
    with db.write(engine) as conn:
        row, spec = get_spec(conn, name)
        if row.status != "draft":
            job = latest_job(conn, row.id)
            raise ConflictError(f"campaign {name!r} was already launched ({row.status}"
                                + (f", job {job})" if job else ")"))
        stamp = db.utcnow()
        settings = {**policy.to_dict(), "chunk_size": chunk_size}
        if spec.start_at and spec.start_at > stamp and not now:
            conn.exec_driver_sql(
                "UPDATE campaign SET status = 'scheduled', start_at = ?, launched_at = ?, updated_at = ?, "
                "launch_settings = ? WHERE id = ?", (spec.start_at, stamp, stamp, json.dumps(settings), row.id))
            return None, None
        return start(conn, row, spec, settings)


def start(conn: "Connection", row: Any, spec: Any, settings: dict[str, Any]) -> tuple[int, str]:
    """Create the job of a campaign that starts now, in the caller's write transaction."""
    from campaignctl.campaigns import fail_stored, build_plan, resolve_devices

    fail = fail_stored(row.name)
    devices = resolve_devices(conn, spec, fail)
    plan = build_plan(conn, spec, {t for _, t in devices}, fail)
    rollout = Rollout.from_dict(spec.rollout)
    stamp = db.utcnow()
    updated = conn.exec_driver_sql(
        "UPDATE campaign SET status = 'running', launched_at = coalesce(launched_at, ?), updated_at = ?, "
        "reason = NULL WHERE id = ? AND status IN ('draft', 'scheduled')", (stamp, stamp, row.id)).rowcount
    if updated != 1:  # cannot happen under BEGIN IMMEDIATE; kept as the invariant's guard
        raise ConflictError(f"campaign {row.name!r} was launched by another process")
    owner = new_owner()
    job_id = conn.exec_driver_sql(
        "INSERT INTO job (campaign_id, status, step, plan, settings, total, lease_owner, lease_expires_at, "
        "created_at) VALUES (?, 'created', 'write', ?, ?, ?, ?, ?, ?) RETURNING id",
        (row.id, json.dumps(plan), json.dumps({**settings, "rollout": rollout.to_dict()}), len(devices), owner,
         time.time() + LEASE_SECONDS, stamp)).scalar_one()
    _insert_items(conn, job_id, row.name, devices, rollout, spec)
    return job_id, owner


def _insert_items(conn: "Connection", job_id: int, campaign: str, devices: list[tuple[int, int]],
                  rollout: Rollout, spec: Any) -> None:
    from sqlalchemy import insert

    from campaignctl.campaigns import fail_stored, canaries as canary_ids
    from campaignctl.models import JobItem

    ids = [d for d, _ in devices]
    canaries = canary_ids(conn, spec, set(ids), fail_stored(campaign))
    order = ids
    if rollout.explicit:
        names = dict(conn.exec_driver_sql("SELECT id, name FROM device").all())
        order = order_devices(campaign, [(d, names[d], d in canaries) for d in ids])
    sizes = batch_sizes(rollout, len(order))
    batch_of: dict[int, int] = {}
    position = 0
    for number, size in enumerate(sizes, start=1):
        for device_id in order[position : position + size]:
            batch_of[device_id] = number
        position += size
    conn.exec_driver_sql("INSERT INTO job_batch (job_id, number, size) VALUES (?, ?, ?)",
                         [(job_id, n, size) for n, size in enumerate(sizes, start=1)])
    stmt = insert(JobItem.__table__)
    for start_at in range(0, len(ids), 50_000):
        conn.execute(stmt, [{"job_id": job_id, "device_id": d, "status": "pending", "attempts": 0,
                             "batch": batch_of[d]} for d in ids[start_at : start_at + 50_000]])


# -- leases ----------------------------------------------------------------------------


def acquire(engine: "Engine", job_id: int) -> str:
    """Take the lease of a job that no live process is running; returns the owner token."""
    owner = try_acquire(engine, job_id, explain=True)
    assert owner is not None
    return owner


def try_acquire(engine: "Engine", job_id: int, *, explain: bool = False) -> str | None:
    """The lease, or None (``explain``: a ConflictError saying why) when the job is
    finished or another live process runs it."""
    owner = new_owner()
    with db.write(engine) as conn:
        job = job_row(conn, job_id)
        if job.step == "done":
            if explain:
                raise ConflictError(f"job {job_id} has already finished ({job.status})")
            return None
        if _lease_held(job):
            if explain:
                host, _, rest = job.lease_owner.partition(":")
                raise ConflictError(
                    f"job {job_id} is being run by process {rest.split(':')[0]} on {host} (lease renewed until "
                    f"{time.strftime('%H:%M:%S', time.localtime(job.lease_expires_at))}); not running it twice")
            return None
        conn.exec_driver_sql("UPDATE job SET lease_owner = ?, lease_expires_at = ? WHERE id = ?",
                             (owner, time.time() + LEASE_SECONDS, job_id))
    return owner


def renew(engine: "Engine", job_id: int, owner: str) -> bool:
    with db.write(engine) as conn:
        return conn.exec_driver_sql("UPDATE job SET lease_expires_at = ? WHERE id = ? AND lease_owner = ?",
                                    (time.time() + LEASE_SECONDS, job_id, owner)).rowcount == 1


def release(engine: "Engine", job_id: int, owner: str) -> None:
    try:
        with db.write(engine) as conn:
            conn.exec_driver_sql(
                "UPDATE job SET lease_owner = NULL, lease_expires_at = NULL WHERE id = ? AND lease_owner = ?",
                (job_id, owner))
    except Exception:  # the lease then simply expires
        pass


class Heartbeat(threading.Thread):
    """Renews a lease while its owner works; ``lost`` once another process took it."""

    def __init__(self, engine: "Engine", job_id: int, owner: str) -> None:
        super().__init__(name=f"job-{job_id}-heartbeat", daemon=True)
        self.engine, self.job_id, self.owner = engine, job_id, owner
        self.stopped = threading.Event()
        self.lost = False

    def run(self) -> None:
        while not self.stopped.wait(HEARTBEAT_SECONDS):
            try:
                self.lost = not renew(self.engine, self.job_id, self.owner)
            except Exception:  # a busy database: try again at the next beat
                continue
            if self.lost:
                return


# -- reading -----------------------------------------------------------------------------


def latest_job(conn: "Connection", campaign_id: int) -> int | None:
    """A campaign's job (None before it starts)."""
    return conn.exec_driver_sql("SELECT max(id) FROM job WHERE campaign_id = ?", (campaign_id,)).scalar()


def job_row(conn: "Connection", job_id: int) -> Any:
    row = conn.exec_driver_sql(
        "SELECT j.*, c.name AS campaign FROM job j JOIN campaign c ON c.id = j.campaign_id WHERE j.id = ?",
        (job_id,)).one_or_none()
    if row is None:
        raise NotFoundError(f"no job {job_id}")
    return row


def counts(conn: "Connection", job_id: int, batch: int | None = None) -> dict[str, int]:
    out = dict.fromkeys(ITEM_STATES, 0)
    sql = "SELECT status, count(*) FROM job_item WHERE job_id = ?"
    params: tuple = (job_id,)
    if batch is not None:
        sql += " AND batch = ?"
        params += (batch,)
    out.update(conn.exec_driver_sql(sql + " GROUP BY status", params).all())
    return out


def summary(conn: "Connection", job_id: int) -> dict[str, Any]:
    job = job_row(conn, job_id)
    settings = json.loads(job.settings)
    return {
        "id": job.id,
        "campaign": job.campaign,
        "status": job.status,
        "step": job.step,
        "total": job.total,
        "counts": counts(conn, job_id),
        "settings": {k: v for k, v in settings.items() if k != "rollout"},
        "running": _lease_held(job),
        "created_at": job.created_at,
        "started_at": job.started_at,
        "written_at": job.written_at,
        "finished_at": job.finished_at,
    }


def steps(conn: "Connection", job_id: int) -> list[dict[str, Any]]:
    return [{"number": r[0], "kind": r[1], "batch": r[2], "devices": r[3], "started_at": r[4]}
            for r in conn.exec_driver_sql(
                "SELECT number, kind, batch, devices, started_at FROM job_step WHERE job_id = ? ORDER BY number",
                (job_id,))]


def show(engine: "Engine", job_id: int) -> dict[str, Any]:
    with db.read(engine) as conn:
        data = summary(conn, job_id)
        data["steps"] = steps(conn, job_id)
        data["errors"] = [{"device": r[0], "attempts": r[1], "error": r[2], "at": r[3]}
                          for r in conn.exec_driver_sql(
            "SELECT d.name, ji.attempts, ji.error, ji.updated_at FROM job_item ji JOIN device d ON d.id = ji.device_id "
            "WHERE ji.job_id = ? AND ji.status = 'failed' ORDER BY d.name", (job_id,))]
        data["history"] = [{"device": r[0], "step": r[1], "status": r[2], "attempts": r[3], "error": r[4], "at": r[5]}
                           for r in conn.exec_driver_sql(
            "SELECT d.name, h.step, h.status, h.attempts, h.error, h.at FROM job_item_history h "
            "JOIN device d ON d.id = h.device_id WHERE h.job_id = ? ORDER BY h.step, d.name", (job_id,))]
    return data


def list_jobs(engine: "Engine") -> list[dict[str, Any]]:
    with db.read(engine) as conn:
        ids = [r[0] for r in conn.exec_driver_sql("SELECT id FROM job ORDER BY id")]
        return [summary(conn, i) for i in ids]
