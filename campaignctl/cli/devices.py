"""``campaignctl devices ...``"""

from __future__ import annotations

from typing import List, Optional

import typer

from campaignctl.cli.common import (
    DeviceArgument,
    Output,
    OutputOption,
    echo,
    engine,
    fmt_value,
    info,
    parse_tags,
    print_json,
    show_table,
    tags_text,
)

app = typer.Typer(no_args_is_help=True)


@app.command("import")
def import_(
    ctx: typer.Context,
    file: str = typer.Argument(..., metavar="FILE", help="Fleet manifest: YAML, or CSV (name,type,interface,tags)."),
    output: Output = OutputOption,
) -> None:
    """Create or update interfaces, device types and devices (upsert by name)."""
    from campaignctl import fleet

    result = fleet.import_fleet(engine(ctx), file)
    if output is Output.json:
        print_json(result.to_dict())
        return
    for what, counts in (
        ("interfaces", result.interfaces),
        ("device types", result.device_types),
        ("devices", result.devices),
    ):
        if what == "devices" or counts.created or counts.updated or counts.unchanged:
            echo(f"{what}: {counts.created} created, {counts.updated} updated, {counts.unchanged} unchanged")


@app.command("list")
def list_(
    ctx: typer.Context,
    type: Optional[str] = typer.Option(None, "--type", metavar="NAME", help="Only devices of this device type."),
    tag: Optional[List[str]] = typer.Option(
        None, "--tag", metavar="KEY=VALUE", help="Only devices with this tag (repeatable)."
    ),
    interface: Optional[str] = typer.Option(
        None, "--interface", metavar="NAME", help="Only devices on this interface."
    ),
    output: Output = OutputOption,
) -> None:
    """List devices."""
    from campaignctl import fleet

    devices = fleet.list_devices(engine(ctx), type=type, tags=parse_tags(tag), interface=interface)
    if output is Output.json:
        print_json(devices)
        return
    show_table(
        ["name", "type", "interface", "tags"],
        [(d["name"], d["type"], d["interface"], tags_text(d["tags"])) for d in devices],
    )
    info(f"{len(devices)} device(s)")


@app.command("show")
def show(
    ctx: typer.Context,
    name: str = DeviceArgument,
    show_secrets: bool = typer.Option(False, "--show-secrets", help="Print secret values instead of ***."),
    output: Output = OutputOption,
) -> None:
    """A device and its configuration entries: desired and reported values."""
    from campaignctl import fleet

    device = fleet.show_device(engine(ctx), name, show_secrets=show_secrets)
    if output is Output.json:
        print_json(device)
        return
    echo(
        f"{device['name']}  type={device['type']}  interface={device['interface']}  "
        f"tags={tags_text(device['tags']) or '-'}  version={device['version']}"
    )
    show_table(
        ["key", "desired", "set by", "desired at", "reported", "reported at"],
        [
            (
                e["key"],
                fmt_value(e["desired"]),
                e["desired_by"],
                e["desired_at"],
                fmt_value(e["reported"]),
                e["reported_at"],
            )
            for e in device["configuration"]
        ],
    )


@app.command("set-config")
def set_config(
    ctx: typer.Context,
    name: str = DeviceArgument,
    values: Optional[List[str]] = typer.Argument(
        None, metavar="KEY=VALUE|KEY:=JSON...", help="Values to set: KEY=VALUE (a string) or KEY:=JSON."
    ),
    secret: bool = typer.Option(False, "--secret", help="Mark these values secret (shown as ***)."),
    secret_stdin: Optional[str] = typer.Option(
        None,
        "--secret-stdin",
        metavar="KEY",
        help="Read KEY's value from standard input, one trailing newline removed (implies --secret).",
    ),
    secret_env: Optional[List[str]] = typer.Option(
        None,
        "--secret-env",
        metavar="KEY=VAR",
        help="Take KEY's value from environment variable VAR (implies --secret; repeatable).",
    ),
    no_deliver: bool = typer.Option(False, "--no-deliver", help="Only write the database."),
    output: Output = OutputOption,
) -> None:
    """Change a device's desired configuration and deliver it to its interface."""
    import sys

    from campaignctl import credentials, fleet
    from campaignctl.errors import CampaignctlError
    from campaignctl.values import parse_assignments

    hidden = bool(secret_stdin or secret_env)
    # KEY=VALUE arguments are optional when a value comes from stdin or the environment.
    given = parse_assignments(values or []) if values or not hidden else {}
    assignments = credentials.with_hidden_values(
        given, stdin_key=secret_stdin, env_pairs=secret_env or [], stdin=sys.stdin.buffer
    )
    result = fleet.set_config(engine(ctx), name, assignments, secret=secret or hidden, deliver=not no_deliver)
    if output is Output.json:
        print_json(
            {"device": result.device, "version": result.version, "delivered": result.delivered, "error": result.error}
        )
    elif result.delivered:
        info(f"{name}: version {result.version} written and delivered")
    else:
        info(f"{name}: version {result.version} written")
    if result.error:
        raise CampaignctlError(f"{name}: version {result.version} is saved but could not be delivered: {result.error}")


@app.command("report")
def report(
    ctx: typer.Context,
    name: str = DeviceArgument,
    values: List[str] = typer.Argument(
        ..., metavar="KEY=VALUE|KEY:=JSON...", help="Reported values: KEY=VALUE (a string) or KEY:=JSON."
    ),
) -> None:
    """Record reported state as if the device had sent it."""
    from campaignctl import fleet
    from campaignctl.values import parse_assignments

    fleet.report_state(engine(ctx), name, parse_assignments(values))
    info(f"{name}: state recorded")


@app.command("credentials")
def credentials_(ctx: typer.Context, name: str = DeviceArgument) -> None:
    """Print the secret of a device on an http interface (alone, on stdout)."""
    from campaignctl import credentials

    typer.echo(credentials.show_secret(engine(ctx), name))


@app.command("rotate-secret")
def rotate_secret(ctx: typer.Context, name: str = DeviceArgument) -> None:
    """Replace the secret of a device on an http interface; the old one stops working."""
    from campaignctl import credentials

    credentials.rotate(engine(ctx), name)
    info(f"{name}: secret replaced (campaignctl devices credentials {name} prints it)")


@app.command("resync")
def resync(
    ctx: typer.Context,
    interface: Optional[str] = typer.Option(
        None, "--interface", metavar="NAME", help="Only the devices of this interface."
    ),
    campaign: Optional[str] = typer.Option(
        None, "--campaign", metavar="NAME", help="Only the devices of this campaign."
    ),
    device: Optional[List[str]] = typer.Option(None, "--device", metavar="NAME", help="Only this device (repeatable)."),
    attempts: int = typer.Option(3, "--attempts", min=1, metavar="N", help="Tries per device."),
    ack_timeout: str = typer.Option(
        "10s",
        "--ack-timeout",
        metavar="DURATION",
        help="Connect / acknowledgement timeout of one delivery (at least 0.1s).",
    ),
    processes: Optional[int] = typer.Option(
        None,
        "--processes",
        min=1,
        max=64,
        metavar="N",
        help="Processes sending (default: one per CPU, up to 4, from 8,000 devices on).",
    ),
    output: Output = OutputOption,
) -> None:
    """Send the devices' current documents again, same version (after a broker lost its retained messages)."""
    from campaignctl import resync as library
    from campaignctl.cli.common import duration, progress_bar
    from campaignctl.errors import CampaignctlError
    from campaignctl.interfaces.base import DeliveryPolicy

    timeout = duration(ack_timeout, "--ack-timeout", minimum=0.1)

    def polled(plan: "library.Result") -> str:
        return f", {plan.fetch_themselves} fetch it themselves (http)" if plan.fetch_themselves else ""

    def selected(plan: "library.Result") -> None:
        for name in plan.without_document:
            info(f"{name}: nothing desired, no document to resend")
        info(
            f"{plan.devices} device(s) with a document: {plan.devices - plan.fetch_themselves} to resend" + polled(plan)
        )

    with progress_bar() as update:
        result = library.resync(
            engine(ctx),
            interface=interface,
            campaign=campaign,
            devices=device or (),
            policy=DeliveryPolicy(attempts=attempts, timeout=timeout, backoff=0.5),
            processes=processes,
            on_selected=selected,
            warn=info,
            progress=lambda done, total: update("resend", done, total),
        )
    summary = result.to_dict()
    if output is Output.json:
        print_json(summary)
    else:
        show_table(
            ["interface", "type", "devices", "resent", "failed", "note"],
            [
                (
                    i["name"],
                    i["type"],
                    i["devices"],
                    i["resent"],
                    i["failed"],
                    "devices fetch it themselves" if i["fetch_themselves"] else "",
                )
                for i in summary["interfaces"]
            ],
        )
        if summary["errors"]:
            show_table(
                ["error", "devices", "first devices"],
                [(e["error"], e["devices"], ", ".join(e["examples"])) for e in summary["errors"]],
            )
        info(f"{result.resent} resent, {result.failed} failed" + polled(result))
    if result.failed:
        raise CampaignctlError(f"{result.failed} device(s) could not be resent")
