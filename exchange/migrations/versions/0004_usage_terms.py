"""exchange: usage terms (a statute's retention and onward-transfer term) and the consumer
node's obligations ledger (one row per response received under usage terms)

Revision ID: exchange_0004
Revises: exchange_0003
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "exchange_0004"
down_revision = "exchange_0003"
branch_labels = None
depends_on = None

ID = sa.String(255)
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("xchg_statutes") as batch:
        batch.add_column(sa.Column("retention_days", sa.Integer(), nullable=True))
        batch.add_column(
            sa.Column("onward_transfer", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    op.create_table(
        "xchg_obligations",
        sa.Column("client", ID, primary_key=True),
        sa.Column("message_id", sa.String(128), primary_key=True),
        sa.Column("service", ID, nullable=False),
        sa.Column("subject", sa.String(128), nullable=True),
        sa.Column("purpose", sa.String(128), nullable=False),
        sa.Column("delete_by", sa.Date(), nullable=False),
        sa.Column("onward", sa.Boolean(), nullable=False),
        sa.Column("received_at", TS, nullable=False),
        sa.Column("deleted_at", TS, nullable=True),
        sa.Column("overdue_at", TS, nullable=True),
    )
    op.create_index("ix_xchg_obligations_open", "xchg_obligations", ["deleted_at", "delete_by"])
    op.create_index("ix_xchg_obligations_subject", "xchg_obligations", ["subject"])


def downgrade() -> None:
    op.drop_index("ix_xchg_obligations_subject", "xchg_obligations")
    op.drop_index("ix_xchg_obligations_open", "xchg_obligations")
    op.drop_table("xchg_obligations")
    with op.batch_alter_table("xchg_statutes") as batch:
        batch.drop_column("onward_transfer")
        batch.drop_column("retention_days")
