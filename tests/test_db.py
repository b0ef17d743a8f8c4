"""The database: migrations, the models that mirror them, pragmas, transactions."""

from __future__ import annotations

import sqlite3

import pytest

from campaignctl import db
from campaignctl.errors import CampaignctlError
from campaignctl.migrations import MIGRATIONS


def test_migrated_schema_matches_the_models(db_path):
    from sqlmodel import SQLModel

    import campaignctl.models  # noqa: F401  (registers the tables)

    db.create_engine(db_path)
    conn = sqlite3.connect(db_path)
    for table in SQLModel.metadata.sorted_tables:
        columns = {r[1]: r for r in conn.execute(f"PRAGMA table_info({table.name})")}
        assert set(columns) == {c.name for c in table.columns}, table.name
        primary = {name for name, r in columns.items() if r[5]}
        assert primary == {c.name for c in table.primary_key.columns}, table.name
    conn.close()


def test_pragmas_and_version(db_path):
    engine = db.create_engine(db_path)
    with db.read(engine) as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == db.BUSY_TIMEOUT_MS
        assert conn.exec_driver_sql("PRAGMA user_version").scalar() == len(MIGRATIONS)


def test_a_newer_database_is_refused(db_path):
    db.create_engine(db_path)
    conn = sqlite3.connect(db_path)
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    conn.close()
    with pytest.raises(CampaignctlError, match="newer than this campaignctl"):
        db.create_engine(db_path)


def test_write_transactions_roll_back_on_error(db_path):
    engine = db.create_engine(db_path)
    with pytest.raises(RuntimeError):
        with db.write(engine) as conn:
            conn.exec_driver_sql("UPDATE meta SET value = 42 WHERE key = 'revision'")
            raise RuntimeError("boom")
    with db.read(engine) as conn:
        assert conn.exec_driver_sql("SELECT value FROM meta WHERE key = 'revision'").scalar() == 0


def test_session_helper_takes_the_write_lock(db_path):
    from sqlmodel import select

    from campaignctl.models import Meta

    engine = db.create_engine(db_path)
    with db.session(engine, write=True) as session:
        meta = session.exec(select(Meta)).one()
        other = sqlite3.connect(db_path, timeout=0)
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


def test_a_version_1_database_is_migrated_in_place(db_path):
    conn = sqlite3.connect(db_path)
    for statement in MIGRATIONS[0].split(";"):
        if statement.strip():
            conn.execute(statement)
    conn.execute("INSERT INTO campaign (name, spec, created_at, updated_at) VALUES ('old', '{}', 'x', 'x')")
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    engine = db.create_engine(db_path)
    with db.read(engine) as c:
        assert c.exec_driver_sql("PRAGMA user_version").scalar() == len(MIGRATIONS)
        assert c.exec_driver_sql("SELECT name FROM campaign").scalar() == "old"
        assert "written_at" in {r[1] for r in c.exec_driver_sql("PRAGMA table_info(job)")}
