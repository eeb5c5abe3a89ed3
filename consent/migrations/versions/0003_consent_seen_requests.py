"""consent: signed requests that changed state are remembered while they are valid (replays)

Revision ID: consent_0003
Revises: consent_0002
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "consent_0003"
down_revision = "consent_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "consent_seen_requests",
        sa.Column("request_id", sa.String(64), primary_key=True),
        sa.Column("valid_until", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index(
        "ix_consent_seen_requests_valid_until", "consent_seen_requests", ["valid_until"]
    )


def downgrade() -> None:
    op.drop_index("ix_consent_seen_requests_valid_until", table_name="consent_seen_requests")
    op.drop_table("consent_seen_requests")
