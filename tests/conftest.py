"""Shared fixtures: a database on each backend (an SQLite file, a database on a real
PostgreSQL server started for the session), a real mosquitto on a free loopback port, the CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterator, Sequence

import pytest
from pgserver import PostgresServer, free_port, wait_for_port
from typer.testing import CliRunner

from campaignctl.cli import app

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


class Broker:
    """A mosquitto process on 127.0.0.1, configured as the docs tell operators to."""

    def __init__(self, workdir: Path, port: int | None = None, *, settings: str = "allow_anonymous true\n") -> None:
        self.port = port or free_port()
        self.workdir = workdir
        self.settings = settings  # the listener's security settings
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> "Broker":
        conf = self.workdir / f"mosquitto-{self.port}.conf"
        # As root (CI), mosquitto would switch to its own user, who cannot read the
        # test's files (certificates, password file) in pytest's private directories.
        user = "user root\n" if os.geteuid() == 0 else ""
        conf.write_text(
            f"listener {self.port} 127.0.0.1\n{self.settings}{user}"
            "persistence false\nmax_queued_messages 0\nmax_inflight_messages 0\n"
        )
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port, "mosquitto", timeout=10, exited=self.proc.poll)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    b = Broker(tmp_path_factory.mktemp("mosquitto")).start()
    yield b
    b.stop()


@pytest.fixture
def prefix() -> str:
    """A topic prefix of this test's own: the session broker keeps retained messages."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def postgres() -> Iterator[tuple[PostgresServer, str]]:
    """The session's PostgreSQL server, and a template database at the current schema
    that each test's database is copied from."""
    from campaignctl import db

    server = PostgresServer().start()
    template = server.create_database()
    db.create_engine(server.url(template), upgrade=True).dispose()
    yield server, template
    server.stop()


BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def db_url(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """The test's own database: a file path (SQLite) or a postgresql:// URL."""
    # Device secrets' key file, and anything else campaignctl keeps beside a database,
    # stay in the test's directory whatever the backend.
    monkeypatch.setenv("CAMPAIGNCTL_KEY_FILE", str(tmp_path / "campaignctl.key"))
    if backend == "sqlite":
        yield str(tmp_path / "campaignctl.db")
        return
    server, template = request.getfixturevalue("postgres")
    name = server.create_database(template)
    yield server.url(name)
    server.drop_database(name)


@pytest.fixture
def sqlite_path(tmp_path: Path) -> Path:
    """For the tests about SQLite itself (pragmas, file modes, 0.1 databases)."""
    return tmp_path / "campaignctl.db"


class Cli:
    def __init__(self, db_url: str) -> None:
        self.db_url = db_url
        self.runner = CliRunner()

    def __call__(self, *args: str, code: int | None = 0, env: dict[str, str] | None = None, input: str | None = None):
        result = self.runner.invoke(
            app, ["--db", str(self.db_url), *args], env=env, input=input, catch_exceptions=False
        )
        if code is not None:
            assert result.exit_code == code, (
                f"exit {result.exit_code} != {code}\nstdout: {result.stdout}\nstderr: {result.stderr}"
            )
        return result

    def json(self, *args: str, **kwargs: Any) -> Any:
        return json.loads(self(*args, "-o", "json", **kwargs).stdout)


@pytest.fixture
def cli(db_url: str) -> Cli:
    return Cli(db_url)


@pytest.fixture
def cli_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A CLI on a database of the test's choosing (e.g. a PostgreSQL URL it made)."""
    monkeypatch.setenv("CAMPAIGNCTL_KEY_FILE", str(tmp_path / "campaignctl.key"))
    return Cli


def fleet_yaml(url: str, prefix: str, devices: int = 4, *, extra: str = "") -> str:
    lines = [
        "interfaces:",
        "  broker:",
        "    type: mqtt",
        f"    url: {url}",
        f"    topic_prefix: {prefix}",
        "device_types:",
        "  sensor-v2:",
        "    firmware_types:",
        "      app: {version_key: app_version, url_key: app_url, token_key: app_token}",
        "devices:" if devices else "devices: []",
    ]
    for i in range(1, devices + 1):
        site = "lyon" if i % 2 else "paris"
        ring = "canary" if i <= 2 else "main"
        lines.append(
            f"  - {{name: sensor-{i:04d}, type: sensor-v2, interface: broker, tags: {{site: {site}, ring: {ring}}}}}"
        )
    return "\n".join(lines) + "\n" + extra


def import_fleet(cli: Cli, tmp_path: Path, url: str, prefix: str, devices: int) -> Path:
    """Import ``devices`` sensors on the MQTT broker at ``url`` (which may be down)."""
    path = tmp_path / "fleet.yaml"
    path.write_text(fleet_yaml(url, prefix, devices=devices))
    cli("devices", "import", str(path))
    return path


def csv_fleet(
    cli: Cli, tmp_path: Path, url: str, prefix: str, count: int, *, name: str = "s", campaign: str | None = None
) -> None:
    """``count`` sensors (NAME-00000, ...) on the MQTT broker at ``url``, imported from CSV
    (fast at any size); with ``campaign``, a draft of that name setting mode: eco on all."""
    head = tmp_path / "fleet.yaml"
    head.write_text(fleet_yaml(url, prefix, devices=0))
    cli("devices", "import", str(head))
    cli(
        "devices",
        "import",
        write(
            tmp_path,
            "devices.csv",
            "name,type,interface\n" + "".join(f"{name}-{i:05d},sensor-v2,broker\n" for i in range(count)),
        ),
    )
    if campaign:
        cli(
            "create",
            "-f",
            write(
                tmp_path,
                f"{campaign}.yaml",
                f"name: {campaign}\ndevices: {{selector: {{type: sensor-v2}}}}\nconfigurations: {{mode: eco}}\n",
            ),
        )


def in_threads(target: Any, count: int) -> None:
    """Run ``target()`` in ``count`` threads at once and wait for them all; the first
    exception a thread raised is raised here (a thread's own would only be printed, and
    the test could pass on what the threads that did not fail left)."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            target()
        except BaseException as exc:  # noqa: BLE001 - raised in the test's thread below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a thread is still running after 60 s"
    if errors:
        raise errors[0]


@pytest.fixture
def fleet(tmp_path: Path, broker: Broker, prefix: str, cli: Cli) -> Path:
    """Four sensors on the session broker, imported."""
    path = tmp_path / "fleet.yaml"
    path.write_text(fleet_yaml(broker.url, prefix))
    cli("devices", "import", str(path))
    return path


def add_firmware(
    cli: Any,
    version: str,
    url: str,
    *options: str,
    device_type: str = "sensor-v2",
    firmware_type: str = "app",
    **kw: Any,
) -> Any:
    """``campaignctl firmwares add`` of ``version`` at ``url`` (more options after them)."""
    return cli(
        "firmwares",
        "add",
        "--device-type",
        device_type,
        "--firmware-type",
        firmware_type,
        "--version",
        version,
        "--url",
        url,
        *options,
        **kw,
    )


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


class Subscriber:
    """A real MQTT client that collects messages (retained ones included)."""

    def __init__(self, port: int, topic: str) -> None:
        import paho.mqtt.client as mqtt

        self.messages: dict[str, list[Any]] = {}
        self.retained: dict[str, bool] = {}
        self._lock = threading.Lock()
        self.client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2)
        subscribed = threading.Event()
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert subscribed.wait(5)

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        with self._lock:
            self.messages.setdefault(msg.topic, []).append(json.loads(msg.payload))
            self.retained[msg.topic] = msg.retain

    def wait_for(self, count: int, timeout: float = 10.0) -> dict[str, list[Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.messages) >= count:
                    return dict(self.messages)
            time.sleep(0.02)
        raise AssertionError(f"got {len(self.messages)} topics, wanted {count}")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def publish(port: int, topic: str, payload: bytes | str, *, retain: bool = False) -> None:
    import paho.mqtt.client as mqtt

    client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2)
    client.connect("127.0.0.1", port)
    client.loop_start()
    client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)
    client.disconnect()
    client.loop_stop()


#: Written in the background after a request that authenticated, not by the request itself.
USE_STAMPS = ("operator.last_used_at",)


def db_dump(db_url: str | Path, *, ignoring: Sequence[str] = USE_STAMPS) -> list[str]:
    """Every table and every row (but the ``table.column`` of ``ignoring``), to check that
    a failed command changed nothing."""
    from sqlalchemy import inspect

    engine = _plain_engine(db_url)
    try:
        with engine.connect() as conn:
            out = []
            inspector = inspect(conn)
            for table in sorted(inspector.get_table_names()):
                out.append(f"table {table}")
                columns = [c["name"] for c in inspector.get_columns(table) if f"{table}.{c['name']}" not in ignoring]
                listed = ", ".join(f'"{c}"' for c in columns)
                rows = conn.exec_driver_sql(f'SELECT {listed} FROM "{table}"').all()
                out += sorted(repr(tuple(r)) for r in rows)
            return out
    finally:
        engine.dispose()


def _plain_engine(db_url: str | Path):
    """An engine without campaignctl's checks: tests look at the database as it is."""
    from sqlalchemy import create_engine

    text = str(db_url)
    if text.startswith("postgresql://"):
        return create_engine(text.replace("postgresql://", "postgresql+psycopg://", 1), pool_pre_ping=True)
    return create_engine(f"sqlite:///{text}")


_QUERY_ENGINES: dict[str, Any] = {}


def query(db_url: str | Path, statement: str, params: dict[str, Any] | None = None) -> list[tuple]:
    """Rows of one portable statement (named parameters), run straight on the database
    (tests poll with it: the engine is kept per database)."""
    from sqlalchemy import text

    engine = _QUERY_ENGINES.get(str(db_url))
    if engine is None:
        engine = _QUERY_ENGINES[str(db_url)] = _plain_engine(db_url)
    with engine.begin() as conn:
        result = conn.execute(text(statement), params or {})
        return [tuple(r) for r in result] if result.returns_rows else []


def campaignctl_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "campaignctl", *args]


def subprocess_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("CAMPAIGNCTL_DB", None)
    env.update(extra)
    return env


def http(
    method: str, url: str, *, headers: dict[str, str] | None = None, body: bytes | str | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request with the standard library: (status, headers, body)."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.request(
            method,
            parts.path + (f"?{parts.query}" if parts.query else ""),
            body=body.encode() if isinstance(body, str) else body,
            headers=headers or {},
        )
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def wait_until(predicate, timeout: float = 20.0, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")
