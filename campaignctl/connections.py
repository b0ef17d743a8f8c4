"""Bounds on the device API's connections: slow, idle and too many clients.

uvicorn (0.54, h11 protocol) alone does not bound them:

- its keep-alive timer is armed only once a response has been sent, and any byte cancels
  it, so a connection that never completes its first request line or headers (slowloris),
  or that starts a second request and stalls, stays open for ever;
- ``limit_concurrency`` is checked per *request*, against open connections and tasks, and
  answers 503: thousands of idle sockets would make it refuse every well-behaved device
  while the idle sockets themselves stay open;
- nothing bounds the number of accepted connections, so once the process runs out of file
  descriptors every ``accept()`` fails, and asyncio logs a traceback for it every retry.

:func:`guarded_protocol` is uvicorn's own h11 protocol with the missing timers and a cap on
connections below the file limit; :func:`quiet_repeated_logs` bounds what floods of bad
clients can write to the log.
"""

from __future__ import annotations

import logging
import random
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, ClassVar

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from campaignctl.errors import InputError

log = logging.getLogger("uvicorn.error")

# What serve needs besides client connections: the listening socket, database
# connections, MQTT listeners, log and library files, the thread pool's pipes.
MIN_FILE_RESERVE = 128
# asyncio accepts up to ``backlog`` connections in a row before any of them is seen (and
# the cap applied): the reserve must hold such a burst too, or accept() fails, and
# asyncio stops accepting for a second.
MAX_BACKLOG = 2048
TIMEOUT_SPREAD = 0.25
# How long a refused client has to read its 503 before the connection is closed.
REFUSAL_LINGER = 2.0


@dataclass(frozen=True)
class Limits:
    """How long a client may take, and how many may be connected at once."""

    max_connections: int
    header_timeout: float = 10.0  # from the first byte of a request to its last (line, headers, body)
    keep_alive: float = 5.0  # idle time allowed before a request starts (first one included)

    def __post_init__(self) -> None:
        for option, seconds in (("--header-timeout", self.header_timeout), ("--keep-alive", self.keep_alive)):
            if not 0 < seconds <= 86400:  # 0 would close every connection at once
                raise InputError(f"{option} must be more than 0s and at most 1d")


def raise_file_limit() -> int:
    """Raise the soft limit on open files to the hard limit; return the new soft limit.

    Descriptors past 1024 then exist in this process: nothing in it may wait on them
    with ``select()`` (the MQTT clients use ``interfaces.mqtt.NetworkLoop``)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def accept_backlog(file_limit: int) -> int:
    """The listen backlog, which is also the longest burst of connections accepted at once."""
    return max(64, min(MAX_BACKLOG, file_limit // 8))


def file_reserve(file_limit: int) -> int:
    """Descriptors kept out of the connection cap: a burst of accepts, and everything else
    serve opens."""
    return accept_backlog(file_limit) + max(MIN_FILE_RESERVE, file_limit // 20)


def connection_cap(requested: int | None, file_limit: int) -> int:
    """The cap on open connections: as asked, or as many as the file limit safely allows."""
    allowed = file_limit - file_reserve(file_limit)
    if requested is None:
        return max(allowed, 1)
    if requested < 1:
        raise InputError("--max-connections must be at least 1")
    if requested > allowed:
        raise InputError(
            f"--max-connections {requested} is above what the open-file limit allows: {allowed} "
            f"(limit {file_limit}, less {file_reserve(file_limit)} kept for bursts of new connections, "
            f"the database, MQTT and logs; raise it with ulimit -n)"
        )
    return requested


_BUSY = b"Service Unavailable: too many connections"
_REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n"
    b'connection: close\r\ncontent-length: %d\r\n\r\n{"error": "%s"}' % (len(_BUSY) + 13, _BUSY)
)


def guarded_protocol(limits: Limits) -> type[H11Protocol]:
    """uvicorn's h11 protocol, with these limits; for ``uvicorn.Config(http=...)``.

    Each server gets its own class: the ``waiting`` registry is shared by its connections."""

    class GuardedH11Protocol(_Guarded):
        pass

    GuardedH11Protocol.limits = limits
    GuardedH11Protocol.waiting = OrderedDict()
    return GuardedH11Protocol


class _Guarded(H11Protocol):
    limits: ClassVar[Limits]
    # Connections with no request in progress (idle, or still sending a request line or
    # headers), the one waiting longest first: the first to go when the cap is reached.
    # An OrderedDict: the first of a plain dict is slow to find after many removals.
    waiting: ClassVar[OrderedDict[_Guarded, None]]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.request_timer: Any = None
        # Connections opened together (an attack, devices after an outage) must not all
        # time out in the same instant: closing thousands at once stalls the event loop,
        # and every device's request waits behind it. Each gets up to a quarter more.
        spread = random.uniform(1.0, 1.0 + TIMEOUT_SPREAD)
        self.timeout_keep_alive = self.limits.keep_alive * spread  # type: ignore[assignment]  # uvicorn takes floats
        self.header_timeout = self.limits.header_timeout * spread
        self.refused = False

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections and not self._evict_one():
            self._refuse()
            return
        # uvicorn only arms this timer after a response: a silent new connection needs it too.
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)
        self.waiting[self] = None

    def data_received(self, data: bytes) -> None:
        if self.refused:  # already answered: what the client still sends is read and dropped
            return
        super().data_received(data)
        self._track_request()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._track_request()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_request_timer()
        self.waiting.pop(self, None)
        super().connection_lost(exc)

    def _track_request(self) -> None:
        """Keep the request timer and the ``waiting`` registry in step with the request."""
        state = self.conn.their_state
        if self.transport.is_closing():
            self._cancel_request_timer()
            self.waiting.pop(self, None)
        elif state is h11.IDLE and not self.conn.trailing_data[0]:  # between requests: idle
            self._cancel_request_timer()
            self.waiting.setdefault(self, None)
        elif state is h11.IDLE or state is h11.SEND_BODY:  # a request is arriving
            if self.request_timer is None:  # the deadline runs from its first byte, not the last
                self.request_timer = self.loop.call_later(self.header_timeout, self._request_timed_out)
            if state is h11.SEND_BODY:  # the application has the request now: never evicted
                self.waiting.pop(self, None)
            else:  # still sending its request line or headers
                self.waiting.setdefault(self, None)
        else:  # received whole: the application answers, in its own time
            self._cancel_request_timer()
            self.waiting.pop(self, None)

    def _cancel_request_timer(self) -> None:
        if self.request_timer is not None:
            self.request_timer.cancel()
            self.request_timer = None

    def _request_timed_out(self) -> None:
        self.request_timer = None
        log.warning("closed a connection whose request did not arrive whole within %gs", self.limits.header_timeout)
        self._close()

    def _evict_one(self) -> bool:
        """Close the connection waiting longest for a request to make room; False if none is."""
        if not self.waiting:
            return False
        log.warning("at the connection limit (%d): closed the connection idle the longest", self.limits.max_connections)
        next(iter(self.waiting))._close()
        return True

    def _refuse(self) -> None:
        """Answer 503 before the request is read, then close softly: closing at once with the
        request unread would reset the connection and lose the answer on the way."""
        log.warning(
            "at the connection limit (%d), every connection busy with a request: answered 503",
            self.limits.max_connections,
        )
        self.refused = True
        self.transport.write(_REFUSAL)
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(REFUSAL_LINGER, self.transport.close)  # or sooner, at the client's end of file

    def _close(self) -> None:
        self.waiting.pop(self, None)
        self._cancel_request_timer()
        self.transport.close()


def ignoring_client_disconnects(app: Any) -> Any:
    """The ASGI application, with a client gone in the middle of its request body no error.

    Starlette raises ``ClientDisconnect`` to the endpoint reading the body; uncaught, uvicorn
    would log a traceback for every device that drops its connection (or is timed out)
    half-way through a report. Nobody is left to answer, and nothing was written."""
    from starlette.requests import ClientDisconnect

    async def application(scope: Any, receive: Any, send: Any) -> None:
        try:
            await app(scope, receive, send)
        except ClientDisconnect:
            pass

    return application


class RepeatFilter(logging.Filter):
    """Lets a message through once per ``interval`` seconds and counts the repeats.

    Floods of bad clients (broken sockets, garbage requests, a file limit reached) log the
    same few messages thousands of times a second; operators need to know that it happens,
    and how often, not every occurrence. Tracebacks of socket errors are cut to one line:
    they say nothing about campaignctl."""

    def __init__(self, interval: float = 60.0) -> None:
        super().__init__()
        self.interval = interval
        self.seen: dict[tuple[str, str], list[float]] = {}  # key -> [last shown, repeats since]

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, str(record.msg).split("\n", 1)[0])  # asyncio adds varying detail lines
        now = time.monotonic()
        entry = self.seen.get(key)
        if entry is not None and now - entry[0] < self.interval:
            entry[1] += 1
            return False
        repeats = entry[1] if entry is not None else 0
        if len(self.seen) > 1000:  # bounded whatever messages come
            self.seen.clear()
        self.seen[key] = [now, 0]
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, OSError):
            record.msg, record.exc_info, record.exc_text = f"{record.getMessage()}: {exc}", None, None
            record.args = ()
        if repeats:
            record.msg = f"{record.getMessage()} (and {repeats} times more in the last {self.interval:g}s)"
            record.args = ()
        return True


def quiet_repeated_logs(interval: float = 60.0) -> None:
    """Install a :class:`RepeatFilter` on the loggers bad clients can flood (once per process)."""
    for name in ("uvicorn.error", "asyncio"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RepeatFilter) for f in logger.filters):
            logger.addFilter(RepeatFilter(interval))
