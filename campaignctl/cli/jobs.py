"""``campaignctl jobs ...``"""

from __future__ import annotations

import typer

from campaignctl.cli.common import Output, OutputOption, echo, engine, info, print_json, show_table

app = typer.Typer(no_args_is_help=True)

JobArgument = typer.Argument(..., metavar="ID", help="The job's number.")


@app.command("list")
def list_(ctx: typer.Context, output: Output = OutputOption) -> None:
    """List launch jobs."""
    from campaignctl import jobs

    rows = jobs.list_jobs(engine(ctx))
    if output is Output.json:
        print_json(rows)
        return
    show_table(
        ["id", "campaign", "status", "step", "devices", "delivered", "failed", "started", "finished"],
        [
            (
                j["id"],
                j["campaign"],
                j["status"] + (" (running)" if j["running"] else ""),
                j["step"],
                j["total"],
                j["counts"]["delivered"],
                j["counts"]["failed"],
                j["started_at"],
                j["finished_at"],
            )
            for j in rows
        ],
    )


@app.command("show")
def show(ctx: typer.Context, job_id: int = JobArgument, output: Output = OutputOption) -> None:
    """A job: status, counters, shards and the error of every failed device."""
    from campaignctl import jobs

    job = jobs.show(engine(ctx), job_id)
    if output is Output.json:
        print_json(job)
        return
    c = job["counts"]
    echo(
        f"job {job['id']}  campaign {job['campaign']}  {job['status']}"
        f"{' (running)' if job['running'] else ''}  step {job['step']}"
    )
    echo(
        f"devices: {job['total']}  pending {c['pending']}  syncing {c['syncing']}  "
        f"delivered {c['delivered']}  failed {c['failed']}"
    )
    echo(f"started {job['started_at'] or '-'}  finished {job['finished_at'] or '-'}")
    if job["steps"]:
        echo(
            "steps: "
            + ", ".join(
                f"{s['number']}: {'batch ' + str(s['batch']) if s['kind'] == 'batch' else 'retry'} ({s['devices']} device(s))"
                for s in job["steps"]
            )
        )
    if job["shards"]:
        show_table(
            ["shard", "devices", "status", "worker", "delivered", "failed", "started", "finished"],
            [
                (
                    s["number"],
                    s["size"],
                    s["status"],
                    s["worker"] or "-",
                    s["delivered"],
                    s["failed"],
                    s["started_at"] or "-",
                    s["finished_at"] or "-",
                )
                for s in job["shards"]
            ],
            title="shards",
        )
    if job["errors"]:
        show_table(
            ["device", "attempts", "error", "at"],
            [(e["device"], e["attempts"], e["error"], e["at"]) for e in job["errors"]],
        )


@app.command("resume")
def resume(ctx: typer.Context, job_id: int = JobArgument, output: Output = OutputOption) -> None:
    """Go on with a job whose process died (it is never run by two processes at once)."""
    from campaignctl import jobs
    from campaignctl.cli.campaigns import advance_job

    db = engine(ctx)
    owner = jobs.acquire(db, job_id)
    info(f"job {job_id}: resuming")
    advance_job(db, job_id, owner, output)
