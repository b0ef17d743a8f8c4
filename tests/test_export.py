"""``status NAME -o csv | ndjson``: the per-device supervision, parsed back by the csv and
json modules, whatever the devices reported."""

from __future__ import annotations

import csv
import io
import json

import pytest
from conftest import wait_until, write
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from campaignctl import db, export, store
from campaignctl.supervision import open_status
from campaignctl.values import canonical

# "@cmd" is a key a spreadsheet would run as a formula in a reason that starts with it.
CAMPAIGN = """\
    name: exp
    devices: {selector: {type: sensor-v2}}
    configurations: {mode: eco, token: "${TOKEN}"}
    expected_state: {"@cmd": 1}
    """


def parse_csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text, newline="")))


def launched(cli, tmp_path):
    cli("create", "-f", write(tmp_path, "c.yaml", CAMPAIGN), env={"TOKEN": "s3cret"})
    cli("launch", "exp")
    wait_until(lambda: cli.json("status", "exp")["summary"]["syncing"] == 0)


def test_csv_and_ndjson_parse_back_with_status_filter(cli, fleet, tmp_path):
    cli("devices", "report", "sensor-0001", "@cmd:=1", 'token="x"')
    cli("devices", "report", "sensor-0002", '@cmd:="a,\\"b\\"\\nc"')
    launched(cli, tmp_path)
    rows = parse_csv(cli("status", "exp", "-o", "csv").stdout)
    assert list(rows[0]) == [*export.COLUMNS, "reported.@cmd", "reported.mode", "reported.token"]
    by = {r["device"]: r for r in rows}
    assert sorted(by) == ["sensor-0001", "sensor-0002", "sensor-0003", "sensor-0004"]
    one, two, three = by["sensor-0001"], by["sensor-0002"], by["sensor-0003"]
    assert (one["status"], one["reported.@cmd"], one["reported.token"], one["reported.mode"]) == (
        "valid",
        "1",
        '"***"',
        "",
    )
    assert one["batch"] == "1" and one["delivered_at"].startswith("20") and one["joined_at"] == ""
    assert two["status"] == "waiting" and json.loads(two["reported.@cmd"]) == 'a,"b"\nc'
    # The reason starts with the key "@cmd": neutralised with a leading quote.
    assert two["reason"] == "'@cmd reported " + canonical('a,"b"\nc')
    assert three["reason"] == "'@cmd not reported yet" and three["reported.@cmd"] == ""

    lines = cli("status", "exp", "-o", "ndjson").stdout.splitlines()
    objects = {o["device"]: o for o in map(json.loads, lines)}
    assert objects["sensor-0002"]["reported"] == {"@cmd": 'a,"b"\nc'}
    assert objects["sensor-0002"]["reason"] == "@cmd reported " + canonical('a,"b"\nc')  # JSON: as it is
    assert objects["sensor-0001"]["reported"] == {"@cmd": 1, "token": "***"}
    assert objects["sensor-0003"]["reported"] == {}

    waiting = cli("status", "exp", "-o", "ndjson", "--status", "waiting").stdout.splitlines()
    assert sorted(json.loads(line)["device"] for line in waiting) == ["sensor-0002", "sensor-0003", "sensor-0004"]
    assert [r["device"] for r in parse_csv(cli("status", "exp", "-o", "csv", "--status", "valid").stdout)] == [
        "sensor-0001"
    ]
    assert "csv is not available here" in cli("list", "-o", "csv", code=2).stderr
    assert "not with --watch or --wait" in cli("status", "exp", "-o", "ndjson", "--wait", code=2).stderr


@pytest.mark.parametrize("backend", ["sqlite"])
def test_once_secret_always_masked_in_exports_and_reasons(cli, fleet, tmp_path):
    """A value written as secret by one campaign stays masked in the supervision of a
    later campaign that sets the same key in clear: the device may still report it."""
    secret = 'name: a\ndevices: {selector: {type: sensor-v2}}\nconfigurations: {psk: "${PSK}"}\n'
    cli("create", "-f", write(tmp_path, "a.yaml", secret), env={"PSK": "hunter2"})
    cli("launch", "a")
    cli("devices", "report", "sensor-0001", 'psk="hunter2"')
    clear = (
        "name: b\ndevices: {selector: {type: sensor-v2}}\n"
        "configurations: {psk: plain-new}\nexpected_state: {psk: plain-new}\n"
    )
    cli("create", "-f", write(tmp_path, "b.yaml", clear))
    cli("launch", "b", "--force")
    wait_until(lambda: cli.json("status", "b")["summary"]["syncing"] == 0)
    outputs = [cli("status", "b", *args).stdout for args in (("-o", "csv"), ("-o", "ndjson"), ("-o", "json"), ())]
    assert all("hunter2" not in out for out in outputs)
    row = next(r for r in parse_csv(outputs[0]) if r["device"] == "sensor-0001")
    assert row["reported.psk"] == '"***"' and row["reason"] == "psk reported ***"
    one = next(o for o in map(json.loads, outputs[1].splitlines()) if o["device"] == "sensor-0001")
    assert one["reported"] == {"psk": "***"} and one["reason"] == "psk reported ***"
    (device,) = [d for d in json.loads(outputs[2])["devices"] if d["device"] == "sensor-0001"]
    assert device["reason"] == "psk reported ***"
    # Whatever the device reports later: its entry was secret once.
    cli("devices", "report", "sensor-0002", 'psk="other"')
    rows = {r["device"]: r for r in parse_csv(cli("status", "b", "-o", "csv").stdout)}
    assert rows["sensor-0002"]["reported.psk"] == '"***"' and rows["sensor-0002"]["reason"] == "psk reported ***"


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_draft_lists_its_devices_pending(cli, fleet, tmp_path):
    cli("create", "-f", write(tmp_path, "c.yaml", CAMPAIGN), env={"TOKEN": "s3cret"})
    rows = parse_csv(cli("status", "exp", "-o", "csv").stdout)
    assert [(r["status"], r["reported.mode"]) for r in rows] == [("pending", "")] * 4
    assert "reported.token" in rows[0]


TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12) | st.sampled_from(
    ["=1+2", "+x", "-1", "@SUM(A1)", "\t=x", "\r\n", '"', '",\n"', "\x00", "\x1b[31m", "\u2028", "\u202e", "é,ü"]
)
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=6,
)


@pytest.mark.parametrize("backend", ["sqlite"])
def test_any_reported_values_parse_back(cli, fleet, tmp_path, db_url):
    launched(cli, tmp_path)
    engine = db.create_engine(db_url)
    with db.read(engine) as conn:
        ids = store.by_name(conn, ["sensor-0001", "sensor-0002"], "id")

    @settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(first=JSON, second=JSON)
    def check(first, second):
        with db.write(engine) as conn:
            store.write_reported(
                conn,
                [
                    (ids["sensor-0001"], "@cmd", canonical(first), db.utcnow()),
                    (ids["sensor-0002"], "mode", canonical(second), db.utcnow()),
                ],
            )
        with open_status(engine, "exp", export=True) as data:
            keys = data["keys"]
            out = io.BytesIO()
            export.write_csv(data, out)
        with open_status(engine, "exp") as data:
            reasons = {d["device"]: d["reason"] for d in data["devices"]}
        rows = {r["device"]: r for r in parse_csv(out.getvalue().decode())}
        assert json.loads(rows["sensor-0001"]["reported.@cmd"]) == json.loads(canonical(first))
        assert rows["sensor-0002"]["reported.mode"] == canonical(second)
        for device, reason in reasons.items():
            assert rows[device]["reason"] == (export.neutralised(reason) or "")
        with open_status(engine, "exp", export=True) as data:
            out = io.BytesIO()
            export.write_ndjson(data, out)
        objects = {o["device"]: o for o in map(json.loads, out.getvalue().splitlines())}
        assert objects["sensor-0002"]["reported"]["mode"] == json.loads(canonical(second))
        assert {d: o["reason"] for d, o in objects.items()} == reasons
        assert len(keys) == 3

    try:
        check()
    finally:
        engine.dispose()
