"""Helpers shared by the benchmarks: a private mosquitto, timing subprocesses."""

from __future__ import annotations

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
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                    "max_queued_messages 0\nmax_inflight_messages 0\n")
    proc = subprocess.Popen([shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(conf)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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
    """Run the real command; returns (wall seconds, peak RSS in KiB, stdout)."""
    env = dict(os.environ, CAMPAIGNCTL_DB=str(db))
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "campaignctl", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    out, err = proc.communicate()
    elapsed = time.perf_counter() - started
    # wait4 would be exact, but communicate() already reaped the child: ask for the
    # children's maximum, which is this child's when it is the largest so far.
    import resource

    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if check and proc.returncode != 0:
        raise SystemExit(f"campaignctl {' '.join(args)} failed ({proc.returncode}): {err.decode()}")
    return elapsed, rss, out.decode()


def iso_seconds(a: str, b: str) -> float:
    from datetime import datetime

    def parse(s: str) -> datetime:
        return datetime.fromisoformat(s.replace("Z", "+00:00"))

    return (parse(b) - parse(a)).total_seconds()
