"""``campaignctl firmwares ...``"""

from __future__ import annotations

from typing import Optional

import typer

from campaignctl.cli.common import Output, OutputOption, engine, info, print_json, show_table

app = typer.Typer(no_args_is_help=True)

DeviceTypeOption = typer.Option(..., "--device-type", metavar="NAME", help="Device type the firmware is built for.")
FirmwareTypeOption = typer.Option(
    ..., "--firmware-type", metavar="NAME", help="Firmware type of that device type (e.g. app)."
)
VersionOption = typer.Option(..., "--version", metavar="VERSION", help="The firmware's version (e.g. 2.4.1).")


@app.command("add")
def add(
    ctx: typer.Context,
    device_type: str = DeviceTypeOption,
    firmware_type: str = FirmwareTypeOption,
    version: str = VersionOption,
    url: str = typer.Option(..., "--url", metavar="URL", help="Where devices download it."),
    token_env: Optional[str] = typer.Option(
        None, "--token-env", metavar="VAR", help="Environment variable holding the download token (secret)."
    ),
    sha256: Optional[str] = typer.Option(
        None, "--sha256", metavar="HEX", help="SHA-256 of the file, for devices to check."
    ),
    size: Optional[int] = typer.Option(None, "--size", metavar="BYTES", help="Size of the file."),
    description: Optional[str] = typer.Option(
        None, "--description", metavar="TEXT", help="A note shown by firmwares list."
    ),
) -> None:
    """Add a firmware version to the registry."""
    from campaignctl import firmwares

    firmwares.add(
        engine(ctx),
        device_type=device_type,
        firmware_type=firmware_type,
        version=version,
        url=url,
        token_env=token_env,
        sha256=sha256,
        size=size,
        description=description,
    )
    info(f"firmware {device_type} {firmware_type} {version} added")


@app.command("list")
def list_(
    ctx: typer.Context,
    device_type: Optional[str] = typer.Option(
        None, "--device-type", metavar="NAME", help="Only firmwares of this device type."
    ),
    show_secrets: bool = typer.Option(False, "--show-secrets", help="Print tokens instead of ***."),
    output: Output = OutputOption,
) -> None:
    """List the registry."""
    from campaignctl import firmwares

    rows = firmwares.list_firmwares(engine(ctx), device_type=device_type, show_secrets=show_secrets)
    if output is Output.json:
        print_json(rows)
        return
    show_table(
        ["device type", "firmware type", "version", "url", "token", "sha256", "size", "description", "recalled"],
        [
            (
                r["device_type"],
                r["firmware_type"],
                r["version"],
                r["url"],
                r["token"],
                (r["sha256"] or "")[:12],
                r["size"],
                r["description"],
                r["recalled"] and f"{r['recalled']['at'][:16]}: {r['recalled']['reason']}",
            )
            for r in rows
        ],
    )


@app.command("recall")
def recall(
    ctx: typer.Context,
    device_type: str = DeviceTypeOption,
    firmware_type: str = FirmwareTypeOption,
    version: str = VersionOption,
    reason: str = typer.Option(..., "--reason", metavar="REASON", help="Why (shown on the campaigns it stops)."),
    cancel: bool = typer.Option(False, "--cancel", help="Cancel the campaigns shipping it instead of pausing."),
    output: Output = OutputOption,
) -> None:
    """Recall a firmware version: campaigns shipping it are paused (or cancelled), and no
    campaign may ship it any more."""
    from campaignctl import firmwares

    result = firmwares.recall(
        engine(ctx), device_type=device_type, firmware_type=firmware_type, version=version, reason=reason, cancel=cancel
    )
    stopped = result["cancelled" if cancel else "paused"]
    if output is Output.json:
        print_json(result)
    info(
        f"firmware {device_type} {firmware_type} {version} recalled; "
        + (f"{'cancelled' if cancel else 'paused'}: {', '.join(stopped)}" if stopped else "no campaign was shipping it")
    )


@app.command("unrecall")
def unrecall(
    ctx: typer.Context,
    device_type: str = DeviceTypeOption,
    firmware_type: str = FirmwareTypeOption,
    version: str = VersionOption,
) -> None:
    """Lift a recall (campaigns it paused stay paused until resumed)."""
    from campaignctl import firmwares

    firmwares.unrecall(engine(ctx), device_type=device_type, firmware_type=firmware_type, version=version)
    info(
        f"firmware {device_type} {firmware_type} {version}: recall lifted (paused campaigns stay paused until resumed)"
    )
