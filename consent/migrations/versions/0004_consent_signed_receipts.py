"""consent: receipts are signed by the consent service (a compact JWS beside the document)

Revision ID: consent_0004
Revises: consent_0003
Create Date: 2026-12-09
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "consent_0004"
down_revision = "consent_0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Receipts issued before this revision stay unsigned (NULL): no key is at hand here, and
    # signing them now would claim a signature the citizen never received.
    op.add_column("consent_receipts", sa.Column("jws", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("consent_receipts", "jws")
