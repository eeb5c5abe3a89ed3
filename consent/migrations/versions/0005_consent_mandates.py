"""consent: mandates — who may act for whom (issue 16, items 3-4)

Revision ID: consent_0005
Revises: consent_0004
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "consent_0005"
down_revision = "consent_0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "consent_mandates",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("representative", sa.String(128), nullable=False),
        sa.Column("represented", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("purposes", sa.JSON(), nullable=False),
        sa.Column("procedures", sa.JSON(), nullable=False),
        sa.Column("valid_from", sa.DateTime(timezone=True), nullable=False),
        sa.Column("valid_until", sa.DateTime(timezone=True), nullable=False),
        sa.Column("basis", sa.String(300), nullable=False),
        sa.Column("granted_by", sa.String(300), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_by", sa.String(300), nullable=True),
        sa.Column("artefact", sa.Text(), nullable=False),
    )
    op.create_index("ix_consent_mandates_representative", "consent_mandates", ["representative"])
    op.create_index("ix_consent_mandates_represented", "consent_mandates", ["represented"])


def downgrade() -> None:
    op.drop_index("ix_consent_mandates_represented", table_name="consent_mandates")
    op.drop_index("ix_consent_mandates_representative", table_name="consent_mandates")
    op.drop_table("consent_mandates")
