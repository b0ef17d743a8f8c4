"""The numbered SQLite migrations of campaignctl 0.1, tracked in ``PRAGMA user_version``.

Frozen: they only bring databases made by that release to the baseline Alembic
revision (``versions/0001``); every later change is an Alembic revision.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from campaignctl.errors import CampaignctlError

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

MIGRATIONS: list[str] = [
    # 1: interfaces, device types, devices, configuration entries, firmwares, campaigns, jobs
    """
    CREATE TABLE interface (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        type TEXT NOT NULL,
        settings TEXT NOT NULL DEFAULT '{}',
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE TABLE device_type (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        created_at TEXT NOT NULL
    );
    CREATE TABLE firmware_type (
        id INTEGER PRIMARY KEY,
        device_type_id INTEGER NOT NULL REFERENCES device_type(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        version_key TEXT NOT NULL,
        url_key TEXT NOT NULL,
        token_key TEXT,
        UNIQUE (device_type_id, name)
    );
    CREATE TABLE device (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        device_type_id INTEGER NOT NULL REFERENCES device_type(id),
        interface_id INTEGER NOT NULL REFERENCES interface(id),
        tags TEXT NOT NULL DEFAULT '{}',
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE INDEX ix_device_type ON device (device_type_id);
    CREATE INDEX ix_device_interface ON device (interface_id);
    CREATE TABLE device_config (
        device_id INTEGER NOT NULL REFERENCES device(id) ON DELETE CASCADE,
        key TEXT NOT NULL,
        desired TEXT,
        desired_at TEXT,
        desired_revision INTEGER,
        desired_by TEXT,
        secret BOOLEAN NOT NULL DEFAULT 0,
        reported TEXT,
        reported_at TEXT,
        PRIMARY KEY (device_id, key)
    ) WITHOUT ROWID;
    CREATE TABLE firmware (
        id INTEGER PRIMARY KEY,
        device_type_id INTEGER NOT NULL REFERENCES device_type(id),
        firmware_type TEXT NOT NULL,
        version TEXT NOT NULL,
        url TEXT NOT NULL,
        token TEXT,
        sha256 TEXT,
        size INTEGER,
        description TEXT,
        created_at TEXT NOT NULL,
        UNIQUE (device_type_id, firmware_type, version)
    );
    CREATE TABLE campaign (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        description TEXT,
        status TEXT NOT NULL DEFAULT 'draft',
        spec TEXT NOT NULL,
        secret_keys TEXT NOT NULL DEFAULT '[]',
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        launched_at TEXT,
        completed_at TEXT
    );
    CREATE TABLE job (
        id INTEGER PRIMARY KEY,
        campaign_id INTEGER NOT NULL REFERENCES campaign(id),
        status TEXT NOT NULL DEFAULT 'created',
        step TEXT NOT NULL DEFAULT 'resolve',
        plan TEXT NOT NULL DEFAULT '{}',
        settings TEXT NOT NULL DEFAULT '{}',
        total INTEGER NOT NULL DEFAULT 0,
        lease_owner TEXT,
        lease_expires_at REAL,
        error TEXT,
        created_at TEXT NOT NULL,
        started_at TEXT,
        finished_at TEXT
    );
    CREATE INDEX ix_job_campaign ON job (campaign_id);
    CREATE TABLE job_item (
        job_id INTEGER NOT NULL REFERENCES job(id) ON DELETE CASCADE,
        device_id INTEGER NOT NULL REFERENCES device(id),
        status TEXT NOT NULL DEFAULT 'pending',
        revision INTEGER,
        attempts INTEGER NOT NULL DEFAULT 0,
        error TEXT,
        updated_at TEXT,
        PRIMARY KEY (job_id, device_id)
    ) WITHOUT ROWID;
    CREATE INDEX ix_job_item_status ON job_item (job_id, status);
    CREATE TABLE meta (
        key TEXT PRIMARY KEY,
        value INTEGER NOT NULL DEFAULT 0
    );
    INSERT INTO meta (key, value) VALUES ('revision', 0);
    """,
    # 2: when a job finished writing desired entries, so that jobs show how long each step took
    """
    ALTER TABLE job ADD COLUMN written_at TEXT;
    """,
    # 3: device secrets for the HTTP device API (a salt to derive the secret from the key
    # file, and its SHA-256 to check it), and per-device lookups of job items
    """
    ALTER TABLE device ADD COLUMN secret_salt TEXT;
    ALTER TABLE device ADD COLUMN secret_hash TEXT;
    CREATE INDEX ix_job_item_device ON job_item (device_id, status);
    """,
    # 4: rollouts: scheduled starts, batches, steps (batches and retries) with the history
    # of retried items, and the entries a job overwrote (to put them back on cancel)
    """
    ALTER TABLE campaign ADD COLUMN start_at TEXT;
    ALTER TABLE campaign ADD COLUMN reason TEXT;
    ALTER TABLE campaign ADD COLUMN launch_settings TEXT;
    CREATE INDEX ix_campaign_status ON campaign (status, start_at);
    ALTER TABLE job_item ADD COLUMN batch INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE job_item ADD COLUMN delivered_at TEXT;
    CREATE INDEX ix_job_item_batch ON job_item (job_id, batch, status);
    CREATE TABLE job_batch (
        job_id INTEGER NOT NULL REFERENCES job(id) ON DELETE CASCADE,
        number INTEGER NOT NULL,
        size INTEGER NOT NULL,
        status TEXT NOT NULL DEFAULT 'pending',
        accepted BOOLEAN NOT NULL DEFAULT 0,
        started_at TEXT,
        delivered_at TEXT,
        finished_at TEXT,
        reason TEXT,
        PRIMARY KEY (job_id, number)
    ) WITHOUT ROWID;
    CREATE TABLE job_step (
        job_id INTEGER NOT NULL REFERENCES job(id) ON DELETE CASCADE,
        number INTEGER NOT NULL,
        kind TEXT NOT NULL,
        batch INTEGER,
        devices INTEGER NOT NULL DEFAULT 0,
        started_at TEXT NOT NULL,
        PRIMARY KEY (job_id, number)
    ) WITHOUT ROWID;
    CREATE TABLE job_item_history (
        job_id INTEGER NOT NULL REFERENCES job(id) ON DELETE CASCADE,
        device_id INTEGER NOT NULL,
        step INTEGER NOT NULL,
        status TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        error TEXT,
        at TEXT NOT NULL,
        PRIMARY KEY (job_id, device_id, step)
    ) WITHOUT ROWID;
    CREATE TABLE job_item_before (
        job_id INTEGER NOT NULL REFERENCES job(id) ON DELETE CASCADE,
        device_id INTEGER NOT NULL,
        key TEXT NOT NULL,
        desired TEXT,
        desired_at TEXT,
        desired_by TEXT,
        secret BOOLEAN NOT NULL DEFAULT 0,
        PRIMARY KEY (job_id, device_id, key)
    ) WITHOUT ROWID;
    """,
    # 5: fewer job item indexes that hold the status: every status change rewrote all of
    # them (the per-job status index is served by the batch index and the primary key)
    """
    DROP INDEX ix_job_item_status;
    DROP INDEX ix_job_item_device;
    CREATE INDEX ix_job_item_device ON job_item (device_id);
    """,
]


def migrate_legacy(conn: "Connection") -> None:
    """Bring a campaignctl 0.1 database (at any numbered version) to the last one, in
    the caller's write transaction; the baseline Alembic revision describes the result."""
    raw: Any = conn.connection.driver_connection
    current = raw.execute("PRAGMA user_version").fetchone()[0]
    if current > len(MIGRATIONS):
        raise CampaignctlError(
            f"the database is at schema version {current}, newer than this campaignctl "
            f"knows ({len(MIGRATIONS)}); upgrade campaignctl"
        )
    for number in range(current + 1, len(MIGRATIONS) + 1):
        for statement in _statements(MIGRATIONS[number - 1]):
            raw.execute(statement)
        raw.execute(f"PRAGMA user_version = {number}")


def _statements(script: str) -> list[str]:
    # executescript() would COMMIT our transaction; split the script instead. Migration
    # scripts hold no semicolons inside literals or triggers.
    return [s.strip() for s in script.split(";") if s.strip()]
