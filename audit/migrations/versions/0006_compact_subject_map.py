"""audit: the subject map becomes a compact sparse Merkle tree derived from its members

Revision ID: audit_0006
Revises: audit_0005
Create Date: 2026-12-03

The map's members (key, count, chain) are unchanged; its tree is now compact (a subtree holding
one member is that member's leaf, ``audit.completeness``) and no longer stored: every process
derives it from the members (``audit.subject_map``). So the node table and the members' bucket
column go, and each log's map root is recomputed here from its members, with the same hashes
the code uses (written out below, so this migration does not change when the code does). The
latest checkpoint still signs the previous format's root (``subjects``): the log signs a new
checkpoint of the same size, with the ``subject-map`` line, before it serves the next proof.
The members are taken as they are stored (checking them against the old signed root would need
the old format's code here); ``onceonly audit verify`` recomputes the map from the entries and
fails a checkpoint whose map is not theirs (step 10).

Downgrading recomputes nothing: the previous code cannot read a map stored this way, so the
downgrade deletes the map (it is rebuilt from the entries at the next checkpoint).
"""

from __future__ import annotations

from hashlib import sha256

import sqlalchemy as sa
from alembic import op

revision = "audit_0006"
down_revision = "audit_0005"
branch_labels = None
depends_on = None

_EMPTY = bytes(32)


def _bit(key: bytes, depth: int) -> int:
    return key[depth >> 3] >> (7 - (depth & 7)) & 1


def _root(members: list[tuple[bytes, int, bytes]], depth: int = 0) -> bytes:
    """The compact tree's root over ``members`` (sorted by key, sharing ``depth`` bits)."""
    if not members:
        return _EMPTY
    if len(members) == 1:
        key, count, chain = members[0]
        return sha256(b"\x03" + key + count.to_bytes(8, "big") + chain).digest()
    mid = next((i for i, m in enumerate(members) if _bit(m[0], depth)), len(members))
    left, right = _root(members[:mid], depth + 1), _root(members[mid:], depth + 1)
    return sha256(b"\x01" + left + right).digest()


def upgrade() -> None:
    bind = op.get_bind()
    logs = [str(r[0]) for r in bind.execute(sa.text("SELECT log_id FROM audit_subject_maps"))]
    for log_id in logs:
        rows = bind.execute(
            sa.text("SELECT key, count, chain FROM audit_subject_members WHERE log_id = :l"),
            {"l": log_id},
        ).all()
        members = sorted((bytes(k), int(c), bytes(ch)) for k, c, ch in rows)
        bind.execute(
            sa.text("UPDATE audit_subject_maps SET root = :r WHERE log_id = :l"),
            {"r": _root(members), "l": log_id},
        )
    op.drop_table("audit_subject_nodes")
    op.drop_index("ix_audit_subject_members_bucket", table_name="audit_subject_members")
    with op.batch_alter_table("audit_subject_members") as batch:
        batch.drop_column("bucket")


def downgrade() -> None:
    op.execute(sa.text("DELETE FROM audit_subject_members"))
    op.execute(sa.text("DELETE FROM audit_subject_maps"))
    with op.batch_alter_table("audit_subject_members") as batch:
        batch.add_column(sa.Column("bucket", sa.BigInteger(), nullable=False, server_default="0"))
    op.create_index(
        "ix_audit_subject_members_bucket", "audit_subject_members", ["log_id", "bucket"]
    )
    op.create_table(
        "audit_subject_nodes",
        sa.Column("log_id", sa.String(200), primary_key=True),
        sa.Column("node_id", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("hash", sa.LargeBinary(32), nullable=False),
    )
