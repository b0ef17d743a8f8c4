"""``campaignctl simulate``"""

from __future__ import annotations

from typing import Optional

import typer

from campaignctl.cli.common import Output, OutputOption, duration, echo, engine, print_json, stop_on_sigterm
from campaignctl.cli.logging_options import LogFormat, LogFormatOption, LogLevel, LogLevelOption, start_logging

#: The shortest --poll-interval: below, a fleet's polls would only load the server.
MIN_POLL = 0.05


def simulate(
    ctx: typer.Context,
    interface: Optional[str] = typer.Option(
        None, "--interface", metavar="NAME", help="Only the devices of this interface."
    ),
    devices: Optional[int] = typer.Option(
        None, "--devices", min=1, metavar="N", help="Only the first N devices (by name) [default: all]."
    ),
    apply_delay: str = typer.Option(
        "1s", "--apply-delay", metavar="DURATION", help="Time to apply a document (and again to install a firmware)."
    ),
    fail_rate: float = typer.Option(
        0.0,
        "--fail-rate",
        min=0.0,
        max=1.0,
        metavar="P",
        help="Share of devices that keep their old values and report an error.",
    ),
    offline_rate: float = typer.Option(
        0.0, "--offline-rate", min=0.0, max=1.0, metavar="P", help="Share of devices that come online only later."
    ),
    offline_delay: str = typer.Option(
        "5s", "--offline-delay", metavar="DURATION", help="Late devices come online within this time."
    ),
    poll_interval: str = typer.Option(
        "1s", "--poll-interval", metavar="DURATION", help=f"How often HTTP devices poll (at least {MIN_POLL:g}s)."
    ),
    server: Optional[str] = typer.Option(
        None, "--server", metavar="URL", help="Device API for HTTP devices [default: the interface's url]."
    ),
    seed: Optional[int] = typer.Option(None, "--seed", metavar="N", help="Same seed, same failing and late devices."),
    run_for: Optional[str] = typer.Option(
        None, "--duration", metavar="DURATION", help="Stop after this time [default: until Ctrl-C]."
    ),
    log_level: LogLevel = LogLevelOption,
    log_format: LogFormat = LogFormatOption,
    output: Output = OutputOption,
) -> None:
    """Run virtual devices that receive documents and report state over the real protocols."""
    from campaignctl.simulator import Options
    from campaignctl.simulator import simulate as run

    poll = duration(poll_interval, "--poll-interval")
    if poll < MIN_POLL:
        raise typer.BadParameter(f"at least {MIN_POLL:g}s", param_hint="--poll-interval")
    options = Options(
        apply_delay=duration(apply_delay, "--apply-delay"),
        fail_rate=fail_rate,
        offline_rate=offline_rate,
        offline_delay=duration(offline_delay, "--offline-delay"),
        seed=seed,
        duration=None if run_for is None else duration(run_for, "--duration"),
        poll_interval=poll,
    )
    log = start_logging(log_level, log_format)
    stop_on_sigterm()  # a service manager's stop ends it as Ctrl-C does: the counts are printed
    stats = run(engine(ctx), options, interface=interface, devices=devices, server=server, info=log.info)
    if output is Output.json:
        print_json(stats.to_dict())
    else:
        echo(
            f"{stats.devices} devices ({stats.late} late, {stats.failing} failing): {stats.documents} documents, "
            f"{stats.applied} applied, {stats.failed} failed, {stats.reports} state reports, "
            f"{stats.errors} transport errors, {stats.reconnects} reconnects"
        )
