"""``campaignctl listen``"""

from __future__ import annotations

from typing import List, Optional

import typer

from campaignctl.cli.common import engine, info


def listen(ctx: typer.Context,
           timeout: Optional[float] = typer.Option(None, "--timeout", metavar="SECONDS",
                                                   help="Stop after this many seconds (default: until Ctrl-C)."),
           interface: Optional[List[str]] = typer.Option(None, "--interface", help="Only these MQTT interfaces."),
           share: Optional[str] = typer.Option(None, "--share", metavar="GROUP",
                                               help="Join this shared-subscription group: listeners of one group "
                                                    "split the state messages between them.")) -> None:
    """Record the state devices publish on every MQTT interface."""
    from campaignctl import listen as listening

    stats = listening.listen(engine(ctx), timeout=timeout, interfaces=interface, info=info,
                             warn=lambda m: info(f"warning: {m}"), share=share)
    info(f"{stats.messages} message(s): {stats.recorded} recorded, {stats.rejected} rejected")
