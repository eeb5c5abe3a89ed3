"""The transactional outbox and its delivery worker (docs/protocol.md §7, "Delivery").

``Outbox.append`` is called *inside* the transaction of the change that causes the event: the
event is numbered (the stream's head row is locked, so two transactions never take the same
number), signed, and stored beside the change — both commit, or neither does. Nothing is sent
from inside a transaction.

``DeliveryWorker`` then sends each stream's events in order: the lowest undelivered ``seq`` of a
stream is the only one in flight, so a receiver sees 1, 2, 3, … (a receiver that has missed one
pulls it, ``exchange.event_inbox``). A failed attempt waits ``backoff_s(attempts)`` — exponential,
capped, with jitter — and is tried again, for ever: delivery is at least once, and the receiver's
inbox makes a second delivery harmless. Every attempt is audited (kind ``event.delivered``:
``allow`` delivered, ``error`` not).

Several workers (replicas) may run over one database: at worst an event is sent twice, which the
receiver's inbox absorbs.

Trust assumption: the recipient's address is the node address of its member in the verified
registry; nothing an event's data says chooses where it goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import Engine, and_, delete, func, or_, select, update
from sqlalchemy import event as sa_event
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from exchange.db import as_utc, finishing_thread, write_transaction
from exchange.events import EventEnvelope, new_event, sign_event, stream_name
from exchange.ports import AuditEvent, AuditSink
from exchange.signing import Signer
from exchange.store import EventOutboxColumns, EventStreamColumns

__all__ = [
    "DEFAULT_BASE_BACKOFF_S",
    "DeliveryWorker",
    "Outbox",
    "OutboxItem",
    "backoff_s",
]

DEFAULT_BASE_BACKOFF_S = 0.5
DEFAULT_POLL_S = 1.0
MAX_BATCH = 200
MAX_PULL = 500
MAX_DELIVERY = 100
"""The most events of one stream sent in one delivery (the receiver's ``MAX_BATCH_EVENTS``)."""
DELIVERY_TIMEOUT_S = 5.0
PRUNE_INTERVAL_S = 3600.0
_log = logging.getLogger("onceonly.events")


def backoff_s(attempts: int, *, base_s: float, cap_s: float) -> float:
    """The wait after the ``attempts``-th failure: ``base · 2^(attempts-1)``, at most ``cap``."""
    return float(min(cap_s, base_s * (2 ** max(0, min(attempts - 1, 40)))))


@dataclass(frozen=True, slots=True)
class OutboxItem:
    stream: str
    seq: int
    event_id: str
    recipient: str
    type: str
    wire: str
    attempts: int


class Outbox:
    """An outbox over the owner's tables (``rows``: ``EventOutboxColumns``, ``streams``:
    ``EventStreamColumns``), signing as ``sender`` with ``signer``."""

    def __init__(
        self,
        engine: Engine,
        rows: type[EventOutboxColumns],
        streams: type[EventStreamColumns],
        *,
        sender: str,
        signer: Signer,
        senders: Sequence[str] | None = None,
    ) -> None:
        """``senders``: the table also holds other senders' streams (a node's registries share
        one outbox, and nodes may share a database); ``due`` then looks at these senders'
        streams only. None: every stream in the table is this outbox's."""
        self.engine = engine
        self._senders = tuple(senders) if senders is not None else None
        self._rows: Any = rows
        self._streams: Any = streams
        self.sender = sender
        self._signer = signer
        self._listeners: list[Callable[[], None]] = []
        self._lock = threading.Lock()

    def on_append(self, listener: Callable[[], None]) -> None:
        """``listener()`` after a transaction that appended an event commits (wakes a worker)."""
        with self._lock:
            self._listeners.append(listener)

    def _notify(self, _session: Session) -> None:
        for listener in list(self._listeners):
            listener()

    def _next_seq(self, session: Session, stream: str) -> int:
        heads = self._streams
        for _ in range(2):
            # The update takes the head row's lock (PostgreSQL) or the write lock (SQLite): a
            # concurrent transaction waits here, then numbers after us.
            seq = session.scalar(
                update(heads)
                .where(heads.stream == stream)
                .values(last_seq=heads.last_seq + 1)
                .returning(heads.last_seq)
            )
            if seq is not None:
                return int(seq)
            try:
                with session.begin_nested():
                    session.add(heads(stream=stream, last_seq=1))
                return 1
            except IntegrityError:  # another transaction opened the stream meanwhile
                continue
        raise RuntimeError(f"cannot number an event of stream {stream}")

    def append(
        self,
        session: Session,
        *,
        recipient: str,
        type: str,
        data: dict[str, Any],
        now: datetime,
    ) -> EventEnvelope:
        """Number, sign and store an event in ``session``'s transaction (the caller's)."""
        stream = stream_name(self.sender, recipient)
        seq = self._next_seq(session, stream)
        event = new_event(
            sender=self.sender, recipient=recipient, seq=seq, type=type, data=data, now=now
        )
        session.add(
            self._rows(
                stream=stream,
                seq=seq,
                event_id=event.event_id,
                recipient=recipient,
                type=type,
                wire=sign_event(event, self._signer).decode(),
                created_at=now,
                delivered_at=None,
                attempts=0,
                next_attempt_at=now,
                last_error=None,
            )
        )
        if not sa_event.contains(session, "after_commit", self._notify):
            sa_event.listen(session, "after_commit", self._notify, once=True)
        return event

    # -- the worker's side ---------------------------------------------------------------------

    def due(self, now: datetime, *, limit: int = MAX_BATCH) -> list[OutboxItem]:
        """The head (lowest undelivered seq) of each stream whose next attempt is due."""
        rows = self._rows
        undelivered = [rows.delivered_at.is_(None)]
        if self._senders is not None:
            undelivered.append(
                or_(*(rows.stream.startswith(f"{x} > ", autoescape=True) for x in self._senders))
            )
        heads = (
            select(rows.stream, func.min(rows.seq).label("seq"))
            .where(*undelivered)
            .group_by(rows.stream)
            .subquery()
        )
        stmt = (
            select(
                rows.stream,
                rows.seq,
                rows.event_id,
                rows.recipient,
                rows.type,
                rows.wire,
                rows.attempts,
                rows.next_attempt_at,
            )
            .join(heads, and_(rows.stream == heads.c.stream, rows.seq == heads.c.seq))
            .limit(limit)
        )
        with self.engine.connect() as conn:
            found = conn.execute(stmt).all()
        return [
            OutboxItem(r.stream, r.seq, r.event_id, r.recipient, r.type, r.wire, r.attempts)
            for r in found
            if as_utc(r.next_attempt_at) <= now
        ]

    def pending(self, stream: str, *, limit: int) -> list[OutboxItem]:
        """The undelivered events of ``stream`` from its head, in order (one delivery)."""
        rows = self._rows
        with self.engine.connect() as conn:
            found = conn.execute(
                select(
                    rows.stream,
                    rows.seq,
                    rows.event_id,
                    rows.recipient,
                    rows.type,
                    rows.wire,
                    rows.attempts,
                )
                .where(rows.stream == stream, rows.delivered_at.is_(None))
                .order_by(rows.seq)
                .limit(limit)
            ).all()
        return [
            OutboxItem(r.stream, r.seq, r.event_id, r.recipient, r.type, r.wire, r.attempts)
            for r in found
        ]

    def mark_delivered(self, item: OutboxItem, now: datetime) -> None:
        """``item`` and every earlier event of its stream arrived (the receiver applies in order)."""
        rows = self._rows
        with write_transaction(self.engine) as conn:
            conn.execute(
                update(rows)
                .where(rows.stream == item.stream, rows.seq <= item.seq)
                .where(rows.delivered_at.is_(None))
                .values(delivered_at=now)
            )

    def mark_failed(self, item: OutboxItem, *, next_at: datetime, error: str) -> None:
        rows = self._rows
        with write_transaction(self.engine) as conn:
            conn.execute(
                update(rows)
                .where(rows.stream == item.stream, rows.seq == item.seq)
                .values(attempts=rows.attempts + 1, next_attempt_at=next_at, last_error=error[:255])
            )

    def since(self, recipient: str, after: int, *, limit: int = MAX_PULL) -> list[str]:
        """The signed events of ``recipient``'s stream after ``after``, in order (catch-up)."""
        rows = self._rows
        stream = stream_name(self.sender, recipient)
        with self.engine.connect() as conn:
            return list(
                conn.scalars(
                    select(rows.wire)
                    .where(rows.stream == stream, rows.seq > after)
                    .order_by(rows.seq)
                    .limit(max(1, min(limit, MAX_PULL)))
                ).all()
            )

    def prune(self, before: datetime) -> int:
        """Delete the events delivered before ``before``; returns how many. The stream heads keep
        their numbers, so each stream goes on from where it was."""
        rows = self._rows
        with write_transaction(self.engine) as conn:
            done = conn.execute(
                delete(rows).where(rows.delivered_at.is_not(None), rows.delivered_at < before)
            )
        return int(getattr(done, "rowcount", 0) or 0)

    def undelivered(self) -> int:
        rows = self._rows
        with self.engine.connect() as conn:
            return int(conn.scalar(select(func.count()).where(rows.delivered_at.is_(None))) or 0)


AddressOf = Callable[[str], str]
"""``address_of(recipient) -> URL`` of the recipient node's inbox, from the verified registry."""


class DeliveryWorker:
    """Sends due events, one in flight per stream, streams in parallel; retries with backoff."""

    def __init__(
        self,
        outbox: Outbox,
        address_of: AddressOf,
        *,
        audit: AuditSink,
        node: str,
        base_backoff_s: float = DEFAULT_BASE_BACKOFF_S,
        max_backoff_s: float = 300.0,
        poll_s: float = DEFAULT_POLL_S,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        http: httpx.AsyncClient | None = None,
        rng: random.Random | None = None,
        retention: timedelta | None = None,
        woken_by: Sequence[Outbox] = (),
    ) -> None:
        """``retention``: delivered events older than this are pruned (about hourly); None keeps
        them. ``woken_by``: other outboxes appending to the same table (one worker delivers
        every stream ``outbox.due`` finds)."""
        self._outbox = outbox
        self._address_of = address_of
        self._audit = audit
        self._node = node
        self._base = base_backoff_s
        self._cap = max_backoff_s
        self._poll_s = poll_s
        self._clock = clock
        self._http = http
        self._rng = rng or random.Random()  # noqa: S311 -- jitter, not a secret
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._retention = retention
        self._pruned_at: datetime | None = None
        for appender in (outbox, *woken_by):
            appender.on_append(self.wake)

    def wake(self) -> None:
        """Thread-safe: something was appended; look now rather than at the next poll."""
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None and not loop.is_closed():
            loop.call_soon_threadsafe(wake.set)

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        own = self._http is None
        http = self._http or httpx.AsyncClient(timeout=DELIVERY_TIMEOUT_S, follow_redirects=False)
        try:
            while True:
                self._wake.clear()
                try:
                    delivered = await self.run_once(http)
                except Exception:  # a database outage skips a round, never ends the worker
                    _log.warning("event delivery round failed", exc_info=True)
                    delivered = 0
                await self._prune_if_due()
                if delivered == 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), self._poll_s)
        finally:
            if own:
                await http.aclose()

    async def _prune_if_due(self) -> None:
        now = self._clock()
        if self._retention is None or (
            self._pruned_at is not None
            and (now - self._pruned_at).total_seconds() < PRUNE_INTERVAL_S
        ):
            return
        self._pruned_at = now
        try:
            await finishing_thread(self._outbox.prune, now - self._retention)
        except Exception:  # a database outage: prune in the next hour
            _log.warning("outbox pruning skipped", exc_info=True)

    async def run_once(self, http: httpx.AsyncClient) -> int:
        """One round: every due stream head is sent (in parallel); returns how many arrived."""
        items = await finishing_thread(self._outbox.due, self._clock())
        results = await asyncio.gather(*(self._deliver(http, item) for item in items))
        return sum(results)

    async def _deliver(self, http: httpx.AsyncClient, head: OutboxItem) -> int:
        """One delivery: the stream's undelivered events from its head, up to ``MAX_DELIVERY``,
        in one request (one event alone goes as it is)."""
        batch = await finishing_thread(self._outbox.pending, head.stream, limit=MAX_DELIVERY)
        if not batch or batch[0].seq != head.seq:
            return 0  # another worker delivered it meanwhile
        body = (
            batch[0].wire.encode()
            if len(batch) == 1
            else b'{"events":[' + b",".join(i.wire.encode() for i in batch) + b"]}"
        )
        error: str | None = None
        try:
            url = self._address_of(head.recipient)
            response = await http.post(
                url, content=body, headers={"content-type": "application/json"}
            )
            if response.status_code != 200:
                error = f"HTTP {response.status_code}: {_code_of(response)}"
        except Exception as exc:  # unreachable, no address, timed out: retried, never lost
            error = f"{type(exc).__name__}: {exc}"[:200]
        now = self._clock()
        if error is None:
            await finishing_thread(self._outbox.mark_delivered, batch[-1], now)
        else:
            wait = backoff_s(head.attempts + 1, base_s=self._base, cap_s=self._cap)
            wait *= 0.5 + self._rng.random() / 2  # jitter: replicas and streams spread out
            await finishing_thread(
                self._outbox.mark_failed, head, next_at=now + timedelta(seconds=wait), error=error
            )
        await finishing_thread(self._audit.record, self._audited(batch, now, error))
        return len(batch) if error is None else 0

    def _audited(self, batch: list[OutboxItem], now: datetime, error: str | None) -> AuditEvent:
        head, last = batch[0], batch[-1]
        return AuditEvent(
            time=now,
            node=self._node,
            kind="event.delivered",
            decision="allow" if error is None else "error",
            client=head.recipient,
            reason=error,
            message_id=head.event_id,
            extra={
                "stream": head.stream,
                "seq": str(head.seq),
                "last_seq": str(last.seq),
                "events": str(len(batch)),
                "type": head.type,
                "attempt": str(head.attempts + 1),
            },
        )


def _code_of(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return "no problem document"
    code = body.get("code") if isinstance(body, dict) else None
    return str(code)[:100] if code else "no code"
