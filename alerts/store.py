"""Database rows of the citizen alerts (SQLAlchemy 2), kept in the node's database beside its log.

Layout (docs/alerts.md, "Storage"):

- ``alert_cursors``: per log, the index of the next entry the worker has to evaluate. Advanced in
  the same transaction that stores the alerts and history of the entries before it, so a restart
  neither loses nor repeats an evaluation.
- ``alerts``: one row per alert, unique on ``(log_id, rule, subject_key, dedup)``: a rule fires
  once per citizen and trigger (an exchange, a recipient, a window), even if evaluated twice.
  It names the citizen only by ``subject_key`` (the audit log's subject key, a hash), and holds
  the recipient, the service, the time and the entry's index and leaf hash: no personal data.
- ``alert_recipients`` and ``alert_volumes``: the history the rules need (recipients seen per
  citizen; the non-consented reads of each citizen in the current windows, one row per read, older
  windows pruned).
- ``alert_exchanges``: the exchanges (request hashes) evaluated for a citizen in the current
  windows, so that the second record of one exchange at one node raises nothing.
- ``alert_preferences``: per citizen (one row per subject key of theirs) the rules they turned
  off and the address for e-mail delivery.
- ``alert_emails``: the e-mail outbox, one row per alert at most (unique ``alert_id``), written
  with the alert; sent, retried with backoff, never lost.

Trust assumption: the database is the operator's; alerts are a notification, not a proof (the
proof is the entry they point to, with its inclusion proof in the citizen's record).
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "AlertBase",
    "AlertRow",
    "CursorRow",
    "EmailRow",
    "ExchangeRow",
    "PreferenceRow",
    "RecipientRow",
    "VolumeRow",
]

MAX_LOG_ID_LEN = 200
MAX_FIELD_LEN = 255
SUBJECT_KEY_LEN = 64
MAX_EMAIL_LEN = 254


class AlertBase(DeclarativeBase):
    """The alerts package's own metadata (schema is created by Alembic, never ``create_all``)."""


class CursorRow(AlertBase):
    __tablename__ = "alert_cursors"

    log_id: Mapped[str] = mapped_column(String(MAX_LOG_ID_LEN), primary_key=True)
    next_index: Mapped[int] = mapped_column(BigInteger, nullable=False)


class AlertRow(AlertBase):
    __tablename__ = "alerts"
    __table_args__ = (
        UniqueConstraint("log_id", "rule", "subject_key", "dedup", name="uq_alerts_once"),
        Index("ix_alerts_subject", "log_id", "subject_key", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    log_id: Mapped[str] = mapped_column(String(MAX_LOG_ID_LEN), nullable=False)
    rule: Mapped[str] = mapped_column(String(64), nullable=False)
    subject_key: Mapped[str] = mapped_column(String(SUBJECT_KEY_LEN), nullable=False)
    dedup: Mapped[str] = mapped_column(String(MAX_FIELD_LEN), nullable=False)
    client: Mapped[str | None] = mapped_column(String(MAX_FIELD_LEN))
    service: Mapped[str | None] = mapped_column(String(MAX_FIELD_LEN))
    entry_index: Mapped[int] = mapped_column(BigInteger, nullable=False)
    leaf_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    time_us: Mapped[int] = mapped_column(BigInteger, nullable=False)
    read: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)


class RecipientRow(AlertBase):
    __tablename__ = "alert_recipients"

    log_id: Mapped[str] = mapped_column(String(MAX_LOG_ID_LEN), primary_key=True)
    subject_key: Mapped[str] = mapped_column(String(SUBJECT_KEY_LEN), primary_key=True)
    client: Mapped[str] = mapped_column(String(MAX_FIELD_LEN), primary_key=True)


class VolumeRow(AlertBase):
    __tablename__ = "alert_volumes"

    log_id: Mapped[str] = mapped_column(String(MAX_LOG_ID_LEN), primary_key=True)
    subject_key: Mapped[str] = mapped_column(String(SUBJECT_KEY_LEN), primary_key=True)
    window_us: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    entry_index: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    """One row per counted read, so that evaluating an entry again never counts it twice."""


class ExchangeRow(AlertBase):
    """An exchange this worker already evaluated for a citizen (its request hash): a node that is
    both the consumer and the provider of one exchange records it twice (each side with its own
    code of the citizen); the second record is a twin and raises nothing."""

    __tablename__ = "alert_exchanges"
    __table_args__ = (Index("ix_alert_exchanges_time", "log_id", "time_us"),)

    log_id: Mapped[str] = mapped_column(String(MAX_LOG_ID_LEN), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(MAX_FIELD_LEN), primary_key=True)
    entry_index: Mapped[int] = mapped_column(BigInteger, nullable=False)
    time_us: Mapped[int] = mapped_column(BigInteger, nullable=False)


class PreferenceRow(AlertBase):
    __tablename__ = "alert_preferences"

    log_id: Mapped[str] = mapped_column(String(MAX_LOG_ID_LEN), primary_key=True)
    subject_key: Mapped[str] = mapped_column(String(SUBJECT_KEY_LEN), primary_key=True)
    disabled: Mapped[str] = mapped_column(String(MAX_FIELD_LEN), nullable=False, default="")
    """The rules turned off, comma-separated (every rule is on by default)."""
    email: Mapped[str | None] = mapped_column(String(MAX_EMAIL_LEN))


class EmailRow(AlertBase):
    __tablename__ = "alert_emails"
    __table_args__ = (Index("ix_alert_emails_due", "sent_us", "next_attempt_us"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    alert_id: Mapped[int] = mapped_column(Integer, nullable=False, unique=True)
    address: Mapped[str] = mapped_column(String(MAX_EMAIL_LEN), nullable=False)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    next_attempt_us: Mapped[int] = mapped_column(BigInteger, nullable=False)
    sent_us: Mapped[int | None] = mapped_column(BigInteger)
    last_error: Mapped[str | None] = mapped_column(Text)
