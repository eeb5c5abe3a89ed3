"""exchange: change subscriptions — change events in the registry, the node's event outbox,
subscriptions and published changes (publisher), subscriber links and the change feed (subscriber)

Revision ID: exchange_0005
Revises: exchange_0004
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "exchange_0005"
down_revision = "exchange_0004"
branch_labels = None
depends_on = None

ID = sa.String(255)
STREAM = sa.String(513)
TS = sa.DateTime(timezone=True)


def _outbox() -> None:
    op.create_table(
        "xchg_event_outbox",
        sa.Column("stream", STREAM, primary_key=True),
        sa.Column("seq", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("recipient", ID, nullable=False),
        sa.Column("type", sa.String(128), nullable=False),
        sa.Column("wire", sa.Text(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("delivered_at", TS, nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", TS, nullable=False),
        sa.Column("last_error", sa.String(255), nullable=True),
    )
    op.create_index(
        "ix_xchg_event_outbox_undelivered", "xchg_event_outbox", ["delivered_at", "stream", "seq"]
    )
    op.create_table(
        "xchg_event_streams",
        sa.Column("stream", STREAM, primary_key=True),
        sa.Column("last_seq", sa.BigInteger(), nullable=False),
    )


def _publisher() -> None:
    op.create_table(
        "xchg_subscriptions",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("node", ID, nullable=False),
        sa.Column("service", ID, nullable=False),
        sa.Column("subscriber", ID, nullable=False),
        sa.Column("subject", sa.String(128), nullable=False),
        sa.Column("purpose", sa.String(128), nullable=False),
        sa.Column("basis", sa.String(255), nullable=True),
        sa.Column("consent_id", sa.String(64), nullable=True),
        sa.Column("fields", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("ended_at", TS, nullable=True),
        sa.Column("reason", sa.String(255), nullable=True),
    )
    op.create_index(
        "ix_xchg_subscriptions_target", "xchg_subscriptions", ["service", "subject", "status"]
    )
    op.create_index("ix_xchg_subscriptions_consent_id", "xchg_subscriptions", ["consent_id"])
    op.create_table(
        "xchg_consent_states",
        sa.Column("node", ID, primary_key=True),
        sa.Column("consent_id", sa.String(64), primary_key=True),
        sa.Column("status", sa.String(16), nullable=True),
    )
    op.create_table(
        "xchg_published_changes",
        sa.Column("node", ID, primary_key=True),
        sa.Column("service", ID, primary_key=True),
        sa.Column("change_key", sa.String(200), primary_key=True),
        sa.Column("events", sa.Integer(), nullable=False),
        sa.Column("told", sa.JSON(), nullable=False),
        sa.Column("published_at", TS, nullable=False),
    )


def _subscriber() -> None:
    op.create_table(
        "xchg_subscriber_links",
        sa.Column("subscription_id", sa.String(36), primary_key=True),
        sa.Column("client", ID, nullable=False),
        sa.Column("service", ID, nullable=False),
        sa.Column("subject", sa.String(128), nullable=True),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_table(
        "xchg_change_feed",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("client", ID, nullable=False),
        sa.Column("event_id", sa.String(64), nullable=False, unique=True),
        sa.Column("subscription_id", sa.String(36), nullable=False),
        sa.Column("service", ID, nullable=False),
        sa.Column("subject", sa.String(128), nullable=True),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("occurred_at", TS, nullable=False),
        sa.Column("received_at", TS, nullable=False),
    )
    op.create_index("ix_xchg_change_feed_client", "xchg_change_feed", ["client", "id"])


def upgrade() -> None:
    with op.batch_alter_table("xchg_services") as batch:
        batch.add_column(sa.Column("event_of", ID, nullable=True))
    _outbox()
    _publisher()
    _subscriber()


def downgrade() -> None:
    for table in (
        "xchg_change_feed",
        "xchg_subscriber_links",
        "xchg_published_changes",
        "xchg_consent_states",
        "xchg_subscriptions",
        "xchg_event_streams",
        "xchg_event_outbox",
    ):
        op.drop_table(table)
    with op.batch_alter_table("xchg_services") as batch:
        batch.drop_column("event_of")
