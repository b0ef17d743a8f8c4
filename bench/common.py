"""Helpers shared by the benchmarks: a private mosquitto, timing subprocesses."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mosquitto(workdir: Path) -> tuple[subprocess.Popen, int]:
    """mosquitto on 127.0.0.1 with the queue limits lifted (see docs/performance.md)."""
    port = free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        "max_queued_messages 0\nmax_inflight_messages 0\n"
    )
    proc = subprocess.Popen(
        [shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("mosquitto did not start")


def start_postgres() -> object:
    """A private PostgreSQL server on 127.0.0.1 (the tests' own, see tests/pgserver.py);
    ``.url(name)`` for a database, ``.create_database()``, ``.stop()``."""
    sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
    from pgserver import PostgresServer

    return PostgresServer().start()


def new_database(backend: str, work: Path, server: object | None, url: str | None = None) -> str:
    """A fresh, migrated database: a file in ``work``, a database on the private
    server, or a new database on the server of ``url`` (which must allow CREATE DATABASE)."""
    if backend == "sqlite":
        return str(work / f"bench-{time.monotonic_ns()}.db")
    if url is not None:
        import uuid

        import psycopg

        name = f"campaignctl_bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        target = url.rsplit("/", 1)[0] + "/" + name
    else:
        target = server.url(server.create_database())  # type: ignore[attr-defined]
    campaignctl("db", "upgrade", db=target)
    return target


def campaignctl(*args: str, db: Path | str, check: bool = True) -> tuple[float, int, str]:
    """Run the real command; returns (wall seconds, its peak RSS in KiB, stdout)."""
    import tempfile

    env = dict(os.environ, CAMPAIGNCTL_DB=str(db))
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "campaignctl", *args], env=env, stdout=out, stderr=err)
        # wait4: this child's own peak, not the largest of every child so far.
        _pid, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        text = out.read().decode()
        if check and proc.returncode != 0:
            raise SystemExit(f"campaignctl {' '.join(args)} failed ({proc.returncode}): {err.read().decode()}")
    return elapsed, usage.ru_maxrss, text


def mqtt_fleet(work: Path, db: Path | str, devices: int, port: int, keys: int) -> dict[str, str]:
    """The files of an MQTT fleet: its interface and device type imported, its
    ``devices`` devices in ``devices.csv`` and a campaign ``bench`` in ``campaign.yaml``
    setting ``keys`` keys on all of them, key_0 also expected to be reported (the caller
    imports the CSV and creates the campaign, to time them); returns the values set."""
    (work / "fleet.yaml").write_text(
        f"interfaces:\n  broker: {{type: mqtt, url: 'mqtt://127.0.0.1:{port}', topic_prefix: bench}}\n"
        "device_types:\n  sensor-v2: {}\ndevices: []\n"
    )
    with open(work / "devices.csv", "w") as f:
        f.write("name,type,interface,tags\n")
        f.writelines(
            f"sensor-{i:07d},sensor-v2,broker,site=s{i % 10};ring={'canary' if i < 100 else 'main'}\n"
            for i in range(devices)
        )
    campaignctl("devices", "import", str(work / "fleet.yaml"), db=db)
    values = {f"key_{k}": json.dumps(f"https://assets.example.com/fw/{k}/5.1.9_beta01.bin") for k in range(keys)}
    (work / "campaign.yaml").write_text(
        "name: bench\ndevices: {selector: {type: sensor-v2}}\nconfigurations:\n"
        + "".join(f"  {k}: {v}\n" for k, v in values.items())
        + f"expected_state: {{key_0: {values['key_0']}}}\n"
    )
    return values


def iso_seconds(a: str, b: str) -> float:
    from datetime import datetime

    def parse(s: str) -> datetime:
        return datetime.fromisoformat(s.replace("Z", "+00:00"))

    return (parse(b) - parse(a)).total_seconds()


def import_fleet(work: Path, db: Path | str, interface: str, spec: str, device_type: str, names: list[str]) -> None:
    """Import one interface (``spec``: its YAML mapping), one device type and its devices
    (from a CSV, the fast way) into ``db``."""
    (work / "fleet.yaml").write_text(
        f"interfaces:\n  {interface}: {spec}\ndevice_types:\n  {device_type}: {{}}\ndevices: []\n"
    )
    with open(work / "devices.csv", "w") as f:
        f.write("name,type,interface\n")
        f.writelines(f"{name},{device_type},{interface}\n" for name in names)
    campaignctl("devices", "import", str(work / "fleet.yaml"), db=db)
    campaignctl("devices", "import", str(work / "devices.csv"), db=db)
