"""Group commit of audit records: durable before the answer, batched under load.

Every exchange writes two or three audit records. Writing each in its own transaction costs a
round trip (PostgreSQL) or a commit (SQLite) per record; ``../shared/notes/perf-baselines.md``
shows batching is worth 10–30×. ``GroupCommitSink`` keeps the guarantee that matters — a caller
is answered only after its record is committed — while one writer thread commits whatever queued
up meanwhile in one transaction (``record_many`` when the sink has it). If the write fails, every
waiter of that batch gets the error (fail closed).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from exchange.ports import AuditEvent, AuditSink

__all__ = ["BatchAuditSink", "GroupCommitSink", "SqlBatch"]

MAX_BATCH = 256


@runtime_checkable
class BatchAuditSink(Protocol):
    def record_many(self, events: Sequence[AuditEvent]) -> None: ...


class SqlBatch:
    """Adapts a sink without ``record_many`` (records one by one, still one thread hop)."""

    def __init__(self, sink: AuditSink) -> None:
        self._sink = sink

    def record_many(self, events: Sequence[AuditEvent]) -> None:
        if isinstance(self._sink, BatchAuditSink):
            self._sink.record_many(events)
            return
        for event in events:
            self._sink.record(event)


class GroupCommitSink:
    """``await sink.record_async(event)`` returns once the event is durably recorded."""

    def __init__(self, sink: AuditSink) -> None:
        self._sink = sink
        self._batch = SqlBatch(sink)
        self._pending: list[tuple[AuditEvent, asyncio.Future[None]]] = []
        self._writing = False

    def record(self, event: AuditEvent) -> None:
        """Synchronous path (threads, CLI): straight to the sink."""
        self._sink.record(event)

    async def record_async(self, event: AuditEvent) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((event, fut))
        if not self._writing:
            self._writing = True
            asyncio.get_running_loop().create_task(self._drain())
        await fut

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
                try:
                    await asyncio.to_thread(self._batch.record_many, [e for e, _ in batch])
                except Exception as exc:
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                for _, fut in batch:
                    if not fut.done():
                        fut.set_result(None)
        finally:
            self._writing = False
