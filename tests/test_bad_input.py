"""Bad manifests, CSV files and flags: a clear error naming file, field and line, exit 1,
and the database exactly as it was."""

from __future__ import annotations

import pytest
from conftest import db_dump, write

FLEET_CASES = {
    "yaml syntax": (
        "interfaces:\n  broker: {type: mqtt\n",
        "fleet.yaml:3: invalid YAML",
    ),
    "unknown top-level field": (
        "interfaces: {}\ndevice: []\n",
        "fleet.yaml:2: device: unknown field 'device'",
    ),
    "unknown device field": (
        "devices:\n  - name: a\n    type: sensor-v2\n    interface: broker\n    colour: red\n",
        "fleet.yaml:5: devices[0].colour: unknown field 'colour'",
    ),
    "wrong type": (
        "devices:\n  - {name: a, type: sensor-v2, interface: broker, tags: [x]}\n",
        "fleet.yaml:2: devices[0].tags: input should be a valid dictionary",
    ),
    "invalid device name": (
        "devices:\n  - {name: 'a/b', type: sensor-v2, interface: broker}\n",
        "fleet.yaml:2: devices[0].name: name 'a/b' is not valid",
    ),
    "unknown device type": (
        "devices:\n  - {name: ok-1, type: sensor-v2, interface: broker}\n  - {name: ok-2, type: nope, interface: broker}\n",
        "fleet.yaml:3: devices[1].type: unknown device type 'nope'",
    ),
    "unknown interface": (
        "devices:\n  - {name: ok-1, type: sensor-v2, interface: elsewhere}\n",
        "fleet.yaml:2: devices[0].interface: unknown interface 'elsewhere'",
    ),
    "invalid firmware key": (
        "device_types:\n  t:\n    firmware_types:\n      app: {version_key: 'app version', url_key: u}\n",
        "fleet.yaml:4: device_types.t.firmware_types.app.version_key: key 'app version' contains ' '",
    ),
    "keys shared by firmware types": (
        "device_types:\n  t:\n    firmware_types:\n      app: {version_key: v, url_key: u}\n"
        "      fw: {version_key: v, url_key: u2}\n",
        "fleet.yaml:3: device_types.t.firmware_types: key 'v' is used by firmware types 'app' and 'fw'",
    ),
    "bad interface type": (
        "interfaces:\n  x: {type: carrier-pigeon}\n",
        "fleet.yaml:2: interfaces.x.type: type must be one of",
    ),
    "bad mqtt url": (
        "interfaces:\n  x: {type: mqtt, url: 'http://broker'}\n",
        "fleet.yaml:2: interfaces.x.url: url must start with mqtt:// or mqtts://",
    ),
    "unknown mqtt setting": (
        "interfaces:\n  x:\n    type: mqtt\n    password: hunter2\n",
        "fleet.yaml:4: interfaces.x.password: unknown field 'password'",
    ),
    "duplicate device": (
        "devices:\n  - {name: d, type: sensor-v2, interface: broker}\n  - {name: d, type: sensor-v2, interface: broker}\n",
        "fleet.yaml:3: devices[1].name: device 'd' is listed twice",
    ),
    "not a mapping": ("- a\n- b\n", "fleet.yaml: the manifest must be a YAML mapping"),
    "name ending in a newline": (
        'devices:\n  - {name: "sensor-0100\\n", type: sensor-v2, interface: broker}\n',
        "fleet.yaml:2: devices[0].name: name 'sensor-0100\\n' is not valid",
    ),
    "empty device type": (
        "device_types:\n  t: []\n",
        "fleet.yaml:2: device_types.t: input should be a mapping (got list)",
    ),
}


@pytest.mark.parametrize("case", sorted(FLEET_CASES))
def test_bad_fleet_manifest(case, cli, fleet, tmp_path, db_url):
    text, expected = FLEET_CASES[case]
    path = write(tmp_path, "fleet.yaml", text)
    before = db_dump(db_url)
    result = cli("devices", "import", path, code=1)
    assert result.stderr.startswith(f"Error: {tmp_path}/"), result.stderr
    assert expected in result.stderr, result.stderr
    assert result.stdout == ""
    assert db_dump(db_url) == before


CSV_CASES = {
    "unknown column": ("name,type,interface,colour\n", "devices.csv:1: unknown column(s) colour"),
    "missing column": ("name,type\n", "devices.csv:1: missing column(s) interface"),
    "bad tag": (
        "name,type,interface,tags\nd1,sensor-v2,broker,site\n",
        "devices.csv:2: tags: tag 'site' is not written k=v",
    ),
    "unknown interface": (
        "name,type,interface,tags\nd1,sensor-v2,broker,\nd2,sensor-v2,nowhere,\n",
        "devices.csv:3: interface: unknown interface 'nowhere'",
    ),
    "bad name": ("name,type,interface\nd 1,sensor-v2,broker\n", "devices.csv:2: name: name 'd 1' is not valid"),
    "extra field": ("name,type,interface\nd1,sensor-v2,broker,x\n", "devices.csv:2: more fields than columns"),
}


@pytest.mark.parametrize("case", sorted(CSV_CASES))
def test_bad_csv(case, cli, fleet, tmp_path, db_url):
    text, expected = CSV_CASES[case]
    path = write(tmp_path, "devices.csv", text)
    before = db_dump(db_url)
    result = cli("devices", "import", path, code=1)
    assert expected in result.stderr, result.stderr
    assert db_dump(db_url) == before


CAMPAIGN_CASES = {
    "yaml syntax": ("name: x\ndevices: {names: [sensor-0001]\n", "c.yaml:3: invalid YAML"),
    "unknown field": (
        "name: x\ndevices: {names: [sensor-0001]}\nconfigurations: {a: 1}\nrollout_plan: 3\n",
        "c.yaml:4: rollout_plan: unknown field",
    ),
    "wrong type": (
        "name: x\ndevices: {names: sensor-0001}\nconfigurations: {a: 1}\n",
        "c.yaml:2: devices.names: input should be a valid list",
    ),
    "invalid key": (
        "name: x\ndevices: {names: [sensor-0001]}\nconfigurations:\n  a.b: 1\n",
        "c.yaml:4: configurations.a.b: key 'a.b' contains '.'",
    ),
    "key with $": (
        "name: x\ndevices: {names: [sensor-0001]}\nexpected_state:\n  $v: 1\n",
        "c.yaml:4: expected_state.$v: key '$v' contains '$'",
    ),
    "unknown device": (
        "name: x\ndevices:\n  names: [sensor-0001, ghost-1]\nconfigurations: {a: 1}\n",
        "c.yaml:3: devices.names[1]: unknown device(s): ghost-1",
    ),
    "unknown device type": (
        "name: x\ndevices:\n  selector: {type: toaster}\nconfigurations: {a: 1}\n",
        "c.yaml:3: devices.selector.type: unknown device type 'toaster'",
    ),
    "empty device set": (
        "name: x\ndevices:\n  selector: {tags: {site: mars}}\nconfigurations: {a: 1}\n",
        "c.yaml:2: devices: the campaign selects no device",
    ),
    "no devices at all": (
        "name: x\ndevices: {}\nconfigurations: {a: 1}\n",
        "c.yaml:2: devices: select devices with names and/or a selector",
    ),
    "missing env var": (
        "name: x\ndevices: {names: [sensor-0001]}\nconfigurations:\n  token: ${NOT_SET_ANYWHERE}\n",
        "c.yaml:4: configurations.token: environment variable NOT_SET_ANYWHERE is not set",
    ),
    "missing name": (
        "devices: {names: [sensor-0001]}\nconfigurations: {a: 1}\n",
        "c.yaml:1: name: required field is missing",
    ),
    "nothing to do": ("name: x\ndevices: {names: [sensor-0001]}\n", "c.yaml:1: a campaign needs configurations"),
    "firmware not in registry": (
        "name: x\ndevices: {names: [sensor-0001]}\nfirmware: {type: app, version: '9.9'}\n",
        "c.yaml:3: firmware.version: no app firmware '9.9' for device type 'sensor-v2'",
    ),
    "unknown firmware type": (
        "name: x\ndevices: {names: [sensor-0001]}\nfirmware: {type: bootloader, version: '1'}\n",
        "c.yaml:3: firmware.type: device type 'sensor-v2' has no firmware type 'bootloader'",
    ),
    "empty file": ("", "c.yaml: the manifest is empty"),
}


@pytest.mark.parametrize("command", ["create", "apply"])
@pytest.mark.parametrize("case", sorted(CAMPAIGN_CASES))
def test_bad_campaign_manifest(case, command, cli, fleet, tmp_path, db_url):
    text, expected = CAMPAIGN_CASES[case]
    path = write(tmp_path, "c.yaml", text)
    before = db_dump(db_url)
    result = cli(command, "-f", path, code=1)
    assert expected in result.stderr, result.stderr
    assert db_dump(db_url) == before


@pytest.mark.parametrize(
    "args, expected",
    [
        (["status", "x", "--status", "great"], "Invalid value for --status: must be one of pending"),
        (
            ["launch", "x", "--timeout", "10s"],
            "Invalid value for --timeout: goes with --wait (the delivery timeout is --ack-timeout)",
        ),
        (["status", "x", "--wait", "--timeout", "soon"], "Invalid value for --timeout: 'soon' is not a duration"),
        (["status", "x", "--wait", "--min-valid", "120%"], "Invalid value for --min-valid: '120%' is not between"),
        (["run", "--interval", "often"], "Invalid value for --interval: 'often' is not a duration"),
        (["serve", "--engine-interval", "often"], "Invalid value for --engine-interval: 'often' is not a duration"),
    ],
)
def test_usage_errors_exit_2(cli, fleet, db_url, args, expected):
    before = db_dump(db_url)
    result = cli(*args, code=2)
    assert expected in result.stderr, result.stderr
    assert db_dump(db_url) == before


def test_manifest_on_stdin_keeps_its_line_numbers(cli, fleet):
    result = cli("create", "-f", "-", input="name: x\ndevices:\n  names: [ghost-1]\nconfigurations: {a: 1}\n", code=1)
    assert result.stderr.strip() == "Error: -:3: devices.names[0]: unknown device(s): ghost-1"


def test_yaml_values_that_are_not_json(cli, fleet, tmp_path):
    path = write(
        tmp_path,
        "c.yaml",
        "name: x\ndevices: {names: [sensor-0001]}\nconfigurations:\n  expires: 2024-01-01\n  blob: !!binary aGVsbG8=\n",
    )
    assert "c.yaml:5: configurations.blob: not a JSON value" in cli("create", "-f", path, code=1).stderr
    path = write(
        tmp_path, "d.yaml", "name: x\ndevices: {names: [sensor-0001]}\nconfigurations:\n  expires: 2024-01-01\n"
    )
    cli("create", "-f", path)
    assert cli.json("show", "x")["configurations"] == {"expires": "2024-01-01"}  # JSON has no dates


def test_missing_file(cli, tmp_path):
    result = cli("create", "-f", str(tmp_path / "nope.yaml"), code=1)
    assert result.stderr.strip() == f"Error: {tmp_path}/nope.yaml: no such file"


@pytest.mark.parametrize(
    "args, expected",
    [
        (["devices", "set-config", "sensor-0001", "novalue"], "expected KEY=VALUE or KEY:=JSON, got 'novalue'"),
        (["devices", "set-config", "sensor-0001", "a:={oops"], "a:= takes a JSON value"),
        (["devices", "set-config", "sensor-0001", "a b=1"], "key 'a b' contains ' '"),
        (["devices", "report", "sensor-0001", "=1"], "key must not be empty"),
        (["devices", "report", "ghost", "a=1"], "no device named 'ghost'"),
        (["devices", "set-config", "sensor-0001", "a:=NaN"], "a:= takes a JSON value"),
        (["devices", "list", "--tag", "site"], "--tag: expected KEY=VALUE"),
        (
            [
                "firmwares",
                "add",
                "--device-type",
                "sensor-v2",
                "--firmware-type",
                "app",
                "--version",
                "1",
                "--url",
                "not a url",
            ],
            "--url: 'not a url' is not a URL",
        ),
        (
            [
                "firmwares",
                "add",
                "--device-type",
                "sensor-v2",
                "--firmware-type",
                "app",
                "--version",
                "1",
                "--url",
                "https://x/y",
                "--token-env",
                "NOT_SET_ANYWHERE",
            ],
            "environment variable NOT_SET_ANYWHERE is not set",
        ),
        (
            [
                "firmwares",
                "add",
                "--device-type",
                "sensor-v2",
                "--firmware-type",
                "os",
                "--version",
                "1",
                "--url",
                "https://x/y",
            ],
            "device type 'sensor-v2' has no firmware type 'os'",
        ),
        (
            [
                "firmwares",
                "add",
                "--device-type",
                "sensor-v2",
                "--firmware-type",
                "app",
                "--version",
                "1",
                "--url",
                "https://x/y",
                "--sha256",
                "abc",
            ],
            "--sha256: must be 64 hexadecimal digits",
        ),
    ],
)
def test_bad_flags(args, expected, cli, fleet, db_url):
    before = db_dump(db_url)
    result = cli(*args, code=1)
    assert result.stderr.startswith("Error: ") and expected in result.stderr, result.stderr
    assert db_dump(db_url) == before


def test_a_bad_state_payload_is_rejected_whole(cli, fleet, db_url):
    from campaignctl import db, listen

    warnings = []
    engine = db.create_engine(db_url)
    ingest = listen.StateIngest(engine, warnings.append)
    before = db_dump(db_url)
    for payload in (b'{"ok": 1, "bad key": 2}', b"[1, 2]", b"\xff\xfe", b"{}", b'{"a": NaN}'):
        ingest.add("broker", "sensor-0001", payload)
    ingest.flush()
    engine.dispose()
    assert db_dump(db_url) == before
    assert len(warnings) == 5 and all(w.startswith("broker: state of sensor-0001 rejected: ") for w in warnings)
    assert "key 'bad key' contains ' '" in warnings[0]


@pytest.mark.parametrize(
    "name, text, expected",
    [
        (
            "c.yaml",
            "name: x\ndevices: {names: [sensor-0001]}\nconfigurations: {k: &a [*a]}\n",
            "invalid YAML: an alias refers to itself",
        ),
        (
            "c.yaml",
            "name: x\ndevices: {names: [sensor-0001]}\nconfigurations: {k: 99999999999999999999}\n",
            "configurations.k: not a JSON value (integers must fit in 64 bits",
        ),
        (
            "devices.csv",
            'name,type,interface,tags\nd1,sensor-v2,broker,"' + "a" * 140_000 + '"\n',
            "not valid CSV: field larger than field limit",
        ),
    ],
    ids=["self-referencing alias", "65-bit integer", "huge CSV field"],
)
def test_inputs_that_used_to_crash(name, text, expected, cli, fleet, tmp_path, db_url):
    path = write(tmp_path, name, text)
    before = db_dump(db_url)
    command = ["devices", "import", path] if name.endswith(".csv") else ["create", "-f", path]
    assert expected in cli(*command, code=1).stderr
    assert db_dump(db_url) == before


def test_csv_with_a_byte_order_mark(cli, fleet, tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes("\ufeffname,type,interface,tags\nsensor-0200,sensor-v2,broker,site=lyon\n".encode())
    assert cli.json("devices", "import", str(path))["devices"]["created"] == 1


@pytest.mark.parametrize(
    "args, expected",
    [
        (["devices", "set-config", "sensor-0001", "big:=99999999999999999999"], "integers must fit in 64 bits"),
        (["devices", "report", "sensor-0001", "deep:=" + "[" * 5000 + "]" * 5000], "nested too deeply"),
        (
            [
                "firmwares",
                "add",
                "--device-type",
                "sensor-v2",
                "--firmware-type",
                "app",
                "--version",
                "1",
                "--url",
                "https://x/y",
                "--size",
                "99999999999999999999",
            ],
            "--size: must be between 0 and 2^63-1",
        ),
    ],
)
def test_values_out_of_range(args, expected, cli, fleet, db_url):
    before = db_dump(db_url)
    assert expected in cli(*args, code=1).stderr
    assert db_dump(db_url) == before


def test_a_file_that_is_not_a_database(tmp_path):
    from typer.testing import CliRunner

    from campaignctl.cli import app

    path = tmp_path / "notes.txt"
    path.write_text("hello\n")
    result = CliRunner().invoke(app, ["--db", str(path), "jobs", "list"])
    assert result.exit_code == 1
    assert result.stderr.strip() == f"Error: {path} cannot be used as a campaignctl database: file is not a database"
    result = CliRunner().invoke(app, ["--db", str(tmp_path), "jobs", "list"])
    assert result.stderr.strip() == f"Error: {tmp_path} is a directory, not a database file"


def test_bad_mqtt_settings_are_refused_or_reported(cli, tmp_path):
    bad = write(tmp_path, "f.yaml", "interfaces:\n  b: {type: mqtt, keepalive: -1}\n")
    assert (
        "interfaces.b.keepalive: input should be greater than or equal to 5"
        in cli("devices", "import", bad, code=1).stderr
    )
    tls = write(
        tmp_path, "g.yaml", f"interfaces:\n  b: {{type: mqtt, url: 'mqtts://127.0.0.1:1', ca: {tmp_path}/none.pem}}\n"
    )
    cli("devices", "import", tls)
    result = cli("listen", "--timeout", "1", code=1)
    assert result.stderr.startswith("Error: interface b: TLS files (ca, cert, key) unusable")


def test_deeply_nested_state_is_rejected_and_the_listener_goes_on(cli, fleet, db_url):
    from campaignctl import db, listen

    warnings = []
    engine = db.create_engine(db_url)
    ingest = listen.StateIngest(engine, warnings.append)
    ingest.add("broker", "sensor-0001", ('{"a":' + "[" * 30000 + "]" * 30000 + "}").encode())
    ingest.add("broker", "sensor-0001", b'{"ok": 1}')
    ingest.flush()
    engine.dispose()
    assert "nested too deeply" in warnings[0] and ingest.stats.recorded == 1


def test_sql_errors_do_not_print_their_parameters(db_url):
    from sqlalchemy.exc import IntegrityError

    from campaignctl import db

    engine = db.create_engine(db_url)
    insert = "INSERT INTO device_type (name, created_at) VALUES (:name, :at)"
    with pytest.raises(IntegrityError) as failure:
        with db.write(engine) as conn:  # a duplicate name, with a token among the parameters
            db.run(conn, insert, {"name": "t", "at": "tok-5ecret"})
            db.run(conn, insert, {"name": "t", "at": "tok-5ecret"})
    assert "tok-5ecret" not in str(failure.value)
    # A row that breaks a constraint: PostgreSQL's DETAIL repeats its values. The one-line
    # errors that commands and workers print keep the database's message only.
    with pytest.raises(IntegrityError) as failure:
        with db.write(engine) as conn:
            db.run(conn, insert, {"name": None, "at": "tok-5ecret"})
    shown = db.describe(failure.value, engine)
    assert "name" in shown and "tok-5ecret" not in shown
    engine.dispose()


@pytest.mark.parametrize(
    "text, expected",
    [
        ("a: !" + "x" * 5000 + " 1\n", "the YAML tag !xxx"),
        ("a: !" + "x" * 5000 + " [1]\n", "the YAML tag !xxx"),
        ("a: *" + "x" * 5000 + "\n", "found undefined alias 'xxx"),
        ("k" * 1000 + ": 1\n" + "k" * 1000 + ": 2\n", "is given twice (lines 1 and 2)"),
    ],
    ids=["scalar tag", "collection tag", "alias", "key given twice"],
)
def test_yaml_errors_quote_what_the_file_wrote_cut_short(text, expected):
    from campaignctl.errors import InputError
    from campaignctl.yamlfile import YamlDocument

    with pytest.raises(InputError) as raised:
        YamlDocument(text, "m.yaml")
    message = str(raised.value)
    assert expected in message and "…" in message
    # The key stands once in the field path, and at most 40 characters of it in the text.
    assert len(message.split(": ", 2)[-1]) < 150, message
