"""Shards: a job's delivery shared among any number of worker processes.

Once the job's driver has written a batch's desired entries (see ``campaignctl.engine``),
the job's written-but-undelivered devices on interfaces that push are cut into shards:
ranges of device ids of up to ``shard_size`` devices. Any process — the driver itself,
``campaignctl run`` workers on this or other machines — claims a pending shard under a
lease (PostgreSQL: ``FOR UPDATE SKIP LOCKED``, so claimers never wait on each other;
SQLite: inside the write transaction), delivers its devices, records each outcome on the
job item, and marks the shard done.

A worker that dies keeps its shards only until their lease expires (at once when it was
a process of this host); another worker then delivers what is still ``syncing`` in them.
A device can so receive the same document twice (never an older one after a newer one:
every document carries its version). A worker that sees its campaign paused or
cancelled sends nothing new and gives its shard back.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from campaignctl import counting, db, dialect
from campaignctl.jobs import LEASE_SECONDS, Heartbeat, db_clock, owner_alive

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

log = logging.getLogger("campaignctl.shards")

DEFAULT_SIZE = 2000
OPEN = ("pending", "running")


@dataclass(frozen=True)
class Shard:
    job_id: int
    number: int
    first: int  # device ids, inclusive
    last: int
    size: int


def pushing_types() -> list[str]:
    from campaignctl import interfaces

    return [kind for kind in interfaces.TYPES if interfaces.module(kind).Driver.pushes]


def plan(conn: "Connection", job_id: int, size: int) -> int:
    """Cut the job's devices awaiting delivery on interfaces that push into new shards,
    unless the job still has open ones (they cover them). Returns how many were made."""
    if db.run(
        conn,
        "SELECT 1 FROM job_shard WHERE job_id = :job AND status IN :open",
        {"job": job_id, "open": list(OPEN)},
        "open",
    ).first():
        return 0
    ids = [
        r[0]
        for r in db.run(
            conn,
            "SELECT ji.device_id FROM job_item ji JOIN device d ON d.id = ji.device_id "
            "JOIN interface i ON i.id = d.interface_id WHERE ji.job_id = :job AND ji.status = 'syncing' "
            "AND i.type IN :types ORDER BY ji.device_id",
            {"job": job_id, "types": pushing_types()},
            "types",
        )
    ]
    if not ids:
        return 0
    start = db.run(
        conn, "SELECT coalesce(max(number), 0) FROM job_shard WHERE job_id = :job", {"job": job_id}
    ).scalar_one()
    rows = [
        {
            "job": job_id,
            "number": start + n + 1,
            "first": ids[i],
            "last": ids[min(i + size, len(ids)) - 1],
            "size": min(size, len(ids) - i),
        }
        for n, i in enumerate(range(0, len(ids), size))
    ]
    db.run(
        conn,
        "INSERT INTO job_shard (job_id, number, first_device_id, last_device_id, size, status) "
        "VALUES (:job, :number, :first, :last, :size, 'pending')",
        rows,
    )
    return len(rows)


#: The workers of this process delivering a shard now.
_delivering: set[str] = set()
_delivering_lock = threading.Lock()


def _abandoned_here(worker: str) -> bool:
    """A shard marked running by a worker of this very process that is not delivering
    it: left by an error that cut its database connection before it could give the shard
    back (a lost connection, a restarted server). No need to wait for its lease."""
    import os
    import socket

    if not worker.startswith(f"{socket.gethostname()}:{os.getpid()}:"):
        return False
    with _delivering_lock:
        return worker not in _delivering


def claim(engine: "Engine", worker: str, *, job_id: int | None = None) -> Shard | None:
    """Take the next shard that is pending, or whose worker's lease is gone, of a running
    campaign (of ``job_id`` only, when given); None when there is none. A shard still
    marked as this worker's own was left by an error (it is claiming, not delivering)."""
    try:
        return _claim(engine, worker, job_id)
    except BaseException:
        with _delivering_lock:
            _delivering.discard(worker)
        raise


def _claim(engine: "Engine", worker: str, job_id: int | None) -> Shard | None:
    with db.write(engine) as conn:
        dead = [
            w
            for (w,) in db.run(conn, "SELECT DISTINCT worker FROM job_shard WHERE status = 'running'")
            if w and (not owner_alive(w) or _abandoned_here(w))
        ]
        now = db_clock(conn)
        # The campaign's status is read in a subquery: only the shard row is locked, so
        # claimers of other shards of the same job never wait on each other.
        row = db.run(
            conn,
            "SELECT job_id, number, first_device_id, last_device_id, size FROM job_shard s "
            "WHERE (s.status = 'pending' OR (s.status = 'running' AND (s.lease_expires_at < :now "
            "OR s.worker IN :dead OR s.worker = :me))) "
            "AND s.job_id IN (SELECT j.id FROM job j JOIN campaign c ON c.id = j.campaign_id "
            "WHERE c.status = 'running' AND j.step != 'done'"
            + (" AND j.id = :job" if job_id is not None else "")
            + ") "
            "ORDER BY s.job_id, s.number LIMIT 1" + dialect.for_update(conn, skip_locked=True),
            {"now": now, "dead": dead or [""], "job": job_id, "me": worker},
            "dead",
        ).one_or_none()
        if row is None:
            return None
        with _delivering_lock:  # from now until finish(): never taken as abandoned
            _delivering.add(worker)
        db.run(
            conn,
            "UPDATE job_shard SET status = 'running', worker = :worker, lease_expires_at = :expires, "
            "started_at = coalesce(started_at, :stamp) WHERE job_id = :job AND number = :number",
            {"worker": worker, "expires": now + LEASE_SECONDS, "stamp": db.utcnow(), "job": row[0], "number": row[1]},
        )
    return Shard(*row)


def renew(engine: "Engine", shard: Shard, worker: str) -> bool:
    with db.write(engine) as conn:
        return (
            db.run(
                conn,
                f"UPDATE job_shard SET lease_expires_at = {dialect.clock(conn)} + :lease "
                "WHERE job_id = :job AND number = :number AND worker = :worker AND status = 'running'",
                {"lease": LEASE_SECONDS, "job": shard.job_id, "number": shard.number, "worker": worker},
            ).rowcount
            == 1
        )


def finish(engine: "Engine", shard: Shard, worker: str, *, delivered: int, failed: int, done: bool) -> None:
    """Record a shard's outcome: ``done``, or given back (``pending``) when the worker
    stopped before the end. Only the worker that holds it may; a shard cancelled
    meanwhile stays cancelled."""
    with db.write(engine) as conn:
        db.run(
            conn,
            "UPDATE job_shard SET status = :status, delivered = delivered + :delivered, "
            "failed = failed + :failed, finished_at = :finished, lease_expires_at = NULL, "
            "worker = CASE WHEN :done THEN worker ELSE NULL END "
            "WHERE job_id = :job AND number = :number AND worker = :worker AND status = 'running'",
            {
                "status": "done" if done else "pending",
                "delivered": delivered,
                "failed": failed,
                "finished": db.utcnow() if done else None,
                "done": done,
                "job": shard.job_id,
                "number": shard.number,
                "worker": worker,
            },
        )


def cancel_open(conn: "Connection", job_id: int) -> None:
    """The job ended (cancelled, aborted): its open shards will never be delivered."""
    db.run(
        conn,
        "UPDATE job_shard SET status = 'cancelled', finished_at = :now, lease_expires_at = NULL "
        "WHERE job_id = :job AND status IN :open",
        {"now": db.utcnow(), "job": job_id, "open": list(OPEN)},
        "open",
    )


def delivering_elsewhere(conn: "Connection", job_id: int, me: str) -> int:
    """Shards of the job that other live workers are delivering now (their lease not
    expired, their process not known dead)."""
    rows = db.run(
        conn,
        "SELECT worker FROM job_shard WHERE job_id = :job AND status = 'running' "
        "AND lease_expires_at >= :now AND worker <> :me",
        {"job": job_id, "now": db_clock(conn), "me": me},
    ).all()
    return sum(1 for (worker,) in rows if worker and owner_alive(worker))


def open_count(conn: "Connection", job_id: int) -> int:
    return int(
        db.run(
            conn,
            "SELECT count(*) FROM job_shard WHERE job_id = :job AND status IN :open",
            {"job": job_id, "open": list(OPEN)},
            "open",
        ).scalar_one()
    )


def list_shards(conn: "Connection", job_id: int) -> list[dict[str, Any]]:
    return [
        {
            "number": r[0],
            "size": r[1],
            "status": r[2],
            "worker": r[3],
            "delivered": r[4],
            "failed": r[5],
            "started_at": r[6],
            "finished_at": r[7],
        }
        for r in db.run(
            conn,
            "SELECT number, size, status, worker, delivered, failed, started_at, finished_at "
            "FROM job_shard WHERE job_id = :job ORDER BY number",
            {"job": job_id},
        )
    ]


def _meter(interface: str) -> Any:
    """Counts and times an interface's deliveries, in a process that serves /metrics."""
    if counting.PROCESS is None:
        return None
    from campaignctl.metrics import DeliveryMeter

    return DeliveryMeter(interface)


def deliver(
    engine: "Engine", shard: Shard, worker: str, *, on_progress: Callable[[int, int], None] = lambda _ok, _ko: None
) -> bool:
    """Deliver a claimed shard's devices that still await it, interface by interface;
    returns False when it stopped early (campaign paused or cancelled, lease lost),
    after giving the shard back."""
    from campaignctl.delivery import JobRecorder, run_interface
    from campaignctl.interfaces.base import DeliveryPolicy

    with db.read(engine) as conn:
        settings = db.loads(
            db.run(conn, "SELECT settings FROM job WHERE id = :id", {"id": shard.job_id}).scalar_one(), dict
        )
        found = db.run(
            conn,
            "SELECT DISTINCT i.id, i.name, i.type, i.settings FROM job_item ji "
            "JOIN device d ON d.id = ji.device_id JOIN interface i ON i.id = d.interface_id "
            "WHERE ji.job_id = :job AND ji.status = 'syncing' AND ji.device_id BETWEEN :first AND :last "
            "AND i.type IN :types ORDER BY i.name",
            {"job": shard.job_id, "first": shard.first, "last": shard.last, "types": pushing_types()},
            "types",
        ).all()
    policy = DeliveryPolicy.from_dict(settings)
    heartbeat = Heartbeat(lambda: renew(engine, shard, worker), f"shard-{shard.job_id}-{shard.number}")
    heartbeat.start()
    state = {"stop": False, "delivered": 0, "failed": 0}

    def on_flush(ok: int, ko: int) -> None:
        state["delivered"] += ok
        state["failed"] += ko
        on_progress(ok, ko)
        # A pause or cancel stops the delivery within a flush interval, by sending
        # nothing new; what is in flight is recorded.
        if not state["stop"] and (heartbeat.lost or not _still_running(engine, shard.job_id)):
            state["stop"] = True

    recorder = JobRecorder(engine, shard.job_id, on_flush=on_flush)
    completed = False
    try:
        for interface in found:
            if state["stop"] or not _still_running(engine, shard.job_id):
                state["stop"] = True
                break
            run_interface(
                engine,
                shard.job_id,
                interface,
                policy,
                recorder,
                stop=lambda: bool(state["stop"]),
                first=shard.first,
                last=shard.last,
                meter=_meter(interface.name),
            )
        completed = not state["stop"]
    finally:
        # Interrupted (Ctrl-C, an error) or stopped: the shard goes back to pending, and
        # whoever claims it next delivers what is still syncing in it.
        heartbeat.stopped.set()
        try:
            finish(
                engine, shard, worker, delivered=int(state["delivered"]), failed=int(state["failed"]), done=completed
            )
        except Exception as exc:  # noqa: BLE001 - the lease expires and another worker takes the rest
            log.warning(
                "job %s, shard %s: its outcome could not be recorded (%s); it is delivered again once its "
                "lease expires",
                shard.job_id,
                shard.number,
                db.describe(exc, engine),
                extra={"job": shard.job_id, "shard": shard.number},
            )
        finally:
            with _delivering_lock:
                _delivering.discard(worker)
    return completed


def _still_running(engine: "Engine", job_id: int) -> bool:
    with db.read(engine) as conn:
        return (
            db.run(
                conn,
                "SELECT c.status FROM job j JOIN campaign c ON c.id = j.campaign_id WHERE j.id = :id",
                {"id": job_id},
            ).scalar()
            == "running"
        )


def work(
    engine: "Engine",
    worker: str,
    *,
    job_id: int | None = None,
    stop: threading.Event | None = None,
    on_progress: Callable[[int, int], None] = lambda _ok, _ko: None,
) -> int:
    """Claim and deliver shards until none is left to claim (of ``job_id`` only, when
    given); returns how many were delivered to the end."""
    done = 0
    while stop is None or not stop.is_set():
        shard = claim(engine, worker, job_id=job_id)
        if shard is None:
            return done
        if deliver(engine, shard, worker, on_progress=on_progress):
            done += 1
    return done
