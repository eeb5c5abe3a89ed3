"""audit: the subject map stores only every eighth height of its nodes

Revision ID: audit_0004
Revises: audit_0003
Create Date: 2026-12-02

The map's nodes are the same and so is every root and proof; only the nodes at heights that are
not multiples of ``audit.subject_map.STRATUM`` (8) are no longer stored: they are recomputed from
the stored ones below them when a proof is read or the map advances. A node of height ``h`` has a
heap number in ``[2^(32-h), 2^(33-h))`` (``MAP_DEPTH`` 32), so each dropped height is one range.
Downgrading recomputes nothing: a map stored this way cannot be read by the previous code, so the
downgrade deletes the map (it is rebuilt from the entries at the next checkpoint).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "audit_0004"
down_revision = "audit_0003"
branch_labels = None
depends_on = None

_DEPTH = 32
_STRATUM = 8


def upgrade() -> None:
    for height in range(1, _DEPTH):
        if height % _STRATUM:
            op.execute(
                sa.text(
                    "DELETE FROM audit_subject_nodes WHERE node_id >= :lo AND node_id < :hi"
                ).bindparams(lo=1 << (_DEPTH - height), hi=1 << (_DEPTH - height + 1))
            )


def downgrade() -> None:
    op.execute(sa.text("DELETE FROM audit_subject_nodes"))
    op.execute(sa.text("DELETE FROM audit_subject_members"))
    op.execute(sa.text("DELETE FROM audit_subject_maps"))
