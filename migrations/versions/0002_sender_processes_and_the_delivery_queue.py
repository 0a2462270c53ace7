"""sender processes and the delivery queue

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 22:20:40.758139
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('sender_processes',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('hostname', sa.String(length=255), nullable=False),
    sa.Column('pid', sa.Integer(), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_sender_processes'))
    )
    with op.batch_alter_table('sender_processes', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_sender_processes_heartbeat_at'), ['heartbeat_at'], unique=False)

    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.create_index('ix_deliveries_claimed_by', ['claimed_by', 'status'], unique=False)
        batch_op.create_index('ix_deliveries_queue', ['status', 'channel', 'next_attempt_at'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.drop_index('ix_deliveries_queue')
        batch_op.drop_index('ix_deliveries_claimed_by')

    with op.batch_alter_table('sender_processes', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_sender_processes_heartbeat_at'))

    op.drop_table('sender_processes')
