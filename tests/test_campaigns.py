"""Campaigns through the CLI: create, apply, list, show, delete, firmware values, secrets."""

from __future__ import annotations

import json

from conftest import Subscriber, add_firmware, in_threads, write

CAMPAIGN = """\
    name: interval
    description: Report every 30 s
    devices:
      names: [sensor-0001]
      selector: {tags: {site: paris}}
    configurations: {report_interval: 30}
    expected_state: {report_interval: 30}
    """


def test_create_list_show_delete(cli, fleet, tmp_path):
    path = write(tmp_path, "c.yaml", CAMPAIGN)
    assert cli("create", "-f", path).stdout.strip() == "campaign interval: created"
    assert "already exists" in cli("create", "-f", path, code=1).stderr
    [row] = cli.json("list")
    assert row["name"] == "interval" and row["status"] == "draft" and row["job"] is None
    shown = cli.json("show", "interval")
    assert shown["devices"]["count"] == 3  # sensor-0001, plus 0002 and 0004 in paris
    assert shown["configurations"] == {"report_interval": 30}
    status = cli.json("status", "interval")
    assert status["status"] == "draft" and status["job"] is None
    assert status["summary"]["pending"] == 3 and status["summary"]["total"] == 3
    assert "Report every 30 s" in cli("show", "interval").stdout
    cli("delete", "interval")
    assert cli.json("list") == []
    assert cli("delete", "interval", code=1).stderr.strip() == "Error: no campaign named 'interval'"


def test_apply_creates_updates_reports_unchanged_and_refuses_launched(cli, fleet, tmp_path):
    path = write(tmp_path, "c.yaml", CAMPAIGN)
    assert cli("apply", "-f", path).stdout.strip() == "campaign interval: created"
    assert cli("apply", "-f", path).stdout.strip() == "campaign interval: unchanged"
    changed = write(
        tmp_path,
        "c2.yaml",
        CAMPAIGN.replace("report_interval: 30}\n    expected", "report_interval: 60}\n    expected"),
    )
    assert cli("apply", "-f", changed).stdout.strip() == "campaign interval: updated (configurations.report_interval)"
    assert cli.json("show", "interval")["configurations"] == {"report_interval": 60}
    cli("launch", "interval")
    assert cli("apply", "-f", changed).stdout.strip() == "campaign interval: unchanged"
    refused = cli("apply", "-f", path, code=1)
    assert "was launched (completed) and can no longer be changed" in refused.stderr
    assert "configurations.report_interval" in refused.stderr
    assert "only drafts can be deleted" in cli("delete", "interval", code=1).stderr
    assert cli.json("show", "interval")["configurations"] == {"report_interval": 60}


def test_env_values_are_secret_everywhere(cli, fleet, tmp_path, broker, prefix):
    path = write(
        tmp_path,
        "c.yaml",
        """\
        name: tokens
        devices: {names: [sensor-0001]}
        configurations:
          app_url: https://assets.example.com/app.bin
          app_token: ${APP_TOKEN}
          header: Bearer ${APP_TOKEN}
          price: $$5
        """,
    )
    env = {"APP_TOKEN": "tok-5ecret"}
    cli("create", "-f", path, env=env)
    outputs = [cli("show", "tokens").stdout, json.dumps(cli.json("show", "tokens"))]
    cli("launch", "tokens")
    outputs += [
        cli("status", "tokens").stdout,
        json.dumps(cli.json("status", "tokens")),
        cli("devices", "show", "sensor-0001").stdout,
        json.dumps(cli.json("devices", "show", "sensor-0001")),
        json.dumps(cli.json("jobs", "show", "1")),
    ]
    assert all("tok-5ecret" not in o for o in outputs)
    shown = cli.json("show", "tokens")["configurations"]
    assert shown == {
        "app_url": "https://assets.example.com/app.bin",
        "app_token": "***",
        "header": "***",
        "price": "$5",
    }
    assert cli.json("show", "tokens", "--show-secrets")["configurations"]["header"] == "Bearer tok-5ecret"
    # ...but the device does get the real value.
    sub = Subscriber(broker.port, f"{prefix}/sensor-0001/config")
    try:
        doc = sub.wait_for(1)[f"{prefix}/sensor-0001/config"][-1]
    finally:
        sub.close()
    assert doc["configuration"]["app_token"] == "tok-5ecret"
    # Same manifest, same environment: unchanged; another token: a change.
    assert cli("apply", "-f", path, env=env).stdout.strip() == "campaign tokens: unchanged"


def test_ota_campaign_takes_values_from_the_registry(cli, fleet, tmp_path, broker, prefix):
    add_firmware(
        cli,
        "5.1.9_beta01",
        "https://assets.example.com/app/5.1.9_beta01.bin",
        "--token-env",
        "FW_TOKEN",
        "--sha256",
        "a" * 64,
        "--size",
        "1048576",
        "--description",
        "beta",
        env={"FW_TOKEN": "fw-5ecret"},
    )
    dup = add_firmware(cli, "5.1.9_beta01", "https://x/y", code=1)
    assert "already in the registry" in dup.stderr
    [fw] = cli.json("firmwares", "list")
    assert fw["token"] == "***" and fw["sha256"] == "a" * 64 and fw["size"] == 1048576
    assert cli.json("firmwares", "list", "--show-secrets")[0]["token"] == "fw-5ecret"
    assert "fw-5ecret" not in cli("firmwares", "list").stdout

    path = write(
        tmp_path,
        "ota.yaml",
        """\
        name: app-5.1.9
        devices: {names: [sensor-0001, sensor-0002]}
        firmware: {type: app, version: "5.1.9_beta01"}
        """,
    )
    cli("create", "-f", path)
    shown = cli.json("show", "app-5.1.9")
    assert shown["firmware"] == {"type": "app", "version": "5.1.9_beta01"}
    cli("launch", "app-5.1.9")
    entries = {e["key"]: e for e in cli.json("devices", "show", "sensor-0002")["configuration"]}
    assert entries["app_version"]["desired"] == "5.1.9_beta01"
    assert entries["app_url"]["desired"] == "https://assets.example.com/app/5.1.9_beta01.bin"
    assert entries["app_token"]["desired"] == "***" and entries["app_token"]["secret"] is True
    sub = Subscriber(broker.port, f"{prefix}/sensor-0002/config")
    try:
        doc = sub.wait_for(1)[f"{prefix}/sensor-0002/config"][-1]
    finally:
        sub.close()
    assert doc["configuration"] == {
        "app_token": "fw-5ecret",
        "app_url": "https://assets.example.com/app/5.1.9_beta01.bin",
        "app_version": "5.1.9_beta01",
    }
    # The expected state is the new version.
    devices = {d["device"]: d for d in cli.json("status", "app-5.1.9")["devices"]}
    assert devices["sensor-0001"]["reason"] == "app_version not reported yet"
    cli("devices", "report", "sensor-0001", "app_version=5.1.9_beta01")
    cli("devices", "report", "sensor-0002", "app_version=5.1.8")
    devices = {d["device"]: d for d in cli.json("status", "app-5.1.9")["devices"]}
    assert devices["sensor-0001"]["status"] == "valid"
    assert (
        devices["sensor-0002"]["status"] == "waiting"
        and devices["sensor-0002"]["reason"] == 'app_version reported "5.1.8"'
    )


def test_firmware_and_explicit_value_for_the_same_key_is_an_error(cli, fleet, tmp_path):
    add_firmware(cli, "2", "https://x/app-2.bin")
    path = write(
        tmp_path,
        "ota.yaml",
        """\
        name: ota
        devices: {names: [sensor-0001]}
        configurations: {app_url: https://elsewhere/app.bin}
        firmware: {type: app, version: 2}
        """,
    )
    result = cli("create", "-f", path, code=1)
    assert "ota.yaml:3: configurations.app_url: app_url is set both here and by the firmware app 2" in result.stderr


def test_status_table_and_json_contract(cli, fleet, tmp_path):
    cli("create", "-f", write(tmp_path, "c.yaml", CAMPAIGN))
    cli("launch", "interval")
    data = cli.json("status", "interval")
    assert set(data) == {
        "campaign",
        "status",
        "reason",
        "approval",  # None: the campaign asks for no approval
        "start_at",
        "window",  # None: the rollout has no maintenance windows
        "priority",
        "rollback_of",
        "rollbacks",
        "job",
        "summary",
        "batches",
        "devices",
    }
    assert set(data["summary"]) == {
        "total",
        "pending",
        "syncing",
        "waiting",
        "valid",
        "invalid",
        "failed",
        "timed_out",
        "cancelled",
        "skipped",
        "superseded",
        "joined",  # devices that joined a dynamic campaign after launch
    }
    assert [b["number"] for b in data["batches"]] == [1] and data["batches"][0]["status"] == "promoted"
    assert {"id", "status"} <= set(data["job"])
    assert all({"device", "status", "reason"} <= set(d) for d in data["devices"])
    table = cli("status", "interval", "--limit", "1").stdout
    assert "3 devices" in table and "2 more device(s)" in table
    only = cli.json("status", "interval", "--status", "valid")
    assert only["devices"] == [] and only["summary"]["total"] == 3


def test_status_watch_refreshes_until_interrupted(cli, fleet, tmp_path, db_url):
    import os
    import pty
    import select
    import signal
    import subprocess
    import time

    from conftest import campaignctl_cmd, subprocess_env

    cli("create", "-f", write(tmp_path, "c.yaml", CAMPAIGN))
    cli("launch", "interval")
    # A terminal, so that the live view draws each refresh as it happens: the test reads
    # them until it sees the one it waits for, whatever the machine's load.
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        campaignctl_cmd("--db", str(db_url), "status", "interval", "--watch", "--interval", "0.2"),
        env=subprocess_env(COLUMNS="120", LINES="40", TERM="xterm"),
        stdin=slave,
        stdout=slave,
        stderr=subprocess.PIPE,
        text=True,
    )
    os.close(slave)
    seen = ""

    def read_until(text: str) -> None:
        nonlocal seen
        deadline = time.monotonic() + 60
        while text not in seen:
            assert time.monotonic() < deadline, f"{text!r} never shown; got {seen[-500:]!r}"
            if select.select([master], [], [], 0.5)[0]:
                seen += os.read(master, 65536).decode(errors="replace")

    try:
        read_until("interval")  # the first view is up
        cli("devices", "report", "sensor-0001", "report_interval:=30")  # shows up at the next refresh
        read_until("1 valid")
        proc.send_signal(signal.SIGINT)
        deadline = time.monotonic() + 20
        while proc.poll() is None and time.monotonic() < deadline:  # drained: a full terminal would block it
            if select.select([master], [], [], 0.2)[0]:
                try:
                    seen += os.read(master, 65536).decode(errors="replace")
                except OSError:  # the terminal closed with the process
                    break
        _out, err = proc.communicate(timeout=20)
    finally:
        os.close(master)
    assert proc.returncode == 0, err
    assert "[completed]" in seen


def test_concurrent_creates_of_one_campaign_make_one(cli, fleet, tmp_path, db_url):

    from campaignctl import campaigns, db
    from campaignctl.errors import ConflictError
    from campaignctl.manifests import load_campaign

    spec = load_campaign(write(tmp_path, "c.yaml", CAMPAIGN))
    engine = db.create_engine(db_url)
    outcomes: list[str] = []

    def run() -> None:
        try:
            outcomes.append(campaigns.create(engine, spec).action)
        except ConflictError:
            outcomes.append("conflict")

    in_threads(run, 4)
    engine.dispose()
    assert sorted(outcomes) == ["conflict", "conflict", "conflict", "created"]
    assert [c["name"] for c in cli.json("list")] == ["interval"]
