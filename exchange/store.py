"""Database rows of the exchange kernel (style rule 6: rows live only in ``*/store.py``).

Central server: members, subsystems, certificates, services, access rights, statutes and the
registry serial. Node: replay protection (message ids seen, persisted, not in memory only), the
message log of every request, response and refusal, the hashed API keys of the departmental
systems that call the node, and the inbox of the events it received (``exchange.event_inbox``).
The columns of an event outbox and its stream heads are mixins here: the component that owns the
changes owns its outbox table (``consent.store``), in its own database and migrations. Node rows carry the node's member id, so several nodes (and several
replicas of one node) can share one PostgreSQL database.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Index,
    Integer,
    String,
    Text,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "AccessRightRow",
    "Base",
    "CertificateRow",
    "ChangeFeedRow",
    "ClientKeyRow",
    "ConsentStateRow",
    "EventInboxRow",
    "EventOutboxColumns",
    "EventStreamColumns",
    "MemberRow",
    "MessageLogRow",
    "NodeEventOutboxRow",
    "NodeEventStreamRow",
    "PublishedChangeRow",
    "RegistryMetaRow",
    "SeenMessageRow",
    "ServiceRow",
    "StatuteRow",
    "SubscriberLinkRow",
    "SubscriptionRow",
    "SubsystemRow",
]

ID_LEN = 255


class Base(DeclarativeBase):
    pass


class MemberRow(Base):
    __tablename__ = "xchg_members"
    id: Mapped[str] = mapped_column(String(ID_LEN), primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    name_en: Mapped[str] = mapped_column(String(255), default="")
    address: Mapped[str | None] = mapped_column(String(1024), nullable=True)


class SubsystemRow(Base):
    __tablename__ = "xchg_subsystems"
    id: Mapped[str] = mapped_column(String(ID_LEN), primary_key=True)
    member_id: Mapped[str] = mapped_column(String(ID_LEN), index=True)
    name: Mapped[str] = mapped_column(String(255), default="")


class CertificateRow(Base):
    __tablename__ = "xchg_certificates"
    fingerprint: Mapped[str] = mapped_column(String(64), primary_key=True)
    subsystem_id: Mapped[str] = mapped_column(String(ID_LEN), index=True)
    serial: Mapped[str] = mapped_column(String(64))
    pem: Mapped[str] = mapped_column(Text)
    not_after: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)


class ServiceRow(Base):
    __tablename__ = "xchg_services"
    id: Mapped[str] = mapped_column(String(ID_LEN), primary_key=True)
    subsystem_id: Mapped[str] = mapped_column(String(ID_LEN), index=True)
    description: Mapped[str] = mapped_column(Text, default="")
    fields: Mapped[list[str]] = mapped_column(JSON, default=list)
    purposes: Mapped[list[str]] = mapped_column(JSON, default=list)
    changes: Mapped[bool] = mapped_column(Boolean, default=False)
    openapi: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    event_of: Mapped[str | None] = mapped_column(String(ID_LEN), nullable=True)
    """A change event: the change service whose calls it publishes (docs/protocol.md §9)."""


class AccessRightRow(Base):
    __tablename__ = "xchg_access_rights"
    client_id: Mapped[str] = mapped_column(String(ID_LEN), primary_key=True)
    service_id: Mapped[str] = mapped_column(String(ID_LEN), primary_key=True)
    not_before: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    not_after: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class StatuteRow(Base):
    __tablename__ = "xchg_statutes"
    id: Mapped[str] = mapped_column(String(ID_LEN), primary_key=True)
    service_id: Mapped[str] = mapped_column(String(ID_LEN), index=True)
    client_id: Mapped[str] = mapped_column(String(ID_LEN))
    purposes: Mapped[list[str]] = mapped_column(JSON, default=list)
    fields: Mapped[list[str]] = mapped_column(JSON, default=list)
    ordinance: Mapped[str] = mapped_column(Text)
    title_ja: Mapped[str] = mapped_column(Text, default="")
    title_en: Mapped[str] = mapped_column(Text, default="")
    restricted_days: Mapped[int | None] = mapped_column(Integer, nullable=True)
    """Exchanges on this basis are kept from the citizen's view this long (restricted statute)."""
    retention_days: Mapped[int | None] = mapped_column(Integer, nullable=True)
    """Recipients delete data received on this basis after this many days (usage terms)."""
    onward_transfer: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class ObligationRow(Base):
    """The consumer node's obligations ledger: one row per response received under usage terms
    (docs/operator.md, "Obligations ledger"). ``subject`` is the receiving agency's own code, as
    its audit log keeps it; ``overdue_at`` is when the overdue deletion was recorded in the log."""

    __tablename__ = "xchg_obligations"
    __table_args__ = (Index("ix_xchg_obligations_open", "deleted_at", "delete_by"),)
    client: Mapped[str] = mapped_column(String(ID_LEN), primary_key=True)
    message_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    service: Mapped[str] = mapped_column(String(ID_LEN))
    subject: Mapped[str | None] = mapped_column(String(128), nullable=True, index=True)
    purpose: Mapped[str] = mapped_column(String(128))
    delete_by: Mapped[date] = mapped_column(Date)
    onward: Mapped[bool] = mapped_column(Boolean)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    overdue_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class RegistryMetaRow(Base):
    """Key/value settings of the central registry: serial, consent service location and key."""

    __tablename__ = "xchg_registry_meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class SeenMessageRow(Base):
    """Replay protection: a (sender, message id) is accepted once per node."""

    __tablename__ = "xchg_seen_messages"
    node: Mapped[str] = mapped_column(String(ID_LEN), primary_key=True)
    sender: Mapped[str] = mapped_column(String(ID_LEN), primary_key=True)
    message_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class MessageLogRow(Base):
    """Who asked what, why, the decision and the hashes — never the personal data itself."""

    __tablename__ = "xchg_message_log"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    node: Mapped[str] = mapped_column(String(ID_LEN), index=True)
    time: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    decision: Mapped[str] = mapped_column(String(16))
    client: Mapped[str | None] = mapped_column(String(ID_LEN), nullable=True)
    service: Mapped[str | None] = mapped_column(String(ID_LEN), nullable=True)
    purpose: Mapped[str | None] = mapped_column(String(128), nullable=True)
    subject: Mapped[str | None] = mapped_column(String(128), nullable=True, index=True)
    consent_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    message_id: Mapped[str | None] = mapped_column(String(128), nullable=True, index=True)
    request_hash: Mapped[str | None] = mapped_column(String(128), nullable=True)
    body_hash: Mapped[str | None] = mapped_column(String(128), nullable=True)
    status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    decision_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    basis: Mapped[str | None] = mapped_column(String(255), nullable=True)


class ClientKeyRow(Base):
    """A departmental system's API key, stored as SHA-256 only (the key is shown once)."""

    __tablename__ = "xchg_client_keys"
    key_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    node: Mapped[str] = mapped_column(String(ID_LEN), index=True)
    client_id: Mapped[str] = mapped_column(String(ID_LEN))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


STREAM_LEN = 2 * ID_LEN + 3


class EventOutboxColumns:
    """An event outbox (``exchange.event_outbox``): written in the transaction of the change that
    causes the event, delivered afterwards, at least once, in ``seq`` order per stream."""

    stream: Mapped[str] = mapped_column(String(STREAM_LEN), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    event_id: Mapped[str] = mapped_column(String(64))
    recipient: Mapped[str] = mapped_column(String(ID_LEN))
    type: Mapped[str] = mapped_column(String(128))
    wire: Mapped[str] = mapped_column(Text)
    """The signed event as it goes on the wire (signed once, in the transaction)."""
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(String(255), nullable=True)


class EventStreamColumns:
    """The head of an outbox stream: the last sequence number given (row-locked to give the next)."""

    stream: Mapped[str] = mapped_column(String(STREAM_LEN), primary_key=True)
    last_seq: Mapped[int] = mapped_column(BigInteger)


class EventInboxRow(Base):
    """An event this node applied: the primary key (stream, seq) makes applying one twice
    impossible, whatever the sender retries or replays (step E7)."""

    __tablename__ = "xchg_event_inbox"
    stream: Mapped[str] = mapped_column(String(STREAM_LEN), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    event_id: Mapped[str] = mapped_column(String(64))
    sender: Mapped[str] = mapped_column(String(ID_LEN))
    recipient: Mapped[str] = mapped_column(String(ID_LEN), index=True)
    type: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    wire: Mapped[str] = mapped_column(Text)


# --- change subscriptions (docs/protocol.md §9) ------------------------------------------------


class NodeEventOutboxRow(EventOutboxColumns, Base):
    """The node's outbox: change events of the registries it hosts, to their subscribers."""

    __tablename__ = "xchg_event_outbox"
    __table_args__ = (Index("ix_xchg_event_outbox_undelivered", "delivered_at", "stream", "seq"),)


class NodeEventStreamRow(EventStreamColumns, Base):
    __tablename__ = "xchg_event_streams"


class SubscriptionRow(Base):
    """A subscription to a change event of a registry this node hosts (the publisher's side).
    ``subject`` is the publisher agency's own code (opened from the subscription request's subject
    token, step 9b); the subscriber never learns it, and events name the subscription instead."""

    __tablename__ = "xchg_subscriptions"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    node: Mapped[str] = mapped_column(String(ID_LEN))
    service: Mapped[str] = mapped_column(String(ID_LEN))
    subscriber: Mapped[str] = mapped_column(String(ID_LEN))
    subject: Mapped[str] = mapped_column(String(128))
    purpose: Mapped[str] = mapped_column(String(128))
    basis: Mapped[str | None] = mapped_column(String(255), nullable=True)
    consent_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    fields: Mapped[list[str]] = mapped_column(JSON, default=list)
    status: Mapped[str] = mapped_column(String(16))
    """``active``, ``paused`` (its consent is paused) or ``ended``."""
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    reason: Mapped[str | None] = mapped_column(String(255), nullable=True)
    __table_args__ = (Index("ix_xchg_subscriptions_target", "service", "subject", "status"),)


class ConsentStateRow(Base):
    """The last status the consent service pushed for a consent (docs/protocol.md §9): a
    subscription stored after the push overtook it still starts as the consent is (its row is
    locked by both, so neither misses the other)."""

    __tablename__ = "xchg_consent_states"
    node: Mapped[str] = mapped_column(String(ID_LEN), primary_key=True)
    consent_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    status: Mapped[str | None] = mapped_column(String(16), nullable=True)
    """None: no status pushed yet (the row exists to be locked)."""


class PublishedChangeRow(Base):
    """A change already published: a retry of the same change (same idempotency key) publishes
    nothing again."""

    __tablename__ = "xchg_published_changes"
    node: Mapped[str] = mapped_column(String(ID_LEN), primary_key=True)
    service: Mapped[str] = mapped_column(String(ID_LEN), primary_key=True)
    change_key: Mapped[str] = mapped_column(String(200), primary_key=True)
    events: Mapped[int] = mapped_column(Integer)
    told: Mapped[list[str]] = mapped_column(JSON, default=list)
    """The subscribers told (a retry's answer names them again)."""
    published_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class SubscriberLinkRow(Base):
    """The subscriber's side: which of its own codes a subscription it made is about."""

    __tablename__ = "xchg_subscriber_links"
    subscription_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    client: Mapped[str] = mapped_column(String(ID_LEN))
    service: Mapped[str] = mapped_column(String(ID_LEN))
    subject: Mapped[str | None] = mapped_column(String(128), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ChangeFeedRow(Base):
    """A change event received for a hosted subsystem, waiting for its departmental system to read
    it (``GET /changes/v1``); ``subject`` is that system's own code for the person."""

    __tablename__ = "xchg_change_feed"
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    client: Mapped[str] = mapped_column(String(ID_LEN))
    event_id: Mapped[str] = mapped_column(String(64), unique=True)
    subscription_id: Mapped[str] = mapped_column(String(36))
    service: Mapped[str] = mapped_column(String(ID_LEN))
    subject: Mapped[str | None] = mapped_column(String(128), nullable=True)
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    occurred_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    __table_args__ = (Index("ix_xchg_change_feed_client", "client", "id"),)
