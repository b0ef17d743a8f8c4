"""The HTTP device API of `campaignctl serve`, against a real server on 127.0.0.1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import db_dump, http, wait_until, write

FLEET = """\
    interfaces:
      devapi: {type: http, url: "http://127.0.0.1:1"}
      broker: {type: mqtt, url: "mqtt://127.0.0.1:1", topic_prefix: x}
    device_types:
      cam: {}
    devices:
      - {name: cam-1, type: cam, interface: devapi}
      - {name: cam-2, type: cam, interface: devapi}
      - {name: cam-3, type: cam, interface: devapi}
      - {name: plug-1, type: cam, interface: broker}
    """


@pytest.fixture
def served(cli, tmp_path, db_url):
    """The fleet imported and served: (server, base URL, device secrets)."""
    from campaignctl import db
    from campaignctl.server import Server

    assert cli.json("devices", "import", write(tmp_path, "fleet.yaml", FLEET))["secrets_provisioned"] == 3
    engine = db.create_engine(db_url)
    server = Server(engine, port=0, listen_mqtt=False, engine_interval=0.1).start()
    base = f"http://127.0.0.1:{server.port}"
    secrets = {n: cli("devices", "credentials", n).stdout.strip() for n in ("cam-1", "cam-2", "cam-3")}
    yield server, base, secrets
    server.stop()
    engine.dispose()


@pytest.fixture
def api(served):
    _, base, secrets = served
    return base, secrets


def _auth(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def test_credentials_are_printed_alone_and_not_stored(cli, api, db_url):
    _, secrets = api
    assert len(set(secrets.values())) == 3 and all(len(s) >= 40 for s in secrets.values())
    assert cli("devices", "credentials", "cam-1").stdout == secrets["cam-1"] + "\n"
    stored = "\n".join(db_dump(db_url))  # every row of every table, on either backend
    assert all(s not in stored for s in secrets.values())
    assert "only devices on http interfaces have secrets" in cli("devices", "credentials", "plug-1", code=1).stderr
    # Nothing else shows them.
    assert secrets["cam-1"] not in cli("devices", "show", "cam-1", "-o", "json").stdout


def test_authentication_and_isolation(api):
    base, secrets = api
    url = f"{base}/v1/devices/cam-1/configuration"
    status, headers, body = http("GET", url)
    assert status == 401 and headers["www-authenticate"].startswith("Bearer")
    assert json.loads(body) == {"error": "missing bearer token"}
    assert http("GET", url, headers={"Authorization": "Basic abc"})[0] == 401
    assert http("GET", url, headers=_auth("not-the-secret"))[0] == 401
    # Another device's valid secret opens nothing of cam-1, for reading or writing.
    assert http("GET", url, headers=_auth(secrets["cam-2"]))[0] == 401
    assert http("PUT", f"{base}/v1/devices/cam-1/state", headers=_auth(secrets["cam-2"]), body='{"a": 1}')[0] == 401
    # Unknown devices look exactly like wrong secrets, names no device can have too.
    assert http("GET", f"{base}/v1/devices/ghost/configuration", headers=_auth(secrets["cam-1"]))[0] == 401
    for name in ("cam-1%00", "%C3%A9t%C3%A9", "x" * 300):
        assert http("GET", f"{base}/v1/devices/{name}/configuration", headers=_auth(secrets["cam-1"]))[0] == 401
        assert http("PUT", f"{base}/v1/devices/{name}/state", headers=_auth(secrets["cam-1"]), body="{}")[0] == 401
    status, headers, body = http("GET", url, headers=_auth(secrets["cam-1"]))
    assert status == 200 and json.loads(body) == {"configuration": {}, "version": 0} and headers["etag"] == '"0"'
    assert http("GET", f"{base}/healthz")[:1] == (200,)


def test_configuration_etag_and_304(cli, api):
    base, secrets = api
    url = f"{base}/v1/devices/cam-1/configuration"
    cli("devices", "set-config", "cam-1", "mode=eco", "interval:=30")
    status, headers, body = http("GET", url, headers=_auth(secrets["cam-1"]))
    document = json.loads(body)
    assert status == 200 and document["configuration"] == {"interval": 30, "mode": "eco"}
    assert headers["etag"] == f'"{document["version"]}"'
    status, headers, body = http("GET", url, headers={**_auth(secrets["cam-1"]), "If-None-Match": headers["etag"]})
    assert status == 304 and body == b""
    cli("devices", "set-config", "cam-1", "mode=boost")
    status, _, body = http("GET", url, headers={**_auth(secrets["cam-1"]), "If-None-Match": f'"{document["version"]}"'})
    assert status == 200 and json.loads(body)["version"] > document["version"]


def test_state_is_recorded(cli, api):
    base, secrets = api
    status, _, body = http(
        "PUT",
        f"{base}/v1/devices/cam-2/state",
        headers=_auth(secrets["cam-2"]),
        body='{"app_version": "1.2", "temp": 21.5}',
    )
    assert status == 204 and body == b""
    entries = {e["key"]: e["reported"] for e in cli.json("devices", "show", "cam-2")["configuration"]}
    assert entries == {"app_version": "1.2", "temp": 21.5}


@pytest.mark.parametrize(
    "body, status, error",
    [
        ("{not json", 400, "state is not JSON"),
        ("[1, 2]", 400, "state must be a JSON object, not list"),
        ('{"bad key": 1}', 400, "key 'bad key' contains ' '"),
        ('{"ok": 1, "a.b": 2}', 400, "key 'a.b' contains '.'"),
        ("{}", 400, "state is an empty object"),
        ('{"x": "' + "a" * 70_000 + '"}', 413, "body larger than 65536 bytes"),
    ],
)
def test_bad_bodies_write_nothing(api, db_url, body, status, error):
    base, secrets = api
    before = db_dump(db_url)
    got, _, raw = http("PUT", f"{base}/v1/devices/cam-3/state", headers=_auth(secrets["cam-3"]), body=body)
    assert got == status and error in json.loads(raw)["error"]
    assert db_dump(db_url) == before


def test_oversized_chunked_body_is_refused(api, db_url):
    import http.client
    from urllib.parse import urlsplit

    base, secrets = api
    parts = urlsplit(base)
    before = db_dump(db_url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    chunks = (b'{"x": "' + b"a" * 10_000 + b'"}' if i == 0 else b" " * 10_000 for i in range(8))
    conn.request("PUT", "/v1/devices/cam-3/state", body=chunks, headers=_auth(secrets["cam-3"]), encode_chunked=True)
    assert conn.getresponse().status == 413
    conn.close()
    assert db_dump(db_url) == before


def test_serving_a_document_counts_as_delivery(cli, api, tmp_path):
    base, secrets = api
    cli(
        "create",
        "-f",
        write(
            tmp_path,
            "c.yaml",
            """\
        name: cams
        devices: {selector: {type: cam, tags: {}}, names: [cam-1, cam-2, cam-3]}
        configurations: {resolution: 1080p}
        expected_state: {resolution: 1080p}
        """,
        ),
    )
    launched = cli.json("launch", "cams", "--attempts", "1", "--ack-timeout", "1")
    # plug-1 (MQTT, broker down) is selected by the type selector: it fails; the cams wait.
    assert launched["status"] == "waiting" or launched["counts"]["syncing"] == 3
    status = {d["device"]: d["status"] for d in cli.json("status", "cams")["devices"]}
    assert status["cam-1"] == status["cam-2"] == status["cam-3"] == "syncing"
    for name in ("cam-1", "cam-2"):
        got, _, body = http("GET", f"{base}/v1/devices/{name}/configuration", headers=_auth(secrets[name]))
        assert json.loads(body)["configuration"] == {"resolution": "1080p"}
    data = cli.json("status", "cams")
    status = {d["device"]: d["status"] for d in data["devices"]}
    assert status["cam-1"] == status["cam-2"] == "waiting" and status["cam-3"] == "syncing"
    assert data["job"]["status"] == "waiting" and data["status"] == "running"
    http("PUT", f"{base}/v1/devices/cam-1/state", headers=_auth(secrets["cam-1"]), body='{"resolution": "1080p"}')
    http("GET", f"{base}/v1/devices/cam-3/configuration", headers=_auth(secrets["cam-3"]))
    # After the last fetch, the rollout engine in serve ends the job: one device failed
    # delivery (its broker is down).
    data = wait_until(lambda: (d := cli.json("status", "cams"))["status"] == "completed" and d, timeout=10)
    status = {d["device"]: d["status"] for d in data["devices"]}
    assert status == {"cam-1": "valid", "cam-2": "waiting", "cam-3": "waiting", "plug-1": "failed"}
    assert data["job"]["status"] == "failed"


def test_rotate_secret(cli, api):
    base, secrets = api
    url = f"{base}/v1/devices/cam-1/configuration"
    cli("devices", "rotate-secret", "cam-1")
    new = cli("devices", "credentials", "cam-1").stdout.strip()
    assert new != secrets["cam-1"]
    assert http("GET", url, headers=_auth(secrets["cam-1"]))[0] == 401
    assert http("GET", url, headers=_auth(new))[0] == 200


def test_openapi_description_is_published_and_in_docs(cli, api):
    base, _ = api
    status, _, body = http("GET", f"{base}/openapi.json")
    spec = json.loads(body)
    assert status == 200
    assert {"/v1/devices/{name}/configuration", "/v1/devices/{name}/state", "/healthz"} <= set(spec["paths"])
    printed = json.loads(cli("serve", "--openapi").stdout)
    documented = json.loads((Path(__file__).parent.parent / "docs" / "openapi.json").read_text())
    assert printed == documented, "docs/openapi.json is stale: campaignctl serve --openapi > docs/openapi.json"


def test_a_device_moved_off_http_loses_its_secret(cli, api, tmp_path):
    base, secrets = api
    moved = FLEET.replace("{name: cam-3, type: cam, interface: devapi}", "{name: cam-3, type: cam, interface: broker}")
    cli("devices", "import", write(tmp_path, "moved.yaml", moved))
    assert http("GET", f"{base}/v1/devices/cam-3/configuration", headers=_auth(secrets["cam-3"]))[0] == 401
    assert http("PUT", f"{base}/v1/devices/cam-3/state", headers=_auth(secrets["cam-3"]), body='{"a": 1}')[0] == 401


def test_authentication_comes_before_the_body(api):
    base, secrets = api
    big = '{"x": "' + "a" * 70_000 + '"}'
    assert http("PUT", f"{base}/v1/devices/cam-1/state", headers=_auth("wrong"), body=big)[0] == 401
    status, _, body = http("GET", f"{base}/nowhere")
    assert status == 404 and json.loads(body) == {"error": "Not Found"}
    status, _, body = http("DELETE", f"{base}/v1/devices/cam-1/state", headers=_auth(secrets["cam-1"]))
    assert status == 405 and "error" in json.loads(body)


def test_openapi_tells_bearer_auth_and_no_422(cli):
    spec = json.loads(cli("serve", "--openapi").stdout)
    assert spec["components"]["securitySchemes"]["deviceSecret"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "The device's secret: campaignctl devices credentials NAME",
    }
    for path, operations in spec["paths"].items():
        for operation in operations.values():
            assert "422" not in operation["responses"]
            assert (operation.get("security") == [{"deviceSecret": []}]) == path.startswith("/v1/")


def test_serve_on_a_busy_port_is_a_clean_error(cli):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = cli("serve", "--port", str(port), "--no-mqtt", "--no-engine", code=1)
    assert result.stderr.strip() == f"Error: cannot serve on 127.0.0.1:{port}: Address already in use"


def test_access_log_is_written_when_asked(tmp_path, db_url, cli):
    import signal
    import subprocess

    from conftest import campaignctl_cmd, free_port, subprocess_env, wait_until

    cli("devices", "import", write(tmp_path, "fleet.yaml", FLEET))
    port = free_port()
    proc = subprocess.Popen(
        campaignctl_cmd("--db", str(db_url), "serve", "--port", str(port), "--no-mqtt", "--access-log"),
        env=subprocess_env(),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: _up(port), timeout=15)
        http("GET", f"http://127.0.0.1:{port}/healthz")
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    assert "GET /healthz HTTP/1.1" in err and "200" in err


def _up(port: int) -> bool:
    try:
        return http("GET", f"http://127.0.0.1:{port}/healthz")[0] == 200
    except OSError:
        return False


def test_a_campaign_with_only_an_expected_state_completes(cli, api, tmp_path):
    base, secrets = api
    cli(
        "create",
        "-f",
        write(tmp_path, "c.yaml", "name: check\ndevices: {names: [cam-1]}\nexpected_state: {fw: '1.2'}\n"),
    )
    cli("launch", "check")
    status, _, body = http("GET", f"{base}/v1/devices/cam-1/configuration", headers=_auth(secrets["cam-1"]))
    assert status == 200 and json.loads(body)["configuration"] == {}
    http("PUT", f"{base}/v1/devices/cam-1/state", headers=_auth(secrets["cam-1"]), body='{"fw": "1.2"}')
    data = wait_until(lambda: (d := cli.json("status", "check"))["status"] == "completed" and d, timeout=10)
    assert data["devices"][0]["status"] == "valid"


def test_integers_beyond_64_bits_are_refused(api, db_url):
    base, secrets = api
    before = db_dump(db_url)
    status, _, body = http(
        "PUT",
        f"{base}/v1/devices/cam-1/state",
        headers=_auth(secrets["cam-1"]),
        body='{"serial": 123456789012345678901234567890}',
    )
    assert status == 400 and "integers must fit in 64 bits" in json.loads(body)["error"]
    assert db_dump(db_url) == before


#: Keys and values that JSON texts spell in more than one way, or that sort differently
#: by byte, by UTF-16 unit and by locale: documents must not depend on the backend.
TRICKY = {
    "A": 1,
    "_": [],
    "a": "lower after upper",
    'q"uote': 'say "hi"',
    "back\\slash": "C:\\dir\\",
    "clé": "été ✓",
    "ключ": "значение",
    "ctl": "bell\x07 nul\x00 tab\t nl\n cr\r ff\f bs\b del\x7f",  # (keys may hold no control character)
    "\ue000": "private use (above U+D800 in UTF-16)",
    "😀": "a key outside the BMP",
    "z": {
        "nested": {
            "b": [1, 2.5, -3e-07, 1e100, None, True, False, {}],
            "a": "\u2028\u2029 </script>",
            "\ue000": "😀",
            "😀": {"": ""},
        }
    },
    "big": 2**63 - 1,
    "small": -(2**63),
    "tenth": 0.1,
    "zero": -0.0,
    "empty": "",
    "slash": "a/b",
}


def test_documents_are_byte_identical_on_both_backends(tmp_path, postgres, monkeypatch):
    """Devices compare documents byte for byte: the same desired values give the same
    bytes from SQLite and from PostgreSQL, pushed (MQTT, webhooks) or served (HTTP), and
    they are the canonical JSON text Python writes."""
    from conftest import Cli

    from campaignctl import db, fleet
    from campaignctl.delivery import load_documents
    from campaignctl.server import Server
    from campaignctl.values import canonical

    monkeypatch.setenv("CAMPAIGNCTL_KEY_FILE", str(tmp_path / "campaignctl.key"))
    pg, template = postgres
    database = pg.create_database(template)
    targets = {"sqlite": str(tmp_path / "campaignctl.db"), "postgresql": pg.url(database)}
    fleet_file = write(tmp_path, "fleet.yaml", FLEET)
    documents = {}
    try:
        for backend, target in targets.items():
            cli = Cli(target)
            cli("devices", "import", fleet_file)
            engine = db.create_engine(target)
            server = Server(engine, port=0, listen_mqtt=False, engine_interval=None).start()
            try:
                version = fleet.set_config(engine, "cam-1", TRICKY, deliver=False).version
                fleet.set_config(engine, "cam-2", {"only": "one"}, deliver=False)
                with db.read(engine) as conn:
                    device_id = db.run(conn, "SELECT id FROM device WHERE name = 'cam-1'").scalar_one()
                    [pushed] = load_documents(conn, [(device_id, "cam-1")])
                secret = cli("devices", "credentials", "cam-1").stdout.strip()
                status, headers, served = http(
                    "GET", f"http://127.0.0.1:{server.port}/v1/devices/cam-1/configuration", headers=_auth(secret)
                )
                assert status == 200 and headers["etag"] == f'"{version}"'
                empty = http(
                    "GET",
                    f"http://127.0.0.1:{server.port}/v1/devices/cam-3/configuration",
                    headers=_auth(cli("devices", "credentials", "cam-3").stdout.strip()),
                )[2]
            finally:
                server.stop()
                engine.dispose()
            expected = f'{{"configuration":{canonical(TRICKY)},"version":{version}}}'.encode()
            assert pushed.payload == served == expected, backend
            assert json.loads(served)["configuration"] == json.loads(canonical(TRICKY))
            documents[backend] = (served, empty)
    finally:
        pg.drop_database(database)
    assert documents["sqlite"] == documents["postgresql"]
    assert documents["sqlite"][1] == b'{"configuration":{},"version":0}'


def test_job_deliveries_of_a_range_of_devices(cli, api, tmp_path, db_url):
    """A shard's worker reads the job's syncing devices whose ids are in its range only."""
    from campaignctl import db
    from campaignctl.delivery import job_deliveries

    cli(
        "create",
        "-f",
        write(
            tmp_path,
            "c.yaml",
            "name: cams\ndevices: {names: [cam-1, cam-2, cam-3]}\nconfigurations: {resolution: 1080p}\n",
        ),
    )
    job = cli.json("launch", "cams")["id"]
    engine = db.create_engine(db_url)
    try:
        with db.read(engine) as conn:
            ids = dict(db.run(conn, "SELECT name, id FROM device").all())
            interface = db.run(conn, "SELECT id FROM interface WHERE name = 'devapi'").scalar_one()
        every = [d.device for d in job_deliveries(engine, job, interface, chunk=1)]
        assert every == ["cam-1", "cam-2", "cam-3"]
        middle = list(job_deliveries(engine, job, interface, first=ids["cam-2"], last=ids["cam-2"]))
        assert [d.device for d in middle] == ["cam-2"]
        assert json.loads(middle[0].payload)["configuration"] == {"resolution": "1080p"}
        assert [d.device for d in job_deliveries(engine, job, interface, chunk=1, first=ids["cam-2"])] == [
            "cam-2",
            "cam-3",
        ]
        assert [d.device for d in job_deliveries(engine, job, interface, last=ids["cam-2"])] == ["cam-1", "cam-2"]
    finally:
        engine.dispose()


def test_the_device_api_outlives_a_dropped_database_connection(served):
    """A database restart (PostgreSQL) drops the API's reading connection: the next
    requests are answered on a new one."""
    server, base, secrets = served
    url = f"{base}/v1/devices/cam-1/configuration"
    assert http("GET", url, headers=_auth(secrets["cam-1"]))[0] == 200
    server.app.state.reader.conn.connection.driver_connection.close()  # as the database would
    assert http("GET", url, headers=_auth(secrets["cam-1"]))[0] == 200
    assert http("PUT", f"{base}/v1/devices/cam-1/state", headers=_auth(secrets["cam-1"]), body='{"a": 1}')[0] == 204
