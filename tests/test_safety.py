"""Campaign safety: plan, rollback, on_error: revert, firmware recall, version rules and
competing campaigns, through the CLI against a real broker, on both backends."""

from __future__ import annotations

import pytest
from conftest import Subscriber, add_firmware, csv_fleet, db_dump, fleet_yaml, import_fleet, write

from campaignctl import versions


def _desired(cli, device: str) -> dict:
    return {e["key"]: e["desired"] for e in cli.json("devices", "show", device)["configuration"]}


def _retained(broker, prefix, devices: list[str]) -> dict[str, dict]:
    """The retained document of each device, read by a real subscriber."""
    sub = Subscriber(broker.port, f"{prefix}/+/config")
    try:
        messages = sub.wait_for(len(devices))
    finally:
        sub.close()
    return {topic.split("/")[-2]: docs[-1]["configuration"] for topic, docs in messages.items()}


def _statuses(cli, name: str) -> dict[str, dict]:
    return {d["device"]: d for d in cli.json("status", name)["devices"]}


def _firmware(cli, version: str) -> None:
    add_firmware(cli, version, f"https://fw.example.com/app-{version}.bin")


def test_plan_matches_the_launch_that_follows_and_writes_nothing(cli, db_url, tmp_path, broker, prefix):
    csv_fleet(cli, tmp_path, broker.url, prefix, 1000)
    for i in range(12):  # some devices already have the value, some another one
        cli("devices", "set-config", f"s-{i:05d}", "mode=eco" if i < 4 else "mode=turbo")
    path = write(
        tmp_path,
        "roll.yaml",
        """\
name: roll
devices: {selector: {type: sensor-v2}}
configurations: {mode: eco}
rollout:
  batches: [10, 25%, 100%]
  canary: {names: [s-00999, s-00998]}
  bake_time: 1m
  max_per_minute: 600
""",
    )
    before = db_dump(db_url)
    planned = cli.json("plan", "-f", path)
    assert db_dump(db_url) == before  # plan -f of a manifest not stored
    cli("create", "-f", path)
    before = db_dump(db_url)
    stored = cli.json("plan", "roll")
    assert db_dump(db_url) == before
    assert stored["batches"] == planned["batches"]
    assert planned["devices"] == {"count": 1000, "delivered": 1000, "excluded": []}
    assert [b["size"] for b in planned["batches"]] == [10, 240, 750]
    assert set(planned["batches"][0]["devices"][:2]) == {"s-00999", "s-00998"}  # canaries first
    assert planned["changes"]["mode"] == {
        "changed": 8,
        "unchanged": 4,
        "new": 988,
        "examples": [{"from": None, "to": "eco", "devices": 988}, {"from": "turbo", "to": "eco", "devices": 8}],
    }
    assert planned["conflicts"] == []
    assert planned["estimate_seconds"] == 100 + 3 * 60  # 1000 devices at 600/min, three bakes
    table = cli("plan", "roll").stdout
    assert "turbo → eco on 8" in table and "s-00999" in table

    cli("launch", "roll", "--detach")
    launched = cli.json("status", "roll")
    by_batch: dict[int, set] = {}
    for device in launched["devices"]:
        by_batch.setdefault(device["batch"], set()).add(device["device"])
    assert {n: set(b["devices"]) for n, b in enumerate(planned["batches"], start=1)} == by_batch
    # Launched: plan is for drafts.
    assert "plan shows what a launch would do" in cli("plan", "roll", code=1).stderr


def test_rollback_restores_before_values_on_the_wire_and_leaves_changed_devices_alone(cli, tmp_path, broker, prefix):
    import_fleet(cli, tmp_path, broker.url, prefix, 4)
    cli("devices", "set-config", "sensor-0001", "report_interval:=60")
    cli("devices", "set-config", "sensor-0002", "report_interval:=90")
    cli(
        "create",
        "-f",
        write(
            tmp_path,
            "c.yaml",
            """\
name: faster
devices: {selector: {type: sensor-v2}}
configurations: {report_interval: 5}
""",
        ),
    )
    assert "nothing to roll back" in cli("rollback", "faster", code=1).stderr  # never launched
    cli("launch", "faster")
    assert all(_desired(cli, f"sensor-000{i}")["report_interval"] == 5 for i in range(1, 5))
    cli("devices", "set-config", "sensor-0004", "report_interval:=7")  # someone changed it since
    result = cli.json("rollback", "faster")
    assert result["campaign"] == "faster-rollback" and result["devices"] == 3
    assert [d["device"] for d in result["left_alone"]] == ["sensor-0004"]
    assert "report_interval was changed after the campaign set it (by user" in result["left_alone"][0]["reason"]
    plan = cli.json("plan", "faster-rollback")
    assert plan["changes"]["report_interval"]["changed"] == 3
    assert {"from": 5, "to": None, "devices": 1} in plan["changes"]["report_interval"]["examples"]
    # A manifest written by hand selects any device: only those the campaign wrote, and
    # nobody changed since, are put back.
    by_hand = cli.json(
        "plan",
        "-f",
        write(tmp_path, "h.yaml", "name: by-hand\ndevices: {selector: {type: sensor-v2}}\nrollback_of: faster\n"),
    )
    assert by_hand["devices"]["delivered"] == 3 and [
        (e["device"], e["status"]) for e in by_hand["devices"]["excluded"]
    ] == [("sensor-0004", "skipped")]
    assert by_hand["devices"]["excluded"][0]["reason"].startswith("left alone: report_interval was changed")
    # Limited to one device, under another name.
    again = cli.json("rollback", "faster", "--device", "sensor-0001", "--name", "undo-one")
    assert again["devices"] == 1 and cli.json("show", "undo-one")["devices"]["names"] == ["sensor-0001"]
    assert "wrote nothing to: nope" in cli("rollback", "faster", "--device", "nope", code=1).stderr
    cli("delete", "undo-one")
    cli("launch", "faster-rollback")
    assert _desired(cli, "sensor-0001")["report_interval"] == 60
    assert _desired(cli, "sensor-0002")["report_interval"] == 90
    assert _desired(cli, "sensor-0003")["report_interval"] is None  # it had none: withdrawn
    assert _desired(cli, "sensor-0004")["report_interval"] == 7
    docs = _retained(broker, prefix, ["sensor-0001", "sensor-0002", "sensor-0003", "sensor-0004"])
    assert docs["sensor-0001"]["report_interval"] == 60 and docs["sensor-0002"]["report_interval"] == 90
    assert "report_interval" not in docs["sensor-0003"] and docs["sensor-0004"]["report_interval"] == 7
    status = cli.json("status", "faster-rollback")
    assert status["summary"]["valid"] == 3 and status["rollback_of"] == "faster"
    assert cli.json("status", "faster")["rollbacks"] == [{"campaign": "faster-rollback", "status": "completed"}]
    # Rolled back: every device now holds a value the campaign did not write.
    assert "(4 changed by someone since: left alone)" in cli("rollback", "faster", code=1).stderr


def test_on_error_revert_rolls_back_exactly_the_devices_that_got_the_bad_firmware(cli, tmp_path, broker, prefix):
    import_fleet(cli, tmp_path, broker.url, prefix, 6)
    for version in ("5.0.0", "5.1.0"):
        _firmware(cli, version)
    for i in range(1, 7):
        cli("devices", "report", f"sensor-000{i}", "app_version=5.0.0")
    cli(
        "create",
        "-f",
        write(
            tmp_path,
            "ota.yaml",
            """\
name: bad-fw
devices: {selector: {type: sensor-v2}}
firmware: {type: app, version: 5.1.0}
rollout:
  batches: [2, 100%]
  canary: {tags: {ring: canary}}
  device_timeout: 1s
  error_threshold: 50%
  on_error: revert
""",
        ),
    )
    # The canaries never report 5.1.0: they time out, the batch trips, and the revert
    # sends them 5.0.0 back.
    waited = cli("launch", "bad-fw", "--wait", "--timeout", "60s", "-o", "json", code=5)
    assert '"aborted"' in waited.stdout, waited.stderr
    status = cli.json("status", "bad-fw")
    assert "reverting 2 device(s) with campaign bad-fw-rollback" in status["reason"], waited.stderr
    assert status["rollbacks"][0]["campaign"] == "bad-fw-rollback"
    revert = cli.json("status", "bad-fw-rollback")
    assert sorted(d["device"] for d in revert["devices"]) == ["sensor-0001", "sensor-0002"]  # the canaries
    docs = _retained(broker, prefix, ["sensor-0001", "sensor-0002"])
    assert docs["sensor-0001"]["app_version"] == "5.0.0" and docs["sensor-0002"]["app_version"] == "5.0.0"
    assert set(docs) == {"sensor-0001", "sensor-0002"}  # batch 2 never got anything
    # The devices report 5.0.0: the revert is valid (they ran 5.0.0 all along).
    assert {d["status"] for d in revert["devices"]} == {"valid"}
    # The one-off rule: the campaign does not fight its rollback, and names it.
    reverted = _statuses(cli, "bad-fw")["sensor-0001"]
    assert reverted["status"] == "invalid" and "(by campaign bad-fw-rollback at " in reverted["reason"]


def test_recall_pauses_a_running_rollout_and_blocks_new_campaigns(cli, db_url, tmp_path, broker, prefix):
    import_fleet(cli, tmp_path, broker.url, prefix, 4)
    _firmware(cli, "5.1.0")
    manifest = """\
name: {name}
devices: {{selector: {{type: sensor-v2}}}}
firmware: {{type: app, version: 5.1.0}}
rollout: {{batches: [2, 100%], bake_time: 1h}}
"""
    cli("create", "-f", write(tmp_path, "a.yaml", manifest.format(name="ship")))
    cli("create", "-f", write(tmp_path, "b.yaml", manifest.format(name="ship-too")))
    cli("launch", "ship")
    assert cli.json("status", "ship")["status"] == "running"  # baking batch 1
    recalled = cli.json(
        "firmwares",
        "recall",
        "--device-type",
        "sensor-v2",
        "--firmware-type",
        "app",
        "--version",
        "5.1.0",
        "--reason",
        "bricks the modem",
    )
    assert recalled["paused"] == ["ship"]
    status = cli.json("status", "ship")
    assert status["status"] == "paused" and "bricks the modem" in status["reason"]
    assert "was recalled" in cli("launch", "ship-too", code=1).stderr
    assert (
        "was recalled" in cli("create", "-f", write(tmp_path, "c.yaml", manifest.format(name="third")), code=1).stderr
    )
    [listed] = cli.json("firmwares", "list")
    assert listed["recalled"]["reason"] == "bricks the modem"
    plan = cli.json("plan", "ship-too", "--strict", code=6)
    assert plan["firmware"]["recalled"][0]["reason"] == "bricks the modem"
    assert {e["status"] for e in plan["devices"]["excluded"]} == {"skipped"} and plan["devices"]["delivered"] == 0
    assert "cannot resume" in cli("resume", "ship", code=1).stderr  # not while the firmware is recalled
    cli("firmwares", "unrecall", "--device-type", "sensor-v2", "--firmware-type", "app", "--version", "5.1.0")
    assert cli.json("status", "ship")["status"] == "paused"  # until a user resumes it
    cli("resume", "ship")
    assert cli.json("status", "ship")["status"] == "running"


def test_version_rules_installed_downgrade_and_from(cli, tmp_path, broker, prefix):
    import_fleet(cli, tmp_path, broker.url, prefix, 5)
    _firmware(cli, "5.1.0")
    reports = {"sensor-0001": "5.1.0", "sensor-0002": "5.2.0", "sensor-0003": "5.0.3", "sensor-0004": "4.9.9"}
    for device, version in reports.items():
        cli("devices", "report", device, f"app_version={version}")
    cli(
        "create",
        "-f",
        write(
            tmp_path,
            "ota.yaml",
            """\
name: ota
devices: {selector: {type: sensor-v2}}
firmware: {type: app, version: 5.1.0, from: [5.0.x, "5.2.*"]}
""",
        ),
    )
    plan = cli.json("plan", "ota")
    excluded = {e["device"]: (e["status"], e["reason"]) for e in plan["devices"]["excluded"]}
    assert excluded == {
        "sensor-0001": ("installed", "already installed (5.1.0)"),
        "sensor-0002": ("skipped", "would be a downgrade (5.2.0 → 5.1.0); allow_downgrade is not set"),
        "sensor-0004": ("skipped", "reports 4.9.9, not in from: 5.0.x, 5.2.*"),
        "sensor-0005": ("skipped", "reports no version; the campaign updates from 5.0.x, 5.2.* only"),
    }
    cli("launch", "ota")
    statuses = _statuses(cli, "ota")
    assert statuses["sensor-0001"]["status"] == "valid" and statuses["sensor-0001"]["reason"].startswith("already")
    assert statuses["sensor-0002"]["status"] == "skipped" and statuses["sensor-0003"]["status"] == "waiting"
    assert _desired(cli, "sensor-0003")["app_version"] == "5.1.0"
    assert _desired(cli, "sensor-0002")["app_version"] is None  # skipped: nothing written
    summary = cli.json("status", "ota")["summary"]
    assert summary["skipped"] == 3 and summary["valid"] == 1
    # allow_downgrade takes the newer device too.
    cli(
        "create",
        "-f",
        write(
            tmp_path,
            "down.yaml",
            """\
name: down
devices: {names: [sensor-0002]}
firmware: {type: app, version: 5.1.0, allow_downgrade: true}
""",
        ),
    )
    assert cli.json("plan", "down")["devices"]["delivered"] == 1


def test_competing_campaigns_refused_unless_priority_or_force(cli, db_url, tmp_path, broker, prefix):
    import_fleet(cli, tmp_path, broker.url, prefix, 4)
    manifest = """\
name: {name}
devices: {{names: [{names}]}}
configurations: {{report_interval: {value}}}
rollout: {{bake_time: 1h}}
{extra}"""
    cli(
        "create",
        "-f",
        write(tmp_path, "a.yaml", manifest.format(name="a", names="sensor-0001, sensor-0002", value=10, extra="")),
    )
    cli(
        "create",
        "-f",
        write(tmp_path, "b.yaml", manifest.format(name="b", names="sensor-0002, sensor-0003", value=20, extra="")),
    )
    assert cli.json("plan", "b")["conflicts"] == [
        {"campaign": "a", "status": "draft", "priority": 0, "device": "sensor-0002", "key": "report_interval"}
    ]
    cli("launch", "a")
    before = db_dump(db_url)
    refused = cli("launch", "b", code=1).stderr
    assert "competes with a (running, priority 0), which sets report_interval on 1 of its devices" in refused
    assert db_dump(db_url) == before
    assert cli("plan", "b", "--strict", code=6).stdout
    # A higher priority wins: a's device becomes superseded, and a no longer counts it.
    cli(
        "create",
        "-f",
        write(tmp_path, "c.yaml", manifest.format(name="c", names="sensor-0002", value=30, extra="priority: 5\n")),
    )
    cli("launch", "c")
    superseded = _statuses(cli, "a")["sensor-0002"]
    assert superseded["status"] == "superseded" and "campaign c (priority 5)" in superseded["reason"]
    assert _desired(cli, "sensor-0002")["report_interval"] == 30
    # A lower priority is refused, even with the others' devices superseded; --force launches it,
    # and the device c holds stays c's.
    cli("launch", "b", "--force")
    statuses = _statuses(cli, "b")
    assert statuses["sensor-0002"]["status"] == "superseded" and statuses["sensor-0003"]["status"] != "superseded"
    assert _desired(cli, "sensor-0002")["report_interval"] == 30


@pytest.mark.parametrize(
    "args, message",
    [
        (["plan", "nope"], "no campaign named 'nope'"),
        (["plan"], "give a campaign NAME or --file FILE"),
        (["rollback", "nope"], "no campaign named 'nope'"),
        (
            [
                "firmwares",
                "recall",
                "--device-type",
                "sensor-v2",
                "--firmware-type",
                "app",
                "--version",
                "0.0.1",
                "--reason",
                "x",
            ],
            "no sensor-v2 app firmware '0.0.1' in the registry",
        ),
        (
            [
                "firmwares",
                "recall",
                "--device-type",
                "sensor-v2",
                "--firmware-type",
                "app",
                "--version",
                "1.0",
                "--reason",
                " ",
            ],
            "--reason: say why",
        ),
        (
            ["firmwares", "unrecall", "--device-type", "sensor-v2", "--firmware-type", "app", "--version", "1.0"],
            "firmware '1.0' is not recalled",
        ),
    ],
)
def test_bad_safety_input_is_refused_and_writes_nothing(cli, db_url, tmp_path, broker, prefix, args, message):
    import_fleet(cli, tmp_path, broker.url, prefix, 2)
    _firmware(cli, "1.0")
    before = db_dump(db_url)
    result = cli(*args, code=None)
    assert result.exit_code in (1, 2) and message in result.stderr and "Traceback" not in result.stderr
    assert db_dump(db_url) == before


def test_manifest_priority_and_version_patterns_are_checked(cli, tmp_path, broker, prefix):
    import_fleet(cli, tmp_path, broker.url, prefix, 1)
    bad = write(
        tmp_path, "p.yaml", "name: p\ndevices: {names: [sensor-0001]}\nconfigurations: {a: 1}\npriority: high\n"
    )
    assert "p.yaml:4: priority: input should be a valid integer" in cli("create", "-f", bad, code=1).stderr
    bad = write(
        tmp_path,
        "f.yaml",
        "name: f\ndevices: {names: [sensor-0001]}\nfirmware: {type: app, version: 1.0, from: [5.x.1]}\n",
    )
    assert "is not a version pattern" in cli("plan", "-f", bad, code=1).stderr


def test_versions_compare_semantically_or_as_text():
    assert versions.compare("5.10.0", "5.9.1") == 1 and versions.compare("v5.1", "5.1.0") == 0
    assert versions.compare("5.1.0-rc.1", "5.1.0") == -1 and versions.compare("5.1.0-rc.2", "5.1.0-rc.10") == -1
    assert versions.compare("build-7", "5.1.0") is None and versions.compare("build-7", "build-7") == 0
    assert versions.matches("5.0.17", "5.0.x") and not versions.matches("5.1.0", "5.0.*")
    assert versions.matches("5.3", "5.*") and versions.matches("5.1.0", "5.1") and not versions.matches("x", "5.*")
    assert versions.newest_before("5.1.0", ["5.0.9", "5.0.10", "5.2.0", "beta"]) == "5.0.10"
    # A device may report 64 KiB as its version: a reason quotes its start only.
    for reported, from_ in (("\x1b[31m" + "9" * 5000, None), ("5" * 5000, None), ("x" * 5000, ["1.x"])):
        action, reason = versions.rule(reported, "1.0", allow_downgrade=False, from_=from_)
        assert action in ("skipped", "deliver") and len(reason or "") < 200


def test_a_higher_campaign_takes_devices_when_it_writes_them_not_before(cli, tmp_path, broker, prefix):
    import_fleet(cli, tmp_path, broker.url, prefix, 4)
    manifest = "name: {name}\ndevices: {{names: [{names}]}}\nconfigurations: {{mode: {mode}}}\n{extra}"
    all_four = "sensor-0001, sensor-0002, sensor-0003, sensor-0004"
    cli(
        "create",
        "-f",
        write(
            tmp_path,
            "low.yaml",
            manifest.format(
                name="low",
                names=all_four,
                mode="eco",
                extra="rollout: {canary: {names: [sensor-0001]}, batches: [1, 100%]}\n",
            ),
        ),
    )
    cli(
        "create",
        "-f",
        write(
            tmp_path,
            "high.yaml",
            manifest.format(name="high", names="sensor-0001", mode="turbo", extra="priority: 5\n"),
        ),
    )
    cli(
        "create",
        "-f",
        write(
            tmp_path,
            "never.yaml",
            manifest.format(name="never", names="sensor-0002", mode="boost", extra="priority: 9\n"),
        ),
    )
    cli("launch", "low", "--detach")
    cli("launch", "high")  # writes sensor-0001: low's canary batch is left with nobody to judge
    cli("launch", "never", "--detach")
    cli("cancel", "never")  # never wrote sensor-0002: it stays low's
    cli("tick")
    status = cli.json("status", "low")
    assert status["status"] == "completed"
    devices = {d["device"]: d["status"] for d in status["devices"]}
    assert devices["sensor-0001"] == "superseded" and devices["sensor-0002"] == "valid"
    assert _desired(cli, "sensor-0001")["mode"] == "turbo" and _desired(cli, "sensor-0002")["mode"] == "eco"


def test_installed_only_when_the_desired_version_agrees_and_plan_masks_stored_secrets(cli, tmp_path, broker, prefix):
    import_fleet(cli, tmp_path, broker.url, prefix, 2)
    _firmware(cli, "5.1.0")
    for device in ("sensor-0001", "sensor-0002"):
        cli("devices", "report", device, "app_version=5.1.0")
    # sensor-0002's desired entry still names 4.0.0: its document would send it back.
    cli("devices", "set-config", "sensor-0002", "app_version=4.0.0", "wifi=hunter2-SECRET", "--secret", "--no-deliver")
    plan = cli.json(
        "plan",
        "-f",
        write(
            tmp_path,
            "ota.yaml",
            """\
name: ota
devices: {selector: {type: sensor-v2}}
firmware: {type: app, version: 5.1.0}
configurations: {wifi: newpass}
""",
        ),
    )
    assert [(e["device"], e["status"]) for e in plan["devices"]["excluded"]] == [("sensor-0001", "installed")]
    assert plan["devices"]["delivered"] == 1
    assert plan["changes"]["wifi"]["examples"] == [{"from": "***", "to": "***", "devices": 1}]
    assert "hunter2" not in cli("plan", "-f", str(tmp_path / "ota.yaml")).stdout


def test_two_competing_launches_at_once_the_second_is_refused(cli, db_url, tmp_path, broker, prefix):
    import threading
    import time

    from campaignctl import db, jobs
    from campaignctl.campaigns import get_spec

    import_fleet(cli, tmp_path, broker.url, prefix, 1)
    for name in ("a", "b"):
        cli(
            "create",
            "-f",
            write(
                tmp_path,
                f"{name}.yaml",
                f"name: {name}\ndevices: {{names: [sensor-0001]}}\nconfigurations: {{mode: eco}}\n",
            ),
        )
    engine = db.create_engine(str(db_url))
    second: dict = {}
    thread = threading.Thread(target=lambda: second.update(result=cli("launch", "b", "--detach", code=None)))
    with db.write(engine) as conn:  # a's launch, still uncommitted while b's starts
        row, spec = get_spec(conn, "a", lock=True)
        jobs.start(conn, row, spec, {}, force=False)
        thread.start()
        time.sleep(0.5)  # b's launch is under way: it must wait for a's decision, not miss it
    thread.join(60)
    result = second["result"]
    assert result.exit_code == 1 and "competes with a (running, priority 0)" in result.stderr
    engine.dispose()


def test_revert_goes_back_to_each_device_type_s_own_previous_firmware(cli, tmp_path, broker, prefix):
    fleet = fleet_yaml(broker.url, prefix, devices=2).replace(
        "device_types:\n",
        "device_types:\n  sensor-v3:\n    firmware_types:\n      app: {version_key: app_version, url_key: app_url}\n",
    )
    fleet += "".join(f"  - {{name: gauge-{i}, type: sensor-v3, interface: broker}}\n" for i in (1, 2))
    cli("devices", "import", write(tmp_path, "fleet.yaml", fleet))
    for device_type, versions_ in (("sensor-v2", ("5.0.0", "5.2.0")), ("sensor-v3", ("5.1.0", "5.2.0"))):
        for version in versions_:
            add_firmware(cli, version, f"https://fw.example.com/{device_type}-{version}.bin", device_type=device_type)
    cli(
        "create",
        "-f",
        write(
            tmp_path,
            "up.yaml",
            """\
name: up
devices: {names: [sensor-0001, sensor-0002, gauge-1, gauge-2]}
firmware: {type: app, version: 5.2.0}
rollout: {batches: [100%], device_timeout: 1s, error_threshold: 50%, on_error: revert}
""",
        ),
    )
    cli("launch", "up", "--wait", "--timeout", "60s", code=5)
    assert "with campaign up-rollback, up-rollback-2" in cli.json("status", "up")["reason"]
    back = {
        cli.json("show", n)["firmware"]["version"]: sorted(cli.json("show", n)["devices"]["names"])
        for n in ("up-rollback", "up-rollback-2")
    }
    assert back == {"5.0.0": ["sensor-0001", "sensor-0002"], "5.1.0": ["gauge-1", "gauge-2"]}
    assert _desired(cli, "gauge-1")["app_version"] == "5.1.0" and _desired(cli, "sensor-0002")["app_version"] == "5.0.0"
