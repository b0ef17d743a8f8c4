"""``campaignctl demo``"""

from __future__ import annotations

from typing import Optional

import typer


def demo(
    devices: int = typer.Option(300, "--devices", min=1, max=20000, metavar="N", help="Size of the fleet."),
    mqtt: Optional[str] = typer.Option(
        None, "--mqtt", metavar="URL", help="Run over this MQTT broker (mqtt://host:port) instead of HTTP."
    ),
    seed: int = typer.Option(7, "--seed", metavar="N", help="Which devices fail or come late."),
    timeout: str = typer.Option(
        "45s", "--timeout", metavar="DURATION", help="Stop watching after this long (at least 5s)."
    ),
) -> None:
    """A real OTA campaign against a temporary simulated fleet, start to finish."""
    from campaignctl.cli.common import duration
    from campaignctl.demo import Demo

    result = Demo(devices, mqtt, seed=seed, timeout=duration(timeout, "--timeout", minimum=5.0)).run()
    if result["summary"]["valid"] == 0:
        raise typer.Exit(1)
