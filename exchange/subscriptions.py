"""Change subscriptions (docs/protocol.md §9): a registry's change events, told to subscribers.

A registry declares change events (``EventDecl``, docs/adapters.md): each is a service of its own
in the central registry, ``event_of`` the change service whose successful calls it publishes.

**Publisher** (the node hosting the registry):

* A subscription is an ordinary exchange with the event service — ``POST …/address-changed/v1``
  (``/subscriptions`` optional) — so steps 1–12 of §3 apply unchanged: an access right, the
  subject token (9b), a consent if one is presented, and the same Rego policy as a read (11); a
  request without a basis is refused like a read without one, and audited. What step 13 would
  hand an adapter is instead kept here: the subscription, for the subject as *this* agency knows
  it, the fields the policy allowed, the basis and the consent. ``GET``/``DELETE
  …/subscriptions/{id}`` show and end it (the subscriber's own only; another's is a 404).
* ``publish_many`` runs when a change service answered 2xx, whatever channel called it (the one-stop
  desk or a department's direct call): in **one** transaction of the node's database it records
  the change under its key (the request's idempotency key, else its message id: a retried call
  is published once) and writes one signed event per active subscription of that subject into
  the node's outbox (``exchange.event_outbox``), which delivers at least once, in order.
* An event names the subscription, never a person: the publisher's code for the subject stays at
  the publisher, and only the fields the subscription was allowed travel (minimised).
* A subscription on consent follows the consent: the status push (``consent.status/v1``) pauses
  it, resumes it, or ends it (revoked, expired, spent — a one-time consent covers one disclosure,
  a subscription needs a standing one). At publication the access right is checked again: a
  withdrawn right ends the subscription.

**Subscriber** (the node hosting the subscribing subsystem): the consumer side remembers, for each
subscription its departmental system made, that system's own code for the person
(``link``); a received change event (E1–E7 of §8) is stored, in the inbox's transaction, in the
change feed with that code, for the system to read (``GET /changes/v1``). So the subscriber gets
its own agency's code, and the publisher never learns it.

Trust assumptions: the subscription's subject is the publisher's own code, opened from a sealed
token (never the subscriber's); the event's ``subscription_id`` is trusted at the subscriber only
after the event's signature verified (E4–E5) and only for a link its own subsystem made.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, select, update
from sqlalchemy import event as sa_event
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from exchange.central_config import ServiceEntry, VerifiedRegistry
from exchange.db import as_utc, sqlite_writer_turn
from exchange.errors import ClientError, MethodNotAllowedError, NotFoundError, UnavailableError
from exchange.event_outbox import Outbox
from exchange.events import CONSENT_SERVICE_SENDER, EventEnvelope
from exchange.identifiers import ClientId, ServiceId
from exchange.ports import AuditEvent, AuditSink
from exchange.signing import Signer
from exchange.store import (
    ChangeFeedRow,
    ConsentStateRow,
    NodeEventOutboxRow,
    NodeEventStreamRow,
    PublishedChangeRow,
    SubscriberLinkRow,
    SubscriptionRow,
)

__all__ = [
    "CHANGE_EVENT",
    "MAX_FEED_PAGE",
    "Change",
    "Published",
    "SubscriptionRequest",
    "Subscriptions",
    "change_key",
]

CHANGE_EVENT = "registry.change/v1"
MAX_FEED_PAGE = 500
MAX_ID_CHARS = 36
"""A subscription id: a UUID in its canonical form."""
_ENDED_BY_CONSENT = {"revoked", "expired", "spent"}


def change_key(client: str, idempotency_key: str | None, message_id: str) -> str:
    """What makes two calls one change: the caller and its idempotency key, else the message
    id (a caller's retry under its key is the same change; another caller's key is not)."""
    if idempotency_key:
        return "k:" + hashlib.sha256(f"{client}|{idempotency_key}".encode()).hexdigest()
    return f"m:{client}|{message_id}"


@dataclass(frozen=True, slots=True)
class SubscriptionRequest:
    """An allowed request to an event service (steps 1–12 passed)."""

    service: ServiceId
    client: ClientId
    method: str
    path: str
    subject: str | None
    purpose: str
    fields: frozenset[str]
    basis: str | None
    consent_id: str | None


@dataclass(frozen=True, slots=True)
class Change:
    """A change a change service made (answered 2xx), to publish."""

    change: ServiceId
    events: Sequence[ServiceEntry]
    key: str
    subject: str | None
    body: bytes
    registry: VerifiedRegistry
    now: datetime


@dataclass(frozen=True, slots=True)
class Published:
    """One change event written to the outbox (for the audit record of the disclosure)."""

    subscription_id: str
    subscriber: str
    service: str
    subject: str
    purpose: str
    basis: str | None
    fields: tuple[str, ...]
    event_id: str


def _view(row: SubscriptionRow) -> dict[str, Any]:
    return {
        "subscription_id": row.id,
        "service": row.service,
        "status": row.status,
        "purpose": row.purpose,
        "fields": sorted(row.fields),
        "basis": row.basis,
        "created_at": as_utc(row.created_at).isoformat(),
        "ended_at": as_utc(row.ended_at).isoformat() if row.ended_at else None,
    }


class Subscriptions:
    """Both sides of change subscriptions over the node's database."""

    def __init__(
        self,
        engine: Engine,
        node: str,
        signers: Mapping[ClientId, Signer],
        *,
        audit: AuditSink | None = None,
    ) -> None:
        """``audit``: where a change event kept out of the feed is recorded (after its commit)."""
        self.engine = engine
        self.node = node
        self._audit = audit
        self._registry: VerifiedRegistry | None = None
        hosted = [str(c) for c in signers]
        self.outboxes = {
            c: Outbox(
                engine,
                NodeEventOutboxRow,
                NodeEventStreamRow,
                sender=str(c),
                signer=s,
                senders=hosted,
            )
            for c, s in signers.items()
        }

    # -- publisher: the event service's own routes -----------------------------------------------

    def serve(self, req: SubscriptionRequest, now: datetime) -> tuple[int, dict[str, Any]]:
        """Step 13 for an event service: subscribe, show or end (status, JSON answer)."""
        path = req.path.partition("?")[0].rstrip("/")
        if path in ("", "/subscriptions"):
            if req.method != "POST":
                raise MethodNotAllowedError("subscribe with POST", allow=("POST",))
            return self._subscribe(req, now)
        prefix, _, sub_id = path.rpartition("/")
        if prefix != "/subscriptions" or not sub_id:
            raise NotFoundError("no such resource of an event service")
        if req.method == "GET":
            return 200, _view(self._own(req, sub_id))
        if req.method == "DELETE":
            return 200, self._end(req, sub_id, now)
        raise MethodNotAllowedError("a subscription is read or ended", allow=("GET", "DELETE"))

    def _subscribe(self, req: SubscriptionRequest, now: datetime) -> tuple[int, dict[str, Any]]:
        if req.subject is None:
            raise ClientError(
                "a subscription is about one person: send X-OnceOnly-Subject",
                code="Client.SubjectRequired",
            )
        row = SubscriptionRow(
            id=str(uuid.uuid4()),
            node=self.node,
            service=str(req.service),
            subscriber=str(req.client),
            subject=req.subject,
            purpose=req.purpose,
            basis=req.basis,
            consent_id=req.consent_id,
            fields=sorted(req.fields),
            status="active",
            created_at=now,
        )
        with sqlite_writer_turn(self.engine), Session(self.engine) as s, s.begin():
            same = s.scalars(
                select(SubscriptionRow).where(
                    SubscriptionRow.node == self.node,
                    SubscriptionRow.service == row.service,
                    SubscriptionRow.subscriber == row.subscriber,
                    SubscriptionRow.subject == row.subject,
                    SubscriptionRow.status != "ended",
                )
            ).first()
            created = same is None
            if same is None:
                target = row
                s.add(row)
            else:  # subscribing twice: the one there is (its terms replaced)
                target = same
                same.purpose, same.basis, same.consent_id = row.purpose, row.basis, row.consent_id
                same.fields, same.status = row.fields, "active"
            if row.consent_id is not None:
                self._follow_consent(s, target, row.consent_id, now)
            s.flush()
            return (201 if created else 200), _view(target)

    def _follow_consent(
        self, s: Session, sub: SubscriptionRow, consent_id: str, now: datetime
    ) -> None:
        """A subscription starts as its consent is: a status pushed before this transaction
        (the consent spent or revoked right after step 12 used it) is not missed. The consent's
        state row is locked here and by the push's handler, so one of them sees the other."""
        status = self._lock_state(s, consent_id)
        if status in _ENDED_BY_CONSENT:
            sub.status, sub.ended_at, sub.reason = "ended", now, f"the consent was {status}"
        elif status == "paused":
            sub.status = "paused"

    def _lock_state(self, s: Session, consent_id: str) -> str | None:
        key = {"node": self.node, "consent_id": consent_id}
        if self.engine.dialect.name == "postgresql":
            s.execute(
                pg_insert(ConsentStateRow).values(**key, status=None).on_conflict_do_nothing()
            )
            return s.scalar(
                select(ConsentStateRow.status)
                .where(ConsentStateRow.node == self.node, ConsentStateRow.consent_id == consent_id)
                .with_for_update()
            )
        found = s.get(ConsentStateRow, (self.node, consent_id))  # SQLite: writers take turns
        return found.status if found is not None else None

    def _own(self, req: SubscriptionRequest, sub_id: str) -> SubscriptionRow:
        if len(sub_id) != MAX_ID_CHARS:  # an id is a UUID: a longer one is none (never a prefix)
            raise NotFoundError("no such subscription")
        with Session(self.engine) as s:
            row = s.get(SubscriptionRow, sub_id)
            if row is None or row.node != self.node or row.subscriber != str(req.client):
                raise NotFoundError("no such subscription")  # another's looks like none
            s.expunge(row)
            return row

    def _end(self, req: SubscriptionRequest, sub_id: str, now: datetime) -> dict[str, Any]:
        self._own(req, sub_id)
        with sqlite_writer_turn(self.engine), Session(self.engine) as s, s.begin():
            row = s.get(SubscriptionRow, sub_id)
            assert row is not None  # checked above; subscriptions are never deleted
            if row.status != "ended":
                row.status, row.ended_at, row.reason = "ended", now, "ended by the subscriber"
            return _view(row)

    # -- publisher: a change ---------------------------------------------------------------------

    def publish_many(
        self, changes: Sequence[Change]
    ) -> list[tuple[list[Published], tuple[str, ...]]]:
        """Record each change once and write its events, all in one transaction (a group
        commit: concurrent changes cost one commit, and hold the streams' heads once). For each
        change: the events written and the subscribers told — for a retry of a change published
        already, no events and the subscribers that first publication told."""
        with sqlite_writer_turn(self.engine), Session(self.engine) as s, s.begin():
            return [self._publish(s, change) for change in changes]

    def _publish(self, s: Session, c: Change) -> tuple[list[Published], tuple[str, ...]]:
        key = c.key[:200]
        mark = PublishedChangeRow(
            node=self.node,
            service=str(c.change),
            change_key=key,
            events=0,
            told=[],
            published_at=c.now,
        )
        try:
            with s.begin_nested():
                s.add(mark)
        except IntegrityError:  # this change was published already (a retry, same key)
            first = s.get(PublishedChangeRow, (self.node, str(c.change), key))
            return [], tuple(first.told) if first is not None else ()
        values = _json_object(c.body)
        targets = self._targets(s, c.events, c.subject) if c.subject is not None else []
        out = [
            published
            for sub in targets
            if (published := self._publish_one(s, sub, values, c.key, c.registry, c.now))
        ]
        mark.events = len(out)
        mark.told = sorted({p.subscriber for p in out})
        return out, tuple(mark.told)

    def _targets(
        self, s: Session, events: Sequence[ServiceEntry], subject: str
    ) -> list[SubscriptionRow]:
        return list(
            s.scalars(
                select(SubscriptionRow)
                .where(
                    SubscriptionRow.service.in_([e.id for e in events]),
                    SubscriptionRow.subject == subject,
                    SubscriptionRow.status == "active",
                    SubscriptionRow.node == self.node,
                )
                .order_by(SubscriptionRow.created_at, SubscriptionRow.id)
            )
        )

    def _publish_one(
        self,
        s: Session,
        sub: SubscriptionRow,
        values: Mapping[str, Any],
        key: str,
        registry: VerifiedRegistry,
        now: datetime,
    ) -> Published | None:
        service = ServiceId.parse(sub.service)
        subscriber = ClientId.parse(sub.subscriber)
        if registry.access_right(subscriber, service, now=now) is None:
            sub.status, sub.ended_at, sub.reason = "ended", now, "the access right was withdrawn"
            return None
        outbox = self.outboxes.get(service.provider)
        if outbox is None:
            return None  # the registry moved to another node: its subscriptions went with it
        data = {
            "subscription_id": sub.id,
            "service": sub.service,
            "change": {f: values[f] for f in sorted(sub.fields) if f in values},
            "change_id": hashlib.sha256(f"{sub.service}|{key}".encode()).hexdigest()[:32],
            "occurred_at": now.isoformat(),
        }
        event = outbox.append(s, recipient=sub.subscriber, type=CHANGE_EVENT, data=data, now=now)
        return Published(
            sub.id,
            sub.subscriber,
            sub.service,
            sub.subject,
            sub.purpose,
            sub.basis,
            tuple(sorted(data["change"])),
            event.event_id,
        )

    def on_consent_event(self, session: Session, event: EventEnvelope) -> None:
        """An inbox handler (``consent.status/v1``): the subscriptions on that consent follow it.
        Only the consent service speaks for a consent: the same type from a member subsystem is
        refused (it would let a subscriber resume what the citizen paused)."""
        if event.sender != CONSENT_SERVICE_SENDER:
            raise ClientError("a consent's status comes from the consent service only")
        consent_id, status = event.data.get("consent_id"), event.data.get("status")
        if not isinstance(consent_id, str) or not isinstance(status, str):
            return
        self._remember_state(session, consent_id[:64], status[:16])
        rows = SubscriptionRow
        mine = (rows.consent_id == consent_id, rows.node == self.node, rows.status != "ended")
        if status in _ENDED_BY_CONSENT:
            values: dict[str, Any] = {
                "status": "ended",
                "ended_at": event.created_at,
                "reason": f"the consent was {status}",
            }
            session.execute(update(rows).where(*mine).values(**values))
        elif status == "paused":
            session.execute(update(rows).where(*mine).values(status="paused"))
        elif status == "active":
            session.execute(
                update(rows).where(*mine, rows.status == "paused").values(status="active")
            )

    def _remember_state(self, session: Session, consent_id: str, status: str) -> None:
        """The consent's last pushed status (in stream order: the last applied is the latest)."""
        values = {"node": self.node, "consent_id": consent_id, "status": status}
        insert = pg_insert if self.engine.dialect.name == "postgresql" else sqlite_insert
        session.execute(
            insert(ConsentStateRow)
            .values(**values)
            .on_conflict_do_update(index_elements=["node", "consent_id"], set_={"status": status})
        )

    # -- subscriber ------------------------------------------------------------------------------

    def link(
        self,
        *,
        subscription_id: str,
        client: str,
        service: str,
        subject: str | None,
        now: datetime,
    ) -> None:
        """Remember the subscriber's own code for a subscription its system just made."""
        if not subscription_id or len(subscription_id) > MAX_ID_CHARS:
            return
        with sqlite_writer_turn(self.engine), Session(self.engine) as s, s.begin():
            if s.get(SubscriberLinkRow, subscription_id) is None:
                s.add(
                    SubscriberLinkRow(
                        subscription_id=subscription_id,
                        client=client,
                        service=service,
                        subject=subject,
                        created_at=now,
                    )
                )

    def publishers(self, client: str) -> list[str]:
        """The registries ``client`` subscribed to through this node (its catch-up sources)."""
        with Session(self.engine) as s:
            services = s.scalars(
                select(SubscriberLinkRow.service).where(SubscriberLinkRow.client == client)
            ).all()
        return sorted({str(ServiceId.parse(x).provider) for x in services})

    def on_registry(self, registry: VerifiedRegistry) -> None:
        self._registry = registry

    def on_change_event(self, session: Session, event: EventEnvelope) -> None:
        """An inbox handler (``registry.change/v1``), in the inbox's transaction: into the feed
        with the subscriber's own code — for a subscription its subsystem made here. A change
        event that is not one (no event service of the sender's) is refused; one for no
        subscription of the recipient's made here is applied (the stream goes on) but kept out
        of the feed, and recorded."""
        data = event.data
        sub_id, service, change = (
            data.get("subscription_id"),
            data.get("service"),
            data.get("change"),
        )
        if not isinstance(sub_id, str) or not isinstance(service, str):
            raise ClientError("a change event names its subscription and service")
        if not isinstance(change, dict) or len(sub_id) > MAX_ID_CHARS:
            raise ClientError(
                "a change event carries its change as an object, for one subscription"
            )
        sid = ServiceId.parse(service)
        if sid.provider != ClientId.parse(event.sender) or not self._is_event_service(sid):
            raise ClientError("a change event comes from the registry of its change event service")
        link = session.get(SubscriberLinkRow, sub_id)
        if link is None or link.client != event.recipient or link.service != service:
            self._dropped(session, event, sub_id)
            return
        session.add(
            ChangeFeedRow(
                client=event.recipient,
                event_id=event.event_id,
                subscription_id=sub_id,
                service=service,
                subject=link.subject,
                data=change,
                occurred_at=event.created_at,
                received_at=datetime.now(UTC),
            )
        )

    def _is_event_service(self, sid: ServiceId) -> bool:
        registry = self._registry
        if registry is None:
            raise UnavailableError("no verified registry yet")
        entry = registry.find_service(sid.provider, sid.code, sid.version)
        return entry is not None and entry.event_of is not None

    def _dropped(self, session: Session, event: EventEnvelope, sub_id: str) -> None:
        audit = self._audit
        if audit is None:
            return
        record = AuditEvent(
            time=datetime.now(UTC),
            node=self.node,
            kind="refusal",
            decision="deny",
            client=event.recipient,
            reason="Client.UnknownSubscription: a change event for no subscription made here",
            message_id=event.event_id,
            extra={"stage": "event", "stream": event.stream, "subscription_id": sub_id},
        )
        sa_event.listen(session, "after_commit", lambda _s: audit.record(record), once=True)

    def feed(self, client: str, *, after: int, limit: int) -> list[dict[str, Any]]:
        """The change events received for ``client`` after the cursor ``after``, oldest first."""
        rows = ChangeFeedRow
        with Session(self.engine) as s:
            found = s.scalars(
                select(rows)
                .where(rows.client == client, rows.id > after)
                .order_by(rows.id)
                .limit(max(1, min(limit, MAX_FEED_PAGE)))
            ).all()
            return [
                {
                    "cursor": r.id,
                    "event_id": r.event_id,
                    "subscription_id": r.subscription_id,
                    "service": r.service,
                    "subject": r.subject,
                    "change": r.data,
                    "occurred_at": as_utc(r.occurred_at).isoformat(),
                    "received_at": as_utc(r.received_at).isoformat(),
                }
                for r in found
            ]


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body) if body else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
