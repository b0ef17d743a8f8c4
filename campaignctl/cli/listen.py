"""``campaignctl listen``"""

from __future__ import annotations

from typing import List, Optional

import typer

from campaignctl.cli.common import duration, engine, stop_on_sigterm
from campaignctl.cli.logging_options import LogFormat, LogFormatOption, LogLevel, LogLevelOption, start_logging


def listen(
    ctx: typer.Context,
    timeout: Optional[str] = typer.Option(
        None,
        "--timeout",
        metavar="DURATION",
        help="Stop after this time: 90s, 30m, 2h or seconds [default: until Ctrl-C].",
    ),
    interface: Optional[List[str]] = typer.Option(
        None, "--interface", metavar="NAME", help="Only this MQTT interface (repeatable)."
    ),
    share: Optional[str] = typer.Option(
        None,
        "--share",
        metavar="GROUP",
        help="Join this shared-subscription group: listeners of one group split the state messages between them.",
    ),
    log_level: LogLevel = LogLevelOption,
    log_format: LogFormat = LogFormatOption,
) -> None:
    """Record the state devices publish on every MQTT interface."""
    from campaignctl import listen as listening

    seconds = None if timeout is None else duration(timeout, "--timeout")
    log = start_logging(log_level, log_format)
    stop_on_sigterm()  # a service manager's stop: what was received is recorded, the counts logged
    stats = listening.listen(
        engine(ctx), timeout=seconds, interfaces=interface, info=log.info, warn=log.warning, share=share
    )
    log.info(
        f"{stats.messages} message(s): {stats.recorded} recorded, {stats.rejected} rejected", extra=stats.to_dict()
    )
