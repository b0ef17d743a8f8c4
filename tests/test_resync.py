"""Broker data loss: `devices resync` sends the current documents again, and `simulate`
keeps receiving across a broker restart. Against real mosquitto processes."""

from __future__ import annotations

import json
import signal
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from conftest import (
    Broker,
    Subscriber,
    campaignctl_cmd,
    db_dump,
    fleet_yaml,
    free_port,
    publish,
    subprocess_env,
    wait_until,
    write,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

MARKER = "zz-marker"


def _fleet(cli, tmp_path: Path, url: str, prefix: str, devices: int = 4) -> None:
    """``devices`` sensors on the broker at ``url``, and two cameras on an http interface."""
    path = tmp_path / "fleet.yaml"
    path.write_text(
        fleet_yaml(url, prefix, devices=devices).replace(
            "interfaces:\n", "interfaces:\n  devapi: {type: http, url: 'http://127.0.0.1:1'}\n"
        )
        + "".join(f"  - {{name: cam-{i}, type: sensor-v2, interface: devapi}}\n" for i in (1, 2))
    )
    cli("devices", "import", str(path))


def _campaign(cli, tmp_path: Path, name: str, selector: str, values: str) -> None:
    cli(
        "create",
        "-f",
        write(tmp_path, f"{name}.yaml", f"name: {name}\ndevices: {{selector: {selector}}}\nconfigurations: {values}\n"),
    )
    cli("launch", name)


def _received(port: int, prefix: str, action: Callable[[], Any]) -> dict[str, list[Any]]:
    """The documents a subscriber to every ``config`` topic of ``prefix`` gets because of
    ``action``. A marker published after the action, and received last, proves that
    nothing else is coming: the broker sends a subscriber the messages in the order it
    took them (and the retained ones first, before the first marker)."""
    subscriber = Subscriber(port, f"{prefix}/+/config")
    try:
        _drain(subscriber, port, prefix, f"{MARKER}-0")
        action()
        return _drain(subscriber, port, prefix, f"{MARKER}-1")
    finally:
        subscriber.close()


def _retained(port: int, prefix: str) -> dict[str, list[Any]]:
    """The documents a new subscriber gets: the broker's retained ones."""
    subscriber = Subscriber(port, f"{prefix}/+/config")
    try:
        return _drain(subscriber, port, prefix, MARKER)
    finally:
        subscriber.close()


def _drain(subscriber: Subscriber, port: int, prefix: str, marker: str) -> dict[str, list[Any]]:
    """What the subscriber got before ``marker``, which it is then sent (and forgets)."""
    publish(port, f"{prefix}/{marker}/config", "{}")
    wait_until(lambda: f"{prefix}/{marker}/config" in subscriber.messages, timeout=10, interval=0.02)
    with subscriber._lock:
        got = {t: m for t, m in subscriber.messages.items() if MARKER not in t}
        subscriber.messages.clear()
    return got


def test_resync_restores_the_documents_a_broker_lost(cli, db_url, tmp_path, prefix):
    port = free_port()
    broker = Broker(tmp_path, port).start()
    try:
        _fleet(cli, tmp_path, broker.url, prefix)
        _campaign(cli, tmp_path, "eco", "{type: sensor-v2}", "{mode: eco}")
        cli("devices", "set-config", "sensor-0002", "report_interval:=60")  # a newer version for one device
        documents = _retained(port, prefix)
        assert len(documents) == 4
        # A broker without persistence restarts empty.
        broker.stop()
        broker = Broker(tmp_path, port).start()
        assert _retained(port, prefix) == {}
        before = db_dump(db_url)

        result = cli.json("devices", "resync", "--processes", "2")  # two processes share the sending

        assert result["devices"] == 6 and result["resent"] == 4 and result["failed"] == 0
        assert result["fetch_themselves"] == 2 and result["errors"] == []
        assert {i["name"]: (i["resent"], i["fetch_themselves"]) for i in result["interfaces"]} == {
            "broker": (4, 0),
            "devapi": (0, 2),
        }
        # The same documents, same versions, retained again; nothing written.
        assert _retained(port, prefix) == documents
        assert documents[f"{prefix}/sensor-0002/config"][0]["configuration"] == {"mode": "eco", "report_interval": 60}
        assert db_dump(db_url) == before
    finally:
        broker.stop()


@pytest.mark.parametrize("backend", ["sqlite"])  # the property test below runs the selection on both
def test_resync_filters_by_campaign_device_and_interface(cli, tmp_path, broker, prefix):
    _fleet(cli, tmp_path, broker.url, prefix, devices=6)
    _campaign(cli, tmp_path, "lyon", "{tags: {site: lyon}}", "{mode: eco}")  # sensors 1, 3, 5
    cli("devices", "set-config", "sensor-0002", "mode=turbo")
    cli("devices", "set-config", "cam-1", "mode=night")

    def resent(*args: str) -> set[str]:
        got = _received(broker.port, prefix, lambda: cli("devices", "resync", *args))
        return {topic.split("/")[1] for topic in got}

    assert resent() == {"sensor-0001", "sensor-0002", "sensor-0003", "sensor-0005"}  # sensor-0004/6: no document
    assert resent("--campaign", "lyon") == {"sensor-0001", "sensor-0003", "sensor-0005"}
    assert resent("--device", "sensor-0002", "--device", "sensor-0003") == {"sensor-0002", "sensor-0003"}
    assert resent("--campaign", "lyon", "--device", "sensor-0002", "--device", "sensor-0003") == {"sensor-0003"}
    assert resent("--interface", "devapi") == set()
    table = cli("devices", "resync", "--interface", "devapi")
    assert "devices fetch it themselves" in table.stdout
    assert "1 device(s) with a document: 0 to resend, 1 fetch it themselves (http)" in table.stderr
    named = cli("devices", "resync", "--device", "sensor-0004", "--device", "sensor-0001")
    assert "sensor-0004: nothing desired, no document to resend" in named.stderr
    assert "1 resent, 0 failed" in named.stderr


@pytest.mark.parametrize("backend", ["sqlite"])
@pytest.mark.parametrize(
    "args, error",
    [
        (["--interface", "nope"], "no interface named 'nope'"),
        (["--campaign", "nope"], "no campaign named 'nope'"),
        (["--device", "sensor-0001", "--device", "ghost"], "no device named 'ghost'"),
        (["--device", "ghost-1", "--device", "ghost-2"], "2 devices do not exist: 'ghost-1', 'ghost-2'"),
    ],
)
def test_resync_unknown_names_send_nothing(cli, tmp_path, broker, prefix, args, error):
    _fleet(cli, tmp_path, broker.url, prefix, devices=2)
    cli("devices", "set-config", "sensor-0001", "mode=eco")
    results = []
    got = _received(broker.port, prefix, lambda: results.append(cli("devices", "resync", *args, code=1)))
    assert results[0].stderr.strip() == f"Error: {error}"
    assert got == {}


@pytest.mark.parametrize("backend", ["sqlite"])  # transport failures do not depend on the backend
def test_resync_failures_are_grouped_by_reason_and_exit_1(cli, tmp_path, prefix):
    port = free_port()  # nothing listens there
    _fleet(cli, tmp_path, f"mqtt://127.0.0.1:{port}", prefix, devices=3)
    cli("devices", "set-config", "sensor-0001", "mode=eco", "--no-deliver")
    cli("devices", "set-config", "sensor-0002", "mode=eco", "--no-deliver")
    # Two processes, one device each: the counts and reasons of both are merged.
    result = cli("devices", "resync", "--attempts", "1", "--processes", "2", "-o", "json", code=1)
    summary = json.loads(result.stdout)
    assert summary["resent"] == 0 and summary["failed"] == 2
    assert summary["errors"] == [
        {
            "error": f"cannot connect to 127.0.0.1:{port}: Connection refused",
            "devices": 2,
            "examples": ["sensor-0001", "sensor-0002"],
        }
    ]
    assert result.stderr.strip().endswith("Error: 2 device(s) could not be resent")
    table = cli("devices", "resync", "--attempts", "1", code=1)
    assert "Connection refused" in table.stdout and "sensor-0001, sensor-0002" in table.stdout


# sensors 1-8 (odd ones in lyon, 1 and 2 in the canary ring), cameras 1-2 on http.
# Campaign lyon: the odd sensors; canary: sensors 1 and 2; sensor-0008 and cam-1 set by
# hand; sensors 4 and 6 and cam-2 have nothing desired.
_WITH_DOCUMENT = {"sensor-0001", "sensor-0002", "sensor-0003", "sensor-0005", "sensor-0007", "sensor-0008", "cam-1"}
_CAMPAIGNS = {
    "lyon": {"sensor-0001", "sensor-0003", "sensor-0005", "sensor-0007"},
    "canary": {"sensor-0001", "sensor-0002"},
}
_NAMES = [f"sensor-{i:04d}" for i in range(1, 9)] + ["cam-1", "cam-2"]


@pytest.fixture
def selection_engine(cli, tmp_path, broker, prefix):
    """One fleet for every example of the property below."""
    from campaignctl import db

    _fleet(cli, tmp_path, broker.url, prefix, devices=8)
    _campaign(cli, tmp_path, "lyon", "{tags: {site: lyon}}", "{mode: eco}")
    _campaign(cli, tmp_path, "canary", "{tags: {ring: canary}}", "{level: 2}")
    cli("devices", "set-config", "sensor-0008", "mode=turbo")
    cli("devices", "set-config", "cam-1", "mode=night")
    engine = db.create_engine(cli.db_url)
    yield engine
    engine.dispose()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    interface=st.sampled_from([None, "broker", "devapi"]),
    campaign=st.sampled_from([None, "lyon", "canary"]),
    devices=st.lists(st.sampled_from(_NAMES), max_size=4),
)
def test_resync_selects_what_the_filters_say(selection_engine, interface, campaign, devices):
    """Whatever the combination of filters, the devices selected per interface are those
    of a model of the filters: all of them hold, and only devices with a document count."""
    from campaignctl import resync

    plan = resync.plan(selection_engine, interface=interface, campaign=campaign, devices=devices)

    chosen = {
        n
        for n in _WITH_DOCUMENT
        if (interface is None or n.startswith("cam") == (interface == "devapi"))
        and (campaign is None or n in _CAMPAIGNS[campaign])
        and (not devices or n in devices)
    }
    model = {
        i: c
        for i, c in (
            ("broker", sum(not n.startswith("cam") for n in chosen)),
            ("devapi", sum(n.startswith("cam") for n in chosen)),
        )
        if c
    }
    assert {i.name: i.devices for i in plan.interfaces} == model
    assert plan.fetch_themselves == model.get("devapi", 0)
    assert plan.without_document == sorted(set(devices) - _WITH_DOCUMENT)


@pytest.mark.parametrize("backend", ["sqlite"])  # nor does the simulator
def test_simulate_resubscribes_after_the_broker_restarts(cli, db_url, tmp_path, prefix):
    port = free_port()
    broker = Broker(tmp_path, port).start()
    _fleet(cli, tmp_path, broker.url, prefix, devices=2)
    cli("devices", "report", "sensor-0001", "mode=a")  # the simulated device reports it when it boots
    cli("devices", "set-config", "sensor-0001", "mode=b")  # retained: the device gets it when it subscribes
    simulator = subprocess.Popen(
        campaignctl_cmd("--db", str(db_url), "simulate", "--interface", "broker", "--apply-delay", "0", "-o", "json"),
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    topic = f"{prefix}/sensor-0001/state"
    try:
        with _states(port, prefix) as states:
            wait_until(lambda: states.messages.get(topic, [])[-1:] == [{"mode": "b"}], timeout=30)
        broker.stop()
        broker = Broker(tmp_path, port).start()  # without persistence: no retained message, no session
        with _states(port, prefix) as states:
            # The device reports its state once reconnected, after subscribing again.
            wait_until(lambda: states.messages.get(topic, [])[-1:] == [{"mode": "b"}], timeout=30)
            cli("devices", "set-config", "sensor-0001", "mode=c")
            wait_until(lambda: states.messages.get(topic, [])[-1:] == [{"mode": "c"}], timeout=30)
    finally:
        simulator.send_signal(signal.SIGINT)
        out, err = simulator.communicate(timeout=30)
        broker.stop()
    stats = json.loads(out)
    assert stats["reconnects"] >= 1 and stats["applied"] == 2 and stats["errors"] == 0, err
    assert "broker: reconnected; 2 device(s) subscribed again" in err


@contextmanager
def _states(port: int, prefix: str) -> Iterator[Subscriber]:
    subscriber = Subscriber(port, f"{prefix}/+/state")
    try:
        yield subscriber
    finally:
        subscriber.close()


@pytest.fixture
def split_engine(cli, tmp_path, prefix):
    """12 sensors with a document each, on a broker nothing listens on (nothing is sent)."""
    from campaignctl import db, fleet

    _fleet(cli, tmp_path, f"mqtt://127.0.0.1:{free_port()}", prefix, devices=12)
    engine = db.create_engine(cli.db_url)
    for i in range(1, 13):
        fleet.set_config(engine, f"sensor-{i:04d}", {"mode": "eco"}, deliver=False)
    yield engine
    engine.dispose()


@pytest.mark.parametrize("backend", ["sqlite"])  # one portable LIMIT/OFFSET statement (checked on both)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(claimed=st.integers(0, 40), pieces=st.integers(1, 8))
def test_split_covers_the_devices_left_whatever_was_counted_before(split_engine, claimed, pieces):
    """The count comes from an earlier snapshot: devices deleted (or counted wrong) since
    give fewer parts, never an error, and the parts still cover each device once."""
    from campaignctl import db, resync

    selection = resync.Selection()
    with db.read(split_engine) as conn:
        [target] = [t for t in resync._targets(conn, selection) if t[1] == "broker"]
        ids = [
            i
            for (i,) in db.run(
                conn,
                f"SELECT d.id FROM device d WHERE d.interface_id = :i AND {selection.sql()} ORDER BY d.id",
                {"i": target[0]},
            )
        ]
        parts = resync._split(conn, selection, (*target[:4], claimed), pieces)
    assert 1 <= len(parts) <= pieces and parts[0].first == 0 and parts[-1].last >= ids[-1]
    assert all(a.last + 1 == b.first <= b.last for a, b in zip(parts, parts[1:]))
    assert sorted(i for part in parts for i in ids if part.first <= i <= part.last) == ids


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_failed_resync_helper_reports_one_line_why(split_engine, tmp_path):
    """A helper that cannot work sends back why, in one line, for the parent to log
    before it sends the helper's share itself."""
    from campaignctl import db, resync
    from campaignctl.interfaces.base import DeliveryPolicy

    with db.read(split_engine) as conn:
        [target] = [t for t in resync._targets(conn, resync.Selection()) if t[1] == "broker"]
        parts = resync._split(conn, resync.Selection(), target, 1)
    (tmp_path / "not-a-database").mkdir()
    helpers = resync._Helpers([parts])
    with helpers.running(str(tmp_path / "not-a-database"), resync.Selection(), DeliveryPolicy(attempts=1)):
        [(share, outcome)] = list(helpers.results(lambda: None))
    assert share == parts and isinstance(outcome, str)
    assert "not-a-database" in outcome and "\n" not in outcome and "Traceback" not in outcome


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_helper_s_database_error_is_one_line_without_the_statement_s_values(split_engine):
    """SQLAlchemy's text of an error holds the statement (and its parameters unless
    hidden: document values, secrets) over several lines: a helper logs one line."""
    from sqlalchemy.exc import DBAPIError

    from campaignctl import db

    with pytest.raises(DBAPIError) as caught:
        with db.write(split_engine) as conn:
            db.run(conn, "INSERT INTO device (id, name) VALUES (:id, :name)", {"id": 1, "name": "s3cret-value"})
    assert "INSERT" in str(caught.value) and "\n" in str(caught.value)  # what was logged
    line = db.describe(caught.value, split_engine)
    assert "NOT NULL constraint failed" in line and "\n" not in line and "INSERT" not in line


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_platform_s_huge_error_is_one_bounded_reason(split_engine, monkeypatch):
    """An error text is the platform's: any size. A reason keeps its first 1,000
    characters, as a job item's error does; errors differing only past them are one."""
    from campaignctl import db, resync
    from campaignctl.interfaces.base import DeliveryPolicy, Failure

    class Refusing:
        def deliver(self, deliveries, _policy, _on_delivered, on_failed, _refresh):
            for n, delivery in enumerate(deliveries):
                on_failed(Failure(delivery, "x" * 5000 + str(n)))

    monkeypatch.setattr(resync.interfaces, "driver", lambda *_args: Refusing())
    selection = resync.Selection()
    with db.read(split_engine) as conn:
        [target] = [t for t in resync._targets(conn, selection) if t[1] == "broker"]
        parts = resync._split(conn, selection, target, 1)
    result = resync.Result([resync.InterfaceResult("broker", "mqtt", target[4], True)])
    resync._send(split_engine, parts, selection, DeliveryPolicy(attempts=1), result, lambda: None)
    [reason] = result.reasons.values()
    assert reason.devices == result.failed == 12 and len(reason.error) <= 1001
    assert reason.error.startswith("x" * 1000)
