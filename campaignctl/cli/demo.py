"""``campaignctl demo``"""

from __future__ import annotations

from typing import Optional

import typer


def demo(devices: int = typer.Option(300, "--devices", min=1, max=20000, metavar="N", help="Size of the fleet."),
         mqtt: Optional[str] = typer.Option(None, "--mqtt", metavar="URL",
                                            help="Run over this MQTT broker (mqtt://host:port) instead of HTTP."),
         seed: int = typer.Option(7, "--seed", help="Which devices fail or come late."),
         timeout: float = typer.Option(45.0, "--timeout", min=5.0, metavar="SECONDS",
                                       help="Stop watching after this time.")) -> None:
    """A real OTA campaign against a temporary simulated fleet, start to finish."""
    from campaignctl.demo import Demo

    result = Demo(devices, mqtt, seed=seed, timeout=timeout).run()
    if result["summary"]["valid"] == 0:
        raise typer.Exit(1)
