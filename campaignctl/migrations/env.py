"""Alembic's environment: campaignctl runs it on a connection it opened itself
(``campaignctl.migrations.upgrade``), in one transaction."""

from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel

import campaignctl.models  # noqa: F401  (registers the tables)

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=SQLModel.metadata, render_as_batch=True, compare_type=True)
context.run_migrations()
