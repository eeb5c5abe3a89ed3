"""exchange: restricted statutes (a statute's exchanges kept from the citizen's view for N days)

Revision ID: exchange_0002
Revises: exchange_0001
Create Date: 2026-12-09
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "exchange_0002"
down_revision = "exchange_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("xchg_statutes") as batch:
        batch.add_column(sa.Column("restricted_days", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("xchg_statutes") as batch:
        batch.drop_column("restricted_days")
