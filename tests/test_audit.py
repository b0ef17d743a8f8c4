"""The audit trail: every change leaves its event, written in the change's own transaction
(so it survives a SIGKILL, and a change that did not commit leaves none), with who made it;
``campaignctl events`` lists, filters, follows and exports them; ``events prune`` records itself."""

from __future__ import annotations

import csv
import io
import json
import signal
import socket
import subprocess
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from conftest import (
    campaignctl_cmd,
    db_dump,
    fleet_yaml,
    free_port,
    import_fleet,
    query,
    subprocess_env,
    wait_until,
    write,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from campaignctl import audit, db

SECRET = "s3cr3t-value-never-in-events"
FIRMWARE_TOKEN = "fw-token-never-in-events"


def _events(cli, *args: str) -> list[dict]:
    return cli.json("events", *args)["events"]


def _seen(cli, *args: str) -> list[tuple]:
    """(action, actor, campaign or device) of each event, oldest first."""
    return [(e["action"], e["actor"], e["campaign"] or e["device"]) for e in _events(cli, *args)]


def _fleet(cli, tmp_path: Path, broker_url: str, prefix: str, *, dead_port: int) -> None:
    """Four sensors on the broker (as conftest's fleet), and two meters (``lost-1``,
    ``lost-2``) on an interface nobody listens on: their deliveries fail at once."""
    sensors = fleet_yaml(broker_url, prefix).split("devices:\n", 1)[1]
    path = tmp_path / "fleet.yaml"
    path.write_text(
        f"""\
interfaces:
  broker: {{type: mqtt, url: "{broker_url}", topic_prefix: {prefix}}}
  dead: {{type: mqtt, url: "mqtt://127.0.0.1:{dead_port}", topic_prefix: {prefix}}}
device_types:
  sensor-v2:
    firmware_types:
      app: {{version_key: app_version, url_key: app_url, token_key: app_token}}
  meter: {{}}
devices:
{sensors}  - {{name: lost-1, type: meter, interface: dead}}
  - {{name: lost-2, type: meter, interface: dead}}
"""
    )
    cli("devices", "import", str(path), env={"CAMPAIGNCTL_USER": "carol"})


@pytest.mark.parametrize("backend", ["sqlite"])
def test_every_command_leaves_its_event_with_who_made_it(cli, db_url, tmp_path, broker, prefix):
    _fleet(cli, tmp_path, broker.url, prefix, dead_port=free_port())
    as_alice = ("--as", "alice")
    # Scheduled 1.5 s ahead (created and launched well within that): a tick starts it at the end.
    start_at = (datetime.now(timezone.utc) + timedelta(seconds=1.5)).isoformat().replace("+00:00", "Z")
    later = f"name: later\ndevices: {{names: [sensor-0002]}}\nconfigurations: {{level: 1}}\nstart_at: {start_at}\n"
    cli(*as_alice, "create", "-f", write(tmp_path, "later.yaml", later))
    assert "scheduled for" in cli(*as_alice, "launch", "later").stderr
    fw = ("--device-type", "sensor-v2", "--firmware-type", "app", "--version", "2.0")
    url = "https://fw.example.com/app-2.0.bin"
    cli(*as_alice, "firmwares", "add", *fw, "--url", url, "--token-env", "FW_TOKEN", env={"FW_TOKEN": FIRMWARE_TOKEN})
    ship = "name: ship\ndevices: {selector: {type: sensor-v2}}\nrollout: {batches: [1, 100%]}\n"
    ship = write(tmp_path, "ship.yaml", ship + 'configurations: {mode: eco, api_key: "${API_KEY}"}\n')
    cli("create", "-f", ship, env={"API_KEY": SECRET, "CAMPAIGNCTL_USER": "bob"})
    cli(*as_alice, "apply", "-f", ship, env={"API_KEY": SECRET + "-2"})
    cli(*as_alice, "devices", "set-config", "sensor-0001", f"password={SECRET}", "--secret", "--no-deliver")
    cli(*as_alice, "launch", "ship")  # no thresholds: each batch is promoted once delivered
    lost = "name: lost\ndevices: {selector: {type: meter}}\nconfigurations: {mode: eco}\n"
    cli(
        *as_alice,
        "create",
        "-f",
        write(tmp_path, "lost.yaml", lost + "rollout: {batches: [100%], error_threshold: 50%}\n"),
    )
    cli(*as_alice, "launch", "lost", "--attempts", "1", "--ack-timeout", "0.3")  # the batch trips: paused
    cli(*as_alice, "resume", "lost", code=None)  # accepted as it is: completed, its devices failed
    cli(*as_alice, "retry", "lost", code=None)  # they fail again: completed again
    slow = "name: slow\ndevices: {selector: {type: sensor-v2}}\nconfigurations: {interval: 5}\n"
    cli(*as_alice, "create", "-f", write(tmp_path, "slow.yaml", slow + "rollout: {bake_time: 1h}\n"))
    cli(*as_alice, "launch", "slow")  # its one batch bakes
    cli(*as_alice, "pause", "slow")
    cli(*as_alice, "resume", "slow")
    cli(*as_alice, "cancel", "slow")
    cli(*as_alice, "firmwares", "recall", *fw, "--reason", "bricks [bold]the modem")
    cli(*as_alice, "firmwares", "unrecall", *fw)
    cli(*as_alice, "rollback", "ship", "--name", "unship")
    cli(*as_alice, "delete", "unship")
    wait_until(lambda: cli.json("tick") and cli.json("status", "later")["status"] == "completed", timeout=20)

    engine = "engine"
    assert _seen(cli) == [
        ("fleet.imported", "carol", None),
        ("campaign.created", "alice", "later"),
        ("campaign.launched", "alice", "later"),
        ("firmware.added", "alice", None),
        ("campaign.created", "bob", "ship"),
        ("campaign.applied", "alice", "ship"),
        ("device.config_set", "alice", "sensor-0001"),
        ("campaign.launched", "alice", "ship"),
        ("batch.started", engine, "ship"),
        ("batch.promoted", engine, "ship"),
        ("batch.started", engine, "ship"),
        ("batch.promoted", engine, "ship"),
        ("campaign.completed", engine, "ship"),
        ("campaign.created", "alice", "lost"),
        ("campaign.launched", "alice", "lost"),
        ("batch.started", engine, "lost"),
        ("batch.tripped", engine, "lost"),
        ("campaign.paused", engine, "lost"),
        ("campaign.resumed", "alice", "lost"),
        ("batch.promoted", engine, "lost"),  # accepted by alice as it was
        ("campaign.completed", engine, "lost"),
        ("campaign.retried", "alice", "lost"),
        ("campaign.completed", engine, "lost"),
        ("campaign.created", "alice", "slow"),
        ("campaign.launched", "alice", "slow"),
        ("batch.started", engine, "slow"),
        ("campaign.paused", "alice", "slow"),
        ("campaign.resumed", "alice", "slow"),
        ("campaign.cancelled", "alice", "slow"),
        ("firmware.recalled", "alice", None),
        ("firmware.unrecalled", "alice", None),
        ("rollback.created", "alice", "unship"),
        ("campaign.deleted", "alice", "unship"),
        ("campaign.scheduled_start", engine, "later"),
        ("batch.started", engine, "later"),
        ("batch.promoted", engine, "later"),
        ("campaign.completed", engine, "later"),
    ]
    by_action = {e["action"]: e["details"] for e in _events(cli)}
    assert by_action["fleet.imported"]["devices"] == {"created": 6, "updated": 0, "unchanged": 0}
    assert by_action["campaign.applied"] == {"changes": ["configurations.api_key"]}
    assert by_action["device.config_set"]["keys"] == ["password"] and by_action["device.config_set"]["secret"]
    assert by_action["firmware.recalled"]["reason"] == "bricks [bold]the modem"
    assert by_action["campaign.retried"]["devices"] == 2 and by_action["rollback.created"]["rollback_of"] == "ship"
    assert by_action["firmware.added"]["token"] is True
    assert by_action["campaign.scheduled_start"]["devices"] == 1
    # Secrets never: not a value of a secret key, not a firmware token.
    trail = json.dumps(query(db_url, "SELECT * FROM event"))
    assert SECRET not in trail and FIRMWARE_TOKEN not in trail


# -- listing, filters, exports, prune ------------------------------------------------------

NOW = datetime.now(timezone.utc)


def _stamp(hours_ago: float) -> str:
    return (NOW - timedelta(hours=hours_ago)).isoformat(timespec="microseconds").replace("+00:00", "Z")


#: (hours ago, actor, action, campaign, device, details), oldest first.
TRAIL = [
    (50, "carol", "fleet.imported", None, None, {"devices": {"created": 3}}),
    (30, "bob [red]x", "campaign.created", "alpha", None, {"devices": 3}),
    (20, "alice", "device.config_set", None, "dev-1", {"keys": ["mode"], "note": "a\x1b[2Jb\nc"}),
    (3, "alice", "campaign.launched", "alpha", None, {"job": 1}),
    (1.5, "engine", "batch.started", "alpha", None, {"batch": 1}),
    (1, "engine", "batch.promoted", "alpha", None, {"batch": 1}),
    (0.5, "alice", "campaign.created", "beta", None, {"devices": 1}),
]


def _record_trail(db_url: str) -> None:
    engine = db.create_engine(db_url)
    try:
        with db.write(engine) as conn:
            for hours, actor, action, campaign, device, details in TRAIL:
                audit.record(
                    conn, action, campaign=campaign, device=device, details=details, by=actor, at=_stamp(hours)
                )
    finally:
        engine.dispose()


def test_events_filters_exports_and_prune(cli, db_url, monkeypatch):
    _record_trail(db_url)
    monkeypatch.setattr(audit, "PAGE", 2)  # several pages: what is streamed, page after page, is all there
    assert [e["action"] for e in _events(cli)] == [t[2] for t in TRAIL]
    assert {e["campaign"] for e in _events(cli, "--campaign", "alpha")} == {"alpha"}
    assert len(_events(cli, "--campaign", "alpha")) == 4
    assert [e["device"] for e in _events(cli, "--device", "dev-1")] == ["dev-1"]
    assert [e["action"] for e in _events(cli, "--action", "batch")] == ["batch.started", "batch.promoted"]
    assert [e["campaign"] for e in _events(cli, "--action", "campaign.created")] == ["alpha", "beta"]
    assert [e["action"] for e in _events(cli, "--since", "2h")] == [
        "batch.started",
        "batch.promoted",
        "campaign.created",
    ]
    since = _stamp(25).replace("Z", "+00:00")  # any time zone
    assert len(_events(cli, "--since", since)) == 5
    # --limit: the newest N, still oldest first; with filters, the newest N of those.
    assert [e["action"] for e in _events(cli, "--limit", "2")] == ["batch.promoted", "campaign.created"]
    assert [e["action"] for e in _events(cli, "--campaign", "alpha", "--limit", "3")] == [
        "campaign.launched",
        "batch.started",
        "batch.promoted",
    ]
    # -o json: {"events": [{id, at, actor, action, campaign, device, details}]}
    first = _events(cli)[0]
    assert set(first) == {"id", "at", "actor", "action", "campaign", "device", "details"}
    assert first["details"] == {"devices": {"created": 3}} and first["at"] == _stamp(50)
    # CSV and NDJSON parse back with the standard modules, to the same events.
    rows = list(csv.DictReader(io.StringIO(cli("events", "-o", "csv").stdout)))
    assert [json.loads(r["details"]) for r in rows] == [t[5] for t in TRAIL]
    assert [r["actor"] for r in rows] == [t[1] for t in TRAIL] and rows[0]["campaign"] == ""
    lines = cli("events", "-o", "ndjson").stdout.splitlines()
    assert [json.loads(line) for line in lines] == _events(cli)
    # A table shows what was written, never as markup or control characters.
    table = cli("events", "--since", "40h").stdout
    assert "bob [red]x" in table.replace("\n", "") or "[red]x" in table
    assert "\x1b" not in table and "\\x1b" in table
    # --follow: what there is, then each event as it commits, once (here: one per look).
    engine = db.create_engine(db_url)
    looks: list[int] = []

    def look_again(_seconds: float) -> None:
        if len(looks) == 3:
            raise KeyboardInterrupt
        looks.append(1)
        with db.write(engine) as conn:
            audit.record(conn, "device.config_set", device=f"dev-{len(looks) + 1}", by="gina")

    followed: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        for event in audit.events(engine, audit.Filters(action="device"), follow=True, sleep=look_again):
            followed.append(event["device"])
    engine.dispose()
    assert followed == ["dev-1", "dev-2", "dev-3", "dev-4"]
    # prune: the one way out, and it records itself.
    assert "pruned 3 event(s)" in cli("--as", "dave", "events", "prune", "--before", "10h").stderr
    left = [e for e in _events(cli) if e["actor"] != "gina"]
    assert [e["action"] for e in left] == [t[2] for t in TRAIL[3:]] + ["events.pruned"]
    assert left[-1]["actor"] == "dave" and left[-1]["details"]["count"] == 3
    assert left[-1]["details"]["before"] < _stamp(9.9)
    # Pruning everything keeps the record of it, with an id after every earlier one.
    assert cli.json("events", "prune", "--before", "2099-01-01T00:00:00Z")["pruned"] == 8
    (only,) = _events(cli)
    assert only["action"] == "events.pruned" and only["id"] > left[-1]["id"]


@pytest.mark.parametrize("backend", ["sqlite"])
def test_events_csv_neutralises_formulas_and_the_table_shows_the_newest(cli, db_url, monkeypatch):
    from campaignctl.cli import events as events_cli

    engine = db.create_engine(db_url)
    formula = '=HYPERLINK("https://evil.test","x")'
    with db.write(engine) as conn:
        audit.record(conn, "campaign.approved", campaign="alpha", details={"comment": "+1"}, by=formula)
        audit.record(conn, "campaign.rejected", campaign="alpha", details={}, by="@SUM(A1)")
        for i in range(4):
            audit.record(conn, "device.config_set", device=f"dev-{i}", by="alice")
    engine.dispose()
    rows = list(csv.DictReader(io.StringIO(cli("events", "-o", "csv").stdout, newline="")))
    assert [r["actor"] for r in rows[:3]] == ["'" + formula, "'@SUM(A1)", "alice"]
    assert json.loads(rows[0]["details"]) == {"comment": "+1"}  # JSON text: starts with {
    # NDJSON is data, not a spreadsheet: as recorded.
    assert json.loads(cli("events", "-o", "ndjson").stdout.splitlines()[0])["actor"] == formula
    # The table shows the newest events, and says how many it leaves out; the exports stream all.
    monkeypatch.setattr(events_cli, "TABLE_LIMIT", 3)
    table = cli("events")
    assert "dev-3" in table.stdout and "dev-0" not in table.stdout
    assert "3 older event(s)" in table.stderr
    assert "older event" not in cli("events", "--limit", "0").stderr
    assert len(cli("events", "-o", "ndjson").stdout.splitlines()) == 6


@pytest.mark.parametrize("backend", ["sqlite"])
def test_bad_events_input_is_a_usage_error_and_changes_nothing(cli, db_url):
    _record_trail(db_url)
    before = db_dump(db_url)
    for args, option in [
        (("events", "--since", "garbage"), "--since"),
        (("events", "--since", "2026-01-01"), "--since"),  # no time zone
        (("events", "--since", "99999d"), "--since"),
        (("events", "-f", "-o", "json"), "--follow"),
        (("events", "prune", "--before", "yesterday"), "--before"),
    ]:
        result = cli(*args, code=2)
        assert f"Invalid value for {option}" in result.stderr and "Traceback" not in result.stderr
    assert "Missing option '--before'" in cli("events", "prune", code=2).stderr
    result = cli("events", "--action", "batch.tripd", code=1)
    assert "unknown action 'batch.tripd'; did you mean 'batch.tripped'?" in result.stderr
    assert db_dump(db_url) == before


@pytest.mark.parametrize("backend", ["sqlite"])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    campaign=st.sampled_from([None, "alpha", "beta", "gamma"]),
    device=st.sampled_from([None, "dev-1"]),
    action=st.sampled_from([None, "campaign", "batch", "batch.started", "campaign.created", "fleet"]),
    since=st.sampled_from([None, 0.75, 2, 25, 100]),
    limit=st.sampled_from([None, 1, 2, 3, 10]),
    page=st.integers(1, 4),
)
def test_listing_is_the_filtered_trail(db_url, campaign, device, action, since, limit, page):
    """Whatever the filters, the page size and the limit: the events that match, oldest
    first, the newest ``limit`` of them."""
    engine = db.create_engine(db_url)
    try:
        with db.read(engine) as conn:
            empty = not db.run(conn, "SELECT count(*) FROM event").scalar()
        if empty:
            _record_trail(db_url)
        filters = audit.Filters(campaign, device, action, None if since is None else _stamp(since))
        expected = [
            t[2]
            for t in TRAIL
            if (campaign is None or t[3] == campaign)
            and (device is None or t[4] == device)
            and (action is None or t[2] == action or t[2].startswith(f"{action}."))
            and (since is None or t[0] <= since)
        ]
        original, audit.PAGE = audit.PAGE, page
        try:
            got = [e["action"] for e in audit.events(engine, filters, limit=limit)]
        finally:
            audit.PAGE = original
        assert got == (expected[-limit:] if limit else expected)
    finally:
        engine.dispose()


def test_parse_when_reads_durations_and_times():
    now = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)
    assert audit.parse_when("2h", now=now) == "2026-12-01T10:00:00.000000Z"
    assert audit.parse_when("90", now=now) == "2026-12-01T11:58:30.000000Z"
    assert audit.parse_when("2026-12-01T13:00:00+02:00") == "2026-12-01T11:00:00.000000Z"
    for garbage in ("", "garbage", "-2h", "2 hours", "2026-13-01T00:00:00Z", "1e9"):
        with pytest.raises(ValueError):
            audit.parse_when(garbage, now=now)


# -- written with the change, not after ----------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite"])
def test_events_survive_sigkill_and_match_what_committed(cli, db_url, tmp_path, broker, prefix):
    import_fleet(cli, tmp_path, broker.url, prefix, 5)
    manifest = (
        "name: crash\ndevices: {selector: {type: sensor-v2}}\nconfigurations: {mode: eco}\n"
        # Released at ten devices a second, then baked for an hour: the launch is at work,
        # or waiting, whenever it is killed.
        "rollout: {batches: [4, 100%], max_per_minute: 600, bake_time: 1h}\n"
    )
    cli("create", "-f", write(tmp_path, "crash.yaml", manifest))
    proc = subprocess.Popen(
        campaignctl_cmd("--db", db_url, "launch", "crash", "--wait", "--processes", "1"),
        env=subprocess_env(CAMPAIGNCTL_USER="erin"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        started = "SELECT count(*) FROM event WHERE action = 'batch.started'"
        wait_until(lambda: query(db_url, started)[0][0] or proc.poll() is not None, timeout=60, interval=0.005)
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
    finally:
        proc.send_signal(signal.SIGKILL)  # as soon as the batch's event is visible: mid-release
        proc.wait()

    def committed() -> dict[str, set[int]]:
        rows = query(db_url, "SELECT number, status, started_at FROM job_batch WHERE job_id = 1")
        return {
            "batch.started": {n for n, _s, at in rows if at is not None},
            "batch.promoted": {n for n, s, _at in rows if s == "promoted"},
        }

    def recorded() -> dict[str, set[int]]:
        return {
            action: {e["details"]["batch"] for e in _events(cli, "--action", action)}
            for action in ("batch.started", "batch.promoted")
        }

    # Every change that committed has its event, and no event speaks of one that did not.
    assert recorded() == committed() == {"batch.started": {1}, "batch.promoted": set()}
    (launched,) = _events(cli, "--action", "campaign.launched")
    assert launched["actor"] == "erin" and launched["details"]["job"] == 1
    assert query(db_url, "SELECT lease_owner FROM job WHERE id = 1")[0][0] is not None  # died holding it
    # Resumed by a person: who, and which process it was taken from.
    cli("jobs", "resume", "1", env={"CAMPAIGNCTL_USER": "frank"})  # releases the rest, then bakes
    (resumed,) = _events(cli, "--action", "job.resumed")
    assert resumed["actor"] == "frank" and f":{proc.pid}:" in resumed["details"]["previous_owner"]
    assert recorded() == committed()
    assert query(db_url, "SELECT count(*) FROM job_item WHERE job_id = 1 AND batch = 1 AND status = 'pending'") == [
        (0,)
    ]
    # Taken over by the engine, from a process of this host that died holding the lease.
    dead = f"{socket.gethostname()}:{2**22 + 1}:deadbeef"
    query(db_url, "UPDATE job SET lease_owner = :owner, lease_expires_at = 1e12 WHERE id = 1", {"owner": dead})
    cli("tick")
    taken = _events(cli, "--action", "job.resumed", "--limit", "1")[0]
    assert (taken["actor"], taken["campaign"], taken["details"]) == (
        "engine",
        "crash",
        {"job": 1, "previous_owner": dead},
    )


@pytest.mark.parametrize("backend", ["sqlite"])
def test_follow_prints_new_events_until_interrupted(cli, db_url, tmp_path, broker, prefix):
    import_fleet(cli, tmp_path, broker.url, prefix, 1)
    proc = subprocess.Popen(
        campaignctl_cmd("--db", db_url, "events", "--follow", "-o", "ndjson", "--interval", "0.1"),
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)  # type: ignore[arg-type]
    reader.start()
    try:
        wait_until(lambda: len(lines) == 1, timeout=30)
        assert json.loads(lines[0])["action"] == "fleet.imported"
        cli("--as", "gina", "devices", "set-config", "sensor-0001", "mode=eco", "--no-deliver")
        wait_until(lambda: len(lines) == 2, timeout=30)
        event = json.loads(lines[1])
        assert (event["action"], event["actor"], event["device"]) == ("device.config_set", "gina", "sensor-0001")
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(30)
    assert code == 0, proc.stderr.read() if proc.stderr else ""
