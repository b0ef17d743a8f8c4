"""Distributed delivery: several worker processes share one campaign's shards."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import Subscriber, campaignctl_cmd, csv_fleet, query, subprocess_env, wait_until, write

DEVICES = 20_000


@pytest.fixture
def big_fleet(cli, broker, prefix, tmp_path) -> int:
    csv_fleet(cli, tmp_path, broker.url, prefix, DEVICES, name="w", campaign="big")
    return DEVICES


class Workers:
    """``campaignctl run --processes N``, stopped (SIGTERM) at the end of the test."""

    def __init__(self, db_url: str, processes: int) -> None:
        self.proc = subprocess.Popen(
            campaignctl_cmd("--db", db_url, "run", "--interval", "0.2", "--processes", str(processes)),
            env=subprocess_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        _out, err = self.proc.communicate(timeout=60)
        return err


def _shards(db_url: str) -> list[tuple]:
    return query(db_url, "SELECT number, status, worker, delivered, failed FROM job_shard ORDER BY number")


def _delivered(db_url: str) -> int:
    return query(db_url, "SELECT count(*) FROM job_item WHERE status = 'delivered'")[0][0]


def _check_broker(broker, prefix: str, db_url: str) -> None:
    """Every device's retained document is the one its job item recorded."""
    versions = dict(query(db_url, "SELECT d.name, ji.revision FROM job_item ji JOIN device d ON d.id = ji.device_id"))
    sub = Subscriber(broker.port, f"{prefix}/+/config")
    try:
        messages = sub.wait_for(len(versions), timeout=60)
        retained = dict(sub.retained)
    finally:
        sub.close()
    assert len(messages) == len(versions) == DEVICES
    for topic, docs in messages.items():
        assert docs[-1] == {"version": versions[topic.split("/")[1]], "configuration": {"mode": "eco"}}, topic
    assert all(retained.values())


# The backend workers share a queue on (SQLite: test_launch_shares_its_delivery_with_helper_processes).
@pytest.mark.parametrize("backend", ["postgresql"])
def test_three_workers_share_the_delivery(cli, big_fleet, broker, prefix, db_url):
    workers = Workers(db_url, 3)
    try:
        job = cli.json("launch", "big", "--detach", "--shard-size", "1000")
        assert job["counts"]["delivered"] == 0  # --detach delivers nothing itself
        wait_until(
            lambda: cli.json("status", "big", "--limit", "1")["status"] == "completed", timeout=120, interval=0.5
        )
    finally:
        err = workers.stop()
    shown = cli.json("jobs", "show", str(job["id"]))
    shards = shown["shards"]
    assert len(shards) == DEVICES // 1000 and {s["status"] for s in shards} == {"done"}, err
    assert sum(s["delivered"] for s in shards) == DEVICES and not any(s["failed"] for s in shards)
    assert len({s["worker"] for s in shards}) >= 2, shards
    assert shown["counts"]["delivered"] == DEVICES
    _check_broker(broker, prefix, db_url)
    table = cli("jobs", "show", str(job["id"])).stdout
    assert "shards" in table and "done" in table


def test_a_killed_worker_s_shard_is_finished_by_the_others(cli, big_fleet, broker, prefix, db_url):
    workers = Workers(db_url, 3)
    try:
        # A small window makes shards last long enough to kill a worker in the middle of one.
        cli("launch", "big", "--detach", "--shard-size", "2000", "--window", "20")

        def busy_worker() -> int | None:
            for _n, status, worker, _d, _f in _shards(db_url):
                if status == "running" and worker:
                    return int(worker.split(":")[1])
            return None

        pid = wait_until(busy_worker, timeout=60, interval=0.05)
        os.kill(pid, signal.SIGKILL)
        killed_at = _delivered(db_url)
        assert killed_at < DEVICES
        wait_until(
            lambda: cli.json("status", "big", "--limit", "1")["status"] == "completed", timeout=180, interval=0.5
        )
    finally:
        workers.stop()
    assert _delivered(db_url) == DEVICES
    shards = _shards(db_url)
    assert {s[1] for s in shards} == {"done"}
    assert not any(str(pid) == s[2].split(":")[1] for s in shards)  # another worker finished its shard
    _check_broker(broker, prefix, db_url)


@pytest.mark.parametrize("backend", ["postgresql"])  # workers on several machines share PostgreSQL
def test_a_pause_stops_every_worker(cli, big_fleet, broker, prefix, db_url):
    workers = Workers(db_url, 3)
    try:
        cli("launch", "big", "--detach", "--shard-size", "1000", "--window", "20")
        wait_until(lambda: len({s[2] for s in _shards(db_url) if s[1] == "running"}) >= 2, timeout=60, interval=0.05)
        cli("pause", "big")
        # Every worker gives its shard back within one flush of its deliveries.
        wait_until(lambda: not any(s[1] == "running" for s in _shards(db_url)), timeout=20, interval=0.05)
        stopped_at = _delivered(db_url)
        assert stopped_at < DEVICES
        time.sleep(1.0)  # nothing more is delivered while paused (a check, not a wait for a condition)
        assert _delivered(db_url) == stopped_at
        cli("resume", "big", "--output", "json")
        wait_until(
            lambda: cli.json("status", "big", "--limit", "1")["status"] == "completed", timeout=180, interval=0.5
        )
    finally:
        workers.stop()
    assert _delivered(db_url) == DEVICES


@pytest.mark.parametrize("backend", ["postgresql"])  # workers on several machines share PostgreSQL
def test_launch_without_detach_accepts_help_from_workers(cli, big_fleet, db_url, tmp_path: Path):
    workers = Workers(db_url, 2)
    try:
        # The launching process drives the job and delivers shards; the workers claim others.
        wait_until(lambda: query(db_url, "SELECT 1") == [(1,)], timeout=10)
        result = cli.json("launch", "big", "--shard-size", "500", "--window", "50")
    finally:
        workers.stop()
    assert result["counts"]["delivered"] == DEVICES
    assert len({s["worker"] for s in result["shards"]}) >= 2


def test_listeners_of_a_share_group_split_the_state_messages(cli, fleet, broker, prefix, db_url):
    import threading

    from conftest import publish

    from campaignctl import db
    from campaignctl.listen import listen

    engine = db.create_engine(db_url)
    stop = threading.Event()
    subscribed: list[str] = []
    stats: list = []

    def run() -> None:
        stats.append(listen(engine, share="ingest", stop=stop, info=subscribed.append))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: sum("subscribed to $share/ingest/" in m for m in subscribed) == 2, timeout=20)
        for n in range(100):  # a key per message: the group gives no order between listeners
            publish(broker.port, f"{prefix}/sensor-000{n % 4 + 1}/state", f'{{"counter_{n}": {n}}}')
        wait_until(
            lambda: query(db_url, "SELECT count(*) FROM device_config WHERE key LIKE 'counter_%'") == [(100,)],
            timeout=30,
        )
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        engine.dispose()
    # Each message was handled by exactly one of the two listeners, and both had a share.
    assert sum(s.messages for s in stats) == 100 and all(s.messages for s in stats), stats
    assert "share group 'no/slash' is not valid" in cli("listen", "--share", "no/slash", code=1).stderr


@pytest.mark.parametrize("backend", ["postgresql"])  # workers on several machines share PostgreSQL
def test_the_rate_limit_holds_across_workers(cli, broker, prefix, tmp_path, db_url):
    from datetime import datetime

    from conftest import import_fleet

    import_fleet(cli, tmp_path, broker.url, prefix, 30)
    cli(
        "create",
        "-f",
        write(
            tmp_path,
            "r.yaml",
            "name: paced\ndevices: {selector: {type: sensor-v2}}\n"
            "configurations: {mode: eco}\n"
            "rollout: {batch_size: 30, max_per_minute: 600}\n",
        ),
    )
    workers = Workers(db_url, 3)
    try:
        cli("launch", "paced", "--detach", "--shard-size", "1")
        wait_until(
            lambda: cli.json("status", "paced", "--limit", "0")["status"] == "completed", timeout=60, interval=0.2
        )
    finally:
        workers.stop()
    assert query(db_url, "SELECT count(*) FROM job_item WHERE status = 'delivered'") == [(30,)]
    stamps = sorted(
        datetime.fromisoformat(r[0].replace("Z", "+00:00")).timestamp()
        for r in query(db_url, "SELECT desired_at FROM device_config WHERE key = 'mode'")
    )
    # 600 a minute is 10 a second, whoever delivers: the release starts with one token and
    # gains 10 a second, so the 30th device is written 2.9 s after the first at the
    # earliest. (Delivery stamps would add each delivery's own delay, e.g. a worker's
    # first connection to the broker.)
    assert len(stamps) == 30 and stamps[-1] - stamps[0] >= 2.5, stamps[-1] - stamps[0]


def test_launch_shares_its_delivery_with_helper_processes(cli, tmp_path, db_url):
    """launch --processes N: other processes claim shards while the launching one
    delivers; every device gets its document once."""
    from test_webhook import MisbehavingApi, _fleet

    api = MisbehavingApi().start()
    try:
        names = [f"gate-{i:03d}" for i in range(40)]
        cli("devices", "import", _fleet(tmp_path, api.port, names, headers="{}", timeout=60, concurrency=4))
        cli(
            "create",
            "-f",
            write(
                tmp_path, "c.yaml", "name: shared\ndevices: {selector: {type: thing}}\nconfigurations: {mode: eco}\n"
            ),
        )
        launch = subprocess.Popen(
            campaignctl_cmd("--db", db_url, "launch", "shared", "--processes", "3", "--shard-size", "10"),
            env=subprocess_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        # The platform holds every request: the launching process sits on its first
        # shard until the helpers have claimed theirs.
        wait_until(
            lambda: query(db_url, "SELECT count(DISTINCT worker) FROM job_shard WHERE status = 'running'")[0][0] >= 2,
            timeout=60,
        )
        api.gate.set()
        _out, err = launch.communicate(timeout=120)
        assert launch.returncode == 0, err
    finally:
        api.stop()
    assert sorted(api.requests) == names and all(len(r) == 1 for r in api.requests.values())
    assert query(db_url, "SELECT count(*) FROM job_item WHERE status = 'delivered'") == [(40,)]
    assert len({r[0] for r in query(db_url, "SELECT worker FROM job_shard")}) >= 2
