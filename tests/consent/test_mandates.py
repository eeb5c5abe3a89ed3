"""Mandates at the consent service (issue 16, items 3-4): granted, registered, revoked, listed,
signed; acting for someone through the citizen API, refused (out of scope, expired, revoked,
someone else's) with problem+json and every refusal audited; the consent's history names who
acted. Real database (SQLite, or PostgreSQL with DATABASE_URL), real tokens, real HTTP routes."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

from consent.api import build_citizen_router
from consent.artefact import ConsentIssuerKey
from consent.lifecycle import ConsentService
from consent.mandates import MandateKind, MandateRegistration, MandateService
from exchange.errors import VerificationError
from exchange.tokens import DevIssuer
from exchange.web.problems import install_problem_handlers
from tests.consent.consent_factories import ALICE, BOB, T0, ListAudit
from tests.consent.test_consent_api import ask, assert_problem, auth, authenticate_consumer

with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)
    from fastapi.testclient import TestClient

API = "/consent/v1"
PARENT = "citizen-parent"
CHILD = ALICE  # the consent requests of the factories name Alice: here she is the minor
PURPOSE = "utility-address-change"


@pytest.fixture
def issuer(tmp_path: Path) -> DevIssuer:
    return DevIssuer.load_or_create(tmp_path, issuer="onceonly-dev", audience="onceonly")


@pytest.fixture
def mandates(service: ConsentService) -> MandateService:
    return service.mandates()


@pytest.fixture
def client(service: ConsentService, issuer: DevIssuer) -> Iterator[TestClient]:
    app = FastAPI()
    install_problem_handlers(app)
    app.include_router(
        build_citizen_router(
            service,
            issuer.verifier(),
            authenticate_consumer=authenticate_consumer,
            mandates=service.mandates(),
        )
    )
    with TestClient(app) as tc:
        yield tc


def register(mandates: MandateService, **over: Any) -> str:
    values: dict[str, Any] = {
        "representative": PARENT,
        "represented": CHILD,
        "kind": "parent",
        "purposes": [PURPOSE],
        "procedures": ["address-change"],
        "valid_until": (T0 + timedelta(days=365)).isoformat(),
        "basis": "resident registry household 0001: parent of a minor (born 2015-04-01)",
        **over,
    }
    return mandates.register(MandateRegistration.model_validate(values), by="op", now=T0).id


def refusals(audit: ListAudit) -> list[str]:
    return [
        e.reason or ""
        for e in audit.events
        if e.kind == "refusal" and e.extra.get("stage") == "mandate"
    ]


def test_a_registered_mandate_is_signed_listed_for_both_and_in_the_log(
    mandates: MandateService, issuer_key: ConsentIssuerKey, audit: ListAudit
) -> None:
    mid = register(mandates)
    [held] = mandates.list_for(PARENT, now=T0)
    assert [m.id for m in mandates.list_for(CHILD, now=T0)] == [mid]
    assert held.kind is MandateKind.PARENT
    assert held.status.value == "active"
    assert held.represented_party == f"PARENT/{mid}"
    claims = mandates.verify_artefact(held.artefact)
    assert (claims["mid"], claims["sub"], claims["representative"]) == (mid, CHILD, PARENT)
    assert claims["purposes"] == [PURPOSE]
    # another key's signature, or an altered mandate, does not verify
    with pytest.raises(VerificationError):
        ConsentIssuerKey.generate(issuer="x").verify_mandate(held.artefact)
    head, payload, sig = held.artefact.split(".")
    with pytest.raises(VerificationError):
        mandates.verify_artefact(f"{head}.{payload[:-2]}AA.{sig}")
    granted = [e for e in audit.events if e.kind == "mandate.granted"]
    assert [(e.subject, e.represented_party) for e in granted] == [(CHILD, f"PARENT/{mid}")]


def test_a_parent_approves_and_revokes_for_the_child_and_the_history_names_the_parent(
    client: TestClient, issuer: DevIssuer, mandates: MandateService, audit: ListAudit
) -> None:
    mid = register(mandates)
    request_id = ask(client).json()["id"]
    parent = auth(issuer, PARENT) | {"X-OnceOnly-Acting-For": mid}
    listed = client.get(f"{API}/consent-requests", headers=parent)
    assert [r["id"] for r in listed.json()] == [request_id]
    approved = client.post(f"{API}/consent-requests/{request_id}/approve", headers=parent)
    assert approved.status_code == 200, approved.text
    consent = approved.json()
    assert consent["subject"] == CHILD
    revoked = client.post(f"{API}/consents/{consent['id']}/revoke", headers=parent)
    assert revoked.json()["status"] == "revoked"
    # The child sees the consent and who acted, in the history and in the consent log.
    history = client.get(f"{API}/consents/{consent['id']}/history", headers=auth(issuer, CHILD))
    actors = [h["actor"] for h in history.json()]
    assert actors == [f"{PARENT} for {CHILD} (mandate {mid})"] * 2
    changes = [e for e in audit.events if e.kind in ("consent.granted", "consent.revoked")]
    assert {(e.subject, e.represented_party, e.extra["mandate"]) for e in changes} == {
        (CHILD, f"PARENT/{mid}", mid)
    }
    # The child's own list of mandates shows who represents them.
    listed_for_child = client.get(f"{API}/mandates", headers=auth(issuer, CHILD)).json()
    assert [(m["representative"], m["kind"]) for m in listed_for_child] == [(PARENT, "parent")]


def _refused(response: Any) -> str:
    problem = assert_problem(response, 403)
    assert problem["code"] == "Client.MandateRefused"
    assert problem["type"].endswith("client.mandaterefused")
    return str(problem["detail"])


def test_out_of_scope_expired_revoked_and_foreign_mandates_are_refused_and_audited(
    client: TestClient, issuer: DevIssuer, mandates: MandateService, audit: ListAudit
) -> None:
    request_id = ask(client).json()["id"]
    approve = f"{API}/consent-requests/{request_id}/approve"

    def as_parent(mid: str) -> dict[str, str]:
        return auth(issuer, PARENT) | {"X-OnceOnly-Acting-For": mid}

    out_of_scope = register(mandates, purposes=["child-allowance"])
    assert "does not cover purpose" in _refused(
        client.post(approve, headers=as_parent(out_of_scope))
    )
    expired = register(
        mandates,
        valid_from=(T0 - timedelta(days=30)).isoformat(),
        valid_until=(T0 - timedelta(days=1)).isoformat(),
    )
    assert "expired" in _refused(client.post(approve, headers=as_parent(expired)))
    revoked = register(mandates)
    mandates.revoke(revoked, by="op", now=T0, operator=True)
    assert "revoked" in _refused(client.post(approve, headers=as_parent(revoked)))
    bobs = register(mandates, representative=BOB)  # Bob's mandate, used by the parent
    assert "no mandate" in _refused(client.post(approve, headers=as_parent(bobs)))
    unknown = "0" * 8 + "-0000-0000-0000-" + "0" * 12
    assert "no mandate" in _refused(client.get(f"{API}/consents", headers=as_parent(unknown)))
    # every refusal is in the consent log, the known ones under the child's subject
    reasons = refusals(audit)
    assert len(reasons) == 5
    assert [e.subject for e in audit.events if e.extra.get("stage") == "mandate"] == [
        CHILD,
        CHILD,
        CHILD,
        None,
        None,
    ]
    # ... and nothing was approved
    assert client.get(f"{API}/consents", headers=auth(issuer, CHILD)).json() == []


def test_a_citizen_grants_and_revokes_an_authorised_person_over_http(
    client: TestClient, issuer: DevIssuer, audit: ListAudit
) -> None:
    body = {
        "representative": BOB,
        "purposes": ["*"],
        "valid_until": (T0 + timedelta(days=7)).isoformat(),
    }
    created = client.post(f"{API}/mandates", json=body, headers=auth(issuer, ALICE))
    assert created.status_code == 201, created.text
    mandate = created.json()
    assert (mandate["kind"], mandate["represented"], mandate["granted_by"]) == (
        "authorised",
        ALICE,
        ALICE,
    )
    # A person cannot grant a parent's mandate to themself (only an operator registers those).
    forged = client.post(
        f"{API}/mandates", json=body | {"kind": "parent"}, headers=auth(issuer, BOB)
    )
    assert_problem(forged, 400)
    # Bob sees it; a stranger cannot revoke it (404); Alice revokes it.
    assert [m["id"] for m in client.get(f"{API}/mandates", headers=auth(issuer, BOB)).json()] == [
        mandate["id"]
    ]
    stranger = client.post(f"{API}/mandates/{mandate['id']}/revoke", headers=auth(issuer, "x"))
    assert_problem(stranger, 404)
    done = client.post(f"{API}/mandates/{mandate['id']}/revoke", headers=auth(issuer, ALICE))
    assert done.json()["status"] == "revoked"
    again = client.post(f"{API}/mandates/{mandate['id']}/revoke", headers=auth(issuer, ALICE))
    assert_problem(again, 409)
    assert [e.kind for e in audit.events if e.kind.startswith("mandate.")] == [
        "mandate.granted",
        "mandate.revoked",
    ]


def test_a_represented_child_cannot_revoke_a_parents_mandate(
    mandates: MandateService,
) -> None:
    from exchange.errors import ConflictError

    mid = register(mandates)
    with pytest.raises(ConflictError):
        mandates.revoke(mid, by=CHILD, now=T0)
    assert mandates.revoke(mid, by=PARENT, now=T0).status.value == "revoked"  # renounced


def test_a_parent_reads_the_childs_consent_its_uses_receipts_and_request_while_acting(
    client: TestClient, issuer: DevIssuer, mandates: MandateService
) -> None:
    mid = register(mandates)
    request_id = ask(client).json()["id"]
    parent = auth(issuer, PARENT) | {"X-OnceOnly-Acting-For": mid}
    assert client.get(f"{API}/consent-requests/{request_id}", headers=parent).status_code == 200
    consent = client.post(f"{API}/consent-requests/{request_id}/approve", headers=parent).json()
    base = f"{API}/consents/{consent['id']}"
    assert client.get(base, headers=parent).json()["subject"] == CHILD
    assert client.get(f"{base}/uses", headers=parent).json() == []
    receipts = client.get(f"{base}/receipts", headers=parent).json()
    assert len(receipts) == 1
    one = client.get(f"{base}/receipts/{receipts[0]['id']}", headers=parent)
    assert one.status_code == 200
    # Without the header, the same parent sees none of it (404, as for any other citizen's).
    assert_problem(client.get(base, headers=auth(issuer, PARENT)), 404)
