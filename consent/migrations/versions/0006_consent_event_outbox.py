"""consent: the outbox of consent status events and its stream heads

Revision ID: consent_0006
Revises: consent_0005
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "consent_0006"
down_revision = "consent_0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "consent_event_outbox",
        sa.Column("stream", sa.String(513), primary_key=True),
        sa.Column("seq", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("recipient", sa.String(255), nullable=False),
        sa.Column("type", sa.String(128), nullable=False),
        sa.Column("wire", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_error", sa.String(255), nullable=True),
    )
    op.create_table(
        "consent_event_streams",
        sa.Column("stream", sa.String(513), primary_key=True),
        sa.Column("last_seq", sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("consent_event_streams")
    op.drop_table("consent_event_outbox")
