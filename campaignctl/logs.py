"""Logging for the long-running commands (``serve``, ``run``, ``listen``, ``simulate``).

Everything goes through the standard ``logging`` module, to stderr (stdout is for data),
one line per event, in one of two formats:

* ``text``: the message as people read it, prefixed with its level unless it is
  ``info`` (``warning: rollout engine: …``); unsafe characters are escaped, as every
  message of the command line is;
* ``json``: one object per line, ``{"time", "level", "logger", "message", …}``, plus the
  fields given with ``extra=``, for log shippers.

uvicorn's loggers are routed to the same handler, at the same level.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone
from typing import Any

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("text", "json")

#: The attributes every LogRecord has: the others were given with ``extra=``.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}
#: uvicorn's loggers: ``uvicorn.error`` is its general log despite the name.
UVICORN = ("uvicorn", "uvicorn.error", "uvicorn.access")


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        from campaignctl.values import shown

        message = shown(record.getMessage(), None)
        return message if record.levelno == logging.INFO else f"{record.levelname.lower()}: {message}"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in line and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        # ASCII only: a message quoting a device (control characters, lone surrogates)
        # stays one valid line.
        return json.dumps(line, ensure_ascii=True, default=str)


class StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record comes (a test runner swaps it
    per command): never to a stream closed since."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def configure(level: str = "info", fmt: str = "text", *, access_log: bool = False) -> logging.Logger:
    """Send every log record at ``level`` and above to stderr in format ``fmt``; returns
    the ``campaignctl`` logger."""
    handler = StderrHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, StderrHandler)]:
        root.removeHandler(old)  # configured again (a second command in one process): replaced
    root.addHandler(handler)
    numeric = logging.getLevelName(level.upper())
    # Libraries (alembic's migrations, asyncio) say only their warnings, unless asked
    # for everything with debug.
    root.setLevel(numeric if numeric <= logging.DEBUG else max(numeric, logging.WARNING))
    route_uvicorn(numeric, access_log=access_log)
    logger = logging.getLogger("campaignctl")
    logger.setLevel(numeric)
    return logger


def route_uvicorn(level: int, *, access_log: bool = False) -> None:
    """uvicorn's loggers write through the root logger's handler. Its start-up lines
    repeat what ``serve`` says itself: below ``debug`` only its warnings show; each
    request is a line only with ``--access-log``."""
    for name in UVICORN:
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    logging.getLogger("uvicorn.error").setLevel(level if level <= logging.DEBUG else max(level, logging.WARNING))
    logging.getLogger("uvicorn.access").setLevel(level if access_log else logging.CRITICAL + 1)
