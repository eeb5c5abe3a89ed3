"""Database rows of the transparency log (SQLAlchemy 2), keyed by ``log_id``.

Layout (see ``docs/audit.md``):

- ``audit_heads``: one row per log: its size, root and compact range (the ≤ 64 perfect-subtree
  hashes whose fold is the root, concatenated), so an append needs no extra read. Appends lock
  this row (PostgreSQL ``SELECT … FOR UPDATE``; SQLite ``BEGIN IMMEDIATE``), so appends are
  totally ordered across threads, processes and replicas and the tree can never fork.
- ``audit_entries``: the entry bytes (canonical JSON) by index, with copies of the searchable
  fields. Nothing in these columns is trusted by a verifier: the bytes are.
- ``audit_nodes``: the hash of every *complete* perfect subtree ``(level, index)``, level 0 being
  the leaf hashes, keyed by ``node_key(level, index) = index * 64 + level`` (one integer, so a
  batch of nodes is one ``IN`` list on the primary key on SQLite and PostgreSQL alike). A node
  never changes once written, so the root and any proof for any size are assembled from
  O(log n) stored hashes, and an append writes O(log n) rows (amortised 2).
- ``audit_checkpoints``: every signed checkpoint the log published, in order.
- ``audit_subject_maps``, ``audit_subject_members``: the subject map each checkpoint commits to
  (``audit.completeness``): per log the size it covers and its root; one slot per subject key (a
  hash) with its count and chain. The map's tree is not stored: it is derived from the members
  (``audit.subject_map``). Unlike ``audit_nodes`` these are overwritten as the map advances
  (only the latest map is kept).
- ``audit_restricted``: one row per restricted entry (``audit.restricted``): the subject its
  bytes only commit to, the salt that opens the commitment, its release time (a copy of the
  bytes' ``restricted_until``, checked against them before use) and, once released, the index
  of its release entry. Written in the transaction that appends the entry.

Trust assumption: the database is the operator's, so it is *not* trusted by auditors; it is
trusted by this process to hold what this process wrote (crash consistency comes from writing
the entry, its nodes and the new head in one transaction).
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Index, Integer, LargeBinary, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "AuditBase",
    "CheckpointRow",
    "EntryRow",
    "HeadRow",
    "NodeRow",
    "RestrictedRow",
    "SubjectMapRow",
    "SubjectMemberRow",
    "node_key",
]

MAX_LOG_ID_LEN = 200
MAX_FIELD_LEN = 255
MAX_LEVEL = 63


def node_key(level: int, index: int) -> int:
    """The stored key of perfect subtree ``(level, index)``: ``index * 64 + level``."""
    if not 0 <= level <= MAX_LEVEL:
        raise ValueError("tree level out of range")
    return index * (MAX_LEVEL + 1) + level


class AuditBase(DeclarativeBase):
    """The audit package's own metadata (schema is created by Alembic, never ``create_all``)."""


class HeadRow(AuditBase):
    __tablename__ = "audit_heads"

    log_id: Mapped[str] = mapped_column(String(MAX_LOG_ID_LEN), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger, nullable=False)
    root: Mapped[bytes] = mapped_column(LargeBinary(32), nullable=False)
    compact_range: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)


class EntryRow(AuditBase):
    __tablename__ = "audit_entries"
    __table_args__ = (
        Index("ix_audit_entries_subject", "log_id", "subject", "idx"),
        Index("ix_audit_entries_client", "log_id", "client", "idx"),
        Index("ix_audit_entries_service", "log_id", "service", "idx"),
        Index("ix_audit_entries_purpose", "log_id", "purpose", "idx"),
        Index("ix_audit_entries_time", "log_id", "time_us"),
        Index("ix_audit_entries_consent", "log_id", "consent_id"),
    )

    log_id: Mapped[str] = mapped_column(String(MAX_LOG_ID_LEN), primary_key=True)
    idx: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    data: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    leaf_hash: Mapped[bytes] = mapped_column(LargeBinary(32), nullable=False)
    time_us: Mapped[int] = mapped_column(BigInteger, nullable=False)
    node: Mapped[str] = mapped_column(String(MAX_FIELD_LEN), nullable=False)
    kind: Mapped[str] = mapped_column(String(32), nullable=False)
    decision: Mapped[str] = mapped_column(String(16), nullable=False)
    client: Mapped[str | None] = mapped_column(String(MAX_FIELD_LEN))
    service: Mapped[str | None] = mapped_column(String(MAX_FIELD_LEN))
    purpose: Mapped[str | None] = mapped_column(String(MAX_FIELD_LEN))
    subject: Mapped[str | None] = mapped_column(String(MAX_FIELD_LEN))
    consent_id: Mapped[str | None] = mapped_column(String(MAX_FIELD_LEN))
    message_id: Mapped[str | None] = mapped_column(String(MAX_FIELD_LEN))


class NodeRow(AuditBase):
    __tablename__ = "audit_nodes"

    log_id: Mapped[str] = mapped_column(String(MAX_LOG_ID_LEN), primary_key=True)
    node_key: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    hash: Mapped[bytes] = mapped_column(LargeBinary(32), nullable=False)


class CheckpointRow(AuditBase):
    __tablename__ = "audit_checkpoints"
    __table_args__ = (Index("ix_audit_checkpoints_log", "log_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    log_id: Mapped[str] = mapped_column(String(MAX_LOG_ID_LEN), nullable=False)
    size: Mapped[int] = mapped_column(BigInteger, nullable=False)
    root: Mapped[bytes] = mapped_column(LargeBinary(32), nullable=False)
    time_us: Mapped[int] = mapped_column(BigInteger, nullable=False)
    note: Mapped[str] = mapped_column(Text, nullable=False)


class SubjectMapRow(AuditBase):
    """The subject map of a log (``audit.completeness``): up to which log size it covers, its root."""

    __tablename__ = "audit_subject_maps"
    log_id: Mapped[str] = mapped_column(String(MAX_LOG_ID_LEN), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger, nullable=False)
    root: Mapped[bytes] = mapped_column(LargeBinary(32), nullable=False)


class SubjectMemberRow(AuditBase):
    """One subject's slot in the map: its key (a hash, no pseudonym), count and chain."""

    __tablename__ = "audit_subject_members"
    log_id: Mapped[str] = mapped_column(String(MAX_LOG_ID_LEN), primary_key=True)
    key: Mapped[bytes] = mapped_column(LargeBinary(32), primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger, nullable=False)
    chain: Mapped[bytes] = mapped_column(LargeBinary(32), nullable=False)


class RestrictedRow(AuditBase):
    """A restricted entry's hidden subject and salt, until (and after) its release."""

    __tablename__ = "audit_restricted"
    __table_args__ = (Index("ix_audit_restricted_due", "log_id", "released_idx", "release_us"),)
    log_id: Mapped[str] = mapped_column(String(MAX_LOG_ID_LEN), primary_key=True)
    idx: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    subject: Mapped[str] = mapped_column(String(MAX_FIELD_LEN), nullable=False)
    salt: Mapped[bytes] = mapped_column(LargeBinary(32), nullable=False)
    release_us: Mapped[int] = mapped_column(BigInteger, nullable=False)
    released_idx: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
