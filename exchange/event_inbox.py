"""The receiving side of events: the inbox and catch-up (docs/protocol.md §7, "Receipt").

``Inbox.receive`` runs steps (E1)–(E6) of ``exchange.events`` and then (E7) in one transaction:

* ``seq`` is the stream's next (cursor + 1): the event is stored — primary key (stream, seq), so
  it can be applied only once, whatever two deliveries race — and each subscribed handler
  applies it in the same transaction; the receipt is audited right after the commit (if that
  fails the sender hears an error and delivers again, recorded then as a duplicate);
* ``seq`` at or below the cursor with the same ``event_id``: a duplicate (a retry after a lost
  answer, a replay): answered ``duplicate`` and audited, applied nothing;
* ``seq`` at or below the cursor with another ``event_id``: refused (409) — a sender never
  re-numbers, so this is a forgery of order or a sender's bug;
* ``seq`` beyond cursor + 1: a gap (an event missed): refused (409, ``expected`` in the answer)
  and the node catches up by pulling "events since cursor" from the sender
  (``EventPuller``), which delivers them in order through the same ``receive``.

Every refusal is audited (kind ``refusal``, ``stage: event``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import quote

import httpx
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from exchange.central_config import VerifiedRegistry
from exchange.db import finishing_thread, sqlite_writer_turn
from exchange.errors import (
    ClientError,
    ConfigurationError,
    ConflictError,
    OnceOnlyError,
    UnavailableError,
    VerificationError,
)
from exchange.events import (
    CONSENT_SERVICE_SENDER,
    EventEnvelope,
    VerifiedEvent,
    parse_unverified_event,
    stream_name,
    verify_event,
)
from exchange.identifiers import ClientId
from exchange.node_requests import sign_node_request
from exchange.ports import AuditEvent, AuditSink
from exchange.signing import MemberSigner
from exchange.store import EventInboxRow

__all__ = [
    "CONSENT_EVENTS_PATH",
    "MAX_BATCH_EVENTS",
    "NODE_EVENTS_PATH",
    "EventGapError",
    "EventPuller",
    "Inbox",
    "InboxReceipt",
    "ReusedSequenceError",
]

CONSENT_EVENTS_PATH = "/consent/v1/events"
NODE_EVENTS_PATH = "/events/v1/streams"
"""Where a node answers "events since cursor" of its registries' streams (``?sender=``)."""
"""Where the consent service answers "events since cursor" (``exchange.web.events``)."""
MAX_PULL_BYTES = 8 * 1024 * 1024
MAX_BATCH_EVENTS = 100
"""The most events one delivery (``POST /events/v1/inbox`` with ``{"events": [...]}``) holds."""
_log = logging.getLogger("onceonly.events")

Handler = Callable[[Session, EventEnvelope], None]
"""Applies an event inside the inbox's transaction (raising undoes the receipt)."""


class EventGapError(ConflictError):
    """(E7) the event is beyond the next one expected: earlier ones are missing."""

    code = "Client.EventOutOfOrder"

    def __init__(self, detail: str, *, expected: int) -> None:
        super().__init__(detail)
        self.expected = expected


class ReusedSequenceError(ConflictError):
    """(E7) another event was already applied under this sequence number."""

    code = "Client.EventSequenceReused"


@dataclass(frozen=True, slots=True)
class InboxReceipt:
    stream: str
    seq: int
    status: Literal["applied", "duplicate"]
    cursor: int


class Inbox:
    """A node's inbox over its own database (``xchg_event_inbox``)."""

    def __init__(
        self,
        engine: Engine,
        *,
        hosted: frozenset[ClientId],
        audit: AuditSink,
        node: str,
        max_skew_s: int,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._engine = engine
        self.hosted = hosted
        self._audit = audit
        self._node = node
        self._max_skew_s = max_skew_s
        self._clock = clock
        self._handlers: list[tuple[str, Handler]] = []
        self._registry: VerifiedRegistry | None = None
        self._lock = threading.Lock()

    def on_registry(self, registry: VerifiedRegistry) -> None:
        with self._lock:
            self._registry = registry

    @property
    def registry(self) -> VerifiedRegistry | None:
        with self._lock:
            return self._registry

    def subscribe(self, type_prefix: str, handler: Handler) -> None:
        """``handler`` applies every event whose type starts with ``type_prefix``."""
        self._handlers.append((type_prefix, handler))

    def cursor(self, stream: str) -> int:
        """The highest sequence number applied on ``stream`` (0: none)."""
        with self._engine.connect() as conn:
            value = conn.scalar(
                select(func.max(EventInboxRow.seq)).where(EventInboxRow.stream == stream)
            )
        return int(value or 0)

    def senders(self, recipient: str) -> list[str]:
        """The member subsystems that sent ``recipient`` events (the streams a catch-up pulls)."""
        with self._engine.connect() as conn:
            found = conn.scalars(
                select(EventInboxRow.sender)
                .where(
                    EventInboxRow.recipient == recipient,
                    EventInboxRow.sender != CONSENT_SERVICE_SENDER,
                )
                .distinct()
            ).all()
        return sorted(found)

    def receive(self, raw: bytes) -> InboxReceipt:
        """Verify and apply one signed event (E1–E7); a refusal raises, audited."""
        return self.receive_batch([raw])

    def receive_batch(self, raws: Sequence[bytes]) -> InboxReceipt:
        """Verify every event (E1–E6), then apply them in order in one transaction (E7): a
        sender's consecutive events of one stream. Any refusal refuses the batch (audited)."""
        now = self._clock()
        env: EventEnvelope | None = None
        try:
            registry = self.registry
            if registry is None:
                raise ConfigurationError("no verified central registry yet")
            if not raws or len(raws) > MAX_BATCH_EVENTS:
                raise ClientError(f"a delivery holds 1 to {MAX_BATCH_EVENTS} events")
            verified: list[VerifiedEvent] = []
            for raw in raws:
                unverified = parse_unverified_event(raw)  # (E1)
                env = unverified.envelope
                verified.append(
                    verify_event(  # (E2)–(E6)
                        unverified,
                        registry=registry,
                        hosted=self.hosted,
                        now=now,
                        max_skew_s=self._max_skew_s,
                    )
                )
            if len({v.envelope.stream for v in verified}) != 1:
                raise ClientError("a delivery holds events of one stream")
            return self._apply(verified, now)  # (E7)
        except OnceOnlyError as exc:
            self._refused(exc, env, now)
            raise

    def _apply(self, events: Sequence[VerifiedEvent], now: datetime) -> InboxReceipt:
        receipts: list[InboxReceipt] = []
        # One writer at a time on SQLite (as the audit log's writer): no SQLITE_BUSY between them.
        with sqlite_writer_turn(self._engine):
            try:
                with Session(self._engine) as session, session.begin():
                    receipts = [self._store(session, e, now) for e in events]
            except IntegrityError:
                # A concurrent delivery applied some of them: ours are duplicates (or refused).
                with Session(self._engine) as session:
                    receipts = [
                        self._duplicate(session, e.envelope, e.envelope.seq) for e in events
                    ]
        # Audited once the transaction is over (the audit log is another writer of this
        # database). Should recording fail, the sender hears an error and delivers again: the
        # receipts are then recorded as duplicates — recorded at least once, applied once.
        audited = [
            self._received(e.envelope, now, r.status) for e, r in zip(events, receipts, strict=True)
        ]
        record_many = getattr(self._audit, "record_many", None)
        if callable(record_many):
            record_many(audited)
        else:
            for entry in audited:
                self._audit.record(entry)
        last = receipts[-1]
        applied = any(r.status == "applied" for r in receipts)
        cursor = max(r.cursor for r in receipts)
        return InboxReceipt(last.stream, last.seq, "applied" if applied else "duplicate", cursor)

    def _store(self, session: Session, event: VerifiedEvent, now: datetime) -> InboxReceipt:
        env = event.envelope
        cursor = int(
            session.scalar(
                select(func.max(EventInboxRow.seq)).where(EventInboxRow.stream == env.stream)
            )
            or 0
        )
        if env.seq <= cursor:
            return self._duplicate(session, env, cursor)
        if env.seq > cursor + 1:
            raise EventGapError(
                f"event {env.seq} of this stream arrived before {cursor + 1}",
                expected=cursor + 1,
            )
        session.add(
            EventInboxRow(
                stream=env.stream,
                seq=env.seq,
                event_id=env.event_id,
                sender=env.sender,
                recipient=env.recipient,
                type=env.type,
                created_at=env.created_at,
                received_at=now,
                wire=event.raw.decode(),
            )
        )
        session.flush()  # a concurrent delivery of the same event fails here
        for prefix, handler in self._handlers:
            if env.type.startswith(prefix):
                handler(session, env)
        return InboxReceipt(env.stream, env.seq, "applied", env.seq)

    def _duplicate(self, session: Session, env: EventEnvelope, cursor: int) -> InboxReceipt:
        applied = session.scalar(
            select(EventInboxRow.event_id).where(
                EventInboxRow.stream == env.stream, EventInboxRow.seq == env.seq
            )
        )
        if applied != env.event_id:
            raise ReusedSequenceError("another event was applied under this sequence number")
        return InboxReceipt(env.stream, env.seq, "duplicate", cursor)

    def _received(self, env: EventEnvelope, now: datetime, outcome: str) -> AuditEvent:
        return AuditEvent(
            time=now,
            node=self._node,
            kind="event.received",
            decision="allow" if outcome == "applied" else "info",
            client=env.recipient,
            reason=outcome,
            message_id=env.event_id,
            extra={
                "sender": env.sender,
                "stream": env.stream,
                "seq": str(env.seq),
                "type": env.type,
            },
        )

    def _refused(self, exc: OnceOnlyError, env: EventEnvelope | None, now: datetime) -> None:
        if exc.audited:
            return
        exc.audited = True
        extra = {"stage": "event"}
        if env is not None and not isinstance(exc, VerificationError):
            # What verified may be named; an unverified sender's claims are not recorded.
            extra |= {"stream": env.stream, "seq": str(env.seq)}
        self._audit.record(
            AuditEvent(
                time=now,
                node=self._node,
                kind="refusal",
                decision="deny",
                status=exc.status,
                reason=f"{exc.code}: {exc.detail}",
                extra=extra,
            )
        )


class EventPuller:
    """Catch-up: pulls "events since cursor", for each hosted subsystem and as that subsystem (a
    signed node request), from the consent service and from the nodes of the member subsystems
    that send it events (``NODE_EVENTS_PATH``), and applies them through the inbox.

    The member senders of a subsystem are those its inbox has heard from, and those ``sources``
    names (e.g. the registries it subscribed to, before their first event). Runs every
    ``interval_s`` and whenever ``kick()`` is called (a gap was seen)."""

    def __init__(
        self,
        inbox: Inbox,
        signers: Mapping[ClientId, MemberSigner],
        *,
        interval_s: float,
        timeout_s: float,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        sources: Callable[[str], Sequence[str]] | None = None,
    ) -> None:
        self._inbox = inbox
        self._signers = dict(signers)
        self._interval_s = interval_s
        self._timeout_s = timeout_s
        self._clock = clock
        self._sources = sources
        self._kick: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def kick(self) -> None:
        loop, kick = self._loop, self._kick
        if loop is not None and kick is not None and not loop.is_closed():
            loop.call_soon_threadsafe(kick.set)

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._kick = asyncio.Event()
        async with httpx.AsyncClient(timeout=self._timeout_s, follow_redirects=False) as http:
            while True:
                self._kick.clear()
                try:
                    await self.pull_all(http)
                except (httpx.HTTPError, OnceOnlyError) as exc:  # the next round retries
                    _log.warning("event catch-up round failed: %s", type(exc).__name__)
                except Exception:  # a database outage: the next round retries
                    _log.warning("event catch-up round failed", exc_info=True)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._kick.wait(), self._interval_s)

    async def pull_all(self, http: httpx.AsyncClient) -> int:
        """One catch-up round over every hosted subsystem; returns the events applied."""
        registry = self._inbox.registry
        if registry is None:
            return 0
        applied = 0
        consent = registry.document.consent_service
        for client, signer in self._signers.items():
            if consent is not None:
                base = consent.url.rstrip("/")
                stream = stream_name(CONSENT_SERVICE_SENDER, str(client))
                applied += await self._pull(http, base, CONSENT_EVENTS_PATH, "", stream, signer)
            for sender in await finishing_thread(self._member_senders, str(client)):
                applied += await self._pull_member(http, registry, sender, client, signer)
        return applied

    def _member_senders(self, client: str) -> list[str]:
        found = set(self._inbox.senders(client))
        if self._sources is not None:
            found |= set(self._sources(client))
        return sorted(found)

    async def _pull_member(
        self,
        http: httpx.AsyncClient,
        registry: VerifiedRegistry,
        sender: str,
        client: ClientId,
        signer: MemberSigner,
    ) -> int:
        try:
            base = registry.node_address(ClientId.parse(sender).member).rstrip("/")
        except OnceOnlyError:  # no longer a member with a node: nothing to pull from
            return 0
        stream = stream_name(sender, str(client))
        query = "sender=" + quote(sender, safe="")
        return await self._pull(http, base, NODE_EVENTS_PATH, query, stream, signer)

    async def _pull(
        self,
        http: httpx.AsyncClient,
        base: str,
        path: str,
        query: str,
        stream: str,
        signer: MemberSigner,
    ) -> int:
        client = ClientId.parse(stream.split(" > ", 1)[1])
        applied = 0
        while True:
            after = await finishing_thread(self._inbox.cursor, stream)
            # The signature covers the path (as every node request's); the cursor is a hint, and
            # whatever stream comes back, its events pass E1–E7 like any other.
            headers = sign_node_request(signer, client, "GET", path, b"", now=self._clock())
            q = f"{query}&after={after}" if query else f"after={after}"
            response = await http.get(f"{base}{path}?{q}", headers=headers)
            if response.status_code >= 500:
                raise UnavailableError(f"{base} answered {response.status_code}")
            if response.status_code != 200 or len(response.content) > MAX_PULL_BYTES:
                _log.warning("event catch-up of %s refused: HTTP %s", stream, response.status_code)
                return applied
            events = _events_of(response.content)
            if not events:
                return applied
            before = after
            for start in range(0, len(events), MAX_BATCH_EVENTS):
                await finishing_thread(
                    self._inbox.receive_batch, events[start : start + MAX_BATCH_EVENTS]
                )
            now_at = await finishing_thread(self._inbox.cursor, stream)
            applied += now_at - before
            if now_at == before:
                return applied


def _events_of(content: bytes) -> list[bytes]:
    try:
        body: Any = json.loads(content)
        events = body["events"]
        if not isinstance(events, list):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        return []
    return [json.dumps(e, ensure_ascii=False, separators=(",", ":")).encode() for e in events]
