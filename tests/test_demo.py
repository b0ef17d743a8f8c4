"""`campaignctl demo`: the README's first command, end to end."""

from __future__ import annotations

import subprocess
import threading

import pytest
from conftest import campaignctl_cmd, subprocess_env


def _run_demo(tmp_path, *args: str) -> subprocess.CompletedProcess:
    # A key file set in the environment must not receive anything from the demo.
    env = subprocess_env(TMPDIR=str(tmp_path), CAMPAIGNCTL_KEY_FILE=str(tmp_path / "user.key"))
    return subprocess.run(
        campaignctl_cmd("demo", "--devices", "60", "--timeout", "25", *args),
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )


def test_demo_over_http_ends_by_itself_and_leaves_nothing(tmp_path):
    result = _run_demo(tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for step in (
        "1. fleet: 60 simulated sensor-v2 devices on the HTTP device API",
        "2. firmware registry",
        "3. campaign 'app-5.1.9-beta' created from examples/demo-ota.yaml",
        "5. launch",
        "7. result: 60 devices: ",
    ):
        assert step in out, out
    summary = out.split("7. result: 60 devices: ")[1].splitlines()[0]
    valid = int(summary.split(" valid")[0])
    assert valid >= 50  # mostly valid; the few failing devices are explained
    assert "waiting: these devices got the document" in out
    assert list(tmp_path.iterdir()) == []  # the temporary database is gone


@pytest.fixture
def own_broker(tmp_path_factory):
    """A broker of this test's own: the session's holds thousands of other tests' retained
    messages, which a subscriber would have to wade through."""
    from conftest import Broker

    broker = Broker(tmp_path_factory.mktemp("demo-broker")).start()
    yield broker
    broker.stop()


def test_demo_over_mqtt(tmp_path, own_broker):
    broker = own_broker
    result = _run_demo(tmp_path, "--mqtt", broker.url)
    assert result.returncode == 0, result.stderr
    assert f"on MQTT broker {broker.url}" in result.stdout
    assert "retained documents acknowledged by the broker" in result.stdout
    assert int(result.stdout.split("7. result: 60 devices: ")[1].split(" valid")[0]) >= 50
    # The demo cleared its retained messages from the broker.
    import paho.mqtt.client as mqtt
    from conftest import publish

    publish(broker.port, "demo-probe/x/config", "{}", retain=True)  # proves the subscriber sees retained ones
    seen: list[str] = []
    done = threading.Event()
    client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2)
    client.on_connect = lambda c, *_: c.subscribe("+/+/+", qos=1)
    # Once subscribed, a marker published by this client reaches it after every retained
    # message the subscription brought (the broker sends them in that order).
    client.on_subscribe = lambda c, *_: c.publish("marker/x/y", "{}", qos=1)
    client.on_message = lambda _c, _u, m: (seen.append(m.topic), m.topic == "marker/x/y" and done.set())
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    assert done.wait(30)
    client.disconnect()
    client.loop_stop()
    assert "demo-probe/x/config" in seen
    publish(broker.port, "demo-probe/x/config", "", retain=True)
    assert [t for t in seen if t.startswith("campaignctl-demo-")] == []
