"""Database faults: a read-only database, a full disk, damaged files, loose file modes.
Every command answers with one ``Error: …`` line and exit 1, and leaves the database as
it was."""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
import subprocess
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Iterator

import pytest
from conftest import db_dump, free_port, query, write
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

DEVICES = 40
READS = 5  # the first commands of _commands() only read


def _setup(cli, tmp_path: Path) -> None:
    """A fleet on a webhook interface nobody listens on (a launch fails at once), a
    draft campaign, and a launched one."""
    devices = "".join(f"  - {{name: d{i:02d}, type: thing, interface: hook}}\n" for i in range(DEVICES))
    cli(
        "devices",
        "import",
        write(
            tmp_path,
            "fleet.yaml",
            f"interfaces:\n  hook:\n    type: webhook\n"
            f"    url: http://127.0.0.1:{free_port()}/{{device}}\n"
            f"device_types:\n  thing: {{}}\ndevices:\n{devices}",
        ),
    )
    for name in ("draft", "sent"):
        cli(
            "create",
            "-f",
            write(
                tmp_path,
                f"{name}.yaml",
                f"name: {name}\ndevices: {{selector: {{type: thing}}}}\nconfigurations: {{mode: eco}}\n",
            ),
        )
    cli("launch", "sent", "--attempts", "1", code=1)


def _commands(tmp_path: Path) -> list[list[str]]:
    big = "x" * 200_000  # more than the pages a database has free
    more = "".join(
        f"  - {{name: n{i:04d}, type: thing, interface: hook, tags: {{note: '{'y' * 100}'}}}}\n" for i in range(500)
    )
    return [
        ["list"],
        ["status", "sent"],
        ["devices", "list"],
        ["devices", "show", "d01"],
        ["jobs", "show", "1"],
        ["devices", "set-config", "d01", f"blob={big}", "--no-deliver"],
        ["devices", "report", "d02", f"blob={big}"],
        [
            "create",
            "-f",
            write(
                tmp_path,
                "big.yaml",
                f"name: big\ndescription: {big}\ndevices: {{selector: {{type: thing}}}}\nconfigurations: {{a: 1}}\n",
            ),
        ],
        ["devices", "import", write(tmp_path, "more.yaml", f"device_types:\n  thing: {{}}\ndevices:\n{more}")],
        ["launch", "draft", "--attempts", "1"],
    ]


def _one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 1, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    errors = [line for line in lines if line.startswith("Error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr  # after what was done before it
    assert "Traceback" not in result.stderr + result.stdout
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


@contextmanager
def _pages_capped() -> Iterator[None]:
    """Every new SQLite connection may not grow its database: a real SQLITE_FULL, as on
    a full disk, for whatever needs one page more."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    def cap(dbapi_connection, _record):
        cursor = dbapi_connection.cursor()
        pages = cursor.execute("PRAGMA page_count").fetchone()[0]
        cursor.execute(f"PRAGMA max_page_count = {pages}")
        cursor.close()

    event.listen(Engine, "connect", cap)
    try:
        yield
    finally:
        event.remove(Engine, "connect", cap)


def test_a_full_disk_is_one_line_and_writes_nothing(cli_for, tmp_path):
    path = tmp_path / "c.db"
    cli = cli_for(str(path))
    _setup(cli, tmp_path)
    with sqlite3.connect(path) as conn:
        conn.execute("VACUUM")  # no free page left: each write that needs space fails
    failed = 0
    for command in _commands(tmp_path):
        before = db_dump(path)
        with _pages_capped():
            result = cli(*command, code=None)
        if result.exit_code == 0:
            continue  # it needed no new page
        _one_line_error(result, "the disk is full", "the transaction was rolled back")
        if command[0] != "launch":  # a launch commits its job, then records deliveries
            assert db_dump(path) == before, command
        failed += 1
    assert failed >= 5  # every command that writes a lot


def test_the_recorder_s_failed_write_reaches_the_delivering_thread(cli_for, tmp_path):
    """JobRecorder writes in a thread of its own: its error is raised by flush()."""
    from sqlalchemy.exc import OperationalError

    from campaignctl import db
    from campaignctl.delivery import JobRecorder
    from campaignctl.interfaces.base import Delivery, Failure

    path = tmp_path / "c.db"
    _setup(cli_for(str(path)), tmp_path)
    query(path, "UPDATE job_item SET status = 'syncing', error = NULL")
    with sqlite3.connect(path) as conn:
        conn.execute("VACUUM")
    before = db_dump(path)
    with _pages_capped():
        engine = db.create_engine(path)
        recorder = JobRecorder(engine, 1, batch=10)
        ids = [r[0] for r in query(path, "SELECT device_id FROM job_item WHERE job_id = 1")]
        for device_id in ids:
            recorder.failed(Failure(Delivery(device_id, f"d{device_id}", 1, b"{}", attempts=1), "e" * 1000))
        # The driver's own error, as the writer thread got it: not a wrapper of flush()'s.
        with pytest.raises(OperationalError) as raised:
            recorder.flush()
        assert "the disk is full" in db.describe(raised.value, engine)
        engine.dispose()
    after = db_dump(path)
    assert len(after) == len(before) and query(path, "SELECT count(*) FROM job_item WHERE status = 'failed'")[0][
        0
    ] < len(ids)


@contextmanager
def _read_only(directory: Path) -> Iterator[None]:
    """``directory`` read-only for real: file modes for a user, a read-only bind mount for
    root (who writes whatever the modes say)."""
    if os.geteuid() != 0:
        modes = {p: p.stat().st_mode for p in [directory, *directory.iterdir()]}
        for p in modes:
            p.chmod(0o500 if p.is_dir() else 0o400)
        try:
            yield
        finally:
            for p, mode in modes.items():
                p.chmod(mode)
        return
    subprocess.run(["mount", "--bind", directory, directory], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", directory, directory], check=True)
        yield
    finally:
        subprocess.run(["umount", "--lazy", directory], check=True)  # the test process may hold it open


def test_a_read_only_database_is_one_line_on_every_command(cli_for, tmp_path):
    home = tmp_path / "ro"
    home.mkdir()
    path = home / "c.db"
    cli = cli_for(str(path))
    _setup(cli, tmp_path)
    path.chmod(0o644)  # loose as well: it cannot be tightened there, a warning says so
    content = path.read_bytes()
    with _read_only(home):
        for command in _commands(tmp_path):
            result = cli(*command, code=None)
            if result.exit_code == 0 and command in _commands(tmp_path)[:READS]:
                continue  # a read works where SQLite can open the file read-only
            _one_line_error(result, "is read-only")
        assert "can be read by other users (mode 0644) and could not be made private" in result.stderr
    assert path.read_bytes() == content


def test_a_database_others_can_read_is_made_private(cli_for, tmp_path):
    path = tmp_path / "c.db"
    cli = cli_for(str(path))
    cli("list")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # created private
    path.chmod(0o644)
    cli("list")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # The device key file likewise, when it is read.
    from campaignctl import credentials, db

    key = Path(os.environ["CAMPAIGNCTL_KEY_FILE"])
    key.write_bytes(os.urandom(32))
    key.chmod(0o640)
    engine = db.create_engine(path)
    credentials.load_key(engine)
    engine.dispose()
    assert stat.S_IMODE(key.stat().st_mode) == 0o600


def _damage(path: Path, how: str, which: int, noise: bytes) -> None:
    """Damage ``path`` the way disks and people do: bytes overwritten inside a table's
    pages, a truncated file, a file that is no database, or a value rewritten outside
    campaignctl."""
    with sqlite3.connect(path) as conn:
        roots = [r[0] for r in conn.execute("SELECT rootpage FROM sqlite_master WHERE rootpage > 1 ORDER BY 1")]
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        if how == "garbled value":
            table, column = [("campaign", "spec"), ("device", "tags"), ("job", "settings")][which % 3]
            conn.execute(f"UPDATE {table} SET {column} = :bad", {"bad": noise.decode("latin-1")})
            return
    if how == "page":
        with open(path, "r+b") as f:
            f.seek((roots[which % len(roots)] - 1) * page_size + (which * 7) % page_size)
            f.write(noise)
    elif how == "truncated":
        os.truncate(path, path.stat().st_size * (which % 9 + 1) // 10)
    else:  # not a database
        path.write_bytes(noise * 10)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    how=st.sampled_from(["page", "truncated", "not a database", "garbled value"]),
    which=st.integers(0, 1000),
    noise=st.binary(min_size=4, max_size=64),
)
def test_a_damaged_database_is_one_line_and_never_a_traceback(cli_for, tmp_path_factory, how, which, noise):
    path = _copy_of_template(cli_for, tmp_path_factory)
    _damage(path, how, which, noise)
    cli = cli_for(str(path))
    for command in (
        ["status", "sent"],
        ["devices", "show", "d01"],
        ["devices", "set-config", "d01", "a=1", "--no-deliver"],
    ):
        result = cli(*command, code=None)
        if result.exit_code != 0:
            _one_line_error(result)


def _copy_of_template(cli_for, tmp_path_factory) -> Path:
    """A fresh copy of one ``_setup`` database, made once for the whole session."""
    tmp_path = tmp_path_factory.mktemp("damaged")
    template = tmp_path_factory.getbasetemp() / "damage-template.db"
    if not template.exists():
        _setup(cli_for(str(template)), tmp_path)
        with sqlite3.connect(template) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # all of it in the file that is copied
    path = tmp_path / "c.db"
    shutil.copy(template, path)
    return path


UNREADABLE = "holds data campaignctl cannot read"


# Each stored JSON column, commands that read it (a retry fails before it delivers),
# and whether an object missing what campaignctl always writes is found out too.
_STORED_JSON = {
    ("campaign", "spec"): ([["status", "sent"], ["show", "draft"]], True),
    ("campaign", "secret_keys"): ([["show", "draft"]], False),
    ("device", "tags"): ([["devices", "show", "d01"], ["devices", "list"]], False),
    ("job", "settings"): ([["status", "sent"], ["jobs", "show", "1"], ["retry", "sent"]], False),
    ("job", "plan"): ([["status", "sent"], ["retry", "sent"]], False),
    ("interface", "settings"): ([["retry", "sent"]], True),
}


@pytest.mark.parametrize("column", list(_STORED_JSON), ids="{0[0]}.{0[1]}".format)
def test_stored_json_that_campaignctl_never_wrote_is_one_line(cli_for, tmp_path_factory, column):
    """Rewritten outside campaignctl: not JSON, JSON of another shape (a number where an
    object belongs), or an object that misses what campaignctl always writes."""
    table, name = column
    commands, checks_members = _STORED_JSON[column]
    for bad in ["{", "1234", "null", '"x"'] + (['{"x": 1}'] if checks_members else []):
        path = _copy_of_template(cli_for, tmp_path_factory)
        with closing(sqlite3.connect(path)) as conn, conn:
            conn.execute(f"UPDATE {table} SET {name} = :bad", {"bad": bad})
        before = db_dump(path)
        for command in commands:
            _one_line_error(cli_for(str(path))(*command, code=None), UNREADABLE, "restore it from a backup")
            # A retry has marked the campaign running again when it reaches the interface.
            assert command[0] == "retry" or db_dump(path) == before, command


def test_bytes_that_are_not_utf8_from_outside_are_not_called_database_damage(cli_for, tmp_path):
    """Only stored data is the database's fault: a manifest or a secret on stdin that is
    not UTF-8 is an error about that input."""
    import json as json_module
    from types import SimpleNamespace

    from campaignctl.cli import _database_error

    path = tmp_path / "c.db"
    cli = cli_for(str(path))
    _setup(cli, tmp_path)
    before = db_dump(path)
    for command, where in [
        (["create", "-f", "-"], "Error: -: not UTF-8 text (invalid start byte at byte 6)"),
        (["devices", "import", "-"], "Error: -: not UTF-8 text (invalid start byte at byte 6)"),
        (
            ["devices", "set-config", "d01", "--secret-stdin", "tok", "--no-deliver"],
            "Error: --secret-stdin tok: not UTF-8 text (invalid start byte at byte 6)",
        ),
    ]:
        result = cli(*command, code=None, input=b"name: \xff\n")
        _one_line_error(result)
        assert result.stderr.startswith(where) and UNREADABLE not in result.stderr, result.stderr
    assert db_dump(path) == before
    # Whatever else raises a decoding error is a bug to fix where it happens, not damage.
    ctx = SimpleNamespace(obj={"db": str(path)})
    for exc in (
        json_module.JSONDecodeError("Expecting value", "x", 0),
        UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"),
    ):
        assert _database_error(exc, ctx) is None


def test_a_read_only_postgres_database_is_one_line_and_unchanged(postgres, cli_for, tmp_path):
    server, template = postgres
    name = server.create_database(template)
    url = f"postgresql://{server.url(name).split('://', 1)[1]}"
    cli = cli_for(url)
    _setup(cli, tmp_path)
    server.execute(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
    before = db_dump(url)
    for command in [c for c in _commands(tmp_path)[READS:] if c[0] != "launch"]:  # the writers
        _one_line_error(cli(*command, code=None), f"cannot use the PostgreSQL database {name}", "read-only transaction")
    assert db_dump(url) == before
