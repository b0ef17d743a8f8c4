"""Devices through the CLI: import (YAML and CSV upserts), list, show, set-config, report."""

from __future__ import annotations

import json
import os
import stat

from conftest import fleet_yaml, import_fleet, in_threads, write


def test_import_is_an_upsert_with_counts(cli, broker, prefix, tmp_path):
    path = tmp_path / "fleet.yaml"
    path.write_text(fleet_yaml(broker.url, prefix, devices=3))
    first = cli("devices", "import", str(path))
    assert "devices: 3 created, 0 updated, 0 unchanged" in first.stdout
    assert cli.json("devices", "import", str(path))["devices"] == {"created": 0, "updated": 0, "unchanged": 3}
    # One device changes tags, one is added.
    path.write_text(
        fleet_yaml(broker.url, prefix, devices=4).replace("{site: lyon, ring: canary}", "{site: nice, ring: canary}", 1)
    )
    assert cli.json("devices", "import", str(path)) == {
        "devices": {"created": 1, "updated": 1, "unchanged": 2},
        "interfaces": {"created": 0, "updated": 0, "unchanged": 1},
        "device_types": {"created": 0, "updated": 0, "unchanged": 1},
        "secrets_provisioned": 0,
    }
    assert cli.json("devices", "show", "sensor-0001")["tags"] == {"site": "nice", "ring": "canary"}


def test_csv_import_for_known_types_and_interfaces(cli, fleet, tmp_path):
    csv = write(
        tmp_path,
        "more.csv",
        """\
        name,type,interface,tags
        sensor-0101,sensor-v2,broker,site=lyon;ring=main
        sensor-0102,sensor-v2,broker,
        sensor-0001,sensor-v2,broker,site=lyon;ring=canary
        """,
    )
    assert cli.json("devices", "import", csv)["devices"] == {"created": 2, "updated": 0, "unchanged": 1}
    assert cli.json("devices", "show", "sensor-0102")["tags"] == {}


def test_list_filters_by_type_tag_and_interface(cli, fleet):
    names = [d["name"] for d in cli.json("devices", "list", "--tag", "site=lyon")]
    assert names == ["sensor-0001", "sensor-0003"]
    names = [d["name"] for d in cli.json("devices", "list", "--tag", "site=lyon", "--tag", "ring=canary")]
    assert names == ["sensor-0001"]
    assert len(cli.json("devices", "list", "--type", "sensor-v2", "--interface", "broker")) == 4
    assert cli.json("devices", "list", "--type", "other") == []
    table = cli("devices", "list")
    assert "sensor-0004" in table.stdout and "4 device(s)" in table.stderr


def test_set_config_and_report_with_httpie_values(cli, fleet):
    cli("devices", "set-config", "sensor-0001", "mode=eco", "interval:=30", 'limits:={"max": 2.0}', "label=30")
    cli("devices", "report", "sensor-0001", "mode=eco", "uptime:=12.5")
    device = cli.json("devices", "show", "sensor-0001")
    entries = {e["key"]: e for e in device["configuration"]}
    assert entries["interval"]["desired"] == 30 and entries["label"]["desired"] == "30"
    assert entries["limits"]["desired"] == {"max": 2}
    assert entries["mode"]["reported"] == "eco" and entries["uptime"]["reported"] == 12.5
    assert entries["uptime"]["desired"] is None and entries["mode"]["desired_by"] == "user"
    assert device["version"] > 0
    shown = cli("devices", "show", "sensor-0001").stdout
    assert "interval" in shown and "uptime" in shown


def test_set_config_versions_only_grow(cli, fleet):
    versions = [cli.json("devices", "set-config", "sensor-0002", f"n:={i}")["version"] for i in range(3)]
    assert versions == sorted(versions) and len(set(versions)) == 3


def test_secret_set_config_is_masked_unless_asked(cli, fleet):
    cli("devices", "set-config", "sensor-0001", "api_token=s3cr3t-value", "--secret")
    assert "s3cr3t-value" not in cli("devices", "show", "sensor-0001").stdout
    masked = {e["key"]: e["desired"] for e in cli.json("devices", "show", "sensor-0001")["configuration"]}
    assert masked["api_token"] == "***"
    shown = {
        e["key"]: e["desired"] for e in cli.json("devices", "show", "sensor-0001", "--show-secrets")["configuration"]
    }
    assert shown["api_token"] == "s3cr3t-value"


def test_set_config_on_an_unreachable_broker_keeps_the_value_and_says_so(cli, tmp_path, prefix):
    from conftest import free_port

    import_fleet(cli, tmp_path, f"mqtt://127.0.0.1:{free_port()}", prefix, 1)
    result = cli("devices", "set-config", "sensor-0001", "mode=eco", code=1)
    assert "is saved but could not be delivered" in result.stderr and "Connection refused" in result.stderr
    entries = {e["key"]: e["desired"] for e in cli.json("devices", "show", "sensor-0001")["configuration"]}
    assert entries == {"mode": "eco"}


def test_database_is_private_and_created_where_xdg_says(tmp_path, broker, prefix):
    from typer.testing import CliRunner

    from campaignctl.cli import app

    env = {"XDG_DATA_HOME": str(tmp_path / "data"), "CAMPAIGNCTL_DB": ""}
    path = tmp_path / "fleet.yaml"
    path.write_text(fleet_yaml(broker.url, prefix, devices=1))
    os.environ.pop("CAMPAIGNCTL_DB", None)
    result = CliRunner().invoke(app, ["devices", "import", str(path)], env=env)
    assert result.exit_code == 0, result.stderr
    db = tmp_path / "data" / "campaignctl" / "campaignctl.db"
    assert stat.S_IMODE(db.stat().st_mode) == 0o600


def test_a_secret_key_stays_secret(cli, fleet):
    cli("devices", "set-config", "sensor-0001", "api_key=abc-5ecret", "--secret", "--no-deliver")
    cli("devices", "report", "sensor-0001", "api_key=abc-5ecret")
    cli("devices", "set-config", "sensor-0001", "api_key=def", "--no-deliver")  # without --secret
    shown = cli("devices", "show", "sensor-0001", "-o", "json").stdout
    assert "abc-5ecret" not in shown and "def" not in json.loads(shown)["configuration"][0].values()
    entry = json.loads(shown)["configuration"][0]
    assert entry["desired"] == "***" and entry["reported"] == "***" and entry["secret"] is True


def test_concurrent_imports_of_the_same_fleet_all_succeed(db_url, tmp_path, broker, prefix):

    from campaignctl import db, fleet

    path = tmp_path / "fleet.yaml"
    path.write_text(fleet_yaml(broker.url, prefix, devices=20))
    engine = db.create_engine(db_url)
    results, errors = [], []

    def run() -> None:
        try:
            results.append(fleet.import_fleet(engine, str(path)).devices.created)
        except Exception as exc:  # noqa: BLE001 - the test reports it
            errors.append(exc)

    in_threads(run, 4)
    engine.dispose()
    assert errors == [] and sorted(results) == [0, 0, 0, 20]
