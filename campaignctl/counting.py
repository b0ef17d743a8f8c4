"""What this process does, counted for ``/metrics`` — only in a process that serves it.

``campaignctl.metrics`` (imported by ``campaignctl serve``) sets ``PROCESS``. Elsewhere
(``launch``, ``tick``, ``run``, ``listen``), nothing would ever read the counts: they are
not kept, no time goes into them on the delivery path, and prometheus_client (a tenth of
a second to import) is not loaded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from campaignctl.metrics import ProcessMetrics

PROCESS: "ProcessMetrics | None" = None


def fetched(interface: str) -> None:
    """A device of a polling (``http``) interface fetched a document a job waited for:
    that is its delivery, attempted and succeeded at once (its time is the device's poll
    interval, not campaignctl's: no latency is recorded)."""
    if PROCESS is not None:
        PROCESS.deliveries_attempted.labels(interface).inc()
        PROCESS.deliveries_succeeded.labels(interface).inc()


def state_reports(source: str, recorded: int, rejected: int) -> None:
    if PROCESS is not None:
        if recorded:
            PROCESS.state_reports.labels(source, "recorded").inc(recorded)
        if rejected:
            PROCESS.state_reports.labels(source, "rejected").inc(rejected)


def engine_error() -> None:
    if PROCESS is not None:
        PROCESS.engine_errors.inc()


def lease_takeover() -> None:
    if PROCESS is not None:
        PROCESS.lease_takeovers.inc()
