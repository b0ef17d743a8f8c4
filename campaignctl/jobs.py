"""Jobs: what a launch creates, and who may run it.

A launch atomically turns a draft campaign into ``running`` (or ``scheduled`` until its
``start_at``) and creates its job: every selected device becomes a pending item of a
batch, decided once, deterministically, and stored. ``campaignctl.engine`` then moves
the job forward; every step is a sequence of transactions that can be replayed after a
crash.

A job's state machine is driven by one process at a time. The driver holds a lease in
the job row, timed by the database's clock and renewed by a heartbeat; another process
may take the job over once the lease has expired, or at once when the owner was a
process of this host that no longer exists. Taking a lease is a compare-and-set on the
locked job row, so two processes never both get it; every write of the driver checks,
on the same locked row, that the lease is still its own (``engine.stop_if_not_ours``).
The delivery itself is shared out in shards (``campaignctl.shards``).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any, Callable

from campaignctl import audit, counting, db, dialect
from campaignctl.errors import ConflictError, NotFoundError
from campaignctl.interfaces.base import DeliveryPolicy
from campaignctl.rollout import Rollout

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

LEASE_SECONDS = 30.0
HEARTBEAT_SECONDS = 5.0
WRITE_CHUNK = 5000
#: Items of devices a job leaves out (batch 0, never written): see campaignctl.membership.
LEFT_OUT = ("installed", "skipped", "superseded")
ITEM_STATES = ("pending", "syncing", "delivered", "failed", "cancelled", *LEFT_OUT)

#: The lock (``dialect.exclusive``) under which campaigns claim devices: launches,
#: scheduled starts, firmware recalls.
CLAIMS = "campaign claims"

#: progress(phase, done, total): phase is "write" or "deliver".
Progress = Callable[[str, int, int], None]


def new_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def owner_alive(owner: str) -> bool:
    """False only when ``owner`` was a process of this host that no longer exists."""
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


def db_clock(conn: "Connection") -> float:
    return float(db.run(conn, f"SELECT {dialect.clock(conn)}").scalar_one())


def _lease_held(job: Any, now: float) -> bool:
    return bool(
        job.lease_owner and job.lease_expires_at and job.lease_expires_at > now and owner_alive(job.lease_owner)
    )


def launch(
    engine: "Engine",
    name: str,
    *,
    policy: DeliveryPolicy | None = None,
    chunk_size: int = WRITE_CHUNK,
    shard_size: int | None = None,
    now: bool = False,
    force: bool = False,
) -> tuple[int | None, str | None]:
    """Launch a draft campaign: ``scheduled`` when its ``start_at`` is in the future
    (unless ``now``), else ``running`` with its job created. Returns (job id, lease
    owner), or (None, None) when scheduled.

    A second launch, even from another process at the same moment, finds the campaign
    no longer a draft and is refused. So is a campaign that competes with another for
    a key of a device, unless its priority is higher or ``force``.
    """
    from campaignctl.campaigns import get_spec

    policy = policy or DeliveryPolicy()
    with db.write(engine) as conn:
        dialect.exclusive(conn, CLAIMS)
        # Locked: of two launches at once, the second waits, then finds it launched.
        row, spec = get_spec(conn, name, lock=True)
        if row.status != "draft":
            job = latest_job(conn, row.id)
            raise ConflictError(
                f"campaign {name!r} was already launched ({row.status}" + (f", job {job})" if job else ")")
            )
        stamp = db.utcnow()
        from campaignctl.shards import DEFAULT_SIZE

        settings = {**policy.to_dict(), "chunk_size": chunk_size, "shard_size": shard_size or DEFAULT_SIZE}
        if spec.start_at and spec.start_at > stamp and not now:
            if not force:
                from campaignctl import membership
                from campaignctl.campaigns import fail_stored

                refuse_conflicts(name, spec, membership.resolve(conn, name, spec, fail_stored(name)).conflicts)
            db.run(
                conn,
                "UPDATE campaign SET status = 'scheduled', start_at = :start_at, launched_at = :now, "
                "updated_at = :now, launch_settings = :settings WHERE id = :id",
                {"start_at": spec.start_at, "now": stamp, "settings": json.dumps(settings), "id": row.id},
            )
            audit.record(conn, "campaign.launched", campaign=name, details={"scheduled_for": spec.start_at})
            return None, None
        job_id, owner = start(conn, row, spec, settings, force=force)
        record_start(conn, "campaign.launched", name, job_id, force=force)
        return job_id, owner


def launch_detached(engine: "Engine", name: str, **options: Any) -> int | None:
    """``launch --detach``: the job is created and left to whichever engine runs (``serve``,
    ``run``, ``tick``); returns its id, or None when the campaign is only scheduled."""
    job_id, owner = launch(engine, name, **options)
    if job_id is not None and owner is not None:
        release(engine, job_id, owner)
    return job_id


def record_start(
    conn: "Connection", action: str, name: str, job_id: int, *, by: str | None = None, **more: Any
) -> None:
    """The event of a campaign whose job ``start`` just created (a launch, a scheduled start)."""
    total = db.run(conn, "SELECT total FROM job WHERE id = :id", {"id": job_id}).scalar_one()
    audit.record(conn, action, campaign=name, details={"job": job_id, "devices": total, **more}, by=by)


def start(conn: "Connection", row: Any, spec: Any, settings: dict[str, Any], *, force: bool = True) -> tuple[int, str]:
    """Create the job of a campaign that starts now, in the caller's write transaction.
    Unless ``force``, refused when another campaign of the same or a higher priority sets
    one of its keys on one of its devices."""
    from campaignctl import approvals, membership
    from campaignctl.campaigns import fail_stored

    # Launches and scheduled starts both come here: neither starts an unapproved campaign.
    approvals.require(conn, row, spec)
    # Of two launches at once, the second decides on the first's campaign as launched
    # (and a firmware recall waits for both): the claims on devices are read and made
    # one transaction at a time.
    dialect.exclusive(conn, CLAIMS)
    found = membership.resolve(conn, row.name, spec, fail_stored(row.name))
    from campaignctl import dynamic

    dynamic.check_launch(row.name, spec, len(found.devices))
    if not force:
        refuse_conflicts(row.name, spec, found.conflicts)
    rollout = Rollout.from_dict(spec.rollout)
    stamp = db.utcnow()
    # Conditional on the status: of two processes launching (or starting) the same
    # campaign at once, the second finds it no longer a draft once the first commits.
    updated = db.run(
        conn,
        "UPDATE campaign SET status = 'running', launched_at = coalesce(launched_at, :now), "
        "updated_at = :now, reason = NULL WHERE id = :id AND status IN ('draft', 'scheduled')",
        {"now": stamp, "id": row.id},
    ).rowcount
    if updated != 1:
        raise ConflictError(f"campaign {row.name!r} was launched by another process")
    owner = new_owner()
    job_id = db.run(
        conn,
        "INSERT INTO job (campaign_id, status, step, plan, settings, total, lease_owner, lease_expires_at, "
        f"created_at) VALUES (:campaign, 'created', 'write', :plan, :settings, :total, :owner, "
        f"{dialect.clock(conn)} + :lease, :now) RETURNING id",
        {
            "campaign": row.id,
            "plan": json.dumps(found.plan),
            "settings": json.dumps(
                {
                    **settings,
                    "rollout": rollout.to_dict(),
                    "priority": spec.priority,
                    "supersedes": membership.supersedes(found, spec.priority),
                }
            ),
            "total": len(found.devices),
            "owner": owner,
            "lease": LEASE_SECONDS,
            "now": stamp,
        },
    ).scalar_one()
    _insert_items(conn, job_id, found)
    return job_id, owner


def refuse_conflicts(name: str, spec: Any, conflicts: list[Any]) -> None:
    """A ConflictError listing the campaigns of the same or a higher priority that set
    the campaign's keys on its devices (drafts do not count)."""
    from campaignctl.membership import ACTIVE

    blocking: dict[str, dict[str, Any]] = {}
    for c in conflicts:
        if c.claim.status in ACTIVE and c.claim.priority >= spec.priority:
            entry = blocking.setdefault(c.claim.campaign, {"claim": c.claim, "devices": set(), "keys": set()})
            entry["devices"].add(c.device_id)
            entry["keys"].add(c.key)
    if not blocking:
        return
    parts = [
        f"{other} ({e['claim'].status}, priority {e['claim'].priority}), which sets {', '.join(sorted(e['keys']))} "
        f"on {len(e['devices'])} of its devices"
        for other, e in blocking.items()
    ]
    raise ConflictError(
        f"campaign {name!r} (priority {spec.priority}) competes with "
        + "; ".join(parts)
        + f": give it a higher priority, cancel the other, or launch with --force "
        f"(campaignctl plan {name} lists the devices)"
    )


def _insert_items(conn: "Connection", job_id: int, found: Any) -> None:
    from campaignctl.models import JobItem

    batch_of: dict[int, int] = {}
    for number, members in found.batches():
        for device_id in members:
            batch_of[device_id] = number
    if found.sizes:  # none when every device is left out (all already installed)
        db.run(
            conn,
            "INSERT INTO job_batch (job_id, number, size) VALUES (:job, :number, :size)",
            [{"job": job_id, "number": n, "size": size} for n, size in enumerate(found.sizes, start=1)],
        )
    left_out = found.left_out
    dialect.bulk_insert(
        conn,
        JobItem.__table__,  # type: ignore[attr-defined]
        ("job_id", "device_id", "status", "attempts", "batch", "error"),
        (
            (job_id, d, "pending", 0, batch_of[d], None)
            if d not in left_out
            else (job_id, d, left_out[d][0], 0, 0, left_out[d][1])
            for d, _ in found.devices
        ),
    )
    # The write step's statements join these rows: plan them on their real numbers.
    dialect.analyze(conn, "job_item")


# -- leases ----------------------------------------------------------------------------


def acquire(engine: "Engine", job_id: int) -> str:
    """Take the lease of a job that no live process is running; returns the owner token."""
    owner = try_acquire(engine, job_id, explain=True)
    assert owner is not None
    return owner


def try_acquire(engine: "Engine", job_id: int, *, explain: bool = False) -> str | None:
    """The lease, or None (``explain``: a ConflictError saying why) when the job is
    finished or another live process runs it. Taking over from a dead or silent owner is
    recorded (``job.resumed``, by the engine); so is every ``explain`` take, which is a
    user's ``jobs resume``."""
    owner = new_owner()
    with db.write(engine) as conn:
        job = lock_job(conn, job_id)
        now = db_clock(conn)
        if job.step == "done":
            if explain:
                raise ConflictError(f"job {job_id} has already finished ({job.status})")
            return None
        if _lease_held(job, now):
            if explain:
                host, _, rest = job.lease_owner.partition(":")
                raise ConflictError(
                    f"job {job_id} is being run by process {rest.split(':')[0]} on {host} (lease renewed until "
                    f"{time.strftime('%H:%M:%S', time.localtime(job.lease_expires_at))}); not running it twice"
                )
            return None
        # Compare-and-set on what was read: on the locked row nobody can have changed it,
        # and the check keeps that true should the lock ever be missing.
        taken = db.run(
            conn,
            "UPDATE job SET lease_owner = :owner, lease_expires_at = :now + :lease WHERE id = :id "
            "AND lease_owner IS NOT DISTINCT FROM :seen",
            {"owner": owner, "now": now, "lease": LEASE_SECONDS, "id": job_id, "seen": job.lease_owner},
        ).rowcount
        if taken == 1 and (explain or job.lease_owner is not None):
            _record_resumed(conn, job_id, job.lease_owner, by=None if explain else audit.ENGINE)
    if taken == 1 and job.lease_owner is not None:
        counting.lease_takeover()  # of a process that died or stopped renewing it
    return owner if taken == 1 else None


def _record_resumed(conn: "Connection", job_id: int, previous: str | None, *, by: str | None) -> None:
    """A job taken over from a process that died or stopped renewing its lease (a crash),
    or resumed by a user (``jobs resume``): who had it, and who goes on with it."""
    campaign = db.run(
        conn, "SELECT c.name FROM job j JOIN campaign c ON c.id = j.campaign_id WHERE j.id = :id", {"id": job_id}
    ).scalar_one()
    audit.record(conn, "job.resumed", campaign=campaign, details={"job": job_id, "previous_owner": previous}, by=by)


def lock_job(conn: "Connection", job_id: int) -> Any:
    """The job row, locked until the end of the write transaction (PostgreSQL; SQLite's
    writer already holds the database)."""
    row = db.run(
        conn,
        "SELECT id, status, step, lease_owner, lease_expires_at FROM job WHERE id = :id" + dialect.for_update(conn),
        {"id": job_id},
    ).one_or_none()
    if row is None:
        raise NotFoundError(f"no job {job_id}")
    return row


def renew(engine: "Engine", job_id: int, owner: str) -> bool:
    with db.write(engine) as conn:
        return (
            db.run(
                conn,
                f"UPDATE job SET lease_expires_at = {dialect.clock(conn)} + :lease "
                "WHERE id = :id AND lease_owner = :owner",
                {"lease": LEASE_SECONDS, "id": job_id, "owner": owner},
            ).rowcount
            == 1
        )


def release(engine: "Engine", job_id: int, owner: str) -> None:
    try:
        with db.write(engine) as conn:
            db.run(
                conn,
                "UPDATE job SET lease_owner = NULL, lease_expires_at = NULL WHERE id = :id AND lease_owner = :owner",
                {"id": job_id, "owner": owner},
            )
    except Exception:  # noqa: BLE001 - the lease then simply expires
        pass


class Heartbeat(threading.Thread):
    """Renews a lease while its owner works. ``lost`` once another process took it, or
    once the lease could not be renewed for as long as it lasts (the database is
    unreachable: another process may take it over now); ``error`` says why."""

    def __init__(self, renew: Callable[[], bool], name: str, lease: float = LEASE_SECONDS) -> None:
        super().__init__(name=name, daemon=True)
        self.renew, self.lease = renew, lease
        self.stopped = threading.Event()
        self.lost = False
        self.error: str | None = None

    @classmethod
    def for_job(cls, engine: "Engine", job_id: int, owner: str) -> "Heartbeat":
        return cls(lambda: renew(engine, job_id, owner), f"job-{job_id}-heartbeat")

    def run(self) -> None:
        renewed = time.monotonic()
        while not self.stopped.wait(HEARTBEAT_SECONDS):
            try:
                if not self.renew():
                    self.lost, self.error = True, "the lease was taken over by another process"
                    return
                renewed, self.error = time.monotonic(), None
            except Exception as exc:  # noqa: BLE001 - a busy or unreachable database
                self.error = f"cannot renew the lease: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
                if time.monotonic() - renewed >= self.lease - HEARTBEAT_SECONDS:
                    self.lost = True  # it expires before the next beat: stop writing
                    return


# -- reading -----------------------------------------------------------------------------


def latest_job(conn: "Connection", campaign_id: int) -> int | None:
    """A campaign's job (None before it starts)."""
    return db.run(conn, "SELECT max(id) FROM job WHERE campaign_id = :id", {"id": campaign_id}).scalar()


def job_row(conn: "Connection", job_id: int) -> Any:
    row = db.run(
        conn,
        "SELECT j.*, c.name AS campaign FROM job j JOIN campaign c ON c.id = j.campaign_id WHERE j.id = :id",
        {"id": job_id},
    ).one_or_none()
    if row is None:
        raise NotFoundError(f"no job {job_id}")
    return row


def counts(conn: "Connection", job_id: int, batch: int | None = None) -> dict[str, int]:
    out = dict.fromkeys(ITEM_STATES, 0)
    sql = "SELECT status, count(*) FROM job_item WHERE job_id = :job"
    if batch is not None:
        sql += " AND batch = :batch"
    out.update(db.run(conn, sql + " GROUP BY status", {"job": job_id, "batch": batch}).all())
    return out


def item_counts(conn: "Connection", job_ids: list[int]) -> dict[int, dict[str, int]]:
    """``counts`` of several jobs in one grouped query (lists of jobs and campaigns)."""
    out = {job_id: dict.fromkeys(ITEM_STATES, 0) for job_id in job_ids}
    for chunk in range(0, len(job_ids), 500):  # bound the IN list's parameters
        for job_id, status, number in db.run(
            conn,
            "SELECT job_id, status, count(*) FROM job_item WHERE job_id IN :ids GROUP BY job_id, status",
            {"ids": job_ids[chunk : chunk + 500]},
            "ids",
        ):
            out[job_id][status] = number
    return out


def summary(
    conn: "Connection",
    job_id: int,
    job: Any = None,
    item_counts: dict[str, int] | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """A job's summary; ``job``, ``item_counts`` and ``now``: already read (a list)."""
    job = job_row(conn, job_id) if job is None else job
    settings = db.loads(job.settings, dict)
    return {
        "id": job.id,
        "campaign": job.campaign,
        "status": job.status,
        "step": job.step,
        "total": job.total,
        "counts": counts(conn, job_id) if item_counts is None else item_counts,
        "settings": {k: v for k, v in settings.items() if k not in ("rollout", "supersedes")},
        "running": _lease_held(job, db_clock(conn) if now is None else now),
        "created_at": job.created_at,
        "started_at": job.started_at,
        "written_at": job.written_at,
        "finished_at": job.finished_at,
    }


def steps(conn: "Connection", job_id: int) -> list[dict[str, Any]]:
    return [
        {"number": r[0], "kind": r[1], "batch": r[2], "devices": r[3], "started_at": r[4]}
        for r in db.run(
            conn,
            "SELECT number, kind, batch, devices, started_at FROM job_step WHERE job_id = :job ORDER BY number",
            {"job": job_id},
        )
    ]


def show(engine: "Engine", job_id: int) -> dict[str, Any]:
    with db.read(engine) as conn:
        data = summary(conn, job_id)
        data["steps"] = steps(conn, job_id)
        data["errors"] = [
            {"device": r[0], "attempts": r[1], "error": r[2], "at": r[3]}
            for r in db.run(
                conn,
                "SELECT d.name, ji.attempts, ji.error, ji.updated_at FROM job_item ji JOIN device d ON d.id = ji.device_id "
                "WHERE ji.job_id = :job AND ji.status = 'failed' ORDER BY d.name",
                {"job": job_id},
            )
        ]
        data["history"] = [
            {"device": r[0], "step": r[1], "status": r[2], "attempts": r[3], "error": r[4], "at": r[5]}
            for r in db.run(
                conn,
                "SELECT d.name, h.step, h.status, h.attempts, h.error, h.at FROM job_item_history h "
                "JOIN device d ON d.id = h.device_id WHERE h.job_id = :job ORDER BY h.step, d.name",
                {"job": job_id},
            )
        ]
        from campaignctl import shards

        data["shards"] = shards.list_shards(conn, job_id)
    return data


def count_jobs(engine: "Engine") -> int:
    with db.read(engine) as conn:
        return int(db.run(conn, "SELECT count(*) FROM job").scalar_one())


def list_jobs(engine: "Engine", *, limit: int | None = None, offset: int = 0) -> list[dict[str, Any]]:
    """Jobs in id order (``limit``/``offset``: one page of them), in three queries."""
    with db.read(engine) as conn:
        page = "" if limit is None else " LIMIT :limit OFFSET :offset"
        rows = db.run(
            conn,
            "SELECT j.*, c.name AS campaign FROM job j JOIN campaign c ON c.id = j.campaign_id ORDER BY j.id" + page,
            {"limit": limit, "offset": offset},
        ).all()
        counted, now = item_counts(conn, [r.id for r in rows]), db_clock(conn)
        return [summary(conn, r.id, r, counted[r.id], now) for r in rows]
