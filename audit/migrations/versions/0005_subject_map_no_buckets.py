"""audit: the subject map no longer stores bucket hashes

Revision ID: audit_0005
Revises: audit_0004
Create Date: 2026-12-02

The map's nodes are the same and so is every root and proof; only its height-0 nodes (the bucket
hashes) are no longer stored: they are derived from the members of a bucket's group of 256
buckets when a proof is read or the map advances (``audit.subject_map``). Height 0 is the heap
numbers ``[2^32, 2^33)`` (``MAP_DEPTH`` 32), one range. Downgrading recomputes nothing: a map
stored this way cannot be read by the previous code, so the downgrade deletes the map (it is
rebuilt from the entries at the next checkpoint).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "audit_0005"
down_revision = "audit_0004"
branch_labels = None
depends_on = None

_DEPTH = 32


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        # the map's rows are rewritten at every checkpoint: room left in each page lets
        # PostgreSQL update a row in place (a HOT update) without a new index entry
        for table in ("audit_subject_members", "audit_subject_nodes"):
            op.execute(sa.text(f"ALTER TABLE {table} SET (fillfactor = 70)"))
    op.execute(
        sa.text(
            "DELETE FROM audit_subject_nodes WHERE node_id >= :lo AND node_id < :hi"
        ).bindparams(lo=1 << _DEPTH, hi=1 << (_DEPTH + 1))
    )


def downgrade() -> None:
    op.execute(sa.text("DELETE FROM audit_subject_nodes"))
    op.execute(sa.text("DELETE FROM audit_subject_members"))
    op.execute(sa.text("DELETE FROM audit_subject_maps"))
