"""Refusals of change subscriptions (docs/protocol.md §9), on the node's own database:

* a ``consent.status/v1`` event from a member subsystem moves no subscription (only the consent
  service speaks for a consent) — else a subscriber resumes what the citizen paused;
* a subscription id with characters after it is no subscription (never a prefix match);
* a status push that overtakes the subscription's creation still ends (or pauses) it;
* a change event for no subscription made here stays out of the feed and is recorded; one that
  names no change event service of its sender is refused.

The same attacks between real processes: tests/integration/test_change_subscriptions_attacks.py.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from exchange.central_config import RegistryDocument, ServiceEntry, VerifiedRegistry
from exchange.db import make_engine, upgrade
from exchange.errors import ClientError, NotFoundError
from exchange.events import CONSENT_SERVICE_SENDER, EventEnvelope, new_event
from exchange.identifiers import ClientId, ServiceId
from exchange.ports import AuditEvent
from exchange.store import SubscriptionRow
from exchange.subscriptions import SubscriptionRequest, Subscriptions
from onceonly.components import COMPONENT_BRANCHES

NODE = "JP/GOV/132098"
EVENT = "JP/GOV/132098/resident-registry/address-changed/v1"
GAS = "JP/COM/9000000000002/gas"
NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    upgrade(engine, COMPONENT_BRANCHES["node"])
    yield engine
    engine.dispose()


def _paused(engine: Engine, consent_id: str) -> str:
    sub_id = str(uuid.uuid4())
    with Session(engine) as s, s.begin():
        s.add(
            SubscriptionRow(
                id=sub_id,
                node=NODE,
                service=EVENT,
                subscriber=GAS,
                subject="R-1",
                purpose="address-change",
                basis=f"consent:{consent_id}",
                consent_id=consent_id,
                fields=["address"],
                status="paused",
                created_at=NOW,
            )
        )
    return sub_id


def _status(engine: Engine, sub_id: str) -> str | None:
    with Session(engine) as s:
        return s.scalar(select(SubscriptionRow.status).where(SubscriptionRow.id == sub_id))


def _resume(engine: Engine, sender: str, consent_id: str) -> None:
    event = new_event(
        sender=sender,
        recipient="JP/GOV/132098/resident-registry",
        seq=1,
        type="consent.status/v1",
        data={"consent_id": consent_id, "status": "active", "action": "resumed"},
        now=NOW,
    )
    subs = Subscriptions(engine, NODE, {})
    with Session(engine) as s, s.begin():
        subs.on_consent_event(s, event)


def test_a_members_consent_status_event_is_refused_and_moves_nothing(engine: Engine) -> None:
    consent_id = str(uuid.uuid4())
    sub_id = _paused(engine, consent_id)
    with pytest.raises(ClientError, match="consent service only"):
        _resume(engine, GAS, consent_id)
    assert _status(engine, sub_id) == "paused"
    _resume(engine, CONSENT_SERVICE_SENDER, consent_id)  # the consent service's own: applied
    assert _status(engine, sub_id) == "active"


def _ask(method: str, path: str) -> SubscriptionRequest:
    return SubscriptionRequest(
        service=ServiceId.parse(EVENT),
        client=ClientId.parse(GAS),
        method=method,
        path=path,
        subject="R-1",
        purpose="address-change",
        fields=frozenset({"address"}),
        basis="consent:c",
        consent_id=None,
    )


@pytest.mark.parametrize("tail", ["junk", "/../x", "0" * 100])
def test_an_id_with_characters_after_it_is_no_subscription(engine: Engine, tail: str) -> None:
    sub_id = _paused(engine, str(uuid.uuid4()))
    subs = Subscriptions(engine, NODE, {})
    status, doc = subs.serve(_ask("GET", f"/subscriptions/{sub_id}"), NOW)
    assert (status, doc["subscription_id"]) == (200, sub_id)
    for method in ("GET", "DELETE"):
        with pytest.raises(NotFoundError):
            subs.serve(_ask(method, f"/subscriptions/{sub_id}{tail}"), NOW)
    assert _status(engine, sub_id) == "paused"  # not ended by a DELETE of a longer id


def _subscribe(subs: Subscriptions, consent_id: str) -> str:
    ask = SubscriptionRequest(
        service=ServiceId.parse(EVENT),
        client=ClientId.parse(GAS),
        method="POST",
        path="",
        subject="R-2",
        purpose="address-change",
        fields=frozenset({"address"}),
        basis=f"consent:{consent_id}",
        consent_id=consent_id,
    )
    status, doc = subs.serve(ask, NOW)
    assert status == 201
    return str(doc["subscription_id"])


@pytest.mark.parametrize("status", ["spent", "revoked"])
def test_a_status_push_that_overtakes_the_subscription_still_ends_it(
    engine: Engine, status: str
) -> None:
    consent_id = str(uuid.uuid4())
    subs = Subscriptions(engine, NODE, {})
    event = new_event(
        sender=CONSENT_SERVICE_SENDER,
        recipient="JP/GOV/132098/resident-registry",
        seq=1,
        type="consent.status/v1",
        data={"consent_id": consent_id, "status": status, "action": status},
        now=NOW,
    )
    with Session(engine) as s, s.begin():  # the push lands first ...
        subs.on_consent_event(s, event)
    sub_id = _subscribe(subs, consent_id)  # ... then step 13 stores the subscription
    assert _status(engine, sub_id) == "ended"


class _Audit:
    def __init__(self) -> None:
        self.events: list[AuditEvent] = []

    def record(self, event: AuditEvent) -> None:
        self.events.append(event)


def _registry_with_event() -> VerifiedRegistry:
    return VerifiedRegistry(
        RegistryDocument(
            instance="JP",
            serial=1,
            issued_at=NOW,
            expires_at=NOW + timedelta(days=1),
            ca_certificate="(not used here)",
            services=(
                ServiceEntry(
                    id=EVENT,
                    fields=("address",),
                    event_of="JP/GOV/132098/resident-registry/address-change/v1",
                ),
                ServiceEntry(id="JP/GOV/132098/resident-registry/address/v1", fields=("address",)),
            ),
        )
    )


def _change_event(service: str, sub_id: str) -> EventEnvelope:
    return new_event(
        sender="JP/GOV/132098/resident-registry",
        recipient=GAS,
        seq=1,
        type="registry.change/v1",
        data={"subscription_id": sub_id, "service": service, "change": {"address": "x"}},
        now=NOW,
    )


def test_a_change_event_for_no_subscription_made_here_is_kept_out_of_the_feed_and_recorded(
    engine: Engine,
) -> None:
    audit = _Audit()
    subs = Subscriptions(engine, NODE, {}, audit=audit)
    subs.on_registry(_registry_with_event())
    with Session(engine) as s, s.begin():  # applied (the stream goes on), not in the feed
        subs.on_change_event(s, _change_event(EVENT, str(uuid.uuid4())))
    assert subs.feed(GAS, after=0, limit=10) == []
    (refusal,) = audit.events
    assert refusal.reason is not None
    assert refusal.reason.startswith("Client.UnknownSubscription")
    # Linked: in the feed, under the subscriber's own code.
    linked = str(uuid.uuid4())
    subs.link(subscription_id=linked, client=GAS, service=EVENT, subject="G-1", now=NOW)
    with Session(engine) as s, s.begin():
        subs.on_change_event(s, _change_event(EVENT, linked))
    (told,) = subs.feed(GAS, after=0, limit=10)
    assert told["subject"] == "G-1"
    # Not a change event service of the sender's: refused outright.
    with pytest.raises(ClientError), Session(engine) as s, s.begin():
        subs.on_change_event(s, _change_event("JP/GOV/132098/resident-registry/address/v1", linked))
