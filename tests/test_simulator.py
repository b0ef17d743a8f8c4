"""The fleet simulator over real protocols, end to end through the CLI."""

from __future__ import annotations

import json
import signal
import subprocess

import pytest
from conftest import add_firmware, campaignctl_cmd, fleet_yaml, free_port, subprocess_env, wait_until, write


def _start(db_url, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        campaignctl_cmd("--db", str(db_url), *args),
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _stop(proc: subprocess.Popen) -> tuple[str, str]:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    return out, err


def _ota(cli, tmp_path, selector: str) -> None:
    add_firmware(
        cli, "2.0", "https://assets.example.com/app-2.0.bin", "--token-env", "APP_TOKEN", env={"APP_TOKEN": "t0k"}
    )
    cli(
        "create",
        "-f",
        write(
            tmp_path,
            "ota.yaml",
            f"""\
        name: ota
        devices: {{selector: {selector}}}
        firmware: {{type: app, version: "2.0"}}
        configurations: {{report_interval: 60}}
        """,
        ),
    )


def _summary(cli) -> dict[str, int]:
    return cli.json("status", "ota")["summary"]


@pytest.mark.parametrize("backend", ["sqlite"])  # the simulator speaks MQTT; the database is not its subject
def test_a_thousand_mqtt_devices_converge_to_valid(cli, broker, prefix, tmp_path, db_url):
    head = tmp_path / "fleet.yaml"
    head.write_text(fleet_yaml(broker.url, prefix, devices=0))
    cli("devices", "import", str(head))
    cli(
        "devices",
        "import",
        write(
            tmp_path,
            "devices.csv",
            "name,type,interface,tags\n" + "".join(f"m-{i:04d},sensor-v2,broker,site=s{i % 3}\n" for i in range(1000)),
        ),
    )
    _ota(cli, tmp_path, "{type: sensor-v2}")
    listener = _start(db_url, "listen")
    simulator = _start(
        db_url, "simulate", "--apply-delay", "0.2", "--seed", "1", "--offline-rate", "0.1", "--offline-delay", "2"
    )
    try:
        result = cli.json("launch", "ota")
        assert result["counts"]["delivered"] == 1000
        wait_until(lambda: _summary(cli)["valid"] == 1000, timeout=60, interval=0.5)
    finally:
        sim_out, _ = _stop(simulator)
        _, listen_err = _stop(listener)
    assert "1000 devices (" in sim_out and "0 failing" in sim_out
    # Late devices got their retained document when they came online.
    assert "0 transport errors" in sim_out
    assert "rejected" in listen_err
    device = {e["key"]: e for e in cli.json("devices", "show", "m-0500")["configuration"]}
    assert device["app_version"]["reported"] == "2.0" and device["report_interval"]["reported"] == 60
    assert device["app_token"]["reported"] is None  # devices do not echo secrets


@pytest.mark.parametrize("backend", ["sqlite"])  # the simulator speaks HTTP; the database is not its subject
def test_two_hundred_http_devices_converge_to_valid_and_failures_have_a_reason(cli, tmp_path, db_url):
    port = free_port()
    head = tmp_path / "fleet.yaml"
    head.write_text(
        fleet_yaml("mqtt://127.0.0.1:1", "unused", devices=0).replace(
            "interfaces:\n", f"interfaces:\n  devapi: {{type: http, url: 'http://127.0.0.1:{port}'}}\n"
        )
    )
    cli("devices", "import", str(head))
    cli(
        "devices",
        "import",
        write(
            tmp_path,
            "devices.csv",
            "name,type,interface,tags\n" + "".join(f"h-{i:03d},sensor-v2,devapi,\n" for i in range(200)),
        ),
    )
    _ota(cli, tmp_path, "{type: sensor-v2}")
    server = _start(db_url, "serve", "--port", str(port), "--no-mqtt", "--engine-interval", "0.2")
    simulator = _start(
        db_url,
        "simulate",
        "--apply-delay",
        "0.2",
        "--poll-interval",
        "0.3",
        "--fail-rate",
        "0.1",
        "--seed",
        "42",
        "-o",
        "json",
    )
    try:
        launched = cli.json("launch", "ota")
        assert launched["status"] == "waiting" and launched["counts"]["syncing"] == 200
        from campaignctl import db
        from campaignctl.simulator import Options, Simulator

        engine = db.create_engine(db_url)
        failing = {d.name for d in Simulator(engine, Options(fail_rate=0.1, seed=42)).devices if d.fails}
        engine.dispose()
        assert 5 < len(failing) < 40
        wait_until(lambda: _summary(cli)["valid"] == 200 - len(failing), timeout=60, interval=0.5)
        data = wait_until(lambda: (d := cli.json("status", "ota"))["status"] == "completed" and d, timeout=10)
    finally:
        sim_out, _ = _stop(simulator)
        _stop(server)
    stats = json.loads(sim_out)
    assert stats["failing"] == len(failing) and stats["devices"] == 200
    assert data["job"]["status"] == "success" and data["status"] == "completed"  # every device fetched
    not_valid = {d["device"]: d for d in data["devices"] if d["status"] != "valid"}
    assert set(not_valid) == failing
    assert all(d["status"] == "waiting" and d["reason"] == "app_version not reported yet" for d in not_valid.values())
    errors = {e["key"]: e["reported"] for e in cli.json("devices", "show", sorted(failing)[0])["configuration"]}
    assert errors["last_error"].startswith("apply failed")


def test_same_seed_same_fleet(cli, fleet, db_url):
    from campaignctl import db
    from campaignctl.simulator import Options, Simulator

    engine = db.create_engine(db_url)
    options = Options(fail_rate=0.5, offline_rate=0.5, seed=9)

    def pick(o: Options):
        return [(d.name, d.fails, d.online_after) for d in Simulator(engine, o).devices]

    assert pick(options) == pick(options)
    assert pick(options) != pick(Options(fail_rate=0.5, offline_rate=0.5, seed=10))
    engine.dispose()


@pytest.mark.parametrize(
    "args, error",
    [
        (["--interface", "nowhere"], "no interface named 'nowhere'"),
        (["--fail-rate", "1.5"], "Invalid value for '--fail-rate'"),
    ],
)
def test_simulate_bad_arguments(cli, fleet, args, error):
    result = cli("simulate", *args, "--duration", "0", code=None)
    assert result.exit_code != 0 and error in result.stderr
