"""The audit trail: who changed what, and when, as events written in the transaction of
the change itself (a change and its event commit or vanish together, even under SIGKILL).

Who: ``--as NAME``, else ``CAMPAIGNCTL_USER``, else the login name; ``engine`` for what
the rollout engine decides; an operator's name for what the API does on their behalf.
The identity is carried in a context variable, set once where a request or a command
comes in, so that library functions need no ``actor`` parameter threaded through.
"""

from __future__ import annotations

import contextvars
import getpass
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Callable, Iterator

from campaignctl import db, dialect
from campaignctl.errors import InputError
from campaignctl.values import canonical, cut

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

ENGINE = "engine"
#: Longest identity kept: it is typed by people and shown in tables.
MAX_ACTOR = 100

_actor: contextvars.ContextVar[str | None] = contextvars.ContextVar("campaignctl_actor", default=None)


def check_actor(name: str) -> str:
    """A person's name as given to ``--as`` or ``CAMPAIGNCTL_USER``: printable, short."""
    name = name.strip()
    if not name:
        raise InputError("an identity (--as, CAMPAIGNCTL_USER) cannot be empty")
    if len(name) > MAX_ACTOR or not name.isprintable():
        raise InputError(f"an identity (--as, CAMPAIGNCTL_USER) is at most {MAX_ACTOR} printable characters")
    return name


def actor() -> str:
    """Who is acting now: the identity set by ``acting_as``, else ``CAMPAIGNCTL_USER``,
    else the login name."""
    name = _actor.get()
    if name is not None:
        return name
    env = os.environ.get("CAMPAIGNCTL_USER")
    if env:
        return check_actor(env)
    try:
        return check_actor(getpass.getuser())
    except (KeyError, OSError, InputError):  # no login name (a container without a passwd entry)
        return f"uid:{os.getuid()}"


@contextmanager
def acting_as(name: str) -> Iterator[None]:
    """Everything recorded inside is attributed to ``name``."""
    token = _actor.set(name)
    try:
        yield
    finally:
        _actor.reset(token)


def set_actor(name: str | None) -> None:
    """For a whole process (the CLI's ``--as``)."""
    _actor.set(None if name is None else check_actor(name))


def record(
    conn: "Connection",
    action: str,
    *,
    campaign: str | None = None,
    device: str | None = None,
    details: dict[str, Any] | None = None,
    by: str | None = None,
    at: str | None = None,
) -> int:
    """Append one event, in ``conn``'s transaction (the one making the change); its id."""
    return db.run(
        conn,
        "INSERT INTO event (at, actor, action, campaign, device, details) "
        "VALUES (:at, :actor, :action, :campaign, :device, :details) RETURNING id",
        {
            "at": at or db.utcnow(),
            "actor": by or actor(),
            "action": action,
            "campaign": campaign,
            "device": device,
            "details": canonical(details or {}),
        },
    ).scalar_one()


# -- reading and pruning the trail -------------------------------------------------------

#: Every action campaignctl records, for the docs and for ``--action`` (a family such as
#: ``batch`` stands for all of its actions).
ACTIONS = (
    "fleet.imported",
    "device.config_set",
    "device.joined",
    "device.left",
    "campaign.created",
    "campaign.applied",
    "campaign.deleted",
    "campaign.approved",
    "campaign.rejected",
    "approvals.voided",
    "campaign.launched",
    "campaign.scheduled_start",
    "campaign.paused",
    "campaign.resumed",
    "campaign.cancelled",
    "campaign.retried",
    "campaign.completed",
    "campaign.aborted",
    "batch.started",
    "batch.promoted",
    "batch.tripped",
    "rollback.created",
    "firmware.added",
    "firmware.recalled",
    "firmware.unrecalled",
    "job.resumed",
    "operator.added",
    "operator.revoked",
    "events.pruned",
)
#: Events read per query: a listing or an export holds at most this many at a time.
PAGE = 1000
_COLUMNS = "id, at, actor, action, campaign, device, details"


@dataclass(frozen=True)
class Filters:
    """Which events: all given conditions hold. ``action`` is an action name, or a family
    (the part before the dot: ``batch``); ``since`` a canonical UTC time (``parse_when``)."""

    campaign: str | None = None
    device: str | None = None
    action: str | None = None
    since: str | None = None

    def where(self) -> tuple[list[str], dict[str, Any]]:
        clauses: list[str] = []
        params: dict[str, Any] = {}
        for column in ("campaign", "device"):
            if getattr(self, column) is not None:
                clauses.append(f"{column} = :{column}")
                params[column] = getattr(self, column)
        if self.action is not None:
            if "." in self.action:
                clauses.append("action = :action")
                params["action"] = self.action
            else:  # a family: its names all start with "family." (no LIKE: "_" is a wildcard there)
                clauses.append("substr(action, 1, :family_length) = :family")
                params.update(family=f"{self.action}.", family_length=len(self.action) + 1)
        if self.since is not None:
            clauses.append("at >= :since")
            params["since"] = self.since
        return clauses, params


def parse_when(text: str, *, now: datetime | None = None) -> str:
    """A point in time as canonical UTC text: a duration back from now (``90s``, ``30m``,
    ``2h``, ``7d``) or an ISO 8601 date-time with a time zone. ValueError otherwise, with
    the message of the form the text looks like (both when it looks like neither)."""
    from campaignctl.rollout import parse_duration, parse_time

    text = text.strip()
    looks_like_time = any(c in text for c in "-:T")
    if text[:1].isdigit() and not looks_like_time:
        when = (now or datetime.now(timezone.utc)) - timedelta(seconds=parse_duration(text))
        return when.isoformat(timespec="microseconds").replace("+00:00", "Z")
    try:
        return parse_time(text)
    except ValueError:
        if text[:1].isdigit():
            raise
        raise ValueError(
            f"{cut(text, 40)!r} is neither a duration (90s, 30m, 2h, 7d) nor an ISO 8601 date-time "
            "(2026-12-01T02:00:00Z)"
        ) from None


def check_action(conn: "Connection", action: str) -> None:
    """An ``--action`` that names no known action, family, nor any recorded action is a
    typo: say so rather than list nothing."""
    families = {a.split(".", 1)[0] for a in ACTIONS}
    if action in ACTIONS or action in families:
        return
    if db.run(conn, "SELECT 1 FROM event WHERE action = :action LIMIT 1", {"action": action}).first() is not None:
        return
    from campaignctl.suggest import did_you_mean

    raise InputError(
        f"unknown action {action!r}" + (did_you_mean(action, [*ACTIONS, *sorted(families)]) or ""), field="--action"
    )


def _event(row: Any) -> dict[str, Any]:
    return {
        "id": row[0],
        "at": row[1],
        "actor": row[2],
        "action": row[3],
        "campaign": row[4],
        "device": row[5],
        "details": db.loads(row[6], dict),
    }


def _page(conn: "Connection", filters: Filters, after: int, size: int) -> list[dict[str, Any]]:
    clauses, params = filters.where()
    rows = db.run(
        conn,
        f"SELECT {_COLUMNS} FROM event WHERE " + " AND ".join(["id > :after", *clauses]) + " ORDER BY id LIMIT :size",
        {**params, "after": after, "size": size},
    ).all()
    return [_event(r) for r in rows]


def count(engine: "Engine", filters: Filters = Filters()) -> int:
    """How many events match."""
    clauses, params = filters.where()
    with db.read(engine) as conn:
        if filters.action is not None:
            check_action(conn, filters.action)
        sql = "SELECT count(*) FROM event" + (" WHERE " + " AND ".join(clauses) if clauses else "")
        return int(db.run(conn, sql, params).scalar_one())


def _start_after(conn: "Connection", filters: Filters, limit: int | None) -> int:
    """The id after which a listing starts: 0 for all, else the one before the newest
    ``limit`` events that match."""
    if limit is None:
        return 0
    clauses, params = filters.where()
    oldest = db.run(
        conn,
        "SELECT min(id) FROM (SELECT id FROM event"
        + (" WHERE " + " AND ".join(clauses) if clauses else "")
        + " ORDER BY id DESC LIMIT :limit) AS newest",
        {**params, "limit": limit},
    ).scalar()
    return 0 if oldest is None else int(oldest) - 1


#: PostgreSQL hands out ids when rows are inserted, but transactions commit in any order:
#: an event may become visible after one with a higher id. A follower looks again, for
#: this long, at ids above those it has seen (SQLite's one writer commits in id order).
SETTLE_SECONDS = 10.0


def events(
    engine: "Engine",
    filters: Filters = Filters(),
    *,
    limit: int | None = None,
    follow: bool = False,
    interval: float = 1.0,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[dict[str, Any]]:
    """The matching events, oldest first (with ``limit``: the newest ``limit`` of them),
    read a page at a time so that an export never holds them all. ``follow``: then the
    ones recorded since, as they come, looking every ``interval`` seconds, until the
    caller stops (Ctrl-C)."""
    with db.read(engine) as conn:
        if filters.action is not None:
            check_action(conn, filters.action)
        after = _start_after(conn, filters, limit)
        # A listing ends with the events there were when it began (``limit`` counted them).
        last = int(db.run(conn, "SELECT coalesce(max(id), 0) FROM event").scalar_one())
        settle = SETTLE_SECONDS if dialect.is_postgres(conn) else 0.0
    if not follow:
        yield from _pages(engine, filters, after, last)
        return
    # Every id up to ``floor`` is settled; above it, the ids already given, and when.
    floor, given = after, {}
    while True:
        for event in _pages(engine, filters, floor, None):
            if event["id"] not in given:
                given[event["id"]] = time.monotonic()
                yield event
        settled = [i for i, seen in given.items() if time.monotonic() - seen >= settle]
        if settled:
            floor = max(floor, *settled)
            given = {i: seen for i, seen in given.items() if i > floor}
        sleep(interval)


def _pages(engine: "Engine", filters: Filters, after: int, last: int | None) -> Iterator[dict[str, Any]]:
    """The matching events with ids above ``after`` (up to ``last``), a page per read."""
    while True:
        with db.read(engine) as conn:
            page = _page(conn, filters, after, PAGE)
        for event in page:
            if last is not None and event["id"] > last:
                return
            yield event
        if len(page) < PAGE:
            return
        after = page[-1]["id"]


def prune(engine: "Engine", before: str) -> dict[str, Any]:
    """Delete the events recorded before ``before`` (canonical UTC text), and record
    that, in the same transaction: the one way events leave the trail.

    The record takes its id after the delete, however long that took: on PostgreSQL ids
    are handed out as rows are inserted, and a follower settles ids seen for
    ``SETTLE_SECONDS`` only (``events``); an id taken before a long delete could be passed
    over. On SQLite an id is the highest plus one: a placeholder event, recorded first and
    removed last, keeps the highest id in place while every older event is deleted, so
    that the record never takes an id a follower has already seen."""
    with db.write(engine) as conn:
        placeholder = record(conn, "events.pruned", details={"before": before})
        count = db.run(
            conn,
            "DELETE FROM event WHERE at < :before AND id <> :placeholder",
            {"before": before, "placeholder": placeholder},
        ).rowcount
        record(conn, "events.pruned", details={"before": before, "count": count})
        db.run(conn, "DELETE FROM event WHERE id = :placeholder", {"placeholder": placeholder})
    return {"pruned": count, "before": before}
