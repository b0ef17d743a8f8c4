"""``campaignctl create | apply | list | show | delete | launch | status``"""

from __future__ import annotations

import time
from typing import Any, Optional

import typer

from campaignctl.cli.common import (Output, OutputOption, engine, fmt_value, info, print_json, progress_bar,
                                    show_table, stderr_console, stdout_console, table)

FileOption = typer.Option(..., "--file", "-f", metavar="FILE", help="Campaign manifest (YAML; - for stdin).")


def create(ctx: typer.Context, file: str = FileOption) -> None:
    """Create a campaign from a manifest (error if the name exists)."""
    from campaignctl import campaigns
    from campaignctl.manifests import load_campaign

    result = campaigns.create(engine(ctx), load_campaign(file))
    typer.echo(f"campaign {result.name}: created")


def apply(ctx: typer.Context, file: str = FileOption) -> None:
    """Create a campaign, or update it while it is a draft (no-op when identical)."""
    from campaignctl import campaigns
    from campaignctl.manifests import load_campaign

    result = campaigns.apply(engine(ctx), load_campaign(file))
    changes = f" ({', '.join(result.changes)})" if result.changes else ""
    typer.echo(f"campaign {result.name}: {result.action}{changes}")


def list_(ctx: typer.Context, output: Output = OutputOption) -> None:
    """List campaigns."""
    from campaignctl import campaigns

    rows = campaigns.list_campaigns(engine(ctx))
    if output is Output.json:
        print_json(rows)
        return
    show_table(["name", "status", "devices", "job", "launched", "description"],
               [(r["name"], r["status"], r["devices"], r["job"] and f"{r['job']['id']} ({r['job']['status']})",
                 r["launched_at"], r["description"]) for r in rows])


def show(ctx: typer.Context, name: str = typer.Argument(...),
         show_secrets: bool = typer.Option(False, "--show-secrets", help="Print secret values instead of ***."),
         output: Output = OutputOption) -> None:
    """A campaign's definition."""
    from campaignctl import campaigns

    data = campaigns.show(engine(ctx), name, show_secrets=show_secrets)
    if output is Output.json:
        print_json(data)
        return
    sel = data["devices"]
    typer.echo(f"{data['name']}  [{data['status']}]  {data['description'] or ''}".rstrip())
    typer.echo(f"devices: {sel['count']} ({', '.join(filter(None, [_names(sel['names']), _selector(sel['selector'])]))})")
    if data["firmware"]:
        typer.echo(f"firmware: {data['firmware']['type']} {data['firmware']['version']}")
    keys = sorted(set(data["configurations"]) | set(data["expected_state"]))
    if keys:
        show_table(["key", "configuration", "expected state"],
                   [(k, fmt_value(data["configurations"].get(k)), fmt_value(data["expected_state"].get(k)))
                    for k in keys])
    if data["jobs"]:
        typer.echo("jobs: " + ", ".join(f"{j['id']} ({j['status']})" for j in data["jobs"]))


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


def delete(ctx: typer.Context, name: str = typer.Argument(...)) -> None:
    """Delete a campaign that was not launched."""
    from campaignctl import campaigns

    campaigns.delete(engine(ctx), name)
    info(f"campaign {name}: deleted")


def launch(ctx: typer.Context, name: str = typer.Argument(...),
           attempts: int = typer.Option(5, "--attempts", min=1, help="Delivery tries per device."),
           timeout: float = typer.Option(10.0, "--timeout", min=0.1, metavar="SECONDS",
                                         help="Connect / acknowledgement timeout."),
           backoff: float = typer.Option(1.0, "--backoff", min=0.0, metavar="SECONDS",
                                         help="First wait between tries (doubles, with jitter)."),
           max_backoff: float = typer.Option(30.0, "--max-backoff", min=0.0, metavar="SECONDS"),
           window: int = typer.Option(1000, "--window", min=1, max=60000,
                                      help="Deliveries in flight at once per interface."),
           chunk_size: int = typer.Option(5000, "--chunk-size", min=1, metavar="N",
                                          help="Devices written per database transaction."),
           output: Output = OutputOption) -> None:
    """Launch a campaign: write the desired configurations, then deliver them."""
    from campaignctl import jobs
    from campaignctl.interfaces.base import DeliveryPolicy

    policy = DeliveryPolicy(attempts=attempts, timeout=timeout, backoff=backoff, max_backoff=max_backoff,
                            window=window)
    db = engine(ctx)
    job_id, owner = jobs.launch(db, name, policy=policy, chunk_size=chunk_size)
    info(f"campaign {name}: launched, job {job_id}")
    _run_job(lambda progress: jobs.run(db, job_id, owner, progress=progress), job_id, output)


def _run_job(run: Any, job_id: int, output: Output) -> None:
    from campaignctl.errors import CampaignctlError

    started = time.monotonic()
    try:
        with progress_bar() as progress:
            result = run(progress)
    except KeyboardInterrupt:
        info(f"interrupted: job {job_id} stopped; finish it with: campaignctl jobs resume {job_id}")
        raise typer.Exit(130)
    counts = result["counts"]
    if output is Output.json:
        print_json(result)
    else:
        typer.echo(f"job {job_id}: {result['status']} in {time.monotonic() - started:.1f}s: "
                   f"{counts['delivered']} delivered, {counts['failed']} failed"
                   + (f", {counts['syncing']} waiting for their devices to fetch" if counts["syncing"] else ""))
    if result["status"] == "failed":
        raise CampaignctlError(f"{counts['failed']} device(s) could not be delivered "
                               f"(campaignctl jobs show {job_id})")


STATUS_STYLE = {"valid": "green", "waiting": "yellow", "syncing": "cyan", "pending": "dim",
                "failed": "red", "invalid": "magenta"}


def status(ctx: typer.Context, name: str = typer.Argument(...),
           watch: bool = typer.Option(False, "--watch", "-w", help="Refresh live until interrupted."),
           interval: float = typer.Option(1.0, "--interval", min=0.1, metavar="SECONDS", help="Refresh period of --watch."),
           only: Optional[str] = typer.Option(None, "--status", metavar="STATUS",
                                              help="Only devices with this supervision status."),
           limit: int = typer.Option(100, "--limit", min=0, help="Devices shown in the table (0: all)."),
           output: Output = OutputOption) -> None:
    """The supervision: how the campaign's devices converge."""
    from campaignctl.supervision import DEVICE_STATES, campaign_status

    if only is not None and only not in DEVICE_STATES:
        from campaignctl.errors import InputError

        raise InputError(f"must be one of {', '.join(DEVICE_STATES)}", field="--status")
    db = engine(ctx)
    if output is Output.json:
        data = campaign_status(db, name)
        if only:
            data["devices"] = [d for d in data["devices"] if d["status"] == only]
        print_json(data)
        return
    if not watch:
        stdout_console().print(_status_view(campaign_status(db, name), only, limit))
        return
    from rich.live import Live

    try:
        with Live(_status_view(campaign_status(db, name), only, limit), console=stdout_console(),
                  auto_refresh=False, screen=False) as live:
            while True:
                time.sleep(interval)
                live.update(_status_view(campaign_status(db, name), only, limit), refresh=True)
    except KeyboardInterrupt:
        pass


def _status_view(data: dict[str, Any], only: Optional[str], limit: int) -> Any:
    from rich.console import Group
    from rich.text import Text

    s = data["summary"]
    job = data["job"]
    head = Text.assemble(
        (data["campaign"], "bold"), f"  [{data['status']}]",
        f"  job {job['id']} {job['status']}" if job else "  not launched",
        f"  {s['total']} devices: ",
        *[part for state in ("valid", "waiting", "syncing", "pending", "invalid", "failed")
          for part in ((f"{s[state]} {state}", STATUS_STYLE[state]), "  ")],
    )
    devices = [d for d in data["devices"] if only is None or d["status"] == only]
    shown = devices if limit == 0 else devices[:limit]
    t = table(["device", "status", "reason", "attempts"], [])
    for d in shown:
        t.add_row(d["device"], Text(d["status"], style=STATUS_STYLE[d["status"]]), d["reason"] or "",
                  str(d["attempts"] or ""))
    parts: list[Any] = [head, t]
    if len(shown) < len(devices):
        parts.append(Text(f"… {len(devices) - len(shown)} more device(s); --limit 0 shows all, "
                          "--status filters, -o json gives everything", style="dim"))
    return Group(*parts)


COMMANDS = [create, apply, list_, show, delete, launch, status]
