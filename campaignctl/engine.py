"""The rollout state machine: moves a job forward, one batch at a time.

The state lives in the database (campaign status, job, batches, items, shards), not in
a process: any process that runs the engine — ``launch``, ``serve``, ``run``, ``tick``,
``status --wait`` (see ``campaignctl.worker``) — advances the jobs that are due, one
process per job at a time (the job lease), and a killed process is simply taken over.
The delivery of each written batch is cut into shards that every worker helps with
(``campaignctl.shards``).

A batch goes pending → releasing (its devices' entries written, pushed interfaces
delivered, at ``max_per_minute`` when set) → delivering (devices that poll still have to
fetch) → baking (``bake_time``) → promoted, or tripped when the share of failed, invalid
and timed-out devices reaches ``error_threshold`` (at any time), or paused when it can no
longer reach ``success_threshold``. A tripped batch is the last one touched.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from campaignctl import audit, db, jobs, shards, store, windows
from campaignctl.interfaces.base import DeliveryPolicy
from campaignctl.rollout import Rollout

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

#: How often the driver of a job looks at the shards other workers deliver.
SHARD_POLL_SECONDS = 0.1


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
    shard_size: int
    plan: dict[str, Any]
    progress: Callable[[str, int, int], None]
    sleep: Callable[[float], None]
    deadline: float | None = None  # time.monotonic() after which a rate-limited release yields
    # Lower campaigns' jobs whose devices this job's writes take, and this one's priority.
    supersedes: dict[str, Any] = field(default_factory=dict)
    priority: int = 0


def advance(
    engine: "Engine",
    job_id: int,
    owner: str,
    *,
    progress: jobs.Progress | None = None,
    sleep: Callable[[float], None] = time.sleep,
    slice_seconds: float | None = None,
) -> str:
    """Move a job (whose lease ``owner`` holds) as far as it can go now; releases the
    lease. Returns where it stopped: completed, waiting (bake time, devices to fetch or
    to report), paused, aborted or cancelled."""
    heartbeat = jobs.Heartbeat.for_job(engine, job_id, owner)
    heartbeat.start()
    try:
        with db.write(engine) as conn:
            job = jobs.job_row(conn, job_id)
            db.run(
                conn,
                "UPDATE job SET started_at = coalesce(started_at, :now) WHERE id = :id",
                {"now": db.utcnow(), "id": job_id},
            )
        settings = db.loads(job.settings, dict)
        ctx = Context(
            engine,
            job_id,
            job.campaign_id,
            job.campaign,
            owner,
            heartbeat,
            DeliveryPolicy.from_dict(settings),
            Rollout.from_dict(settings.get("rollout")),
            settings.get("chunk_size", jobs.WRITE_CHUNK),
            settings.get("shard_size", shards.DEFAULT_SIZE),
            db.loads(job.plan, dict),
            progress or (lambda _p, _d, _t: None),
            sleep,
            None if slice_seconds is None else time.monotonic() + slice_seconds,
            supersedes=settings.get("supersedes") or {},
            priority=settings.get("priority", 0),
        )
        while True:
            try:
                return _advance(ctx)
            except Stop:
                if heartbeat.lost or not _still_ours(ctx):
                    return "lost"
                continue  # read the new state and act on it
    finally:
        heartbeat.stopped.set()
        jobs.release(engine, job_id, owner)


def _still_ours(ctx: Context) -> bool:
    with db.read(ctx.engine) as conn:
        return bool(
            db.run(conn, "SELECT lease_owner FROM job WHERE id = :id", {"id": ctx.job_id}).scalar() == ctx.owner
        )


def _campaign_status(conn: "Connection", ctx: Context) -> str:
    return str(db.run(conn, "SELECT status FROM campaign WHERE id = :id", {"id": ctx.campaign_id}).scalar_one())


def stop_if_not_ours(conn: "Connection", ctx: Context) -> None:
    """Stop unless the campaign still runs and this process still holds the job's lease.
    In a write transaction the job row stays locked until it commits: the lease cannot
    change hands between this check and the writes that follow (a fence)."""
    owner = (
        jobs.lock_job(conn, ctx.job_id).lease_owner
        if conn.get_execution_options().get("write")
        else db.run(conn, "SELECT lease_owner FROM job WHERE id = :id", {"id": ctx.job_id}).scalar()
    )
    if _campaign_status(conn, ctx) != "running" or owner != ctx.owner or ctx.heartbeat.lost:
        raise Stop


def _check(ctx: Context) -> None:
    """Between two units of work: stop if the campaign is no longer running."""
    with db.read(ctx.engine) as conn:
        stop_if_not_ours(conn, ctx)


def _set_job(conn: "Connection", ctx: Context, **fields: Any) -> None:
    sets = ", ".join(f"{k} = :{k}" for k in fields)
    db.run(conn, f"UPDATE job SET {sets} WHERE id = :job_id", {**fields, "job_id": ctx.job_id})


_BATCHES = "SELECT number, size, status, accepted, started_at, delivered_at, reason FROM job_batch WHERE job_id = :job"


def _batches(conn: "Connection", ctx: Context) -> list[Any]:
    return db.run(conn, _BATCHES + " ORDER BY number", {"job": ctx.job_id}).all()


def _advance(ctx: Context) -> str:
    while True:
        with db.read(ctx.engine) as conn:
            status = _campaign_status(conn, ctx)
            batches = _batches(conn, ctx)
        if status == "cancelled":
            _cancel_items(ctx, "cancelled", "the campaign was cancelled")
            return "cancelled"
        if status == "aborted":
            _cancel_items(ctx, "failed", "the campaign was aborted", revert=ctx.rollout.on_error == "revert")
            return "aborted"
        if status == "paused":
            with db.write(ctx.engine) as conn:
                _set_job(conn, ctx, status="paused")
            return "paused"
        current = next((b for b in batches if b.status not in ("promoted", "cancelled")), None)
        if current is None:
            from campaignctl import dynamic

            if dynamic.admit(ctx):
                continue  # devices that came to match go out as a batch of their own
            _deliver(ctx)  # retried devices of promoted batches
            return _finish(ctx)
        number = current.number
        if current.status in ("pending", "releasing"):
            from campaignctl import dynamic

            if dynamic.drop_unmatched(ctx, number):
                continue  # the batch's size changed: read it again
        if current.status == "pending":
            _start_batch(ctx, number, current.size)
        elif current.status == "releasing":
            released = _release(ctx, number, current.size)
            if released == "tripped":
                return "paused" if ctx.rollout.on_error == "pause" else "aborted"
            if released == "yield":
                return "waiting"  # the worker's other campaigns get their turn
            with db.write(ctx.engine) as conn:
                db.run(
                    conn,
                    "UPDATE job_batch SET status = 'delivering' WHERE job_id = :job AND number = :number",
                    {"job": ctx.job_id, "number": number},
                )
        elif current.status == "delivering":
            _deliver(ctx)
            if _check_breaker(ctx, number):
                return "paused" if ctx.rollout.on_error == "pause" else "aborted"
            if _syncing(ctx, number):
                with db.write(ctx.engine) as conn:
                    _set_job(conn, ctx, status="waiting", step="deliver")
                return "waiting"  # devices that poll fetch their documents themselves
            with db.write(ctx.engine) as conn:
                db.run(
                    conn,
                    "UPDATE job_batch SET status = 'baking', delivered_at = :now "
                    "WHERE job_id = :job AND number = :number",
                    {"now": db.utcnow(), "job": ctx.job_id, "number": number},
                )
        elif current.status == "baking":
            outcome = _judge(ctx, current)
            if outcome is not None:
                return outcome
        elif current.status == "tripped":
            return "paused"


def _start_batch(ctx: Context, number: int, size: int) -> None:
    with db.write(ctx.engine) as conn:
        stop_if_not_ours(conn, ctx)
        step = db.run(
            conn, "SELECT coalesce(max(number), 0) + 1 FROM job_step WHERE job_id = :job", {"job": ctx.job_id}
        ).scalar()
        stamp = db.utcnow()
        db.run(
            conn,
            "INSERT INTO job_step (job_id, number, kind, batch, devices, started_at) "
            "VALUES (:job, :step, 'batch', :batch, :size, :now)",
            {"job": ctx.job_id, "step": step, "batch": number, "size": size, "now": stamp},
        )
        db.run(
            conn,
            "UPDATE job_batch SET status = 'releasing', started_at = :now WHERE job_id = :job AND number = :number",
            {"now": stamp, "job": ctx.job_id, "number": number},
        )
        _record(conn, ctx, "batch.started", batch=number, devices=size)
        _set_job(conn, ctx, status="in_progress", step="write")


def _release(ctx: Context, number: int, size: int) -> str:
    """Write and deliver the batch's devices, at the rate limit when there is one, those
    in their maintenance window only when the rollout has windows. Returns "released",
    "tripped" (the breaker), or "yield" (a worker's time slice is up, or devices wait for
    their window: a later pass goes on)."""
    gate = windows.Gate.for_rollout(ctx.rollout)
    if gate is not None and windows.still_closed(str(ctx.engine.url), ctx.job_id, number, gate.schedule):
        return "yield"  # an earlier pass found every waiting device's window closed until later
    rate = ctx.rollout.max_per_minute
    with db.read(ctx.engine) as conn:
        written = size - jobs.counts(conn, ctx.job_id, number)["pending"]
    ctx.progress("write", written, size)
    if rate is None:
        while count := _write(ctx, number, ctx.chunk_size, gate):
            written += count
            ctx.progress("write", written, size)
        _deliver(ctx)
        return "tripped" if _check_breaker(ctx, number) else _released(ctx, number, gate)
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
        count = _write(ctx, number, min(ctx.chunk_size, math.floor(tokens)), gate)
        if not count:
            _deliver(ctx)
            return "tripped" if _check_breaker(ctx, number) else _released(ctx, number, gate)
        tokens -= count
        written += count
        ctx.progress("write", written, size)
        _deliver(ctx)
        if _check_breaker(ctx, number):
            return "tripped"
        if ctx.deadline is not None and time.monotonic() > ctx.deadline:
            return "yield"


def _released(ctx: Context, number: int, gate: windows.Gate | None) -> str:
    """Whether every device of the batch is written ("released"), or some wait for their
    window ("yield"): the batch is not promoted, and bake time and timeouts have not begun.
    When none of them is in a window, when the first window opens is remembered: the
    passes before it return at once (``windows.still_closed``)."""
    if gate is None:
        return "released"
    with db.write(ctx.engine) as conn:
        if not _pending_left(conn, ctx, number):
            return "released"
        _set_job(conn, ctx, status="waiting", step="write")
        opens = gate.next_opening(conn, ctx.job_id, number)
        windows.remember_closed(str(ctx.engine.url), ctx.job_id, number, gate.schedule, opens)
    return "yield"


def _pending_left(conn: "Connection", ctx: Context, number: int) -> bool:
    return (
        db.run(
            conn,
            "SELECT 1 FROM job_item WHERE job_id = :job AND batch = :batch AND status = 'pending' LIMIT 1",
            {"job": ctx.job_id, "batch": number},
        ).first()
        is not None
    )


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
        return db.run(conn, _BATCHES + " AND number = :number", {"job": ctx.job_id, "number": number}).one()


def _write(ctx: Context, number: int, limit: int, gate: windows.Gate | None = None) -> int:
    """Write the desired entries of up to ``limit`` pending devices of a batch (those the
    ``gate`` of its windows lets through), in one transaction with their items' move to
    ``syncing``: a device is written exactly once, whenever the process dies. What the
    job overwrites is kept, to put back on cancel."""
    from campaignctl.supervision import plan_values

    values, params = plan_values("v", ctx.plan, "configurations")
    # A rollback's keys (value NULL in the plan) take each device's value from before
    # the job it rolls back (NULL again, the key withdrawn, when it had none).
    restore_job = next((p.get("restore_job") for p in ctx.plan.values() if p.get("restore_job")), None)
    value = (
        "v.value"
        if restore_job is None
        else (
            "coalesce(v.value, (SELECT b.desired FROM job_item_before b WHERE b.job_id = :restore_job "
            "AND b.device_id = ji.device_id AND b.key = v.key))"
        )
    )
    cte = f"WITH {values} "
    with db.write(ctx.engine) as conn:
        stop_if_not_ours(conn, ctx)
        chunk = _chunk(conn, ctx, number, limit, gate)
        if chunk is None:
            if gate is None or not _pending_left(conn, ctx, number):
                _set_job(conn, ctx, written_at=db.utcnow(), step="deliver")  # the write step finished
            return 0
        lo, hi, ids, count = chunk
        # With windows, the chunk is the very devices the gate chose: every statement below
        # names them, rather than judging their tags again (a device re-tagged meanwhile
        # must not be written by one statement and left pending by the next).
        chosen = "" if ids is None else " AND ji.device_id IN :ids"
        listed: tuple[str, ...] = () if ids is None else ("ids",)
        items = (
            "FROM job_item ji JOIN device d ON d.id = ji.device_id JOIN v ON v.type_id = d.device_type_id "
            "{join} WHERE ji.job_id = :job AND ji.batch = :batch AND ji.status = 'pending' "
            "AND ji.device_id BETWEEN :lo AND :hi" + chosen
        )
        revision = store.next_revision(conn)
        db.run(
            conn,
            "UPDATE job SET revisions = coalesce(revisions, '') || :revision WHERE id = :job",
            {"revision": f"{revision},", "job": ctx.job_id},
        )
        stamp = db.utcnow()
        where = {**params, "job": ctx.job_id, "batch": number, "lo": lo, "hi": hi}
        if ids is not None:
            where["ids"] = ids
        db.run(
            conn,
            cte + "INSERT INTO job_item_before (job_id, device_id, key, desired, desired_at, desired_by, secret) "
            "SELECT ji.job_id, c.device_id, c.key, c.desired, c.desired_at, c.desired_by, c.secret "
            + items.format(join="JOIN device_config c ON c.device_id = ji.device_id AND c.key = v.key")
            + " AND c.desired IS NOT NULL",
            where,
            *listed,
        )
        db.run(
            conn,
            cte + "INSERT INTO device_config (device_id, key, desired, desired_at, desired_revision, desired_by, "
            f"secret) SELECT ji.device_id, v.key, {value}, :now, :revision, :by, v.secret "
            + items.format(join="")
            + " ON CONFLICT (device_id, key) DO UPDATE SET desired = excluded.desired, "
            "desired_at = excluded.desired_at, desired_revision = excluded.desired_revision, "
            # Once secret, always secret: the device may still report the old secret value.
            "desired_by = excluded.desired_by, secret = (device_config.secret OR excluded.secret)",
            {
                **where,
                "now": stamp,
                "revision": revision,
                "by": f"job:{ctx.job_id}",
                **({} if restore_job is None else {"restore_job": restore_job}),
            },
            *listed,
        )
        _supersede(conn, ctx, number, lo, hi, stamp, ids)
        if gate is not None:
            gate.passed(hi)
        # A device type the campaign writes nothing to (expected state only) gets revision
        # 0: any document it fetches holds "the job's write".
        valued = sorted({int(t) for t, p in ctx.plan.items() if p["configurations"]})
        expanding: tuple[str, ...] = listed
        if len(valued) == len(ctx.plan):  # the common case: every device gets entries
            item_revision = ":revision"
        else:
            item_revision = (
                "CASE WHEN (SELECT device_type_id FROM device WHERE id = job_item.device_id) "
                "IN :valued THEN :revision ELSE 0 END"
            )
            expanding += ("valued",)
        db.run(
            conn,
            f"UPDATE job_item SET status = 'syncing', updated_at = :now, revision = {item_revision} "
            "WHERE job_id = :job AND batch = :batch AND status = 'pending' AND device_id BETWEEN :lo AND :hi"
            + ("" if ids is None else " AND device_id IN :ids"),
            {
                "now": stamp,
                "revision": revision,
                "valued": valued or [0],
                "job": ctx.job_id,
                "batch": number,
                "lo": lo,
                "hi": hi,
                **({} if ids is None else {"ids": ids}),
            },
            *expanding,
        )
    return int(count)


#: The most devices a chunk through the windows' gate names (one SQL parameter each:
#: well under SQLite's and PostgreSQL's limits).
GATED_CHUNK = 5000


def _chunk(
    conn: "Connection", ctx: Context, number: int, limit: int, gate: windows.Gate | None
) -> tuple[int, int, list[int] | None, int] | None:
    """The next chunk of the batch's pending devices to write: (first id, last id, the ids
    when a gate chose them, count); None when there is none (none in its window)."""
    if gate is None:
        # Without windows every pending device of the range goes: bounds are enough (and
        # the fastest at 100k devices).
        lo, hi, count = db.run(
            conn,
            "SELECT min(device_id), max(device_id), count(*) FROM (SELECT device_id FROM job_item "
            "WHERE job_id = :job AND batch = :batch AND status = 'pending' ORDER BY device_id LIMIT :limit) AS chunk",
            {"job": ctx.job_id, "batch": number, "limit": limit},
        ).one()
        return (lo, hi, None, count) if count else None
    opened = gate.clause(conn, "d")
    if opened is None:
        return None  # no device of the batch is in its window now
    gated, gate_params, expanding = opened
    gate_params.update(job=ctx.job_id, batch=number, gate_after=gate.after, limit=min(limit, GATED_CHUNK))
    ids = list(
        db.run(
            conn,
            "SELECT ji.device_id FROM job_item ji JOIN device d ON d.id = ji.device_id "
            "WHERE ji.job_id = :job AND ji.batch = :batch AND ji.status = 'pending' AND ji.device_id > :gate_after"
            + gated
            + " ORDER BY ji.device_id LIMIT :limit",
            gate_params,
            *expanding,
        ).scalars()
    )
    return (ids[0], ids[-1], ids, len(ids)) if ids else None


def _supersede(
    conn: "Connection", ctx: Context, number: int, lo: int, hi: int, stamp: str, ids: list[int] | None = None
) -> None:
    """The devices of this chunk (``ids`` when the windows' gate chose them) that
    campaigns of lower priority also set are theirs no more: in the transaction that
    writes them here."""
    if not ctx.supersedes:
        return
    for job_id, other in ctx.supersedes.items():
        db.run(
            conn,
            "UPDATE job_item SET status = 'superseded', error = :reason, updated_at = :now WHERE job_id = :other "
            "AND status IN ('pending', 'syncing', 'delivered', 'failed') AND device_id IN (SELECT ji.device_id "
            "FROM job_item ji JOIN device d ON d.id = ji.device_id WHERE ji.job_id = :job AND ji.batch = :batch "
            "AND ji.status = 'pending' AND ji.device_id BETWEEN :lo AND :hi AND d.device_type_id IN :types"
            + ("" if ids is None else " AND ji.device_id IN :ids")
            + ")",
            {
                "reason": f"superseded by campaign {ctx.campaign} (priority {ctx.priority}), which also sets "
                f"{', '.join(other['keys'])}",
                "now": stamp,
                "other": int(job_id),
                "job": ctx.job_id,
                "batch": number,
                "lo": lo,
                "hi": hi,
                "types": other["types"],
                **({} if ids is None else {"ids": ids}),
            },
            "types",
            *(() if ids is None else ("ids",)),
        )


def _deliver(ctx: Context) -> None:
    """Deliver every written, undelivered document of the job on interfaces that push:
    cut them into shards, then deliver shards until none is left, alongside any other
    worker that claims them; returns when the last shard is done."""
    with db.write(ctx.engine) as conn:
        stop_if_not_ours(conn, ctx)
        shards.plan(conn, ctx.job_id, ctx.shard_size)
        if not shards.open_count(conn, ctx.job_id):
            return  # devices that poll fetch their documents themselves
        total = db.run(
            conn, "SELECT count(*) FROM job_item WHERE job_id = :job AND status != 'pending'", {"job": ctx.job_id}
        ).scalar()
        _set_job(conn, ctx, status="in_progress", step="deliver")
    state = {"done": total - _count(ctx, "syncing")}
    ctx.progress("deliver", state["done"], total)

    def on_progress(ok: int, ko: int) -> None:
        state["done"] += ok + ko
        ctx.progress("deliver", state["done"], total)

    last_look = 0.0
    while True:
        _check(ctx)
        shard = shards.claim(ctx.engine, ctx.owner, job_id=ctx.job_id)
        if shard is not None:
            if not shards.deliver(ctx.engine, shard, ctx.owner, on_progress=on_progress):
                raise Stop  # the campaign was paused or cancelled, or the lease lost
            continue
        with db.read(ctx.engine) as conn:
            if not shards.open_count(conn, ctx.job_id):
                return
        # Other workers deliver the remaining shards: follow their progress.
        if time.monotonic() - last_look > 1.0:
            last_look = time.monotonic()
            state["done"] = total - _count(ctx, "syncing")
            ctx.progress("deliver", state["done"], total)
        ctx.sleep(SHARD_POLL_SECONDS)


def _count(ctx: Context, status: str) -> int:
    with db.read(ctx.engine) as conn:
        return int(
            db.run(
                conn,
                "SELECT count(*) FROM job_item WHERE job_id = :job AND status = :status",
                {"job": ctx.job_id, "status": status},
            ).scalar_one()
        )


def _device_states(ctx: Context, batch: int | None = None) -> dict[str, int]:
    from campaignctl.supervision import status_counts, totals

    with db.read(ctx.engine) as conn:
        return totals(status_counts(conn, ctx.job_id, ctx.plan, ctx.rollout, batch=batch))


def _breaker(ctx: Context, batch: Any, states: dict[str, int]) -> bool:
    """Trip when the batch's share of failed, invalid and timed-out devices reaches the
    error threshold; returns True when it tripped (the campaign is paused or aborted)."""
    threshold = ctx.rollout.error_threshold
    if threshold is None or batch.accepted:
        return False
    errors = states.get("failed", 0) + states.get("invalid", 0) + states.get("timed_out", 0)
    size = _counted(batch, states)
    if not errors or size <= 0 or errors / size < threshold:
        return False
    detail = ", ".join(f"{states[k]} {k}" for k in ("failed", "invalid", "timed_out") if states.get(k))
    reason = (
        f"batch {batch.number}: {detail} of {size} devices ({errors / size:.0%}) reached the "
        f"error threshold ({threshold:.0%})"
    )
    _trip(ctx, batch.number, reason)
    return True


def _trip(ctx: Context, number: int, reason: str) -> None:
    status = "paused" if ctx.rollout.on_error == "pause" else "aborted"
    stamp = db.utcnow()
    with db.write(ctx.engine) as conn:
        _set_trip(conn, ctx, number, reason, stamp, status)
        _set_job(conn, ctx, status="paused" if status == "paused" else "failed")
    if status == "aborted":
        _cancel_items(ctx, "failed", reason, revert=ctx.rollout.on_error == "revert")


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
    size = _counted(batch, states)
    stamp = db.utcnow()
    if size <= 0 or valid / size >= threshold - 1e-9:  # (every device superseded: nothing to judge)
        why = (f"{valid} of {size} valid" if judged else "delivered") + (
            " (accepted by a user)" if batch.accepted else ""
        )
        with db.write(ctx.engine) as conn:
            stop_if_not_ours(conn, ctx)
            db.run(
                conn,
                "UPDATE job_batch SET status = 'promoted', finished_at = :now, reason = :reason "
                "WHERE job_id = :job AND number = :number",
                {"now": stamp, "reason": why, "job": ctx.job_id, "number": batch.number},
            )
            _record(conn, ctx, "batch.promoted", batch=batch.number, reason=why)
        return None
    errors = sum(states.get(k, 0) for k in ("failed", "invalid", "timed_out", "cancelled"))
    if (size - errors) / size < threshold - 1e-9:
        reason = (
            f"batch {batch.number} can no longer reach the success threshold ({threshold:.0%}): "
            f"{valid} valid, {errors} failed, invalid or timed out of {size}"
        )
        with db.write(ctx.engine) as conn:
            _set_trip(conn, ctx, batch.number, reason, stamp, "paused")
            _set_job(conn, ctx, status="paused")
        return "paused"
    with db.write(ctx.engine) as conn:
        _set_job(conn, ctx, status="waiting", step="bake")
    return "waiting"  # devices still on their way to the expected state


def _counted(batch: Any, states: dict[str, int]) -> int:
    """The batch's devices its thresholds count: not those a campaign of higher priority
    took over since."""
    return batch.size - states.get("superseded", 0)


def _set_trip(conn: "Connection", ctx: Context, number: int, reason: str, stamp: str, status: str) -> None:
    db.run(
        conn,
        "UPDATE job_batch SET status = 'tripped', reason = :reason, finished_at = :now "
        "WHERE job_id = :job AND number = :number",
        {"reason": reason, "now": stamp, "job": ctx.job_id, "number": number},
    )
    stopped = db.run(
        conn,
        "UPDATE campaign SET status = :status, reason = :reason, updated_at = :now WHERE id = :id "
        "AND status = 'running'",
        {"status": status, "reason": reason, "now": stamp, "id": ctx.campaign_id},
    ).rowcount
    _record(conn, ctx, "batch.tripped", batch=number, reason=reason, on_error=ctx.rollout.on_error)
    if stopped:
        _record(conn, ctx, f"campaign.{status}", reason=reason)  # paused or aborted


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
        from campaignctl import dynamic

        if dynamic.keeps_open(conn, ctx):
            _set_job(conn, ctx, status="waiting", step="join")
            return "waiting"  # devices that come to match join at a later pass
        _set_job(conn, ctx, status="failed" if counts["failed"] else "success", step="done", finished_at=stamp)
        if db.run(
            conn,
            "UPDATE campaign SET status = 'completed', completed_at = :now, updated_at = :now "
            "WHERE id = :id AND status = 'running'",
            {"now": stamp, "id": ctx.campaign_id},
        ).rowcount:
            _record(conn, ctx, "campaign.completed", counts={k: v for k, v in counts.items() if v})
    return "completed"


def _record(conn: "Connection", ctx: Context, action: str, **details: Any) -> None:
    """An event of the engine's own decision about this job, in the transaction making it."""
    audit.record(conn, action, campaign=ctx.campaign, details={"job": ctx.job_id, **details}, by=audit.ENGINE)


def _settle_shards(ctx: Context) -> None:
    """Wait until no other worker is delivering a shard of the job: they stop within a
    flush interval of a cancel, and record what they had in flight as delivered; only
    then can the rest be cancelled without a device getting a document the supervision
    calls cancelled. A worker that died is waited for until its lease expires; one
    stuck in retries against a broker that is down, at most a lease's time."""
    deadline = time.monotonic() + jobs.LEASE_SECONDS
    while time.monotonic() < deadline:
        with db.read(ctx.engine) as conn:
            if not shards.delivering_elsewhere(conn, ctx.job_id, ctx.owner):
                return
        ctx.sleep(SHARD_POLL_SECONDS)


def _cancel_items(ctx: Context, job_status: str, reason: str, *, revert: bool = False) -> None:
    """Devices not yet delivered are never touched: pending ones become cancelled, and
    written-but-undelivered ones get back the entries the job overwrote (under a new
    revision, so that versions still only grow) before they become cancelled.
    ``revert`` (``on_error: revert``): in the same transaction, a rollback campaign for
    the devices of the tripped batch and those before it starts."""
    _settle_shards(ctx)
    by = f"job:{ctx.job_id}"
    stamp = db.utcnow()
    with db.write(ctx.engine) as conn:
        # Timed-out devices sent again by a retry had received the document already.
        db.run(
            conn,
            "UPDATE job_item SET status = 'delivered' WHERE job_id = :job AND status = 'syncing' AND EXISTS "
            "(SELECT 1 FROM job_item_history h WHERE h.job_id = job_item.job_id AND h.device_id = job_item.device_id "
            "AND h.status = 'timed_out')",
            {"job": ctx.job_id},
        )
        rows = db.run(
            conn,
            "SELECT c.device_id, c.key, b.desired, b.desired_at, b.desired_by, coalesce(b.secret, false) "
            "FROM job_item ji JOIN device_config c ON c.device_id = ji.device_id AND c.desired_by = :by "
            "AND c.desired_revision = ji.revision "
            "LEFT JOIN job_item_before b ON b.job_id = ji.job_id AND b.device_id = c.device_id AND b.key = c.key "
            "WHERE ji.job_id = :job AND ji.status = 'syncing'",
            {"by": by, "job": ctx.job_id},
        ).all()
        if rows:
            revision = store.next_revision(conn)
            db.run(
                conn,
                "UPDATE device_config SET desired = :desired, desired_at = :at, desired_by = :by, "
                "secret = (secret OR :secret), desired_revision = :revision WHERE device_id = :device AND key = :key",
                [
                    {
                        "desired": r[2],
                        "at": r[3] if r[2] is not None else stamp,
                        "by": r[4] if r[2] is not None else f"{by} (withdrawn)",
                        "secret": bool(r[5]),
                        "revision": revision,
                        "device": r[0],
                        "key": r[1],
                    }
                    for r in rows
                ],
            )
        db.run(
            conn,
            "UPDATE job_item SET status = 'cancelled', error = :reason, updated_at = :now "
            "WHERE job_id = :job AND status IN ('pending', 'syncing')",
            {"reason": reason, "now": stamp, "job": ctx.job_id},
        )
        db.run(
            conn,
            "UPDATE job_batch SET status = 'cancelled', finished_at = :now "
            "WHERE job_id = :job AND status NOT IN ('promoted', 'tripped')",
            {"now": stamp, "job": ctx.job_id},
        )
        shards.cancel_open(conn, ctx.job_id)
        _set_job(conn, ctx, status=job_status, step="done", finished_at=stamp)
        db.run(
            conn,
            "UPDATE campaign SET completed_at = coalesce(completed_at, :now) WHERE id = :id",
            {"now": stamp, "id": ctx.campaign_id},
        )
        if revert:
            _revert(conn, ctx)


def _revert(conn: "Connection", ctx: Context) -> None:
    from campaignctl import rollback

    tripped = db.run(
        conn, "SELECT max(number) FROM job_batch WHERE job_id = :job AND status = 'tripped'", {"job": ctx.job_id}
    ).scalar()
    if tripped is None:
        return
    settings = db.loads(db.run(conn, "SELECT settings FROM job WHERE id = :id", {"id": ctx.job_id}).scalar_one(), dict)
    result = rollback.revert(conn, ctx.campaign_id, tripped, settings)
    if result is not None:
        db.run(
            conn,
            "UPDATE campaign SET reason = coalesce(reason, '') || :more WHERE id = :id",
            {"more": f"; {rollback.describe(result)}", "id": ctx.campaign_id},
        )
