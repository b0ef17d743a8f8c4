"""Workers: the processes that move campaigns on and deliver their shards.

``tick`` is one pass of the engine: start the scheduled campaigns that are due, then
drive every job no other process drives (``campaignctl.engine``). ``run_worker`` is
``campaignctl run`` (and the engine inside ``serve``): it delivers any shard it can
claim, of any job, and ticks between. ``run_workers`` starts several such processes.
"""

from __future__ import annotations

import json
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

from campaignctl import db, jobs, shards
from campaignctl.engine import advance
from campaignctl.errors import ConflictError, InputError

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

#: A worker gives each job at most this long at a time of a rate-limited release, so
#: that one slow rollout does not hold back the other campaigns it serves.
SLICE_SECONDS = 10.0
#: How often an idle worker looks for shards to deliver (ticks come every --interval).
SHARD_POLL_SECONDS = 0.2


def tick(engine: "Engine", *, campaign: str | None = None, progress: jobs.Progress | None = None,
         info: Callable[[str], None] = lambda _m: None, slice_seconds: float | None = None) -> list[dict[str, Any]]:
    """One pass: start the scheduled campaigns that are due, then advance every job that
    no other process is running. Returns what happened, per campaign."""
    results: list[dict[str, Any]] = []
    with db.read(engine) as conn:
        due = [r[0] for r in db.run(conn,
            "SELECT name FROM campaign WHERE status = 'scheduled' AND start_at <= :now"
            + (" AND name = :name" if campaign else "") + " ORDER BY start_at",
            {"now": db.utcnow(), "name": campaign})]
    for name in due:
        started = _start_scheduled(engine, name, info)
        if started is None:
            continue
        if "outcome" in started:
            results.append(started)
            continue
        results.append({"campaign": name, "job": started["job"],
                        "outcome": _advance_safely(engine, started["job"], started["owner"], progress, info,
                                                   slice_seconds)})
    with db.read(engine) as conn:
        active = db.run(conn,
            "SELECT j.id, c.name FROM job j JOIN campaign c ON c.id = j.campaign_id WHERE j.step != 'done' "
            "AND c.status IN ('running', 'cancelled', 'aborted')" + (" AND c.name = :name" if campaign else "")
            + " ORDER BY j.id", {"name": campaign}).all()
    seen = {r.get("job") for r in results}
    for job_id, name in active:
        if job_id in seen:
            continue
        owner = jobs.try_acquire(engine, job_id)
        if owner is None:
            continue  # finished meanwhile, or another process runs it
        results.append({"campaign": name, "job": job_id,
                        "outcome": _advance_safely(engine, job_id, owner, progress, info, slice_seconds)})
    return results


def _start_scheduled(engine: "Engine", name: str, info: Callable[[str], None]) -> dict[str, Any] | None:
    """Start a due campaign: its job and lease, or ``outcome: aborted`` when it can no
    longer start; None when another process started it first."""
    from campaignctl.campaigns import get_spec

    with db.write(engine) as conn:
        # Locked: of two workers starting it at once, the second waits, then finds it
        # running and moves on (its pass goes on with the other campaigns).
        row, spec = get_spec(conn, name, lock=True)
        if row.status != "scheduled":
            return None
        settings = db.run(conn, "SELECT launch_settings FROM campaign WHERE id = :id", {"id": row.id}).scalar()
        try:
            job_id, owner = jobs.start(conn, row, spec, json.loads(settings or "{}"))
        except ConflictError:
            return None
        except InputError as exc:
            db.run(conn, "UPDATE campaign SET status = 'aborted', reason = :reason, updated_at = :now WHERE id = :id",
                   {"reason": f"could not start: {exc.message}", "now": db.utcnow(), "id": row.id})
            return {"campaign": name, "outcome": "aborted", "reason": exc.message}
    info(f"{name}: started (it was scheduled for {spec.start_at})")
    return {"job": job_id, "owner": owner}


def drive(engine: "Engine", job_id: int, *, owner: str | None = None, progress: jobs.Progress | None = None,
          slice_seconds: float | None = None) -> str | None:
    """Drive a job in this process as far as it goes now: its state machine, and the
    shards no other worker took. Takes the job's lease unless ``owner`` holds it;
    None when another live process drives the job."""
    if owner is None:
        owner = jobs.try_acquire(engine, job_id)
        if owner is None:
            with db.read(engine) as conn:
                if jobs.job_row(conn, job_id).step == "done":
                    return "completed"
            return None
    return advance(engine, job_id, owner, progress=progress, slice_seconds=slice_seconds)


def _advance_safely(engine: "Engine", job_id: int, owner: str, progress: jobs.Progress | None,
                    info: Callable[[str], None], slice_seconds: float | None) -> str:
    """One job's failure (a bug, a disk error) must not stop the engine for the others:
    it is reported, and the job is tried again at the next pass."""
    try:
        return advance(engine, job_id, owner, progress=progress, slice_seconds=slice_seconds)
    except Exception as exc:  # noqa: BLE001
        info(f"job {job_id}: {db.describe(exc, engine)}; trying again at the next pass")
        return "error"


def run_worker(engine: "Engine", *, interval: float = 2.0, stop: threading.Event | None = None,
               info: Callable[[str], None] = lambda _m: None) -> None:
    """``campaignctl run``: deliver the shards of any job, and tick every ``interval``
    seconds, until ``stop`` (or Ctrl-C)."""
    stop = stop or threading.Event()
    worker = jobs.new_owner()
    last: dict[str, str] = {}
    next_tick = 0.0
    try:
        while not stop.is_set():
            busy = False
            try:
                busy = shards.work(engine, worker, stop=stop) > 0
                if time.monotonic() >= next_tick:
                    next_tick = time.monotonic() + interval
                    for result in tick(engine, info=info, slice_seconds=SLICE_SECONDS):
                        if last.get(result["campaign"]) != result["outcome"]:
                            last[result["campaign"]] = result["outcome"]
                            info(f"{result['campaign']}: {result['outcome']}")
            except Exception as exc:  # noqa: BLE001 - a locked, busy or unreachable database: next pass
                info(f"rollout engine: {db.describe(exc, engine)}; trying again in {interval:g}s")
                next_tick = time.monotonic() + interval
                stop.wait(interval)
            if not busy:
                stop.wait(min(SHARD_POLL_SECONDS, max(0.0, next_tick - time.monotonic())))
    except KeyboardInterrupt:
        pass


def run_workers(target: str, processes: int, *, interval: float = 2.0,
                info: Callable[[str], None] = lambda _m: None) -> None:
    """``campaignctl run --processes N``: N worker processes on the database at
    ``target``; returns when they have all stopped (Ctrl-C or SIGTERM stops them)."""
    import multiprocessing
    import signal

    context = multiprocessing.get_context("spawn")
    children = [context.Process(target=_child, args=(target, interval), name=f"campaignctl-worker-{n}", daemon=True)
                for n in range(processes)]
    for child in children:
        child.start()
    info(f"{processes} worker processes: {', '.join(str(c.pid) for c in children)}")
    try:
        while any(c.is_alive() for c in children):
            for child in children:
                child.join(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        for child in children:
            if child.is_alive() and child.pid is not None:
                try:
                    import os

                    os.kill(child.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for child in children:
            child.join(30)


def _child(target: str, interval: float) -> None:
    import signal
    import sys

    def on_term(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    engine = db.create_engine(target)

    def info(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    run_worker(engine, interval=interval, info=info)
