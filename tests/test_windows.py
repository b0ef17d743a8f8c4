"""Maintenance windows: deliveries only inside a window, in each device's time zone.

The engine takes "now" for window decisions from CAMPAIGNCTL_CLOCK (tests only); every
delivery goes through the real broker. 2026-11-30 is a Monday.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from conftest import Broker, Subscriber, db_dump, free_port, query, write
from hypothesis import given, settings
from hypothesis import strategies as st

from campaignctl import windows
from campaignctl.windows import Window, is_open, next_open, open_until

CLOCK = windows.CLOCK_VARIABLE


def _fleet(tmp_path, cli, broker, prefix, devices: dict[str, dict[str, str]]) -> None:
    lines = [
        "interfaces:",
        f"  broker: {{type: mqtt, url: {broker.url}, topic_prefix: {prefix}}}",
        "device_types:",
        "  sensor-v2: {}",
        "devices:",
    ]
    for name, tags in devices.items():
        shown = ", ".join(f"{k}: {v}" for k, v in tags.items())
        lines.append(f"  - {{name: {name}, type: sensor-v2, interface: broker, tags: {{{shown}}}}}")
    cli("devices", "import", write(tmp_path, "fleet.yaml", "\n".join(lines) + "\n"))


def _campaign(tmp_path, cli, rollout: str, name: str = "night") -> None:
    text = (
        f"name: {name}\ndevices: {{selector: {{type: sensor-v2}}}}\nconfigurations: {{mode: eco}}\nrollout:\n{rollout}"
    )
    cli("create", "-f", write(tmp_path, f"{name}.yaml", text))


def _at(clock: str) -> dict[str, str]:
    return {CLOCK: clock}


def _written(db_url) -> set[str]:
    """Devices whose desired configuration the campaign wrote (the delivery's first step)."""
    rows = query(
        db_url,
        "SELECT d.name FROM device_config c JOIN device d ON d.id = c.device_id "
        "WHERE c.key = 'mode' AND c.desired IS NOT NULL",
    )
    return {r[0] for r in rows}


def _devices(cli, env) -> dict[str, dict]:
    return {d["device"]: d for d in cli.json("status", "night", env=env)["devices"]}


@pytest.mark.parametrize("backend", ["sqlite"])
def test_devices_wait_for_the_window_then_get_delivered(tmp_path, cli, db_url, broker, prefix):
    _fleet(tmp_path, cli, broker, prefix, {f"s-{i}": {"site": "lyon"} for i in range(3)})
    _campaign(
        tmp_path,
        cli,
        '  windows:\n    - {days: [mon, tue, wed, thu, fri], start: "02:00", end: "05:00"}\n'
        "  timezone: Europe/Paris\n  bake_time: 0s\n",
    )
    closed = _at("2026-12-01T00:30:00Z")  # Tue 01:30 in Paris
    plan = cli("plan", "night", env=closed).stdout
    assert "next window opens Tue 2026-12-01 02:00 Europe/Paris" in plan
    assert cli.json("plan", "night", env=closed)["window"]["opens_at"] == "2026-12-01T01:00:00Z"
    sub = Subscriber(broker.port, f"{prefix}/+/config")
    try:
        assert "3 pending (waiting for their window" in cli("launch", "night", env=closed).stdout
        assert cli("tick", env=closed).stdout == "night: waiting\n"
        data = cli.json("status", "night", env=closed)
        assert data["summary"]["pending"] == 3 and data["batches"][0]["status"] == "releasing"
        assert {d["reason"] for d in data["devices"]} == {"waiting for window (opens Tue 02:00 Europe/Paris)"}
        assert data["window"]["open"] is False
        assert "maintenance windows: next window opens Tue 2026-12-01 02:00 Europe/Paris" in (
            cli("status", "night", env=closed).stdout
        )
        assert _written(db_url) == set()  # nothing written, so nothing to deliver
        time.sleep(0.3)
        assert sub.messages == {}
        opened = _at("2026-12-01T01:30:00Z")  # Tue 02:30 in Paris
        cli("tick", env=opened)
        assert len(sub.wait_for(3)) == 3
        data = cli.json("status", "night", env=opened)
        assert data["status"] == "completed" and data["summary"]["valid"] == 3
        assert data["window"]["closes_at"] == "2026-12-01T04:00:00Z"
    finally:
        sub.close()


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_window_across_midnight_is_opened_by_the_day_listed(tmp_path, cli, db_url, broker, prefix):
    _fleet(tmp_path, cli, broker, prefix, {"s-1": {}})
    _campaign(tmp_path, cli, '  windows:\n    - {days: [monday], start: "22:00", end: "03:00"}\n')
    # Tuesday 03:30: Monday's window closed half an hour ago.
    cli("launch", "night", env=_at("2026-12-01T03:30:00Z"))
    reason = _devices(cli, _at("2026-12-01T03:30:00Z"))["s-1"]["reason"]
    assert reason == "waiting for window (opens Mon 22:00 UTC)"
    cli("tick", env=_at("2026-12-07T21:59:00Z"))  # Monday, a minute early
    assert _written(db_url) == set()
    cli("tick", env=_at("2026-12-08T02:59:00Z"))  # Tuesday, still in Monday's window
    assert _written(db_url) == {"s-1"}


def test_devices_in_two_time_zones_go_out_in_their_own_windows(tmp_path, cli, db_url, broker, prefix):
    _fleet(
        tmp_path,
        cli,
        broker,
        prefix,
        {
            "tokyo": {"tz": "Asia/Tokyo"},
            "new-york": {"tz": "America/New_York"},
            "untagged": {},
            "martian": {"tz": "Mars/Olympus"},  # not a time zone: the rollout's (UTC)
        },
    )
    _campaign(
        tmp_path,
        cli,
        '  windows:\n    - {start: "02:00", end: "05:00"}\n  timezone_tag: tz\n  device_timeout: 1s\n',
    )
    first = _at("2026-12-01T18:00:00Z")  # 03:00 in Tokyo, 13:00 in New York, 18:00 UTC
    cli("launch", "night", env=first)
    assert _written(db_url) == {"tokyo"}
    devices = _devices(cli, first)
    assert devices["tokyo"]["status"] == "valid"
    assert devices["new-york"]["reason"] == "waiting for window (opens Wed 02:00 America/New_York)"
    assert devices["untagged"]["reason"] == devices["martian"]["reason"] == "waiting for window (opens Wed 02:00 UTC)"
    # Time passes on the wall clock too: devices left waiting do not time out.
    time.sleep(1.1)
    second = _at("2026-12-02T03:00:00Z")  # 03:00 UTC, 22:00 in New York
    cli("tick", env=second)
    assert _written(db_url) == {"tokyo", "untagged", "martian"}
    data = cli.json("status", "night", env=second)
    assert data["batches"][0]["status"] == "releasing" and data["status"] == "running"
    assert data["summary"]["pending"] == 1 and data["summary"]["timed_out"] == 0
    cli("tick", env=_at("2026-12-02T08:00:00Z"))  # 03:00 in New York
    data = cli.json("status", "night")
    assert data["status"] == "completed" and data["summary"]["valid"] == 4


BAD_WINDOWS = [
    (
        '  windows:\n    - {days: [mon, tus], start: "02:00", end: "05:00"}\n',
        "night.yaml:6: rollout.windows[0].days[1]: 'tus' is not a day: write one of mon, tue, wed, thu, fri, sat, sun",
    ),
    (
        '  windows:\n    - {start: "02:00", end: "02:00"}\n',
        "night.yaml:6: rollout.windows[0].end: end equals start (02:00)",
    ),
    (
        '  windows:\n    - {start: "2:60", end: "05:00"}\n',
        "night.yaml:6: rollout.windows[0].start: '2:60' is not a time",
    ),
    (
        '  windows:\n    - {start: "00:00", end: "24:30"}\n',
        "night.yaml:6: rollout.windows[0].end: '24:30' is not a time",
    ),
    ("  windows:\n    - {start: 22:30, end: 23:00}\n", 'a time is written "HH:MM" in quotes'),
    (
        '  windows:\n    - {start: "22:00", end: "05:00"}\n  timezone: Europe/Pariss\n',
        "night.yaml:7: rollout.timezone: unknown time zone 'Europe/Pariss'; did you mean 'Europe/Paris'?",
    ),
    ("  timezone_tag: tz\n", "night.yaml:5: rollout.timezone_tag: timezone_tag is the time zone of maintenance"),
    ("  windows: []\n", "night.yaml:5: rollout.windows: give at least one window"),
    ('  windows:\n    - {days: [], start: "02:00", end: "05:00"}\n', "rollout.windows[0].days: give at least one day"),
]


@pytest.mark.parametrize("backend", ["sqlite"])
def test_bad_windows_are_refused_and_nothing_changes(tmp_path, cli, db_url, broker, prefix):
    _fleet(tmp_path, cli, broker, prefix, {"s-1": {}})
    before = db_dump(db_url)
    for rollout, message in BAD_WINDOWS:
        text = f"name: night\ndevices: {{names: [s-1]}}\nconfigurations: {{mode: eco}}\nrollout:\n{rollout}"
        result = cli("create", "-f", write(tmp_path, "night.yaml", text), code=1)
        assert message in result.stderr and "Traceback" not in result.stderr
    assert db_dump(db_url) == before


# -- windows.py on its own, across daylight saving time ----------------------------------

ZONES = [
    "UTC",
    "Europe/Paris",
    "America/New_York",
    "America/Sao_Paulo",
    "Australia/Lord_Howe",  # DST of half an hour
    "Pacific/Chatham",
    "Asia/Kolkata",
    "America/St_Johns",
]
_minutes = st.integers(0, 24 * 60 - 1).map(lambda m: m - m % 15)  # on the quarter, as DST changes are
_window = st.builds(
    lambda days, start, length: Window(frozenset(days), start, (start + length - 1) % 1440 + 1),
    st.sets(st.integers(0, 6), min_size=1),
    _minutes,
    st.integers(1, 24 * 60 - 1),
)
_instants = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2040, 1, 1)).map(
    lambda d: d.replace(tzinfo=timezone.utc)
)
_SECOND = timedelta(seconds=1)


@settings(max_examples=100, deadline=None)
@given(st.lists(_window, min_size=1, max_size=3), st.sampled_from(ZONES), _instants, st.floats(0, 1, exclude_max=True))
def test_open_and_next_opening_agree(ws, name, at, share):
    tz = ZoneInfo(name)
    opens = next_open(ws, tz, at)
    assert opens >= at and is_open(ws, tz, opens)
    assert (opens == at) == is_open(ws, tz, at)
    if opens > at:  # closed all the way to the opening
        for moment in (min(at + (opens - at) * share, opens - _SECOND), opens - _SECOND):
            assert not is_open(ws, tz, max(at, moment))
    until = open_until(ws, tz, at)
    assert (until is not None) == is_open(ws, tz, at)
    if until not in (None, windows.NEVER):
        assert until > at and is_open(ws, tz, until - _SECOND) and not is_open(ws, tz, until)


def _wall_open(ws, local: datetime) -> bool:
    """Whether a window is open at a wall-clock time, read as a person does."""
    minute = local.hour * 60 + local.minute
    for w in ws:
        if w.end > w.start:
            if local.weekday() in w.days and w.start <= minute < w.end:
                return True
        elif (local.weekday() in w.days and minute >= w.start) or (
            (local.weekday() - 1) % 7 in w.days and minute < w.end
        ):
            return True
    return False


@settings(max_examples=100, deadline=None)
@given(st.lists(_window, min_size=1, max_size=3), st.sampled_from(ZONES), _instants)
def test_away_from_clock_changes_a_window_is_the_wall_clock(ws, name, at):
    tz = ZoneInfo(name)
    offsets = {(at + timedelta(hours=h)).astimezone(tz).utcoffset() for h in range(-30, 31, 3)}
    if len(offsets) == 1:  # no clock change within a day and a bit
        assert is_open(ws, tz, at) == _wall_open(ws, at.astimezone(tz))


def test_clock_changes_are_read_as_documented():
    paris, night = ZoneInfo("Europe/Paris"), [Window(frozenset(range(7)), 2 * 60, 5 * 60)]
    # 2027-03-28: 02:00 becomes 03:00, the window opens when the clocks jump (01:00 UTC).
    assert next_open(night, paris, datetime(2027, 3, 28, 0, 0, tzinfo=timezone.utc)) == datetime(
        2027, 3, 28, 1, 0, tzinfo=timezone.utc
    )
    assert open_until(night, paris, datetime(2027, 3, 28, 1, 0, tzinfo=timezone.utc)) == datetime(
        2027, 3, 28, 3, 0, tzinfo=timezone.utc
    )
    # 2026-10-25: 03:00 becomes 02:00 again; it opens at the first 02:00 and lasts 4 hours.
    assert open_until(night, paris, datetime(2026, 10, 25, 0, 0, tzinfo=timezone.utc)) == datetime(
        2026, 10, 25, 4, 0, tzinfo=timezone.utc
    )
    # Times in the skipped hour are an hour later (02:15 is 03:15); a window that ends
    # before it starts that way does not open that day.
    inside = [Window(frozenset(range(7)), 2 * 60 + 15, 2 * 60 + 45)]
    assert open_until(inside, paris, datetime(2027, 3, 28, 1, 15, tzinfo=timezone.utc)) == datetime(
        2027, 3, 28, 1, 45, tzinfo=timezone.utc
    )
    across = [Window(frozenset(range(7)), 2 * 60 + 30, 3 * 60 + 15)]
    assert next_open(across, paris, datetime(2027, 3, 28, 0, 0, tzinfo=timezone.utc)) == datetime(
        2027, 3, 29, 0, 30, tzinfo=timezone.utc
    )


def test_the_test_clock_must_be_a_time(monkeypatch):
    from campaignctl.errors import InputError

    monkeypatch.setenv(CLOCK, "2026-12-01T01:30:00Z")
    assert windows.now() == datetime(2026, 12, 1, 1, 30, tzinfo=timezone.utc)
    monkeypatch.setenv(CLOCK, "tomorrow")
    with pytest.raises(InputError, match="CAMPAIGNCTL_CLOCK"):
        windows.now()


# -- the gate at scale, and against re-tags ------------------------------------------------


def _polling_fleet(tmp_path, cli, tags: list[str]) -> None:
    """Devices d-00000… that poll (nothing to deliver: a written entry is the outcome), the
    i-th with the CSV tags ``tags[i]``."""
    cli(
        "devices",
        "import",
        write(
            tmp_path,
            "fleet.yaml",
            'interfaces:\n  devapi: {type: http, url: "http://127.0.0.1:1"}\ndevice_types:\n  sensor-v2: {}\n'
            "devices: []\n",
        ),
    )
    rows = "".join(f"d-{i:05d},sensor-v2,devapi,{t}\n" for i, t in enumerate(tags))
    cli("devices", "import", write(tmp_path, "devices.csv", "name,type,interface,tags\n" + rows))


_TAGGED = '  windows:\n    - {start: "02:00", end: "05:00"}\n  timezone_tag: tz\n'


@pytest.mark.parametrize("backend", ["sqlite"])
def test_thousands_of_distinct_wrong_zone_tags_follow_the_rollout_zone(tmp_path, cli, db_url):
    garbage = 5000
    tags = [f"tz=Mars/Crater-{i}" for i in range(garbage)] + ["", "tz=Asia/Tokyo", "tz=America/New_York"]
    tags.append("tz=Europe/London")
    _polling_fleet(tmp_path, cli, tags)
    _campaign(tmp_path, cli, _TAGGED)
    at_three_utc = _at("2026-12-01T03:00:00Z")  # 03:00 in London, 12:00 in Tokyo, 22:00 in New York
    cli("launch", "night", env=at_three_utc)
    expected = {f"d-{i:05d}" for i in range(garbage + 1)} | {f"d-{garbage + 3:05d}"}
    assert _written(db_url) == expected
    # Devices are left waiting: the write step has not finished.
    assert query(db_url, "SELECT written_at, step FROM job") == [(None, "write")]
    cli("tick", env=_at("2026-12-01T18:00:00Z"))  # 03:00 in Tokyo
    assert _written(db_url) == expected | {f"d-{garbage + 1:05d}"}
    cli("tick", env=_at("2026-12-02T08:00:00Z"))  # 03:00 in New York
    assert len(_written(db_url)) == len(tags)
    assert query(db_url, "SELECT count(*) FROM job WHERE written_at IS NOT NULL") == [(1,)]


_TAG_VALUES = st.one_of(st.none(), st.sampled_from(ZONES), st.text(max_size=12), st.just(" Europe/Paris"))


@settings(max_examples=25, deadline=None)
@given(_instants, st.sampled_from(ZONES), st.lists(_TAG_VALUES, min_size=1, max_size=8))
def test_the_gate_keeps_the_devices_in_their_window_with_a_bounded_zone_list(at, default, values):
    schedule = windows.Schedule(
        (Window(frozenset(range(7)), 2 * 60, 5 * 60), Window(frozenset({5}), 22 * 60, 3 * 60)), default, "tz"
    )
    gate = windows.Gate(schedule)
    default_open, others = gate.judge(at)
    # What the clause asks of the database: the zones that differ from the rollout's own.
    assert len(others) < len(windows.known_zones())
    for value in values:
        kept = (value or "") not in others if default_open else value in others
        assert kept == schedule.is_open(schedule.zone_name(value), at), value


@pytest.mark.parametrize("backend", ["postgresql"])
def test_devices_re_tagged_while_their_chunk_is_written_are_written_whole(tmp_path, cli, db_url, monkeypatch):
    """PostgreSQL's writers read what others committed at each statement: a fleet import
    that moves the chunk's devices to a closed zone between two statements of the write
    must not leave them half written (entries written, items pending)."""
    from campaignctl import engine

    _polling_fleet(tmp_path, cli, ["tz=Europe/London"] * 6)
    _campaign(tmp_path, cli, _TAGGED)
    supersede = engine._supersede

    def re_tag_then_supersede(*args, **kwargs):
        # Between the entries' upsert and the items' move to syncing, in another
        # transaction that commits: every device now says New York, closed at 03:00 UTC.
        query(db_url, "UPDATE device SET tags = :tags", {"tags": '{"tz": "America/New_York"}'})
        return supersede(*args, **kwargs)

    monkeypatch.setattr(engine, "_supersede", re_tag_then_supersede)
    cli("launch", "night", env=_at("2026-12-01T03:00:00Z"))
    assert len(_written(db_url)) == 6
    assert query(db_url, "SELECT status, count(*) FROM job_item GROUP BY status") == [("syncing", 6)]


@pytest.mark.parametrize("backend", ["sqlite"])
def test_retry_is_refused_outside_the_devices_windows(tmp_path, cli, db_url, prefix):
    port = free_port()  # the broker is down at launch: the device fails
    _fleet(tmp_path, cli, Broker(tmp_path, port), prefix, {"s-1": {"tz": "Asia/Tokyo"}, "s-2": {}})
    _campaign(tmp_path, cli, _TAGGED)
    inside_utc = _at("2026-12-01T03:00:00Z")  # 12:00 in Tokyo: s-2 only
    cli("launch", "night", "--attempts", "1", "--ack-timeout", "0.5", env=inside_utc, code=None)
    assert _devices(cli, inside_utc)["s-2"]["status"] == "failed"
    broker = Broker(tmp_path, port).start()
    try:
        before = db_dump(db_url)
        refused = cli("retry", "night", env=_at("2026-12-01T06:00:00Z"), code=1).stderr
        assert "1 of the devices to retry are outside theirs (s-2: waiting for window (opens Wed 02:00 UTC))" in refused
        assert db_dump(db_url) == before
        cli("retry", "night", env=_at("2026-12-01T04:00:00Z"))
        assert _devices(cli, inside_utc)["s-2"]["status"] == "valid"
    finally:
        broker.stop()
