"""``campaignctl plan | rollback``"""

from __future__ import annotations

from typing import Any, List, Optional

import typer

from campaignctl.cli.common import (
    CampaignArgument,
    Output,
    OutputOption,
    echo,
    engine,
    fmt_value,
    info,
    print_json,
    show_table,
)

#: ``plan --strict`` found conflicts or devices left out.
EXIT_PLAN_FINDINGS = 6
#: Rows of each plan table shown (-o json has them all).
SHOWN = 20


def plan(
    ctx: typer.Context,
    name: Optional[str] = typer.Argument(None, metavar="NAME", help="A draft or scheduled campaign."),
    file: Optional[str] = typer.Option(
        None, "--file", "-f", metavar="FILE", help="A manifest not stored (YAML; - for stdin)."
    ),
    strict: bool = typer.Option(
        False, "--strict", help=f"Exit {EXIT_PLAN_FINDINGS} when there are conflicts or devices left out."
    ),
    output: Output = OutputOption,
) -> None:
    """What a launch would do, without writing anything: devices, value changes, batches,
    conflicts with other campaigns, and how long it takes."""
    from campaignctl import planning

    if (name is None) == (file is None):
        raise typer.BadParameter("give a campaign NAME or --file FILE (one of them)", param_hint="NAME / --file")
    spec = None
    if file is not None:
        from campaignctl.manifests import load_campaign

        spec = load_campaign(file)
    data = planning.plan(engine(ctx), name=name, spec=spec)
    findings = bool(data["conflicts"] or data["devices"]["excluded"])
    if output is Output.json:
        print_json(data)
    else:
        _render(data)
    if strict and findings:
        info(
            f"plan: {len(data['conflicts'])} conflict(s), {len(data['devices']['excluded'])} device(s) left out "
            f"(exit {EXIT_PLAN_FINDINGS}, --strict)"
        )
        raise typer.Exit(EXIT_PLAN_FINDINGS)


def _render(data: dict[str, Any]) -> None:
    from campaignctl.planning import FIRST_MEMBERS, end_of
    from campaignctl.rollout import format_duration

    devices = data["devices"]
    echo(
        f"plan for campaign {data['campaign']}: {devices['count']} device(s), {devices['delivered']} to deliver, "
        f"{len(devices['excluded'])} left out; rollout: {data['rollout']}"
    )
    firmware = data["firmware"]
    if firmware:
        echo(
            f"firmware: {firmware['type']} {firmware['version']}"
            + "".join(f"; RECALLED for {r['device_type']} ({r['reason']})" for r in firmware["recalled"] or ())
        )
    if devices["excluded"]:
        _table(
            "left out",
            ["device", "status", "reason"],
            [(e["device"], e["status"], e["reason"]) for e in devices["excluded"]],
        )
    if data["changes"]:
        show_table(
            ["key", "changed", "unchanged", "new", "most frequent changes"],
            [
                (
                    key,
                    c["changed"],
                    c["unchanged"],
                    c["new"],
                    "; ".join(f"{_value(e['from'])} → {_value(e['to'])} on {e['devices']}" for e in c["examples"]),
                )
                for key, c in data["changes"].items()
            ],
            title="changes",
        )
    if data["batches"]:
        _table(
            "batches",
            ["batch", "devices", "first devices"],
            [
                (
                    b["number"],
                    b["size"],
                    ", ".join(b["devices"][:FIRST_MEMBERS]) + (" …" if b["size"] > FIRST_MEMBERS else ""),
                )
                for b in data["batches"]
            ],
        )
    if data["conflicts"]:
        _table(
            "conflicts",
            ["campaign", "status", "priority", "device", "key"],
            [(c["campaign"], c["status"], c["priority"], c["device"], c["key"]) for c in data["conflicts"]],
        )
    if data.get("window"):
        echo(f"maintenance windows: {data['window']['text']} (deliveries only inside the windows)")
    seconds = data["estimate_seconds"]
    echo(
        f"estimate: starts {data['start_at']}, at least {format_duration(seconds) if seconds else '0s'} "
        f"(until {end_of(data['start_at'], seconds)}) from the rate limit and bake times"
    )


def _value(value: Any) -> str:
    return "(none)" if value is None else fmt_value(value)


def _table(title: str, columns: list[str], rows: list[tuple[Any, ...]]) -> None:
    show_table(columns, rows[:SHOWN], title=f"{title} ({len(rows)})")
    if len(rows) > SHOWN:
        echo(f"… {len(rows) - SHOWN} more; -o json lists them all")


def rollback(
    ctx: typer.Context,
    name: str = CampaignArgument,
    new_name: Optional[str] = typer.Option(
        None, "--name", metavar="NAME", help="The rollback campaign's name [default: NAME-rollback]."
    ),
    device: Optional[List[str]] = typer.Option(None, "--device", metavar="NAME", help="Only this device (repeatable)."),
    launch: bool = typer.Option(False, "--launch", help="Launch the rollback at once."),
    output: Output = OutputOption,
) -> None:
    """Create a campaign that puts back, on every device NAME wrote to, the value it had
    before (an OTA campaign: the previous firmware of the registry). Devices changed by
    someone since are left alone and listed."""
    from campaignctl import rollback as rollbacks

    db = engine(ctx)
    result = rollbacks.create(db, name, new_name=new_name, devices=device)
    created = result["campaign"]
    firmware = result["firmware"]
    info(
        f"campaign {created}: created, rolls back {name} on {result['devices']} device(s)"
        + (f" to firmware {firmware['type']} {firmware['version']}" if firmware else "")
    )
    for left in result["left_alone"][:SHOWN]:
        info(f"left alone: {left['device']}: {left['reason']}")
    if len(result["left_alone"]) > SHOWN:
        info(f"… {len(result['left_alone']) - SHOWN} more left alone (-o json lists them)")
    if not launch:
        if output is Output.json:
            print_json(result)
        else:
            info(f"review it with `campaignctl plan {created}`, then `campaignctl launch {created}`")
        return
    from campaignctl import jobs
    from campaignctl.cli.campaigns import advance_job

    job_id, owner = jobs.launch(db, created, now=True)
    assert job_id is not None  # now=True: started, never only scheduled
    info(f"campaign {created}: launched, job {job_id}")
    if output is Output.json:
        print_json(result)
    advance_job(db, job_id, owner, None if output is Output.json else output)
