"""The rollout engine: moves every due campaign forward, one batch at a time.

The state machine lives in the database (campaign status, job, batches, items), not in
a process: any process that runs the engine — ``launch``, ``serve``, ``run``, ``tick``,
``status --wait`` — advances the campaigns that are due, one process per job at a time
(the job lease), and a killed process is simply taken over.

A batch goes pending → releasing (its devices' entries written, pushed interfaces
delivered, at ``max_per_minute`` when set) → delivering (devices that poll still have to
fetch) → baking (``bake_time``) → promoted, or tripped when the share of failed, invalid
and timed-out devices reaches ``error_threshold`` (at any time), or paused when it can no
longer reach ``success_threshold``. A tripped batch is the last one touched.
"""

from __future__ import annotations

import json
import math
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from campaignctl import db, jobs, store
from campaignctl.errors import ConflictError, InputError, NotFoundError
from campaignctl.interfaces.base import DeliveryPolicy
from campaignctl.rollout import Rollout

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

FINAL_DEVICE_STATES = ("valid", "invalid", "failed", "timed_out", "cancelled")
#: A worker gives each job at most this long at a time of a rate-limited release, so
#: that one slow rollout does not hold back the other campaigns it serves.
SLICE_SECONDS = 10.0


class Stop(Exception):
    """The campaign was paused or cancelled, or the lease lost: stop where we are."""


@dataclass
class Context:
    engine: "Engine"
    job_id: int
    campaign_id: int
    campaign: str
    owner: str
    heartbeat: jobs.Heartbeat
    policy: DeliveryPolicy
    rollout: Rollout
    chunk_size: int
    plan: dict[str, Any]
    progress: Callable[[str, int, int], None]
    sleep: Callable[[float], None]
    deadline: float | None = None  # time.monotonic() after which a rate-limited release yields


def advance(engine: "Engine", job_id: int, owner: str, *, progress: jobs.Progress | None = None,
            sleep: Callable[[float], None] = time.sleep, slice_seconds: float | None = None) -> str:
    """Move a job (whose lease ``owner`` holds) as far as it can go now; releases the
    lease. Returns where it stopped: completed, waiting (bake time, devices to fetch or
    to report), paused, aborted or cancelled."""
    heartbeat = jobs.Heartbeat(engine, job_id, owner)
    heartbeat.start()
    try:
        with db.write(engine) as conn:
            job = jobs.job_row(conn, job_id)
            conn.exec_driver_sql("UPDATE job SET started_at = coalesce(started_at, ?) WHERE id = ?",
                                 (db.utcnow(), job_id))
        settings = json.loads(job.settings)
        ctx = Context(engine, job_id, job.campaign_id, job.campaign, owner, heartbeat,
                      DeliveryPolicy.from_dict(settings), Rollout.from_dict(settings.get("rollout")),
                      settings.get("chunk_size", jobs.WRITE_CHUNK), json.loads(job.plan),
                      progress or (lambda _p, _d, _t: None), sleep,
                      None if slice_seconds is None else time.monotonic() + slice_seconds)
        while True:
            try:
                return _advance(ctx)
            except Stop:
                if heartbeat.lost:
                    return "lost"
                continue  # read the new state and act on it
    finally:
        heartbeat.stopped.set()
        jobs.release(engine, job_id, owner)


def _campaign_status(conn: "Connection", ctx: Context) -> str:
    return conn.exec_driver_sql("SELECT status FROM campaign WHERE id = ?", (ctx.campaign_id,)).scalar_one()


def _stop_if_not_ours(conn: "Connection", ctx: Context) -> None:
    """Stop unless the campaign still runs and this process still holds the job's lease."""
    owner = conn.exec_driver_sql("SELECT lease_owner FROM job WHERE id = ?", (ctx.job_id,)).scalar()
    if _campaign_status(conn, ctx) != "running" or owner != ctx.owner or ctx.heartbeat.lost:
        raise Stop


def _check(ctx: Context) -> None:
    """Between two units of work: stop if the campaign is no longer running."""
    with db.read(ctx.engine) as conn:
        _stop_if_not_ours(conn, ctx)


def _set_job(conn: "Connection", ctx: Context, **fields: Any) -> None:
    sets = ", ".join(f"{k} = ?" for k in fields)
    conn.exec_driver_sql(f"UPDATE job SET {sets} WHERE id = ?", (*fields.values(), ctx.job_id))


_BATCHES = ("SELECT number, size, status, accepted, started_at, delivered_at, reason FROM job_batch "
            "WHERE job_id = ?")


def _batches(conn: "Connection", ctx: Context) -> list[Any]:
    return conn.exec_driver_sql(_BATCHES + " ORDER BY number", (ctx.job_id,)).all()


def _advance(ctx: Context) -> str:
    while True:
        with db.read(ctx.engine) as conn:
            status = _campaign_status(conn, ctx)
            batches = _batches(conn, ctx)
        if status == "cancelled":
            _cancel_items(ctx, "cancelled", "the campaign was cancelled")
            return "cancelled"
        if status == "aborted":
            _cancel_items(ctx, "failed", "the campaign was aborted")
            return "aborted"
        if status == "paused":
            with db.write(ctx.engine) as conn:
                _set_job(conn, ctx, status="paused")
            return "paused"
        current = next((b for b in batches if b.status not in ("promoted", "cancelled")), None)
        if current is None:
            _deliver(ctx)  # retried devices of promoted batches
            return _finish(ctx)
        number = current.number
        if current.status == "pending":
            _start_batch(ctx, number, current.size)
        elif current.status == "releasing":
            released = _release(ctx, number, current.size)
            if released == "tripped":
                return "paused" if ctx.rollout.on_error == "pause" else "aborted"
            if released == "yield":
                return "waiting"  # the worker's other campaigns get their turn
            with db.write(ctx.engine) as conn:
                conn.exec_driver_sql("UPDATE job_batch SET status = 'delivering' WHERE job_id = ? AND number = ?",
                                     (ctx.job_id, number))
        elif current.status == "delivering":
            _deliver(ctx)
            if _check_breaker(ctx, number):
                return "paused" if ctx.rollout.on_error == "pause" else "aborted"
            if _syncing(ctx, number):
                with db.write(ctx.engine) as conn:
                    _set_job(conn, ctx, status="waiting", step="deliver")
                return "waiting"  # devices that poll fetch their documents themselves
            with db.write(ctx.engine) as conn:
                conn.exec_driver_sql(
                    "UPDATE job_batch SET status = 'baking', delivered_at = ? WHERE job_id = ? AND number = ?",
                    (db.utcnow(), ctx.job_id, number))
        elif current.status == "baking":
            outcome = _judge(ctx, current)
            if outcome is not None:
                return outcome
        elif current.status == "tripped":
            return "paused"


def _start_batch(ctx: Context, number: int, size: int) -> None:
    with db.write(ctx.engine) as conn:
        step = conn.exec_driver_sql("SELECT coalesce(max(number), 0) + 1 FROM job_step WHERE job_id = ?",
                                    (ctx.job_id,)).scalar()
        stamp = db.utcnow()
        conn.exec_driver_sql("INSERT INTO job_step (job_id, number, kind, batch, devices, started_at) "
                             "VALUES (?, ?, 'batch', ?, ?, ?)", (ctx.job_id, step, number, size, stamp))
        conn.exec_driver_sql("UPDATE job_batch SET status = 'releasing', started_at = ? WHERE job_id = ? AND number = ?",
                             (stamp, ctx.job_id, number))
        _set_job(conn, ctx, status="in_progress", step="write")


def _release(ctx: Context, number: int, size: int) -> str:
    """Write and deliver the batch's devices, at the rate limit when there is one.
    Returns "released", "tripped" (the breaker), or "yield" (a worker's time slice is up)."""
    rate = ctx.rollout.max_per_minute
    with db.read(ctx.engine) as conn:
        written = size - jobs.counts(conn, ctx.job_id, number)["pending"]
    ctx.progress("write", written, size)
    if rate is None:
        while (count := _write(ctx, number, ctx.chunk_size)):
            written += count
            ctx.progress("write", written, size)
        _deliver(ctx)
        return "tripped" if _check_breaker(ctx, number) else "released"
    # A token bucket: rate/60 devices a second, at most one second's worth at once.
    per_second = rate / 60.0
    burst = max(1.0, per_second)
    tokens, last = 1.0, time.monotonic()
    while True:
        now = time.monotonic()
        tokens = min(burst, tokens + (now - last) * per_second)
        last = now
        if tokens < 1:
            ctx.sleep((1 - tokens) / per_second)
            continue
        count = _write(ctx, number, min(ctx.chunk_size, math.floor(tokens)))
        if not count:
            _deliver(ctx)
            return "tripped" if _check_breaker(ctx, number) else "released"
        tokens -= count
        written += count
        ctx.progress("write", written, size)
        _deliver(ctx)
        if _check_breaker(ctx, number):
            return "tripped"
        if ctx.deadline is not None and time.monotonic() > ctx.deadline:
            return "yield"


def _check_breaker(ctx: Context, number: int) -> bool:
    if ctx.rollout.error_threshold is None:
        return False  # judging 100k devices costs half a second: only when it matters
    return _breaker(ctx, _batch_row(ctx, number), _device_states(ctx, number))


def _syncing(ctx: Context, batch: int | None = None) -> int:
    """Devices written but not delivered (devices that poll and have not fetched), not
    counting those past their device timeout."""
    with db.read(ctx.engine) as conn:
        count = jobs.counts(conn, ctx.job_id, batch)["syncing"]
    if count and ctx.rollout.device_timeout is not None:
        count = _device_states(ctx, batch).get("syncing", 0)
    return count


def _batch_row(ctx: Context, number: int) -> Any:
    with db.read(ctx.engine) as conn:
        return conn.exec_driver_sql(_BATCHES + " AND number = ?", (ctx.job_id, number)).one()


def _write(ctx: Context, number: int, limit: int) -> int:
    """Write the desired entries of up to ``limit`` pending devices of a batch, in one
    transaction with their items' move to ``syncing``: a device is written exactly once,
    whenever the process dies. What the job overwrites is kept, to put back on cancel."""
    values = [(int(t), key, value, key in p["secret"]) for t, p in ctx.plan.items()
              for key, value in p["configurations"].items()]
    values_cte = ",".join("(?, ?, ?, ?)" for _ in values) or "(NULL, NULL, NULL, NULL)"
    flat = [x for v in values for x in v]
    items = ("FROM job_item ji JOIN device d ON d.id = ji.device_id JOIN v ON v.device_type_id = d.device_type_id "
             "{join} WHERE ji.job_id = ? AND ji.batch = ? AND ji.status = 'pending' AND ji.device_id BETWEEN ? AND ? "
             "AND v.key IS NOT NULL")
    cte = f"WITH v(device_type_id, key, value, secret) AS (VALUES {values_cte}) "
    with db.write(ctx.engine) as conn:
        _stop_if_not_ours(conn, ctx)
        lo, hi, count = conn.exec_driver_sql(
            "SELECT min(device_id), max(device_id), count(*) FROM (SELECT device_id FROM job_item "
            "WHERE job_id = ? AND batch = ? AND status = 'pending' ORDER BY device_id LIMIT ?)",
            (ctx.job_id, number, limit)).one()
        if not count:
            _set_job(conn, ctx, written_at=db.utcnow(), step="deliver")
            return 0
        revision = store.next_revision(conn)
        stamp = db.utcnow()
        where = (ctx.job_id, number, lo, hi)
        conn.exec_driver_sql(
            cte + "INSERT INTO job_item_before (job_id, device_id, key, desired, desired_at, desired_by, secret) "
            "SELECT ji.job_id, c.device_id, c.key, c.desired, c.desired_at, c.desired_by, c.secret "
            + items.format(join="JOIN device_config c ON c.device_id = ji.device_id AND c.key = v.key")
            + " AND c.desired IS NOT NULL", (*flat, *where))
        conn.exec_driver_sql(
            cte + "INSERT INTO device_config (device_id, key, desired, desired_at, desired_revision, desired_by, "
            "secret) SELECT ji.device_id, v.key, v.value, ?, ?, ?, v.secret " + items.format(join="")
            + " ON CONFLICT (device_id, key) DO UPDATE SET desired = excluded.desired, "
            "desired_at = excluded.desired_at, desired_revision = excluded.desired_revision, "
            "desired_by = excluded.desired_by, secret = max(device_config.secret, excluded.secret)",
            (*flat, stamp, revision, f"job:{ctx.job_id}", *where))
        # A device type the campaign writes nothing to (expected state only) gets revision
        # 0: any document it fetches holds "the job's write".
        valued = sorted({int(t) for t, p in ctx.plan.items() if p["configurations"]})
        if len(valued) == len(ctx.plan):  # the common case: every device gets entries
            item_revision, params = "?", (revision,)
        else:
            item_revision = (f"CASE WHEN (SELECT device_type_id FROM device WHERE id = job_item.device_id) "
                             f"IN ({','.join('?' * len(valued))}) THEN ? ELSE 0 END")
            params = (*valued, revision)
        conn.exec_driver_sql(
            f"UPDATE job_item SET status = 'syncing', updated_at = ?, revision = {item_revision} "
            "WHERE job_id = ? AND batch = ? AND status = 'pending' AND device_id BETWEEN ? AND ?",
            (stamp, *params, ctx.job_id, number, lo, hi))
    return count


def _deliver(ctx: Context) -> None:
    """Deliver every written, undelivered document of the job on interfaces that push."""
    from campaignctl import interfaces as kinds
    from campaignctl.delivery import JobRecorder, run_interface

    with db.read(ctx.engine) as conn:
        interfaces = [i for i in conn.exec_driver_sql(
            "SELECT DISTINCT i.id, i.name, i.type, i.settings FROM job_item ji JOIN device d ON d.id = ji.device_id "
            "JOIN interface i ON i.id = d.interface_id WHERE ji.job_id = ? AND ji.status = 'syncing' "
            "ORDER BY i.name", (ctx.job_id,)).all() if kinds.module(i.type).Driver.pushes]
        if not interfaces:
            return  # devices that poll fetch their documents themselves
        total = conn.exec_driver_sql("SELECT count(*) FROM job_item WHERE job_id = ? AND status != 'pending'",
                                     (ctx.job_id,)).scalar()
        done = total - conn.exec_driver_sql(
            "SELECT count(*) FROM job_item WHERE job_id = ? AND status = 'syncing'", (ctx.job_id,)).scalar()
    with db.write(ctx.engine) as conn:
        _set_job(conn, ctx, status="in_progress", step="deliver")
    state = {"done": done, "stop": False}
    ctx.progress("deliver", done, total)

    def on_flush(ok: int, ko: int) -> None:
        state["done"] += ok + ko
        ctx.progress("deliver", state["done"], total)
        if not state["stop"]:
            try:
                _check(ctx)  # a pause or cancel stops the delivery within a flush interval...
            except Stop:
                state["stop"] = True  # ...by sending nothing new; what is in flight is recorded

    recorder = JobRecorder(ctx.engine, ctx.job_id, on_flush=on_flush)
    for interface in interfaces:
        _check(ctx)
        run_interface(ctx.engine, ctx.job_id, interface, ctx.policy, recorder, stop=lambda: state["stop"])
        if state["stop"]:
            raise Stop


def _device_states(ctx: Context, batch: int | None = None) -> dict[str, int]:
    from campaignctl.supervision import device_statuses

    with db.read(ctx.engine) as conn:
        devices = device_statuses(conn, ctx.job_id, ctx.plan, ctx.rollout, batch=batch)
    out: dict[str, int] = {}
    for device in devices:
        out[device["status"]] = out.get(device["status"], 0) + 1
    return out


def _breaker(ctx: Context, batch: Any, states: dict[str, int]) -> bool:
    """Trip when the batch's share of failed, invalid and timed-out devices reaches the
    error threshold; returns True when it tripped (the campaign is paused or aborted)."""
    threshold = ctx.rollout.error_threshold
    if threshold is None or batch.accepted:
        return False
    errors = states.get("failed", 0) + states.get("invalid", 0) + states.get("timed_out", 0)
    if not errors or errors / batch.size < threshold:
        return False
    detail = ", ".join(f"{states[k]} {k}" for k in ("failed", "invalid", "timed_out") if states.get(k))
    reason = (f"batch {batch.number}: {detail} of {batch.size} devices ({errors / batch.size:.0%}) reached the "
              f"error threshold ({threshold:.0%})")
    _trip(ctx, batch.number, reason)
    return True


def _trip(ctx: Context, number: int, reason: str) -> None:
    status = "paused" if ctx.rollout.on_error == "pause" else "aborted"
    stamp = db.utcnow()
    with db.write(ctx.engine) as conn:
        conn.exec_driver_sql("UPDATE job_batch SET status = 'tripped', reason = ?, finished_at = ? "
                             "WHERE job_id = ? AND number = ?", (reason, stamp, ctx.job_id, number))
        conn.exec_driver_sql("UPDATE campaign SET status = ?, reason = ?, updated_at = ? WHERE id = ? "
                             "AND status = 'running'", (status, reason, stamp, ctx.campaign_id))
        _set_job(conn, ctx, status="paused" if status == "paused" else "failed")
    if status == "aborted":
        _cancel_items(ctx, "failed", reason)


def _judge(ctx: Context, batch: Any) -> str | None:
    """A baked batch: promoted, tripped, stuck (paused) or still to wait for; returns
    where ``_advance`` stops, or None to go on with the next batch."""
    threshold = 0.0 if batch.accepted else ctx.rollout.success_threshold
    # Without thresholds (a campaign without rollout), nothing to judge: no need to
    # look at every device.
    judged = threshold > 0 or (ctx.rollout.error_threshold is not None and not batch.accepted)
    states = _device_states(ctx, batch.number) if judged else {}
    if _breaker(ctx, batch, states):
        return "paused" if ctx.rollout.on_error == "pause" else "aborted"
    from datetime import datetime

    delivered = datetime.fromisoformat(batch.delivered_at.replace("Z", "+00:00")).timestamp()
    if time.time() < delivered + ctx.rollout.bake_time:
        with db.write(ctx.engine) as conn:
            _set_job(conn, ctx, status="waiting", step="bake")
        return "waiting"
    valid = states.get("valid", 0)
    stamp = db.utcnow()
    if valid / batch.size >= threshold - 1e-9:
        with db.write(ctx.engine) as conn:
            conn.exec_driver_sql(
                "UPDATE job_batch SET status = 'promoted', finished_at = ?, reason = ? WHERE job_id = ? AND number = ?",
                (stamp, (f"{valid} of {batch.size} valid" if judged else "delivered")
                 + (" (accepted by a user)" if batch.accepted else ""), ctx.job_id, batch.number))
        return None
    errors = sum(states.get(k, 0) for k in ("failed", "invalid", "timed_out", "cancelled"))
    if (batch.size - errors) / batch.size < threshold - 1e-9:
        reason = (f"batch {batch.number} can no longer reach the success threshold ({threshold:.0%}): "
                  f"{valid} valid, {errors} failed, invalid or timed out of {batch.size}")
        with db.write(ctx.engine) as conn:
            conn.exec_driver_sql("UPDATE job_batch SET status = 'tripped', reason = ?, finished_at = ? "
                                 "WHERE job_id = ? AND number = ?", (reason, stamp, ctx.job_id, batch.number))
            conn.exec_driver_sql("UPDATE campaign SET status = 'paused', reason = ?, updated_at = ? WHERE id = ? "
                                 "AND status = 'running'", (reason, stamp, ctx.campaign_id))
            _set_job(conn, ctx, status="paused")
        return "paused"
    with db.write(ctx.engine) as conn:
        _set_job(conn, ctx, status="waiting", step="bake")
    return "waiting"  # devices still on their way to the expected state


def _finish(ctx: Context) -> str:
    stamp = db.utcnow()
    with db.read(ctx.engine) as conn:
        seen = jobs.counts(conn, ctx.job_id)["syncing"]
    # Devices that poll and have not fetched yet keep the job open, until they time out.
    syncing = _syncing(ctx)
    with db.write(ctx.engine) as conn:
        counts = jobs.counts(conn, ctx.job_id)
        if syncing or counts["syncing"] > seen:  # or a retry came in meanwhile
            _set_job(conn, ctx, status="waiting", step="deliver")
            return "waiting"
        _set_job(conn, ctx, status="failed" if counts["failed"] else "success", step="done", finished_at=stamp)
        conn.exec_driver_sql("UPDATE campaign SET status = 'completed', completed_at = ?, updated_at = ? "
                             "WHERE id = ? AND status = 'running'", (stamp, stamp, ctx.campaign_id))
    return "completed"


def _cancel_items(ctx: Context, job_status: str, reason: str) -> None:
    """Devices not yet delivered are never touched: pending ones become cancelled, and
    written-but-undelivered ones get back the entries the job overwrote (under a new
    revision, so that versions still only grow) before they become cancelled."""
    by = f"job:{ctx.job_id}"
    stamp = db.utcnow()
    with db.write(ctx.engine) as conn:
        # Timed-out devices sent again by a retry had received the document already.
        conn.exec_driver_sql(
            "UPDATE job_item SET status = 'delivered' WHERE job_id = ? AND status = 'syncing' AND EXISTS "
            "(SELECT 1 FROM job_item_history h WHERE h.job_id = job_item.job_id AND h.device_id = job_item.device_id "
            "AND h.status = 'timed_out')", (ctx.job_id,))
        rows = conn.exec_driver_sql(
            "SELECT c.device_id, c.key, b.desired, b.desired_at, b.desired_by, coalesce(b.secret, 0) "
            "FROM job_item ji JOIN device_config c ON c.device_id = ji.device_id AND c.desired_by = ? "
            "AND c.desired_revision = ji.revision "
            "LEFT JOIN job_item_before b ON b.job_id = ji.job_id AND b.device_id = c.device_id AND b.key = c.key "
            "WHERE ji.job_id = ? AND ji.status = 'syncing'", (by, ctx.job_id)).all()
        if rows:
            revision = store.next_revision(conn)
            conn.exec_driver_sql(
                "UPDATE device_config SET desired = ?, desired_at = ?, desired_by = ?, secret = max(secret, ?), "
                "desired_revision = ? WHERE device_id = ? AND key = ?",
                [(r[2], r[3] if r[2] is not None else stamp, r[4] if r[2] is not None else f"{by} (withdrawn)",
                  r[5], revision, r[0], r[1]) for r in rows])
        conn.exec_driver_sql(
            "UPDATE job_item SET status = 'cancelled', error = ?, updated_at = ? "
            "WHERE job_id = ? AND status IN ('pending', 'syncing')", (reason, stamp, ctx.job_id))
        conn.exec_driver_sql("UPDATE job_batch SET status = 'cancelled', finished_at = ? "
                             "WHERE job_id = ? AND status NOT IN ('promoted', 'tripped')", (stamp, ctx.job_id))
        _set_job(conn, ctx, status=job_status, step="done", finished_at=stamp)
        conn.exec_driver_sql("UPDATE campaign SET completed_at = coalesce(completed_at, ?) WHERE id = ?",
                             (stamp, ctx.campaign_id))


# -- what users and workers call ---------------------------------------------------------


def tick(engine: "Engine", *, campaign: str | None = None, progress: jobs.Progress | None = None,
         info: Callable[[str], None] = lambda _m: None, slice_seconds: float | None = None) -> list[dict[str, Any]]:
    """One pass: start the scheduled campaigns that are due, then advance every job that
    no other process is running. Returns what happened, per campaign."""
    from campaignctl.campaigns import get_spec

    results: list[dict[str, Any]] = []
    stamp = db.utcnow()
    with db.read(engine) as conn:
        due = [r[0] for r in conn.exec_driver_sql(
            "SELECT name FROM campaign WHERE status = 'scheduled' AND start_at <= ?"
            + (" AND name = ?" if campaign else "") + " ORDER BY start_at", (stamp, *([campaign] if campaign else [])))]
    for name in due:
        with db.write(engine) as conn:
            row, spec = get_spec(conn, name)
            if row.status != "scheduled":
                continue  # another process started it
            settings = conn.exec_driver_sql("SELECT launch_settings FROM campaign WHERE id = ?", (row.id,)).scalar()
            try:
                job_id, owner = jobs.start(conn, row, spec, json.loads(settings or "{}"))
            except InputError as exc:
                stamp = db.utcnow()
                conn.exec_driver_sql("UPDATE campaign SET status = 'aborted', reason = ?, updated_at = ? WHERE id = ?",
                                     (f"could not start: {exc.message}", stamp, row.id))
                results.append({"campaign": name, "outcome": "aborted", "reason": exc.message})
                continue
        info(f"{name}: started (it was scheduled for {spec.start_at})")
        results.append({"campaign": name, "job": job_id,
                        "outcome": _advance_safely(engine, job_id, owner, progress, info, slice_seconds)})
    with db.read(engine) as conn:
        active = conn.exec_driver_sql(
            "SELECT j.id, c.name FROM job j JOIN campaign c ON c.id = j.campaign_id WHERE j.step != 'done' "
            "AND c.status IN ('running', 'cancelled', 'aborted')" + (" AND c.name = ?" if campaign else "")
            + " ORDER BY j.id", (campaign,) if campaign else ()).all()
    started = {r.get("job") for r in results}
    for job_id, name in active:
        if job_id in started:
            continue
        owner = jobs.try_acquire(engine, job_id)
        if owner is None:
            continue  # finished meanwhile, or another process runs it
        results.append({"campaign": name, "job": job_id,
                        "outcome": _advance_safely(engine, job_id, owner, progress, info, slice_seconds)})
    return results


def _advance_safely(engine: "Engine", job_id: int, owner: str, progress: jobs.Progress | None,
                    info: Callable[[str], None], slice_seconds: float | None) -> str:
    """One job's failure (a bug, a disk error) must not stop the engine for the others:
    it is reported, and the job is tried again at the next pass."""
    try:
        return advance(engine, job_id, owner, progress=progress, slice_seconds=slice_seconds)
    except Exception as exc:  # noqa: BLE001
        info(f"job {job_id}: {type(exc).__name__}: {exc}; trying again at the next pass")
        return "error"


def run_worker(engine: "Engine", *, interval: float = 2.0, stop: threading.Event | None = None,
               info: Callable[[str], None] = lambda _m: None) -> None:
    """``campaignctl run``: tick every ``interval`` seconds until ``stop`` (or Ctrl-C)."""
    stop = stop or threading.Event()
    last: dict[str, str] = {}
    try:
        while not stop.is_set():
            try:
                results = tick(engine, info=info, slice_seconds=SLICE_SECONDS)
            except Exception as exc:  # noqa: BLE001 - a locked or busy database: next pass
                info(f"rollout engine: {type(exc).__name__}: {exc}; trying again in {interval:g}s")
                results = []
            for result in results:
                if last.get(result["campaign"]) != result["outcome"]:
                    last[result["campaign"]] = result["outcome"]
                    info(f"{result['campaign']}: {result['outcome']}")
            stop.wait(interval)
    except KeyboardInterrupt:
        pass


def _campaign(conn: "Connection", name: str) -> Any:
    row = conn.exec_driver_sql("SELECT id, name, status, reason FROM campaign WHERE name = ?", (name,)).one_or_none()
    if row is None:
        raise NotFoundError(f"no campaign named {name!r}")
    return row


def pause(engine: "Engine", name: str) -> None:
    stamp = db.utcnow()
    with db.write(engine) as conn:
        row = _campaign(conn, name)
        if row.status == "paused":
            return
        if row.status != "running":
            raise ConflictError(f"campaign {name!r} is {row.status}: only a running campaign can be paused")
        conn.exec_driver_sql("UPDATE campaign SET status = 'paused', reason = ?, updated_at = ? WHERE id = ?",
                             (f"paused by a user at {stamp}", stamp, row.id))
        conn.exec_driver_sql("UPDATE job SET status = 'paused' WHERE campaign_id = ? AND step != 'done'", (row.id,))


def resume(engine: "Engine", name: str) -> int:
    """Resume a paused campaign where it stopped; a batch that tripped the breaker is
    accepted as it is (no more thresholds for it). Returns the job id."""
    stamp = db.utcnow()
    with db.write(engine) as conn:
        row = _campaign(conn, name)
        if row.status != "paused":
            raise ConflictError(f"campaign {name!r} is {row.status}: only a paused campaign can be resumed")
        job_id = jobs.latest_job(conn, row.id)
        conn.exec_driver_sql("UPDATE campaign SET status = 'running', reason = NULL, updated_at = ? WHERE id = ?",
                             (stamp, row.id))
        tripped = conn.exec_driver_sql(
            "SELECT number, delivered_at FROM job_batch WHERE job_id = ? AND status = 'tripped'", (job_id,)).first()
        if tripped is not None:
            pending = conn.exec_driver_sql("SELECT count(*) FROM job_item WHERE job_id = ? AND batch = ? "
                                           "AND status = 'pending'", (job_id, tripped[0])).scalar()
            # Back to the phase it tripped in: releasing, delivering, or baking.
            phase = "releasing" if pending else "baking" if tripped[1] else "delivering"
            conn.exec_driver_sql(
                "UPDATE job_batch SET status = ?, accepted = 1, finished_at = NULL, "
                "reason = 'resumed by a user after: ' || coalesce(reason, '') WHERE job_id = ? AND number = ?",
                (phase, job_id, tripped[0]))
        conn.exec_driver_sql("UPDATE job SET status = 'in_progress' WHERE id = ?", (job_id,))
    return job_id


def cancel(engine: "Engine", name: str, *, wait: float = 10.0) -> dict[str, Any]:
    """Cancel a scheduled, running or paused campaign: what was delivered stays, the
    rest is never touched. Returns the job's summary (None when it never started)."""
    stamp = db.utcnow()
    with db.write(engine) as conn:
        row = _campaign(conn, name)
        if row.status not in ("scheduled", "running", "paused"):
            raise ConflictError(f"campaign {name!r} is {row.status}: only a scheduled, running or paused campaign "
                                "can be cancelled" + (" (delete a draft instead)" if row.status == "draft" else ""))
        conn.exec_driver_sql("UPDATE campaign SET status = 'cancelled', reason = ?, updated_at = ?, "
                             "completed_at = ? WHERE id = ?", (f"cancelled by a user at {stamp}", stamp, stamp, row.id))
        job_id = jobs.latest_job(conn, row.id)
    if job_id is None:
        return {"job": None}
    deadline = time.monotonic() + wait
    while True:
        owner = jobs.try_acquire(engine, job_id)
        if owner is not None:
            advance(engine, job_id, owner)
            break
        with db.read(engine) as conn:
            if jobs.job_row(conn, job_id).step == "done":
                break  # the process that runs it did it
        if time.monotonic() > deadline:
            break  # that process stops at its next step
        time.sleep(0.1)
    with db.read(engine) as conn:
        return {"job": jobs.summary(conn, job_id)}


def retry(engine: "Engine", name: str, *, devices: list[str] | None = None,
          timed_out: bool = False) -> tuple[int, list[str]]:
    """Re-deliver to failed (and, with ``timed_out``, timed-out) devices only, as a new
    step of the job; their previous outcome is kept in the job's history. Returns (job
    id, the devices retried)."""
    from campaignctl.supervision import device_statuses

    stamp = db.utcnow()
    with db.write(engine) as conn:
        row = _campaign(conn, name)
        if row.status not in ("running", "completed"):
            hint = " (resume it first: a paused campaign delivers nothing)" if row.status == "paused" else ""
            raise ConflictError(f"campaign {name!r} is {row.status}: only a running or completed campaign can be "
                                f"retried{hint}")
        job_id = jobs.latest_job(conn, row.id)
        job = jobs.job_row(conn, job_id)
        settings = json.loads(job.settings)
        states = device_statuses(conn, job_id, json.loads(job.plan), Rollout.from_dict(settings.get("rollout")))
        wanted = {"failed", "timed_out"} if timed_out else {"failed"}
        eligible = {d["device"]: d for d in states if d["status"] in wanted}
        if devices:
            unknown = [d for d in devices if d not in eligible]
            if unknown:
                kinds = " or timed out" if timed_out else ""
                raise InputError(f"not failed{kinds} in campaign {name!r}: {', '.join(unknown)}", field="--device")
            targets = [eligible[d] for d in devices]
        else:
            targets = list(eligible.values())
        if not targets:
            raise ConflictError(f"campaign {name!r} has no failed{' or timed-out' if timed_out else ''} device to retry")
        ids = dict(conn.exec_driver_sql(
            f"SELECT name, id FROM device WHERE name IN ({','.join('?' * len(targets))})",
            tuple(t["device"] for t in targets)).all())
        step = conn.exec_driver_sql("SELECT coalesce(max(number), 0) + 1 FROM job_step WHERE job_id = ?",
                                    (job_id,)).scalar()
        conn.exec_driver_sql("INSERT INTO job_step (job_id, number, kind, devices, started_at) "
                             "VALUES (?, ?, 'retry', ?, ?)", (job_id, step, len(targets), stamp))
        conn.exec_driver_sql(
            "INSERT INTO job_item_history (job_id, device_id, step, status, attempts, error, at) "
            "SELECT job_id, device_id, ?, ?, attempts, coalesce(error, ?), ? FROM job_item "
            "WHERE job_id = ? AND device_id = ?",
            [(step, t["status"], t["reason"], stamp, job_id, ids[t["device"]]) for t in targets])
        conn.exec_driver_sql(
            "UPDATE job_item SET status = 'syncing', error = NULL, delivered_at = NULL, updated_at = ? "
            "WHERE job_id = ? AND device_id = ?", [(stamp, job_id, ids[t["device"]]) for t in targets])
        conn.exec_driver_sql("UPDATE job SET status = 'in_progress', step = 'deliver', finished_at = NULL "
                             "WHERE id = ?", (job_id,))
        if row.status == "completed":
            conn.exec_driver_sql("UPDATE campaign SET status = 'running', completed_at = NULL, updated_at = ? "
                                 "WHERE id = ?", (stamp, row.id))
    return job_id, [t["device"] for t in targets]


# -- waiting for the outcome (CI gating) ----------------------------------------------------

EXIT_OK, EXIT_BELOW, EXIT_TIMEOUT, EXIT_STOPPED = 0, 3, 4, 5


def outcome(data: dict[str, Any], min_valid: float) -> int | None:
    """The exit code a finished wait gets for this supervision, or None to go on waiting."""
    status = data["status"]
    if status in ("paused", "aborted"):
        return EXIT_STOPPED
    if status == "cancelled":
        return EXIT_BELOW  # ended by a user: whatever the devices do now
    if status != "completed":
        return None
    summary = data["summary"]
    if any(summary[s] for s in summary if s not in ("total", *FINAL_DEVICE_STATES)):
        return None  # some devices are still on their way
    valid = summary["valid"] / summary["total"] if summary["total"] else 1.0
    return EXIT_OK if valid >= min_valid - 1e-9 else EXIT_BELOW


def wait(engine: "Engine", name: str, *, timeout: float | None = None, min_valid: float = 1.0,
         interval: float = 1.0, on_update: Callable[[dict[str, Any]], None] = lambda _d: None,
         progress: jobs.Progress | None = None) -> tuple[int, dict[str, Any]]:
    """Block until the campaign ends (see ``outcome``) or ``timeout`` seconds pass,
    advancing it meanwhile (so that a CI job needs no separate worker); returns the exit
    code and the last supervision."""
    from campaignctl.supervision import campaign_status

    deadline = None if timeout is None else time.monotonic() + timeout
    with db.read(engine) as conn:
        if _campaign(conn, name).status == "draft":
            raise ConflictError(f"campaign {name!r} is not launched: nothing to wait for")
    while True:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        tick(engine, campaign=name, progress=progress,
             slice_seconds=SLICE_SECONDS if left is None else min(SLICE_SECONDS, left))
        data = campaign_status(engine, name)
        on_update(data)
        code = outcome(data, min_valid)
        if code is not None:
            return code, data
        if deadline is not None and time.monotonic() >= deadline:
            return EXIT_TIMEOUT, data
        pause_for = interval if deadline is None else max(0.0, min(interval, deadline - time.monotonic()))
        time.sleep(pause_for)
