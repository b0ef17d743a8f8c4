"""Baseline: the schema of the numbered SQLite migrations 1-5 (campaignctl 0.1), on both backends.

An SQLite database made by campaignctl 0.1 is brought to that schema by
``campaignctl.migrations.legacy_sqlite``, then stamped with this revision.

Revision ID: 0001
Revises: 
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None

#: Text compared and sorted by byte on both backends (see campaignctl.models).
TEXT = sa.Text().with_variant(sa.Text(collation='C'), 'postgresql')


def upgrade() -> None:
    op.create_table('campaign',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('name', TEXT, nullable=False),
    sa.Column('description', TEXT, nullable=True),
    sa.Column('status', TEXT, server_default='draft', nullable=False),
    sa.Column('spec', TEXT, nullable=False),
    sa.Column('secret_keys', TEXT, server_default='[]', nullable=False),
    sa.Column('created_at', TEXT, nullable=False),
    sa.Column('updated_at', TEXT, nullable=False),
    sa.Column('launched_at', TEXT, nullable=True),
    sa.Column('completed_at', TEXT, nullable=True),
    sa.Column('start_at', TEXT, nullable=True),
    sa.Column('reason', TEXT, nullable=True),
    sa.Column('launch_settings', TEXT, nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name')
    )
    with op.batch_alter_table('campaign', schema=None) as batch_op:
        batch_op.create_index('ix_campaign_status', ['status', 'start_at'], unique=False)

    op.create_table('device_type',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('name', TEXT, nullable=False),
    sa.Column('created_at', TEXT, nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name')
    )
    op.create_table('interface',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('name', TEXT, nullable=False),
    sa.Column('type', TEXT, nullable=False),
    sa.Column('settings', TEXT, server_default='{}', nullable=False),
    sa.Column('created_at', TEXT, nullable=False),
    sa.Column('updated_at', TEXT, nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name')
    )
    op.create_table('meta',
    sa.Column('key', TEXT, nullable=False),
    sa.Column('value', sa.BigInteger(), server_default='0', nullable=False),
    sa.PrimaryKeyConstraint('key')
    )
    op.bulk_insert(sa.table('meta', sa.column('key', sa.Text()), sa.column('value', sa.BigInteger())),
                   [{'key': 'revision', 'value': 0}])
    op.create_table('device',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('name', TEXT, nullable=False),
    sa.Column('device_type_id', sa.Integer(), nullable=False),
    sa.Column('interface_id', sa.Integer(), nullable=False),
    sa.Column('tags', TEXT, server_default='{}', nullable=False),
    sa.Column('created_at', TEXT, nullable=False),
    sa.Column('updated_at', TEXT, nullable=False),
    sa.Column('secret_salt', TEXT, nullable=True),
    sa.Column('secret_hash', TEXT, nullable=True),
    sa.ForeignKeyConstraint(['device_type_id'], ['device_type.id'], ),
    sa.ForeignKeyConstraint(['interface_id'], ['interface.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name')
    )
    with op.batch_alter_table('device', schema=None) as batch_op:
        batch_op.create_index('ix_device_interface', ['interface_id'], unique=False)
        batch_op.create_index('ix_device_type', ['device_type_id'], unique=False)

    op.create_table('firmware',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('device_type_id', sa.Integer(), nullable=False),
    sa.Column('firmware_type', TEXT, nullable=False),
    sa.Column('version', TEXT, nullable=False),
    sa.Column('url', TEXT, nullable=False),
    sa.Column('token', TEXT, nullable=True),
    sa.Column('sha256', TEXT, nullable=True),
    sa.Column('size', sa.BigInteger(), nullable=True),
    sa.Column('description', TEXT, nullable=True),
    sa.Column('created_at', TEXT, nullable=False),
    sa.ForeignKeyConstraint(['device_type_id'], ['device_type.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('device_type_id', 'firmware_type', 'version')
    )
    op.create_table('firmware_type',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('device_type_id', sa.Integer(), nullable=False),
    sa.Column('name', TEXT, nullable=False),
    sa.Column('version_key', TEXT, nullable=False),
    sa.Column('url_key', TEXT, nullable=False),
    sa.Column('token_key', TEXT, nullable=True),
    sa.ForeignKeyConstraint(['device_type_id'], ['device_type.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('device_type_id', 'name')
    )
    op.create_table('job',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('campaign_id', sa.Integer(), nullable=False),
    sa.Column('status', TEXT, server_default='created', nullable=False),
    sa.Column('step', TEXT, server_default='resolve', nullable=False),
    sa.Column('plan', TEXT, server_default='{}', nullable=False),
    sa.Column('settings', TEXT, server_default='{}', nullable=False),
    sa.Column('total', sa.Integer(), server_default='0', nullable=False),
    sa.Column('lease_owner', TEXT, nullable=True),
    sa.Column('lease_expires_at', sa.Float(), nullable=True),
    sa.Column('error', TEXT, nullable=True),
    sa.Column('created_at', TEXT, nullable=False),
    sa.Column('started_at', TEXT, nullable=True),
    sa.Column('finished_at', TEXT, nullable=True),
    sa.Column('written_at', TEXT, nullable=True),
    sa.ForeignKeyConstraint(['campaign_id'], ['campaign.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.create_index('ix_job_campaign', ['campaign_id'], unique=False)

    op.create_table('device_config',
    sa.Column('device_id', sa.Integer(), nullable=False),
    sa.Column('key', TEXT, nullable=False),
    sa.Column('desired', TEXT, nullable=True),
    sa.Column('desired_at', TEXT, nullable=True),
    sa.Column('desired_revision', sa.BigInteger(), nullable=True),
    sa.Column('desired_by', TEXT, nullable=True),
    sa.Column('secret', sa.Boolean(), server_default=sa.false(), nullable=False),
    sa.Column('reported', TEXT, nullable=True),
    sa.Column('reported_at', TEXT, nullable=True),
    sa.ForeignKeyConstraint(['device_id'], ['device.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('device_id', 'key'),
    sqlite_with_rowid=False
    )
    op.create_table('job_batch',
    sa.Column('job_id', sa.Integer(), nullable=False),
    sa.Column('number', sa.Integer(), nullable=False),
    sa.Column('size', sa.Integer(), nullable=False),
    sa.Column('status', TEXT, server_default='pending', nullable=False),
    sa.Column('accepted', sa.Boolean(), server_default=sa.false(), nullable=False),
    sa.Column('started_at', TEXT, nullable=True),
    sa.Column('delivered_at', TEXT, nullable=True),
    sa.Column('finished_at', TEXT, nullable=True),
    sa.Column('reason', TEXT, nullable=True),
    sa.ForeignKeyConstraint(['job_id'], ['job.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('job_id', 'number'),
    sqlite_with_rowid=False
    )
    op.create_table('job_item',
    sa.Column('job_id', sa.Integer(), nullable=False),
    sa.Column('device_id', sa.Integer(), nullable=False),
    sa.Column('status', TEXT, server_default='pending', nullable=False),
    sa.Column('revision', sa.BigInteger(), nullable=True),
    sa.Column('attempts', sa.Integer(), server_default='0', nullable=False),
    sa.Column('error', TEXT, nullable=True),
    sa.Column('updated_at', TEXT, nullable=True),
    sa.Column('batch', sa.Integer(), server_default='1', nullable=False),
    sa.Column('delivered_at', TEXT, nullable=True),
    sa.ForeignKeyConstraint(['device_id'], ['device.id'], ),
    sa.ForeignKeyConstraint(['job_id'], ['job.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('job_id', 'device_id'),
    sqlite_with_rowid=False
    )
    with op.batch_alter_table('job_item', schema=None) as batch_op:
        batch_op.create_index('ix_job_item_batch', ['job_id', 'batch', 'status'], unique=False)
        batch_op.create_index('ix_job_item_device', ['device_id'], unique=False)

    op.create_table('job_item_before',
    sa.Column('job_id', sa.Integer(), nullable=False),
    sa.Column('device_id', sa.Integer(), nullable=False),
    sa.Column('key', TEXT, nullable=False),
    sa.Column('desired', TEXT, nullable=True),
    sa.Column('desired_at', TEXT, nullable=True),
    sa.Column('desired_by', TEXT, nullable=True),
    sa.Column('secret', sa.Boolean(), server_default=sa.false(), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['job.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('job_id', 'device_id', 'key'),
    sqlite_with_rowid=False
    )
    op.create_table('job_item_history',
    sa.Column('job_id', sa.Integer(), nullable=False),
    sa.Column('device_id', sa.Integer(), nullable=False),
    sa.Column('step', sa.Integer(), nullable=False),
    sa.Column('status', TEXT, nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('error', TEXT, nullable=True),
    sa.Column('at', TEXT, nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['job.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('job_id', 'device_id', 'step'),
    sqlite_with_rowid=False
    )
    op.create_table('job_step',
    sa.Column('job_id', sa.Integer(), nullable=False),
    sa.Column('number', sa.Integer(), nullable=False),
    sa.Column('kind', TEXT, nullable=False),
    sa.Column('batch', sa.Integer(), nullable=True),
    sa.Column('devices', sa.Integer(), server_default='0', nullable=False),
    sa.Column('started_at', TEXT, nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['job.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('job_id', 'number'),
    sqlite_with_rowid=False
    )


def downgrade() -> None:
    op.drop_table('job_step')
    op.drop_table('job_item_history')
    op.drop_table('job_item_before')
    with op.batch_alter_table('job_item', schema=None) as batch_op:
        batch_op.drop_index('ix_job_item_device')
        batch_op.drop_index('ix_job_item_batch')

    op.drop_table('job_item')
    op.drop_table('job_batch')
    op.drop_table('device_config')
    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.drop_index('ix_job_campaign')

    op.drop_table('job')
    op.drop_table('firmware_type')
    op.drop_table('firmware')
    with op.batch_alter_table('device', schema=None) as batch_op:
        batch_op.drop_index('ix_device_type')
        batch_op.drop_index('ix_device_interface')

    op.drop_table('device')
    op.drop_table('meta')
    op.drop_table('interface')
    op.drop_table('device_type')
    with op.batch_alter_table('campaign', schema=None) as batch_op:
        batch_op.drop_index('ix_campaign_status')

    op.drop_table('campaign')
