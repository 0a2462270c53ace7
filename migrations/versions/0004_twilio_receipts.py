"""twilio receipts: each Twilio webhook (MessageSid + status) is applied once

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07 21:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('twilio_receipts',
    sa.Column('message_sid', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=32), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('message_sid', 'status', name=op.f('pk_twilio_receipts'))
    )


def downgrade() -> None:
    op.drop_table('twilio_receipts')
