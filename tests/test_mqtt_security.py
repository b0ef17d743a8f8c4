"""MQTT over TLS with credentials from the environment, against a real mosquitto."""

from __future__ import annotations

import json
import subprocess
import threading

import pytest
from conftest import Broker, db_dump, write


@pytest.fixture
def secure_broker(tmp_path):
    """mosquitto with TLS (a test CA) and a password file; no anonymous access."""

    def run(*args: str) -> None:
        subprocess.run(args, cwd=tmp_path, check=True, capture_output=True)

    run(
        "openssl",
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-subj",
        "/CN=campaignctl test CA",
        "-days",
        "1",
    )
    run(
        "openssl",
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    )
    (tmp_path / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    run(
        "openssl",
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "1",
        "-extfile",
        "san.ext",
    )
    run("mosquitto_passwd", "-c", "-b", "passwd", "fleet-operator", "op-5ecret")
    broker = Broker(
        tmp_path,
        settings=(
            f"cafile {tmp_path}/ca.crt\ncertfile {tmp_path}/server.crt\nkeyfile {tmp_path}/server.key\n"
            f"allow_anonymous false\npassword_file {tmp_path}/passwd\n"
        ),
    ).start()
    yield broker
    broker.stop()


def _fleet(tmp_path, port: int) -> str:
    return write(
        tmp_path,
        "fleet.yaml",
        f"""\
interfaces:
  secure:
    type: mqtts
    url: mqtts://127.0.0.1:{port}
    topic_prefix: secure
    ca: {tmp_path}/ca.crt
    username_env: BROKER_USER
    password_env: BROKER_PASSWORD
device_types:
  cam: {{}}
devices:
  - {{name: cam-1, type: cam, interface: secure}}
""".replace("type: mqtts", "type: mqtt"),
    )


def _retained(tmp_path, port: int, topic: str) -> dict:
    import paho.mqtt.client as mqtt

    got: list[dict] = []
    done = threading.Event()
    client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2)
    client.tls_set(ca_certs=str(tmp_path / "ca.crt"))
    client.username_pw_set("fleet-operator", "op-5ecret")
    client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
    client.on_message = lambda _c, _u, m: (got.append(json.loads(m.payload)), done.set())
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        assert done.wait(10)
    finally:
        client.disconnect()
        client.loop_stop()
    return got[-1]


def test_tls_with_credentials_from_the_environment(cli, tmp_path, secure_broker):
    cli("devices", "import", _fleet(tmp_path, secure_broker.port))
    cli("create", "-f", write(tmp_path, "c.yaml", "name: c\ndevices: {names: [cam-1]}\nconfigurations: {mode: eco}\n"))
    env = {"BROKER_USER": "fleet-operator", "BROKER_PASSWORD": "op-5ecret"}
    result = cli("launch", "c", env=env)
    assert "1 delivered, 0 failed" in result.stdout
    assert _retained(tmp_path, secure_broker.port, "secure/cam-1/config")["configuration"] == {"mode": "eco"}
    # The password is read from the environment when needed, never stored or shown.
    shown = json.dumps(cli.json("jobs", "show", "1")) + cli("devices", "list").stdout
    assert "op-5ecret" not in shown and "op-5ecret" not in "\n".join(db_dump(cli.db_url))


@pytest.mark.parametrize(
    "env, error",
    [
        (
            {"BROKER_USER": "fleet-operator"},
            "environment variable BROKER_PASSWORD (password of interface secure) is not set",
        ),
        ({"BROKER_USER": "fleet-operator", "BROKER_PASSWORD": "wrong"}, "refused the connection: Not authorized"),
    ],
)
def test_credential_problems_fail_at_once_with_a_clear_reason(cli, tmp_path, secure_broker, env, error):
    import os

    cli("devices", "import", _fleet(tmp_path, secure_broker.port))
    cli("create", "-f", write(tmp_path, "c.yaml", "name: c\ndevices: {names: [cam-1]}\nconfigurations: {mode: eco}\n"))
    os.environ.pop("BROKER_PASSWORD", None)
    cli("launch", "c", "--attempts", "5", "--backoff", "2", env=env, code=1)
    [failure] = cli.json("jobs", "show", "1")["errors"]
    assert error in failure["error"] and failure["attempts"] == 1  # not retried: retrying cannot help
