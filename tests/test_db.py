"""The database: schema revisions on both backends, SQLite's pragmas and 0.1 databases,
PostgreSQL's connection errors, leases and snapshots under concurrency."""

from __future__ import annotations

import sqlite3
import threading

import pytest
from conftest import csv_fleet, in_threads, query

from campaignctl import db, migrations
from campaignctl.errors import CampaignctlError
from campaignctl.migrations.legacy_sqlite import MIGRATIONS


def test_head_constant_is_the_newest_revision():
    from alembic.script import ScriptDirectory

    from campaignctl.migrations import _config

    assert ScriptDirectory.from_config(_config(None)).get_current_head() == migrations.HEAD


def test_migrated_schema_matches_the_models(db_url):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlmodel import SQLModel

    import campaignctl.models  # noqa: F401  (registers the tables)

    engine = db.create_engine(db_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), SQLModel.metadata)
    engine.dispose()
    assert diff == []


def test_pragmas_and_revision(sqlite_path):
    engine = db.create_engine(sqlite_path)
    with db.read(engine) as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == db.BUSY_TIMEOUT_MS
        assert conn.exec_driver_sql("PRAGMA temp_store").scalar() == 2  # MEMORY
        assert migrations.current_revision(conn) == migrations.HEAD


def test_a_newer_database_is_refused(db_url):
    db.create_engine(db_url).dispose()
    query(db_url, "UPDATE alembic_version SET version_num = '9999'")
    with pytest.raises(CampaignctlError, match="newer than this campaignctl"):
        db.create_engine(db_url)


def test_write_transactions_roll_back_on_error(db_url):
    engine = db.create_engine(db_url)
    with pytest.raises(RuntimeError):
        with db.write(engine) as conn:
            db.run(conn, "UPDATE meta SET value = 42 WHERE key = 'revision'")
            raise RuntimeError("boom")
    with db.read(engine) as conn:
        assert db.run(conn, "SELECT value FROM meta WHERE key = 'revision'").scalar() == 0
    engine.dispose()


def test_session_helper_takes_the_write_lock(sqlite_path):
    from sqlmodel import select

    from campaignctl.models import Meta

    engine = db.create_engine(sqlite_path)
    with db.session(engine, write=True) as session:
        meta = session.exec(select(Meta)).one()
        other = sqlite3.connect(sqlite_path, timeout=0)
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            other.execute("BEGIN IMMEDIATE")
        other.close()
        meta.value = 7
        session.add(meta)
        session.commit()
    with db.read(engine) as conn:
        assert conn.exec_driver_sql("SELECT value FROM meta").scalar() == 7


def test_unwritable_location_is_a_clean_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(CampaignctlError, match="cannot create database"):
        db.create_engine(blocker / "sub" / "c.db")


@pytest.mark.parametrize("version", [1, len(MIGRATIONS)])
def test_a_version_0_1_database_is_migrated_in_place(sqlite_path, version):
    conn = sqlite3.connect(sqlite_path)
    for number in range(version):
        for statement in MIGRATIONS[number].split(";"):
            if statement.strip():
                conn.execute(statement)
    conn.execute("INSERT INTO campaign (name, spec, created_at, updated_at) VALUES ('old', '{}', 'x', 'x')")
    # A job written in two steps (revisions 3 and 5): revision 0004 keeps them with the job.
    conn.execute("INSERT INTO job (id, campaign_id, created_at) VALUES (1, 1, 'x')")
    conn.executemany("INSERT INTO job_item (job_id, device_id, revision) VALUES (1, ?, ?)", [(1, 3), (2, 3), (3, 5)])
    conn.execute(f"PRAGMA user_version = {version}")
    conn.commit()
    conn.close()
    engine = db.create_engine(sqlite_path)
    with db.read(engine) as c:
        assert migrations.current_revision(c) == migrations.HEAD
        assert c.exec_driver_sql("SELECT name FROM campaign").scalar() == "old"
        assert "written_at" in {r[1] for r in c.exec_driver_sql("PRAGMA table_info(job)")}
        assert c.exec_driver_sql("SELECT count(*) FROM job_shard").scalar() == 0
        assert c.exec_driver_sql("SELECT revisions FROM job").scalar() == "3,5,"


# -- PostgreSQL: the schema is upgraded by `db upgrade` only --------------------------------


def test_postgres_schema_is_created_by_db_upgrade_only(postgres, cli_for):
    server, _template = postgres
    url = server.url(server.create_database())
    cli = cli_for(url)
    result = cli("devices", "list", code=1)
    assert "not initialised" in result.stderr and "campaignctl db upgrade" in result.stderr
    assert cli("db", "status", code=1).stdout.count("current revision: none") == 1
    cli("db", "upgrade")
    assert cli.json("db", "status") == {
        "database": f"PostgreSQL database {url.rsplit('/', 1)[1]} on 127.0.0.1:{server.port}",
        "backend": "postgresql",
        "current": migrations.HEAD,
        "latest": migrations.HEAD,
        "up_to_date": True,
    }
    cli("db", "upgrade")  # twice is fine
    assert cli.json("devices", "list") == []


def test_postgres_at_an_older_revision_asks_for_db_upgrade(postgres, cli_for):
    server, template = postgres
    url = server.url(server.create_database(template))
    query(url, "UPDATE alembic_version SET version_num = :base", {"base": migrations.BASELINE})
    # What the revisions after the baseline add (0003 rebuilds an existing index).
    for statement in (
        "DROP TABLE job_shard",
        "DROP INDEX ix_device_config_revision",
        "ALTER TABLE job DROP COLUMN revisions",
        "ALTER TABLE firmware DROP COLUMN recalled_at",
        "ALTER TABLE firmware DROP COLUMN recall_reason",
        "ALTER TABLE campaign DROP COLUMN rollback_of",
        "DROP TABLE approval",
        "DROP TABLE event",
        "ALTER TABLE job_item DROP COLUMN joined_at",
        "DROP TABLE operator",
    ):
        query(url, statement)
    result = cli_for(url)("list", code=1)
    assert f"at revision {migrations.BASELINE}" in result.stderr and "db upgrade" in result.stderr
    cli_for(url)("db", "upgrade")
    assert query(url, "SELECT count(*) FROM job_shard") == [(0,)]


@pytest.mark.parametrize(
    "make_url, expected",
    [
        (
            lambda s: f"postgresql://postgres:hunter2secret@127.0.0.1:{s.port}/no_such_db",
            'database no_such_db on 127.0.0.1:{port}: .*"no_such_db" does not exist',
        ),
        (
            lambda s: f"postgresql://nobody:hunter2secret@127.0.0.1:{s.port}/postgres",
            'database postgres on 127.0.0.1:{port}: .*role "nobody" does not exist',
        ),
        (
            lambda s: "postgresql://postgres:hunter2secret@127.0.0.1:1/campaigns",
            "database campaigns on 127.0.0.1:1: .*refused",
        ),
    ],
)
def test_postgres_connection_errors_are_one_line_without_the_password(postgres, cli_for, make_url, expected):
    import re

    server, _ = postgres
    result = cli_for(make_url(server))("devices", "list", code=1)
    assert re.search(expected.format(port=server.port), result.stderr), result.stderr
    assert "hunter2secret" not in result.stderr + result.stdout
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_the_password_of_the_url_is_never_shown(postgres, cli_for):
    server, template = postgres
    server.execute(
        "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'team') THEN "
        "CREATE ROLE team LOGIN PASSWORD 'hunter2secret'; END IF; END $$"
    )
    name = server.create_database(template)
    server.execute("GRANT ALL ON SCHEMA public TO team", name)
    server.execute("GRANT ALL ON ALL TABLES IN SCHEMA public TO team", name)
    server.execute("GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO team", name)
    cli = cli_for(f"postgresql://team:hunter2secret@127.0.0.1:{server.port}/{name}")
    out = cli("--help").stdout + cli("db", "status").stdout + cli("list").stdout
    assert "hunter2secret" not in out


def test_a_driver_s_long_error_text_is_cut_after_its_password_is_scrubbed():
    # A driver's text may quote the value it refused: a device's report, a stored row.
    refused = "r" * 5000
    sqlite_error = db.friendly(sqlite3.OperationalError(refused), db.locate("/tmp/c.db")).message
    assert len(sqlite_error) < db.MAX_DETAIL + 100 and sqlite_error.endswith("…")
    password = "hunter2secret"
    url = f"postgresql://team:{password}@127.0.0.1/db"
    # The password straddles the cut: scrubbing first leaves no head of it behind.
    text = "x" * (db.MAX_DETAIL - 6) + password + refused
    pg_error = db.friendly(RuntimeError(text), db.locate(url)).message
    assert password[:6] not in pg_error and len(pg_error) < db.MAX_DETAIL + 100
    assert db.describe(RuntimeError(refused), None).endswith("…")  # not a database error: cut all the same


# -- PostgreSQL under concurrency -------------------------------------------------------------


def _job(cli, tmp_path, broker, prefix):
    from conftest import import_fleet, write

    import_fleet(cli, tmp_path, broker.url, prefix, 4)
    cli(
        "create",
        "-f",
        write(
            tmp_path,
            "c.yaml",
            "name: race\ndevices: {selector: {type: sensor-v2}}\nconfigurations: {report_interval: 30}\n",
        ),
    )
    return cli.json("launch", "race", "--detach")["id"]


def test_only_one_of_many_concurrent_lease_takers_gets_the_job(cli, tmp_path, broker, prefix, db_url):
    from campaignctl import jobs

    job_id = _job(cli, tmp_path, broker, prefix)
    engine = db.create_engine(db_url)
    barrier = threading.Barrier(8)
    owners: list = []

    def take() -> None:
        barrier.wait()
        owners.append(jobs.try_acquire(engine, job_id))

    in_threads(take, 8)
    assert len([o for o in owners if o]) == 1, owners
    engine.dispose()


def test_a_lost_lease_fences_the_old_owner(cli, tmp_path, broker, prefix, db_url):
    from campaignctl import engine as machine
    from campaignctl import jobs
    from campaignctl.interfaces.base import DeliveryPolicy
    from campaignctl.rollout import Rollout

    job_id = _job(cli, tmp_path, broker, prefix)
    engine = db.create_engine(db_url)
    owner = jobs.acquire(engine, job_id)
    # Another process takes the job over (as after an expiry): the first may write no more.
    query(db_url, "UPDATE job SET lease_owner = 'elsewhere:1:x' WHERE id = :id", {"id": job_id})
    ctx = machine.Context(
        engine,
        job_id,
        1,
        "race",
        owner,
        jobs.Heartbeat(lambda: True, "t"),
        DeliveryPolicy(),
        Rollout.from_dict(None),
        5000,
        2000,
        {},
        lambda *_: None,
        lambda _s: None,
    )
    with pytest.raises(machine.Stop):
        with db.write(engine) as conn:
            machine.stop_if_not_ours(conn, ctx)
    engine.dispose()


def test_reads_see_one_snapshot(db_url):
    engine = db.create_engine(db_url)
    with db.read(engine) as conn:
        before = db.run(conn, "SELECT value FROM meta WHERE key = 'revision'").scalar()
        with db.write(engine) as other:
            db.run(other, "UPDATE meta SET value = value + 5 WHERE key = 'revision'")
        assert db.run(conn, "SELECT value FROM meta WHERE key = 'revision'").scalar() == before
    engine.dispose()


def test_names_and_keys_sort_by_byte_whatever_the_database_collation(postgres, cli_for, tmp_path, broker, prefix):
    """A database created with a linguistic collation (ICU en-US sorts '_z' < 'a' < 'B')
    still lists names and keys in byte order, as SQLite does."""
    server, _ = postgres
    name = f"icu_{tmp_path.name[-8:].lower().replace('-', '_')}"
    server.execute(f"CREATE DATABASE {name} TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US'")
    try:
        cli = cli_for(server.url(name))
        cli("db", "upgrade")
        names = ["b-1", "B-2", "z_z", "Z", "a.9", "A:1", "0", "a-b", "a_b", "aB"]
        from conftest import fleet_yaml

        path = tmp_path / "fleet.yaml"
        path.write_text(
            fleet_yaml(broker.url, prefix, devices=0).replace("devices: []", "devices:")
            + "".join(f"  - {{name: '{n}', type: sensor-v2, interface: broker}}\n" for n in names)
        )
        cli("devices", "import", str(path))
        assert [d["name"] for d in cli.json("devices", "list")] == sorted(names)
        cli("devices", "set-config", "Z", "b=1", "B=2", "_a=3", "a=4", "--no-deliver")
        assert [e["key"] for e in cli.json("devices", "show", "Z")["configuration"]] == ["B", "_a", "a", "b"]
    finally:
        server.drop_database(name)


def test_two_workers_starting_one_scheduled_campaign_both_finish_their_pass(cli, fleet, tmp_path, db_url):
    from datetime import datetime, timedelta, timezone

    from conftest import wait_until, write

    from campaignctl import worker

    start = datetime.now(timezone.utc) + timedelta(seconds=1)
    cli(
        "create",
        "-f",
        write(
            tmp_path,
            "c.yaml",
            "name: soon\ndevices: {selector: {type: sensor-v2}}\n"
            f"configurations: {{mode: eco}}\nstart_at: "
            f"{start.strftime('%Y-%m-%dT%H:%M:%S.%fZ')}\n",
        ),
    )
    assert "scheduled for" in cli("launch", "soon").stderr
    wait_until(lambda: datetime.now(timezone.utc) > start + timedelta(milliseconds=50), timeout=10)
    engines = [db.create_engine(db_url) for _ in range(2)]
    barrier = threading.Barrier(2)
    results: list = []

    def run(engine) -> None:
        barrier.wait()
        results.append(worker.tick(engine))

    threads = [threading.Thread(target=run, args=(e,)) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for e in engines:
        e.dispose()
    outcomes = [r for rs in results for r in rs]
    assert len(results) == 2 and all(r["outcome"] not in ("aborted", "error") for r in outcomes), outcomes
    assert len(query(db_url, "SELECT id FROM job")) == 1
    assert cli.json("status", "soon")["status"] == "completed"


def test_postgres_stopped_mid_launch_then_resumed(postgres, broker, prefix, tmp_path, cli_for):
    """The server goes away while a launch delivers: a one-line error, nothing lost;
    once it is back, jobs resume finishes the job, every device delivered once."""
    import subprocess

    from conftest import Subscriber, campaignctl_cmd, subprocess_env, wait_until

    server, template = postgres
    url = server.url(server.create_database(template))
    cli = cli_for(url)
    csv_fleet(cli, tmp_path, broker.url, prefix, 1500, campaign="slow")
    launch = subprocess.Popen(
        campaignctl_cmd("--db", url, "launch", "slow", "--window", "1", "--shard-size", "100"),
        env=subprocess_env(CAMPAIGNCTL_KEY_FILE=str(tmp_path / "k")),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(
            lambda: query(url, "SELECT count(*) FROM job_item WHERE status = 'delivered'")[0][0] > 50,
            timeout=60,
            interval=0.05,
        )
        server.stop_server()
        _out, err = launch.communicate(timeout=120)
    finally:
        server.restart()
        if launch.poll() is None:
            launch.kill()
    assert launch.returncode == 1, err
    assert "Traceback" not in err and "Error: cannot use the PostgreSQL database" in err, err
    done = cli("jobs", "resume", "1", code=None)
    if done.exit_code != 0:  # the dead launch's lease is still valid for a while: wait for it
        assert "is being run by process" in done.stderr
        wait_until(lambda: cli("jobs", "resume", "1", code=None).exit_code == 0, timeout=60, interval=1)
    assert query(url, "SELECT status, count(*) FROM job_item GROUP BY status") == [("delivered", 1500)]
    versions = dict(query(url, "SELECT d.name, ji.revision FROM job_item ji JOIN device d ON d.id = ji.device_id"))
    sub = Subscriber(broker.port, f"{prefix}/+/config")
    try:
        messages = sub.wait_for(1500, timeout=30)
    finally:
        sub.close()
    assert all(docs[-1]["version"] == versions[t.split("/")[1]] for t, docs in messages.items())


def test_a_worker_whose_connections_are_cut_goes_on(tmp_path, broker, prefix, postgres, cli_for):
    """One worker's database connections are terminated while it delivers: it reconnects
    and the campaign completes."""
    import subprocess

    from conftest import campaignctl_cmd, subprocess_env, wait_until

    server, template = postgres
    db_url = server.url(server.create_database(template))
    cli = cli_for(db_url)
    csv_fleet(cli, tmp_path, broker.url, prefix, 1500, campaign="slow")
    worker = subprocess.Popen(
        campaignctl_cmd("--db", db_url, "run", "--interval", "0.2"),
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        cli("launch", "slow", "--detach", "--window", "1", "--shard-size", "100")
        wait_until(
            lambda: query(db_url, "SELECT count(*) FROM job_item WHERE status = 'delivered'")[0][0] > 50,
            timeout=60,
            interval=0.05,
        )
        database = db_url.rsplit("/", 1)[1]
        cut = server.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = "
            f"'{database}' AND application_name = 'campaignctl' AND pid != pg_backend_pid()"
        )
        assert cut[0][0] >= 1
        wait_until(
            lambda: cli.json("status", "slow", "--limit", "0")["status"] == "completed", timeout=120, interval=0.5
        )
    finally:
        worker.terminate()
        _out, err = worker.communicate(timeout=30)
    assert query(db_url, "SELECT status, count(*) FROM job_item GROUP BY status") == [("delivered", 1500)]
    assert "Traceback" not in err


def test_postgres_permission_denied_is_one_line(postgres, cli_for):
    """A role that may connect and read the schema revision, but not the tables."""
    server, template = postgres
    name = server.create_database(template)
    server.execute(
        "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'reader') THEN "
        "CREATE ROLE reader LOGIN; END IF; END $$"
    )
    server.execute("GRANT SELECT ON alembic_version TO reader", name)
    result = cli_for(f"postgresql://reader@127.0.0.1:{server.port}/{name}")("list", code=1)
    assert result.stderr.startswith(f"Error: cannot use the PostgreSQL database {name} on 127.0.0.1:{server.port}: ")
    assert "permission denied for table campaign" in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr and "SELECT" not in result.stderr
