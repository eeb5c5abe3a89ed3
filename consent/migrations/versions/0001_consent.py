"""consent: requests, consents, history, uses, receipts

Revision ID: consent_0001
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "consent_0001"
down_revision = None
branch_labels = ("consent",)
depends_on = None

_TZ = sa.DateTime(timezone=True)


def _terms() -> list[sa.Column[object]]:
    return [
        sa.Column("subject", sa.String(128), nullable=False),
        sa.Column("client", sa.String(300), nullable=False),
        sa.Column("services", sa.JSON(), nullable=False),
        sa.Column("purpose_code", sa.String(64), nullable=False),
        sa.Column("purpose_ja", sa.Text(), nullable=False),
        sa.Column("purpose_en", sa.Text(), nullable=False),
        sa.Column("fields", sa.JSON(), nullable=False),
        sa.Column("valid_from", _TZ, nullable=False),
        sa.Column("valid_until", _TZ, nullable=False),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("max_uses", sa.Integer(), nullable=True),
        sa.Column("min_interval_s", sa.Integer(), nullable=True),
        sa.Column("data_retention_days", sa.Integer(), nullable=False),
        sa.Column("legal_text_version", sa.String(64), nullable=False),
    ]


def upgrade() -> None:
    op.create_table(
        "consent_requests",
        sa.Column("id", sa.String(36), primary_key=True),
        *_terms(),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", _TZ, nullable=False),
        sa.Column("decided_at", _TZ, nullable=True),
        sa.Column("consent_id", sa.String(36), nullable=True),
    )
    op.create_index("ix_consent_requests_subject", "consent_requests", ["subject"])
    op.create_table(
        "consent_consents",
        sa.Column("id", sa.String(36), primary_key=True),
        *_terms(),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", _TZ, nullable=False),
        sa.Column("updated_at", _TZ, nullable=False),
        sa.Column("use_count", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("last_used_at", _TZ, nullable=True),
        sa.Column("request_id", sa.String(36), nullable=True),
        sa.Column("artefact", sa.Text(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False, server_default="0"),
    )
    op.create_index("ix_consent_consents_subject", "consent_consents", ["subject"])
    op.create_table(
        "consent_history",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("consent_id", sa.String(36), nullable=False),
        sa.Column("at", _TZ, nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("from_status", sa.String(16), nullable=True),
        sa.Column("to_status", sa.String(16), nullable=False),
        sa.Column("actor", sa.String(300), nullable=False),
        sa.Column("receipt_id", sa.String(36), nullable=True),
    )
    op.create_index("ix_consent_history_consent_id", "consent_history", ["consent_id"])
    op.create_table(
        "consent_uses",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("consent_id", sa.String(36), nullable=False),
        sa.Column("message_id", sa.String(200), nullable=False),
        sa.Column("at", _TZ, nullable=False),
        sa.Column("client", sa.String(300), nullable=False),
        sa.Column("service", sa.String(400), nullable=False),
        sa.Column("fields", sa.JSON(), nullable=False),
        sa.UniqueConstraint("consent_id", "message_id", name="uq_consent_uses_msg"),
    )
    op.create_index("ix_consent_uses_consent_id", "consent_uses", ["consent_id"])
    op.create_table(
        "consent_receipts",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("consent_id", sa.String(36), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("issued_at", _TZ, nullable=False),
        sa.Column("document", sa.JSON(), nullable=False),
    )
    op.create_index("ix_consent_receipts_consent_id", "consent_receipts", ["consent_id"])


def downgrade() -> None:
    for table in (
        "consent_receipts",
        "consent_uses",
        "consent_history",
        "consent_consents",
        "consent_requests",
    ):
        op.drop_table(table)
