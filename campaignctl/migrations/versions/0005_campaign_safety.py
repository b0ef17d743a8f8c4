"""Campaign safety: recalled firmwares, and the campaign a rollback puts back.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

TEXT = sa.Text().with_variant(sa.Text(collation='C'), 'postgresql')


def upgrade() -> None:
    with op.batch_alter_table('firmware', schema=None) as batch_op:
        batch_op.add_column(sa.Column('recalled_at', TEXT, nullable=True))
        batch_op.add_column(sa.Column('recall_reason', TEXT, nullable=True))
    with op.batch_alter_table('campaign', schema=None) as batch_op:
        batch_op.add_column(sa.Column('rollback_of', TEXT, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('campaign', schema=None) as batch_op:
        batch_op.drop_column('rollback_of')
    with op.batch_alter_table('firmware', schema=None) as batch_op:
        batch_op.drop_column('recall_reason')
        batch_op.drop_column('recalled_at')
