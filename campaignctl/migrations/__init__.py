"""Schema revisions, applied by Alembic to both backends.

Revisions live in ``versions/`` and are written from ``campaignctl.models``. SQLite
databases are upgraded when opened (one process, one file); PostgreSQL ones only by
``campaignctl db upgrade``, since running workers must not see the schema change under
them: other commands check the revision and say what to run.

SQLite databases made by campaignctl 0.1 (numbered migrations in ``PRAGMA
user_version``) are brought to the baseline revision first, data included.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from campaignctl.errors import CampaignctlError

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

#: The newest revision in versions/ (a test checks it), so that opening a database
#: costs one query rather than loading Alembic.
HEAD = "0006"
BASELINE = "0001"


def current_revision(conn: "Connection") -> str | None:
    from sqlalchemy import inspect

    if not inspect(conn).has_table("alembic_version"):
        return None
    return conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()


def _known(revision: str) -> bool:
    return any((Path(__file__).parent / "versions").glob(f"{revision}_*.py"))


def ensure_schema(engine: "Engine", *, upgrade: bool) -> str:
    """Check (and with ``upgrade``, bring) the database to the current revision."""
    with engine.connect() as conn:
        revision = current_revision(conn)
        if revision == HEAD:
            return HEAD  # the common case: one query, no lock
        legacy = conn.dialect.name == "sqlite" and conn.exec_driver_sql("PRAGMA user_version").scalar()
    if revision is not None and not _known(revision):
        raise CampaignctlError(
            f"the database is at schema revision {revision}, newer than this campaignctl knows "
            f"({HEAD}); upgrade campaignctl"
        )
    if not upgrade:
        where = f"at revision {revision}" if revision else "not initialised"
        raise CampaignctlError(
            f"the database schema is {where}; this campaignctl needs revision {HEAD}: run `campaignctl db upgrade`"
        )
    return migrate(engine, legacy=bool(legacy) and revision is None)


def migrate(engine: "Engine", *, legacy: bool = False) -> str:
    """Apply every missing revision in one transaction (``db upgrade``)."""
    from alembic import command

    from campaignctl import db, dialect

    with db.write(engine) as conn:
        dialect.exclusive(conn, "schema upgrade")  # two `db upgrade` at once: one after the other
        if legacy:
            from campaignctl.migrations.legacy_sqlite import migrate_legacy

            migrate_legacy(conn)
            command.stamp(_config(conn), BASELINE)
        command.upgrade(_config(conn), "head")
        return current_revision(conn) or HEAD


def status(engine: "Engine") -> dict[str, Any]:
    """``db status``: the database's revision and the newest this campaignctl knows."""
    from campaignctl import db

    with db.read(engine) as conn:
        revision = current_revision(conn)
    return {
        "database": db.location_of(engine).shown,
        "backend": db.location_of(engine).backend,
        "current": revision,
        "latest": HEAD,
        "up_to_date": revision == HEAD,
    }


def _config(conn: "Connection") -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent))
    config.attributes["connection"] = conn
    return config
