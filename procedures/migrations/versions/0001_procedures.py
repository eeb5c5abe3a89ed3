"""procedures: procedures and their durable steps

Revision ID: procedures_0001
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "procedures_0001"
down_revision = None
branch_labels = ("procedures",)
depends_on = None

_TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "procedures_procedures",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("subject", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("input", sa.JSON(), nullable=False),
        sa.Column("plan", sa.JSON(), nullable=False),
        sa.Column("submission_key", sa.String(128), nullable=False),
        sa.Column("created_at", _TZ, nullable=False),
        sa.Column("updated_at", _TZ, nullable=False),
        sa.Column("confirmed_at", _TZ, nullable=True),
        sa.Column("finished_at", _TZ, nullable=True),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.UniqueConstraint("subject", "submission_key", name="uq_procedures_submission"),
    )
    op.create_index("ix_procedures_procedures_subject", "procedures_procedures", ["subject"])
    op.create_table(
        "procedures_steps",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column(
            "procedure_id",
            sa.String(36),
            sa.ForeignKey("procedures_procedures.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("order_group", sa.Integer(), nullable=False),
        sa.Column("recipient", sa.String(64), nullable=False),
        sa.Column("service", sa.String(300), nullable=False),
        sa.Column("basis", sa.String(16), nullable=False),
        sa.Column("statute", sa.String(200), nullable=True),
        sa.Column("consent_id", sa.String(64), nullable=True),
        sa.Column("consent_artefact", sa.Text(), nullable=True),
        sa.Column("fields", sa.JSON(), nullable=False),
        sa.Column("body", sa.JSON(), nullable=False),
        sa.Column("if_enrolled", sa.Boolean(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", _TZ, nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("idempotency_key", sa.String(128), nullable=False),
        sa.Column("result_hash", sa.String(64), nullable=True),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("message_id", sa.String(128), nullable=True),
        sa.Column("exchange_s", sa.Float(), nullable=True),
        sa.Column("claimed_by", sa.String(64), nullable=True),
        sa.Column("lease_until", _TZ, nullable=True),
        sa.Column("finished_at", _TZ, nullable=True),
        sa.UniqueConstraint("procedure_id", "seq", name="uq_procedures_steps_seq"),
        sa.UniqueConstraint("idempotency_key", name="uq_procedures_steps_idempotency"),
    )
    op.create_index("ix_procedures_steps_due", "procedures_steps", ["state", "next_attempt_at"])


def downgrade() -> None:
    op.drop_index("ix_procedures_steps_due", table_name="procedures_steps")
    op.drop_table("procedures_steps")
    op.drop_index("ix_procedures_procedures_subject", table_name="procedures_procedures")
    op.drop_table("procedures_procedures")
