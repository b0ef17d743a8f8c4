"""``campaignctl pause | resume | cancel | retry | run | tick``"""

from __future__ import annotations

from typing import List, Optional

import typer

from campaignctl.cli.common import (
    CampaignArgument,
    Output,
    OutputOption,
    duration,
    echo,
    engine,
    info,
    print_json,
    stop_gracefully,
    stop_on_sigterm,
)
from campaignctl.cli.logging_options import LogFormat, LogFormatOption, LogLevel, LogLevelOption, start_logging


def pause(ctx: typer.Context, name: str = CampaignArgument) -> None:
    """Pause a running campaign: no new deliveries until resume."""
    from campaignctl import control

    control.pause(engine(ctx), name)
    info(f"campaign {name}: paused (a delivery in progress stops within a second)")


def resume(ctx: typer.Context, name: str = CampaignArgument, output: Output = OutputOption) -> None:
    """Resume a paused campaign where it stopped (a batch that tripped the breaker is accepted)."""
    from campaignctl import control
    from campaignctl.cli.campaigns import advance_job

    db = engine(ctx)
    job_id = control.resume(db, name)
    if job_id is None:
        info(f"campaign {name}: scheduled again (it had not started)")
        return
    info(f"campaign {name}: resumed, job {job_id}")
    advance_job(db, job_id, None, output)


def cancel(ctx: typer.Context, name: str = CampaignArgument, output: Output = OutputOption) -> None:
    """Cancel a campaign: devices not yet delivered are never touched; delivered ones keep it."""
    from campaignctl import control

    result = control.cancel(engine(ctx), name)
    job = result["job"]
    if output is Output.json:
        print_json(result)
    elif job is None:
        echo(f"campaign {name}: cancelled before it started")
    else:
        c = job["counts"]
        echo(
            f"campaign {name}: cancelled; {c['delivered']} device(s) keep what they received, "
            f"{c['cancelled']} will never receive it"
            + (" (the process that runs the job stops at its next step)" if job["step"] != "done" else "")
        )


def retry(
    ctx: typer.Context,
    name: str = CampaignArgument,
    device: Optional[List[str]] = typer.Option(None, "--device", metavar="NAME", help="Only this device (repeatable)."),
    timed_out: bool = typer.Option(False, "--timed-out", help="Timed-out devices too."),
    output: Output = OutputOption,
) -> None:
    """Re-deliver to failed (and timed-out) devices only, as a new step of the same job."""
    from campaignctl import control, jobs
    from campaignctl.cli.campaigns import advance_job
    from campaignctl.errors import CampaignctlError

    db = engine(ctx)
    job_id, targets = control.retry(db, name, devices=device, timed_out=timed_out)
    info(f"campaign {name}: retrying {len(targets)} device(s) in job {job_id}")
    if not advance_job(db, job_id, None, output, fail_on_failed=False):
        return
    failed = {e["device"] for e in jobs.show(db, job_id)["errors"]} & set(targets)
    if failed:
        raise CampaignctlError(
            f"{len(failed)} of the {len(targets)} retried device(s) could not be delivered "
            f"(campaignctl jobs show {job_id})"
        )


def run(
    ctx: typer.Context,
    interval: str = typer.Option(
        "2s", "--interval", metavar="DURATION", help="Time between two passes: 90s, 30m, 2h or seconds."
    ),
    processes: int = typer.Option(
        1, "--processes", min=1, max=64, metavar="N", help="Worker processes to start on this machine."
    ),
    log_level: LogLevel = LogLevelOption,
    log_format: LogFormat = LogFormatOption,
) -> None:
    """Run workers until interrupted: deliver shards of any job, start scheduled campaigns,
    promote batches. Any number of workers, on any machines, can share one database."""
    from campaignctl import worker
    from campaignctl.rollout import format_duration

    seconds = duration(interval, "--interval")
    log = start_logging(log_level, log_format)
    # One process ends after the pass in hand; several are stopped by their parent.
    stop = stop_gracefully() if processes == 1 else None
    if stop is None:
        stop_on_sigterm()
    db = engine(ctx)
    try:  # a stop may come as soon as the line is out
        log.info(f"rollout engine: a pass every {format_duration(seconds)}; Ctrl-C stops")
        if stop is not None:
            worker.run_worker(db, interval=seconds, stop=stop, info=log.info)
        else:
            from campaignctl.db import location_of

            worker.run_workers(
                location_of(db).target,
                processes,
                interval=seconds,
                info=log.info,
                log_level=log_level.value,
                log_format=log_format.value,
            )
    except KeyboardInterrupt:
        pass  # a stop that came while the workers were already stopping: the same clean end
    log.info("stopped")


def tick(ctx: typer.Context, output: Output = OutputOption) -> None:
    """One pass of the rollout engine (for cron): advance every campaign that is due."""
    from campaignctl import worker

    results = worker.tick(engine(ctx), info=info)
    if output is Output.json:
        print_json(results)
        return
    for result in results:
        echo(f"{result['campaign']}: {result['outcome']}")
