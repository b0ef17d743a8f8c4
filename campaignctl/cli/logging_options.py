"""The logging options of the long-running commands (``serve``, ``run``, ``listen``,
``simulate``): one definition, the same flags everywhere."""

from __future__ import annotations

import enum
import logging

import typer


class LogLevel(str, enum.Enum):
    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"


class LogFormat(str, enum.Enum):
    text = "text"
    json = "json"


LogLevelOption = typer.Option(
    LogLevel.info, "--log-level", metavar="LEVEL", help="Least severe messages logged: debug, info, warning or error."
)
LogFormatOption = typer.Option(
    LogFormat.text,
    "--log-format",
    metavar="FORMAT",
    help="text for people; json: one object per line (time, level, logger, message, …) for log shippers.",
)


def start_logging(level: LogLevel, fmt: LogFormat, *, access_log: bool = False) -> logging.Logger:
    """Log on stderr as asked; the ``campaignctl`` logger the command reports through."""
    from campaignctl.logs import configure

    return configure(level.value, fmt.value, access_log=access_log)
