"""Sending the devices' current documents again (``campaignctl devices resync``).

For the day a broker loses its retained messages (restarted without persistence, replaced,
wiped): every selected device's current document is sent again through its interface,
with the version it already has. Nothing is written: no revision is taken and no job
changes, so a device that had applied the document ignores it (its version is not
greater), and one that had lost it gets it back.

The documents go through the interfaces' own delivery, as a launch's do: read from the
database 2,000 devices at a time (memory stays flat), handed to the interface's driver
(one connection, many in flight, retries with backoff, the newest document on a retry).
From 8,000 devices on, helper processes (one per CPU, up to 4) each send a share of
every interface's devices, as a launch's delivery is shared; a helper that fails is
reported through ``warn`` and its share is sent by this process. Interfaces whose
devices poll (``http``) have nothing to resend: their devices fetch their document
themselves.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from campaignctl import db, interfaces, store
from campaignctl.delivery import CHUNK, load_documents, refresher
from campaignctl.errors import NotFoundError
from campaignctl.interfaces.base import Delivery, DeliveryPolicy, Failure
from campaignctl.suggest import not_found
from campaignctl.values import cut

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

#: device names shown per failure reason (the count covers them all)
EXAMPLES = 5
#: how often the progress callback is called, in devices
PROGRESS_EVERY = 1000

_HAS_DOCUMENT = "EXISTS (SELECT 1 FROM device_config c WHERE c.device_id = d.id AND c.desired_revision IS NOT NULL)"
_IN_CAMPAIGN = (
    "EXISTS (SELECT 1 FROM job_item ji JOIN job j ON j.id = ji.job_id "
    "WHERE ji.device_id = d.id AND j.campaign_id = :campaign)"
)


@dataclass
class Selection:
    """Which devices to resend, as SQL over ``device d``: every condition holds."""

    where: list[str] = field(default_factory=lambda: [_HAS_DOCUMENT])
    params: dict[str, Any] = field(default_factory=dict)
    expanding: tuple[str, ...] = ()

    def sql(self) -> str:
        return " AND ".join(self.where)


@dataclass
class InterfaceResult:
    name: str
    type: str
    devices: int
    pushes: bool
    resent: int = 0
    failed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "devices": self.devices,
            "resent": self.resent,
            "failed": self.failed,
            "fetch_themselves": 0 if self.pushes else self.devices,
        }


@dataclass
class Reason:
    """One failure reason: how many devices failed with it, and the first few."""

    error: str
    devices: int = 0
    examples: list[str] = field(default_factory=list)

    def add(self, device: str) -> None:
        self.devices += 1
        if len(self.examples) < EXAMPLES:
            self.examples.append(device)


@dataclass
class Result:
    interfaces: list[InterfaceResult]
    reasons: dict[str, Reason] = field(default_factory=dict)
    without_document: list[str] = field(default_factory=list)  # named with --device, nothing desired

    @property
    def devices(self) -> int:
        return sum(i.devices for i in self.interfaces)

    @property
    def resent(self) -> int:
        return sum(i.resent for i in self.interfaces)

    @property
    def failed(self) -> int:
        return sum(i.failed for i in self.interfaces)

    @property
    def fetch_themselves(self) -> int:
        return sum(i.devices for i in self.interfaces if not i.pushes)

    def merge(self, other: "Result") -> None:
        """Add the counts of a share of the same selection."""
        by_name = {i.name: i for i in self.interfaces}
        for counts in other.interfaces:
            by_name[counts.name].resent += counts.resent
            by_name[counts.name].failed += counts.failed
        for reason in other.reasons.values():
            mine = self.reasons.setdefault(reason.error, Reason(reason.error))
            mine.devices += reason.devices
            mine.examples = (mine.examples + reason.examples)[:EXAMPLES]

    def to_dict(self) -> dict[str, Any]:
        return {
            "devices": self.devices,
            "resent": self.resent,
            "failed": self.failed,
            "fetch_themselves": self.fetch_themselves,
            "interfaces": [i.to_dict() for i in self.interfaces],
            "errors": [
                {"error": r.error, "devices": r.devices, "examples": r.examples}
                for r in sorted(self.reasons.values(), key=lambda r: (-r.devices, r.error))
            ],
            "without_document": self.without_document,
        }


def select(
    conn: "Connection", *, interface: str | None = None, campaign: str | None = None, devices: Sequence[str] = ()
) -> tuple[Selection, list[str]]:
    """The selection for these filters, and the named devices that have no document.
    Every name must exist (else NotFoundError, before anything is sent)."""
    selection = Selection()
    if interface is not None:
        selection.params["interface"] = _id_of(conn, "interface", interface)
        selection.where.append("d.interface_id = :interface")
    if campaign is not None:
        selection.params["campaign"] = _id_of(conn, "campaign", campaign)
        selection.where.append(_IN_CAMPAIGN)
    without: list[str] = []
    if devices:
        ids = _device_ids(conn, devices)
        selection.params["devices"] = sorted(set(ids.values()))
        selection.where.append("d.id IN :devices")
        selection.expanding = ("devices",)
        with_document = {
            name
            for (name,) in db.run(
                conn,
                f"SELECT d.name FROM device d WHERE d.id IN :devices AND {_HAS_DOCUMENT}",
                {"devices": selection.params["devices"]},
                "devices",
            )
        }
        without = sorted(set(devices) - with_document)
    return selection, without


def _id_of(conn: "Connection", table: str, name: str) -> int:
    found = db.run(conn, f"SELECT id FROM {table} WHERE name = :name", {"name": name}).scalar()
    if found is None:
        raise not_found(conn, table, name)
    return int(found)


def _device_ids(conn: "Connection", names: Sequence[str]) -> dict[str, int]:
    wanted = sorted(set(names))
    found: dict[str, int] = store.by_name(conn, wanted, "id")
    missing = [n for n in wanted if n not in found]
    if missing:
        shown = ", ".join(repr(n) for n in missing[:10])
        if len(missing) > 10:
            shown += f" and {len(missing) - 10} more"
        raise NotFoundError(
            f"no device named {shown}" if len(missing) == 1 else f"{len(missing)} devices do not exist: {shown}"
        )
    return found


def _targets(conn: "Connection", selection: Selection) -> list[tuple[int, str, str, str, int]]:
    """(id, name, type, settings, selected devices) of each interface with selected devices."""
    return [
        tuple(r)
        for r in db.run(
            conn,
            "SELECT i.id, i.name, i.type, i.settings, count(*) FROM device d "
            f"JOIN interface i ON i.id = d.interface_id WHERE {selection.sql()} "
            "GROUP BY i.id, i.name, i.type, i.settings ORDER BY i.name",
            selection.params,
            *selection.expanding,
        )
    ]


def plan(
    engine: "Engine", *, interface: str | None = None, campaign: str | None = None, devices: Sequence[str] = ()
) -> Result:
    """What a resync would send, per interface, without sending anything."""
    return _plan(engine, interface, campaign, devices)[2]


def _plan(
    engine: "Engine", interface: str | None, campaign: str | None, devices: Sequence[str]
) -> tuple[Selection, list[tuple[int, str, str, str, int]], Result]:
    with db.read(engine) as conn:
        selection, without = select(conn, interface=interface, campaign=campaign, devices=devices)
        targets = _targets(conn, selection)
    result = Result(
        [
            InterfaceResult(name, kind, count, interfaces.module(kind).Driver.pushes)
            for _id, name, kind, _settings, count in targets
        ],
        without_document=without,
    )
    return selection, targets, result


@dataclass(frozen=True)
class Part:
    """The selected devices of one interface with ids from ``first`` to ``last``."""

    interface_id: int
    name: str
    type: str
    settings: str
    first: int
    last: int


def _documents(engine: "Engine", part: Part, selection: Selection) -> Iterator[Delivery]:
    """The current documents of a part's devices, by id, chunk by chunk (each chunk read
    in one snapshot, as a launch reads them)."""
    statement = (
        f"SELECT d.id, d.name FROM device d WHERE d.interface_id = :interface_id AND d.id > :after "
        f"AND d.id <= :last AND {selection.sql()} ORDER BY d.id LIMIT :chunk"
    )
    params = {
        **selection.params,
        "interface_id": part.interface_id,
        "after": part.first - 1,
        "last": part.last,
        "chunk": CHUNK,
    }
    while True:
        with db.read(engine) as conn:
            chunk = [tuple(r) for r in db.run(conn, statement, params, *selection.expanding)]
            documents = load_documents(conn, chunk) if chunk else []
        if not documents:
            return
        params["after"] = chunk[-1][0]
        yield from documents


def _split(conn: "Connection", selection: Selection, target: tuple[int, str, str, str, int], pieces: int) -> list[Part]:
    """An interface's selected devices cut into at most ``pieces`` parts of about the
    same size, by id. ``count`` was taken in an earlier snapshot: devices deleted (or
    without a document) since leave fewer rows, and a part whose first row is gone is
    merged into the one before it rather than an error."""
    interface_id, name, kind, settings, count = target
    statement = (
        f"SELECT d.id FROM device d WHERE d.interface_id = :interface_id AND {selection.sql()} "
        "ORDER BY d.id LIMIT 1 OFFSET :skip"
    )
    found = [
        db.run(
            conn,
            statement,
            {**selection.params, "interface_id": interface_id, "skip": count * k // pieces},
            *selection.expanding,
        ).scalar()
        for k in range(1, pieces)
    ]
    firsts = sorted({0, *(int(first) for first in found if first is not None)})
    lasts = [first - 1 for first in firsts[1:]] + [2**62]
    return [Part(interface_id, name, kind, settings, first, last) for first, last in zip(firsts, lasts)]


def _send(
    engine: "Engine",
    parts: Sequence[Part],
    selection: Selection,
    policy: DeliveryPolicy,
    result: Result,
    counted: Callable[[], None],
) -> None:
    """Send the parts' documents through their interfaces' drivers; each outcome is
    counted in ``result``."""
    by_name = {i.name: i for i in result.interfaces}

    def delivered(outcome: InterfaceResult) -> None:
        outcome.resent += 1
        counted()

    def failed(outcome: InterfaceResult, failure: Failure) -> None:
        # A platform's answer can be any size: bounded as a job item's error is, and
        # reasons that differ only past that point are one reason.
        error = cut(failure.error, 1000)
        result.reasons.setdefault(error, Reason(error)).add(failure.delivery.device)
        outcome.failed += 1
        counted()

    for part in parts:
        outcome = by_name[part.name]
        driver = interfaces.driver(part.name, part.type, db.loads(part.settings, dict))
        driver.deliver(
            _documents(engine, part, selection),
            policy,
            lambda _d, o=outcome: delivered(o),
            lambda f, o=outcome: failed(o, f),
            refresher(engine),
        )


def resync(
    engine: "Engine",
    *,
    interface: str | None = None,
    campaign: str | None = None,
    devices: Sequence[str] = (),
    policy: DeliveryPolicy | None = None,
    processes: int | None = None,
    on_selected: Callable[[Result], None] = lambda _r: None,
    progress: Callable[[int, int], None] = lambda _done, _total: None,
    warn: Callable[[str], None] = lambda _m: None,
) -> Result:
    """Send the selected devices' current documents again (see the module's docstring).
    ``processes``: how many processes send (default: ``worker.processes_for``);
    ``on_selected`` gets the plan once the names are checked, before anything is sent;
    ``progress(done, total)`` follows the sending; ``warn`` gets one line per helper
    process that failed (this process then sends its share)."""
    from campaignctl.worker import processes_for

    policy = policy or DeliveryPolicy(attempts=3, backoff=0.5)
    selection, targets, result = _plan(engine, interface, campaign, devices)
    on_selected(result)
    total = sum(i.devices for i in result.interfaces if i.pushes)
    pieces = processes_for(total, processes)
    with db.read(engine) as conn:
        parts = [
            _split(conn, selection, target, pieces)
            for target, outcome in zip(targets, result.interfaces)
            if outcome.pushes
        ]
    # An interface may have fewer parts than there are processes (few devices, or
    # devices deleted since they were counted): a share holds what there is.
    shares = [[own[k] for own in parts if k < len(own)] for k in range(pieces)]
    done = 0

    def counted() -> None:
        nonlocal done
        done += 1
        if done % PROGRESS_EVERY == 0:
            progress(done + helpers.done(), total)

    helpers = _Helpers([share for share in shares[1:] if share])
    with helpers.running(db.location_of(engine).target, selection, policy):
        _send(engine, shares[0], selection, policy, result, counted)
        for share, outcome in helpers.results(lambda: progress(done + helpers.done(), total)):
            if isinstance(outcome, Result):
                result.merge(outcome)
            else:  # the helper failed: this process sends its share
                warn(f"resync helper process failed ({outcome}); this process sends its share")
                _send(engine, share, selection, policy, result, counted)
    if total:
        progress(total, total)
    return result


class _Helpers:
    """Processes that send shares of the selection beside this one: on interface-heavy
    resyncs, the encoding and publishing is spread over the machine's cores (as a
    launch's delivery is). Each reports its counts once done, or why it failed;
    ``done()`` is how many documents they have sent or given up on so far."""

    def __init__(self, shares: list[list[Part]]) -> None:
        self.shares = shares
        self.children: list[Any] = []

    @contextmanager
    def running(self, target: str, selection: Selection, policy: DeliveryPolicy) -> Iterator[None]:
        if not self.shares:
            yield
            return
        import multiprocessing

        from campaignctl.worker import helper_processes

        context = multiprocessing.get_context("spawn")
        self.queue, self.counter = context.Queue(), context.Value("q", 0)
        arguments = [
            (target, n, share, selection, policy, self.queue, self.counter) for n, share in enumerate(self.shares)
        ]
        # Interrupted: what the helpers sent is sent, the rest is not.
        with helper_processes("campaignctl-resync", _helper, arguments, terminate_on_error=True) as children:
            self.children = children
            yield

    def done(self) -> int:
        return int(self.counter.value) if self.children else 0

    def results(self, waiting: Callable[[], None]) -> Iterator[tuple[list[Part], Result | str]]:
        """Each share with its helper's counts, or why the helper failed."""
        import queue

        pending = set(range(len(self.children)))
        while pending:
            try:
                index, outcome = self.queue.get(timeout=0.25)
            except queue.Empty:
                waiting()
                dead = [n for n in pending if not self.children[n].is_alive()]
                if not dead:
                    continue
                try:  # a helper's last words are in the pipe by the time it has exited
                    index, outcome = self.queue.get(timeout=1)
                except queue.Empty:
                    index, outcome = dead[0], f"it exited with code {self.children[dead[0]].exitcode}"
            pending.discard(index)
            yield self.shares[index], outcome


def _helper(
    target: str, index: int, share: list[Part], selection: Selection, policy: DeliveryPolicy, results: Any, counter: Any
) -> None:
    done = 0

    def counted() -> None:
        nonlocal done
        done += 1
        if done % 100 == 0:
            with counter.get_lock():
                counter.value += 100

    engine = None
    try:
        engine = db.create_engine(target)
        result = Result([InterfaceResult(p.name, p.type, 0, True) for p in share])
        _send(engine, share, selection, policy, result, counted)
        results.put((index, result))
    except Exception as exc:  # noqa: BLE001 - the parent sends this share itself
        results.put((index, db.describe(exc, engine)))
