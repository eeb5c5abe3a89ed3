"""Consent lifecycle: requests, grant, pause/resume/revoke, expiry, history, ownership."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from consent.lifecycle import MAX_REQUEST_PENDING_S, ConsentService
from consent.model import ConsentRequestStatus, ConsentStatus, HistoryAction
from exchange.errors import ClientError, ConflictError, NotFoundError, RefusalError
from tests.consent.conftest import GrantFn
from tests.consent.consent_factories import (
    ALICE,
    BOB,
    GAS,
    POWER,
    T0,
    ListAudit,
    query,
    request_input,
)

LATER = T0 + timedelta(minutes=1)


def test_approving_a_request_grants_an_active_consent_with_a_verifiable_artefact(
    service: ConsentService, audit: ListAudit
) -> None:
    terms = request_input()
    req = service.create_request(GAS, terms, now=T0)
    assert req.status is ConsentRequestStatus.PENDING
    assert [r.id for r in service.list_requests(ALICE, now=T0)] == [req.id]

    consent = service.approve_request(ALICE, req.id, now=T0)

    assert consent.status is ConsentStatus.ACTIVE
    assert consent.fields == ("address", "postal_code")
    claims = service.verifier.verify(consent.artefact)
    assert (claims.cid, claims.sub, claims.client) == (consent.id, ALICE, str(GAS))
    assert service.get_request(ALICE, req.id, now=T0).consent_id == consent.id
    assert audit.kinds() == ["consent.granted"]
    assert audit.events[0].consent_id == consent.id


def test_a_consumer_cannot_ask_for_a_consent_given_to_another_client(
    service: ConsentService,
) -> None:
    with pytest.raises(RefusalError, match="given to itself"):
        service.create_request(POWER, request_input(), now=T0)


def test_a_request_whose_window_is_over_is_refused(service: ConsentService) -> None:
    terms = request_input(
        valid_from=(T0 - timedelta(days=2)).isoformat(),
        valid_until=(T0 - timedelta(days=1)).isoformat(),
    )
    with pytest.raises(ClientError, match="already over"):
        service.create_request(GAS, terms, now=T0)


def test_declined_request_cannot_be_approved_afterwards(service: ConsentService) -> None:
    req = service.create_request(GAS, request_input(), now=T0)
    assert service.decline_request(ALICE, req.id, now=T0).status is ConsentRequestStatus.DECLINED
    with pytest.raises(
        ConflictError, match=f"cannot approve consent request {req.id}: it is declined"
    ):
        service.approve_request(ALICE, req.id, now=T0)


def test_approving_twice_is_a_conflict(service: ConsentService) -> None:
    req = service.create_request(GAS, request_input(), now=T0)
    service.approve_request(ALICE, req.id, now=T0)
    with pytest.raises(ConflictError, match="it is approved"):
        service.approve_request(ALICE, req.id, now=T0)


def test_an_unanswered_request_expires_by_itself(service: ConsentService) -> None:
    terms = request_input(valid_until=(T0 + timedelta(days=365)).isoformat())
    req = service.create_request(GAS, terms, now=T0)
    late = T0 + timedelta(seconds=MAX_REQUEST_PENDING_S)
    assert service.get_request(ALICE, req.id, now=late).status is ConsentRequestStatus.EXPIRED
    with pytest.raises(ConflictError, match="it is expired"):
        service.approve_request(ALICE, req.id, now=late)


def test_pause_resume_revoke_follow_the_state_machine_and_are_audited(
    service: ConsentService, grant: GrantFn, audit: ListAudit
) -> None:
    consent = grant()
    assert service.pause(ALICE, consent.id, now=LATER).status is ConsentStatus.PAUSED
    assert service.resume(ALICE, consent.id, now=LATER).status is ConsentStatus.ACTIVE
    assert service.revoke(ALICE, consent.id, now=LATER).status is ConsentStatus.REVOKED
    assert audit.kinds() == [
        "consent.granted",
        "consent.paused",
        "consent.resumed",
        "consent.revoked",
    ]
    history = service.history(ALICE, consent.id, now=LATER)
    assert [(h.action, h.from_status, h.to_status) for h in history] == [
        (HistoryAction.GRANTED, None, ConsentStatus.ACTIVE),
        (HistoryAction.PAUSED, ConsentStatus.ACTIVE, ConsentStatus.PAUSED),
        (HistoryAction.RESUMED, ConsentStatus.PAUSED, ConsentStatus.ACTIVE),
        (HistoryAction.REVOKED, ConsentStatus.ACTIVE, ConsentStatus.REVOKED),
    ]
    assert all(h.actor == ALICE for h in history)


def test_a_paused_consent_can_be_revoked(service: ConsentService, grant: GrantFn) -> None:
    consent = grant()
    service.pause(ALICE, consent.id, now=LATER)
    assert service.revoke(ALICE, consent.id, now=LATER).status is ConsentStatus.REVOKED


@pytest.mark.parametrize(
    ("setup", "verb", "message"),
    [
        (["revoke"], "revoke", "it is already revoked"),
        (["revoke"], "resume", "a revoked consent cannot be resumed"),
        (["revoke"], "pause", "a revoked consent cannot be paused"),
        (["pause"], "pause", "it is already paused"),
        ([], "resume", "it is not paused"),
    ],
)
def test_illegal_transitions_are_conflicts_with_a_precise_message(
    service: ConsentService, grant: GrantFn, setup: list[str], verb: str, message: str
) -> None:
    consent = grant()
    for step in setup:
        getattr(service, step)(ALICE, consent.id, now=LATER)
    with pytest.raises(ConflictError, match=message) as info:
        getattr(service, verb)(ALICE, consent.id, now=LATER)
    assert consent.id in info.value.detail


def test_a_consent_expires_by_itself_and_the_expiry_is_recorded_once(
    service: ConsentService, grant: GrantFn, audit: ListAudit
) -> None:
    consent = grant()
    after = consent.valid_until + timedelta(seconds=1)
    assert service.get_consent(ALICE, consent.id, now=after).status is ConsentStatus.EXPIRED
    assert service.get_consent(ALICE, consent.id, now=after).status is ConsentStatus.EXPIRED
    assert audit.kinds().count("consent.expired") == 1
    with pytest.raises(ConflictError, match="an expired consent can no longer be revoked"):
        service.revoke(ALICE, consent.id, now=after)
    actions = [h.action for h in service.history(ALICE, consent.id, now=after)]
    assert actions == [HistoryAction.GRANTED, HistoryAction.EXPIRED]


def test_a_citizen_cannot_see_or_change_another_citizens_consent(
    service: ConsentService, grant: GrantFn
) -> None:
    consent = grant()
    for call in (
        service.get_consent,
        service.pause,
        service.resume,
        service.revoke,
        service.history,
        service.uses,
        service.receipts,
    ):
        with pytest.raises(NotFoundError, match=r"^no such consent$"):
            call(BOB, consent.id, now=LATER)
    assert service.list_consents(BOB, now=LATER) == []
    assert service.get_consent(ALICE, consent.id, now=LATER).status is ConsentStatus.ACTIVE


def test_another_citizens_request_looks_exactly_like_an_unknown_one(
    service: ConsentService,
) -> None:
    req = service.create_request(GAS, request_input(), now=T0)
    errors = []
    for request_id in (req.id, "00000000-0000-4000-8000-000000000000", "not-a-uuid"):
        with pytest.raises(NotFoundError) as info:
            service.approve_request(BOB, request_id, now=T0)
        errors.append(info.value.detail)
    assert set(errors) == {"no such consent request"}
    assert service.list_requests(BOB, now=T0) == []


def test_every_grant_and_change_has_a_receipt(service: ConsentService, grant: GrantFn) -> None:
    consent = grant()
    service.pause(ALICE, consent.id, now=LATER)
    receipts = service.receipts(ALICE, consent.id, now=LATER)
    assert [r.action for r in receipts] == [HistoryAction.GRANTED, HistoryAction.PAUSED]
    history = service.history(ALICE, consent.id, now=LATER)
    assert [h.receipt_id for h in history] == [r.id for r in receipts]
    one = service.receipt(ALICE, consent.id, receipts[1].id, now=LATER)
    assert one.document["iso27560"]["consent_status"] == "paused"
    with pytest.raises(NotFoundError):
        service.receipt(BOB, consent.id, receipts[1].id, now=LATER)


def test_audit_failure_leaves_the_consent_unchanged(
    engine: object, issuer_key: object, grant: GrantFn, service: ConsentService
) -> None:
    consent = grant()

    class BrokenAudit:
        def record(self, event: object) -> None:
            raise OSError("audit log unavailable")

    broken = ConsentService(
        service._engine,  # the same database, an audit sink that fails
        issuer_key=service._key,
        audit=BrokenAudit(),
    )
    with pytest.raises(OSError, match="unavailable"):
        broken.revoke(ALICE, consent.id, now=LATER)
    assert service.get_consent(ALICE, consent.id, now=LATER).status is ConsentStatus.ACTIVE


def _reach(service: ConsentService, grant: GrantFn, status: ConsentStatus) -> tuple[str, datetime]:
    """A consent in ``status`` and a ``now`` at which it is in that status."""
    consent = grant(mode="standing", max_uses=1)
    now = LATER
    if status is ConsentStatus.PAUSED:
        service.pause(ALICE, consent.id, now=LATER)
    elif status is ConsentStatus.REVOKED:
        service.revoke(ALICE, consent.id, now=LATER)
    elif status is ConsentStatus.EXPIRED:
        now = consent.valid_until
    elif status is ConsentStatus.SPENT:
        assert service.use(query(consent, now=LATER))
    assert service.get_consent(ALICE, consent.id, now=now).status is status
    return consent.id, now


_LEGAL = {
    (ConsentStatus.ACTIVE, "pause"): ConsentStatus.PAUSED,
    (ConsentStatus.ACTIVE, "revoke"): ConsentStatus.REVOKED,
    (ConsentStatus.PAUSED, "resume"): ConsentStatus.ACTIVE,
    (ConsentStatus.PAUSED, "revoke"): ConsentStatus.REVOKED,
}


@pytest.mark.parametrize("verb", ["pause", "resume", "revoke"])
@pytest.mark.parametrize("status", list(ConsentStatus))
def test_every_status_and_verb_either_transitions_or_is_a_precise_conflict(
    service: ConsentService, grant: GrantFn, status: ConsentStatus, verb: str
) -> None:
    consent_id, now = _reach(service, grant, status)
    target = _LEGAL.get((status, verb))
    if target is not None:
        assert getattr(service, verb)(ALICE, consent_id, now=now).status is target
        return
    with pytest.raises(ConflictError) as info:
        getattr(service, verb)(ALICE, consent_id, now=now)
    assert info.value.detail.startswith(f"cannot {verb} consent {consent_id}: it ")
    assert service.get_consent(ALICE, consent_id, now=now).status is status
