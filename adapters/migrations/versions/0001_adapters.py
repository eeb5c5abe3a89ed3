"""adapters: idempotency records and the pseudonym store

Revision ID: adapters_0001
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "adapters_0001"
down_revision = None
branch_labels = ("adapters",)
depends_on = None


def upgrade() -> None:
    # A department database shared with the platform may already hold the SQL adapter's
    # idempotency table (``adapters.store.ensure_idempotency_table`` creates it where the adapter
    # reads): the same columns, so it is kept as it is.
    if not sa.inspect(op.get_bind()).has_table("adapters_idempotency"):
        _idempotency_table()
    _pseudonym_tables()


def _idempotency_table() -> None:
    op.create_table(
        "adapters_idempotency",
        sa.Column("client", sa.String(255), primary_key=True),
        sa.Column("service", sa.String(255), primary_key=True),
        sa.Column("idempotency_key", sa.String(128), primary_key=True),
        sa.Column("subject", sa.String(128), nullable=True),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("response", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def _pseudonym_tables() -> None:
    op.create_table(
        "adapters_pseudonym_subjects",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("citizen_key", sa.String(128), nullable=False, unique=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "adapters_pseudonyms",
        sa.Column(
            "subject_id",
            sa.String(32),
            sa.ForeignKey("adapters_pseudonym_subjects.id"),
            primary_key=True,
        ),
        sa.Column("agency", sa.String(255), primary_key=True),
        sa.Column("pseudonym", sa.String(64), nullable=False),
        sa.UniqueConstraint("agency", "pseudonym", name="uq_adapters_pseudonyms_agency_pseudonym"),
    )
    op.create_index("ix_adapters_pseudonyms_subject", "adapters_pseudonyms", ["subject_id"])


def downgrade() -> None:
    op.drop_index("ix_adapters_pseudonyms_subject", table_name="adapters_pseudonyms")
    op.drop_table("adapters_pseudonyms")
    op.drop_table("adapters_pseudonym_subjects")
    op.drop_table("adapters_idempotency")
