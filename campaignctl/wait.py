"""Waiting for a campaign's outcome (CI gating): ``status --wait``, ``launch --wait``."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable, Collection

from campaignctl import db, jobs
from campaignctl.control import campaign_row
from campaignctl.errors import ConflictError
from campaignctl.supervision import DEVICE_STATES, LEFT_OUT_STATES
from campaignctl.worker import SLICE_SECONDS, tick

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

FINAL_DEVICE_STATES = ("valid", "invalid", "failed", "timed_out", "cancelled", "skipped", "superseded")

EXIT_OK, EXIT_BELOW, EXIT_TIMEOUT, EXIT_STOPPED = 0, 3, 4, 5


def outcome(data: dict[str, Any], min_valid: float) -> int | None:
    """The exit code a finished wait gets for this supervision, or None to go on waiting."""
    status = data["status"]
    if status in ("paused", "aborted"):
        return EXIT_STOPPED
    if status == "cancelled":
        return EXIT_BELOW  # ended by a user: whatever the devices do now
    if status != "completed":
        return None
    summary = data["summary"]
    if any(summary[s] for s in DEVICE_STATES if s not in FINAL_DEVICE_STATES):
        return None  # some devices are still on their way
    # Devices the campaign left out (version rules, a campaign of higher priority) are
    # not its to make valid.
    counted = summary["total"] - sum(summary[s] for s in LEFT_OUT_STATES)
    valid = summary["valid"] / counted if counted else 1.0
    return EXIT_OK if valid >= min_valid - 1e-9 else EXIT_BELOW


def wait(
    engine: "Engine",
    name: str,
    *,
    timeout: float | None = None,
    min_valid: float = 1.0,
    interval: float = 1.0,
    on_update: Callable[[dict[str, Any]], None] = lambda _d: None,
    progress: jobs.Progress | None = None,
    devices: int | None = None,
    only: Collection[str] | None = None,
) -> tuple[int, dict[str, Any]]:
    """Block until the campaign ends (see ``outcome``) or ``timeout`` seconds pass,
    advancing it meanwhile (so that a CI job needs no separate worker); returns the exit
    code and the last supervision, which lists the first ``devices`` devices (all by
    default) among those whose status is in ``only``."""
    from campaignctl.supervision import campaign_status

    deadline = None if timeout is None else time.monotonic() + timeout
    with db.read(engine) as conn:
        if campaign_row(conn, name).status == "draft":
            raise ConflictError(f"campaign {name!r} is not launched: nothing to wait for")
    while True:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        tick(
            engine,
            campaign=name,
            progress=progress,
            slice_seconds=SLICE_SECONDS if left is None else min(SLICE_SECONDS, left),
        )
        data = campaign_status(engine, name, only=only, limit=devices)
        on_update(data)
        code = outcome(data, min_valid)
        if code is not None:
            return code, data
        if deadline is not None and time.monotonic() >= deadline:
            return EXIT_TIMEOUT, data
        pause_for = interval if deadline is None else max(0.0, min(interval, deadline - time.monotonic()))
        time.sleep(pause_for)
