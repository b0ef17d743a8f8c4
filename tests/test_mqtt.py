"""End to end over a real mosquitto: delivery, retained documents, reported state, supervision."""

from __future__ import annotations

import threading
import time

from conftest import Broker, Subscriber, import_fleet, publish, wait_until, write


def _status(cli, name):
    data = cli.json("status", name)
    return {d["device"]: d for d in data["devices"]}, data


def test_launch_delivers_retained_documents_to_a_real_subscriber(cli, fleet, broker, prefix, tmp_path):
    campaign = write(
        tmp_path,
        "c.yaml",
        """\
        name: interval
        devices: {selector: {tags: {site: lyon}}}
        configurations: {report_interval: 30, telemetry: {enabled: true}}
        expected_state: {report_interval: 30}
        """,
    )
    cli("create", "-f", campaign)
    result = cli("launch", "interval")
    assert "job 1: success" in result.stdout
    # A device that connects only now still gets its document: it is retained.
    sub = Subscriber(broker.port, f"{prefix}/+/config")
    try:
        messages = sub.wait_for(2)
        time.sleep(0.2)
        assert sorted(messages) == [f"{prefix}/sensor-0001/config", f"{prefix}/sensor-0003/config"]
        for topic, docs in messages.items():
            assert sub.retained[topic] is True
            assert docs[-1]["configuration"] == {"report_interval": 30, "telemetry": {"enabled": True}}
            assert isinstance(docs[-1]["version"], int) and docs[-1]["version"] > 0
    finally:
        sub.close()
    devices, data = _status(cli, "interval")
    assert data["status"] == "completed" and data["job"]["status"] == "success"
    assert {d["status"] for d in devices.values()} == {"waiting"}
    assert devices["sensor-0001"]["reason"] == "report_interval not reported yet"


def test_reported_state_over_mqtt_makes_devices_valid(cli, fleet, broker, prefix, tmp_path):
    cli(
        "create",
        "-f",
        write(
            tmp_path,
            "c.yaml",
            """\
        name: interval
        devices: {names: [sensor-0001, sensor-0002]}
        configurations: {report_interval: 30}
        expected_state: {report_interval: 30, mode: eco}
        """,
        ),
    )
    cli("launch", "interval")
    stop = threading.Event()
    outcome = {}
    from campaignctl import db, listen

    engine = db.create_engine(cli.db_url)
    listener = threading.Thread(
        target=lambda: outcome.update(stats=listen.listen(engine, stop=stop, flush_interval=0.05))
    )
    listener.start()
    try:
        time.sleep(0.5)  # subscribed
        publish(broker.port, f"{prefix}/sensor-0001/state", '{"report_interval": 30.0, "mode": "eco", "rssi": -70}')
        publish(broker.port, f"{prefix}/sensor-0002/state", '{"report_interval": 60, "mode": "eco"}')
        publish(broker.port, f"{prefix}/sensor-0002/state", "not json")
        publish(broker.port, f"{prefix}/ghost/state", '{"a": 1}')
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            devices, _ = _status(cli, "interval")
            if devices["sensor-0001"]["status"] == "valid":
                break
            time.sleep(0.1)
    finally:
        stop.set()
        listener.join(10)
    devices, data = _status(cli, "interval")
    assert devices["sensor-0001"]["status"] == "valid"  # 30.0 equals 30 as JSON
    assert devices["sensor-0002"]["status"] == "waiting"
    assert devices["sensor-0002"]["reason"] == "report_interval reported 60"
    assert data["summary"] == {
        "total": 2,
        "pending": 0,
        "syncing": 0,
        "waiting": 1,
        "valid": 1,
        "invalid": 0,
        "failed": 0,
        "timed_out": 0,
        "cancelled": 0,
        "skipped": 0,
        "superseded": 0,
        "joined": 0,
    }
    assert outcome["stats"].rejected == 2 and outcome["stats"].recorded == 2
    shown = cli.json("devices", "show", "sensor-0001")
    assert {e["key"]: e["reported"] for e in shown["configuration"]}["rssi"] == -70


def test_listen_command_records_until_timeout(cli, fleet, broker, prefix):
    def later():
        time.sleep(0.8)
        publish(broker.port, f"{prefix}/sensor-0004/state", '{"app_version": "5.1.8"}')

    thread = threading.Thread(target=later)
    thread.start()
    result = cli("listen", "--timeout", "2")
    thread.join()
    assert "1 recorded" in result.stderr
    entries = {e["key"]: e for e in cli.json("devices", "show", "sensor-0004")["configuration"]}
    assert entries["app_version"]["reported"] == "5.1.8"


def test_set_config_after_launch_turns_device_invalid_and_is_delivered(cli, fleet, broker, prefix, tmp_path):
    cli(
        "create",
        "-f",
        write(
            tmp_path,
            "c.yaml",
            """\
        name: interval
        devices: {names: [sensor-0001, sensor-0002]}
        configurations: {report_interval: 30}
        expected_state: {report_interval: 30}
        """,
        ),
    )
    cli("launch", "interval")
    cli("devices", "report", "sensor-0001", "report_interval:=30")
    cli("devices", "report", "sensor-0002", "report_interval:=30")
    assert {d["status"] for d in _status(cli, "interval")[0].values()} == {"valid"}

    result = cli("devices", "set-config", "sensor-0002", "report_interval:=60", "note=hand-tuned")
    assert "delivered" in result.stderr
    devices, data = _status(cli, "interval")
    assert devices["sensor-0001"]["status"] == "valid"
    assert devices["sensor-0002"]["status"] == "invalid"
    assert devices["sensor-0002"]["reason"].startswith("report_interval was changed after the campaign set it")
    # The campaign does not fight back: the user's value is what the device receives.
    sub = Subscriber(broker.port, f"{prefix}/sensor-0002/config")
    try:
        doc = sub.wait_for(1)[f"{prefix}/sensor-0002/config"][-1]
    finally:
        sub.close()
    assert doc["configuration"] == {"report_interval": 60, "note": "hand-tuned"}
    assert data["status"] == "completed"


def test_broker_down_retries_then_fails_with_the_error(cli, tmp_path, prefix):
    from conftest import free_port

    port = free_port()  # nothing listens there
    import_fleet(cli, tmp_path, f"mqtt://127.0.0.1:{port}", prefix, 2)
    cli(
        "create",
        "-f",
        write(
            tmp_path,
            "c.yaml",
            """\
        name: down
        devices: {selector: {type: sensor-v2}}
        configurations: {report_interval: 30}
        """,
        ),
    )
    started = time.monotonic()
    result = cli("launch", "down", "--attempts", "3", "--backoff", "0.2", "--ack-timeout", "1", code=1)
    elapsed = time.monotonic() - started
    assert "2 device(s) could not be delivered" in result.stderr
    assert elapsed >= 0.4  # two waits between three tries
    job = cli.json("jobs", "show", "1")
    assert job["status"] == "failed" and job["counts"]["failed"] == 2
    assert all(e["attempts"] == 3 and "Connection refused" in e["error"] for e in job["errors"])
    devices, data = _status(cli, "down")
    assert {d["status"] for d in devices.values()} == {"failed"}
    assert "Connection refused" in devices["sensor-0001"]["reason"]
    assert data["status"] == "completed"


def test_broker_that_comes_back_during_retries_gets_everything(cli, tmp_path, prefix):
    from conftest import free_port

    port = free_port()
    import_fleet(cli, tmp_path, f"mqtt://127.0.0.1:{port}", prefix, 3)
    cli(
        "create",
        "-f",
        write(
            tmp_path,
            "c.yaml",
            """\
        name: flaky
        devices: {selector: {type: sensor-v2}}
        configurations: {report_interval: 30}
        """,
        ),
    )
    broker = Broker(tmp_path, port)
    starter = threading.Timer(0.8, broker.start)
    starter.start()
    try:
        result = cli("launch", "flaky", "--attempts", "6", "--backoff", "0.5", "--ack-timeout", "1")
        assert "3 delivered, 0 failed" in result.stdout
        job = cli.json("jobs", "show", "1")
        assert job["status"] == "success" and job["errors"] == []
    finally:
        starter.join()
        broker.stop()


def test_a_retry_sends_the_newest_document_not_a_stale_one(cli, tmp_path, prefix, db_url):
    """A newer document written while a delivery waits between tries must not be replaced,
    as the retained message, by the retry of the older one."""
    from conftest import free_port

    from campaignctl import db, fleet, jobs
    from campaignctl import engine as rollout
    from campaignctl.interfaces.base import DeliveryPolicy

    port = free_port()
    import_fleet(cli, tmp_path, f"mqtt://127.0.0.1:{port}", prefix, 1)
    cli(
        "create",
        "-f",
        write(tmp_path, "c.yaml", "name: c\ndevices: {names: [sensor-0001]}\nconfigurations: {mode: quiet}\n"),
    )
    engine = db.create_engine(db_url)
    job_id, owner = jobs.launch(
        engine, "c", policy=DeliveryPolicy(attempts=3, backoff=1.5, max_backoff=1.5, timeout=0.5)
    )
    runner = threading.Thread(target=rollout.advance, args=(engine, job_id, owner))
    runner.start()
    broker = Broker(tmp_path, port)
    try:
        time.sleep(0.5)  # the first try failed: the broker is down
        broker.start()
        newer = fleet.set_config(engine, "sensor-0001", {"mode": "turbo"})
        assert newer.delivered
        runner.join(30)
        sub = Subscriber(broker.port, f"{prefix}/sensor-0001/config")
        try:
            doc = sub.wait_for(1)[f"{prefix}/sensor-0001/config"][-1]
        finally:
            sub.close()
        assert doc == {"configuration": {"mode": "turbo"}, "version": newer.version}
    finally:
        broker.stop()
        engine.dispose()


def test_a_failed_device_that_reports_the_expected_state_is_valid(cli, tmp_path, prefix):
    from conftest import free_port

    import_fleet(cli, tmp_path, f"mqtt://127.0.0.1:{free_port()}", prefix, 1)
    cli(
        "create",
        "-f",
        write(
            tmp_path,
            "c.yaml",
            "name: c\ndevices: {names: [sensor-0001]}\nconfigurations: {mode: eco}\nexpected_state: {mode: eco}\n",
        ),
    )
    cli("launch", "c", "--attempts", "1", "--ack-timeout", "0.5", code=1)
    assert _status(cli, "c")[0]["sensor-0001"]["status"] == "failed"
    cli("devices", "report", "sensor-0001", "mode=eco")  # it got the value another way
    assert _status(cli, "c")[0]["sensor-0001"]["status"] == "valid"


def test_the_state_listener_survives_a_failing_callback_and_says_so_safely(broker, prefix):
    """An exception from ``on_state`` must not end the listener's thread: it reconnects
    and gets the next messages; the warning quotes the exception as plain, short text."""
    from campaignctl.interfaces.mqtt import Settings, StateListener

    received: list[bytes] = []
    events: list[str] = []

    def on_state(_interface: str, _device: str, payload: bytes) -> None:
        if not received:
            received.append(payload)
            raise RuntimeError("\x1b[31mboom" + "x" * 1000)
        received.append(payload)

    problems: list[str] = []  # logged as warnings by listen and serve
    listener = StateListener(
        "broker", Settings(url=broker.url, topic_prefix=prefix), on_state, events.append, on_problem=problems.append
    )
    listener.RECONNECT_DELAYS = (0.1, 0.1)
    listener.start()
    try:
        wait_until(lambda: any("subscribed" in e for e in events), timeout=10)
        publish(broker.port, f"{prefix}/sensor-0001/state", '{"a": 1}')
        wait_until(lambda: any("listener error" in e for e in problems), timeout=10)
        wait_until(lambda: sum("subscribed" in e for e in events) == 2, timeout=10)
        publish(broker.port, f"{prefix}/sensor-0001/state", '{"a": 2}')
        wait_until(lambda: len(received) == 2, timeout=10)
    finally:
        listener.stop()
    assert received == [b'{"a": 1}', b'{"a": 2}']
    [error] = [e for e in problems if "listener error" in e]
    assert not any("listener error" in e for e in events)
    assert "\x1b" not in error and "RuntimeError: \\x1b[31mboom" in error and len(error) < 400
