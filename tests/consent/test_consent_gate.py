"""The consent gate (``exchange.ports.ConsentGate``): check, use, spending, limits, refusals."""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine

from consent.artefact import ConsentIssuerKey
from consent.lifecycle import ConsentService
from consent.model import ConsentStatus, HistoryAction
from exchange.db import make_engine, upgrade
from exchange.identifiers import ServiceId
from exchange.ports import ConsentGate, ConsentQuery
from tests.consent.conftest import GrantFn
from tests.consent.consent_factories import (
    ADDRESS,
    ALICE,
    GAS,
    POWER,
    T0,
    TAX,
    ListAudit,
    query,
    request_input,
)

NOW = T0 + timedelta(minutes=5)


def test_the_service_implements_the_consent_gate_port(service: ConsentService) -> None:
    gate: ConsentGate = service
    assert callable(gate.check)
    assert callable(gate.use)


def test_a_covering_consent_is_allowed_for_the_requested_fields_only(
    service: ConsentService, grant: GrantFn
) -> None:
    consent = grant()
    decision = service.check(query(consent, fields=("address",)))
    assert decision
    assert decision.fields == frozenset({"address"})
    assert decision.consent_id == consent.id


def test_check_has_no_side_effect_and_does_not_spend_a_one_time_consent(
    service: ConsentService, grant: GrantFn, audit: ListAudit
) -> None:
    consent = grant()
    for _ in range(3):
        assert service.check(query(consent))
    assert service.uses(ALICE, consent.id, now=NOW) == []
    assert audit.kinds() == ["consent.granted"]


def test_a_one_time_consent_is_spent_by_its_first_use_and_refused_afterwards(
    service: ConsentService, grant: GrantFn, audit: ListAudit
) -> None:
    consent = grant()
    first = query(consent)
    assert service.use(first)
    second = service.use(query(consent))
    assert not second
    assert second.reasons == (f"consent {consent.id} is spent",)
    assert service.get_consent(ALICE, consent.id, now=NOW).status is ConsentStatus.SPENT
    uses = service.uses(ALICE, consent.id, now=NOW)
    assert [(u.message_id, u.fields, u.service) for u in uses] == [
        (first.message_id, ("address", "postal_code"), str(ADDRESS))
    ]
    actions = [h.action for h in service.history(ALICE, consent.id, now=NOW)]
    assert actions == [HistoryAction.GRANTED, HistoryAction.SPENT]
    assert audit.kinds() == ["consent.granted", "consent.used", "refusal"]
    assert audit.events[-1].reason == f"consent {consent.id} is spent"


def test_a_retry_under_the_same_idempotency_key_is_the_same_use_and_spends_nothing(
    service: ConsentService, grant: GrantFn, audit: ListAudit
) -> None:
    """A change whose answer was lost is retried with a new message id and the same key: the
    one-time consent it spent still covers it; another key, client or service does not."""
    consent = grant()
    first = query(consent, idempotency_key="move-2026-11-23")
    assert service.use(first)
    retry = query(consent, idempotency_key="move-2026-11-23")
    assert service.check(retry)
    assert service.use(retry)
    assert audit.events[-1].kind == "consent.used"
    assert audit.events[-1].extra["retry_of"] == first.message_id
    for other in (
        query(consent, idempotency_key="another-change"),
        query(consent),
        query(consent, idempotency_key="move-2026-11-23", client=POWER),
    ):
        assert not service.check(other)
        assert not service.use(other)
    uses = service.uses(ALICE, consent.id, now=NOW)
    assert [u.message_id for u in uses] == [first.message_id]  # counted once
    assert service.get_consent(ALICE, consent.id, now=NOW).status is ConsentStatus.SPENT


def test_a_retry_is_refused_once_the_consent_is_revoked(
    service: ConsentService, grant: GrantFn
) -> None:
    consent = grant(mode="standing")
    assert service.use(query(consent, idempotency_key="k-1"))
    service.revoke(ALICE, consent.id, now=NOW)
    retry = service.use(query(consent, idempotency_key="k-1", now=NOW))
    assert not retry
    assert retry.reasons == (f"consent {consent.id} is revoked",)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"now": T0 - timedelta(seconds=1)}, "is not valid before"),
        ({"now": T0 + timedelta(days=31)}, "is expired"),
        ({"purpose": "marketing"}, "is for purpose 'utility-address-change', not 'marketing'"),
        ({"client": POWER}, "was given to another client"),
        ({"service": TAX}, "does not cover service JP/GOV/132098/tax/income"),
        ({"fields": ("address", "income")}, "does not cover the fields income"),
        ({"subject": "citizen-bob"}, "another data subject"),
        ({"subject": None}, "another data subject"),
        ({"consent_id": "00000000-0000-4000-8000-000000000000"}, "unknown consent"),
    ],
)
def test_an_exchange_the_consent_does_not_cover_is_refused_with_a_clear_reason(
    service: ConsentService, grant: GrantFn, change: dict[str, object], reason: str
) -> None:
    consent = grant()
    q = query(consent, **change)
    if "consent_id" in change:
        q = query(consent, artefact=None, **change)
    for decision in (service.check(q), service.use(q)):
        assert not decision
        assert reason in decision.reasons[0]
    assert service.uses(ALICE, consent.id, now=T0) == []


def test_a_versioned_service_is_covered_by_a_consent_for_the_unversioned_service(
    service: ConsentService, grant: GrantFn
) -> None:
    consent = grant()
    v1 = ServiceId.parse(str(ADDRESS) + "/v1")
    assert service.check(query(consent, service=v1))


def test_a_paused_consent_is_refused_until_resumed(service: ConsentService, grant: GrantFn) -> None:
    consent = grant(mode="standing")
    service.pause(ALICE, consent.id, now=NOW)
    assert service.use(query(consent)).reasons == (f"consent {consent.id} is paused",)
    service.resume(ALICE, consent.id, now=NOW)
    assert service.use(query(consent))


def test_a_valid_artefact_of_a_consent_revoked_a_moment_ago_is_refused(
    service: ConsentService, grant: GrantFn, audit: ListAudit
) -> None:
    consent = grant(mode="standing")
    assert service.check(query(consent))
    service.revoke(ALICE, consent.id, now=NOW)
    decision = service.use(query(consent, now=NOW))
    assert not decision
    assert decision.reasons == (f"consent {consent.id} is revoked",)
    assert audit.events[-1].kind == "refusal"
    assert audit.events[-1].consent_id == consent.id


def test_a_forged_or_altered_artefact_is_refused(service: ConsentService, grant: GrantFn) -> None:
    consent = grant(mode="standing")
    header, payload, signature = consent.artefact.split(".")
    altered = (
        f"{header}.{payload[:-2]}{'A' if payload[-2] != 'A' else 'B'}{payload[-1]}.{signature}"
    )
    forger = ConsentIssuerKey.generate(issuer="JP/GOV/consent-bank")
    other = grant(mode="standing")
    for artefact in (altered, forger.sign_claims(service.verifier.verify(consent.artefact))):
        decision = service.use(query(consent, artefact=artefact))
        assert decision.reasons == ("consent artefact verification failed",)
    decision = service.check(query(consent, artefact=other.artefact))
    assert decision.reasons == ("the consent artefact is for another consent",)
    assert service.uses(ALICE, consent.id, now=NOW) == []


def test_a_missing_artefact_is_refused_when_artefacts_are_required(
    engine: Engine, issuer_key: ConsentIssuerKey, grant: GrantFn, audit: ListAudit
) -> None:
    consent = grant()
    strict = ConsentService(engine, issuer_key=issuer_key, audit=audit, require_artefact=True)
    assert strict.check(query(consent, artefact=None)).reasons == (
        "no consent artefact was presented",
    )
    assert strict.check(query(consent))


def test_a_standing_consent_is_limited_in_count_and_then_spent(
    service: ConsentService, grant: GrantFn
) -> None:
    consent = grant(mode="standing", max_uses=2)
    assert service.use(query(consent))
    assert service.use(query(consent))
    assert service.use(query(consent)).reasons == (f"consent {consent.id} is spent",)
    assert service.get_consent(ALICE, consent.id, now=NOW).use_count == 2


def test_a_standing_consent_is_limited_in_frequency(
    service: ConsentService, grant: GrantFn
) -> None:
    consent = grant(mode="standing", min_interval_s=3600)
    assert service.use(query(consent, now=NOW))
    too_soon = service.use(query(consent, now=NOW + timedelta(minutes=59)))
    assert "at most once every 3600 s" in too_soon.reasons[0]
    assert service.use(query(consent, now=NOW + timedelta(hours=1)))


def test_the_same_message_cannot_use_a_standing_consent_twice(
    service: ConsentService, grant: GrantFn
) -> None:
    consent = grant(mode="standing")
    q = query(consent)
    assert service.use(q)
    assert service.use(q).reasons == ("this message has already used the consent",)


def test_an_expired_consent_is_refused_and_its_expiry_recorded(
    service: ConsentService, grant: GrantFn, audit: ListAudit
) -> None:
    consent = grant(mode="standing")
    late = consent.valid_until + timedelta(seconds=1)
    assert service.use(query(consent, now=late)).reasons == (f"consent {consent.id} is expired",)
    assert audit.kinds()[-2:] == ["consent.expired", "refusal"]


def _race(service: ConsentService, consent_id: str, threads_n: int) -> list[bool]:
    """``threads_n`` threads use one consent at the same instant (each with its own message)."""
    consent = service.get_consent(ALICE, consent_id, now=NOW)
    queries = [query(consent, message_id=str(uuid.uuid4())) for _ in range(threads_n)]
    barrier = threading.Barrier(threads_n)
    results: list[bool] = []
    lock = threading.Lock()

    def worker(q: ConsentQuery) -> None:
        barrier.wait()
        ok = bool(service.use(q))
        with lock:
            results.append(ok)

    threads = [threading.Thread(target=worker, args=(q,)) for q in queries]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


@pytest.mark.postgres
def test_two_simultaneous_uses_of_a_one_time_consent_exactly_one_succeeds(
    pg_url: str, issuer_key: ConsentIssuerKey
) -> None:
    engine = make_engine(pg_url)
    upgrade(engine)
    service = ConsentService(engine, issuer_key=issuer_key, audit=ListAudit())
    for _round in range(5):
        req = service.create_request(GAS, request_input(), now=T0)
        consent = service.approve_request(ALICE, req.id, now=T0)
        results = _race(service, consent.id, 8)
        assert sorted(results) == [False] * 7 + [True]
        assert len(service.uses(ALICE, consent.id, now=NOW)) == 1
    engine.dispose()


def test_simultaneous_uses_on_sqlite_never_double_spend(
    tmp_path: Path, issuer_key: ConsentIssuerKey
) -> None:
    engine = make_engine(f"sqlite:///{tmp_path}/race.sqlite")
    upgrade(engine)
    service = ConsentService(engine, issuer_key=issuer_key, audit=ListAudit())
    req = service.create_request(GAS, request_input(), now=T0)
    consent = service.approve_request(ALICE, req.id, now=T0)
    assert sorted(_race(service, consent.id, 4)) == [False, False, False, True]
    engine.dispose()
