"""GET /metrics of `campaignctl serve`: scraped from a real server and read with
prometheus_client's own parser."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import campaignctl_cmd, fleet_yaml, http, query, subprocess_env, wait_until, write
from prometheus_client.parser import text_string_to_metric_families

CAMPAIGN = """\
    name: eco
    devices: {names: [sensor-0001, sensor-0002, sensor-0003, sensor-0004]}
    configurations: {mode: eco}
    expected_state: {mode: eco}
    rollout: {batches: [2, 100%], bake_time: 1h}
    """


def _scrape(base: str, token: str | None = None) -> dict[str, dict[tuple, float]]:
    """Sample name → labels (sorted items) → value."""
    status, headers, body = http(
        "GET", f"{base}/metrics", headers={"Authorization": f"Bearer {token}"} if token else None
    )
    assert status == 200 and headers["content-type"].startswith("text/plain"), (status, body)
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def _value(samples: dict[str, dict[tuple, float]], name: str, **labels: str) -> float:
    return samples.get(name, {}).get(tuple(sorted(labels.items())), 0.0)


def _process(name: str, **labels: str) -> float:
    """A counter of this process now (they add up over the tests of one process)."""
    from campaignctl.metrics import PROCESS

    return PROCESS.registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
def served(cli, tmp_path, broker, prefix, db_url):
    """Four sensors on MQTT and one camera on HTTP, a campaign launched on the sensors,
    and serve with its rollout engine: (base URL, camera secret, deliveries before)."""
    from campaignctl import db
    from campaignctl.server import Server

    text = fleet_yaml(broker.url, prefix, devices=4, extra="  - {name: cam-1, type: sensor-v2, interface: devapi}\n")
    text = text.replace("interfaces:\n", 'interfaces:\n  devapi: {type: http, url: "http://127.0.0.1:1"}\n', 1)
    cli("devices", "import", write(tmp_path, "fleet.yaml", text))
    before = {
        name: _process(f"campaignctl_deliveries_{name}_total", interface="broker")
        for name in ("attempted", "succeeded", "failed")
    }
    before["latency"] = _process("campaignctl_delivery_seconds_count", interface="broker")
    cli("create", "-f", write(tmp_path, "eco.yaml", CAMPAIGN))
    cli("launch", "eco")
    cli("devices", "report", "sensor-0001", "mode=eco")
    cli("create", "-f", write(tmp_path, "later.yaml", CAMPAIGN.replace("name: eco", "name: later")))
    cli(
        "create",
        "-f",
        write(tmp_path, "cam.yaml", "name: cam\ndevices: {names: [cam-1]}\nconfigurations: {mode: eco}\n"),
    )
    cli("launch", "cam")  # waits for cam-1 to fetch its document
    engine = db.create_engine(db_url)
    server = Server(engine, port=0, listen_mqtt=False, engine_interval=0.1).start()
    yield f"http://127.0.0.1:{server.port}", cli("devices", "credentials", "cam-1").stdout.strip(), before
    server.stop()
    engine.dispose()


def test_metrics_of_campaigns_devices_deliveries_and_requests(served, db_url):
    base, secret, before = served
    samples = _scrape(base)
    # Campaigns by status, every status present (0 included), from the database.
    assert _value(samples, "campaignctl_campaigns", status="running") == 2
    assert _value(samples, "campaignctl_campaigns", status="draft") == 1
    assert ("status", "paused") in {label for labels in samples["campaignctl_campaigns"] for label in labels}
    # Devices of the running campaign by status: its first batch (two) delivered, one of
    # them reported what it expects; the second batch waits for the bake time.
    assert _value(samples, "campaignctl_campaign_devices", campaign="eco", status="valid") == 1
    assert _value(samples, "campaignctl_campaign_devices", campaign="eco", status="waiting") == 1
    assert _value(samples, "campaignctl_campaign_devices", campaign="eco", status="pending") == 2
    assert not any(dict(labels)["campaign"] == "later" for labels in samples["campaignctl_campaign_devices"])
    # The launch (in this process) delivered two documents over MQTT, each timed.
    assert _value(samples, "campaignctl_deliveries_attempted_total", interface="broker") - before["attempted"] == 2
    assert _value(samples, "campaignctl_deliveries_succeeded_total", interface="broker") - before["succeeded"] == 2
    assert _value(samples, "campaignctl_deliveries_failed_total", interface="broker") == before["failed"]
    assert _value(samples, "campaignctl_delivery_seconds_count", interface="broker") - before["latency"] == 2

    # Requests by route template (never a device's name), method and code; state reports.
    reports = _process("campaignctl_state_reports_total", source="http", outcome="recorded")
    fetched = _process("campaignctl_deliveries_succeeded_total", interface="devapi")
    rejected = _process("campaignctl_state_reports_total", source="http", outcome="rejected")
    auth = {"Authorization": f"Bearer {secret}"}
    assert http("GET", f"{base}/v1/devices/cam-1/configuration", headers=auth)[0] == 200
    assert http("GET", f"{base}/v1/devices/ghost-device/configuration")[0] == 401
    assert http("PUT", f"{base}/v1/devices/cam-1/state", headers=auth, body='{"mode": "eco"}')[0] == 204
    assert http("PUT", f"{base}/v1/devices/cam-1/state", headers=auth, body="[1]")[0] == 400
    assert http("GET", f"{base}/no/such/path")[0] == 404
    samples = _scrape(base)
    route = "/v1/devices/{name}/configuration"
    assert _value(samples, "campaignctl_http_requests_total", route=route, method="GET", code="200") == 1
    assert _value(samples, "campaignctl_http_requests_total", route=route, method="GET", code="401") == 1
    assert (
        _value(samples, "campaignctl_http_requests_total", route="/v1/devices/{name}/state", method="PUT", code="400")
        == 1
    )
    assert _value(samples, "campaignctl_http_requests_total", route="unmatched", method="GET", code="404") == 1
    assert _value(samples, "campaignctl_http_requests_total", route="/metrics", method="GET", code="200") == 1
    assert not any(
        "ghost" in str(labels) or "cam-1" in str(labels) for labels in samples["campaignctl_http_requests_total"]
    )
    assert _value(samples, "campaignctl_state_reports_total", source="http", outcome="recorded") - reports == 1
    # A polling device's fetch of a document a job waited for is its delivery.
    assert _value(samples, "campaignctl_deliveries_succeeded_total", interface="devapi") - fetched == 1
    assert _value(samples, "campaignctl_state_reports_total", source="http", outcome="rejected") - rejected == 1

    # The engine's passes are timed; a lease left by a dead process is taken over, once.
    assert wait_until(lambda: _value(_scrape(base), "campaignctl_engine_pass_seconds_count") > 0)
    takeovers = _process("campaignctl_lease_takeovers_total")
    query(
        db_url,
        "UPDATE job SET lease_owner = 'gone-host:1:dead', lease_expires_at = 0 "
        "WHERE campaign_id = (SELECT id FROM campaign WHERE name = 'eco')",
    )
    wait_until(lambda: _process("campaignctl_lease_takeovers_total") == takeovers + 1)


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_device_counts_are_cached_between_scrapes(served, cli, db_url):
    """At 100k devices the per-campaign counts cost a query each: scrapes within the
    cache's time reuse them; the campaign counts are read every time."""
    from campaignctl import db
    from campaignctl.metrics import DatabaseCollector

    def collect(collector: DatabaseCollector) -> dict[str, dict[tuple, float]]:
        return {f.name: {tuple(sorted(s.labels.items())): s.value for s in f.samples} for f in collector.collect()}

    engine = db.create_engine(db_url)
    try:
        cached, fresh = DatabaseCollector(engine, ttl=3600), DatabaseCollector(engine, ttl=0)
        assert _value(collect(cached), "campaignctl_campaign_devices", campaign="eco", status="valid") == 1
        cli("devices", "report", "sensor-0002", "mode=eco")
        cli("pause", "eco")
        again = collect(cached)
        assert _value(again, "campaignctl_campaigns", status="paused") == 1
        assert _value(again, "campaignctl_campaign_devices", campaign="eco", status="valid") == 1  # cached
        assert _value(collect(fresh), "campaignctl_campaign_devices", campaign="eco", status="valid") == 2
    finally:
        engine.dispose()


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_metrics_token(cli, db_url, tmp_path):
    """With --metrics-token-env, /metrics wants the token as a bearer token; the token
    is read from the environment and never written in the log."""
    import re

    token = "m3trics-t0ken-value-4242"
    proc = subprocess.Popen(
        campaignctl_cmd(
            "--db",
            db_url,
            "serve",
            "--port",
            "0",
            "--no-mqtt",
            "--no-engine",
            "--metrics-token-env",
            "SCRAPE_TOKEN",
            "--log-format",
            "json",
            "--access-log",
        ),
        env=subprocess_env(SCRAPE_TOKEN=token),
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    try:
        assert proc.stderr is not None
        while not lines or "serving" not in lines[-1]:
            lines.append(proc.stderr.readline())
            assert lines[-1], "serve stopped before it served"
        started = json.loads(lines[-1])
        assert started["level"] == "info" and started["logger"] == "campaignctl"
        base = re.search(r"http://127\.0\.0\.1:\d+", started["message"]).group(0)
        assert http("GET", f"{base}/metrics")[0] == 401
        status, headers, body = http("GET", f"{base}/metrics", headers={"Authorization": "Bearer wrong"})
        assert status == 401 and headers["www-authenticate"].startswith("Bearer") and token not in body.decode()
        assert "campaignctl_campaigns" in _scrape(base, token)
    finally:
        proc.terminate()
        _, rest = proc.communicate(timeout=20)
    lines += rest.splitlines()
    entries = [json.loads(line) for line in lines if line.strip()]
    assert token not in "".join(lines)
    # uvicorn's access lines come through the same handler, as JSON.
    assert any(e["logger"] == "uvicorn.access" and "/metrics" in e["message"] for e in entries)
    assert entries[-1]["message"] == "stopped"

    missing = cli("serve", "--metrics-token-env", "NO_SUCH_VARIABLE_SET", code=1)
    assert (
        "Error: --metrics-token-env: the environment variable NO_SUCH_VARIABLE_SET holds no metrics token"
        in missing.stderr
    )


def test_processes_that_serve_no_metrics_count_nothing_and_load_no_prometheus():
    # launch, tick, run and listen: no /metrics to read the counts, so no time on the
    # delivery path and no prometheus_client import (a tenth of a second) at start-up.
    code = (
        "import sys; from campaignctl import counting, jobs, listen, shards, wait, worker; "
        "from campaignctl.cli import campaigns, rollout; "
        "print(counting.PROCESS is None, 'prometheus_client' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "False"]
