"""audit: restricted entries (the hidden subject and salt of each, until its release)

Revision ID: audit_0003
Revises: audit_0002
Create Date: 2026-12-09
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "audit_0003"
down_revision = "audit_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_restricted",
        sa.Column("log_id", sa.String(200), primary_key=True),
        sa.Column("idx", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("subject", sa.String(255), nullable=False),
        sa.Column("salt", sa.LargeBinary(32), nullable=False),
        sa.Column("release_us", sa.BigInteger(), nullable=False),
        sa.Column("released_idx", sa.BigInteger(), nullable=True),
    )
    op.create_index(
        "ix_audit_restricted_due", "audit_restricted", ["log_id", "released_idx", "release_us"]
    )


def downgrade() -> None:
    op.drop_table("audit_restricted")
