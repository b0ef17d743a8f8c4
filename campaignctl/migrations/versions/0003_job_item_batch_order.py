"""The batch index carries the device id: the write step takes a batch's next pending
devices in id order straight from it (PostgreSQL sorted every pending item per chunk;
SQLite's index already held the primary key).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('job_item', schema=None) as batch_op:
        batch_op.drop_index('ix_job_item_batch')
        batch_op.create_index('ix_job_item_batch', ['job_id', 'batch', 'status', 'device_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('job_item', schema=None) as batch_op:
        batch_op.drop_index('ix_job_item_batch')
        batch_op.create_index('ix_job_item_batch', ['job_id', 'batch', 'status'], unique=False)
