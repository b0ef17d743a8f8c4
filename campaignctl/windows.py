"""Maintenance windows: when a rollout may deliver to a device, in the device's time zone.

A window is a wall-clock range (``02:00``–``05:00``, an end of ``24:00`` being midnight)
on days of the week, read in a time zone of the system's zoneinfo database. A window
whose ``end`` is not after its ``start`` crosses midnight: it opens on the day listed and
closes on the next one. Each opening is
turned into two instants (UTC) for that very date, so that daylight saving time is
handled the way clocks on the wall see it:

- a time the clocks skip is read with the offset from before the jump, as calendars do
  (RFC 5545): when 02:00 becomes 03:00, 02:00 is 03:00 and 02:30 is 03:30, so a window
  02:00–05:00 opens when the clocks jump and lasts two hours that night; a window whose
  end comes out before its start that way (02:30–03:15) does not open that day;
- a time that happens twice (02:30 when the clocks go back from 03:00 to 02:00) is its
  first occurrence: a window that opens then opens once, and closes at the first
  occurrence of its end (or the next day's, for one that crosses midnight).

Everything a window decides takes its "now" from ``now()``, the one place that reads the
test clock ``CAMPAIGNCTL_CLOCK``.
"""

from __future__ import annotations

import os
import re
import zoneinfo
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone, tzinfo
from functools import lru_cache
from time import monotonic
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from campaignctl import db, dialect
from campaignctl.errors import InputError

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from campaignctl.rollout import Rollout

#: For tests only: a fixed "now" (ISO 8601 with a time zone) for window decisions.
CLOCK_VARIABLE = "CAMPAIGNCTL_CLOCK"

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_FULL_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_SHOWN_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_CLOCK = re.compile(r"^(\d{1,2}):([0-5]\d)$")
_MINUTES_A_DAY = 24 * 60
#: Days looked ahead for the next opening: a week, and another one in case this week's
#: opening falls in a skipped hour.
_LOOKAHEAD_DAYS = 15


def now() -> datetime:
    """The time windows are judged at: the real clock, unless the test clock is set."""
    fixed = os.environ.get(CLOCK_VARIABLE)
    if not fixed:
        return datetime.now(timezone.utc)
    try:
        when = datetime.fromisoformat(fixed.strip().replace("Z", "+00:00"))
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        raise InputError(f"{CLOCK_VARIABLE}={fixed!r} is not an ISO 8601 date-time with a time zone")
    return when.astimezone(timezone.utc)


# -- what a manifest says ---------------------------------------------------------------


def parse_day(value: Any) -> str:
    """``mon`` … ``sun`` (or the full English name, any case) → ``mon`` … ``sun``."""
    text = value.strip().lower() if isinstance(value, str) else None
    if text in DAYS:
        return text
    if text in _FULL_DAYS:
        return DAYS[_FULL_DAYS.index(text)]
    raise ValueError(f"{value!r} is not a day: write one of {', '.join(DAYS)}")


def parse_clock(value: Any, *, end: bool = False) -> str:
    """``"HH:MM"`` (24-hour; ``"2:00"`` is ``"02:00"``) → ``"HH:MM"``; ``24:00`` only as an ``end``."""
    if isinstance(value, int) and not isinstance(value, bool):
        # YAML 1.1 reads an unquoted 22:30 as the number 1350 (base 60).
        raise ValueError(f'a time is written "HH:MM" in quotes (unquoted, YAML reads it as the number {value})')
    match = _CLOCK.match(value.strip()) if isinstance(value, str) else None
    hours, minutes = (int(match.group(1)), match.group(2)) if match else (99, "")
    if hours > 24 or (hours == 24 and (not end or minutes != "00")):
        raise ValueError(
            f'{value!r} is not a time of day: write it "HH:MM", from 00:00 to 23:59'
            + (" (or 24:00 for an end at midnight)" if end else "")
        )
    return f"{hours:02d}:{minutes}"


def check_zone(name: Any) -> str:
    """A time zone name of the zoneinfo database (``Europe/Paris``, ``UTC``), checked."""
    if not isinstance(name, str) or zone(name) is None:
        from campaignctl.suggest import did_you_mean

        hint = did_you_mean(name, zoneinfo.available_timezones()) if isinstance(name, str) else ""
        raise ValueError(f"unknown time zone {name!r}{hint} (names come from the zoneinfo database, e.g. Europe/Paris)")
    return name


@lru_cache(maxsize=1)
def known_zones() -> frozenset[str]:
    """The names of the zoneinfo database's zones (about 600): a device's tag is a time
    zone when it is one of them, so that judging any tag is a set lookup, never a file
    system search (a fleet's tags may hold tens of thousands of distinct wrong values)."""
    return frozenset(zoneinfo.available_timezones())


@lru_cache(maxsize=4096)
def zone(name: str) -> tzinfo | None:
    """The time zone called ``name``, or None when the database has no such zone (a
    device's tag may hold anything)."""
    if not name or name not in known_zones():
        return None
    try:
        return zoneinfo.ZoneInfo(name)
    except (ValueError, OSError, zoneinfo.ZoneInfoNotFoundError):
        return None


# -- when a window is open --------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    days: frozenset[int]  # Monday is 0
    start: int  # minutes after midnight, 0..1439
    end: int  # minutes after midnight, 1..1440; not after start: the next day

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Window":
        return cls(frozenset(DAYS.index(d) for d in data["days"]), _minutes(data["start"]), _minutes(data["end"]))

    def describe(self) -> str:
        return f"{_days_text(self.days)} {_clock_text(self.start)}–{_clock_text(self.end)}"


def _minutes(text: str) -> int:
    hours, minutes = text.split(":")
    return int(hours) * 60 + int(minutes)


def _clock_text(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def _days_text(days: frozenset[int]) -> str:
    """``Mon–Fri``, ``Sat, Sun``, ``every day``: runs of three days or more as ranges."""
    if len(days) == 7:
        return "every day"
    runs: list[list[int]] = []  # [first, last] of consecutive days
    for day in sorted(days):
        if runs and runs[-1][1] == day - 1:
            runs[-1][1] = day
        else:
            runs.append([day, day])
    parts = []
    for first, last in runs:
        if last - first >= 2:
            parts.append(f"{_SHOWN_DAYS[first]}–{_SHOWN_DAYS[last]}")
        else:
            parts.extend(_SHOWN_DAYS[d] for d in range(first, last + 1))
    return ", ".join(parts)


def _instant(day: date, minutes: int, tz: tzinfo) -> datetime:
    """The UTC instant of a wall-clock time on a date (see the module's DST rules)."""
    extra, minutes = divmod(minutes, _MINUTES_A_DAY)
    wall = datetime.combine(day + timedelta(days=extra), time(minutes // 60, minutes % 60), tzinfo=tz)
    return wall.astimezone(timezone.utc)


def _openings(windows: Sequence[Window], tz: tzinfo, at: datetime, days: int) -> Iterator[tuple[datetime, datetime]]:
    """The windows' openings (start, end) in UTC, from the one that opened the day before
    ``at`` (in ``tz``) to ``days`` days after it; an opening the clocks skip is left out."""
    today = at.astimezone(tz).date()
    for offset in range(-1, days + 1):
        day = today + timedelta(days=offset)
        for window in windows:
            if day.weekday() in window.days:
                start = _instant(day, window.start, tz)
                end = _instant(day + timedelta(days=window.end <= window.start), window.end, tz)
                if end > start:
                    yield start, end


def is_open(windows: Sequence[Window], tz: tzinfo, at: datetime) -> bool:
    return any(start <= at < end for start, end in _openings(windows, tz, at, 1))


def next_open(windows: Sequence[Window], tz: tzinfo, at: datetime) -> datetime:
    """The first instant from ``at`` on when a window is open (``at`` itself when one is)."""
    starts = []
    for start, end in _openings(windows, tz, at, _LOOKAHEAD_DAYS):
        if start <= at < end:
            return at
        if start > at:
            starts.append(start)
    return min(starts)


#: What ``open_until`` gives for windows that never close (every day, all day).
NEVER = datetime.max.replace(tzinfo=timezone.utc)


def open_until(windows: Sequence[Window], tz: tzinfo, at: datetime) -> datetime | None:
    """When the windows open at ``at`` close (windows that touch or overlap count as one):
    None when none is open, ``NEVER`` when they cover every moment of the week."""
    until = None
    for start, end in sorted(_openings(windows, tz, at, 8)):
        if start <= (until or at) < end:
            until = end
    if until is not None and until - at > timedelta(days=7):
        return NEVER  # open a whole week on end: the same every week
    return until


# -- a rollout's windows ----------------------------------------------------------------


@dataclass(frozen=True)
class Schedule:
    """A rollout's windows and how a device's time zone is found."""

    windows: tuple[Window, ...]
    timezone: str  # the rollout's zone: devices without (a known zone in) the tag
    tag: str | None  # the device tag that names a device's own time zone

    @classmethod
    def of(cls, rollout: "Rollout") -> "Schedule | None":
        if not rollout.windows:
            return None
        return cls(tuple(Window.from_dict(w) for w in rollout.windows), rollout.timezone or "UTC", rollout.timezone_tag)

    def zone_name(self, tag_value: str | None) -> str:
        """The time zone of a device whose tag holds ``tag_value`` (None: no such tag): the
        tag's when it names a known zone, else the rollout's."""
        if self.tag is not None and tag_value and tag_value in known_zones():
            return tag_value
        return self.timezone

    def is_open(self, zone_name: str, at: datetime) -> bool:
        return is_open(self.windows, _zone(zone_name), at)

    def opens(self, zone_name: str, at: datetime) -> str:
        """``Tue 02:00 Europe/Paris``: when the next window opens, on the zone's clock."""
        when = next_open(self.windows, _zone(zone_name), at).astimezone(_zone(zone_name))
        return f"{_SHOWN_DAYS[when.weekday()]} {when:%H:%M} {zone_name}"

    def waiting_reason(self, zone_name: str, at: datetime) -> str:
        """The reason of a device left pending outside its windows."""
        return f"waiting for window (opens {self.opens(zone_name, at)})"

    def describe(self) -> str:
        """``Mon–Fri 02:00–05:00 (Europe/Paris, or the zone in the device's tag tz)``."""
        where = self.timezone + (f", or the zone in the device's tag {self.tag}" if self.tag else "")
        return "; ".join(self.windows_text()) + f" ({where})"

    def summary(self, at: datetime) -> dict[str, Any]:
        """The windows and, in the rollout's zone, whether one is open at ``at`` and when
        the next opens or this one closes: for ``plan`` and ``status``."""
        tz = _zone(self.timezone)
        until = open_until(self.windows, tz, at)
        opens = next_open(self.windows, tz, at) if until is None else None
        if until is NEVER:
            text = "the windows are always open"
        elif until is not None:
            text = f"window open until {_local_text(until, tz)} {self.timezone}"
        else:
            assert opens is not None
            text = f"next window opens {_local_text(opens, tz)} {self.timezone}"
        if self.tag:
            text += f"; devices with a tag {self.tag} follow that time zone"
        return {
            "windows": self.windows_text(),
            "timezone": self.timezone,
            "timezone_tag": self.tag,
            "open": until is not None,
            "opens_at": None if opens is None else _utc_text(opens),
            "closes_at": None if until in (None, NEVER) else _utc_text(until),
            "text": text,
        }

    def windows_text(self) -> list[str]:
        return [w.describe() for w in self.windows]


def _zone(name: str) -> tzinfo:
    # Names come from validated manifests or from zone_name, which checked them.
    found = zone(name)
    return found if found is not None else timezone.utc


def _local_text(when: datetime, tz: tzinfo) -> str:
    local = when.astimezone(tz)
    return f"{_SHOWN_DAYS[local.weekday()]} {local:%Y-%m-%d %H:%M}"


def _utc_text(when: datetime) -> str:
    return when.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


# -- which devices of a batch may be written now ----------------------------------------


class Gate:
    """Which pending devices of a batch the engine may write now: those whose time zone
    is in a window. Every zone of the database is judged once a minute, in the process;
    the database then keeps the devices of the open zones with one clause whose
    parameters are zone names: at most one per zone of the database (about 600), however
    many devices and distinct tag values (valid or not) the batch has."""

    def __init__(self, schedule: Schedule) -> None:
        self.schedule = schedule
        # The chunks go up the device ids, and the devices they leave behind wait for their
        # window: each chunk is looked for past the last one (a device behind whose window
        # opened meanwhile goes at the next pass), not through them all again.
        self.after = 0
        self._judged: tuple[datetime, bool, list[str]] | None = None  # (minute, default open, zones)

    def passed(self, device_id: int) -> None:
        """The chunk written last ended at ``device_id``."""
        self.after = max(self.after, device_id)

    @classmethod
    def for_rollout(cls, rollout: "Rollout") -> "Gate | None":
        """The gate of a rollout's batches; None when it has no windows (every device may go)."""
        schedule = Schedule.of(rollout)
        return None if schedule is None else cls(schedule)

    def judge(self, at: datetime) -> tuple[bool, list[str]]:
        """Whether the rollout's zone is in a window at ``at``, and the zones that differ
        from it: the open ones when it is closed, the closed ones when it is open. Window
        edges fall on whole minutes (every zone's offset is whole minutes): a judgement
        holds for the minute."""
        minute = at.replace(second=0, microsecond=0)
        if self._judged is None or self._judged[0] != minute:
            default = self.schedule.is_open(self.schedule.timezone, minute)
            names = [] if self.schedule.tag is None else sorted(known_zones())
            self._judged = (minute, default, [n for n in names if self.schedule.is_open(n, minute) != default])
        return self._judged[1], self._judged[2]

    def clause(self, conn: "Connection | Any", alias: str) -> tuple[str, dict[str, Any], tuple[str, ...]] | None:
        """`` AND …`` on the device ``alias`` keeping the devices whose window is open now,
        its parameters and the names of those that take a list; None when no device's
        window is open. A tag that is no zone falls to the rollout's zone, as documented."""
        default, others = self.judge(now())
        if not others:
            return ("", {}, ()) if default else None
        assert self.schedule.tag is not None
        tag, params = dialect.tag_value(conn, alias, self.schedule.tag, "gate_tag")
        params["gate_zones"] = others
        if default:  # every device but those of the closed zones
            return f" AND coalesce({tag}, '') NOT IN :gate_zones", params, ("gate_zones",)
        return f" AND {tag} IN :gate_zones", params, ("gate_zones",)

    def next_opening(self, conn: "Connection", job_id: int, batch: int) -> datetime:
        """The first instant a window opens for one of the batch's pending devices (now
        when one is open): judged over the distinct zones of those devices."""
        at = now()
        names = {self.schedule.timezone}
        if self.schedule.tag is not None:
            tag, params = dialect.tag_value(conn, "d", self.schedule.tag, "gate_tag")
            values = db.run(
                conn,
                f"SELECT DISTINCT {tag} FROM job_item ji JOIN device d ON d.id = ji.device_id "
                "WHERE ji.job_id = :job AND ji.batch = :batch AND ji.status = 'pending'",
                {**params, "job": job_id, "batch": batch},
            ).scalars()
            names |= {self.schedule.zone_name(v) for v in values}
        return min(next_open(self.schedule.windows, _zone(n), at) for n in names)


#: How long a pass may trust a batch's remembered next opening: devices re-tagged to
#: another zone, and reports the breaker judges, are looked at again within this time.
RECHECK_SECONDS = 60.0
_closed: dict[tuple[str, int, int, Schedule], tuple[datetime, float]] = {}


def remember_closed(database: str, job_id: int, batch: int, schedule: Schedule, opens: datetime) -> None:
    """No pending device of the batch (of the job ``job_id`` in the ``database`` at that
    URL) is in a window until ``opens``: passes before it (and within ``RECHECK_SECONDS``)
    need not look (see ``still_closed``)."""
    if opens > now():
        _closed[(database, job_id, batch, schedule)] = (opens, monotonic() + RECHECK_SECONDS)


def still_closed(database: str, job_id: int, batch: int, schedule: Schedule) -> bool:
    """Whether a pass remembered, recently enough, that the batch waits for a window that
    has not opened yet: the next pass then returns at once (a process's memory: each
    process finds it out once)."""
    key = (database, job_id, batch, schedule)
    found = _closed.get(key)
    if found is not None and now() < found[0] and monotonic() < found[1]:
        return True
    _closed.pop(key, None)
    return False


class Waiting:
    """The reasons of pending devices of started batches in a rollout with windows: they
    wait for their window (a device whose window is open now is about to be written)."""

    def __init__(self, schedule: Schedule) -> None:
        self.schedule = schedule
        self.at = now()
        self.reasons: dict[str, str | None] = {}  # by zone: devices share a few zones

    @classmethod
    def of(cls, rollout: "Rollout") -> "Waiting | None":
        schedule = Schedule.of(rollout)
        return None if schedule is None else cls(schedule)

    def column(self, conn: "Connection", alias: str) -> tuple[str, dict[str, Any]]:
        """``, <the device's time zone tag>`` for a listing's SELECT (NULL without a tag),
        and its parameters: read with the device's row, at no extra lookup."""
        if self.schedule.tag is None:
            return ", NULL", {}
        tag, params = dialect.tag_value(conn, alias, self.schedule.tag, "zone_tag")
        return f", {tag}", params

    def reason(self, tag_value: str | None) -> str | None:
        """The reason of a pending device of a started batch whose tag holds ``tag_value``."""
        zone_name = self.schedule.zone_name(tag_value)
        if zone_name not in self.reasons:
            self.reasons[zone_name] = (
                None if self.schedule.is_open(zone_name, self.at) else self.schedule.waiting_reason(zone_name, self.at)
            )
        return self.reasons[zone_name]


def outside_windows(conn: "Connection", rollout: "Rollout", device_ids: list[int]) -> dict[str, str]:
    """Of these devices, those whose windows are closed now, by name, with their reason
    (``waiting for window (opens …)``); empty without windows."""
    waiting = Waiting.of(rollout)
    if waiting is None or not device_ids:
        return {}
    column, params = waiting.column(conn, "d")
    closed: dict[str, str] = {}
    for first in range(0, len(device_ids), _IDS_AT_ONCE):
        rows = db.run(
            conn,
            f"SELECT d.name{column} FROM device d WHERE d.id IN :ids",
            {**params, "ids": device_ids[first : first + _IDS_AT_ONCE]},
            "ids",
        )
        closed.update((name, reason) for name, tag_value in rows if (reason := waiting.reason(tag_value)) is not None)
    return dict(sorted(closed.items()))


#: Device ids bound at once in one statement (one parameter each).
_IDS_AT_ONCE = 5000


def summary_of(rollout: "Rollout", at: datetime | None = None) -> dict[str, Any] | None:
    """``Schedule.summary`` of a rollout's windows now; None without windows."""
    schedule = Schedule.of(rollout)
    return None if schedule is None else schedule.summary(now() if at is None else at)
