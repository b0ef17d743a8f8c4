"""Crash safety of the launch job: real SIGKILLs, resume, leases, concurrent launches."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import (
    Broker,
    Subscriber,
    campaignctl_cmd,
    fleet_yaml,
    free_port,
    import_fleet,
    query,
    subprocess_env,
    write,
)

DEVICES = 1500


def _csv_fleet(tmp_path: Path, url: str, prefix: str, count: int) -> tuple[str, str]:
    head = tmp_path / "fleet.yaml"
    head.write_text(fleet_yaml(url, prefix, devices=0))
    csv = tmp_path / "devices.csv"
    csv.write_text(
        "name,type,interface,tags\n"
        + "".join(f"dev-{i:05d},sensor-v2,broker,ring={'canary' if i < 10 else 'main'}\n" for i in range(count))
    )
    return str(head), str(csv)


def _items(db: str) -> dict[str, int]:
    from sqlalchemy.exc import OperationalError

    try:
        return dict(query(db, "SELECT status, count(*) FROM job_item GROUP BY status"))
    except OperationalError:  # locked, or not yet created
        return {}


def _kill_when(proc: subprocess.Popen, db: str, condition, timeout: float = 30) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        counts = _items(db)
        if condition(counts):
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return _items(db)
        if proc.poll() is not None:
            pytest.fail(f"the job ended before it could be killed: {proc.stderr.read()}")
        time.sleep(0.002)
    proc.kill()
    pytest.fail(f"condition never met: {_items(db)}")


def test_sigkill_during_write_and_delivery_then_resume_loses_nothing(cli, broker, prefix, tmp_path, db_url):
    head, csv = _csv_fleet(tmp_path, broker.url, prefix, DEVICES)
    cli("devices", "import", head)
    cli("devices", "import", csv)
    cli(
        "create",
        "-f",
        write(
            tmp_path,
            "c.yaml",
            """\
        name: crash
        devices: {selector: {type: sensor-v2}}
        configurations: {report_interval: 30, mode: eco}
        expected_state: {report_interval: 30}
        """,
        ),
    )
    env = subprocess_env()
    db = ["--db", str(db_url)]

    # 1. Killed while writing desired entries (small chunks make the write step long enough).
    proc = subprocess.Popen(
        campaignctl_cmd(*db, "launch", "crash", "--chunk-size", "10", "--window", "1"),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    counts = _kill_when(proc, db_url, lambda c: c.get("syncing", 0) > 0 and c.get("pending", 0) > 0)
    assert counts.get("pending", 0) > 0 and counts.get("delivered", 0) == 0

    # 2. Resumed, and killed again once delivering (documents on the wire, not all recorded).
    proc = subprocess.Popen(
        campaignctl_cmd(*db, "jobs", "resume", "1"), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    counts = _kill_when(proc, db_url, lambda c: c.get("pending", 0) == 0 and c.get("syncing", 0) > 0)
    assert counts.get("pending", 0) == 0 and counts.get("delivered", 0) < DEVICES

    # 3. Resumed to the end.
    done = subprocess.run(
        campaignctl_cmd(*db, "jobs", "resume", "1"), env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert f"{DEVICES} delivered, 0 failed" in done.stdout

    # Every device was written exactly once, under the revision its job item records.
    rows = query(
        db_url,
        "SELECT ji.status, ji.revision, c.key, c.desired, c.desired_revision, c.desired_by FROM job_item ji "
        "JOIN device_config c ON c.device_id = ji.device_id ORDER BY ji.device_id, c.key",
    )
    assert len(rows) == 2 * DEVICES
    assert {r[0] for r in rows} == {"delivered"}
    assert all(r[1] == r[4] and r[5] == "job:1" for r in rows)
    assert {(r[2], r[3]) for r in rows} == {("mode", '"eco"'), ("report_interval", "30")}
    revisions = query(db_url, "SELECT count(DISTINCT revision) FROM job_item")[0][0]
    assert revisions == query(db_url, "SELECT value FROM meta WHERE key = 'revision'")[0][0]

    # And the broker holds every device's document.
    sub = Subscriber(broker.port, f"{prefix}/+/config")
    try:
        messages = sub.wait_for(DEVICES, timeout=20)
    finally:
        sub.close()
    assert all(docs[-1]["configuration"] == {"mode": "eco", "report_interval": 30} for docs in messages.values())
    assert cli.json("status", "crash")["summary"]["waiting"] == DEVICES


def test_a_job_run_by_a_live_process_is_not_resumed_by_another(cli, tmp_path, prefix, db_url):
    port = free_port()  # the broker is down: the job keeps retrying
    import_fleet(cli, tmp_path, f"mqtt://127.0.0.1:{port}", prefix, 3)
    cli(
        "create",
        "-f",
        write(
            tmp_path,
            "c.yaml",
            """\
        name: busy
        devices: {selector: {type: sensor-v2}}
        configurations: {report_interval: 30}
        """,
        ),
    )
    env = subprocess_env()
    proc = subprocess.Popen(
        campaignctl_cmd(
            "--db",
            str(db_url),
            "launch",
            "busy",
            "--attempts",
            "50",
            "--backoff",
            "0.5",
            "--max-backoff",
            "0.5",
            "--ack-timeout",
            "0.5",
        ),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while _items(db_url).get("syncing", 0) != 3:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        refused = cli("jobs", "resume", "1", code=1)
        assert f"is being run by process {proc.pid}" in refused.stderr
        assert cli.json("jobs", "show", "1")["running"] is True
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # Its owner is dead: the lease no longer protects the job, and the broker is back.
    broker = Broker(tmp_path, port).start()
    try:
        result = cli("jobs", "resume", "1")
        assert "3 delivered, 0 failed" in result.stdout
        assert cli.json("jobs", "show", "1")["running"] is False
        cli("jobs", "resume", "1", code=1)  # finished jobs are not run again
    finally:
        broker.stop()


def test_two_concurrent_launches_make_exactly_one_job(cli, fleet, tmp_path, db_url):
    cli(
        "create",
        "-f",
        write(
            tmp_path,
            "c.yaml",
            """\
        name: race
        devices: {selector: {type: sensor-v2}}
        configurations: {report_interval: 30}
        """,
        ),
    )
    env = subprocess_env()
    procs = [
        subprocess.Popen(
            campaignctl_cmd("--db", str(db_url), "launch", "race"),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [(p.wait(60), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 1], results
    loser = next(err for code, err in results if code == 1)
    assert "Error: campaign 'race' was already launched" in loser
    jobs = cli.json("jobs", "list")
    assert len(jobs) == 1 and jobs[0]["total"] == 4 and jobs[0]["status"] == "success"
    assert query(db_url, "SELECT count(*) FROM job_item") == [(4,)]


def test_launch_refuses_a_launched_campaign_and_resume_of_unknown_job(cli, fleet, tmp_path):
    cli(
        "create",
        "-f",
        write(
            tmp_path,
            "c.yaml",
            """\
        name: once
        devices: {names: [sensor-0001]}
        configurations: {report_interval: 30}
        """,
        ),
    )
    cli("launch", "once")
    again = cli("launch", "once", code=1)
    assert again.stderr.strip() == "Error: campaign 'once' was already launched (completed, job 1)"
    assert cli("jobs", "resume", "9", code=1).stderr.strip() == "Error: no job 9"
    assert cli("launch", "nope", code=1).stderr.strip() == "Error: no campaign named 'nope'"
