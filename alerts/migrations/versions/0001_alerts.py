"""alerts: cursor, alerts (once per rule, citizen and trigger), history, preferences, e-mail outbox

Revision ID: alerts_0001
Revises:
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "alerts_0001"
down_revision = None
branch_labels = ("alerts",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "alert_cursors",
        sa.Column("log_id", sa.String(200), primary_key=True),
        sa.Column("next_index", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "alerts",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("log_id", sa.String(200), nullable=False),
        sa.Column("rule", sa.String(64), nullable=False),
        sa.Column("subject_key", sa.String(64), nullable=False),
        sa.Column("dedup", sa.String(255), nullable=False),
        sa.Column("client", sa.String(255), nullable=True),
        sa.Column("service", sa.String(255), nullable=True),
        sa.Column("entry_index", sa.BigInteger(), nullable=False),
        sa.Column("leaf_hash", sa.String(64), nullable=False),
        sa.Column("time_us", sa.BigInteger(), nullable=False),
        sa.Column("read", sa.Boolean(), nullable=False),
        sa.UniqueConstraint("log_id", "rule", "subject_key", "dedup", name="uq_alerts_once"),
    )
    op.create_index("ix_alerts_subject", "alerts", ["log_id", "subject_key", "id"])
    op.create_table(
        "alert_recipients",
        sa.Column("log_id", sa.String(200), primary_key=True),
        sa.Column("subject_key", sa.String(64), primary_key=True),
        sa.Column("client", sa.String(255), primary_key=True),
    )
    op.create_table(
        "alert_volumes",
        sa.Column("log_id", sa.String(200), primary_key=True),
        sa.Column("subject_key", sa.String(64), primary_key=True),
        sa.Column("window_us", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("entry_index", sa.BigInteger(), primary_key=True, autoincrement=False),
    )
    op.create_table(
        "alert_exchanges",
        sa.Column("log_id", sa.String(200), primary_key=True),
        sa.Column("request_hash", sa.String(255), primary_key=True),
        sa.Column("entry_index", sa.BigInteger(), nullable=False),
        sa.Column("time_us", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_alert_exchanges_time", "alert_exchanges", ["log_id", "time_us"])
    op.create_table(
        "alert_preferences",
        sa.Column("log_id", sa.String(200), primary_key=True),
        sa.Column("subject_key", sa.String(64), primary_key=True),
        sa.Column("disabled", sa.String(255), nullable=False),
        sa.Column("email", sa.String(254), nullable=True),
    )
    op.create_table(
        "alert_emails",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("alert_id", sa.Integer(), nullable=False, unique=True),
        sa.Column("address", sa.String(254), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_us", sa.BigInteger(), nullable=False),
        sa.Column("sent_us", sa.BigInteger(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
    )
    op.create_index("ix_alert_emails_due", "alert_emails", ["sent_us", "next_attempt_us"])


def downgrade() -> None:
    op.drop_table("alert_emails")
    op.drop_table("alert_preferences")
    op.drop_table("alert_exchanges")
    op.drop_table("alert_volumes")
    op.drop_table("alert_recipients")
    op.drop_table("alerts")
    op.drop_table("alert_cursors")
