"""exchange: central registry tables and node tables (replay, message log, client keys)

Revision ID: exchange_0001
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "exchange_0001"
down_revision = None
branch_labels = ("exchange",)
depends_on = None

ID = sa.String(255)
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "xchg_members",
        sa.Column("id", ID, primary_key=True),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("name_en", sa.String(255), nullable=False, server_default=""),
        sa.Column("address", sa.String(1024), nullable=True),
    )
    op.create_table(
        "xchg_subsystems",
        sa.Column("id", ID, primary_key=True),
        sa.Column("member_id", ID, nullable=False, index=True),
        sa.Column("name", sa.String(255), nullable=False, server_default=""),
    )
    op.create_table(
        "xchg_certificates",
        sa.Column("fingerprint", sa.String(64), primary_key=True),
        sa.Column("subsystem_id", ID, nullable=False, index=True),
        sa.Column("serial", sa.String(64), nullable=False),
        sa.Column("pem", sa.Text, nullable=False),
        sa.Column("not_after", TS, nullable=False),
        sa.Column("revoked", sa.Boolean, nullable=False, server_default=sa.false()),
    )
    op.create_table(
        "xchg_services",
        sa.Column("id", ID, primary_key=True),
        sa.Column("subsystem_id", ID, nullable=False, index=True),
        sa.Column("description", sa.Text, nullable=False, server_default=""),
        sa.Column("fields", sa.JSON, nullable=False),
        sa.Column("purposes", sa.JSON, nullable=False),
        sa.Column("changes", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("openapi", sa.JSON, nullable=True),
    )
    op.create_table(
        "xchg_access_rights",
        sa.Column("client_id", ID, primary_key=True),
        sa.Column("service_id", ID, primary_key=True),
        sa.Column("not_before", TS, nullable=True),
        sa.Column("not_after", TS, nullable=True),
    )
    op.create_table(
        "xchg_statutes",
        sa.Column("id", ID, primary_key=True),
        sa.Column("service_id", ID, nullable=False, index=True),
        sa.Column("client_id", ID, nullable=False),
        sa.Column("purposes", sa.JSON, nullable=False),
        sa.Column("fields", sa.JSON, nullable=False),
        sa.Column("ordinance", sa.Text, nullable=False),
        sa.Column("title_ja", sa.Text, nullable=False, server_default=""),
        sa.Column("title_en", sa.Text, nullable=False, server_default=""),
    )
    op.create_table(
        "xchg_registry_meta",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )
    op.create_table(
        "xchg_seen_messages",
        sa.Column("node", ID, primary_key=True),
        sa.Column("sender", ID, primary_key=True),
        sa.Column("message_id", sa.String(128), primary_key=True),
        sa.Column("seen_at", TS, nullable=False, index=True),
    )
    op.create_table(
        "xchg_message_log",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("node", ID, nullable=False, index=True),
        sa.Column("time", TS, nullable=False, index=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("decision", sa.String(16), nullable=False),
        sa.Column("client", ID, nullable=True),
        sa.Column("service", ID, nullable=True),
        sa.Column("purpose", sa.String(128), nullable=True),
        sa.Column("subject", sa.String(128), nullable=True, index=True),
        sa.Column("consent_id", sa.String(128), nullable=True),
        sa.Column("message_id", sa.String(128), nullable=True, index=True),
        sa.Column("request_hash", sa.String(128), nullable=True),
        sa.Column("body_hash", sa.String(128), nullable=True),
        sa.Column("status", sa.Integer, nullable=True),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("decision_id", sa.String(64), nullable=True),
        sa.Column("basis", sa.String(255), nullable=True),
    )
    op.create_table(
        "xchg_client_keys",
        sa.Column("key_hash", sa.String(64), primary_key=True),
        sa.Column("node", ID, nullable=False, index=True),
        sa.Column("client_id", ID, nullable=False),
        sa.Column("created_at", TS, nullable=False),
    )


def downgrade() -> None:
    for table in (
        "xchg_client_keys",
        "xchg_message_log",
        "xchg_seen_messages",
        "xchg_registry_meta",
        "xchg_statutes",
        "xchg_access_rights",
        "xchg_services",
        "xchg_certificates",
        "xchg_subsystems",
        "xchg_members",
    ):
        op.drop_table(table)
