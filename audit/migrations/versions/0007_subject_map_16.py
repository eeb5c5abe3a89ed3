"""audit: the subject map's tree becomes 16-ary

Revision ID: audit_0007
Revises: audit_0006
Create Date: 2026-12-04

The map's members (key, count, chain) are unchanged; its tree, still compact, now branches on a
key's nibbles, each interior node hashing its 16 children as ``SHA-256(0x05 ‖ child_0 ‖ … ‖
child_15)`` (``audit.completeness``): a checkpoint rehashes about a quarter of the nodes it did
(issue #15). Each log's map root is recomputed here from its members, with the same hashes the
code uses (written out below, so this migration does not change when the code does). The latest
checkpoint still signs the binary map's root (``subject-map``): the log signs a new checkpoint of
the same size, with the ``subject-map-16`` line, before it serves the next proof. Records kept
from before verify as they did (``audit.completeness`` reads a proof in the format its
checkpoint signs).

Downgrading recomputes the binary root the same way (``audit_0006``'s definition).
"""

from __future__ import annotations

from collections.abc import Callable
from hashlib import sha256

import sqlalchemy as sa
from alembic import op

revision = "audit_0007"
down_revision = "audit_0006"
branch_labels = None
depends_on = None

_EMPTY = bytes(32)
_Member = tuple[bytes, int, bytes]


def _leaf(member: _Member) -> bytes:
    key, count, chain = member
    return sha256(b"\x03" + key + count.to_bytes(8, "big") + chain).digest()


def _nibble(key: bytes, depth: int) -> int:
    return key[depth >> 1] & 15 if depth & 1 else key[depth >> 1] >> 4


def _root16(members: list[_Member], depth: int = 0) -> bytes:
    """The 16-ary compact tree's root over ``members`` (sorted by key, sharing ``depth``
    nibbles)."""
    if not members:
        return _EMPTY
    if len(members) == 1:
        return _leaf(members[0])
    groups: list[list[_Member]] = [[] for _ in range(16)]
    for member in members:
        groups[_nibble(member[0], depth)].append(member)
    return sha256(b"\x05" + b"".join(_root16(g, depth + 1) for g in groups)).digest()


def _bit(key: bytes, depth: int) -> int:
    return key[depth >> 3] >> (7 - (depth & 7)) & 1


def _root2(members: list[_Member], depth: int = 0) -> bytes:
    """The binary compact tree's root (``audit_0006``)."""
    if not members:
        return _EMPTY
    if len(members) == 1:
        return _leaf(members[0])
    mid = next((i for i, m in enumerate(members) if _bit(m[0], depth)), len(members))
    left, right = _root2(members[:mid], depth + 1), _root2(members[mid:], depth + 1)
    return sha256(b"\x01" + left + right).digest()


def _recompute(root_of: Callable[[list[_Member]], bytes]) -> None:
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
            {"r": root_of(members), "l": log_id},
        )


def upgrade() -> None:
    _recompute(_root16)


def downgrade() -> None:
    _recompute(_root2)
