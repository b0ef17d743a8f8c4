"""Dynamic campaigns: devices that come to match a running campaign join it, through the
same batches, thresholds and version rules; max_devices, end_at, --wait, bad manifests."""

from __future__ import annotations

import json
import os
import tempfile
from datetime import datetime, timedelta, timezone

import pytest
from conftest import Subscriber, db_dump, query, write
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from campaignctl.dynamic import NO_LONGER_MATCHES
from campaignctl.errors import InputError


def _import(cli, tmp_path, broker, prefix, devices: list[tuple[str, str, str]], *, name: str = "fleet.yaml") -> None:
    """Import a fleet manifest: (device name, device type, site) each; ``meter-v1`` has no
    firmware. A device already there takes the type and site given here."""
    lines = [
        "interfaces:",
        f"  broker: {{type: mqtt, url: {broker.url}, topic_prefix: {prefix}}}",
        "device_types:",
        "  sensor-v2:",
        "    firmware_types:",
        "      app: {version_key: app_version, url_key: app_url}",
        "  meter-v1: {}",
        "devices:",
        *(f"  - {{name: {n}, type: {t}, interface: broker, tags: {{site: {s}}}}}" for n, t, s in devices),
    ]
    cli("devices", "import", write(tmp_path, name, "\n".join(lines) + "\n"))


def _campaign(tmp_path, body: str, *, name: str = "dyn") -> str:
    return write(tmp_path, f"{name}.yaml", f"name: {name}\n{body}")


DYNAMIC = """\
devices:
  selector: {tags: {site: lyon}}
  dynamic: true
configurations: {report_interval: 30}
"""


def _joined_events(db_url) -> list[tuple]:
    return query(db_url, "SELECT device, actor, details FROM event WHERE action = 'device.joined' ORDER BY id")


def test_devices_imported_or_retagged_join_after_the_last_batch(cli, tmp_path, broker, prefix, db_url):
    _import(
        cli,
        tmp_path,
        broker,
        prefix,
        [("s1", "sensor-v2", "lyon"), ("s2", "sensor-v2", "lyon"), ("s3", "sensor-v2", "paris")],
    )
    cli(
        "create",
        "-f",
        _campaign(
            tmp_path,
            DYNAMIC + "expected_state: {report_interval: 30}\nrollout: {batches: [1, 100%], success_threshold: 100%}\n",
        ),
    )
    sub = Subscriber(broker.port, f"{prefix}/+/config")
    try:
        cli("launch", "dyn")
        first, second = sorted(cli.json("status", "dyn")["devices"], key=lambda d: d["batch"])
        assert (first["batch"], second["batch"]) == (1, 2)
        # While batch 1 bakes: one device is imported, one re-tagged to match, and the
        # device of batch 2 stops matching.
        _import(
            cli,
            tmp_path,
            broker,
            prefix,
            [("s3", "sensor-v2", "lyon"), ("s4", "sensor-v2", "lyon"), (second["device"], "sensor-v2", "paris")],
            name="changes.yaml",
        )
        cli("tick")
        data = cli.json("status", "dyn")
        assert {d["device"] for d in data["devices"]} == {first["device"], second["device"]}  # they wait
        cli("devices", "report", first["device"], "report_interval:=30")
        cli("tick")  # batch 1 promoted, batch 2 left out, the joiners go out as batch 3
        # What the broker keeps: a subscriber that comes now reads the retained documents.
        late = Subscriber(broker.port, f"{prefix}/+/config")
        try:
            got = late.wait_for(3)
        finally:
            late.close()
        assert set(got) == {f"{prefix}/{d}/config" for d in (first["device"], "s3", "s4")}
        for device in ("s3", "s4"):
            assert got[f"{prefix}/{device}/config"][-1]["configuration"] == {"report_interval": 30}
            assert late.retained[f"{prefix}/{device}/config"]
        data = cli.json("status", "dyn")
        by_name = {d["device"]: d for d in data["devices"]}
        assert data["status"] == "running" and data["summary"]["joined"] == 2
        assert by_name[second["device"]]["status"] == "skipped"
        assert by_name[second["device"]]["reason"] == NO_LONGER_MATCHES
        assert by_name[first["device"]]["joined_at"] is None
        assert by_name["s3"]["joined_at"] and by_name["s4"]["batch"] == 3 and by_name["s4"]["status"] == "waiting"
        # The device that stopped matching was never written, nor sent anything.
        assert f"{prefix}/{second['device']}/config" not in sub.messages
        assert query(
            db_url,
            "SELECT count(*) FROM device_config c JOIN device d ON d.id = c.device_id "
            "WHERE d.name = :n AND c.desired IS NOT NULL",
            {"n": second["device"]},
        ) == [(0,)]
        assert [e[:2] for e in _joined_events(db_url)] == [("s3", "engine"), ("s4", "engine")]
        # Batch 3 is judged as the others: promoted once its devices are valid; the job
        # then waits for more devices to join.
        assert cli.json("jobs", "show", str(data["job"]["id"]))["step"] == "bake"
        for device in ("s3", "s4"):
            cli("devices", "report", device, "report_interval:=30")
        cli("tick")
        job = cli.json("jobs", "show", str(data["job"]["id"]))
        assert (job["status"], job["step"]) == ("waiting", "join")
        assert [b["status"] for b in cli.json("status", "dyn")["batches"]] == ["promoted"] * 3
        table = cli("status", "dyn").stdout
        assert "joined" in table and "(2 joined)" in table
        # A pass with nobody new admits nothing.
        cli("tick")
        assert cli.json("status", "dyn")["summary"]["total"] == 4
    finally:
        sub.close()


@pytest.mark.parametrize("backend", ["sqlite"])
def test_max_devices_caps_the_total_and_a_new_device_type_joins(cli, tmp_path, broker, prefix, db_url):
    _import(cli, tmp_path, broker, prefix, [("s1", "sensor-v2", "lyon")])
    cli("create", "-f", _campaign(tmp_path, DYNAMIC.replace("dynamic: true", "dynamic: true\n  max_devices: 3")))
    cli("launch", "dyn")
    more = [("m1", "meter-v1", "lyon"), ("s2", "sensor-v2", "lyon"), ("s3", "sensor-v2", "lyon")]
    _import(cli, tmp_path, broker, prefix, more, name="more.yaml")
    cli("tick")
    cli("tick")
    data = cli.json("status", "dyn")
    # By id: the first two newcomers; the plan took the meter's device type in.
    assert sorted(d["device"] for d in data["devices"]) == ["m1", "s1", "s2"]
    assert data["summary"]["total"] == 3 and data["summary"]["valid"] == 3
    assert query(
        db_url, "SELECT c.desired FROM device_config c JOIN device d ON d.id = c.device_id WHERE d.name = 'm1'"
    ) == [("30",)]
    # A launch that already exceeds the cap is refused, nothing written.
    cli(
        "create",
        "-f",
        _campaign(tmp_path, DYNAMIC.replace("dynamic: true", "dynamic: true\n  max_devices: 1"), name="small"),
    )
    before = db_dump(db_url)
    result = cli("launch", "small", code=1)
    assert "max_devices" in result.stderr and "selects 4 devices" in result.stderr
    assert db_dump(db_url) == before


@pytest.mark.parametrize("backend", ["sqlite"])
def test_idle_passes_skip_the_look_until_the_fleet_changes(cli, tmp_path, broker, prefix, db_url):
    _import(cli, tmp_path, broker, prefix, [("s1", "sensor-v2", "lyon"), ("s2", "sensor-v2", "paris")])
    cli("create", "-f", _campaign(tmp_path, DYNAMIC))
    cli("launch", "dyn")
    cli("tick")  # every batch done: a look for joiners finds nobody, and the fleet's mark is kept

    def kept() -> dict:
        (settings,) = query(db_url, "SELECT settings FROM job")[0]
        return json.loads(settings)["admission"]

    idle = kept()
    cli("tick")
    assert kept() == idle  # nothing changed: no look, nothing written
    # A re-tag after the idle passes changes the mark: the next pass looks, and admits.
    _import(cli, tmp_path, broker, prefix, [("s1", "sensor-v2", "lyon"), ("s2", "sensor-v2", "lyon")])
    cli("tick")
    data = cli.json("status", "dyn")
    assert sorted(d["device"] for d in data["devices"]) == ["s1", "s2"] and data["summary"]["joined"] == 1
    # A device type change too (the type is part of what an import stamps).
    _import(cli, tmp_path, broker, prefix, [("s3", "meter-v1", "paris")], name="s3.yaml")
    cli("tick")
    _import(cli, tmp_path, broker, prefix, [("s3", "sensor-v2", "lyon")], name="s3.yaml")
    cli("tick")
    assert "s3" in {d["device"] for d in cli.json("status", "dyn")["devices"]}


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_joiner_of_a_device_type_without_the_firmware_is_skipped(cli, tmp_path, broker, prefix):
    _import(cli, tmp_path, broker, prefix, [("s1", "sensor-v2", "lyon")])
    cli(
        *"firmwares add --device-type sensor-v2 --firmware-type app --version 2.0.0".split(),
        "--url",
        "https://e.test/a",
    )
    cli(
        "create",
        "-f",
        _campaign(
            tmp_path,
            "devices: {selector: {tags: {site: lyon}}, dynamic: true}\nfirmware: {type: app, version: 2.0.0}\n",
        ),
    )
    cli("launch", "dyn")
    _import(cli, tmp_path, broker, prefix, [("m1", "meter-v1", "lyon")], name="m.yaml")
    cli("tick")
    meter = next(d for d in cli.json("status", "dyn")["devices"] if d["device"] == "m1")
    assert meter["status"] == "skipped" and "has no firmware type 'app'" in meter["reason"]
    assert meter["joined_at"] and meter["batch"] == 0


@pytest.mark.parametrize("backend", ["sqlite"])
def test_end_at_and_wait(cli, tmp_path, broker, prefix, db_url):
    _import(cli, tmp_path, broker, prefix, [("s1", "sensor-v2", "lyon")])
    past = (datetime.now(timezone.utc) - timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    later = (datetime.now(timezone.utc) + timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
    # Each its own key: they do not compete for the devices.
    cli(
        "create", "-f", _campaign(tmp_path, DYNAMIC.replace("report_interval", "a") + f"end_at: {past}\n", name="ended")
    )
    cli("create", "-f", _campaign(tmp_path, DYNAMIC.replace("report_interval", "b"), name="endless"))
    cli(
        "create",
        "-f",
        _campaign(tmp_path, DYNAMIC.replace("report_interval", "c") + f"end_at: {later}\n", name="later"),
    )
    # Waiting for a campaign that never ends by itself is a usage error; nothing launched.
    result = cli("launch", "endless", "--wait", code=2)
    assert "end_at" in result.stderr
    assert cli.json("status", "endless")["status"] == "draft"
    cli("launch", "ended", "--wait", "--timeout", "30s")
    cli("launch", "endless")
    # apply sees the dynamic settings change; show tells them.
    capped = DYNAMIC.replace("report_interval", "c").replace("dynamic: true", "dynamic: true\n  max_devices: 10")
    result = cli("apply", "-f", _campaign(tmp_path, capped + f"end_at: {later}\n", name="later"))
    assert "updated (devices.max_devices)" in result.stdout
    assert (
        f"dynamic: devices that come to match join (up to 10 devices, until {later[:10]}" in cli("show", "later").stdout
    )
    cli("launch", "later")
    assert "end_at" in cli("status", "endless", "--wait", code=2).stderr
    _import(cli, tmp_path, broker, prefix, [("s2", "sensor-v2", "lyon")], name="more.yaml")
    cli("tick")
    status = {name: cli.json("status", name) for name in ("ended", "endless", "later")}
    assert status["ended"]["status"] == "completed" and status["ended"]["summary"]["total"] == 1
    for name in ("endless", "later"):
        assert status[name]["status"] == "running" and status[name]["summary"]["joined"] == 1
    cli("cancel", "endless")
    cli("tick")
    assert cli.json("status", "endless")["status"] == "cancelled"


BAD = [
    ("devices: {names: [s1], dynamic: true}\n", "needs a selector", "devices.dynamic", 2),
    ("devices: {selector: {tags: {site: lyon}}, max_devices: 5}\n", "needs dynamic: true", "devices.max_devices", 2),
    ("devices: {selector: {tags: {site: lyon}}}\nend_at: 2030-01-01T00:00:00Z\n", "needs devices.dynamic", "end_at", 3),
    (
        "devices: {selector: {tags: {site: lyon}}, dynamic: true}\nstart_at: 2030-01-02T00:00:00Z\n"
        "end_at: 2030-01-01T00:00:00Z\n",
        "must come after start_at",
        "end_at",
        4,
    ),
    ("devices: {selector: {tags: {site: lyon}}, dynamic: true, max_devices: 0}\n", "", "max_devices", 2),
    ("devices: {selector: {tags: {site: lyon}}, dynamic: yes please}\n", "", "dynamic", 2),
]


@pytest.mark.parametrize("backend", ["sqlite"])
def test_bad_dynamic_manifests_are_refused_with_field_and_line(cli, tmp_path, broker, prefix, db_url):
    _import(cli, tmp_path, broker, prefix, [("s1", "sensor-v2", "lyon")])
    before = db_dump(db_url)
    for n, (devices, message, field, line) in enumerate(BAD):
        path = _campaign(tmp_path, devices + "configurations: {report_interval: 30}\n", name=f"bad{n}")
        err = cli("create", "-f", path, code=1).stderr
        assert message in err and field in err and f":{line}" in err, err
        assert "Traceback" not in err
    assert db_dump(db_url) == before


@settings(max_examples=40, deadline=None)
@given(
    named=st.booleans(),
    selector=st.booleans(),
    dynamic=st.booleans(),
    cap=st.sampled_from([None, 0, 5]),
    start=st.booleans(),
    end=st.sampled_from([None, "2030-01-01T00:00:00Z", "2030-01-03T00:00:00Z"]),
)
def test_the_dynamic_fields_go_together(named, selector, dynamic, cap, start, end):
    """Any combination of the fields: accepted exactly when they make sense, else an
    error naming the first field at fault (in the order the manifest is checked)."""
    from campaignctl.manifests import load_campaign

    assume(named or selector)
    devices = (
        (["names: [s1]"] if named else [])
        + (["selector: {tags: {site: lyon}}"] if selector else [])
        + ([f"dynamic: {str(dynamic).lower()}"])
        + ([f"max_devices: {cap}"] if cap is not None else [])
    )
    text = (
        "name: c\ndevices:\n"
        + "".join(f"  {line}\n" for line in devices)
        + "configurations: {report_interval: 30}\n"
        + ("start_at: 2030-01-02T00:00:00Z\n" if start else "")
        + (f"end_at: {end}\n" if end else "")
    )
    fault = (
        "devices.max_devices"
        if cap == 0
        else "devices.dynamic"
        if dynamic and not selector
        else "devices.max_devices"
        if cap is not None and not dynamic
        else "end_at"
        if end and (not dynamic or (start and end < "2030-01-02"))
        else None
    )
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "c.yaml")
        with open(path, "w") as f:
            f.write(text)
        if fault is None:
            spec = load_campaign(path)
            assert (spec.dynamic, spec.max_devices, spec.end_at) == (dynamic, cap, end and end.replace("Z", ".000000Z"))
        else:
            with pytest.raises(InputError) as caught:
                load_campaign(path)
            assert f": {fault}:" in str(caught.value), str(caught.value)
