"""Each launched campaign's supervision totals (devices per status: valid, waiting,
invalid, failed, timed_out, pending, …), for the views that show many campaigns at once:
the web front-end's campaign list and ``/metrics``.

A campaign's totals are one aggregate over its devices (``supervision.status_counts``,
about 0.25 s at 100,000 devices): they are cached, for a few seconds while the campaign
can still move (scheduled, running, paused) and longer once it is finished, so that a
list refreshed every few seconds, or scraped by several Prometheus servers, does not
keep the database busy.
"""

from __future__ import annotations

import threading
import time
import weakref
from typing import TYPE_CHECKING, Callable, Generic, Hashable, TypeVar

from campaignctl import db

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

#: Campaign statuses in which the totals still move.
ACTIVE_STATUSES = ("running", "paused", "scheduled")
#: Seconds the totals of an active campaign are reused.
ACTIVE_TTL = 5.0
#: Seconds the totals of a finished campaign are reused: they only move if it is
#: reported to after the end (a device reporting late), so a minute is enough.
FINISHED_TTL = 60.0

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class TTLCache(Generic[K, V]):
    """Values kept for a time chosen per key; thread-safe. The values missing are
    computed together under the lock: concurrent readers share one computation instead
    of each making it."""

    def __init__(self) -> None:
        self._entries: dict[K, tuple[float, V]] = {}  # key → (expires at, value)
        self._lock = threading.Lock()

    def get_many(self, ttls: dict[K, float], compute: Callable[[list[K]], dict[K, V]]) -> dict[K, V]:
        """The value of each key of ``ttls``; those missing or expired from ``compute``
        (given the keys, answering a value for each), kept ``ttls[key]`` seconds."""
        with self._lock:
            now = time.monotonic()
            # Drop what expired: keys of jobs no longer shown do not pile up.
            self._entries = {k: e for k, e in self._entries.items() if e[0] > now}
            missing = [k for k in ttls if k not in self._entries]
            if missing:
                computed = compute(missing)
                stored = time.monotonic()
                for key in missing:
                    self._entries[key] = (stored + ttls[key], computed[key])
            return {key: self._entries[key][1] for key in ttls}


def job_totals(conn: "Connection", job_ids: list[int]) -> dict[int, dict[str, int]]:
    """Job id → device status → count: one supervision aggregate per job."""
    from campaignctl.rollout import Rollout
    from campaignctl.supervision import status_counts, totals

    out: dict[int, dict[str, int]] = {}
    for job_id in job_ids:
        plan, settings = db.run(conn, "SELECT plan, settings FROM job WHERE id = :id", {"id": job_id}).one()
        rollout = Rollout.from_dict(db.loads(settings, dict).get("rollout"))
        out[job_id] = totals(status_counts(conn, job_id, db.loads(plan, dict), rollout))
    return out


class Summaries:
    """Cached supervision totals of campaigns' latest jobs: ``ttl`` seconds while a
    campaign is active, ``finished_ttl`` once it is not."""

    def __init__(self, ttl: float = ACTIVE_TTL, finished_ttl: float = FINISHED_TTL) -> None:
        self.ttl, self.finished_ttl = ttl, finished_ttl
        # Keyed by job and whether its campaign was active: a finished campaign that
        # runs again (retry) is counted afresh, not shown from the longer cache.
        self._cache: TTLCache[tuple[int, bool], dict[str, int]] = TTLCache()

    def totals(self, engine: "Engine", jobs: dict[int, str]) -> dict[int, dict[str, int]]:
        """Job id → device status → count, for ``jobs`` (job id → its campaign's status)."""
        keys = {(job_id, status in ACTIVE_STATUSES): job_id for job_id, status in jobs.items()}

        def compute(missing: list[tuple[int, bool]]) -> dict[tuple[int, bool], dict[str, int]]:
            with db.read(engine) as conn:
                counted = job_totals(conn, [keys[k] for k in missing])
            return {k: counted[keys[k]] for k in missing}

        ttls = {k: self.ttl if k[1] else self.finished_ttl for k in keys}
        return {keys[k]: v for k, v in self._cache.get_many(ttls, compute).items()}

    def active(self, engine: "Engine") -> dict[str, dict[str, int]]:
        """Campaign name → device status → count, for the campaigns that are running,
        paused or scheduled and have a job (a campaign scheduled for the first time has
        none yet)."""
        with db.read(engine) as conn:
            rows = db.run(
                conn,
                "SELECT c.name, c.status, j.id FROM campaign c "
                "JOIN job j ON j.id = (SELECT max(id) FROM job WHERE campaign_id = c.id) "
                "WHERE c.status IN :active ORDER BY c.name",
                {"active": list(ACTIVE_STATUSES)},
                "active",
            ).all()
        counted = self.totals(engine, {job_id: status for _name, status, job_id in rows})
        return {name: counted[job_id] for name, _status, job_id in rows}


_SHARED: "weakref.WeakKeyDictionary[Engine, Summaries]" = weakref.WeakKeyDictionary()
_SHARED_LOCK = threading.Lock()


def shared(engine: "Engine") -> Summaries:
    """The cache of one database's pages: every request of a server reuses it."""
    with _SHARED_LOCK:
        found = _SHARED.get(engine)
        if found is None:
            found = _SHARED[engine] = Summaries()
        return found
