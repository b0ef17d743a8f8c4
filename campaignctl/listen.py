"""Ingesting reported state from the MQTT interfaces."""

from __future__ import annotations

import queue
import re
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from campaignctl import counting, db, store
from campaignctl.errors import CampaignctlError, InputError
from campaignctl.names import name_problem
from campaignctl.values import shown

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from campaignctl.interfaces.mqtt import StateListener


@dataclass
class ListenStats:
    messages: int = 0
    recorded: int = 0
    rejected: int = 0

    def to_dict(self) -> dict[str, int]:
        return {"messages": self.messages, "recorded": self.recorded, "rejected": self.rejected}


class StateIngest:
    """Buffers state messages and writes them in batches (one transaction per flush).

    Every message stands alone: one that is not a JSON object of valid keys (see
    ``parse_state_payload``), that comes from a device not provisioned on that interface,
    or whose values the database refuses, is rejected whole and reported to ``warn`` once,
    with the device's name; the others are recorded. Only a database that cannot be used
    at all raises.
    """

    def __init__(self, engine: "Engine", warn: Callable[[str], None]) -> None:
        self.engine, self.warn = engine, warn
        self.stats = ListenStats()
        self._ids: dict[tuple[str, str], int] = {}
        self._pending: list[_Message] = []
        self._counted = (0, 0)  # recorded, rejected: what the metrics have of the stats

    def _device_id(self, interface: str, device: str) -> int | None:
        if name_problem(device):  # e.g. a NUL byte, which PostgreSQL text cannot even compare
            return None
        key = (interface, device)
        if key not in self._ids:
            with db.read(self.engine) as conn:
                found = db.run(
                    conn,
                    "SELECT d.id FROM device d JOIN interface i ON i.id = d.interface_id "
                    "WHERE d.name = :device AND i.name = :interface",
                    {"device": device, "interface": interface},
                ).scalar()
            if found is None:
                return None
            self._ids[key] = found
        return self._ids[key]

    def add(self, interface: str, device: str, payload: bytes) -> None:
        self.stats.messages += 1
        try:
            values = _parse(payload)
        except InputError as exc:
            self._reject(interface, device, exc.message)
            return
        except Exception as exc:  # noqa: BLE001 - whatever a device sends, the listener goes on
            self._reject(interface, device, type(exc).__name__)
            return
        device_id = self._device_id(interface, device)
        if device_id is None:
            self.stats.rejected += 1
            self.warn(f"{interface}: state from unknown device {shown(repr(device))} ignored")
            return
        now = db.utcnow()
        self._pending.append(_Message(interface, device, [(device_id, k, v, now) for k, v in values.items()]))

    def flush(self) -> None:
        try:
            self._flush()
        finally:
            recorded, rejected = self.stats.recorded, self.stats.rejected
            counting.state_reports("mqtt", recorded - self._counted[0], rejected - self._counted[1])
            self._counted = (recorded, rejected)

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        if not pending:
            return
        try:
            write_state(self.engine, [row for message in pending for row in message.rows])
        except InputError:
            # Some value the database refused: find which message holds it, writing
            # them one by one, so that it loses none of the others.
            for message in pending:
                self._write_alone(message)
        else:
            self.stats.recorded += len(pending)

    def _write_alone(self, message: "_Message") -> None:
        try:
            write_state(self.engine, message.rows)
        except InputError as exc:
            self._reject(message.interface, message.device, exc.message)
        else:
            self.stats.recorded += 1

    def _reject(self, interface: str, device: str, reason: str) -> None:
        self.stats.rejected += 1
        self.warn(f"{interface}: state of {shown(device)} rejected: {shown(reason, 300)}")


@dataclass
class _Message:
    interface: str
    device: str
    rows: list[tuple]


def write_state(engine: "Engine", rows: list[tuple]) -> None:
    """Write reported entries (device_id, key, json, at) in one transaction.

    What the database refuses about the rows (a value it cannot hold or the driver
    cannot encode, a device deleted meanwhile) is the report's fault: InputError. Any
    other error (unreachable, locked, read-only, damaged) is the database's, and raises
    as it is: no report is at fault, and rejecting them one by one would lose them all.
    """
    from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, StatementError

    try:
        with db.write(engine) as conn:
            store.write_reported(conn, rows)
    except (StatementError, ValueError, TypeError) as exc:  # the last two: a value the driver cannot send
        if isinstance(exc, DBAPIError) and not isinstance(exc, (DataError, IntegrityError)):
            raise
        raise InputError(f"the database refused the state: {db.describe(exc, engine)}") from None


def _parse(payload: bytes) -> dict[str, str]:
    from campaignctl.fleet import parse_state_payload

    return parse_state_payload(payload)


_SHARE_GROUP = re.compile(r"[A-Za-z0-9_-]{1,64}")


def check_share(group: str) -> None:
    if not _SHARE_GROUP.fullmatch(group):
        raise InputError(f"share group {group!r} is not valid: 1 to 64 letters, digits, '-' and '_'", field="--share")


def mqtt_interfaces(engine: "Engine", names: list[str] | None = None) -> list[tuple[str, dict]]:
    with db.read(engine) as conn:
        rows = db.run(conn, "SELECT name, settings FROM interface WHERE type = 'mqtt' ORDER BY name").all()
    found = [(r[0], db.loads(r[1], dict)) for r in rows]
    if names:
        missing = set(names) - {n for n, _ in found}
        if missing:
            raise CampaignctlError(f"no MQTT interface named {', '.join(sorted(missing))}")
        found = [f for f in found if f[0] in names]
    return found


#: A listener without its broker for longer than this (seconds) counts as down for
#: ``serve``'s /healthz: a broker restart is shorter, a lost broker longer.
DOWN_AFTER = 90.0


def listen(
    engine: "Engine",
    *,
    timeout: float | None = None,
    interfaces: list[str] | None = None,
    info: Callable[[str], None] = lambda _m: None,
    warn: Callable[[str], None] = lambda _m: None,
    stop: threading.Event | None = None,
    flush_interval: float = 0.2,
    share: str | None = None,
    health: Callable[[str | None], None] = lambda _problem: None,
) -> ListenStats:
    """Subscribe to the state topic of every MQTT interface and record reported state
    until ``timeout`` seconds have passed, ``stop`` is set or the user presses Ctrl-C
    (the normal way to end it: what was received is recorded, and the counts returned).
    ``share``: subscribe as a member of that shared-subscription group. ``health`` is
    told at every flush which listeners have been without their broker for longer
    than ``DOWN_AFTER`` (one line), or None when none has."""
    from campaignctl.interfaces.mqtt import Settings, StateListener

    targets = mqtt_interfaces(engine, interfaces)
    if not targets:
        raise CampaignctlError("there is no MQTT interface to listen to (import a fleet manifest first)")
    inbox: queue.Queue[tuple[str, str, bytes]] = queue.Queue()
    ingest = StateIngest(engine, warn)
    if share is not None:
        check_share(share)
    listeners = [
        StateListener(
            name, Settings.model_validate(s), lambda i, d, p: inbox.put((i, d, p)), info, share=share, on_problem=warn
        )
        for name, s in targets
    ]
    stop = stop or threading.Event()
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        for listener in listeners:
            listener.start()
        next_flush = time.monotonic() + flush_interval
        while not stop.is_set():
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                break
            wait = min(next_flush, deadline or next_flush) - now
            try:
                ingest.add(*inbox.get(timeout=max(0.0, wait)))
                for _ in range(5000):  # drain what is queued, then flush on time
                    ingest.add(*inbox.get_nowait())
            except queue.Empty:
                pass
            if time.monotonic() >= next_flush:
                ingest.flush()
                health(_down(listeners))
                next_flush = time.monotonic() + flush_interval
    except KeyboardInterrupt:
        info("interrupted")
    finally:
        for listener in listeners:
            listener.stop()
        while not inbox.empty():
            ingest.add(*inbox.get_nowait())
        ingest.flush()
    return ingest.stats


def _down(listeners: "list[StateListener]") -> str | None:
    """Which listeners have been without their broker for longer than ``DOWN_AFTER``."""
    down = [
        f"{listener.name}: no broker connection for {seconds:.0f}s"
        for listener in listeners
        if (seconds := listener.down_for()) > DOWN_AFTER
    ]
    return ", ".join(down) or None
