"""procedures: a procedure started for someone under a mandate (issue 16, item 4)

Revision ID: procedures_0002
Revises: procedures_0001
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "procedures_0002"
down_revision = "procedures_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # NULL: the citizen acted for themself (every procedure before this revision).
    op.add_column(
        "procedures_procedures", sa.Column("represented_party", sa.String(255), nullable=True)
    )
    op.add_column("procedures_procedures", sa.Column("acted_by", sa.String(128), nullable=True))


def downgrade() -> None:
    op.drop_column("procedures_procedures", "acted_by")
    op.drop_column("procedures_procedures", "represented_party")
