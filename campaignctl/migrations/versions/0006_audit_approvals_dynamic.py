"""Campaigns that run themselves (audit events, approvals, devices joining a dynamic
campaign) and operators of the API and the web front-end.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

TEXT = sa.Text().with_variant(sa.Text(collation='C'), 'postgresql')


def upgrade() -> None:
    op.create_table('approval',
    sa.Column('campaign_id', sa.Integer(), nullable=False),
    sa.Column('actor', TEXT, nullable=False),
    sa.Column('verdict', TEXT, nullable=False),
    sa.Column('comment', TEXT, nullable=True),
    sa.Column('at', TEXT, nullable=False),
    sa.ForeignKeyConstraint(['campaign_id'], ['campaign.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('campaign_id', 'actor'),
    sqlite_with_rowid=False
    )
    op.create_table('event',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('at', TEXT, nullable=False),
    sa.Column('actor', TEXT, nullable=False),
    sa.Column('action', TEXT, nullable=False),
    sa.Column('campaign', TEXT, nullable=True),
    sa.Column('device', TEXT, nullable=True),
    sa.Column('details', TEXT, server_default='{}', nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('event', schema=None) as batch_op:
        batch_op.create_index('ix_event_at', ['at'], unique=False)
        batch_op.create_index('ix_event_campaign', ['campaign', 'id'], unique=False)
        batch_op.create_index('ix_event_device', ['device', 'id'], unique=False)
    with op.batch_alter_table('job_item', schema=None) as batch_op:
        batch_op.add_column(sa.Column('joined_at', TEXT, nullable=True))
    op.create_table('operator',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('name', TEXT, nullable=False),
    sa.Column('token_hash', TEXT, nullable=False),
    sa.Column('created_at', TEXT, nullable=False),
    sa.Column('revoked_at', TEXT, nullable=True),
    sa.Column('last_used_at', TEXT, nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name'),
    sa.UniqueConstraint('token_hash')
    )


def downgrade() -> None:
    op.drop_table('operator')
    with op.batch_alter_table('job_item', schema=None) as batch_op:
        batch_op.drop_column('joined_at')
    with op.batch_alter_table('event', schema=None) as batch_op:
        batch_op.drop_index('ix_event_device')
        batch_op.drop_index('ix_event_campaign')
        batch_op.drop_index('ix_event_at')
    op.drop_table('event')
    op.drop_table('approval')
