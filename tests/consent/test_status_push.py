"""Consent status push (issue 17 items 1–2): the outbox written with each change, the node's
inbox applying each event once and in order, forged / replayed / mis-addressed events refused,
delivery with retries and backoff, catch-up by pulling, and the provider's cache of consent
checks dropped by the push and bounded by its TTL when a push is lost.

Real parts: the consent service over its migrated database, the node's inbox over a migrated
exchange database, signed events, the real routes over an in-memory ASGI hop (style rule 19)."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from sqlalchemy import Engine, select

from consent.artefact import ConsentIssuerKey
from consent.cache import CachingConsentGate
from consent.events import CONSENT_STATUS_EVENT, ConsentEvents
from consent.lifecycle import ConsentService
from consent.model import Consent
from consent.store import ConsentEventOutboxRow
from exchange.central_config import ConsentServiceEntry, RegistryDocument, VerifiedRegistry
from exchange.db import make_engine, upgrade
from exchange.errors import VerificationError
from exchange.event_inbox import CONSENT_EVENTS_PATH, EventGapError, EventPuller, Inbox
from exchange.event_outbox import DeliveryWorker, backoff_s
from exchange.events import (
    CONSENT_SERVICE_SENDER,
    MisaddressedEventError,
    new_event,
    sign_event,
)
from exchange.identifiers import ClientId
from exchange.node_requests import VerifiedNodeRequest
from exchange.signing import EventSigner, generate_private_key
from exchange.store import EventInboxRow
from exchange.web.events import INBOX_PATH, build_inbox_router, build_pull_router
from exchange.web.problems import install_problem_handlers
from tests.consent.consent_factories import ADDRESS, GAS, POWER, T0, ListAudit, query, request_input

PROVIDER = ADDRESS.provider


@pytest.fixture
def pushing(engine: Engine, issuer_key: ConsentIssuerKey, audit: ListAudit) -> ConsentService:
    return ConsentService(
        engine,
        issuer_key=issuer_key,
        audit=audit,
        clock=lambda: T0,
        events=ConsentEvents(engine, issuer_key),
    )


def _registry(key: ConsentIssuerKey) -> VerifiedRegistry:
    return VerifiedRegistry(
        RegistryDocument(
            instance="JP",
            serial=1,
            issued_at=T0,
            expires_at=T0 + timedelta(days=1),
            ca_certificate="(not used by consent events)",
            consent_service=ConsentServiceEntry(
                url="http://central", issuer_public_key=key.public_key_pem()
            ),
        )
    )


@pytest.fixture
def node_db(make_db_url: Any) -> Iterator[Engine]:
    eng = make_engine(make_db_url())
    upgrade(eng, ("exchange",))
    yield eng
    eng.dispose()


def _inbox(
    node_db: Engine, key: ConsentIssuerKey, hosted: tuple[ClientId, ...] = (PROVIDER,)
) -> tuple[Inbox, ListAudit]:
    audit = ListAudit()
    inbox = Inbox(
        node_db,
        hosted=frozenset(hosted),
        audit=audit,
        node=str(hosted[0].member),
        max_skew_s=60,
        clock=lambda: T0 + timedelta(minutes=1),
    )
    inbox.on_registry(_registry(key))
    return inbox, audit


def _standing(service: ConsentService) -> Consent:
    terms = request_input(mode="standing")
    req = service.create_request(ClientId.parse(terms.client), terms, now=T0)
    return service.approve_request(terms.subject, req.id, now=T0)


def _outbox(engine: Engine, recipient: ClientId) -> list[ConsentEventOutboxRow]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(ConsentEventOutboxRow)
            .where(ConsentEventOutboxRow.recipient == str(recipient))
            .order_by(ConsentEventOutboxRow.seq)
        ).all()
    return list(rows)  # type: ignore[arg-type]


def test_every_status_change_is_an_event_to_the_consumer_and_the_provider(
    pushing: ConsentService, engine: Engine
) -> None:
    consent = _standing(pushing)
    pushing.pause(consent.subject, consent.id, now=T0)
    pushing.resume(consent.subject, consent.id, now=T0)
    pushing.revoke(consent.subject, consent.id, now=T0)
    for recipient in (GAS, PROVIDER):
        rows = _outbox(engine, recipient)
        assert [r.seq for r in rows] == [1, 2, 3, 4]
        events = [json.loads(r.wire)["event"] for r in rows]
        assert [e["data"]["action"] for e in events] == ["granted", "paused", "resumed", "revoked"]
        assert [e["data"]["status"] for e in events] == ["active", "paused", "active", "revoked"]
        assert {e["type"] for e in events} == {CONSENT_STATUS_EVENT}
        assert all(e["data"]["consent_id"] == consent.id for e in events)
        # minimised: the citizen, the purpose and the fields never travel
        assert all(
            set(e["data"]) == {"consent_id", "status", "action", "version", "at"} for e in events
        )
    assert _outbox(engine, POWER) == []


def test_a_refused_change_writes_no_event(pushing: ConsentService, engine: Engine) -> None:
    consent = _standing(pushing)
    with pytest.raises(Exception, match="resume"):
        pushing.resume(consent.subject, consent.id, now=T0)  # active: nothing to resume
    assert [r.seq for r in _outbox(engine, GAS)] == [1]


def test_the_inbox_applies_each_event_once_and_in_order(
    pushing: ConsentService, engine: Engine, issuer_key: ConsentIssuerKey, node_db: Engine
) -> None:
    consent = _standing(pushing)
    pushing.pause(consent.subject, consent.id, now=T0)
    pushing.resume(consent.subject, consent.id, now=T0)
    wires = [r.wire.encode() for r in _outbox(engine, PROVIDER)]
    inbox, audit = _inbox(node_db, issuer_key)
    assert inbox.receive(wires[0]).status == "applied"
    assert inbox.receive(wires[0]).status == "duplicate"  # a retry or a replay: not applied again
    with pytest.raises(EventGapError) as gap:
        inbox.receive(wires[2])  # 3 before 2: refused, the node catches up
    assert gap.value.expected == 2
    assert inbox.receive(wires[1]).status == "applied"
    assert inbox.receive(wires[2]).status == "applied"
    with node_db.connect() as conn:
        assert conn.scalars(select(EventInboxRow.seq).order_by(EventInboxRow.seq)).all() == [
            1,
            2,
            3,
        ]
    received = [(e.kind, e.decision, e.reason) for e in audit.events]
    assert received == [
        ("event.received", "allow", "applied"),
        ("event.received", "info", "duplicate"),
        ("refusal", "deny", "Client.EventOutOfOrder: event 3 of this stream arrived before 2"),
        ("event.received", "allow", "applied"),
        ("event.received", "allow", "applied"),
    ]


def _tampered(wire: bytes, **changes: Any) -> bytes:
    doc = json.loads(wire)
    doc["event"].update(changes)
    return json.dumps(doc).encode()


def test_forged_replayed_and_misaddressed_events_are_refused_and_audited(
    pushing: ConsentService, engine: Engine, issuer_key: ConsentIssuerKey, node_db: Engine
) -> None:
    consent = _standing(pushing)
    wire = _outbox(engine, PROVIDER)[0].wire.encode()
    inbox, audit = _inbox(node_db, issuer_key)
    # (E5) a changed field: the signature no longer holds
    data = json.loads(wire)["event"]["data"] | {"status": "active", "consent_id": consent.id}
    with pytest.raises(VerificationError):
        inbox.receive(_tampered(wire, data=data | {"action": "resumed"}))
    # (E4) signed by a key the registry does not name for the consent service
    forged = new_event(
        sender=CONSENT_SERVICE_SENDER,
        recipient=str(PROVIDER),
        seq=1,
        type=CONSENT_STATUS_EVENT,
        data=data,
        now=T0,
    )
    with pytest.raises(VerificationError):
        inbox.receive(sign_event(forged, EventSigner(generate_private_key())))
    # (E3) the consent service's key, but another stream than its own
    other_stream = forged.model_copy(update={"stream": f"JP/GOV/132098/tax > {PROVIDER}"})
    with pytest.raises(VerificationError):
        inbox.receive(sign_event(other_stream, issuer_key.event_signer()))
    # (E2) addressed to a subsystem this node does not host
    other, other_audit = _inbox(node_db, issuer_key, hosted=(POWER,))
    with pytest.raises(MisaddressedEventError):
        other.receive(wire)
    # (E7) the same sequence number with another event (a replay of order)
    assert inbox.receive(wire).status == "applied"
    reused = new_event(
        sender=CONSENT_SERVICE_SENDER,
        recipient=str(PROVIDER),
        seq=1,
        type=CONSENT_STATUS_EVENT,
        data=data,
        now=T0,
    )
    with pytest.raises(Exception, match="another event was applied"):
        inbox.receive(sign_event(reused, issuer_key.event_signer()))
    refusals = [e for e in audit.events + other_audit.events if e.kind == "refusal"]
    assert len(refusals) == 5
    assert all(e.decision == "deny" and e.extra["stage"] == "event" for e in refusals)
    with node_db.connect() as conn:
        assert conn.scalars(select(EventInboxRow.event_id)).all() == [
            json.loads(wire)["event"]["event_id"]
        ]


def test_backoff_doubles_and_is_capped() -> None:
    assert [backoff_s(n, base_s=0.5, cap_s=5) for n in (1, 2, 3, 4, 5, 9)] == [
        0.5,
        1.0,
        2.0,
        4.0,
        5.0,
        5.0,
    ]


def test_delivery_retries_with_backoff_then_arrives_once(
    pushing: ConsentService, engine: Engine, issuer_key: ConsentIssuerKey, node_db: Engine
) -> None:
    consent = _standing(pushing)
    pushing.revoke(consent.subject, consent.id, now=T0)
    inbox, node_audit = _inbox(node_db, issuer_key)
    app = FastAPI()
    app.include_router(build_inbox_router(inbox))
    clock = [T0 + timedelta(minutes=1)]
    down = {True}
    sender_audit = ListAudit()

    def address_of(recipient: str) -> str:
        if recipient != str(PROVIDER) or down:
            raise ConnectionError("node unreachable")
        return "http://machida" + INBOX_PATH

    outbox = pushing.events.outbox  # type: ignore[union-attr]
    worker = DeliveryWorker(
        outbox,
        address_of,
        audit=sender_audit,
        node="consent-service",
        base_backoff_s=2.0,
        clock=lambda: clock[0],
        rng=random.Random(7),
    )

    async def rounds() -> list[int]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as http:
            first = await worker.run_once(http)  # node down: both streams fail
            again = await worker.run_once(http)  # nothing due before the backoff
            down.clear()
            clock[0] += timedelta(seconds=2)  # past the first backoff (1–2 s with jitter)
            delivered = [await worker.run_once(http) for _ in range(3)]
            return [first, again, *delivered]

    # the third round delivers the provider's two events in one request
    assert asyncio.run(rounds()) == [0, 0, 2, 0, 0]
    failed = [e for e in sender_audit.events if e.decision == "error"]
    # 2 streams in the first round, GAS again in the third, then GAS waits its longer backoff
    assert [e.extra["attempt"] for e in failed] == ["1", "1", "2"]
    assert {e.kind for e in sender_audit.events} == {"event.delivered"}
    rows = {r.seq: r for r in _outbox(engine, PROVIDER)}
    assert all(r.delivered_at is not None for r in rows.values())
    delivered = [e for e in sender_audit.events if e.decision == "allow"]
    assert [(e.extra["seq"], e.extra["last_seq"]) for e in delivered] == [("1", "2")]
    assert rows[1].attempts == 1
    assert all(r.delivered_at is None for r in _outbox(engine, GAS))  # GAS: no address yet
    applied = [e for e in node_audit.events if e.kind == "event.received"]
    assert [(e.extra["seq"], e.reason) for e in applied] == [("1", "applied"), ("2", "applied")]


def test_a_node_that_missed_events_catches_up_by_pulling(
    pushing: ConsentService, engine: Engine, issuer_key: ConsentIssuerKey, node_db: Engine
) -> None:
    consent = _standing(pushing)
    pushing.pause(consent.subject, consent.id, now=T0)
    pushing.revoke(consent.subject, consent.id, now=T0)
    inbox, _ = _inbox(node_db, issuer_key)
    inbox.receive(_outbox(engine, PROVIDER)[0].wire.encode())  # only the first arrived
    pulled_as: list[str] = []

    async def authenticate(request: Request, body: bytes) -> VerifiedNodeRequest:
        client = ClientId.parse(request.headers["x-onceonly-node-client"])
        pulled_as.append(str(client))
        return VerifiedNodeRequest(client, "id", datetime.now(UTC))

    central = FastAPI()
    central.include_router(
        build_pull_router(
            pushing.events.outbox,  # type: ignore[union-attr]
            authenticate,
            path=CONSENT_EVENTS_PATH,
            audit=ListAudit(),
        )
    )
    from exchange.signing import MemberSigner

    puller = EventPuller(
        inbox,
        {PROVIDER: MemberSigner(generate_private_key())},
        interval_s=60,
        timeout_s=5,
    )

    async def pull() -> int:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=central)) as http:
            return await puller.pull_all(http)

    assert asyncio.run(pull()) == 2
    assert asyncio.run(pull()) == 0  # nothing new: nothing applied twice
    assert pulled_as[0] == str(PROVIDER)
    assert inbox.cursor(f"{CONSENT_SERVICE_SENDER} > {PROVIDER}") == 3


class _Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_the_push_drops_cached_checks_so_the_next_exchange_is_refused(
    pushing: ConsentService, engine: Engine, issuer_key: ConsentIssuerKey, node_db: Engine
) -> None:
    consent = _standing(pushing)
    clock = _Clock()
    cache = CachingConsentGate(pushing, ttl_s=30, monotonic=clock)
    inbox, _ = _inbox(node_db, issuer_key)
    inbox.subscribe(CONSENT_STATUS_EVENT, cache.on_event)
    q = query(consent)
    assert cache.check(q)
    assert cache.check(q)
    assert (cache.hits, cache.misses) == (1, 1)
    pushing.revoke(consent.subject, consent.id, now=T0)
    for row in _outbox(engine, PROVIDER):
        inbox.receive(row.wire.encode())
    assert cache.invalidations == 1
    refused = cache.check(query(consent))
    assert not refused
    assert "revoked" in " ".join(refused.reasons)


def test_a_lost_push_lets_no_revoked_consent_through_and_goes_stale_for_at_most_the_ttl(
    pushing: ConsentService,
) -> None:
    consent = _standing(pushing)
    clock = _Clock()
    cache = CachingConsentGate(pushing, ttl_s=30, monotonic=clock)
    q = query(consent)
    assert cache.check(q)
    pushing.revoke(consent.subject, consent.id, now=T0)  # its push never arrives
    clock.t += 29
    assert cache.check(q)  # the cached answer, 29 s old: within the stated bound …
    assert not cache.use(query(consent))  # … but the use that must follow asks the service
    assert not cache.check(q)  # and a refused use drops the entry at once
    # With no use at all, the entry still ends at the TTL:
    other = _standing(pushing)
    q2 = query(other)
    assert cache.check(q2)
    pushing.revoke(other.subject, other.id, now=T0)
    clock.t += 30
    assert not cache.check(q2)


def test_concurrent_changes_number_one_stream_without_gaps_or_repeats(
    pushing: ConsentService, engine: Engine
) -> None:
    """Eight consents of one consumer changed by eight threads at once: their events share the
    consumer's stream, and the head row's lock numbers them 1..N, each once."""
    import threading

    consents = [_standing(pushing) for _ in range(8)]
    errors: list[BaseException] = []

    def flip(consent: Consent) -> None:
        try:
            for _ in range(3):
                pushing.pause(consent.subject, consent.id, now=T0)
                pushing.resume(consent.subject, consent.id, now=T0)
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=flip, args=(c,)) for c in consents]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    seqs = [r.seq for r in _outbox(engine, GAS)]
    assert seqs == list(range(1, 8 + 8 * 6 + 1))


def test_a_delivery_of_several_events_is_applied_in_order_once(
    pushing: ConsentService, engine: Engine, issuer_key: ConsentIssuerKey, node_db: Engine
) -> None:
    consent = _standing(pushing)
    pushing.pause(consent.subject, consent.id, now=T0)
    pushing.resume(consent.subject, consent.id, now=T0)
    wires = [r.wire.encode() for r in _outbox(engine, PROVIDER)]
    inbox, audit = _inbox(node_db, issuer_key)
    app = FastAPI()
    install_problem_handlers(app)
    app.include_router(build_inbox_router(inbox))
    batch = b'{"events":[' + b",".join(wires) + b"]}"

    async def post(body: bytes) -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://node") as http:
            return await http.post(INBOX_PATH, content=body)

    first = asyncio.run(post(batch))
    assert first.status_code == 200, first.text
    assert first.json() | {"stream": ""} == {
        "stream": "",
        "seq": 3,
        "status": "applied",
        "cursor": 3,
    }
    again = asyncio.run(post(batch))
    assert again.json()["status"] == "duplicate"
    gap = asyncio.run(post(b'{"events":[' + wires[2] + b"]}"))
    assert gap.json()["status"] == "duplicate"  # already applied: not a gap
    bad = asyncio.run(post(b'{"events":[' + wires[0] + b"," + _tampered(wires[1], seq=9) + b"]}"))
    assert bad.status_code == 400  # one forged event refuses the whole delivery
    assert bad.headers["content-type"].startswith("application/problem+json")
    applied = [e.extra["seq"] for e in audit.events if e.reason == "applied"]
    assert applied == ["1", "2", "3"]


def test_delivered_events_are_pruned_after_the_retention_and_streams_go_on_numbering(
    pushing: ConsentService, engine: Engine
) -> None:
    consent = _standing(pushing)
    outbox = pushing.events.outbox if pushing.events else None
    assert outbox is not None
    head = outbox.pending(f"consent-service > {GAS}", limit=10)
    assert [i.seq for i in head] == [1]
    outbox.mark_delivered(head[0], T0)
    # Not yet past the retention: kept (a receiver restored from a backup may pull it).
    assert outbox.prune(T0) == 0
    assert outbox.since(str(GAS), 0) != []
    # Past it: the delivered events go; the undelivered (the provider's) stay.
    assert outbox.prune(T0 + timedelta(days=91)) == 1
    assert outbox.since(str(GAS), 0) == []
    assert [r.seq for r in _outbox(engine, PROVIDER)] == [1]
    pushing.revoke(consent.subject, consent.id, now=T0)
    assert [r.seq for r in _outbox(engine, GAS)] == [2]  # the stream goes on from where it was
