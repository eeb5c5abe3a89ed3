"""exchange: the inbox of received events (stream, seq applied once)

Revision ID: exchange_0003
Revises: exchange_0002
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "exchange_0003"
down_revision = "exchange_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "xchg_event_inbox",
        sa.Column("stream", sa.String(513), primary_key=True),
        sa.Column("seq", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("sender", sa.String(255), nullable=False),
        sa.Column("recipient", sa.String(255), nullable=False),
        sa.Column("type", sa.String(128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("wire", sa.Text(), nullable=False),
    )
    op.create_index("ix_xchg_event_inbox_recipient", "xchg_event_inbox", ["recipient"])


def downgrade() -> None:
    op.drop_index("ix_xchg_event_inbox_recipient", table_name="xchg_event_inbox")
    op.drop_table("xchg_event_inbox")
