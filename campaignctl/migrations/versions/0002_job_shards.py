"""Shards: a job's devices split into ranges that workers claim under a lease.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

TEXT = sa.Text().with_variant(sa.Text(collation='C'), 'postgresql')


def upgrade() -> None:
    op.create_table('job_shard',
    sa.Column('job_id', sa.Integer(), nullable=False),
    sa.Column('number', sa.Integer(), nullable=False),
    sa.Column('first_device_id', sa.Integer(), nullable=False),
    sa.Column('last_device_id', sa.Integer(), nullable=False),
    sa.Column('size', sa.Integer(), nullable=False),
    sa.Column('status', TEXT, server_default='pending', nullable=False),
    sa.Column('worker', TEXT, nullable=True),
    sa.Column('lease_expires_at', sa.Float(), nullable=True),
    sa.Column('delivered', sa.Integer(), server_default='0', nullable=False),
    sa.Column('failed', sa.Integer(), server_default='0', nullable=False),
    sa.Column('started_at', TEXT, nullable=True),
    sa.Column('finished_at', TEXT, nullable=True),
    sa.ForeignKeyConstraint(['job_id'], ['job.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('job_id', 'number'),
    sqlite_with_rowid=False
    )
    with op.batch_alter_table('job_shard', schema=None) as batch_op:
        batch_op.create_index('ix_job_shard_status', ['status', 'job_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('job_shard', schema=None) as batch_op:
        batch_op.drop_index('ix_job_shard_status')
    op.drop_table('job_shard')
