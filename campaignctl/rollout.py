"""Rollout settings: batches, thresholds, durations, and how devices are split in batches."""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Sequence

from campaignctl.values import cut

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
# Longer waits are typing mistakes, and far longer ones overflow the clock arithmetic.
MAX_DURATION = 365 * 86400
# Device counts and rates (batch sizes, max_per_minute): far beyond any fleet, within 64 bits.
MAX_COUNT = 1_000_000_000


def parse_duration(value: Any) -> float:
    """``90s``, ``30m``, ``2h``, ``1d``; a bare number is seconds; at most a year."""
    if isinstance(value, bool):
        raise ValueError("a duration is written 90s, 30m, 2h or a number of seconds")
    if isinstance(value, (int, float)):
        if isinstance(value, float) and math.isnan(value):
            raise ValueError("nan is not a duration")
        if value < 0:
            raise ValueError("a duration cannot be negative")
        seconds = float(value) if value <= MAX_DURATION else math.inf  # a 400-digit int is no float
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(f"{_shown(value)} is not a duration (write 90s, 30m, 2h or a number of seconds)")
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds > MAX_DURATION:
        raise ValueError(f"{_shown(value)} is longer than {format_duration(MAX_DURATION)}, the longest duration")
    return seconds


def _shown(value: Any) -> str:
    """``value`` for a message, cut short: it may be a 5000-digit number."""
    return cut(repr(value) if isinstance(value, str) else str(value), 40)


def check_count(value: int, what: str) -> int:
    if value > MAX_COUNT:
        raise ValueError(f"{what} of {_shown(value)} is more than {MAX_COUNT:,}")
    return value


def format_duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def parse_percent(value: Any) -> float:
    """``95%`` (or the number 95) → 0.95."""
    if isinstance(value, bool):
        raise ValueError("a percentage is written like 95%")
    text = str(value).strip()
    number = text[:-1] if text.endswith("%") else text
    try:
        percent = float(number)
    except (ValueError, OverflowError):
        raise ValueError(f"{_shown(value)} is not a percentage (write it like 95%)") from None
    if not 0 <= percent <= 100:
        raise ValueError(f"{_shown(value)} is not between 0% and 100%")
    return percent / 100


def parse_time(value: Any) -> str:
    """An ISO 8601 date-time with a timezone → canonical UTC text (sorts like time)."""
    if isinstance(value, datetime):
        when = value
    else:
        try:
            when = datetime.fromisoformat(str(value).strip().replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"{_shown(value)} is not an ISO 8601 date-time (e.g. 2026-12-01T02:00:00Z)") from None
    if when.tzinfo is None:
        raise ValueError(f"{when.isoformat()} has no timezone: write it in UTC with a Z, e.g. 2026-12-01T02:00:00Z")
    try:
        utc = when.astimezone(timezone.utc)
    except OverflowError:  # 9999-12-31T23:59:59-01:00 is in the year 10000 in UTC
        raise ValueError(f"{when.isoformat()} is out of range: in UTC it falls outside the years 1 to 9999") from None
    return utc.isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclass
class Rollout:
    """A validated ``rollout:`` section. Fractions are 0..1, durations seconds.

    ``batches`` items are device counts (int: that many devices) or cumulative
    percentages of the fleet ("25%": up to that share), as written in the manifest.
    """

    batches: list[int | str] | None = None
    batch_size: int | None = None
    canary: dict[str, Any] | None = None  # a selector: names, type, tags
    bake_time: float = 0.0
    success_threshold: float = 0.0
    error_threshold: float | None = None
    on_error: str = "pause"
    max_per_minute: int | None = None
    device_timeout: float | None = None
    explicit: bool = field(default=False)  # the manifest had a rollout section
    # Maintenance windows (campaignctl.windows): [{"days": ["mon", ...], "start": "02:00",
    # "end": "05:00"}], read in ``timezone`` (default UTC) or in the zone a device's tag
    # ``timezone_tag`` names.
    windows: list[dict[str, Any]] | None = None
    timezone: str | None = None
    timezone_tag: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        # Written only when set, so that a rollout stored before windows existed compares
        # equal to the same manifest applied again.
        for key in ("windows", "timezone", "timezone_tag"):
            if data[key] is None:
                del data[key]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "Rollout":
        return cls(**data) if data else cls()

    def describe(self) -> str:
        parts = []
        if self.batches:
            parts.append("batches " + ", ".join(str(b) for b in self.batches))
        elif self.batch_size:
            parts.append(f"batches of {self.batch_size}")
        if self.canary:
            parts.append("canary first")
        if self.bake_time:
            parts.append(f"bake {format_duration(self.bake_time)}")
        if self.explicit:
            parts.append(f"success ≥ {self.success_threshold:.0%}")
        if self.error_threshold is not None:
            parts.append(f"errors ≥ {self.error_threshold:.0%} → {self.on_error}")
        if self.max_per_minute:
            parts.append(f"{self.max_per_minute}/min")
        if self.device_timeout:
            parts.append(f"device timeout {format_duration(self.device_timeout)}")
        if self.windows:
            from campaignctl.windows import Schedule

            schedule = Schedule.of(self)
            assert schedule is not None
            parts.append(f"windows {schedule.describe()}")
        return ", ".join(parts) or "one batch"


def order_devices(campaign: str, devices: Sequence[tuple[int, str, bool]]) -> list[int]:
    """Deterministic rollout order: canaries first, each group shuffled by a hash of the
    campaign and device names, so that batches sample the fleet instead of following
    name order (one site, one production run)."""

    def key(item: tuple[int, str, bool]) -> tuple[bool, str]:
        device_id, name, canary = item
        return (not canary, hashlib.sha256(f"{campaign}\0{name}".encode()).hexdigest())

    return [d[0] for d in sorted(devices, key=key)]


def batch_sizes(rollout: Rollout, total: int) -> list[int]:
    """Sizes of the batches for ``total`` devices, in order; empty batches are dropped.

    Canaries come first in the order, so the first batches hold them; when the canary
    group is larger than the first batch, it spans several.
    """
    sizes: list[int] = []
    done = 0
    if rollout.batches:
        for item in rollout.batches:
            if isinstance(item, str):
                target = min(total, math.ceil(parse_percent(item) * total - 1e-9))
                size = max(0, target - done)
            else:
                size = min(item, total - done)
            if size > 0:
                sizes.append(size)
                done += size
    elif rollout.batch_size:
        while done < total:
            size = min(rollout.batch_size, total - done)
            sizes.append(size)
            done += size
    if done < total:
        sizes.append(total - done)  # what the list leaves over is one last batch
    if not sizes:
        sizes = [total]
    return sizes
