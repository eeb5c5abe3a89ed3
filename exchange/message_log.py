"""The node's own message log: every request, response and refusal, as rows (issue 2).

An ``AuditSink`` that writes one row per event into ``xchg_message_log``. The transparency log of
``audit/`` (Merkle tree, signed checkpoints) is the tamper-evident version of the same record; the
composition root can chain both with ``FanOutSink``. Personal data never goes in: only who, what,
why, the decision and the hashes.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Engine, insert, select

from exchange.db import write_transaction
from exchange.ports import AuditEvent, AuditSink
from exchange.store import MessageLogRow

__all__ = ["FanOutSink", "SqlMessageLog"]


class SqlMessageLog:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def record(self, event: AuditEvent) -> None:
        self.record_many([event])

    def record_many(self, events: Sequence[AuditEvent]) -> None:
        with write_transaction(self._engine) as conn:
            conn.execute(insert(MessageLogRow), [self._row(e) for e in events])

    @staticmethod
    def _row(event: AuditEvent) -> dict[str, object]:
        return dict(
            node=event.node,
            time=event.time,
            kind=event.kind,
            decision=event.decision,
            client=event.client,
            service=event.service,
            purpose=event.purpose,
            subject=event.subject,
            consent_id=event.consent_id,
            message_id=event.message_id,
            request_hash=event.request_hash,
            body_hash=event.body_hash,
            status=event.status,
            reason=event.reason,
            decision_id=event.decision_id,
            basis=event.basis,
        )

    def recent(
        self, node: str, *, limit: int = 100, since: datetime | None = None
    ) -> list[MessageLogRow]:
        with self._engine.connect() as conn:
            q = select(MessageLogRow).where(MessageLogRow.node == node)
            if since is not None:
                q = q.where(MessageLogRow.time >= since)
            rows = conn.execute(q.order_by(MessageLogRow.id.desc()).limit(limit)).all()
        return [MessageLogRow(**r._mapping) for r in rows]


class FanOutSink:
    """Records each event in every sink, in order; the first failure propagates (fail closed)."""

    def __init__(self, sinks: Sequence[AuditSink]) -> None:
        self._sinks = tuple(sinks)

    def record(self, event: AuditEvent) -> None:
        for sink in self._sinks:
            sink.record(event)
