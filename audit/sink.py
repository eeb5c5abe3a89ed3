"""The transparency log behind the kernel's ``AuditSink`` port (DESIGN "Audit").

Batched appends, one writer at a time on SQLite (``sqlite_writer_turn``); each batch is one
transaction of the log, so an exchange's records are committed before its answer leaves.
Checkpoints published through the sink take the same turn.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Engine

from audit.log import StoredCheckpoint, TransparencyLog
from exchange.db import sqlite_writer_turn
from exchange.ports import AuditEvent

__all__ = ["LogSink"]


class LogSink:
    """The transparency log as the node's audit sink (batched appends, one writer at a time)."""

    def __init__(self, log: TransparencyLog, engine: Engine) -> None:
        self.log = log
        self._engine = engine

    def record(self, event: AuditEvent) -> None:
        self.record_many([event])

    def record_many(self, events: Sequence[AuditEvent]) -> None:
        with sqlite_writer_turn(self._engine):
            self.log.append_many(events)

    def publish_checkpoint(self, now: datetime) -> StoredCheckpoint:
        """The checkpoint interval's work, in the same writer turn as appends: release the
        restricted entries whose time has come (``TransparencyLog.release_due``), then a new
        signed checkpoint if the log grew (``TransparencyLog.publish_checkpoint``)."""
        with sqlite_writer_turn(self._engine):
            self.log.release_due(now)
            return self.log.publish_checkpoint(now)
