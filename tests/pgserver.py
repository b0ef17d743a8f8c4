"""A real PostgreSQL server for the tests: initdb + pg_ctl in a temporary directory, on a
free loopback port, run as an unprivileged user (PostgreSQL refuses root)."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from typing import Any


def _bindir() -> str:
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]), reverse=True):
        if os.path.exists(os.path.join(candidate, "initdb")):
            return candidate
    found = shutil.which("initdb")
    if found:
        return os.path.dirname(os.path.realpath(found))
    raise RuntimeError("PostgreSQL is not installed (Debian: apt-get install postgresql)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    def __init__(self) -> None:
        self.bindir = _bindir()
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="campaignctl-pg-")
        self.data = os.path.join(self.dir, "data")
        self.user = "postgres" if os.geteuid() == 0 else None

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        command = [os.path.join(self.bindir, args[0]), *args[1:]]
        if self.user:
            command = ["runuser", "-u", self.user, "--", *command]
        return subprocess.run(command, check=check, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> "PostgresServer":
        if self.user:
            shutil.chown(self.dir, self.user)
        os.chmod(self.dir, 0o700)
        self._run(
            "initdb",
            "-D",
            self.data,
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C.UTF-8" if _has_locale("C.UTF-8") else "--locale=C",
            "--no-sync",
        )
        self._start()
        wait_for_port(self.port, "PostgreSQL", timeout=30)
        return self

    def execute(self, statement: str, database: str = "postgres") -> list:
        import psycopg

        with psycopg.connect(self.url(database), autocommit=True) as conn:
            cur = conn.execute(statement)
            return cur.fetchall() if cur.description else []

    def create_database(self, template: str | None = None) -> str:
        name = f"t_{uuid.uuid4().hex[:12]}"
        extra = f" TEMPLATE {template} STRATEGY FILE_COPY" if template else ""
        self.execute(f"CREATE DATABASE {name}{extra}")
        return name

    def drop_database(self, name: str) -> None:
        self.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def stop_server(self) -> None:
        """Stop the server, keeping its data (tests of a database that goes away)."""
        self._run("pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop", check=False)

    def restart(self) -> None:
        self._start()

    def _start(self) -> None:
        # A test server: durability off, enough connections for worker processes.
        options = (
            f"-p {self.port} -h 127.0.0.1 -k {self.dir} -c fsync=off -c synchronous_commit=off "
            "-c full_page_writes=off -c max_connections=300 -c shared_buffers=128MB"
        )
        self._run(
            "pg_ctl", "-D", self.data, "-o", options, "-l", os.path.join(self.dir, "log"), "-w", "-t", "60", "start"
        )

    def stop(self) -> None:
        self.stop_server()
        shutil.rmtree(self.dir, ignore_errors=True)


def wait_for_port(port: int, what: str, *, timeout: float, exited: Any = lambda: None) -> None:
    """Until something accepts connections on 127.0.0.1:``port``; ``exited()`` returns the
    exit code of the process that should, once it has died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            code = exited()
            if code is not None:
                raise RuntimeError(f"{what} exited with {code}") from None
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not start")


def _has_locale(name: str) -> bool:
    try:
        out = subprocess.run(["locale", "-a"], stdout=subprocess.PIPE, text=True, check=False).stdout
    except OSError:
        return False
    return name.lower().replace("-", "") in {line.strip().lower().replace("-", "") for line in out.splitlines()}
