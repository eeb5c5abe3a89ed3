"""audit: the subject map each checkpoint commits to (completeness proofs per citizen)

Revision ID: audit_0002
Revises: audit_0001
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "audit_0002"
down_revision = "audit_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_subject_maps",
        sa.Column("log_id", sa.String(200), primary_key=True),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("root", sa.LargeBinary(32), nullable=False),
    )
    op.create_table(
        "audit_subject_members",
        sa.Column("log_id", sa.String(200), primary_key=True),
        sa.Column("key", sa.LargeBinary(32), primary_key=True),
        sa.Column("bucket", sa.BigInteger(), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.Column("chain", sa.LargeBinary(32), nullable=False),
    )
    op.create_index(
        "ix_audit_subject_members_bucket", "audit_subject_members", ["log_id", "bucket"]
    )
    op.create_table(
        "audit_subject_nodes",
        sa.Column("log_id", sa.String(200), primary_key=True),
        sa.Column("node_id", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("hash", sa.LargeBinary(32), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("audit_subject_nodes")
    op.drop_table("audit_subject_members")
    op.drop_table("audit_subject_maps")
