"""``campaignctl create | apply | list | show | delete | launch | status``"""

from __future__ import annotations

import time
from typing import Any, Optional

import typer

from campaignctl.cli.common import (
    CampaignArgument,
    ExportOutputOption,
    Output,
    OutputOption,
    duration,
    echo,
    engine,
    fmt_value,
    info,
    plain,
    print_export,
    print_json,
    print_json_stream,
    progress_bar,
    short_time,
    show_table,
    stdout_console,
    table,
)

FileOption = typer.Option(..., "--file", "-f", metavar="FILE", help="Campaign manifest (YAML; - for stdin).")


def create(ctx: typer.Context, file: str = FileOption) -> None:
    """Create a campaign from a manifest (error if the name exists)."""
    from campaignctl import campaigns
    from campaignctl.manifests import load_campaign

    result = campaigns.create(engine(ctx), load_campaign(file))
    echo(f"campaign {result.name}: created")


def apply(ctx: typer.Context, file: str = FileOption) -> None:
    """Create a campaign, or update it while it is a draft (no-op when identical)."""
    from campaignctl import campaigns
    from campaignctl.manifests import load_campaign

    result = campaigns.apply(engine(ctx), load_campaign(file))
    changes = f" ({', '.join(result.changes)})" if result.changes else ""
    echo(f"campaign {result.name}: {result.action}{changes}")


def list_(ctx: typer.Context, output: Output = OutputOption) -> None:
    """List campaigns."""
    from campaignctl import campaigns

    rows = campaigns.list_campaigns(engine(ctx))
    if output is Output.json:
        print_json(rows)
        return
    show_table(
        ["name", "status", "devices", "job", "launched", "description"],
        [
            (
                r["name"],
                r["status"],
                r["devices"],
                r["job"] and f"{r['job']['id']} ({r['job']['status']})",
                short_time(r["launched_at"]),
                r["description"],
            )
            for r in rows
        ],
    )


def show(
    ctx: typer.Context,
    name: str = CampaignArgument,
    show_secrets: bool = typer.Option(False, "--show-secrets", help="Print secret values instead of ***."),
    output: Output = OutputOption,
) -> None:
    """A campaign's definition."""
    from campaignctl import campaigns

    data = campaigns.show(engine(ctx), name, show_secrets=show_secrets)
    if output is Output.json:
        print_json(data)
        return
    sel = data["devices"]
    echo(f"{data['name']}  [{data['status']}]  {data['description'] or ''}".rstrip())
    echo(f"devices: {sel['count']} ({', '.join(filter(None, [_names(sel['names']), _selector(sel['selector'])]))})")
    if sel.get("dynamic"):
        limits = ([f"up to {sel['max_devices']} devices"] if sel.get("max_devices") else []) + (
            [f"until {short_time(data['end_at'])} UTC"] if data.get("end_at") else ["until cancelled"]
        )
        echo(f"dynamic: devices that come to match join ({', '.join(limits)})")
    if data["firmware"]:
        firmware = data["firmware"]
        rules = ([f"from {', '.join(firmware['from'])}"] if firmware.get("from") else []) + (
            ["downgrades allowed"] if firmware.get("allow_downgrade") else []
        )
        echo(f"firmware: {firmware['type']} {firmware['version']}" + (f" ({'; '.join(rules)})" if rules else ""))
    if data["priority"]:
        echo(f"priority: {data['priority']}")
    if data["rollback_of"]:
        echo(f"rolls back: {data['rollback_of']} (each device's value from before it; withdrawn where it had none)")
    if data["start_at"]:
        echo(f"starts at: {short_time(data['start_at'])} UTC")
    if data["rollout"]:
        from campaignctl.rollout import Rollout

        echo(f"rollout: {Rollout.from_dict(data['rollout']).describe()}")
    keys = sorted(set(data["configurations"]) | set(data["expected_state"]))
    if keys:
        show_table(
            ["key", "configuration", "expected state"],
            [(k, fmt_value(data["configurations"].get(k)), fmt_value(data["expected_state"].get(k))) for k in keys],
        )
    if data["jobs"]:
        echo("jobs: " + ", ".join(f"{j['id']} ({j['status']})" for j in data["jobs"]))
    if data.get("approval"):
        from campaignctl.cli.approvals import approval_parts

        for part in approval_parts(data["approval"]):
            stdout_console().print(part)


def _names(names: list[str]) -> str:
    if not names:
        return ""
    return "names: " + ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def _selector(selector: Optional[dict[str, Any]]) -> str:
    if not selector:
        return ""
    parts = [f"type={selector['type']}"] if selector.get("type") else []
    parts += [f"{k}={v}" for k, v in sorted(selector.get("tags", {}).items())]
    return "selector: " + " ".join(parts) if parts else "selector: all devices"


def delete(ctx: typer.Context, name: str = CampaignArgument) -> None:
    """Delete a campaign that was not launched."""
    from campaignctl import campaigns

    campaigns.delete(engine(ctx), name)
    info(f"campaign {name}: deleted")


def launch(
    ctx: typer.Context,
    name: str = CampaignArgument,
    now: bool = typer.Option(False, "--now", help="Start now even if the manifest has a later start_at."),
    wait: bool = typer.Option(False, "--wait", help="Then wait for the outcome, as status --wait."),
    timeout: Optional[str] = typer.Option(
        None, "--timeout", metavar="DURATION", help="With --wait: give up after this long (90s, 30m, 2h)."
    ),
    min_valid: str = typer.Option(
        "100%", "--min-valid", metavar="PERCENT", help="With --wait: share of devices valid for exit code 0."
    ),
    attempts: int = typer.Option(5, "--attempts", min=1, metavar="N", help="Delivery tries per device."),
    ack_timeout: str = typer.Option(
        "10s",
        "--ack-timeout",
        metavar="DURATION",
        help="Connect / acknowledgement timeout of one delivery (at least 0.1s).",
    ),
    backoff: str = typer.Option(
        "1s", "--backoff", metavar="DURATION", help="First wait between tries (doubles, with jitter)."
    ),
    max_backoff: str = typer.Option("30s", "--max-backoff", metavar="DURATION", help="Longest wait between tries."),
    window: int = typer.Option(
        1000, "--window", min=1, max=60000, metavar="N", help="Deliveries in flight at once per interface."
    ),
    chunk_size: int = typer.Option(
        5000, "--chunk-size", min=1, metavar="N", help="Devices written per database transaction."
    ),
    shard_size: int = typer.Option(
        2000, "--shard-size", min=1, metavar="N", help="Devices per shard: the unit of delivery a worker claims."
    ),
    processes: Optional[int] = typer.Option(
        None,
        "--processes",
        min=1,
        max=64,
        metavar="N",
        help="Processes delivering the shards (default: one per CPU, "
        "up to 4, from 8,000 devices on; 1: this process only).",
    ),
    force: bool = typer.Option(
        False,
        "--force",
        help="Launch even when another campaign of the same or a higher priority "
        "sets one of its keys on one of its devices.",
    ),
    detach: bool = typer.Option(
        False, "--detach", help="Create the job and return: running workers (campaignctl run) deliver it."
    ),
    output: Output = OutputOption,
) -> None:
    """Launch a campaign: write the desired configurations, then deliver them, batch by batch
    (running workers help with the delivery)."""
    from campaignctl import jobs
    from campaignctl.interfaces.base import DeliveryPolicy

    if detach and wait:
        raise typer.BadParameter("cannot be combined with --wait (use status NAME --wait)", param_hint="--detach")
    if not wait and (timeout is not None or min_valid != "100%"):
        raise typer.BadParameter(
            "goes with --wait (the delivery timeout is --ack-timeout)",
            param_hint="--timeout" if timeout is not None else "--min-valid",
        )
    limits = _wait_limits(timeout, min_valid) if wait else None
    if wait:
        _refuse_endless_wait(engine(ctx), name)  # before anything is launched
    policy = DeliveryPolicy(
        attempts=attempts,
        timeout=duration(ack_timeout, "--ack-timeout", minimum=0.1),
        backoff=duration(backoff, "--backoff"),
        max_backoff=duration(max_backoff, "--max-backoff"),
        window=window,
    )
    db = engine(ctx)
    job_id, owner = jobs.launch(
        db, name, policy=policy, chunk_size=chunk_size, shard_size=shard_size, now=now, force=force
    )
    if job_id is None:
        from campaignctl.supervision import campaign_status

        scheduled = campaign_status(db, name, limit=0)
        start_at = scheduled["start_at"]
        info(
            f"campaign {name}: scheduled for {start_at} "
            "(it starts then in any running `campaignctl serve` or `run`, or the next `tick`)"
        )
        if scheduled["reason"]:  # approvals still missing: the start waits for them
            info(f"campaign {name}: {scheduled['reason']}")
        if limits:
            _wait(db, name, output, *limits)
        elif output is Output.json:
            print_json({"campaign": name, "status": "scheduled", "start_at": start_at, "job": None})
        return
    info(f"campaign {name}: launched, job {job_id}")
    if detach:
        assert owner is not None  # a job created here is leased to this process
        jobs.release(db, job_id, owner)
        info(
            "detached: any `campaignctl run`, `serve` or `tick` delivers it; follow it with "
            f"`campaignctl status {name}` or `campaignctl jobs show {job_id}`"
        )
        if output is Output.json:
            print_json(jobs.show(db, job_id))
        return
    from campaignctl import worker
    from campaignctl.db import location_of

    helpers = worker.helper_count(db, job_id, processes)
    # With --wait, the exit code tells the outcome: failed deliveries count there.
    with worker.delivery_helpers(location_of(db).target, job_id, helpers):
        advance_job(
            db,
            job_id,
            owner,
            output if not wait else None,
            fail_on_failed=not wait,
            slice_seconds=limits[0] if limits else None,
        )
    if limits:
        _wait(db, name, output, *limits)


def _refuse_endless_wait(db: Any, name: str) -> None:
    """--wait on a campaign that never ends by itself (dynamic, without end_at) is a usage error."""
    from campaignctl import dynamic

    why = dynamic.wait_refusal(db, name)
    if why:
        raise typer.BadParameter(why, param_hint="--wait")


def _wait_limits(timeout: Optional[str], min_valid: str) -> tuple[Optional[float], float]:
    from campaignctl.rollout import parse_percent

    seconds = None if timeout is None else duration(timeout, "--timeout")
    try:
        share = parse_percent(min_valid)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--min-valid") from None
    return seconds, share


def advance_job(
    db: Any,
    job_id: int,
    owner: Optional[str],
    output: Optional[Output],
    *,
    fail_on_failed: bool = True,
    slice_seconds: Optional[float] = None,
) -> bool:
    """Drive a job in this process (taking its lease unless ``owner`` holds it), with a
    progress bar, and say where it stopped; False when another process drives it."""
    from campaignctl import jobs, worker
    from campaignctl.errors import CampaignctlError

    started = time.monotonic()
    try:
        with progress_bar() as progress:
            outcome = worker.drive(db, job_id, owner=owner, progress=progress, slice_seconds=slice_seconds)
    except KeyboardInterrupt:
        info(
            f"interrupted: job {job_id} stopped where it was; campaignctl jobs resume {job_id} (or any "
            "`campaignctl serve` / `run`) continues it"
        )
        raise typer.Exit(130) from None
    if outcome is None:
        info("another process runs this job: it goes on there")
        return False
    result = jobs.show(db, job_id)
    counts = result["counts"]
    if output is Output.json:
        print_json(result)
    elif output is not None:
        state = result["status"] if result["step"] == "done" else outcome
        left_out = sum(counts[s] for s in jobs.LEFT_OUT)
        echo(
            f"job {job_id}: {state} after {time.monotonic() - started:.1f}s: {counts['delivered']} delivered, "
            f"{counts['failed']} failed"
            + "".join(
                f", {counts[k]} {label}"
                for k, label in (
                    ("syncing", "waiting for their devices to fetch"),
                    # A job waiting in its write step: devices wait for their maintenance window.
                    (
                        "pending",
                        "pending (waiting for their window, or in later batches)"
                        if (result["status"], result["step"]) == ("waiting", "write")
                        else "in later batches",
                    ),
                    ("cancelled", "cancelled"),
                )
                if counts[k]
            )
            + (f", {left_out} left out (already installed, skipped or superseded: see status)" if left_out else "")
        )
        if outcome == "waiting" and result["step"] == "join":
            info(
                "dynamic campaign: devices that come to match its selector join at each pass of "
                "`campaignctl serve`, `run` or `tick` (campaignctl status shows when they joined)"
            )
        elif outcome == "waiting" and counts["pending"]:
            info(
                "the next batches start as the rollout allows: keep `campaignctl serve` or `campaignctl run` "
                "running, run `campaignctl tick` from cron, or wait with `campaignctl status NAME --wait`"
            )
        elif outcome in ("paused", "aborted"):
            from campaignctl.supervision import campaign_status

            info(
                f"campaign {result['campaign']}: {outcome}: {campaign_status(db, result['campaign'], limit=0)['reason']}"
            )
    if counts["failed"] and output is not None:
        failure_reasons(result["errors"], job_id)
        info(f"to deliver to the failed devices again: campaignctl retry {result['campaign']}")
    if outcome == "aborted":
        _drive_revert(db, result["campaign"], output)
    if fail_on_failed and result["status"] == "failed" and outcome == "completed":
        raise CampaignctlError(f"{counts['failed']} device(s) could not be delivered (campaignctl jobs show {job_id})")
    return True


# Failure reasons listed after a launch: the most frequent ones; jobs show has them all.
REASON_LINES = 10


def failure_reasons(errors: list[dict[str, Any]], job_id: int) -> None:
    """Failed deliveries on stderr, one line per reason with its count, most frequent
    first: ``120 × cannot connect to 127.0.0.1:1883: Connection refused``."""
    from collections import Counter

    from campaignctl.values import cut

    reasons = Counter(e["error"] or "no reason recorded" for e in errors).most_common()
    width = len(str(reasons[0][1])) if reasons else 1
    for error, count in reasons[:REASON_LINES]:
        info(f"{count:>{width}} × {cut(error, 200)}")
    if len(reasons) > REASON_LINES:
        others = sum(count for _, count in reasons[REASON_LINES:])
        info(f"… {others} more in {len(reasons) - REASON_LINES} other reason(s): campaignctl jobs show {job_id}")


def _drive_revert(db: Any, name: str, output: Optional[Output]) -> None:
    """``on_error: revert``: the aborted campaign started its rollback; it goes out from
    here as well (any engine may drive it)."""
    from campaignctl.supervision import campaign_status

    for rollback in campaign_status(db, name, limit=0)["rollbacks"]:
        status = campaign_status(db, rollback["campaign"], limit=0)
        job = status["job"]
        if status["status"] == "running" and job is not None and job["step"] != "done":
            info(f"campaign {rollback['campaign']}: reverting, job {job['id']}")
            advance_job(db, job["id"], None, output, fail_on_failed=False)


def _wait(
    db: Any,
    name: str,
    output: Output,
    timeout: Optional[float],
    min_valid: float,
    *,
    only: Optional[str] = None,
    limit: int = 100,
) -> None:
    """status --wait: live view on a terminal, the final result only otherwise; exit code."""
    import sys

    from campaignctl.wait import wait

    live = None
    if output is Output.table and sys.stdout.isatty():
        from rich.live import Live

        live = Live(console=stdout_console(), auto_refresh=False)
        live.start()
    try:
        code, data = wait(
            db,
            name,
            timeout=timeout,
            min_valid=min_valid,
            devices=0 if output is Output.json else limit or None,
            only=None if only is None else {only},
            on_update=(
                lambda d: live.update(
                    status_view(d, only, limit, console=live.console, footer=_refreshed(None)), refresh=True
                )
            )
            if live
            else (lambda _d: None),
        )
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    finally:
        if live is not None:
            live.stop()
    if output is Output.json:
        from campaignctl.supervision import open_status

        # The polls read the counts only; the devices are listed once, streamed.
        with open_status(db, name, only=None if only is None else {only}) as final:
            print_json_stream(
                {**{k: v for k, v in final.items() if k != "devices"}, "exit_code": code, "devices": final["devices"]},
                "devices",
            )
    elif live is None:
        stdout_console().print(status_view(data, only, limit))
    from campaignctl.rollout import format_duration

    verdict = {
        0: "completed",
        3: "cancelled" if data["status"] == "cancelled" else "ended below --min-valid",
        4: f"timed out waiting after {format_duration(timeout or 0)}",
        5: f"stopped: {data['status']}" + (f" ({data['reason']})" if data.get("reason") else ""),
    }[code]
    info(f"campaign {name}: {verdict} (exit {code})")
    raise typer.Exit(code)


STATUS_STYLE = {
    "valid": "green",
    "waiting": "yellow",
    "syncing": "cyan",
    "pending": "dim",
    "failed": "red",
    "invalid": "magenta",
    "timed_out": "red",
    "cancelled": "dim",
    "skipped": "dim",
    "superseded": "blue",
}


def status(
    ctx: typer.Context,
    name: str = CampaignArgument,
    watch: bool = typer.Option(False, "--watch", "-w", help="Refresh live until interrupted."),
    interval: str = typer.Option(
        "1s", "--interval", metavar="DURATION", help="Refresh period of --watch (at least 0.1s)."
    ),
    only: Optional[str] = typer.Option(
        None, "--status", metavar="STATUS", help="Only devices with this supervision status."
    ),
    limit: int = typer.Option(100, "--limit", min=0, metavar="N", help="Devices shown in the table (0: all)."),
    wait: bool = typer.Option(False, "--wait", help="Block until the campaign ends; the exit code tells how."),
    timeout: Optional[str] = typer.Option(
        None, "--timeout", metavar="DURATION", help="With --wait: give up after this long (90s, 30m, 2h)."
    ),
    min_valid: str = typer.Option(
        "100%", "--min-valid", metavar="PERCENT", help="With --wait: share of devices valid for exit code 0."
    ),
    output: Output = ExportOutputOption,
) -> None:
    """The supervision: how the campaign's devices converge.

    With --wait, exit codes: 0 completed with at least --min-valid valid, 3 ended below it
    (or cancelled), 4 --timeout reached first, 5 paused or aborted.
    """
    from campaignctl.supervision import DEVICE_STATES, campaign_status, open_status

    if only is not None and only not in DEVICE_STATES:
        raise typer.BadParameter(f"must be one of {', '.join(DEVICE_STATES)}", param_hint="--status")
    if output in (Output.csv, Output.ndjson) and (watch or wait):
        raise typer.BadParameter(
            f"{output.value} is a listing: not with --watch or --wait (wait first, then list)", param_hint="--output"
        )
    period = duration(interval, "--interval", minimum=0.1)
    db = engine(ctx)
    statuses = None if only is None else {only}
    if wait:
        limits = _wait_limits(timeout, min_valid)  # usage errors first, before the database
        _refuse_endless_wait(db, name)
        _wait(db, name, output, *limits, only=only, limit=limit)
    if output in (Output.csv, Output.ndjson):
        with open_status(db, name, only=statuses, export=True) as data:
            print_export(data, output)
        return
    if output is Output.json:
        with open_status(db, name, only=statuses) as data:
            print_json_stream(data, "devices")
        return

    console = stdout_console()

    def view(live: bool = False) -> Any:
        # The table reads the summary's aggregate and the rows it shows, nothing more.
        data = campaign_status(db, name, only=statuses, limit=limit or None)
        if not live:
            return status_view(data, only, limit)
        return status_view(data, only, limit, console=console, footer=_refreshed(period))

    if not watch:
        console.print(view())
        return
    from rich.live import Live

    try:
        with Live(view(live=True), console=console, auto_refresh=False, screen=False) as live:
            while True:
                time.sleep(period)
                live.update(view(live=True), refresh=True)
    except KeyboardInterrupt:
        pass


def _refreshed(period: Optional[float]) -> str:
    """The live view's last line: when it was read, how often, how to stop."""
    from datetime import datetime, timezone

    from campaignctl.rollout import format_duration

    every = f" · every {format_duration(period)}" if period else ""
    return f"refreshed {datetime.now(timezone.utc):%H:%M:%S} UTC{every} · Ctrl-C to stop"


def status_view(
    data: dict[str, Any], only: Optional[str], limit: int, *, console: Any = None, footer: Optional[str] = None
) -> Any:
    """The status table (and live view): every text a device, manifest or platform wrote
    goes through ``plain``. The header stays on one line (cut at the terminal's width).
    With ``console`` (a live view, redrawn in place), device rows are one line each and
    cut to what fits the terminal's height under the rest, and ``footer`` ends the view."""
    from rich.console import Group
    from rich.text import Text

    s = data["summary"]
    parts: list[Any] = [
        OneLine(_header(data, "  ", "devices: "), _header(data, " ", "devices: "), _header(data, " ", ": "))
    ]
    if data.get("window") and data["status"] in ("draft", "scheduled", "running", "paused"):
        parts.append(plain(f"maintenance windows: {data['window']['text']}", limit=None, style="dim"))
    if data.get("rollback_of"):
        parts.append(plain(f"rolls back campaign {data['rollback_of']}", limit=None, style="dim"))
    for rollback in data.get("rollbacks") or ():
        parts.append(
            plain(f"rolled back by campaign {rollback['campaign']} ({rollback['status']})", limit=None, style="bold")
        )
    if data.get("reason"):
        parts.append(plain(data["reason"], limit=None, style="bold red" if data["status"] != "cancelled" else "dim"))
    if data.get("approval"):
        from campaignctl.cli.approvals import approval_parts

        parts.extend(approval_parts(data["approval"]))
    if len(data.get("batches") or ()) > 1:
        parts.append(
            table(
                ["batch", "devices", "status", "valid", "errors", "started", "note"],
                [_batch_row(batch) for batch in data["batches"]],
            )
        )
    devices = [d for d in data["devices"] if only is None or d["status"] == only]
    shown = devices if limit == 0 else devices[:limit]
    tail = [Text(footer, style="dim", no_wrap=True, overflow="ellipsis")] if footer else []
    if console is not None:
        shown = shown[: _rows_that_fit(console, parts + tail)]
    joined = any(d.get("joined_at") for d in shown)  # a dynamic campaign's devices that came later
    parts.append(
        table(
            ["device", "batch", "status", "reason", "attempts"] + (["joined"] if joined else []),
            [
                (
                    d["device"],
                    d["batch"] or "",
                    plain(d["status"], style=STATUS_STYLE.get(d["status"], "")),
                    d["reason"],
                    d["attempts"] or "",
                )
                + ((short_time(d["joined_at"]),) if joined else ())
                for d in shown
            ],
            one_line=console is not None,
        )
    )
    more = (s["total"] if only is None else s[only]) - len(shown)  # ``devices`` may hold the shown ones only
    if more > 0:
        parts.append(
            Text(
                f"… {more} more device(s); --limit 0 shows all, --status filters, -o json gives everything",
                style="dim",
                no_wrap=True,
                overflow="ellipsis",
            )
        )
    return Group(*parts, *tail)


# Lines the device table takes besides its rows (top border, header, its rule, bottom
# border), and the "N more" line under it.
_TABLE_FRAME = 4 + 1


def _rows_that_fit(console: Any, above: list[Any]) -> int:
    """Device rows (one line each) that fit the terminal's height under ``above``: a live
    view taller than the terminal cannot be redrawn in place."""
    from rich.console import Group

    used = len(console.render_lines(Group(*above), console.options, pad=False))
    return max(1, console.height - used - _TABLE_FRAME)


#: The header's counts: where a rollout stands first, then the other statuses as listed.
_FIRST = ("valid", "waiting", "syncing", "pending")


def _header(data: dict[str, Any], gap: str, devices: str) -> Any:
    """``roll  [running]  job 3 running  120 devices: 80 valid  40 waiting``, with ``gap``
    between its parts and ``devices`` after the device count."""
    from rich.text import Text

    from campaignctl.supervision import DEVICE_STATES

    s, job = data["summary"], data["job"]
    counts = [
        (f"{s[state]} {state}", STATUS_STYLE[state])
        for state in (*_FIRST, *(state for state in DEVICE_STATES if state not in _FIRST))
        if s[state] or state in ("valid", "waiting")
    ] + ([(f"({s['joined']} joined)", "cyan")] if s.get("joined") else [])
    return Text.assemble(
        plain(data["campaign"], limit=None, style="bold"),
        f"{gap}[{data['status']}]",
        f"{gap}job {job['id']} {job['status']}"
        if job
        else (
            f"{gap}starts at {short_time(data['start_at'])} UTC"
            if data["status"] == "scheduled"
            else f"{gap}not launched"
        ),
        f"{gap}{s['total']} {devices}".replace(" :", ":"),
        *[part for count in counts for part in (gap, count)][1:],
        no_wrap=True,
        overflow="ellipsis",
    )


class OneLine:
    """The first of ``texts`` that fits the width it is given, else the last one cut with
    an ellipsis: a header that keeps its counts in 80 columns, on one line."""

    def __init__(self, *texts: Any) -> None:
        self.texts = texts

    def __rich_console__(self, console: Any, options: Any) -> Any:
        yield next((t for t in self.texts if t.cell_len <= options.max_width), self.texts[-1])


def _batch_row(batch: dict[str, Any]) -> tuple[Any, ...]:
    c = batch["summary"]
    return (
        batch["number"],
        batch["size"],
        batch["status"],
        c["valid"],
        c["failed"] + c["invalid"] + c["timed_out"],
        short_time(batch["started_at"]),
        batch["reason"],
    )


COMMANDS = [create, apply, list_, show, delete, launch, status]
