"""The launch job: write desired entries in bulk, then deliver them, crash-safe and resumable.

Steps of a job (``job.step``): ``write`` (desired entries, chunk by chunk), ``deliver``
(interfaces), ``done``. Each job item goes pending → syncing (written) → delivered |
failed. Every step is a sequence of transactions that can be replayed: after a crash,
``resume`` picks up the items in the state the last committed transaction left them.

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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from campaignctl import db, store
from campaignctl.errors import ConflictError, NotFoundError
from campaignctl.interfaces.base import DeliveryPolicy

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

LEASE_SECONDS = 30.0
HEARTBEAT_SECONDS = 5.0
WRITE_CHUNK = 5000
ITEM_STATES = ("pending", "syncing", "delivered", "failed")

#: progress(phase, done, total): phase is "write" or "deliver".
Progress = Callable[[str, int, int], None]


def _owner() -> str:
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


def launch(engine: "Engine", name: str, *, policy: DeliveryPolicy | None = None,
           chunk_size: int = WRITE_CHUNK) -> tuple[int, str]:
    """Atomically move a draft campaign to ``running`` and create its job with every
    device as a pending item. Returns (job id, lease owner) for ``run``.

    A second launch, even from another process at the same moment, finds the campaign
    no longer a draft and is refused.
    """
    from campaignctl.campaigns import _fail_launched, build_plan, get_spec, resolve_devices

    policy = policy or DeliveryPolicy()
    owner = _owner()
    now = db.utcnow()
    with db.write(engine) as conn:
        row, spec = get_spec(conn, name)
        if row.status != "draft":
            job = conn.exec_driver_sql("SELECT max(id) FROM job WHERE campaign_id = ?", (row.id,)).scalar()
            raise ConflictError(f"campaign {name!r} was already launched ({row.status}, job {job})")
        fail = _fail_launched(name)
        devices = resolve_devices(conn, spec, fail)
        plan = build_plan(conn, spec, {t for _, t in devices}, fail)
        updated = conn.exec_driver_sql(
            "UPDATE campaign SET status = 'running', launched_at = ?, updated_at = ? WHERE id = ? AND status = 'draft'",
            (now, now, row.id)).rowcount
        if updated != 1:  # cannot happen under BEGIN IMMEDIATE; kept as the invariant's guard
            raise ConflictError(f"campaign {name!r} was launched by another process")
        job_id = conn.exec_driver_sql(
            "INSERT INTO job (campaign_id, status, step, plan, settings, total, lease_owner, lease_expires_at, "
            "created_at) VALUES (?, 'created', 'write', ?, ?, ?, ?, ?, ?) RETURNING id",
            (row.id, json.dumps(plan), json.dumps({**policy.to_dict(), "chunk_size": chunk_size}), len(devices), owner,
             time.time() + LEASE_SECONDS, now)).scalar_one()
        _insert_items(conn, job_id, devices)
    return job_id, owner


def _insert_items(conn: "Connection", job_id: int, devices: list[tuple[int, int]]) -> None:
    from sqlalchemy import insert

    from campaignctl.models import JobItem

    stmt = insert(JobItem.__table__)
    for start in range(0, len(devices), 50_000):
        conn.execute(stmt, [{"job_id": job_id, "device_id": d, "status": "pending", "attempts": 0}
                            for d, _ in devices[start : start + 50_000]])


def acquire(engine: "Engine", job_id: int) -> str:
    """Take the lease of a job that no live process is running; returns the owner token."""
    owner = _owner()
    with db.write(engine) as conn:
        job = _job_row(conn, job_id)
        if job.step == "done":
            raise ConflictError(f"job {job_id} has already finished ({job.status})")
        if job.lease_owner and job.lease_expires_at and job.lease_expires_at > time.time() \
                and _owner_alive(job.lease_owner):
            host, _, rest = job.lease_owner.partition(":")
            pid = rest.split(":")[0]
            raise ConflictError(
                f"job {job_id} is being run by process {pid} on {host} (lease renewed until "
                f"{time.strftime('%H:%M:%S', time.localtime(job.lease_expires_at))}); not resuming it twice")
        conn.exec_driver_sql("UPDATE job SET lease_owner = ?, lease_expires_at = ? WHERE id = ?",
                             (owner, time.time() + LEASE_SECONDS, job_id))
    return owner


class LeaseLost(ConflictError):
    pass


class _Heartbeat(threading.Thread):
    def __init__(self, engine: "Engine", job_id: int, owner: str) -> None:
        super().__init__(name=f"job-{job_id}-heartbeat", daemon=True)
        self.engine, self.job_id, self.owner = engine, job_id, owner
        self.stopped = threading.Event()
        self.lost = False

    def run(self) -> None:
        while not self.stopped.wait(HEARTBEAT_SECONDS):
            try:
                self.lost = not _renew(self.engine, self.job_id, self.owner)
            except Exception:  # a busy database: try again at the next beat
                continue
            if self.lost:
                return


def _renew(engine: "Engine", job_id: int, owner: str) -> bool:
    with db.write(engine) as conn:
        return conn.exec_driver_sql("UPDATE job SET lease_expires_at = ? WHERE id = ? AND lease_owner = ?",
                                    (time.time() + LEASE_SECONDS, job_id, owner)).rowcount == 1


def run(engine: "Engine", job_id: int, owner: str, *, progress: Progress | None = None) -> dict[str, Any]:
    """Run (or finish) a job whose lease ``owner`` holds; returns ``show(job_id)``."""
    progress = progress or (lambda _p, _d, _t: None)
    heartbeat = _Heartbeat(engine, job_id, owner)
    heartbeat.start()
    try:
        with db.write(engine) as conn:
            conn.exec_driver_sql(
                "UPDATE job SET status = 'in_progress', started_at = coalesce(started_at, ?) WHERE id = ?",
                (db.utcnow(), job_id))
        job = _job_row_engine(engine, job_id)
        if job.step == "write":
            _write_step(engine, job, owner, heartbeat, progress)
        _deliver_step(engine, job, owner, heartbeat, progress)
        _finish(engine, job_id, owner)
    finally:
        heartbeat.stopped.set()
        _release(engine, job_id, owner)
    return show(engine, job_id)


def _check_lease(conn: "Connection", job_id: int, owner: str, heartbeat: _Heartbeat) -> None:
    current = conn.exec_driver_sql("SELECT lease_owner FROM job WHERE id = ?", (job_id,)).scalar()
    if heartbeat.lost or current != owner:
        raise LeaseLost(f"job {job_id} was taken over by another process ({current}); stopping")


def _write_step(engine: "Engine", job: Any, owner: str, heartbeat: _Heartbeat, progress: Progress) -> None:
    """Write the campaign's desired entries for every pending item, one transaction per
    chunk of devices: the chunk's entries and its items' move to ``syncing`` commit
    together, so a device is written exactly once, whenever the process dies."""
    plan = json.loads(job.plan)
    values = [(int(t), key, value, key in p["secret"]) for t, p in plan.items()
              for key, value in p["configurations"].items()]
    by = f"job:{job.id}"
    chunk_size = json.loads(job.settings).get("chunk_size", WRITE_CHUNK)
    written = _count(engine, job.id, "pending", negate=True)
    progress("write", written, job.total)
    values_cte = ",".join("(?, ?, ?, ?)" for _ in values) or "(NULL, NULL, NULL, NULL)"
    flat = [x for v in values for x in v] if values else []
    insert_sql = (
        f"WITH v(device_type_id, key, value, secret) AS (VALUES {values_cte}) "
        "INSERT INTO device_config (device_id, key, desired, desired_at, desired_revision, desired_by, secret) "
        "SELECT ji.device_id, v.key, v.value, ?, ?, ?, v.secret FROM job_item ji "
        "JOIN device d ON d.id = ji.device_id JOIN v ON v.device_type_id = d.device_type_id "
        "WHERE ji.job_id = ? AND ji.status = 'pending' AND ji.device_id BETWEEN ? AND ? AND v.key IS NOT NULL "
        "ON CONFLICT (device_id, key) DO UPDATE SET desired = excluded.desired, desired_at = excluded.desired_at, "
        "desired_revision = excluded.desired_revision, desired_by = excluded.desired_by, secret = excluded.secret"
    )
    while True:
        with db.write(engine) as conn:
            _check_lease(conn, job.id, owner, heartbeat)
            bounds = conn.exec_driver_sql(
                "SELECT min(device_id), max(device_id), count(*) FROM (SELECT device_id FROM job_item "
                "WHERE job_id = ? AND status = 'pending' ORDER BY device_id LIMIT ?)", (job.id, chunk_size)).one()
            if not bounds[2]:
                conn.exec_driver_sql("UPDATE job SET step = 'deliver', written_at = ? WHERE id = ?",
                                     (db.utcnow(), job.id))
                break
            lo, hi, count = bounds
            revision = store.next_revision(conn)
            now = db.utcnow()
            conn.exec_driver_sql(insert_sql, (*flat, now, revision, by, job.id, lo, hi))
            conn.exec_driver_sql(
                "UPDATE job_item SET status = 'syncing', revision = ?, updated_at = ? "
                "WHERE job_id = ? AND status = 'pending' AND device_id BETWEEN ? AND ?",
                (revision, now, job.id, lo, hi))
        written += count
        progress("write", written, job.total)


def _deliver_step(engine: "Engine", job: Any, owner: str, heartbeat: _Heartbeat, progress: Progress) -> None:
    from campaignctl.delivery import JobRecorder, run_interface

    policy = DeliveryPolicy.from_dict(json.loads(job.settings))
    done = _count(engine, job.id, "syncing", negate=True) - _count(engine, job.id, "pending")
    progress("deliver", done, job.total)
    state = {"done": done}

    def on_flush(ok: int, ko: int) -> None:
        if heartbeat.lost:
            raise LeaseLost(f"job {job.id} lost its lease; stopping")
        state["done"] += ok + ko
        progress("deliver", state["done"], job.total)

    recorder = JobRecorder(engine, job.id, on_flush=on_flush)
    with db.read(engine) as conn:
        interfaces = conn.exec_driver_sql(
            "SELECT DISTINCT i.id, i.name, i.type, i.settings FROM job_item ji JOIN device d ON d.id = ji.device_id "
            "JOIN interface i ON i.id = d.interface_id WHERE ji.job_id = ? AND ji.status = 'syncing' ORDER BY i.name",
            (job.id,)).all()
    for interface in interfaces:
        with db.read(engine) as conn:
            _check_lease(conn, job.id, owner, heartbeat)
        run_interface(engine, job.id, interface, policy, recorder)


def _finish(engine: "Engine", job_id: int, owner: str) -> None:
    now = db.utcnow()
    with db.write(engine) as conn:
        counts = _counts(conn, job_id)
        if counts["syncing"] or counts["pending"]:
            # Devices on polling interfaces fetch their documents themselves.
            conn.exec_driver_sql("UPDATE job SET status = 'waiting' WHERE id = ? AND lease_owner = ?", (job_id, owner))
            return
        status = "failed" if counts["failed"] else "success"
        conn.exec_driver_sql(
            "UPDATE job SET status = ?, step = 'done', finished_at = ? WHERE id = ? AND lease_owner = ?",
            (status, now, job_id, owner))
        conn.exec_driver_sql(
            "UPDATE campaign SET status = 'completed', completed_at = ?, updated_at = ? "
            "WHERE id = (SELECT campaign_id FROM job WHERE id = ?) AND status = 'running'", (now, now, job_id))


def _release(engine: "Engine", job_id: int, owner: str) -> None:
    try:
        with db.write(engine) as conn:
            conn.exec_driver_sql(
                "UPDATE job SET lease_owner = NULL, lease_expires_at = NULL WHERE id = ? AND lease_owner = ?",
                (job_id, owner))
    except Exception:  # the lease then simply expires
        pass


def _job_row(conn: "Connection", job_id: int) -> Any:
    row = conn.exec_driver_sql(
        "SELECT j.*, c.name AS campaign FROM job j JOIN campaign c ON c.id = j.campaign_id WHERE j.id = ?",
        (job_id,)).one_or_none()
    if row is None:
        raise NotFoundError(f"no job {job_id}")
    return row


def _job_row_engine(engine: "Engine", job_id: int) -> Any:
    with db.read(engine) as conn:
        return _job_row(conn, job_id)


def _counts(conn: "Connection", job_id: int) -> dict[str, int]:
    counts = dict.fromkeys(ITEM_STATES, 0)
    counts.update(conn.exec_driver_sql(
        "SELECT status, count(*) FROM job_item WHERE job_id = ? GROUP BY status", (job_id,)).all())
    return counts


def _count(engine: "Engine", job_id: int, status: str, *, negate: bool = False) -> int:
    with db.read(engine) as conn:
        counts = _counts(conn, job_id)
    return sum(counts.values()) - counts[status] if negate else counts[status]


def summary(conn: "Connection", job_id: int) -> dict[str, Any]:
    job = _job_row(conn, job_id)
    return {
        "id": job.id,
        "campaign": job.campaign,
        "status": job.status,
        "step": job.step,
        "total": job.total,
        "counts": _counts(conn, job_id),
        "settings": json.loads(job.settings),
        "running": bool(job.lease_owner and job.lease_expires_at and job.lease_expires_at > time.time()
                        and _owner_alive(job.lease_owner)),
        "created_at": job.created_at,
        "started_at": job.started_at,
        "written_at": job.written_at,
        "finished_at": job.finished_at,
    }


def show(engine: "Engine", job_id: int, *, errors_limit: int | None = None) -> dict[str, Any]:
    with db.read(engine) as conn:
        data = summary(conn, job_id)
        sql = ("SELECT d.name, ji.attempts, ji.error, ji.updated_at FROM job_item ji JOIN device d ON d.id = ji.device_id "
               "WHERE ji.job_id = ? AND ji.status = 'failed' ORDER BY d.name")
        params: tuple = (job_id,)
        if errors_limit is not None:
            sql += " LIMIT ?"
            params += (errors_limit,)
        data["errors"] = [{"device": r[0], "attempts": r[1], "error": r[2], "at": r[3]}
                          for r in conn.exec_driver_sql(sql, params)]
    return data


def list_jobs(engine: "Engine") -> list[dict[str, Any]]:
    with db.read(engine) as conn:
        ids = [r[0] for r in conn.exec_driver_sql("SELECT id FROM job ORDER BY id")]
        return [summary(conn, i) for i in ids]


def resume(engine: "Engine", job_id: int, *, progress: Progress | None = None) -> dict[str, Any]:
    owner = acquire(engine, job_id)
    return run(engine, job_id, owner, progress=progress)


def complete_if_done(conn: "Connection", job_id: int) -> bool:
    """Finish a ``waiting`` job once its last device has fetched its document (devices
    on polling interfaces); called in the transaction that recorded the delivery."""
    job = conn.exec_driver_sql("SELECT status FROM job WHERE id = ?", (job_id,)).scalar()
    if job != "waiting":
        return False  # still being run: its runner finishes it
    counts = _counts(conn, job_id)
    if counts["syncing"] or counts["pending"]:
        return False
    now = db.utcnow()
    conn.exec_driver_sql("UPDATE job SET status = ?, step = 'done', finished_at = ? WHERE id = ?",
                         ("failed" if counts["failed"] else "success", now, job_id))
    conn.exec_driver_sql(
        "UPDATE campaign SET status = 'completed', completed_at = ?, updated_at = ? "
        "WHERE id = (SELECT campaign_id FROM job WHERE id = ?) AND status = 'running'", (now, now, job_id))
    return True
