"""Group commit: durable before the answer, batched under load (audit records, replay ids).

Every exchange writes two or three audit records. Writing each in its own transaction costs a
round trip (PostgreSQL) or a commit (SQLite) per record; ``docs/notes/perf-baselines.md``
shows batching is worth 10–30×. ``GroupCommitSink`` keeps the guarantee that matters — a caller
is answered only after its record is committed — while one writer thread commits whatever queued
up meanwhile in one transaction (``record_many`` when the sink has it). If the write fails, every
waiter of that batch gets the error (fail closed).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Generic, Protocol, TypeVar, runtime_checkable

from exchange.db import run_blocking
from exchange.ports import AuditEvent, AuditSink

__all__ = ["BatchAuditSink", "GroupCommit", "GroupCommitSink", "SqlBatch"]

MAX_BATCH = 256
T = TypeVar("T")
R = TypeVar("R")


class GroupCommit(Generic[T, R]):
    """``await batcher.submit(item)`` returns ``write([... item ...])``'s result for ``item``.

    One writer at a time runs ``write`` in a worker thread on everything that queued up while
    the previous batch was being written (at most ``MAX_BATCH``), so under load N callers cost one
    transaction, and alone a caller costs one. ``write`` returns one result per item, in order;
    if it raises, every caller of that batch gets the exception (fail closed).

    ``inline`` (``exchange.db.runs_inline``) runs ``write`` on the event loop instead: the batch is
    then whatever queued up during one turn of the loop."""

    def __init__(self, write: Callable[[list[T]], Sequence[R]], *, inline: bool = False) -> None:
        self._write = write
        self._inline = inline
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._writing = False
        self._drainer: asyncio.Task[None] | None = None  # held: the loop keeps weak refs only

    async def submit(self, item: T) -> R:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[R] = loop.create_future()
        self._pending.append((item, fut))
        if not self._writing:
            self._writing = True
            self._drainer = loop.create_task(self._drain())
        return await fut

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
                try:
                    results = await run_blocking(
                        self._inline, self._write, [item for item, _ in batch]
                    )
                    if len(results) != len(batch):
                        raise RuntimeError("a group commit returned the wrong number of results")
                except Exception as exc:
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                for (_, fut), result in zip(batch, results, strict=True):
                    if not fut.done():
                        fut.set_result(result)
        finally:
            self._writing = False


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

    def __init__(self, sink: AuditSink, *, inline: bool = False) -> None:
        self._sink = sink
        batch = SqlBatch(sink)

        def write(events: list[AuditEvent]) -> list[None]:
            batch.record_many(events)
            return [None] * len(events)

        self._group: GroupCommit[AuditEvent, None] = GroupCommit(write, inline=inline)

    def record(self, event: AuditEvent) -> None:
        """Synchronous path (threads, CLI): straight to the sink."""
        self._sink.record(event)

    async def record_async(self, event: AuditEvent) -> None:
        await self._group.submit(event)
