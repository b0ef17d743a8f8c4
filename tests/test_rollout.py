"""Rollout control: batches, canaries, thresholds, bake time, rate limit, schedules,
pause / resume / cancel / retry, crash safety of the worker, and --wait exit codes."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from conftest import (
    Broker,
    Subscriber,
    campaignctl_cmd,
    csv_fleet,
    fleet_yaml,
    free_port,
    import_fleet,
    query,
    subprocess_env,
    wait_until,
    write,
)

DEVICES = 20


@pytest.fixture
def fleet20(cli, broker, prefix, tmp_path):
    return import_fleet(cli, tmp_path, broker.url, prefix, DEVICES)


def _campaign(tmp_path, rollout: str, *, name: str = "roll", extra: str = "") -> str:
    return write(
        tmp_path,
        f"{name}.yaml",
        f"""\
name: {name}
devices: {{selector: {{type: sensor-v2}}}}
configurations: {{report_interval: 30}}
expected_state: {{report_interval: 30}}
{extra}rollout:
{rollout}""",
    )


def _status(cli, name="roll"):
    return cli.json("status", name)


def _by_batch(data) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = {}
    for device in data["devices"]:
        out.setdefault(device["batch"], []).append(device)
    return out


def _fleet_with_a_lost_device(cli, tmp_path, broker, prefix, *, devices: int) -> None:
    """``devices`` sensors on the live broker, and lost-1 on an interface whose broker is down."""
    dead = free_port()
    path = tmp_path / "fleet.yaml"
    path.write_text(
        fleet_yaml(broker.url, prefix, devices=devices).replace(
            "interfaces:\n", f"interfaces:\n  dead: {{type: mqtt, url: 'mqtt://127.0.0.1:{dead}', topic_prefix: x}}\n"
        )
    )
    cli("devices", "import", str(path))
    cli("devices", "import", write(tmp_path, "d.csv", "name,type,interface\nlost-1,sensor-v2,dead\n"))


def _cams(cli, tmp_path, count: int) -> None:
    """cam-1 … cam-N on an http interface (they fetch their documents themselves)."""
    devices = "".join(f"  - {{name: cam-{i}, type: cam, interface: devapi}}\n" for i in range(1, count + 1))
    cli(
        "devices",
        "import",
        write(
            tmp_path,
            "cams.yaml",
            "interfaces:\n  devapi: {type: http, url: "
            "'http://127.0.0.1:1'}\ndevice_types:\n  cam: {}\n"
            f"devices:\n{devices}",
        ),
    )


def _report_valid(cli, devices) -> None:
    for device in devices:
        cli("devices", "report", device["device"], "report_interval:=30")


class Fleet:
    """The simulator and a state listener, in this process, for as long as a test needs."""

    def __init__(self, db_url: Path, **options) -> None:
        from campaignctl import db
        from campaignctl.simulator import Options, Simulator

        self.engine = db.create_engine(db_url)
        self.simulator = Simulator(self.engine, Options(**{"apply_delay": 0.1, "seed": 1, **options}))
        self._loop = asyncio.new_event_loop()
        self._stop = asyncio.Event()
        self._listen_stop = threading.Event()
        self._threads = [
            threading.Thread(target=lambda: self._loop.run_until_complete(self.simulator.run(self._stop))),
            threading.Thread(target=self._listen),
        ]

    def _listen(self) -> None:
        from campaignctl.listen import listen

        listen(self.engine, stop=self._listen_stop, flush_interval=0.05)

    def __enter__(self) -> "Fleet":
        for thread in self._threads:
            thread.start()
        time.sleep(0.5)  # subscribed
        return self

    def __exit__(self, *exc) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._listen_stop.set()
        for thread in self._threads:
            thread.join(20)
        self.engine.dispose()


def test_batches_are_decided_at_launch_canaries_first_and_stored(cli, fleet20, tmp_path):
    cli(
        "create",
        "-f",
        _campaign(
            tmp_path,
            """\
  batches: [2, 50%, 100%]
  canary: {tags: {ring: canary}}
  bake_time: 1h
""",
        ),
    )
    cli("launch", "roll")
    data = _status(cli)
    assert [(b["number"], b["size"]) for b in data["batches"]] == [(1, 2), (2, 8), (3, 10)]
    batches = _by_batch(data)
    assert sorted(d["device"] for d in batches[1]) == ["sensor-0001", "sensor-0002"]  # the canaries
    assert {d["status"] for d in batches[1]} == {"waiting"}
    assert {d["status"] for d in batches[2] + batches[3]} == {"pending"}
    assert batches[3][0]["reason"] == "batch 3 has not started"
    assert data["batches"][0]["status"] == "baking" and data["batches"][1]["status"] == "pending"
    # Deterministic: the same campaign name splits the same fleet the same way.
    from campaignctl.rollout import order_devices

    names = [(i, f"sensor-{i:04d}", i <= 2) for i in range(1, DEVICES + 1)]
    assert order_devices("roll", names) == order_devices("roll", list(reversed(names)))
    table = cli("status", "roll").stdout
    assert "batch" in table and "baking" in table


def test_batches_promote_only_when_the_success_threshold_is_met(cli, fleet20, tmp_path, broker, prefix):
    cli(
        "create",
        "-f",
        _campaign(
            tmp_path,
            """\
  batches: [2, 50%, 100%]
  canary: {tags: {ring: canary}}
  success_threshold: 100%
""",
        ),
    )
    sub = Subscriber(broker.port, f"{prefix}/+/config")
    try:
        cli("launch", "roll")
        batches = _by_batch(_status(cli))
        cli("tick")
        assert _status(cli)["batches"][1]["status"] == "pending"
        _report_valid(cli, batches[1][:1])
        cli("tick")
        assert _status(cli)["batches"][1]["status"] == "pending"  # 50% < 100%
        _report_valid(cli, batches[1][1:])
        cli("tick")
        data = _status(cli)
        assert [b["status"] for b in data["batches"]] == ["promoted", "baking", "pending"]
        assert {d["status"] for d in _by_batch(data)[2]} == {"waiting"}
        time.sleep(0.3)
        # Batch 3 has received nothing at all.
        got = {topic.split("/")[1] for topic in sub.messages}
        assert got == {d["device"] for d in batches[1] + batches[2]}
        _report_valid(cli, batches[2] + batches[3])
        cli("tick")
        data = _status(cli)
        assert data["status"] == "completed" and data["summary"]["valid"] == DEVICES
        assert [b["status"] for b in data["batches"]] == ["promoted"] * 3
    finally:
        sub.close()


def test_error_threshold_pauses_then_resume_accepts_the_batch(cli, fleet20, tmp_path, broker, prefix):
    cli(
        "create",
        "-f",
        _campaign(
            tmp_path,
            """\
  batches: [4, 100%]
  success_threshold: 50%
  error_threshold: 50%
  on_error: pause
""",
        ),
    )
    cli("launch", "roll")
    first = _by_batch(_status(cli))[1]
    # Two of the four devices of batch 1 are changed by hand: invalid.
    for device in first[:2]:
        cli("devices", "set-config", device["device"], "report_interval:=99", "--no-deliver")
    cli("tick")
    data = _status(cli)
    assert data["status"] == "paused"
    assert data["reason"].startswith("batch 1: 2 invalid of 4 devices (50%) reached the error threshold (50%)")
    assert data["batches"][0]["status"] == "tripped"
    assert {d["status"] for d in _by_batch(data)[2]} == {"pending"}
    assert cli("status", "roll", "--wait", code=5).stderr.strip().startswith("campaign roll: stopped: paused")
    assert "reached the error threshold" in cli("status", "roll").stdout
    # A paused campaign gets no new deliveries, even from the engine.
    cli("tick")
    assert _status(cli)["batches"][1]["status"] == "pending"
    result = cli("resume", "roll")
    assert "resumed" in result.stderr
    data = _status(cli)
    assert data["status"] == "running" and data["batches"][0]["status"] == "promoted"
    assert "accepted by a user" in data["batches"][0]["reason"]
    assert {d["status"] for d in _by_batch(data)[2]} == {"waiting"}
    # Batch 2 was written after the changes by hand: they still show, from between the
    # job's own writes.
    changed = {d["device"] for d in first[:2]}
    assert {d["device"] for d in data["devices"] if d["status"] == "invalid"} == changed
    assert data["summary"]["invalid"] == 2 and data["batches"][0]["summary"]["invalid"] == 2
    assert all(
        d["reason"].startswith("report_interval was changed after the campaign set it (by user at ")
        for d in data["devices"]
        if d["status"] == "invalid"
    )
    # The table judges the rows it shows; the rest is counted.
    assert "… 1 more device(s)" in cli("status", "roll", "--status", "invalid", "--limit", "1").stdout


def test_error_threshold_aborts_and_cancels_the_rest(cli, fleet20, tmp_path, broker, prefix):
    cli(
        "create",
        "-f",
        _campaign(
            tmp_path,
            """\
  batches: [4, 100%]
  error_threshold: 25%
  on_error: abort
""",
        ),
    )
    cli("launch", "roll")
    first = _by_batch(_status(cli))[1]
    cli("devices", "set-config", first[0]["device"], "report_interval:=99", "--no-deliver")
    cli("tick")
    data = _status(cli)
    assert data["status"] == "aborted" and "error threshold (25%)" in data["reason"]
    assert data["summary"]["cancelled"] == DEVICES - 4
    assert data["job"]["status"] == "failed" and data["job"]["step"] == "done"
    assert all(d["reason"].startswith("batch 1: 1 invalid of 4") for d in _by_batch(data)[2])
    assert cli("status", "roll", "--wait", code=5).stderr.strip().startswith("campaign roll: stopped: aborted")
    assert "only a paused campaign" in cli("resume", "roll", code=1).stderr


def test_a_batch_that_can_no_longer_succeed_pauses(cli, tmp_path, broker, prefix):
    _fleet_with_a_lost_device(cli, tmp_path, broker, prefix, devices=4)
    cli(
        "create",
        "-f",
        _campaign(
            tmp_path,
            """\
  batch_size: 5
  success_threshold: 100%
""",
        ),
    )
    cli("launch", "roll", "--attempts", "1", "--ack-timeout", "0.5")
    data = _status(cli)
    assert data["status"] == "paused"
    assert data["reason"] == (
        "batch 1 can no longer reach the success threshold (100%): 0 valid, 1 failed, invalid or timed out of 5"
    )


@pytest.mark.parametrize("backend", ["sqlite"])  # timing is the engine's; across workers on PostgreSQL: test_workers
def test_bake_time_and_rate_limit_are_honoured(cli, fleet20, tmp_path, db_url):
    cli(
        "create",
        "-f",
        _campaign(
            tmp_path,
            """\
  batches: [10, 100%]
  bake_time: 2s
  success_threshold: 0%
  max_per_minute: 600
""",
        ),
    )
    started = time.monotonic()
    cli("launch", "roll")
    released = time.monotonic() - started
    stamps = sorted(
        datetime.fromisoformat(r[0].replace("Z", "+00:00")).timestamp()
        for r in query(db_url, "SELECT delivered_at FROM job_item WHERE batch = 1")
    )
    # 600/min is 10 a second: 10 devices are spread over about a second (the first at once).
    assert 0.7 <= stamps[-1] - stamps[0] <= 2.0, stamps[-1] - stamps[0]
    assert released >= 0.8
    cli("tick")
    assert _status(cli)["batches"][1]["status"] == "pending"  # still baking
    code = cli("status", "roll", "--wait", "--timeout", "5s", "--min-valid", "0%", code=None).exit_code
    data = _status(cli)
    batch1, batch2 = data["batches"]
    delivered = datetime.fromisoformat(batch1["delivered_at"].replace("Z", "+00:00"))
    begun = datetime.fromisoformat(batch2["started_at"].replace("Z", "+00:00"))
    assert 2.0 <= (begun - delivered).total_seconds() <= 4.5
    assert code == 4  # the devices never report: they stay waiting


def test_start_at_launches_via_tick(cli, fleet20, tmp_path):
    start = (datetime.now(timezone.utc) + timedelta(seconds=2)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    cli("create", "-f", _campaign(tmp_path, "  batch_size: 20\n", extra=f"start_at: {start}\n"))
    result = cli("launch", "roll")
    assert "scheduled for" in result.stderr
    data = _status(cli)
    assert data["status"] == "scheduled" and data["job"] is None and data["start_at"].startswith(start[:19])
    assert {d["reason"] for d in data["devices"]} == {"the campaign is scheduled"}
    assert cli.json("tick") == []
    time.sleep(2.1)
    [result] = cli.json("tick")
    assert result["campaign"] == "roll" and result["outcome"] == "waiting"
    data = _status(cli)
    assert data["status"] == "running" and data["summary"]["waiting"] == DEVICES


def test_start_at_launches_via_run_and_now_overrides(cli, fleet20, tmp_path, db_url):
    start = (datetime.now(timezone.utc) + timedelta(seconds=3)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    later = (datetime.now(timezone.utc) + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    cli("create", "-f", _campaign(tmp_path, "  batch_size: 20\n", extra=f"start_at: {start}\n"))
    cli("create", "-f", _campaign(tmp_path, "  batch_size: 20\n", name="later", extra=f"start_at: {later}\n"))
    assert "scheduled for" in cli("launch", "roll").stderr  # the worker, not the launch, starts it
    cli("launch", "later", "--now", "--force")  # both set report_interval
    assert _status(cli, "later")["status"] == "running"
    worker = subprocess.Popen(
        campaignctl_cmd("--db", str(db_url), "run", "--interval", "0.2"),
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: _status(cli)["status"] == "running", timeout=30)
    finally:
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=20)
    assert worker.returncode == 0 and "roll: started" in err, err


def test_pause_resume_cancel_through_the_cli(cli, fleet20, tmp_path, broker, prefix):
    cli(
        "create",
        "-f",
        _campaign(
            tmp_path,
            """\
  batches: [5, 10, 100%]
  success_threshold: 100%
""",
        ),
    )
    cli("launch", "roll")
    first = _by_batch(_status(cli))[1]
    cli("pause", "roll")
    data = _status(cli)
    assert data["status"] == "paused" and data["reason"].startswith("paused by a user")
    assert data["job"]["status"] == "paused"
    _report_valid(cli, first)
    cli("tick")  # batch 1 is good, but the campaign is paused: nothing new goes out
    data = _status(cli)
    assert data["batches"][1]["status"] == "pending" and data["job"]["status"] == "paused"
    cli("pause", "roll")  # pausing twice is harmless
    cli("resume", "roll")  # continues where it stopped: batch 1 promoted, batch 2 out
    data = _status(cli)
    assert data["status"] == "running" and [b["status"] for b in data["batches"]] == ["promoted", "baking", "pending"]
    assert {d["status"] for d in _by_batch(data)[2]} == {"waiting"}
    # Cancel now: batch 3 is never touched; what was delivered stays.
    sub = Subscriber(broker.port, f"{prefix}/+/config")
    try:
        time.sleep(0.3)
        before = set(sub.messages)
        result = cli("cancel", "roll")
        assert "cancelled; 15 device(s) keep what they received, 5 will never receive it" in result.stdout
        time.sleep(0.3)
        assert set(sub.messages) == before and len(before) == 15
    finally:
        sub.close()
    data = _status(cli)
    assert data["status"] == "cancelled" and data["summary"]["cancelled"] == 5
    assert data["summary"]["valid"] == 5 and data["summary"]["waiting"] == 10
    assert {d["reason"] for d in _by_batch(data)[3]} == {"the campaign was cancelled"}
    assert [b["status"] for b in data["batches"]] == ["promoted", "cancelled", "cancelled"]
    assert cli("status", "roll", "--wait", code=None).exit_code == 3
    assert "only a scheduled, running or paused" in cli("cancel", "roll", code=1).stderr
    assert "only a paused campaign" in cli("resume", "roll", code=1).stderr


def test_cancel_puts_back_what_an_unfetched_document_would_have_changed(cli, tmp_path):
    _cams(cli, tmp_path, 2)
    cli("devices", "set-config", "cam-1", "report_interval:=10")
    version = cli.json("devices", "show", "cam-1")["version"]
    cli(
        "create",
        "-f",
        write(
            tmp_path,
            "c.yaml",
            """\
        name: cams
        devices: {names: [cam-1, cam-2]}
        configurations: {report_interval: 30, mode: eco}
        """,
        ),
    )
    cli("launch", "cams")
    assert {e["key"]: e["desired"] for e in cli.json("devices", "show", "cam-1")["configuration"]} == {
        "report_interval": 30,
        "mode": "eco",
    }
    cli("cancel", "cams")
    cam1 = cli.json("devices", "show", "cam-1")
    entries = {e["key"]: e for e in cam1["configuration"]}
    assert entries["report_interval"]["desired"] == 10 and entries["report_interval"]["desired_by"] == "user"
    assert entries["mode"]["desired"] is None  # it had no value before the campaign
    assert cam1["version"] > version  # versions only grow, even when putting back
    assert _status(cli, "cams")["summary"]["cancelled"] == 2


def test_retry_redelivers_failed_devices_as_a_new_step(cli, tmp_path, prefix):
    port = free_port()
    import_fleet(cli, tmp_path, f"mqtt://127.0.0.1:{port}", prefix, 3)
    cli(
        "create",
        "-f",
        write(
            tmp_path,
            "c.yaml",
            """\
        name: later
        devices: {selector: {type: sensor-v2}}
        configurations: {report_interval: 30}
        """,
        ),
    )
    cli("launch", "later", "--attempts", "1", "--ack-timeout", "0.5", code=1)
    assert _status(cli, "later")["summary"]["failed"] == 3
    broker = Broker(tmp_path, port).start()
    try:
        assert "not failed in campaign 'later': ghost" in cli("retry", "later", "--device", "ghost", code=1).stderr
        cli("retry", "later", "--device", "sensor-0001")
        data = _status(cli, "later")
        states = {d["device"]: d["status"] for d in data["devices"]}
        # No expected state: delivered is valid.
        assert states == {"sensor-0001": "valid", "sensor-0002": "failed", "sensor-0003": "failed"}
        result = cli("retry", "later")
        assert "job 1: success" in result.stdout
        assert _status(cli, "later")["summary"]["valid"] == 3
        job = cli.json("jobs", "show", "1")
        assert [s["kind"] for s in job["steps"]] == ["batch", "retry", "retry"]
        history = [(h["device"], h["step"], h["status"]) for h in job["history"]]
        assert history == [("sensor-0001", 2, "failed"), ("sensor-0002", 3, "failed"), ("sensor-0003", 3, "failed")]
        assert all("Connection refused" in h["error"] for h in job["history"])
        assert "no failed device to retry" in cli("retry", "later", code=1).stderr
    finally:
        broker.stop()


def test_sigkill_of_a_worker_mid_rollout_then_restart(cli, fleet20, tmp_path, db_url, broker, prefix):
    cli(
        "create",
        "-f",
        _campaign(
            tmp_path,
            """\
  batches: [5, 100%]
  success_threshold: 0%
  bake_time: 1s
  max_per_minute: 300
""",
        ),
    )
    sub = Subscriber(broker.port, f"{prefix}/+/config")
    env = subprocess_env()
    try:
        cli("launch", "roll")  # batch 1 now, 5 devices at 5 a second; batch 2 after the bake time, by the worker
        worker = subprocess.Popen(
            campaignctl_cmd("--db", str(db_url), "run", "--interval", "0.1"),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        def delivered() -> int:
            return query(db_url, "SELECT count(*) FROM job_item WHERE batch = 2 AND status = 'delivered'")[0][0]

        wait_until(lambda: delivered() >= 3, timeout=20, interval=0.02)
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        assert delivered() < 15
        worker = subprocess.Popen(
            campaignctl_cmd("--db", str(db_url), "run", "--interval", "0.1"),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_until(lambda: _status(cli)["status"] == "completed", timeout=30)
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(20)
        time.sleep(0.3)
        messages = dict(sub.messages)
    finally:
        sub.close()
    data = _status(cli)
    assert data["summary"]["waiting"] == DEVICES and data["job"]["counts"]["delivered"] == DEVICES
    # Every device got one version of the campaign (a document re-sent after the kill is the same one).
    assert len(messages) == DEVICES
    assert all(len({m["version"] for m in docs}) == 1 for docs in messages.values())
    assert query(
        db_url,
        "SELECT count(*) FROM job_item ji JOIN device_config c ON c.device_id = ji.device_id "
        "AND c.key = 'report_interval' WHERE c.desired_revision != ji.revision",
    ) == [(0,)]


@pytest.mark.parametrize("backend", ["sqlite"])  # exit codes read the supervision, the same on both backends
def test_wait_exit_codes_driven_by_the_simulator(cli, fleet20, tmp_path, db_url):
    # 0: every device applies the configuration.
    cli("create", "-f", _campaign(tmp_path, "  batches: [5, 100%]\n", name="good"))
    with Fleet(db_url):
        result = cli("launch", "good", "--wait", "--timeout", "30s")
    assert result.exit_code == 0 and "completed (exit 0)" in result.stderr
    assert _status(cli, "good")["summary"]["valid"] == DEVICES

    # 3 below --min-valid, and 0 above it: failing devices time out.
    spec = "  batch_size: 20\n  success_threshold: 0%\n  device_timeout: 2s\n"
    extra = "configurations: {report_interval: 45}\nexpected_state: {report_interval: 45}\n"
    for name, min_valid, code in (("lossy", "100%", 3), ("lossy-ok", "50%", 0)):
        path = _campaign(tmp_path, spec, name=name).replace("", "")
        text = (
            Path(path)
            .read_text()
            .replace("configurations: {report_interval: 30}\nexpected_state: {report_interval: 30}\n", extra)
        )
        Path(path).write_text(text)
        cli("create", "-f", path)
        with Fleet(db_url, fail_rate=0.3, seed=4):
            result = cli("launch", name, "--wait", "--timeout", "30s", "--min-valid", min_valid, code=code)
        summary = _status(cli, name)["summary"]
        assert summary["timed_out"] > 0 and summary["valid"] + summary["timed_out"] == DEVICES
        extra = extra.replace("45", "46")

    # 4: nobody reports in time.
    cli(
        "create",
        "-f",
        _campaign(tmp_path, "  batch_size: 20\n", name="silent").replace("report_interval: 30", "report_interval: 47"),
    )
    cli("launch", "silent")
    started = time.monotonic()
    cli("status", "silent", "--wait", "--timeout", "1s", code=4)
    assert time.monotonic() - started < 5

    # 5: the error threshold trips.
    cli(
        "create",
        "-f",
        _campaign(tmp_path, "  batch_size: 20\n  error_threshold: 10%\n  device_timeout: 2s\n", name="broken").replace(
            "report_interval: 30", "report_interval: 48"
        ),
    )
    with Fleet(db_url, fail_rate=0.5, seed=2):
        # --force: "silent" (still running) sets report_interval on the same devices.
        result = cli("launch", "broken", "--force", "--wait", "--timeout", "30s", "-o", "json", code=5)
    data = json.loads(result.stdout)
    assert data["exit_code"] == 5 and data["status"] == "paused" and "error threshold (10%)" in data["reason"]


def test_resume_after_a_trip_before_the_batch_was_delivered(cli, tmp_path, prefix):
    dead = free_port()
    import_fleet(cli, tmp_path, f"mqtt://127.0.0.1:{dead}", prefix, 4)
    cli("create", "-f", _campaign(tmp_path, "  batches: [2, 100%]\n  error_threshold: 50%\n"))
    result = cli("launch", "roll", "--attempts", "1", "--ack-timeout", "0.5")
    assert "campaign roll: paused: batch 1: 2 failed of 2 devices (100%)" in result.stderr
    cli("resume", "roll", code=None)  # its devices still fail: the job ends failed
    data = _status(cli)
    assert data["batches"][0]["status"] == "promoted" and "accepted by a user" in data["batches"][0]["reason"]
    assert data["batches"][1]["status"] != "pending"  # the rollout went on
    assert cli.json("tick") is not None  # and the engine keeps working


def test_apply_sees_rollout_and_start_changes(cli, fleet20, tmp_path):
    path = _campaign(tmp_path, "  batches: [1, 100%]\n")
    cli("apply", "-f", path)
    changed = Path(path).read_text().replace("[1, 100%]", "[2, 100%]")
    Path(path).write_text(changed + "start_at: 2030-01-01T00:00:00Z\n")
    assert cli("apply", "-f", path).stdout.strip() == "campaign roll: updated (start_at, rollout)"
    assert cli.json("show", "roll")["rollout"]["batches"] == [2, "100%"]


def test_a_canary_selector_that_picks_nothing_is_an_error(cli, fleet20, tmp_path):
    path = _campaign(tmp_path, "  batches: [1, 100%]\n  canary: {tags: {ring: canray}}\n")
    result = cli("create", "-f", path, code=1)
    assert "roll.yaml:7: rollout.canary: the canary selector picks none of the campaign's devices" in result.stderr


def test_launch_wait_gates_on_the_outcome_even_when_deliveries_failed(cli, broker, prefix, tmp_path):
    _fleet_with_a_lost_device(cli, tmp_path, broker, prefix, devices=1)
    cli(
        "create",
        "-f",
        write(tmp_path, "c.yaml", "name: mix\ndevices: {selector: {type: sensor-v2}}\nconfigurations: {mode: eco}\n"),
    )
    result = cli("launch", "mix", "--wait", "--min-valid", "50%", "--attempts", "1", "--ack-timeout", "0.5")
    assert "completed (exit 0)" in result.stderr
    cli(
        "create",
        "-f",
        write(
            tmp_path, "d.yaml", "name: mix2\ndevices: {selector: {type: sensor-v2}}\nconfigurations: {mode: boost}\n"
        ),
    )
    cli("launch", "mix2", "--wait", "--attempts", "1", "--ack-timeout", "0.5", code=3)


def test_launch_json_of_a_scheduled_campaign(cli, fleet20, tmp_path):
    cli("create", "-f", _campaign(tmp_path, "  batch_size: 20\n", extra="start_at: 2030-01-01T00:00:00Z\n"))
    assert cli.json("launch", "roll") == {
        "campaign": "roll",
        "status": "scheduled",
        "start_at": "2030-01-01T00:00:00.000000Z",
        "job": None,
    }
    assert "starts at 2030-01-01 00:00:00 UTC" in cli("status", "roll").stdout


def test_cancel_during_an_mqtt_delivery_leaves_the_broker_consistent(cli, broker, prefix, tmp_path, db_url):
    """What the broker holds is what the supervision says was delivered; cancelled
    devices got nothing."""
    count = 20000
    csv_fleet(cli, tmp_path, broker.url, prefix, count, name="m", campaign="big")
    launch = subprocess.Popen(
        campaignctl_cmd("--db", str(db_url), "launch", "big", "--window", "1"),
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    def delivered() -> int:
        return query(db_url, "SELECT count(*) FROM job_item WHERE status = 'delivered'")[0][0]

    wait_until(lambda: delivered() > 0, timeout=30, interval=0.02)
    cli("cancel", "big")
    launch.communicate(timeout=30)
    data = _status(cli, "big")
    kept = {d["device"] for d in data["devices"] if d["status"] != "cancelled"}
    assert 0 < len(kept) < count and data["summary"]["cancelled"] == count - len(kept)
    sub = Subscriber(broker.port, f"{prefix}/+/config")

    def on_broker() -> set[str]:
        return {topic.split("/")[1] for topic in list(sub.messages)}

    try:
        # The broker sends its retained messages in one burst on subscription: once as
        # many have come as were delivered, any extra one would have come with them.
        wait_until(lambda: len(on_broker()) >= len(kept), timeout=60)
        assert on_broker() == kept
    finally:
        sub.close()


def test_retried_timed_out_devices_keep_what_they_had_on_cancel(cli, tmp_path, db_url):
    from conftest import http

    from campaignctl import db
    from campaignctl.server import Server

    _cams(cli, tmp_path, 1)
    cli(
        "create",
        "-f",
        write(
            tmp_path,
            "c.yaml",
            """\
        name: ri
        devices: {names: [cam-1]}
        configurations: {report_interval: 30}
        expected_state: {report_interval: 30}
        rollout: {success_threshold: 0%, device_timeout: 1s}
        """,
        ),
    )
    engine = db.create_engine(db_url)
    server = Server(engine, port=0, listen_mqtt=False, engine_interval=None).start()
    try:
        cli("launch", "ri")
        secret = cli("devices", "credentials", "cam-1").stdout.strip()
        url = f"http://127.0.0.1:{server.port}/v1/devices/cam-1/configuration"
        assert json.loads(http("GET", url, headers={"Authorization": f"Bearer {secret}"})[2])["configuration"] == {
            "report_interval": 30
        }
        time.sleep(1.2)
        assert _status(cli, "ri")["devices"][0]["status"] == "timed_out"
        cli("retry", "ri", "--timed-out")
        cli("cancel", "ri")
        document = json.loads(http("GET", url, headers={"Authorization": f"Bearer {secret}"})[2])
    finally:
        server.stop()
    assert document["configuration"] == {"report_interval": 30}  # not rolled back: it had it
    assert _status(cli, "ri")["devices"][0]["status"] != "cancelled"


def test_a_worker_gives_a_slow_rollout_a_time_slice(cli, fleet20, tmp_path, db_url):
    from campaignctl import db, jobs
    from campaignctl import worker as rollout

    cli("create", "-f", _campaign(tmp_path, "  batch_size: 20\n  success_threshold: 0%\n  max_per_minute: 60\n"))
    engine = db.create_engine(db_url)
    job_id, owner = jobs.launch(engine, "roll")  # created, not run: the worker takes it
    jobs.release(engine, job_id, owner)
    started = time.monotonic()
    [result] = rollout.tick(engine, slice_seconds=1.0)
    assert result["outcome"] == "waiting" and time.monotonic() - started < 3
    delivered = _status(cli)["job"]["counts"]["delivered"]
    assert 1 <= delivered < 20  # 60 a minute: one a second


def test_canary_errors_name_the_canary_field(cli, fleet20, tmp_path):
    path = _campaign(tmp_path, "  batches: [1, 100%]\n  canary: {names: [sensor-0001, ghost-9]}\n")
    assert "rollout.canary.names[1]: unknown device(s): ghost-9" in cli("create", "-f", path, code=1).stderr
    path = _campaign(tmp_path, "  batches: [1, 100%]\n  canary: {type: toaster}\n")
    assert "rollout.canary.type: unknown device type 'toaster'" in cli("create", "-f", path, code=1).stderr
