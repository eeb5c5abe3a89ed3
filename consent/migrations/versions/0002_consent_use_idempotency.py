"""consent: a use remembers the exchange's Idempotency-Key (a retry does not spend again)

Revision ID: consent_0002
Revises: consent_0001
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "consent_0002"
down_revision = "consent_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("consent_uses") as batch:
        batch.add_column(sa.Column("idempotency_key", sa.String(128), nullable=True))
    op.create_index(
        "ix_consent_uses_idempotency", "consent_uses", ["consent_id", "idempotency_key"]
    )


def downgrade() -> None:
    op.drop_index("ix_consent_uses_idempotency", table_name="consent_uses")
    with op.batch_alter_table("consent_uses") as batch:
        batch.drop_column("idempotency_key")
