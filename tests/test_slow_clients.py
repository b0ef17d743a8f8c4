"""The device API under slow, idle and too many clients, against a real server on 127.0.0.1.

How connections are handled does not depend on the database: SQLite only."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import campaignctl_cmd, free_port, http, subprocess_env, wait_until, write
from hypothesis import given, settings
from hypothesis import strategies as st

FLEET = """\
    interfaces:
      devapi: {type: http, url: "http://127.0.0.1:1"}
    device_types:
      cam: {}
    devices:
      - {name: cam-1, type: cam, interface: devapi}
      - {name: cam-2, type: cam, interface: devapi}
    """


@pytest.fixture
def fleet(cli_for, tmp_path: Path) -> tuple[str, dict[str, str]]:
    """A database with two HTTP devices: (database path, device secrets)."""
    database = str(tmp_path / "campaignctl.db")
    cli = cli_for(database)
    cli("devices", "import", write(tmp_path, "fleet.yaml", FLEET))
    return database, {n: cli("devices", "credentials", n).stdout.strip() for n in ("cam-1", "cam-2")}


def _poll(port: int, secret: str) -> int:
    return http(
        "GET", f"http://127.0.0.1:{port}/v1/devices/cam-1/configuration", headers={"Authorization": f"Bearer {secret}"}
    )[0]


def _state_request(secret: str) -> bytes:
    body = b'{"resolution": "1080p"}'
    return (
        b"PUT /v1/devices/cam-2/state HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + secret.encode() + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    )


def _open(port: int, sent: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(sent)
    sock.setblocking(False)
    return sock


def _closed_by_server(sock: socket.socket) -> bool:
    """True once the server has closed the connection (end of file, or reset)."""
    try:
        while sock.recv(65536):
            pass
        return True
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


def _all_closed(socks: list[socket.socket]) -> bool:
    closed = [_closed_by_server(s) for s in socks]  # read every socket: a closed one may hold an answer
    return all(closed)


def test_requests_cut_anywhere_and_idle_connections_are_closed(fleet):
    """Every way of stopping halfway through a request (request line, headers, body), and
    connections that never send or stop after a response, are closed after the timeouts;
    devices and /healthz are answered meanwhile."""
    from campaignctl import db
    from campaignctl.server import Server

    database, secrets = fleet
    engine = db.create_engine(database)
    server = Server(engine, port=0, listen_mqtt=False, engine_interval=None, header_timeout=1, keep_alive=1).start()
    port = server.port
    request = _state_request(secrets["cam-2"])
    socks: list[socket.socket] = []
    try:
        # Every prefix of a whole request, from the silent connection to the last byte missing.
        socks += [_open(port, request[:cut]) for cut in range(len(request))]
        # Idle after a whole request answered, and stalled in the middle of the next one.
        for tail in (b"", request[:40]):
            sock = _answered(port, request)
            sock.sendall(tail)
            socks.append(sock)
        assert len(socks) > 200
        assert http("GET", f"http://127.0.0.1:{port}/healthz")[0] == 200
        assert _poll(port, secrets["cam-1"]) == 200
        wait_until(lambda: _all_closed(socks), timeout=30)
        assert http("GET", f"http://127.0.0.1:{port}/healthz")[0] == 200
    finally:
        for sock in socks:
            sock.close()
        server.stop()
        engine.dispose()


def _answered(port: int, request: bytes) -> socket.socket:
    """A keep-alive connection whose request (answered with no body) has been answered."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    sock.sendall(request)
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 204 "), answer
    sock.setblocking(False)
    return sock


def test_at_the_connection_limit_devices_are_still_served(fleet, tmp_path):
    """Beyond --max-connections, the connection idle the longest makes room for the new one,
    so devices are answered; the log says so in a line, not once per connection, and
    devices that give up half-way through a request leave no traceback."""
    database, secrets = fleet
    port = free_port()
    log = tmp_path / "serve.log"
    with open(log, "wb") as stderr:
        proc = subprocess.Popen(
            campaignctl_cmd(
                "--db",
                database,
                "serve",
                "--port",
                str(port),
                "--no-mqtt",
                "--no-engine",
                "--max-connections",
                "50",
                "--keep-alive",
                "5m",
                "--header-timeout",
                "5m",
            ),
            env=subprocess_env(),
            stderr=stderr,
        )
    idle: list[socket.socket] = []
    try:
        wait_until(lambda: _up(port), timeout=20)
        idle = [_open(port, b"GET /healthz HTT" if i % 2 else b"") for i in range(100)]
        for _ in range(5):
            assert http("GET", f"http://127.0.0.1:{port}/healthz")[0] == 200
            assert _poll(port, secrets["cam-1"]) == 200
        wait_until(lambda: sum(_closed_by_server(s) for s in idle) >= 50, timeout=20)
        for _ in range(20):  # devices that give up half-way through a body
            _open(port, _state_request(secrets["cam-2"])[:-1]).close()
        for _ in range(20):  # and garbage
            assert http("GET /", f"http://127.0.0.1:{port}/healthz")[0] == 400
        assert _poll(port, secrets["cam-1"]) == 200
    finally:
        for sock in idle:
            sock.close()
        proc.send_signal(signal.SIGINT)
        proc.wait(20)
    text = log.read_text()
    assert "Traceback" not in text and len(text) < 1000, text
    assert "at the connection limit (50)" in text and text.count("Invalid HTTP request received.") == 1


def test_when_every_connection_is_busy_a_new_one_is_answered_503(fleet):
    """Connections with a request in progress are never closed to make room: a new client
    is answered 503 with Retry-After at once, and served again once there is room."""
    from campaignctl import db
    from campaignctl.server import Server

    database, secrets = fleet
    engine = db.create_engine(database)
    # A header timeout far longer than the test: the busy connections must stay busy
    # however slowly a loaded machine opens them.
    server = Server(
        engine, port=0, listen_mqtt=False, engine_interval=None, max_connections=20, header_timeout=300
    ).start()
    port, protocol = server.port, server.server.config.http_protocol_class
    busy = [_open(port, _state_request(secrets["cam-2"])[:-1]) for _ in range(20)]  # bodies that never end
    try:
        wait_until(lambda: len(server.server.server_state.connections) == 20 and not protocol.waiting)
        status, headers, body = http("GET", f"http://127.0.0.1:{port}/healthz")
        assert (status, headers["retry-after"]) == (503, "1")
        assert body == b'{"error": "Service Unavailable: too many connections"}'
        assert not any(_closed_by_server(s) for s in busy)
        busy.pop().close()
        wait_until(lambda: _up(port))
    finally:
        for sock in busy:
            sock.close()
        server.stop()
        engine.dispose()


def _up(port: int) -> bool:
    try:
        return http("GET", f"http://127.0.0.1:{port}/healthz")[0] == 200
    except OSError:
        return False


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--max-connections", "1000000000", "--max-connections 1000000000 is above what the open-file limit allows"),
        ("--max-connections", "0", "--max-connections must be at least 1"),
        ("--header-timeout", "0", "--header-timeout must be more than 0s"),
        ("--keep-alive", "2d", "--keep-alive must be more than 0s and at most 1d"),
    ],
)
def test_bad_connection_limits_are_clean_errors(cli_for, tmp_path, option, value, message):
    result = cli_for(str(tmp_path / "c.db"))("serve", "--port", "0", "--no-mqtt", "--no-engine", option, value, code=1)
    assert result.stderr.startswith("Error: ") and message in result.stderr


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(
                [
                    "Invalid HTTP request received.",
                    "socket.send() raised exception.",
                    "socket.accept() out of system resource\nsocket: <fd=%d>",
                ]
            ),
            st.integers(0, 20000),
        ),
        min_size=1,
        max_size=200,
    )
)
def test_repeated_log_messages_are_shown_once_without_socket_tracebacks(messages):
    """Whatever floods the log, each message is shown once per interval, in one line."""
    import logging

    from campaignctl.connections import RepeatFilter

    quiet = RepeatFilter(interval=3600)
    shown = []
    for message, fd in messages:
        try:
            raise OSError(24, "Too many open files")
        except OSError:
            record = logging.LogRecord(
                "asyncio", logging.ERROR, __file__, 1, message, (fd,) if "%d" in message else (), sys.exc_info()
            )
        if quiet.filter(record):
            shown.append(record)
    distinct = {m.split("\n")[0] for m, _ in messages}
    assert len(shown) == len(distinct) and all(any(r.msg.startswith(d) for r in shown) for d in distinct)
    assert all(r.exc_info is None and "Too many open files" in r.getMessage() for r in shown)


def _publish_elsewhere(port: int, topic: str, payload: str) -> None:
    """Publish from another process: this one's descriptors are all taken below 1100,
    where paho's own loop (select) cannot go."""
    script = (
        "import sys, paho.mqtt.client as m\n"
        "c = m.Client(callback_api_version=m.CallbackAPIVersion.VERSION2)\n"
        "c.connect('127.0.0.1', int(sys.argv[1])); c.loop_start()\n"
        "c.publish(sys.argv[2], sys.argv[3], qos=1).wait_for_publish(10); c.disconnect(); c.loop_stop()\n"
    )
    subprocess.run([sys.executable, "-c", script, str(port), topic, payload], check=True, timeout=30)


def test_broker_connections_work_on_descriptors_past_1024(cli_for, tmp_path, prefix, monkeypatch):
    """serve raises its file limit for thousands of device connections, so its broker
    connections may get descriptor numbers from 1024 on, which select() refuses. Its
    MQTT listeners still reconnect and receive after a broker restart, /healthz tells
    while they are without a broker, and deliveries go out."""
    import json
    import os
    import resource

    from conftest import Broker, import_fleet, query

    from campaignctl import db, fleet, listen
    from campaignctl.server import Server

    monkeypatch.setattr(listen, "DOWN_AFTER", 1.0)
    limits = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limits[1], limits[1]))  # as serve does
    database = str(tmp_path / "campaignctl.db")
    broker = Broker(tmp_path).start()
    import_fleet(cli_for(database), tmp_path, broker.url, prefix, 2)
    engine = db.create_engine(database)
    events: list[str] = []
    taken: list[int] = []
    try:
        while not taken or taken[-1] < 1100:  # every lower number taken: new sockets get 1100 and up
            taken.append(os.open(os.devnull, os.O_RDONLY))
        server = Server(engine, port=0, engine_interval=None, info=events.append).start()
        healthz = f"http://127.0.0.1:{server.port}/healthz"

        def subscribed() -> int:
            return sum("subscribed to" in e for e in events)

        try:
            wait_until(lambda: subscribed() == 1, timeout=20)
            broker.stop()
            status, _, raw = wait_until(lambda: (r := http("GET", healthz))[0] == 503 and r, timeout=20)
            assert json.loads(raw)["stopped"]["mqtt_listeners"].startswith("broker: no broker connection for ")
            broker = Broker(tmp_path, broker.port).start()  # empty: no session, no retained message
            wait_until(lambda: subscribed() == 2, timeout=30)
            wait_until(lambda: http("GET", healthz)[0] == 200, timeout=10)
            _publish_elsewhere(broker.port, f"{prefix}/sensor-0001/state", '{"mode": "after"}')
            wait_until(
                lambda: (
                    query(
                        database,
                        "SELECT c.reported FROM device_config c JOIN device d ON "
                        "d.id = c.device_id WHERE d.name = 'sensor-0001' AND c.key = 'mode'",
                    )
                    == [('"after"',)]
                ),
                timeout=20,
            )
            assert fleet.set_config(engine, "sensor-0002", {"mode": "eco"}).delivered  # a delivery's connection
        finally:
            server.stop()
    finally:
        for fd in taken:
            os.close(fd)
        broker.stop()
        engine.dispose()
        resource.setrlimit(resource.RLIMIT_NOFILE, limits)
