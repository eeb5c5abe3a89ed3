"""The node's own message log: every request, response and refusal, as rows (issue 2).

An ``AuditSink`` that writes one row per event into ``xchg_message_log``: a node's default when
no sink is wired. The composition root wires the transparency log of ``audit/`` instead, the
tamper-evident version of the same record. Personal data never goes in: only who, what, why, the
decision and the hashes.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Engine, insert

from exchange.db import write_transaction
from exchange.ports import AuditEvent
from exchange.store import MessageLogRow

__all__ = ["SqlMessageLog"]


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
