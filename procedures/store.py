"""Durable procedure state: one row per procedure, one row per step (issue 7 "Run").

A procedure is what the citizen submitted once (its input, the plan shown in the preview, its
status and, at the end, the signed summary). Its steps are the exchanges that carry it out; each
step row is the unit a runner claims (``claimed_by`` + ``lease_until``), retries (``attempts``,
``next_attempt_at``) and finishes (``state``, ``result_hash``). The step's ``idempotency_key`` is
sent with the exchange, so a step that is sent twice (retry, crashed runner) changes the registry
once.

Trust assumption: rows are written only by ``procedures`` code; ``subject`` is the citizen id of
a verified token, so "someone else's procedure" is a plain ``WHERE subject = …``.
Tables carry the package prefix ``procedures_``; the schema is the Alembic branch ``procedures``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = ["ProcedureRow", "ProceduresBase", "StepRow"]

_TZ = DateTime(timezone=True)


class ProceduresBase(DeclarativeBase):
    """The declarative base of this package's tables (never ``create_all``: Alembic owns them)."""


class ProcedureRow(ProceduresBase):
    __tablename__ = "procedures_procedures"
    __table_args__ = (
        UniqueConstraint("subject", "submission_key", name="uq_procedures_submission"),
        Index("ix_procedures_procedures_subject", "subject"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    subject: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))
    input: Mapped[dict[str, Any]] = mapped_column(JSON)
    plan: Mapped[dict[str, Any]] = mapped_column(JSON)
    submission_key: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(_TZ)
    updated_at: Mapped[datetime] = mapped_column(_TZ)
    confirmed_at: Mapped[datetime | None] = mapped_column(_TZ, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(_TZ, nullable=True)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    """The signed summary (certificate) once every step is final."""
    represented_party: Mapped[str | None] = mapped_column(String(255), nullable=True)
    """``X-Road-Represented-Party`` (``PARENT/<mandate id>``) when a representative started it
    for ``subject``; every exchange of the procedure carries it. NULL: the citizen themself."""
    acted_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    """The representative who started it (their subject), when not the citizen themself."""


class StepRow(ProceduresBase):
    __tablename__ = "procedures_steps"
    __table_args__ = (
        UniqueConstraint("procedure_id", "seq", name="uq_procedures_steps_seq"),
        UniqueConstraint("idempotency_key", name="uq_procedures_steps_idempotency"),
        Index("ix_procedures_steps_due", "state", "next_attempt_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    procedure_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("procedures_procedures.id", ondelete="CASCADE")
    )
    seq: Mapped[int] = mapped_column(Integer)
    order_group: Mapped[int] = mapped_column(Integer)
    recipient: Mapped[str] = mapped_column(String(64))
    service: Mapped[str] = mapped_column(String(300))
    basis: Mapped[str] = mapped_column(String(16))
    statute: Mapped[str | None] = mapped_column(String(200), nullable=True)
    consent_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    consent_artefact: Mapped[str | None] = mapped_column(Text, nullable=True)
    fields: Mapped[list[str]] = mapped_column(JSON)
    body: Mapped[dict[str, Any]] = mapped_column(JSON)
    if_enrolled: Mapped[bool] = mapped_column(Boolean, default=False)
    """A 404 means "not enrolled there": the party is not concerned (skipped, not failed)."""
    state: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(_TZ)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    idempotency_key: Mapped[str] = mapped_column(String(128))
    result_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    message_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    exchange_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    """Wall time of the successful exchange (for the benchmark's sum-of-steps figure)."""
    claimed_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(_TZ, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(_TZ, nullable=True)
