"""``campaignctl simulate``"""

from __future__ import annotations

from typing import Optional

import typer

from campaignctl.cli.common import Output, OutputOption, echo, engine, info, print_json


def simulate(ctx: typer.Context,
             interface: Optional[str] = typer.Option(None, "--interface", help="Only the devices of this interface."),
             devices: Optional[int] = typer.Option(None, "--devices", min=1, metavar="N",
                                                   help="Only the first N devices (by name) [default: all]."),
             apply_delay: float = typer.Option(1.0, "--apply-delay", min=0.0, metavar="SECONDS",
                                               help="Time to apply a document (and again to install a firmware)."),
             fail_rate: float = typer.Option(0.0, "--fail-rate", min=0.0, max=1.0, metavar="P",
                                             help="Share of devices that keep their old values and report an error."),
             offline_rate: float = typer.Option(0.0, "--offline-rate", min=0.0, max=1.0, metavar="P",
                                                help="Share of devices that come online only later."),
             offline_delay: float = typer.Option(5.0, "--offline-delay", min=0.0, metavar="SECONDS",
                                                 help="Late devices come online within this time."),
             poll_interval: float = typer.Option(1.0, "--poll-interval", min=0.05, metavar="SECONDS",
                                                 help="How often HTTP devices poll."),
             server: Optional[str] = typer.Option(None, "--server", metavar="URL",
                                                  help="Device API for HTTP devices [default: the interface's url]."),
             seed: Optional[int] = typer.Option(None, "--seed", help="Same seed, same failing and late devices."),
             duration: Optional[float] = typer.Option(None, "--duration", min=0.0, metavar="SECONDS",
                                                      help="Stop after this time [default: until Ctrl-C]."),
             output: Output = OutputOption) -> None:
    """Run virtual devices that receive documents and report state over the real protocols."""
    from campaignctl.simulator import Options, simulate as run

    options = Options(apply_delay=apply_delay, fail_rate=fail_rate, offline_rate=offline_rate,
                      offline_delay=offline_delay, seed=seed, duration=duration, poll_interval=poll_interval)
    stats = run(engine(ctx), options, interface=interface, devices=devices, server=server, info=info)
    if output is Output.json:
        print_json(stats.to_dict())
    else:
        echo(f"{stats.devices} devices ({stats.late} late, {stats.failing} failing): {stats.documents} documents, "
             f"{stats.applied} applied, {stats.failed} failed, {stats.reports} state reports, "
             f"{stats.errors} transport errors, {stats.reconnects} reconnects")
