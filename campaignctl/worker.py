"""Workers: the processes that move campaigns on and deliver their shards.

``tick`` is one pass of the engine: start the scheduled campaigns that are due, then
drive every job no other process drives (``campaignctl.engine``). ``run_worker`` is
``campaignctl run`` (and the engine inside ``serve``): it delivers any shard it can
claim, of any job, and ticks between. ``run_workers`` starts several such processes.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from campaignctl import audit, counting, db, jobs, shards
from campaignctl.engine import advance
from campaignctl.errors import ConflictError, InputError
from campaignctl.rollout import format_duration
from campaignctl.values import shown

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

#: A worker gives each job at most this long at a time of a rate-limited release, so
#: that one slow rollout does not hold back the other campaigns it serves.
SLICE_SECONDS = 10.0
#: How often an idle worker looks for shards to deliver (ticks come every --interval).
SHARD_POLL_SECONDS = 0.2

log = logging.getLogger("campaignctl.worker")


def tick(
    engine: "Engine",
    *,
    campaign: str | None = None,
    progress: jobs.Progress | None = None,
    info: Callable[[str], None] = lambda _m: None,
    slice_seconds: float | None = None,
) -> list[dict[str, Any]]:
    """One pass: start the scheduled campaigns that are due, then advance every job that
    no other process is running. Returns what happened, per campaign."""
    results: list[dict[str, Any]] = []
    with db.read(engine) as conn:
        due = [
            r[0]
            for r in db.run(
                conn,
                "SELECT name FROM campaign WHERE status = 'scheduled' AND start_at <= :now"
                + (" AND name = :name" if campaign else "")
                + " ORDER BY start_at",
                {"now": db.utcnow(), "name": campaign},
            )
        ]
    for name in due:
        started = _start_scheduled(engine, name, info)
        if started is None:
            continue
        if "outcome" in started:
            results.append(started)
            continue
        results.append(
            {
                "campaign": name,
                "job": started["job"],
                "outcome": _advance_safely(engine, started["job"], started["owner"], progress, info, slice_seconds),
            }
        )
    _advance_active(engine, campaign, results, progress, info, slice_seconds)
    if any(r.get("outcome") == "aborted" for r in results):
        # A campaign that aborted with ``on_error: revert`` started its rollback: it goes
        # out in this pass too.
        _advance_active(engine, campaign, results, progress, info, slice_seconds, rollbacks=True)
    return results


def _advance_active(
    engine: "Engine",
    campaign: str | None,
    results: list[dict[str, Any]],
    progress: jobs.Progress | None,
    info: Callable[[str], None],
    slice_seconds: float | None,
    *,
    rollbacks: bool = False,
) -> None:
    """Advance every running (or cancelled, aborted: to finish) job that no other process
    runs; ``rollbacks``: only those of rollbacks of ``campaign``."""
    where = " AND c.rollback_of = :name" if rollbacks and campaign else " AND c.name = :name" if campaign else ""
    with db.read(engine) as conn:
        active = db.run(
            conn,
            "SELECT j.id, c.name FROM job j JOIN campaign c ON c.id = j.campaign_id WHERE j.step != 'done' "
            "AND c.status IN ('running', 'cancelled', 'aborted')" + where + " ORDER BY j.id",
            {"name": campaign},
        ).all()
    seen = {r.get("job") for r in results}
    for job_id, name in active:
        if job_id in seen:
            continue
        owner = jobs.try_acquire(engine, job_id)
        if owner is None:
            continue  # finished meanwhile, or another process runs it
        results.append(
            {
                "campaign": name,
                "job": job_id,
                "outcome": _advance_safely(engine, job_id, owner, progress, info, slice_seconds),
            }
        )


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
            job_id, owner = jobs.start(conn, row, spec, db.loads(settings or "{}", dict))
            jobs.record_start(conn, "campaign.scheduled_start", name, job_id, by=audit.ENGINE, start_at=spec.start_at)
        except ConflictError:
            return None
        except InputError as exc:
            db.run(
                conn,
                "UPDATE campaign SET status = 'aborted', reason = :reason, updated_at = :now WHERE id = :id",
                {"reason": f"could not start: {exc.message}", "now": db.utcnow(), "id": row.id},
            )
            details = {"reason": f"could not start: {exc.message}"}
            audit.record(conn, "campaign.aborted", campaign=name, details=details, by=audit.ENGINE)
            return {"campaign": name, "outcome": "aborted", "reason": exc.message}
    info(f"{name}: started (it was scheduled for {spec.start_at})")
    return {"job": job_id, "owner": owner}


def drive(
    engine: "Engine",
    job_id: int,
    *,
    owner: str | None = None,
    progress: jobs.Progress | None = None,
    slice_seconds: float | None = None,
) -> str | None:
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


def _advance_safely(
    engine: "Engine",
    job_id: int,
    owner: str,
    progress: jobs.Progress | None,
    info: Callable[[str], None],
    slice_seconds: float | None,
) -> str:
    """One job's failure (a bug, a disk error) must not stop the engine for the others:
    it is reported, and the job is tried again at the next pass."""
    try:
        return advance(engine, job_id, owner, progress=progress, slice_seconds=slice_seconds)
    except Exception as exc:  # noqa: BLE001
        counting.engine_error()
        log.warning(
            "job %s: %s; trying again at the next pass", job_id, db.describe(exc, engine), extra={"job": job_id}
        )
        return "error"


def run_worker(
    engine: "Engine",
    *,
    interval: float = 2.0,
    stop: threading.Event | None = None,
    info: Callable[[str], None] = lambda _m: None,
) -> None:
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
                    started = time.monotonic()
                    results = tick(engine, info=info, slice_seconds=SLICE_SECONDS)
                    if counting.PROCESS is not None:
                        counting.PROCESS.engine_passes.observe(time.monotonic() - started)
                    for result in results:
                        if last.get(result["campaign"]) != result["outcome"]:
                            last[result["campaign"]] = result["outcome"]
                            info(f"{result['campaign']}: {result['outcome']}")
            except Exception as exc:  # noqa: BLE001 - a locked, busy or unreachable database: next pass
                counting.engine_error()
                log.warning(
                    "rollout engine: %s; trying again in %s", db.describe(exc, engine), format_duration(interval)
                )
                next_tick = time.monotonic() + interval
                stop.wait(interval)
            if not busy:
                stop.wait(min(SHARD_POLL_SECONDS, max(0.0, next_tick - time.monotonic())))
    except KeyboardInterrupt:
        pass


def run_workers(
    target: str,
    processes: int,
    *,
    interval: float = 2.0,
    info: Callable[[str], None] = lambda _m: None,
    log_level: str = "info",
    log_format: str = "text",
) -> None:
    """``campaignctl run --processes N``: N worker processes on the database at
    ``target``; returns when they have all stopped (Ctrl-C or SIGTERM stops them). The
    children log as this process does (``log_level``, ``log_format``)."""
    import multiprocessing
    import signal

    context = multiprocessing.get_context("spawn")
    children = [
        context.Process(
            target=_child, args=(target, interval, log_level, log_format), name=f"campaignctl-worker-{n}", daemon=True
        )
        for n in range(processes)
    ]
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


#: A launch shares its delivery with other processes from this many devices on (a
#: process costs about half a second of start-up: not worth it for a few shards).
HELPERS_FROM = 8000


def processes_for(devices: int, requested: int | None) -> int:
    """How many processes share the sending of ``devices`` documents, the calling one
    included: ``requested``, or by default one per CPU (up to 4) from ``HELPERS_FROM``
    devices on, and this one alone below."""
    import os

    if requested is not None:
        return max(1, requested)
    return 1 if devices < HELPERS_FROM else max(1, min(os.cpu_count() or 1, 4))


def helper_count(engine: "Engine", job_id: int, processes: int | None) -> int:
    """How many processes deliver a job beside the launching one (see ``processes_for``)."""
    if processes is not None:
        return processes_for(0, processes) - 1
    with db.read(engine) as conn:
        return processes_for(jobs.job_row(conn, job_id).total, None) - 1


@contextmanager
def helper_processes(
    name: str,
    target: Callable[..., None],
    arguments: Sequence[tuple[Any, ...]],
    *,
    stop: Any = None,
    terminate_on_error: bool = False,
    grace: float = 30.0,
) -> Iterator[list[Any]]:
    """While the block lasts, one spawned process per tuple of ``arguments`` runs
    ``target(*arguments[n])`` (named ``name-n``), with Ctrl-C ignored: it reaches the
    whole process group, and this process decides what its helpers do. On the way out
    ``stop`` (a spawn-context Event the helpers watch) is set and each helper gets
    ``grace`` seconds to finish before it is terminated; with ``terminate_on_error``, a
    block that raised terminates them at once."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    children = [
        context.Process(target=_ignoring_sigint, args=(target, *args), name=f"{name}-{n}", daemon=True)
        for n, args in enumerate(arguments)
    ]
    for child in children:
        child.start()
    failed = False
    try:
        yield children
    except BaseException:
        failed = True
        raise
    finally:
        if stop is not None:
            stop.set()
        deadline = time.monotonic() + grace  # one deadline for all: not ``grace`` each
        for child in children:
            if failed and terminate_on_error:
                child.terminate()
            child.join(max(0.0, deadline - time.monotonic()))
        for child in children:
            if child.is_alive():
                child.terminate()
                child.join(5)


def _ignoring_sigint(target: Callable[..., None], *args: Any) -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    target(*args)


@contextmanager
def delivery_helpers(target: str, job_id: int, count: int) -> Iterator[None]:
    """While the block lasts, ``count`` more processes on the database at ``target``
    claim and deliver the job's shards beside this one (the launching process drives
    the job and delivers shards too). On the way out they finish the shard in hand and
    stop; on interface-heavy launches this spreads the encoding and publishing over
    the machine's cores."""
    if count <= 0:
        yield
        return
    import multiprocessing
    import os

    stop = multiprocessing.get_context("spawn").Event()
    with helper_processes(
        "campaignctl-delivery", _shard_child, [(target, job_id, stop, os.getpid())] * count, stop=stop
    ):
        yield


def _shard_child(target: str, job_id: int, stop: Any, parent: int) -> None:
    import os
    import sys

    engine = None
    try:
        engine = db.create_engine(target)
        worker = jobs.new_owner()
        while not stop.is_set() and os.getppid() == parent:  # the launcher was killed: stop too
            # A read first: claiming takes the write lock, which the write step needs.
            with db.read(engine) as conn:
                waiting = shards.open_count(conn, job_id)
            if waiting:
                shards.work(engine, worker, job_id=job_id, stop=stop)
            stop.wait(SHARD_POLL_SECONDS)
    except Exception as exc:  # noqa: BLE001 - the launching process delivers what is left
        # The text may come from a driver or a platform: escaped for the terminal.
        print(shown(f"delivery helper {os.getpid()}: {db.describe(exc, engine)}", 500), file=sys.stderr, flush=True)


def _child(target: str, interval: float, log_level: str, log_format: str) -> None:
    import signal

    from campaignctl.logs import configure

    def on_term(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    logger = configure(log_level, log_format)
    engine = db.create_engine(target)
    run_worker(engine, interval=interval, info=logger.info)
