"""Turning desired entries into documents and handing them to interface drivers."""

from __future__ import annotations

import itertools
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence

from campaignctl import db, dialect, interfaces
from campaignctl.interfaces.base import Delivery, DeliveryPolicy, Failure, document

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine
    from sqlalchemy.sql.elements import TextClause

CHUNK = 2000


def _document_query(conn: "Connection") -> "TextClause":
    """Each device's version and configuration object, for a range of device ids."""
    name = conn.dialect.name
    if name not in _DOCUMENT_QUERIES:
        # Entries whose desired value was withdrawn (a cancelled campaign's, with no value
        # before it) keep their revision: the version still only grows.
        _DOCUMENT_QUERIES[name] = db.sql(
            "SELECT device_id, max(desired_revision), "
            f"{dialect.document_object(conn, 'key', 'desired', 'desired IS NOT NULL')} "
            "FROM device_config WHERE device_id BETWEEN :first AND :last AND desired_revision IS NOT NULL "
            "GROUP BY device_id"
        )
    return _DOCUMENT_QUERIES[name]


_DOCUMENT_QUERIES: dict[str, "TextClause"] = {}
_REVISION = db.sql("SELECT value FROM meta WHERE key = 'revision'")


def load_documents(conn: "Connection", devices: Sequence[tuple[int, str]]) -> list[Delivery]:
    """The current desired document of each (device_id, name), in the given order.

    ``devices`` must be sorted by id; they are read with one range query, and the
    database builds each configuration object itself (keys in byte order, values
    already canonical: the same bytes on every backend). Call it in a read
    transaction: the revision it records (``loaded_at``) is the documents' snapshot's.
    """
    if not devices:
        return []
    loaded_at = conn.execute(_REVISION).scalar_one()
    result = conn.execute(_document_query(conn), {"first": devices[0][0], "last": devices[-1][0]})
    try:  # plain DB-API tuples: this is the hot path of delivering 100k devices
        found = {device_id: (version, configuration) for device_id, version, configuration in result.cursor}  # type: ignore[attr-defined]
    finally:
        result.close()
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
        rows = db.run(
            conn,
            "SELECT d.id, d.name, i.name, i.type, i.settings FROM device d "
            "JOIN interface i ON i.id = d.interface_id WHERE d.id IN :ids ORDER BY d.id",
            {"ids": ids},
            "ids",
        ).all()
        groups = itertools.groupby(sorted(rows, key=lambda r: (r[2], r[0])), key=lambda r: r[2:])
        work = [(key, load_documents(conn, [(r[0], r[1]) for r in group])) for key, group in groups]
    for (name, kind, settings), deliveries in work:
        driver = interfaces.driver(name, kind, db.loads(settings, dict))
        if not driver.pushes:
            outcome.deferred.update(d.device_id for d in deliveries)
            continue
        driver.deliver(
            deliveries,
            policy,
            lambda d: outcome.delivered.add(d.device_id),
            lambda f: outcome.failed.__setitem__(f.delivery.device_id, f.error),
            refresher(engine),
        )
    return outcome


class JobRecorder:
    """Records job item outcomes in batches: one write transaction per ``batch`` results
    or per ``interval`` seconds, whichever comes first. Drivers call it from the thread
    that runs them (paho's callbacks, asyncio's loop). The writes happen in a thread of
    their own, so that the delivery never waits on the database (at most a few batches
    queue up: then it does, rather than holding results in memory); ``flush`` returns
    once everything is written, and raises what a write raised."""

    QUEUED_BATCHES = 4

    def __init__(
        self,
        engine: "Engine",
        job_id: int,
        *,
        batch: int = 2000,
        interval: float = 0.25,
        on_flush: Callable[[int, int], None] | None = None,
    ) -> None:
        self.engine, self.job_id = engine, job_id
        self.batch, self.interval = batch, interval
        self.on_flush = on_flush or (lambda _ok, _ko: None)
        self._delivered: list[tuple] = []
        self._failed: list[tuple] = []
        self._last = time.monotonic()
        self._queue: queue.Queue[tuple[list[tuple], list[tuple]] | None] = queue.Queue(self.QUEUED_BATCHES)
        self._writer: threading.Thread | None = None
        self._error: BaseException | None = None

    def delivered(self, delivery: Delivery) -> None:
        self._delivered.append((delivery.attempts, delivery.device_id, delivery.version, delivery.loaded_at))
        self._maybe_flush()

    def failed(self, failure: Failure) -> None:
        self._failed.append((failure.delivery.attempts, failure.error[:1000], failure.delivery.device_id))
        self._maybe_flush()

    def _maybe_flush(self) -> None:
        if len(self._delivered) + len(self._failed) >= self.batch or time.monotonic() - self._last >= self.interval:
            self._hand_over()

    def _hand_over(self) -> None:
        delivered, self._delivered = self._delivered, []
        failed, self._failed = self._failed, []
        self._last = time.monotonic()
        if not delivered and not failed:
            return
        if self._writer is None:
            self._writer = threading.Thread(target=self._run, name=f"job-{self.job_id}-recorder", daemon=True)
            self._writer.start()
        self._queue.put((delivered, failed))

    def flush(self) -> None:
        """Write what is buffered and queued; returns once it is in the database."""
        self._hand_over()
        if self._writer is not None:
            self._queue.put(None)
            self._writer.join()
            self._writer = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is None:  # after a failed write, the rest stays syncing: delivered again
                try:
                    self._write(*item)
                except BaseException as exc:  # noqa: BLE001 - raised by flush() in the delivering thread
                    self._error = exc

    def _write(self, delivered: list[tuple], failed: list[tuple]) -> None:
        now = db.utcnow()
        with db.write(self.engine) as conn:
            # A document read before a newer write (a user's set-config) and sent after it
            # replaced the newer one on the interface: such devices stay `syncing`, and the
            # job sends them their current document again.
            stale = _stale(conn, delivered)
            if stale:
                delivered = [d for d in delivered if d[1] not in stale]
            # `status = 'syncing'` keeps a result from a stale run from overwriting a final one.
            # Deliveries mostly took the same number of tries: one statement per count
            # (half the time of an executemany on either backend).
            by_attempts: dict[int, list[int]] = {}
            for a, d, _v, _l in delivered:
                by_attempts.setdefault(a, []).append(d)
            for a, ids in by_attempts.items():
                for start in range(0, len(ids), 5000):
                    db.run(
                        conn,
                        "UPDATE job_item SET status = 'delivered', attempts = attempts + :attempts, error = NULL, "
                        "updated_at = :now, delivered_at = :now "
                        "WHERE job_id = :job_id AND device_id IN :ids AND status = 'syncing'",
                        {"attempts": a, "now": now, "job_id": self.job_id, "ids": ids[start : start + 5000]},
                        "ids",
                    )
            if failed:
                db.run(
                    conn,
                    "UPDATE job_item SET status = 'failed', attempts = attempts + :attempts, error = :error, "
                    "updated_at = :now WHERE job_id = :job_id AND device_id = :device_id AND status = 'syncing'",
                    [
                        {"attempts": a, "error": e, "now": now, "job_id": self.job_id, "device_id": d}
                        for a, e, d in failed
                    ],
                )
        self.on_flush(len(delivered), len(failed))


def _stale(conn: "Connection", delivered: list[tuple]) -> set[int]:
    """Devices whose delivered document is older than their current one."""
    current = conn.execute(_REVISION).scalar_one()
    suspects = {d: version for _a, d, version, loaded_at in delivered if loaded_at < current}
    if not suspects:
        return set()  # nothing was written anywhere since the documents were read
    stale: set[int] = set()
    ids = sorted(suspects)
    for start in range(0, len(ids), 500):
        for device_id, version in db.run(
            conn,
            "SELECT device_id, max(desired_revision) FROM device_config WHERE device_id IN :ids GROUP BY device_id",
            {"ids": ids[start : start + 500]},
            "ids",
        ):
            if version is not None and version > suspects[device_id]:
                stale.add(device_id)
    return stale


def job_deliveries(
    engine: "Engine",
    job_id: int,
    interface_id: int,
    chunk: int = CHUNK,
    stop: Callable[[], bool] = lambda: False,
    *,
    first: int | None = None,
    last: int | None = None,
) -> Iterator[Delivery]:
    """The job's devices on one interface that still await delivery (with ids from
    ``first`` to ``last``, a shard's range, when given), read chunk by chunk so that
    memory stays flat whatever the fleet size; ends early once ``stop()``."""
    after = -1 if first is None else first - 1
    upto = 2**62 if last is None else last
    while True:
        with db.read(engine) as conn:
            devices = db.run(
                conn,
                "SELECT ji.device_id, d.name FROM job_item ji JOIN device d ON d.id = ji.device_id "
                "WHERE ji.job_id = :job AND ji.device_id > :after AND ji.device_id <= :upto "
                "AND ji.status = 'syncing' AND d.interface_id = :interface ORDER BY ji.device_id LIMIT :chunk",
                {"job": job_id, "after": after, "upto": upto, "interface": interface_id, "chunk": chunk},
            ).all()
            if not devices:
                return
            deliveries = load_documents(conn, [(r[0], r[1]) for r in devices])
        after = devices[-1][0]
        for delivery in deliveries:
            if stop():
                return
            yield delivery


def run_interface(
    engine: "Engine",
    job_id: int,
    interface: Any,
    policy: DeliveryPolicy,
    recorder: JobRecorder,
    stop: Callable[[], bool] = lambda: False,
    *,
    first: int | None = None,
    last: int | None = None,
    meter: Any = None,
) -> None:
    """Deliver a job's pending documents on one interface that pushes. Once ``stop()``,
    nothing new is sent: what is in flight is acknowledged and recorded, the rest stays
    ``syncing``. ``meter`` (a ``metrics.DeliveryMeter``) counts and times them."""
    driver = interfaces.driver(interface.name, interface.type, db.loads(interface.settings, dict))
    refresh = refresher(engine)
    deliveries: Iterable[Delivery] = job_deliveries(engine, job_id, interface.id, stop=stop, first=first, last=last)
    delivered, failed = recorder.delivered, recorder.failed
    if meter is not None:
        deliveries, delivered, failed = meter.watch(deliveries, delivered, failed)
    driver.deliver(deliveries, policy, delivered, failed, lambda pending: [] if stop() else refresh(pending))
    recorder.flush()
