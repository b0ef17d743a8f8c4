"""Entries by revision, and the revisions of a job's writes: the supervision looks up
the entries others wrote since a job's own writes (a later change makes a device
invalid) instead of reading every entry of every device of the job.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

TEXT = sa.Text().with_variant(sa.Text(collation='C'), 'postgresql')


def upgrade() -> None:
    with op.batch_alter_table('device_config', schema=None) as batch_op:
        batch_op.create_index('ix_device_config_revision', ['desired_revision'], unique=False)
    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.add_column(sa.Column('revisions', TEXT, nullable=True))
    # Jobs written before: their revisions from their items, so that a job whose later
    # batches are written after the upgrade keeps all of its own.
    bind = op.get_bind()
    revisions: dict[int, list[int]] = {}
    for job_id, revision in bind.execute(sa.text(
            "SELECT DISTINCT job_id, revision FROM job_item WHERE revision > 0 ORDER BY job_id, revision")):
        revisions.setdefault(job_id, []).append(revision)
    if revisions:
        bind.execute(sa.text("UPDATE job SET revisions = :revisions WHERE id = :id"),
                     [{"id": job_id, "revisions": "".join(f"{r}," for r in found)}
                      for job_id, found in revisions.items()])


def downgrade() -> None:
    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.drop_column('revisions')
    with op.batch_alter_table('device_config', schema=None) as batch_op:
        batch_op.drop_index('ix_device_config_revision')
