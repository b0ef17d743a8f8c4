"""Devices are untrusted input: whatever a state report holds (bytes that are not UTF-8,
lone surrogates, control characters, terminal escapes, markup, absurd nesting or size),
it is refused or stored safely, per message, over MQTT and HTTP alike; the listeners go
on, and `serve` tells when they stopped."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
from conftest import Cli, http, import_fleet, query, wait_until, write
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_http_api import FLEET

#: Texts a device (or an attacker) may put in keys, values and names.
NASTY = [
    "\x00",
    "\x1b[31m",
    "\x1b]0;title\x07",
    "[bold]x[/]",
    "[/]",
    "\ud800",
    "\udfff",
    "\ud83d\ude00",
    "\x7f",
    "\x9b",
    "\u2028",
    "\u202e",
    "\ufeff",
    "😀",
    ".",
    "#",
    "$",
    " ",
    "\\",
    '"',
    "\r\n",
    "%s",
    "{}",
]

texts = st.lists(st.sampled_from(NASTY) | st.characters(exclude_categories=()), max_size=6).map("".join)
scalars = (
    st.none()
    | st.booleans()
    | texts
    | st.floats()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.integers(min_value=-(2**53), max_value=2**53)
)
values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3), max_leaves=12
)
states = st.dictionaries(texts | st.sampled_from(["temp", "app_version", "mode"]), values, max_size=5)


def _json_bytes(state: Any, ascii_only: bool) -> bytes:
    # ASCII JSON spells a lone surrogate as a "\ud800" escape; UTF-8 JSON as the bytes
    # Python's "surrogatepass" gives (CESU-8), which are not UTF-8.
    return json.dumps(state, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


def _nested(levels: int) -> bytes:
    return b'{"a":' + b"[" * (levels - 1) + b"]" * (levels - 1) + b"}"


payloads = st.one_of(
    st.binary(max_size=64),
    st.builds(_json_bytes, states, st.booleans()),
    st.builds(_nested, st.integers(min_value=1, max_value=3000)),
    st.builds(lambda n: b'{"big":' + b"9" * n + b"}", st.integers(min_value=1, max_value=6000)),
    st.builds(lambda n: b'{"s":"' + b"x" * n + b'"}', st.integers(min_value=65_520, max_value=65_540)),
    st.sampled_from([b'{"a": NaN}', b'{"a": 1e999}', b'"text"', b"[]", b"{}", b'\xef\xbb\xbf{"bom": 1}']),
)


def _check_parsed(payload: bytes) -> dict[str, str] | None:
    """The values ``parse_state_payload`` accepts from ``payload``, after checking them,
    or None when it refuses it (with InputError: any other exception fails the test)."""
    from campaignctl.errors import InputError
    from campaignctl.fleet import parse_state_payload
    from campaignctl.values import MAX_STATE_BYTES, MAX_STATE_DEPTH, depth

    try:
        parsed = parse_state_payload(payload)
    except InputError:
        return None
    original = json.loads(payload.decode("utf-8-sig"))
    assert len(payload) <= MAX_STATE_BYTES and depth(original) <= MAX_STATE_DEPTH
    assert parsed.keys() == original.keys()
    for key, text in parsed.items():
        key.encode("utf-8")
        text.encode("utf-8")  # valid Unicode, storable by any database
        assert not any(ord(c) < 0x20 for c in text), "control characters are escaped in stored text"
        assert json.loads(text) == original[key]
    return parsed


@settings(max_examples=200, deadline=None)
@given(payloads)
def test_any_payload_is_refused_or_parsed_into_storable_json(payload):
    _check_parsed(payload)


@pytest.fixture
def ingest_engine(cli, tmp_path, db_url):
    """Eight sensors on an MQTT interface (nothing listens: the ingestion is in-process)."""
    from campaignctl import db

    import_fleet(cli, tmp_path, "mqtt://127.0.0.1:1", "hostile", 8)
    engine = db.create_engine(db_url)
    yield engine
    engine.dispose()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(payloads, min_size=1, max_size=8))
def test_a_batch_of_hostile_reports_stores_every_good_one_identically(batch, ingest_engine, db_url):
    """On both backends: PostgreSQL text holds neither NUL nor lone surrogates."""
    from campaignctl import listen

    warnings: list[str] = []
    ingest = listen.StateIngest(ingest_engine, warnings.append)
    devices = [f"sensor-{i + 1:04d}" for i in range(len(batch))]  # one message per device
    for device, payload in zip(devices, batch):
        ingest.add("broker", device, payload)
    ingest.flush()
    expected = {
        device: parsed for device, payload in zip(devices, batch) if (parsed := _check_parsed(payload)) is not None
    }
    assert ingest.stats.to_dict() == {
        "messages": len(batch),
        "recorded": len(expected),
        "rejected": len(batch) - len(expected),
    }
    assert len(warnings) == len(batch) - len(expected)
    assert all(w.startswith("broker: state of sensor-") and " rejected: " in w for w in warnings)
    rows = query(db_url, "SELECT d.name, c.key, c.reported FROM device_config c JOIN device d ON d.id = c.device_id")
    stored = {(name, key): text for name, key, text in rows}
    for device, parsed in expected.items():
        for key, text in parsed.items():
            assert stored[(device, key)] == text


def test_a_value_the_database_refuses_loses_only_its_own_message(ingest_engine, db_url):
    """sensor-0003 is deleted while its report waits in the batch: the database refuses
    that row (foreign key), the batch is written message by message, and only that one
    is rejected."""
    from campaignctl import listen

    warnings: list[str] = []
    ingest = listen.StateIngest(ingest_engine, warnings.append)
    for i in range(1, 6):
        ingest.add("broker", f"sensor-{i:04d}", json.dumps({"seq": i}).encode())
    query(db_url, "DELETE FROM device WHERE name = 'sensor-0003'")
    ingest.flush()
    assert ingest.stats.to_dict() == {"messages": 5, "recorded": 4, "rejected": 1}
    assert len(warnings) == 1 and warnings[0].startswith("broker: state of sensor-0003 rejected: the database refused")
    rows = query(
        db_url,
        "SELECT d.name, c.reported FROM device_config c JOIN device d ON d.id = c.device_id "
        "WHERE c.key = 'seq' ORDER BY d.name",
    )
    assert rows == [(f"sensor-{i:04d}", str(i)) for i in (1, 2, 4, 5)]


def test_the_database_refusing_a_row_is_the_reports_fault(ingest_engine):
    """What gets past the checks and the database still refuses (here a lone surrogate
    written straight, which neither SQLite's driver nor PostgreSQL takes) is an InputError
    about that report, not a fault of the database."""
    from campaignctl import db, listen
    from campaignctl.errors import InputError

    with db.read(ingest_engine) as conn:
        device_id = db.run(conn, "SELECT id FROM device WHERE name = 'sensor-0001'").scalar_one()
    with pytest.raises(InputError, match="^the database refused the state: "):
        listen.write_state(ingest_engine, [(device_id, "k", '"\ud800"', db.utcnow())])


@pytest.fixture
def sqlite_cli(cli_for, tmp_path) -> Cli:
    """SQLite only, where the backend does not matter."""
    return cli_for(str(tmp_path / "campaignctl.db"))


#: Hostile MQTT state messages: (device, payload, what its one warning says).
HOSTILE = [
    ("sensor-0001", b"\xff\xfe\x00{", "state of sensor-0001 rejected: state is not UTF-8 text"),
    (
        "sensor-0002",
        b'{"a": "\\ud800"}',
        ("state of sensor-0002 rejected: state holds a value that is not JSON: text holds a lone surrogate"),
    ),
    ("sensor-0003", b'{"a": "\xed\xa0\x80"}', "state of sensor-0003 rejected: state is not UTF-8 text"),
    ("sensor-0004", _nested(33), "state of sensor-0004 rejected: state is nested too deeply"),
    ("sensor-0005", b'{"s": "' + b"x" * 70_000 + b'"}', "state of sensor-0005 rejected: state larger than 65536 bytes"),
    ("sensor-0006", b'{"k\\u0000": 1}', "state of sensor-0006 rejected: key 'k\\x00' contains '\\x00'"),
    (
        "sensor-0007",
        b'{"n": ' + b"9" * 5000 + b"}",
        ("state of sensor-0007 rejected: state is not JSON: integers must fit in 64 bits"),
    ),
    ("sensor-0008", b'{"\\u001b[31m": 1}', "state of sensor-0008 rejected: key '\\x1b[31m' contains '\\x1b'"),
    ("[red]ghost", b'{"a": 1}', "state from unknown device '[red]ghost' ignored"),  # ('/' splits topics)
    ("x" * 200, b'{"a": 1}', "state from unknown device 'xxxxxxxxxx"),
]


def test_hostile_messages_among_a_burst_lose_no_good_one(sqlite_cli, tmp_path, broker, prefix):
    import paho.mqtt.client as mqtt

    from campaignctl import db, listen

    import_fleet(sqlite_cli, tmp_path, broker.url, prefix, 20)
    engine = db.create_engine(sqlite_cli.db_url)
    warnings: list[str] = []
    events: list[str] = []
    stop = threading.Event()
    result: dict[str, Any] = {}
    thread = threading.Thread(
        target=lambda: result.setdefault(
            "stats", listen.listen(engine, stop=stop, info=events.append, warn=warnings.append, flush_interval=0.05)
        )
    )
    thread.start()
    try:
        wait_until(lambda: any("subscribed" in e for e in events), timeout=20)
        client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2)
        client.connect("127.0.0.1", broker.port)
        client.loop_start()
        good = [(f"sensor-{d:04d}", {f"m{m}": f"[bold]{m}[/] \x1b[31m\x00"}) for m in range(10) for d in range(1, 21)]
        sent = []
        for n, (device, state) in enumerate(good):
            sent.append(client.publish(f"{prefix}/{device}/state", json.dumps(state), qos=1))
            if n % 20 == 0 and n // 20 < len(HOSTILE):  # hostile ones interleaved with the good
                device, payload, _ = HOSTILE[n // 20]
                sent.append(client.publish(f"{prefix}/{device}/state", payload, qos=1))
        for info in sent:
            info.wait_for_publish(10)

        def recorded() -> int:
            return query(sqlite_cli.db_url, "SELECT count(*) FROM device_config WHERE reported IS NOT NULL")[0][0]

        wait_until(lambda: recorded() == len(good) and len(warnings) == len(HOSTILE), timeout=30)
        assert thread.is_alive()
        for _, _, expected in HOSTILE:  # each logged once, naming its device
            assert sum(expected in w for w in warnings) == 1, (expected, warnings)
        assert all("\x1b" not in w and "\x00" not in w and len(w) < 400 for w in warnings)
        stored = {
            (n, k): v
            for n, k, v in query(
                sqlite_cli.db_url,
                "SELECT d.name, c.key, c.reported FROM device_config c JOIN device d ON d.id = c.device_id",
            )
        }
        assert all(json.loads(stored[(device, key)]) == value for device, state in good for key, value in state.items())
        # Still listening after all that.
        client.publish(f"{prefix}/sensor-0001/state", b'{"after": true}', qos=1).wait_for_publish(10)
        wait_until(lambda: recorded() == len(good) + 1, timeout=20)
        client.disconnect()
        client.loop_stop()
    finally:
        stop.set()
        thread.join(20)
        engine.dispose()
    assert result["stats"].to_dict() == {
        "messages": len(good) + len(HOSTILE) + 1,
        "recorded": len(good) + 1,
        "rejected": len(HOSTILE),
    }


@pytest.fixture
def api(sqlite_cli, tmp_path):
    """A real `serve` (HTTP only) on loopback: (base URL, cam-1's Authorization header)."""
    from campaignctl import db
    from campaignctl.server import Server

    sqlite_cli("devices", "import", write(tmp_path, "fleet.yaml", FLEET))
    engine = db.create_engine(sqlite_cli.db_url)
    server = Server(engine, port=0, listen_mqtt=False, engine_interval=None).start()
    secret = sqlite_cli("devices", "credentials", "cam-1").stdout.strip()
    yield f"http://127.0.0.1:{server.port}", {"Authorization": f"Bearer {secret}"}
    server.stop()
    engine.dispose()


BAD_BODIES = [
    (b"\xff\xfe{\x00}\x00", "state is not UTF-8 text: byte 0: invalid start byte"),
    (b'{"a": "\xed\xa0\x80"}', "state is not UTF-8 text"),
    (b'{"a": "\\ud800 alone"}', "lone surrogate"),
    (b'{"\\udfff": 1}', "key '\\udfff' is not Unicode text (it holds a lone surrogate)"),
    (b'{"a\\u0000": 1}', "key 'a\\x00' contains '\\x00'"),
    (b'{"a\\u009b": 1}', "key 'a\\x9b' contains '\\x9b'"),
    (_nested(33), "state is nested too deeply (more than 32 levels of objects and arrays)"),
    (_nested(20_000), "state is nested too deeply"),
    (b'{"n": ' + b"1" * 5000 + b"}", "integers must fit in 64 bits"),
    (b'{"n": 1e999}', "NaN and infinity are not JSON"),
    (b'"a string"', "state must be a JSON object, not str"),
    (b"", "state is not JSON"),
    ('{"a": 1}'.encode("utf-16"), "state is not UTF-8 text"),
]


def test_every_malformed_body_gets_its_json_400(api, sqlite_cli):
    from conftest import db_dump

    base, auth = api
    url = f"{base}/v1/devices/cam-1/state"
    before = db_dump(sqlite_cli.db_url)
    for body, error in BAD_BODIES:
        status, headers, raw = http("PUT", url, headers=auth, body=body)
        assert (status, headers["content-type"]) == (400, "application/json"), (body[:40], raw)
        assert error in json.loads(raw)["error"], (body[:40], raw)
    assert db_dump(sqlite_cli.db_url) == before
    # What is refused above is the class, not its neighbours: these are stored, and read
    # back as sent, whatever the Content-Type says.
    accepted = {
        "deep": json.loads(_nested(32))["a"],
        "ctl": "nul\x00 esc\x1b[31m bell\x07 [bold]x[/]",
        "pair": "😀",
        "bom": 1,
    }  # (json.dumps sends the pair as two \\u escapes)
    for content_type in ("application/json", "text/plain"):
        body = b"\xef\xbb\xbf" + json.dumps(accepted).encode()
        assert http("PUT", url, headers={**auth, "Content-Type": content_type}, body=body)[0] == 204
    entries = {e["key"]: e["reported"] for e in sqlite_cli.json("devices", "show", "cam-1")["configuration"]}
    assert entries == accepted


def test_unknown_methods_get_405_json_with_allow(api):
    base, auth = api
    for method, path, allowed in [
        ("POST", "/v1/devices/cam-1/state", {"PUT"}),
        ("DELETE", "/v1/devices/cam-1/configuration", {"GET"}),
        ("PUT", "/healthz", {"GET"}),
    ]:
        status, headers, raw = http(method, base + path, headers=auth, body=b"{}")
        assert status == 405 and json.loads(raw) == {"error": "Method Not Allowed"}, (method, path, raw)
        assert {m.strip() for m in headers["allow"].split(",")} == allowed
    status, headers, raw = http("GET", f"{base}/nowhere")
    assert status == 404 and json.loads(raw) == {"error": "Not Found"}


def test_healthz_is_unhealthy_once_the_mqtt_listeners_stopped(sqlite_cli, tmp_path, monkeypatch):
    """The listeners cannot run (their interface's username comes from a variable that
    is not set): serve goes on serving devices, and /healthz says what stopped."""
    from campaignctl import db
    from campaignctl.server import Server

    monkeypatch.delenv("CAMPAIGNCTL_TEST_NO_SUCH_USER", raising=False)
    sqlite_cli("devices", "import", write(tmp_path, "fleet.yaml", FLEET))
    sqlite_cli(
        "devices",
        "import",
        write(
            tmp_path,
            "broker.yaml",
            """\
        interfaces:
          broker: {type: mqtt, url: "mqtt://127.0.0.1:1", topic_prefix: x, username_env: CAMPAIGNCTL_TEST_NO_SUCH_USER}
        """,
        ),
    )
    engine = db.create_engine(sqlite_cli.db_url)
    warnings: list[str] = []
    server = Server(engine, port=0, engine_interval=None, warn=warnings.append).start()
    try:
        url = f"http://127.0.0.1:{server.port}/healthz"
        _, headers, raw = wait_until(lambda: (r := http("GET", url))[0] == 503 and r, timeout=20)
        assert headers["content-type"] == "application/json"
        assert json.loads(raw) == {
            "status": "unhealthy",
            "error": "stopped: mqtt_listeners",
            "stopped": {
                "mqtt_listeners": "environment variable CAMPAIGNCTL_TEST_NO_SUCH_USER (username of "
                "interface broker) is not set"
            },
        }
        assert warnings == [
            (
                "MQTT listeners stopped: environment variable CAMPAIGNCTL_TEST_NO_SUCH_USER (username "
                "of interface broker) is not set"
            )
        ]
    finally:
        server.stop()
        engine.dispose()


def test_warnings_show_names_and_texts_safely():
    from campaignctl.values import shown

    assert shown("sensor-0001") == "sensor-0001"
    assert shown("[bold]x[/]") == "[bold]x[/]"  # not markup: logs are plain text
    assert shown("a\x1b[31mb\x00\ud800\u2028") == "a\\x1b[31mb\\x00\\ud800\\u2028"
    assert shown("x" * 500) == "x" * 80 + "…"
    assert shown("\x00" * 100, 10) == "\\x00\\x00…"


def test_command_line_bytes_that_are_not_utf8_are_refused():
    """Bytes that are not UTF-8 reach argv as lone surrogates (Python's surrogateescape)."""
    from campaignctl.errors import InputError
    from campaignctl.values import parse_assignments

    for item, error in [
        ("k=\udcff", "k= takes text: text holds a lone surrogate '\\udcff'"),
        ('k:="\\ud800"', "k:= takes a JSON value: text holds a lone surrogate '\\ud800'"),
        ("k\udcff=1", "key 'k\\udcff' is not Unicode text"),
    ]:
        with pytest.raises(InputError) as caught:
            parse_assignments([item])
        assert error in caught.value.message
