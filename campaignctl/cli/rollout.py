"""``campaignctl pause | resume | cancel | retry | run | tick``"""

from __future__ import annotations

from typing import List, Optional

import typer

from campaignctl.cli.common import Output, OutputOption, duration, echo, engine, info, print_json, stop_on_sigterm


def pause(ctx: typer.Context, name: str = typer.Argument(..., metavar="NAME")) -> None:
    """Pause a running campaign: no new deliveries until resume."""
    from campaignctl import control

    control.pause(engine(ctx), name)
    info(f"campaign {name}: paused (a delivery in progress stops within a second)")


def resume(ctx: typer.Context, name: str = typer.Argument(..., metavar="NAME"),
           output: Output = OutputOption) -> None:
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


def cancel(ctx: typer.Context, name: str = typer.Argument(..., metavar="NAME"),
           output: Output = OutputOption) -> None:
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
        echo(f"campaign {name}: cancelled; {c['delivered']} device(s) keep what they received, "
             f"{c['cancelled']} will never receive it" + (" (the process that runs the job stops at its next "
                                                         "step)" if job["step"] != "done" else ""))


def retry(ctx: typer.Context, name: str = typer.Argument(..., metavar="NAME"),
          device: Optional[List[str]] = typer.Option(None, "--device", metavar="NAME",
                                                     help="Only this device (repeatable)."),
          timed_out: bool = typer.Option(False, "--timed-out", help="Timed-out devices too."),
          output: Output = OutputOption) -> None:
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
        raise CampaignctlError(f"{len(failed)} of the {len(targets)} retried device(s) could not be delivered "
                               f"(campaignctl jobs show {job_id})")


def run(ctx: typer.Context,
        interval: str = typer.Option("2s", "--interval", metavar="DURATION", help="Time between two passes."),
        processes: int = typer.Option(1, "--processes", min=1, max=64, metavar="N",
                                      help="Worker processes to start on this machine.")) -> None:
    """Run workers until interrupted: deliver shards of any job, start scheduled campaigns,
    promote batches. Any number of workers, on any machines, can share one database."""
    from campaignctl import worker

    seconds = duration(interval, "--interval")
    stop_on_sigterm()
    db = engine(ctx)
    info(f"rollout engine: a pass every {interval}; Ctrl-C stops")
    try:
        if processes == 1:
            worker.run_worker(db, interval=seconds, info=info)
        else:
            from campaignctl.db import location_of

            worker.run_workers(location_of(db).target, processes, interval=seconds, info=info)
    except KeyboardInterrupt:
        pass  # a stop that came while the workers were already stopping: the same clean end
    info("stopped")


def tick(ctx: typer.Context, output: Output = OutputOption) -> None:
    """One pass of the rollout engine (for cron): advance every campaign that is due."""
    from campaignctl import worker

    results = worker.tick(engine(ctx), info=info)
    if output is Output.json:
        print_json(results)
        return
    for result in results:
        echo(f"{result['campaign']}: {result['outcome']}")
