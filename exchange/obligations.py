"""The consumer node's obligations ledger: what it received under usage terms, and whether the
departmental system deleted it in time (docs/operator.md, "Obligations ledger").

Every verified response that carries usage terms (``exchange.envelope.UsageTerms``) and data is
recorded here by the consumer side, in the node's own database: message id, client, service,
the receiving agency's own subject code (as its audit log keeps it), purpose, delete-by date and
the onward-transfer term. The departmental system confirms deletion (``confirm_deleted``); an
obligation still open after its delete-by date is *overdue*: ``sweep_overdue`` records each one
once in the node's audit log (kind ``obligation.overdue``, with the subject, so that the citizen
sees it next to the access) and the auditor lists them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import Engine, func, or_, select, update
from sqlalchemy.orm import Session

from exchange.db import as_utc, driver_cursor, read_cursor, runs_inline, write_transaction
from exchange.envelope import UsageTerms
from exchange.errors import NotFoundError
from exchange.group_commit import GroupCommit
from exchange.store import ObligationRow

__all__ = ["Obligation", "ObligationsLedger", "Received"]

MAX_LIST = 1000


@dataclass(frozen=True, slots=True)
class Obligation:
    client: str
    message_id: str
    service: str
    subject: str | None
    purpose: str
    delete_by: date
    onward: bool
    received_at: datetime
    deleted_at: datetime | None
    overdue_at: datetime | None

    def overdue(self, now: datetime) -> bool:
        """Not deleted, and the delete-by date (a UTC calendar day) is past."""
        return self.deleted_at is None and self.delete_by < now.astimezone(UTC).date()

    def to_json(self, now: datetime) -> dict[str, object]:
        return {
            "client": self.client,
            "message_id": self.message_id,
            "service": self.service,
            "purpose": self.purpose,
            "delete_by": self.delete_by.isoformat(),
            "onward": self.onward,
            "received_at": self.received_at.isoformat(),
            "deleted_at": self.deleted_at.isoformat() if self.deleted_at else None,
            "overdue": self.overdue(now),
        }


def _aware(value: datetime | None) -> datetime | None:
    return None if value is None else as_utc(value)


def _of(row: ObligationRow) -> Obligation:
    received = _aware(row.received_at)
    assert received is not None
    return Obligation(
        client=row.client,
        message_id=row.message_id,
        service=row.service,
        subject=row.subject,
        purpose=row.purpose,
        delete_by=row.delete_by,
        onward=row.onward,
        received_at=received,
        deleted_at=_aware(row.deleted_at),
        overdue_at=_aware(row.overdue_at),
    )


# PostgreSQL: a whole batch in one statement, so that autocommit makes it one atomic round trip
_INSERT_PG = (
    "INSERT INTO xchg_obligations (client, message_id, service, subject, purpose, delete_by, "
    "onward, received_at) SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], "
    "%s::text[], %s::date[], %s::boolean[], %s::timestamptz[]) ON CONFLICT DO NOTHING"
)
_INSERT_SQLITE = (
    "INSERT INTO xchg_obligations (client, message_id, service, subject, purpose, delete_by, "
    "onward, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
)


@dataclass(frozen=True, slots=True)
class Received:
    """One response received under usage terms: what ``ObligationsLedger.record`` keeps."""

    client: str
    message_id: str
    service: str
    subject: str | None
    terms: UsageTerms
    now: datetime


class ObligationsLedger:
    """``inline``: the batched writes of ``record_async`` run on the event loop (SQLite, see
    ``exchange.db.runs_inline``) rather than in a worker thread."""

    def __init__(self, engine: Engine, *, inline: bool | None = None) -> None:
        self._engine = engine
        self._group: GroupCommit[Received, None] = GroupCommit(
            self.record_many, inline=runs_inline(engine) if inline is None else inline
        )
        # SQLite: the rows go straight to the driver, as SQLAlchemy would bind them (its stored
        # forms of dates and times, not sqlite3's deprecated default adapters).
        dialect, columns = engine.dialect, ObligationRow.__table__.c
        self._bind_date: Any = columns.delete_by.type.dialect_impl(dialect).bind_processor(dialect)
        self._bind_time: Any = columns.received_at.type.dialect_impl(dialect).bind_processor(
            dialect
        )

    def record(
        self,
        *,
        client: str,
        message_id: str,
        service: str,
        subject: str | None,
        terms: UsageTerms,
        now: datetime,
    ) -> None:
        """One response received under ``terms`` (idempotent on client and message id)."""
        self.record_many([Received(client, message_id, service, subject, terms, now)])

    async def record_async(self, received: Received) -> None:
        """``record``, committed before it returns, batched with the responses received
        meanwhile (one statement a batch; a failing batch fails each of its callers)."""
        await self._group.submit(received)

    def record_many(self, batch: Sequence[Received]) -> list[None]:
        """Responses received, in one transaction: on PostgreSQL one ``INSERT … SELECT …
        unnest(…) ON CONFLICT DO NOTHING`` in autocommit (one round trip), on SQLite the rows
        straight to the driver in one write transaction."""
        if self._engine.dialect.name == "postgresql":
            with read_cursor(self._engine) as cur:
                cur.execute(_INSERT_PG, _columns(batch), prepare=True)
        else:
            rows = [
                (
                    r.client,
                    r.message_id,
                    r.service,
                    r.subject,
                    r.terms.purpose,
                    self._bind_date(r.terms.delete_by) if self._bind_date else r.terms.delete_by,
                    r.terms.onward,
                    self._bind_time(r.now) if self._bind_time else r.now,
                )
                for r in batch
            ]
            with write_transaction(self._engine) as conn, driver_cursor(conn) as cur:
                cur.executemany(_INSERT_SQLITE, rows)
        return [None] * len(batch)

    def get(self, client: str, message_id: str) -> Obligation | None:
        with Session(self._engine) as s:
            row = s.get(ObligationRow, (client, message_id))
            return None if row is None else _of(row)

    def confirm_deleted(self, client: str, message_id: str, now: datetime) -> Obligation:
        """The departmental system ``client`` deleted the data of ``message_id``. A second
        confirmation keeps the first time. Unknown (or another client's) message: 404."""
        with Session(self._engine) as s, s.begin():
            row = s.get(ObligationRow, (client, message_id), with_for_update=True)
            if row is None:
                raise NotFoundError(
                    "no obligation for this message at this client",
                    code="Client.UnknownObligation",
                )
            if row.deleted_at is None:
                row.deleted_at = now
            s.flush()
            return _of(row)

    def overdue(self, now: datetime, *, limit: int = MAX_LIST) -> list[Obligation]:
        """Open obligations past their delete-by date, oldest first."""
        today = now.astimezone(UTC).date()
        with Session(self._engine) as s:
            rows = s.scalars(
                select(ObligationRow)
                .where(ObligationRow.deleted_at.is_(None), ObligationRow.delete_by < today)
                .order_by(ObligationRow.delete_by, ObligationRow.client, ObligationRow.message_id)
                .limit(limit)
            )
            return [_of(r) for r in rows]

    def listing(self, now: datetime, *, limit: int = MAX_LIST) -> list[Obligation]:
        """Every obligation, the most recent first."""
        del now
        with Session(self._engine) as s:
            rows = s.scalars(
                select(ObligationRow)
                .order_by(ObligationRow.received_at.desc(), ObligationRow.message_id)
                .limit(limit)
            )
            return [_of(r) for r in rows]

    def count_overdue(self, now: datetime) -> int:
        today = now.astimezone(UTC).date()
        with Session(self._engine) as s:
            return int(
                s.scalar(
                    select(func.count())
                    .select_from(ObligationRow)
                    .where(ObligationRow.deleted_at.is_(None), ObligationRow.delete_by < today)
                )
                or 0
            )

    def unreported_overdue(self, now: datetime, *, limit: int = MAX_LIST) -> list[Obligation]:
        return [o for o in self.overdue(now, limit=limit) if o.overdue_at is None]

    def mark_reported(self, client: str, message_id: str, now: datetime) -> bool:
        """Claim the overdue report of one obligation; False when already claimed."""
        with Session(self._engine) as s, s.begin():
            result = s.execute(
                update(ObligationRow)
                .where(
                    ObligationRow.client == client,
                    ObligationRow.message_id == message_id,
                    ObligationRow.overdue_at.is_(None),
                )
                .values(overdue_at=now)
                .execution_options(synchronize_session=False)
            )
            return getattr(result, "rowcount", 0) == 1

    def of_subjects(self, subjects: frozenset[str], *, limit: int = MAX_LIST) -> list[Obligation]:
        if not subjects:
            return []
        with Session(self._engine) as s:
            rows = s.scalars(
                select(ObligationRow)
                .where(ObligationRow.subject.in_(sorted(subjects)))
                .order_by(ObligationRow.received_at.desc())
                .limit(limit)
            )
            return [_of(r) for r in rows]

    def received_without_onward(self, subject: str, service: str) -> bool:
        """Whether this node holds data about ``subject`` from ``service`` (a versioned id, or an
        unversioned one for every version) received under "no onward transfer" and not yet
        deleted."""
        with Session(self._engine) as s:
            hit = s.scalar(
                select(ObligationRow.message_id)
                .where(
                    ObligationRow.subject == subject,
                    or_(
                        ObligationRow.service == service,
                        ObligationRow.service.startswith(service + "/", autoescape=True),
                    ),
                    ObligationRow.onward.is_(False),
                    ObligationRow.deleted_at.is_(None),
                )
                .limit(1)
            )
            return hit is not None


def _columns(batch: Sequence[Received]) -> tuple[list[Any], ...]:
    """The batch as one array per column (PostgreSQL's ``unnest``)."""
    return (
        [r.client for r in batch],
        [r.message_id for r in batch],
        [r.service for r in batch],
        [r.subject for r in batch],
        [r.terms.purpose for r in batch],
        [r.terms.delete_by for r in batch],
        [r.terms.onward for r in batch],
        [r.now for r in batch],
    )
