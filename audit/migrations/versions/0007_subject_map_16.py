"""audit: the subject map's tree becomes 16-ary

Revision ID: audit_0007
Revises: audit_0006
Create Date: 2026-12-04

The map's members (key, count, chain) keep their meaning; its tree, still compact, now branches
on a key's nibbles, each interior node hashing its 16 children as ``SHA-256(0x05 ‖ child_0 ‖ …
‖ child_15)`` (``audit.completeness``): a checkpoint rehashes about a quarter of the nodes it did
(issue #15). The latest checkpoint signs the binary map's root (``subject-map``), which says
nothing of a 16-ary root, so no stored map is carried over: this deletes each log's map, and the
log builds it again from the entries' bytes — checked against the log's tree — in the checkpoint
of the same size it signs, with the ``subject-map-16`` line, before its next proof
(``audit.subject_map.advance`` does the same with any stored map no checkpoint of the current
format signed). Records kept from before verify as they did: ``audit.completeness`` reads a
proof in the format its checkpoint signs.

Downgrading deletes the map too: the previous code rebuilds an absent map from the entries.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "audit_0007"
down_revision = "audit_0006"
branch_labels = None
depends_on = None


def _forget_maps() -> None:
    op.execute(sa.text("DELETE FROM audit_subject_members"))
    op.execute(sa.text("DELETE FROM audit_subject_maps"))


def upgrade() -> None:
    _forget_maps()


def downgrade() -> None:
    _forget_maps()
