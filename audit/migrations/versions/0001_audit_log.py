"""audit: transparency log heads, entries, tree nodes and checkpoints

Revision ID: audit_0001
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "audit_0001"
down_revision = None
branch_labels = ("audit",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_heads",
        sa.Column("log_id", sa.String(200), primary_key=True),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("root", sa.LargeBinary(32), nullable=False),
        sa.Column("compact_range", sa.LargeBinary(), nullable=False),
    )
    op.create_table(
        "audit_entries",
        sa.Column("log_id", sa.String(200), primary_key=True),
        sa.Column("idx", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("leaf_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("time_us", sa.BigInteger(), nullable=False),
        sa.Column("node", sa.String(255), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("decision", sa.String(16), nullable=False),
        sa.Column("client", sa.String(255), nullable=True),
        sa.Column("service", sa.String(255), nullable=True),
        sa.Column("purpose", sa.String(255), nullable=True),
        sa.Column("subject", sa.String(255), nullable=True),
        sa.Column("consent_id", sa.String(255), nullable=True),
        sa.Column("message_id", sa.String(255), nullable=True),
    )
    for name, cols in (
        ("subject", ["log_id", "subject", "idx"]),
        ("client", ["log_id", "client", "idx"]),
        ("service", ["log_id", "service", "idx"]),
        ("purpose", ["log_id", "purpose", "idx"]),
        ("time", ["log_id", "time_us"]),
        ("consent", ["log_id", "consent_id"]),
    ):
        op.create_index(f"ix_audit_entries_{name}", "audit_entries", cols)
    op.create_table(
        "audit_nodes",
        sa.Column("log_id", sa.String(200), primary_key=True),
        sa.Column("node_key", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("hash", sa.LargeBinary(32), nullable=False),
    )
    op.create_table(
        "audit_checkpoints",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("log_id", sa.String(200), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("root", sa.LargeBinary(32), nullable=False),
        sa.Column("time_us", sa.BigInteger(), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
    )
    op.create_index("ix_audit_checkpoints_log", "audit_checkpoints", ["log_id", "id"])


def downgrade() -> None:
    op.drop_table("audit_checkpoints")
    op.drop_table("audit_nodes")
    op.drop_table("audit_entries")
    op.drop_table("audit_heads")
