"""The adapters package's own tables (style rule 6: rows only in ``store.py``).

- ``adapters_idempotency``: the first result of every changing call, keyed by (client, service,
  idempotency key), so a repeat returns that result without changing anything twice. It lives in
  the *department's* database, next to the rows it protects, so the change and its record commit
  in one transaction. Alembic branch ``adapters`` creates it in onceonly-managed databases;
  ``ensure_idempotency_table`` creates it in a department database that onceonly does not migrate.
- ``adapters_pseudonym_subjects`` / ``adapters_pseudonyms``: the pseudonym service's store
  (機関別符号): one random internal subject id per citizen, one random pseudonym per agency.

Trust assumption: whoever can write these tables can forge results or links; they belong to the
node's operator (pseudonyms) or the department (idempotency), never to a caller.
"""

from __future__ import annotations

from datetime import datetime
from typing import cast

from sqlalchemy import (
    DateTime,
    Engine,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "IDEMPOTENCY_TABLE",
    "PSEUDONYMS_TABLE",
    "PSEUDONYM_SUBJECTS_TABLE",
    "AdaptersBase",
    "IdempotencyRow",
    "PseudonymRow",
    "PseudonymSubjectRow",
    "ensure_idempotency_table",
]


class AdaptersBase(DeclarativeBase):
    pass


class IdempotencyRow(AdaptersBase):
    __tablename__ = "adapters_idempotency"

    client: Mapped[str] = mapped_column(String(255), primary_key=True)
    service: Mapped[str] = mapped_column(String(255), primary_key=True)
    idempotency_key: Mapped[str] = mapped_column(String(128), primary_key=True)
    subject: Mapped[str | None] = mapped_column(String(128))
    request_hash: Mapped[str] = mapped_column(String(64))
    status: Mapped[int] = mapped_column(Integer)
    response: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class PseudonymSubjectRow(AdaptersBase):
    """A citizen known to the pseudonym service; ``citizen_key`` never leaves the service."""

    __tablename__ = "adapters_pseudonym_subjects"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    citizen_key: Mapped[str] = mapped_column(String(128), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class PseudonymRow(AdaptersBase):
    """One agency's identifier for one citizen."""

    __tablename__ = "adapters_pseudonyms"
    __table_args__ = (
        UniqueConstraint("agency", "pseudonym", name="uq_adapters_pseudonyms_agency_pseudonym"),
        Index("ix_adapters_pseudonyms_subject", "subject_id"),
    )

    subject_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("adapters_pseudonym_subjects.id"), primary_key=True
    )
    agency: Mapped[str] = mapped_column(String(255), primary_key=True)
    pseudonym: Mapped[str] = mapped_column(String(64))


IDEMPOTENCY_TABLE = cast(Table, IdempotencyRow.__table__)
PSEUDONYM_SUBJECTS_TABLE = cast(Table, PseudonymSubjectRow.__table__)
PSEUDONYMS_TABLE = cast(Table, PseudonymRow.__table__)


def ensure_idempotency_table(engine: Engine) -> None:
    """Create ``adapters_idempotency`` in a department database if it is missing.

    Department databases are the departments' own and are not migrated by onceonly's Alembic
    branches; this creates only the one table the SQL adapter needs there (idempotent).
    """
    AdaptersBase.metadata.create_all(engine, tables=[IDEMPOTENCY_TABLE], checkfirst=True)
