"""Prometheus metrics, served by ``campaignctl serve`` on ``GET /metrics``.

Two kinds, kept apart:

* what this process did (deliveries, state reports, engine passes, lease takeovers):
  counters and histograms in ``PROCESS``, counted where the work happens (the engine
  thread of ``serve``, its device API and MQTT listeners) once this module is imported
  (``campaignctl.counting``);
* what the database holds (campaigns by status, devices per campaign and status): read
  at scrape time by ``DatabaseCollector``, so that every ``serve`` sharing a database
  reports the same figures.

Each app gets a registry of its own (``AppMetrics``) for its requests and its database
view: several servers in one process (tests, the demo) do not mix their figures.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from campaignctl import counting
from campaignctl.summaries import Summaries

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from campaignctl.interfaces.base import Delivery, Failure

# No ``*_created`` series (the time each counter was made): a second series per counter
# that Prometheus does not need, as the process's start is known.
disable_created_metrics()

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

CAMPAIGN_STATUSES = ("draft", "scheduled", "running", "paused", "completed", "aborted", "cancelled")

# Deliveries take from milliseconds (a local broker) to minutes (retries with back-off).
_DELIVERY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
_PASS_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class ProcessMetrics:
    """What this process did, since it started."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        self.deliveries_attempted = Counter(
            "campaignctl_deliveries_attempted",
            "Documents handed to an interface's driver for a device.",
            ["interface"],
            registry=registry,
        )
        self.deliveries_succeeded = Counter(
            "campaignctl_deliveries_succeeded",
            "Documents the interface accepted for a device.",
            ["interface"],
            registry=registry,
        )
        self.deliveries_failed = Counter(
            "campaignctl_deliveries_failed",
            "Documents that could not be delivered, retries exhausted.",
            ["interface"],
            registry=registry,
        )
        self.delivery_seconds = Histogram(
            "campaignctl_delivery_seconds",
            "Time from handing a document to the driver to its outcome, retries included.",
            ["interface"],
            buckets=_DELIVERY_BUCKETS,
            registry=registry,
        )
        self.state_reports = Counter(
            "campaignctl_state_reports",
            "State reports received from devices, by source (mqtt, http) and outcome (recorded, rejected).",
            ["source", "outcome"],
            registry=registry,
        )
        self.engine_passes = Histogram(
            "campaignctl_engine_pass_seconds",
            "Duration of the rollout engine's passes.",
            buckets=_PASS_BUCKETS,
            registry=registry,
        )
        self.engine_errors = Counter(
            "campaignctl_engine_errors",
            "Engine passes (or jobs in a pass) that failed and are tried again.",
            registry=registry,
        )
        self.lease_takeovers = Counter(
            "campaignctl_lease_takeovers",
            "Job leases taken over from a process that stopped renewing them.",
            registry=registry,
        )


PROCESS = ProcessMetrics()
# This process serves /metrics: what it does is counted from now on.
counting.PROCESS = PROCESS


class DeliveryMeter:
    """Counts and times the deliveries of one interface: wraps the documents handed to
    its driver and the callbacks that receive their outcomes."""

    def __init__(self, interface: str, metrics: ProcessMetrics = PROCESS) -> None:
        self.attempted = metrics.deliveries_attempted.labels(interface)
        self.succeeded = metrics.deliveries_succeeded.labels(interface)
        self.failed_count = metrics.deliveries_failed.labels(interface)
        self.seconds = metrics.delivery_seconds.labels(interface)
        # device id → when its document was handed over (a retry keeps the first time)
        self._since: dict[int, float] = {}
        self._lock = threading.Lock()  # drivers call back from their own threads

    def watch(
        self,
        deliveries: Iterable["Delivery"],
        delivered: Callable[["Delivery"], None],
        failed: Callable[["Failure"], None],
    ) -> tuple[Iterator["Delivery"], Callable[["Delivery"], None], Callable[["Failure"], None]]:
        def handed() -> Iterator["Delivery"]:
            for delivery in deliveries:
                with self._lock:
                    self._since.setdefault(delivery.device_id, time.monotonic())
                self.attempted.inc()
                yield delivery

        def on_delivered(delivery: "Delivery") -> None:
            self._done(delivery.device_id, self.succeeded)
            delivered(delivery)

        def on_failed(failure: "Failure") -> None:
            self._done(failure.delivery.device_id, self.failed_count)
            failed(failure)

        return handed(), on_delivered, on_failed

    def _done(self, device_id: int, counter: Any) -> None:
        with self._lock:
            since = self._since.pop(device_id, None)
        counter.inc()
        if since is not None:
            self.seconds.observe(time.monotonic() - since)


class DatabaseCollector(Collector):
    """Campaigns by status and devices per active campaign and status, read from the
    database when scraped. The per-device counts are one aggregate per active campaign:
    cached for ``ttl`` seconds (``campaignctl.summaries``), so that scrapes from several
    Prometheus servers (or a short scrape interval) at 100k devices do not keep the
    database busy."""

    def __init__(self, engine: "Engine", ttl: float = 5.0) -> None:
        self.engine, self.ttl = engine, ttl
        # Active campaigns only: a finished one's ``ttl`` is never used.
        self._summaries = Summaries(ttl=ttl)

    def collect(self) -> Iterator[Metric]:
        from campaignctl import db

        campaigns = GaugeMetricFamily("campaignctl_campaigns", "Campaigns by status.", labels=["status"])
        with db.read(self.engine) as conn:
            counts = dict(db.run(conn, "SELECT status, count(*) FROM campaign GROUP BY status").all())
        for status in dict.fromkeys((*CAMPAIGN_STATUSES, *sorted(counts))):
            campaigns.add_metric([status], counts.get(status, 0))
        yield campaigns
        devices = GaugeMetricFamily(
            "campaignctl_campaign_devices",
            "Devices of each running, paused or scheduled campaign, by status.",
            labels=["campaign", "status"],
        )
        for name, states in self._device_counts().items():
            for state, count in states.items():
                devices.add_metric([name, state], count)
        yield devices

    def describe(self) -> Iterable[Metric]:
        return []  # no query at registration: the families are known at scrape time

    def _device_counts(self) -> dict[str, dict[str, int]]:
        return self._summaries.active(self.engine)


class AppMetrics:
    """One device API's metrics: its requests, its database view, and the process's."""

    def __init__(self, engine: "Engine", *, process: ProcessMetrics = PROCESS) -> None:
        self.process = process
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "campaignctl_http_requests",
            "Device API requests by route template, method and status code.",
            ["route", "method", "code"],
            registry=self.registry,
        )
        self.registry.register(DatabaseCollector(engine))

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric (the families of the two
        registries are distinct, so their texts add up)."""
        return generate_latest(self.process.registry) + generate_latest(self.registry)
