"""Consent tables (SQLAlchemy 2 rows; schema by the Alembic branch ``consent``).

The consent store is the authority on a consent's status: the signed artefact says what was
granted, the row says whether it still holds (revocation wins immediately, issue 5). Rows are not
wire models (style rule 6); ``consent.lifecycle`` converts between the two. Times are stored as
timezone-aware UTC (SQLite keeps no zone, so ``UtcDateTime`` puts it back on the way out).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from exchange.store import EventOutboxColumns, EventStreamColumns

__all__ = [
    "ConsentBase",
    "ConsentEventOutboxRow",
    "ConsentEventStreamRow",
    "ConsentHistoryRow",
    "ConsentReceiptRow",
    "ConsentRequestRow",
    "ConsentRow",
    "ConsentUseRow",
    "MandateRow",
    "SeenRequestRow",
    "UtcDateTime",
]


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend (naive values are refused)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class ConsentBase(DeclarativeBase):
    pass


class _Terms:
    subject: Mapped[str] = mapped_column(String(128), index=True)
    client: Mapped[str] = mapped_column(String(300))
    services: Mapped[list[str]] = mapped_column(JSON)
    purpose_code: Mapped[str] = mapped_column(String(64))
    purpose_ja: Mapped[str] = mapped_column(Text)
    purpose_en: Mapped[str] = mapped_column(Text)
    fields: Mapped[list[str]] = mapped_column(JSON)
    valid_from: Mapped[datetime] = mapped_column(UtcDateTime)
    valid_until: Mapped[datetime] = mapped_column(UtcDateTime)
    mode: Mapped[str] = mapped_column(String(16))
    max_uses: Mapped[int | None] = mapped_column(Integer)
    min_interval_s: Mapped[int | None] = mapped_column(Integer)
    data_retention_days: Mapped[int] = mapped_column(Integer)
    legal_text_version: Mapped[str] = mapped_column(String(64))


class ConsentRequestRow(_Terms, ConsentBase):
    __tablename__ = "consent_requests"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    decided_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    consent_id: Mapped[str | None] = mapped_column(String(36))


class ConsentRow(_Terms, ConsentBase):
    __tablename__ = "consent_consents"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)
    use_count: Mapped[int] = mapped_column(Integer, default=0)
    last_used_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    request_id: Mapped[str | None] = mapped_column(String(36))
    artefact: Mapped[str] = mapped_column(Text)
    version: Mapped[int] = mapped_column(Integer, default=0)
    """Bumped on every change: the compare-and-set guard that makes ``use`` atomic on SQLite."""


class ConsentHistoryRow(ConsentBase):
    __tablename__ = "consent_history"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    consent_id: Mapped[str] = mapped_column(String(36), index=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime)
    action: Mapped[str] = mapped_column(String(16))
    from_status: Mapped[str | None] = mapped_column(String(16))
    to_status: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(300))
    receipt_id: Mapped[str | None] = mapped_column(String(36))


class ConsentUseRow(ConsentBase):
    __tablename__ = "consent_uses"
    __table_args__ = (
        UniqueConstraint("consent_id", "message_id", name="uq_consent_uses_msg"),
        Index("ix_consent_uses_idempotency", "consent_id", "idempotency_key"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    consent_id: Mapped[str] = mapped_column(String(36), index=True)
    message_id: Mapped[str] = mapped_column(String(200))
    at: Mapped[datetime] = mapped_column(UtcDateTime)
    client: Mapped[str] = mapped_column(String(300))
    service: Mapped[str] = mapped_column(String(400))
    fields: Mapped[list[str]] = mapped_column(JSON)
    idempotency_key: Mapped[str | None] = mapped_column(String(128))
    """The exchange's Idempotency-Key: a retry of the same change under the same key is the same
    use (it does not spend the consent again)."""


class ConsentReceiptRow(ConsentBase):
    __tablename__ = "consent_receipts"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    consent_id: Mapped[str] = mapped_column(String(36), index=True)
    action: Mapped[str] = mapped_column(String(16))
    issued_at: Mapped[datetime] = mapped_column(UtcDateTime)
    document: Mapped[dict[str, Any]] = mapped_column(JSON)
    jws: Mapped[str | None] = mapped_column(Text, nullable=True)
    """The document signed by the consent service (compact JWS); NULL before consent_0004."""


class SeenRequestRow(ConsentBase):
    """A signed request that changed state, remembered until its signature's time window closes:
    the same signed request again is a replay (docs/consent.md "Replays")."""

    __tablename__ = "consent_seen_requests"

    request_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    """SHA-256 of what was signed (``exchange.node_requests``), not of the signature bytes: an
    ECDSA signature can be re-encoded, what it signs cannot."""
    valid_until: Mapped[datetime] = mapped_column(UtcDateTime, index=True)


class MandateRow(ConsentBase):
    """Who may act for whom (``consent.mandates``); revocation is a time, never a deletion."""

    __tablename__ = "consent_mandates"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    representative: Mapped[str] = mapped_column(String(128), index=True)
    represented: Mapped[str] = mapped_column(String(128), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    purposes: Mapped[list[str]] = mapped_column(JSON)
    procedures: Mapped[list[str]] = mapped_column(JSON)
    valid_from: Mapped[datetime] = mapped_column(UtcDateTime)
    valid_until: Mapped[datetime] = mapped_column(UtcDateTime)
    basis: Mapped[str] = mapped_column(String(300))
    granted_by: Mapped[str] = mapped_column(String(300))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    revoked_by: Mapped[str | None] = mapped_column(String(300), nullable=True)
    artefact: Mapped[str] = mapped_column(Text)


class ConsentEventOutboxRow(EventOutboxColumns, ConsentBase):
    """Consent status events to the nodes concerned, written in the transaction of the change
    (``consent.events``; delivered by ``exchange.event_outbox``)."""

    __tablename__ = "consent_event_outbox"
    __table_args__ = (
        Index("ix_consent_event_outbox_undelivered", "delivered_at", "stream", "seq"),
    )


class ConsentEventStreamRow(EventStreamColumns, ConsentBase):
    __tablename__ = "consent_event_streams"
