"""Turning desired entries into documents and handing them to interface drivers."""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence

from campaignctl import db, interfaces
from campaignctl.interfaces.base import Delivery, DeliveryPolicy, Failure, document

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

CHUNK = 2000


def load_documents(conn: Any, devices: Sequence[tuple[int, str]]) -> list[Delivery]:
    """The current desired document of each (device_id, name), in the given order.

    ``devices`` must be sorted by id; they are read with one range query, and SQLite
    builds each configuration object itself (keys in order, values already canonical).
    ``conn`` is a SQLAlchemy connection or a DB-API one (the device API's).
    """
    if not devices:
        return []
    execute = conn.exec_driver_sql if hasattr(conn, "exec_driver_sql") else conn.execute
    loaded_at = execute("SELECT value FROM meta WHERE key = 'revision'").fetchone()[0]
    # Entries whose desired value was withdrawn (a cancelled campaign's, with no value
    # before it) keep their revision: the version still only grows.
    rows = execute(
        "SELECT device_id, max(desired_revision), "
        "json_group_object(key, json(desired)) FILTER (WHERE desired IS NOT NULL) "
        "FROM device_config WHERE device_id BETWEEN ? AND ? AND desired_revision IS NOT NULL GROUP BY device_id",
        (devices[0][0], devices[-1][0]),
    ).fetchall()
    found = {r[0]: (r[1], r[2]) for r in rows}
    out = []
    for device_id, name in devices:
        version, configuration = found.get(device_id, (0, None))
        out.append(Delivery(device_id, name, version, document(version, configuration or "{}"), loaded_at=loaded_at))
    return out


def refresher(engine: "Engine") -> Callable[[list[Delivery]], list[Delivery]]:
    """Re-read documents before a retry, keeping each delivery's attempt count."""
    def refresh(deliveries: list[Delivery]) -> list[Delivery]:
        ordered = sorted(deliveries, key=lambda d: d.device_id)
        with db.read(engine) as conn:
            fresh = load_documents(conn, [(d.device_id, d.device) for d in ordered])
        for old, new in zip(ordered, fresh):
            new.attempts = old.attempts
        return fresh

    return refresh


@dataclass
class Outcome:
    delivered: set[int] = field(default_factory=set)
    failed: dict[int, str] = field(default_factory=dict)
    deferred: set[int] = field(default_factory=set)  # polling interfaces: the device fetches


def deliver_devices(engine: "Engine", device_ids: Iterable[int], *, policy: DeliveryPolicy | None = None) -> Outcome:
    """Deliver the current document of a few devices now (``devices set-config``)."""
    policy = policy or DeliveryPolicy(attempts=3, backoff=0.5)
    outcome = Outcome()
    ids = sorted(set(device_ids))
    with db.read(engine) as conn:
        rows = conn.exec_driver_sql(
            "SELECT d.id, d.name, i.name, i.type, i.settings FROM device d JOIN interface i ON i.id = d.interface_id "
            f"WHERE d.id IN ({','.join('?' * len(ids))}) ORDER BY d.id", tuple(ids)).all()
        groups = itertools.groupby(sorted(rows, key=lambda r: (r[2], r[0])), key=lambda r: r[2:])
        work = [(key, load_documents(conn, [(r[0], r[1]) for r in group])) for key, group in groups]
    for (name, kind, settings), deliveries in work:
        driver = interfaces.driver(name, kind, json.loads(settings))
        if not driver.pushes:
            outcome.deferred.update(d.device_id for d in deliveries)
            continue
        driver.deliver(deliveries, policy, lambda d: outcome.delivered.add(d.device_id),
                       lambda f: outcome.failed.__setitem__(f.delivery.device_id, f.error), refresher(engine))
    return outcome


class JobRecorder:
    """Records job item outcomes in batches: one write transaction per ``batch`` results
    or per ``interval`` seconds, whichever comes first. Drivers call it from the thread
    that runs them (paho's callbacks, asyncio's loop): no lock."""

    def __init__(self, engine: "Engine", job_id: int, *, batch: int = 2000, interval: float = 0.25,
                 on_flush: Callable[[int, int], None] | None = None) -> None:
        self.engine, self.job_id = engine, job_id
        self.batch, self.interval = batch, interval
        self.on_flush = on_flush or (lambda _ok, _ko: None)
        self._delivered: list[tuple] = []
        self._failed: list[tuple] = []
        self._last = time.monotonic()

    def delivered(self, delivery: Delivery) -> None:
        self._delivered.append((delivery.attempts, delivery.device_id, delivery.version, delivery.loaded_at))
        self._maybe_flush()

    def failed(self, failure: Failure) -> None:
        self._failed.append((failure.delivery.attempts, failure.error[:1000], failure.delivery.device_id))
        self._maybe_flush()

    def _maybe_flush(self) -> None:
        if len(self._delivered) + len(self._failed) >= self.batch or time.monotonic() - self._last >= self.interval:
            self.flush()

    def flush(self, *, notify: bool = True) -> None:
        delivered, self._delivered = self._delivered, []
        failed, self._failed = self._failed, []
        self._last = time.monotonic()
        if not delivered and not failed:
            return
        now = db.utcnow()
        with db.write(self.engine) as conn:
            # A document read before a newer write (a user's set-config) and sent after it
            # replaced the newer one on the interface: such devices stay `syncing`, and the
            # job sends them their current document again.
            stale = _stale(conn, delivered)
            if stale:
                delivered = [d for d in delivered if d[1] not in stale]
            # `status = 'syncing'` keeps a result from a stale run from overwriting a final one.
            if delivered:
                conn.exec_driver_sql(
                    "UPDATE job_item SET status = 'delivered', attempts = attempts + ?, error = NULL, updated_at = ?, "
                    "delivered_at = ? WHERE job_id = ? AND device_id = ? AND status = 'syncing'",
                    [(a, now, now, self.job_id, d) for a, d, _v, _l in delivered])
            if failed:
                conn.exec_driver_sql(
                    "UPDATE job_item SET status = 'failed', attempts = attempts + ?, error = ?, updated_at = ? "
                    "WHERE job_id = ? AND device_id = ? AND status = 'syncing'",
                    [(a, e, now, self.job_id, d) for a, e, d in failed])
        if notify:
            self.on_flush(len(delivered), len(failed))


def _stale(conn: "Connection", delivered: list[tuple]) -> set[int]:
    """Devices whose delivered document is older than their current one."""
    current = conn.exec_driver_sql("SELECT value FROM meta WHERE key = 'revision'").scalar()
    suspects = {d: version for _a, d, version, loaded_at in delivered if loaded_at < current}
    if not suspects:
        return set()  # nothing was written anywhere since the documents were read
    stale: set[int] = set()
    ids = sorted(suspects)
    for start in range(0, len(ids), 500):
        part = ids[start : start + 500]
        for device_id, version in conn.exec_driver_sql(
                "SELECT device_id, max(desired_revision) FROM device_config WHERE device_id IN "
                f"({','.join('?' * len(part))}) GROUP BY device_id", tuple(part)):
            if version is not None and version > suspects[device_id]:
                stale.add(device_id)
    return stale


def job_deliveries(engine: "Engine", job_id: int, interface_id: int, chunk: int = CHUNK,
                   stop: Callable[[], bool] = lambda: False) -> Iterator[Delivery]:
    """The job's devices on one interface that still await delivery, read chunk by chunk
    so that memory stays flat whatever the fleet size; ends early once ``stop()``."""
    last = 0
    while True:
        with db.read(engine) as conn:
            devices = conn.exec_driver_sql(
                "SELECT ji.device_id, d.name FROM job_item ji JOIN device d ON d.id = ji.device_id "
                "WHERE ji.job_id = ? AND ji.device_id > ? AND ji.status = 'syncing' AND d.interface_id = ? "
                "ORDER BY ji.device_id LIMIT ?", (job_id, last, interface_id, chunk)).all()
            if not devices:
                return
            deliveries = load_documents(conn, [(r[0], r[1]) for r in devices])
        last = devices[-1][0]
        for delivery in deliveries:
            if stop():
                return
            yield delivery


def run_interface(engine: "Engine", job_id: int, interface: Any, policy: DeliveryPolicy,
                  recorder: JobRecorder, stop: Callable[[], bool] = lambda: False) -> None:
    """Deliver a job's pending documents on one interface that pushes. Once ``stop()``,
    nothing new is sent: what is in flight is acknowledged and recorded, the rest stays
    ``syncing``."""
    driver = interfaces.driver(interface.name, interface.type, json.loads(interface.settings))
    refresh = refresher(engine)
    driver.deliver(job_deliveries(engine, job_id, interface.id, stop=stop), policy, recorder.delivered,
                   recorder.failed, lambda pending: [] if stop() else refresh(pending))
    recorder.flush()
