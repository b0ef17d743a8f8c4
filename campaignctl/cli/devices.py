"""``campaignctl devices ...``"""

from __future__ import annotations

from typing import List, Optional

import typer

from campaignctl.cli.common import (Output, OutputOption, engine, fmt_value, info, parse_tags, print_json,
                                    show_table, tags_text)

app = typer.Typer(no_args_is_help=True)


@app.command("import")
def import_(ctx: typer.Context,
            file: str = typer.Argument(..., metavar="FILE", help="Fleet manifest: YAML, or CSV (name,type,interface,tags)."),
            output: Output = OutputOption) -> None:
    """Create or update interfaces, device types and devices (upsert by name)."""
    from campaignctl import fleet

    result = fleet.import_fleet(engine(ctx), file)
    if output is Output.json:
        print_json(result.to_dict())
        return
    for what, counts in (("interfaces", result.interfaces), ("device types", result.device_types),
                         ("devices", result.devices)):
        if what == "devices" or counts.created or counts.updated or counts.unchanged:
            typer.echo(f"{what}: {counts.created} created, {counts.updated} updated, {counts.unchanged} unchanged")


@app.command("list")
def list_(ctx: typer.Context,
          type: Optional[str] = typer.Option(None, "--type", help="Only devices of this device type."),
          tag: Optional[List[str]] = typer.Option(None, "--tag", metavar="K=V", help="Only devices with this tag (repeatable)."),
          interface: Optional[str] = typer.Option(None, "--interface", help="Only devices on this interface."),
          output: Output = OutputOption) -> None:
    """List devices."""
    from campaignctl import fleet

    devices = fleet.list_devices(engine(ctx), type=type, tags=parse_tags(tag), interface=interface)
    if output is Output.json:
        print_json(devices)
        return
    show_table(["name", "type", "interface", "tags"],
               [(d["name"], d["type"], d["interface"], tags_text(d["tags"])) for d in devices])
    info(f"{len(devices)} device(s)")


@app.command("show")
def show(ctx: typer.Context, name: str = typer.Argument(..., metavar="NAME"),
         show_secrets: bool = typer.Option(False, "--show-secrets", help="Print secret values instead of ***."),
         output: Output = OutputOption) -> None:
    """A device and its configuration entries: desired and reported values."""
    from campaignctl import fleet

    device = fleet.show_device(engine(ctx), name, show_secrets=show_secrets)
    if output is Output.json:
        print_json(device)
        return
    typer.echo(f"{device['name']}  type={device['type']}  interface={device['interface']}  "
               f"tags={tags_text(device['tags']) or '-'}  version={device['version']}")
    show_table(["key", "desired", "set by", "desired at", "reported", "reported at"],
               [(e["key"], fmt_value(e["desired"]), e["desired_by"], e["desired_at"], fmt_value(e["reported"]),
                 e["reported_at"]) for e in device["configuration"]])


@app.command("set-config")
def set_config(ctx: typer.Context, name: str = typer.Argument(..., metavar="NAME"),
               values: List[str] = typer.Argument(..., metavar="KEY=VALUE|KEY:=JSON..."),
               secret: bool = typer.Option(False, "--secret", help="Mark these values secret (shown as ***)."),
               no_deliver: bool = typer.Option(False, "--no-deliver", help="Only write the database."),
               output: Output = OutputOption) -> None:
    """Change a device's desired configuration and deliver it to its interface."""
    from campaignctl import fleet
    from campaignctl.errors import CampaignctlError
    from campaignctl.values import parse_assignments

    result = fleet.set_config(engine(ctx), name, parse_assignments(values), secret=secret, deliver=not no_deliver)
    if output is Output.json:
        print_json({"device": result.device, "version": result.version, "delivered": result.delivered,
                    "error": result.error})
    elif result.delivered:
        info(f"{name}: version {result.version} written and delivered")
    else:
        info(f"{name}: version {result.version} written")
    if result.error:
        raise CampaignctlError(f"{name}: version {result.version} is saved but could not be delivered: {result.error}")


@app.command("report")
def report(ctx: typer.Context, name: str = typer.Argument(..., metavar="NAME"),
           values: List[str] = typer.Argument(..., metavar="KEY=VALUE|KEY:=JSON...")) -> None:
    """Record reported state as if the device had sent it."""
    from campaignctl import fleet
    from campaignctl.values import parse_assignments

    fleet.report_state(engine(ctx), name, parse_assignments(values))
    info(f"{name}: state recorded")


@app.command("credentials")
def credentials_(ctx: typer.Context, name: str = typer.Argument(..., metavar="NAME")) -> None:
    """Print the secret of a device on an http interface (alone, on stdout)."""
    from campaignctl import credentials

    typer.echo(credentials.show_secret(engine(ctx), name))


@app.command("rotate-secret")
def rotate_secret(ctx: typer.Context, name: str = typer.Argument(..., metavar="NAME")) -> None:
    """Replace the secret of a device on an http interface; the old one stops working."""
    from campaignctl import credentials

    credentials.rotate(engine(ctx), name)
    info(f"{name}: secret replaced (campaignctl devices credentials {name} prints it)")
