"""consent: an index for the outbox's delivery query (the undelivered heads of each stream) and
for pruning delivered events

Revision ID: consent_0007
Revises: consent_0006
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op

revision = "consent_0007"
down_revision = "consent_0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_consent_event_outbox_undelivered",
        "consent_event_outbox",
        ["delivered_at", "stream", "seq"],
    )


def downgrade() -> None:
    op.drop_index("ix_consent_event_outbox_undelivered", table_name="consent_event_outbox")
