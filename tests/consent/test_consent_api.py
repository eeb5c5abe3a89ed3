"""The consent HTTP API: citizen routes, the consumer's request, the node gate and its client."""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
import warnings
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from consent.api import build_citizen_router, build_gate_router
from consent.artefact import ConsentReceiptVerifier
from consent.lifecycle import ConsentService
from consent.metrics import ConsentMetrics
from consent.model import Consent
from consent.remote import CONSENT_UNAVAILABLE, RemoteConsentGate
from exchange.errors import AuthenticationError, ClientError, NotFoundError, UnavailableError
from exchange.identifiers import ClientId
from exchange.node_requests import VerifiedNodeRequest
from exchange.tokens import DevIssuer
from exchange.web.problems import install_problem_handlers
from tests.consent.conftest import GrantFn
from tests.consent.consent_factories import (
    ADDRESS,
    ALICE,
    BOB,
    GAS,
    T0,
    ListAudit,
    query,
    request_input,
)

with warnings.catch_warnings():
    # Starlette's TestClient warns that it prefers httpx2, which is not a dependency (yet).
    warnings.simplefilter("ignore", UserWarning)
    from fastapi.testclient import TestClient

API = "/consent/v1"
CONSUMER_KEYS = {"gas-key": GAS}
PROVIDER_NODE = ClientId.parse("JP/GOV/132098/resident-registry")
OTHER_NODE = ClientId.parse("JP/GOV/131016/resident-registry")
NODE_SECRETS = {str(PROVIDER_NODE): b"provider-secret", str(OTHER_NODE): b"other-secret"}


def _verified(client: ClientId) -> VerifiedNodeRequest:
    """These simple authenticators sign no time, so they cannot tell a replay from a repeat:
    every request gets an id of its own (replays are tested with real signed requests in
    tests/consent/test_consent_refusals.py)."""
    return VerifiedNodeRequest(client, str(uuid.uuid4()), datetime.now(UTC) + timedelta(minutes=1))


async def authenticate_consumer(request: Request, body: bytes) -> VerifiedNodeRequest:
    """A real, if simple, consumer authenticator: a static API key per client."""
    client = CONSUMER_KEYS.get(request.headers.get("x-api-key", ""))
    if client is None:
        raise AuthenticationError("unknown API key")
    return _verified(client)


def _mac(secret: bytes, method: str, path: str, body: bytes) -> str:
    return hmac.new(secret, f"{method}\n{path}\n".encode() + body, hashlib.sha256).hexdigest()


async def authenticate_node(request: Request, body: bytes) -> VerifiedNodeRequest:
    """A real, if simple, node authenticator: HMAC over method, path and body."""
    node = request.headers.get("x-node", "")
    secret = NODE_SECRETS.get(node)
    given = request.headers.get("x-node-mac", "")
    if secret is None or not hmac.compare_digest(
        given, _mac(secret, request.method, request.url.path, body)
    ):
        raise AuthenticationError("node authentication failed")
    return _verified(ClientId.parse(node))


def signer_for(node: ClientId) -> Any:
    def sign(method: str, path: str, body: bytes) -> Mapping[str, str]:
        return {
            "x-node": str(node),
            "x-node-mac": _mac(NODE_SECRETS[str(node)], method, path, body),
        }

    return sign


@pytest.fixture
def issuer(tmp_path: Path) -> DevIssuer:
    return DevIssuer.load_or_create(tmp_path, issuer="onceonly-dev", audience="onceonly")


@pytest.fixture
def metrics() -> ConsentMetrics:
    return ConsentMetrics()


@pytest.fixture
def client(
    service: ConsentService, issuer: DevIssuer, metrics: ConsentMetrics
) -> Iterator[TestClient]:
    app = FastAPI()
    install_problem_handlers(app)
    app.include_router(
        build_citizen_router(
            service,
            issuer.verifier(),
            authenticate_consumer=authenticate_consumer,
            metrics=metrics,
        )
    )
    app.include_router(build_gate_router(service, authenticate_node, metrics=metrics))
    with TestClient(app) as tc:
        yield tc


def auth(issuer: DevIssuer, subject: str, roles: tuple[str, ...] = ("citizen",)) -> dict[str, str]:
    return {"authorization": f"Bearer {issuer.issue(subject, roles=roles)}"}


def ask(client: TestClient, **over: Any) -> httpx.Response:
    body = request_input(**over).model_dump(mode="json")
    return client.post(f"{API}/consent-requests", json=body, headers={"x-api-key": "gas-key"})


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem: dict[str, Any] = response.json()
    assert problem["status"] == status
    return problem


def test_a_citizen_approves_a_request_and_manages_the_consent(
    client: TestClient, issuer: DevIssuer
) -> None:
    created = ask(client)
    assert created.status_code == 201, created.text
    alice = auth(issuer, ALICE)
    requests = client.get(f"{API}/consent-requests", headers=alice).json()
    assert [r["id"] for r in requests] == [created.json()["id"]]
    assert requests[0]["fields"] == ["address", "postal_code"]
    assert requests[0]["purpose"]["text_ja"] == "ガス契約の住所変更のため"

    consent = client.post(f"{API}/consent-requests/{requests[0]['id']}/approve", headers=alice)
    assert consent.status_code == 200, consent.text
    cid = consent.json()["id"]
    assert [c["id"] for c in client.get(f"{API}/consents", headers=alice).json()] == [cid]
    assert client.post(f"{API}/consents/{cid}/pause", headers=alice).json()["status"] == "paused"
    assert client.post(f"{API}/consents/{cid}/resume", headers=alice).json()["status"] == "active"
    assert client.post(f"{API}/consents/{cid}/revoke", headers=alice).json()["status"] == "revoked"
    problem = assert_problem(client.post(f"{API}/consents/{cid}/revoke", headers=alice), 409)
    assert problem["detail"] == f"cannot revoke consent {cid}: it is already revoked"

    history = client.get(f"{API}/consents/{cid}/history", headers=alice).json()
    assert [h["action"] for h in history] == ["granted", "paused", "resumed", "revoked"]
    assert client.get(f"{API}/consents/{cid}/uses", headers=alice).json() == []
    receipts = client.get(f"{API}/consents/{cid}/receipts", headers=alice).json()
    assert len(receipts) == 4
    assert receipts[0]["document"]["kantara"]["version"] == "KI-CR-v1.1.0"


def test_receipts_are_served_as_json_and_as_a_printable_escaped_page(
    client: TestClient, issuer: DevIssuer, grant: GrantFn
) -> None:
    evil = "<script>alert(1)</script>"
    consent = grant(purpose={"code": "x-1", "text_ja": evil, "text_en": "For <b>you</b>"})
    alice = auth(issuer, ALICE)
    (receipt,) = client.get(f"{API}/consents/{consent.id}/receipts", headers=alice).json()
    url = f"{API}/consents/{consent.id}/receipts/{receipt['id']}"
    as_json = client.get(url, headers=alice).json()
    doc = as_json["document"]["kantara"]
    assert set(as_json["document"]) == {"kantara", "iso27560"}  # no private extension
    for name in (
        "version",
        "jurisdiction",
        "consentTimestamp",
        "collectionMethod",
        "consentReceiptID",
        "piiPrincipalId",
        "piiControllers",
        "policyUrl",
        "services",
        "sensitive",
        "spiCat",
    ):
        assert name in doc
    purpose = doc["services"][0]["purposes"][0]
    assert purpose["piiCategory"] == ["address", "postal_code"]
    assert {"purposeCategory", "consentType", "primaryPurpose", "termination"} <= set(purpose)
    assert purpose["thirdPartyDisclosure"] is True
    page = client.get(url, params={"format": "html"}, headers=alice)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert evil not in page.text
    assert "&lt;script&gt;" in page.text
    assert "同意レシート" in page.text
    assert "Consent receipt" in page.text
    assert "JWS" in page.text
    assert as_json["jws"] in page.text  # the printable page carries the signed form
    assert_problem(client.get(url, params={"format": "pdf"}, headers=alice), 400)


def test_a_receipt_is_served_as_a_jws_that_verifies_with_the_published_keys_alone(
    client: TestClient, issuer: DevIssuer, grant: GrantFn
) -> None:
    consent = grant()
    alice = auth(issuer, ALICE)
    (receipt,) = client.get(f"{API}/consents/{consent.id}/receipts", headers=alice).json()
    url = f"{API}/consents/{consent.id}/receipts/{receipt['id']}"
    signed = client.get(url, params={"format": "jws"}, headers=alice)
    assert signed.status_code == 200
    assert signed.headers["content-type"].startswith("application/jose")
    assert signed.text == receipt["jws"]
    keys = client.get(f"{API}/keys")  # public: no token
    assert keys.status_code == 200
    assert keys.headers["content-type"].startswith("application/jwk-set+json")
    verified = ConsentReceiptVerifier.from_jwks(keys.json()).verify(signed.text)
    assert verified == receipt["document"]
    assert verified["iso27560"]["record_id"] == consent.id
    assert verified["kantara"]["consentReceiptID"] == receipt["id"]


def test_a_citizen_cannot_see_or_change_another_citizens_consents(
    client: TestClient, issuer: DevIssuer, grant: GrantFn
) -> None:
    consent = grant()
    bob = auth(issuer, BOB)
    base = f"{API}/consents/{consent.id}"
    for method, path in [
        ("GET", base),
        ("GET", f"{base}/history"),
        ("GET", f"{base}/uses"),
        ("GET", f"{base}/receipts"),
        ("POST", f"{base}/pause"),
        ("POST", f"{base}/resume"),
        ("POST", f"{base}/revoke"),
    ]:
        problem = assert_problem(client.request(method, path, headers=bob), 404)
        assert problem["detail"] == "no such consent"
    assert client.get(f"{API}/consents", headers=bob).json() == []
    alice = auth(issuer, ALICE)
    assert client.get(base, headers=alice).json()["status"] == "active"


def test_another_citizens_request_cannot_be_approved_or_declined(
    client: TestClient, issuer: DevIssuer
) -> None:
    rid = ask(client).json()["id"]
    bob = auth(issuer, BOB)
    for verb in ("approve", "decline"):
        assert_problem(client.post(f"{API}/consent-requests/{rid}/{verb}", headers=bob), 404)
    assert client.get(f"{API}/consent-requests", headers=bob).json() == []
    alice = auth(issuer, ALICE)
    assert client.post(f"{API}/consent-requests/{rid}/decline", headers=alice).status_code == 200
    assert_problem(client.post(f"{API}/consent-requests/{rid}/approve", headers=alice), 409)


def test_citizen_routes_need_a_valid_citizen_token(client: TestClient, issuer: DevIssuer) -> None:
    assert_problem(client.get(f"{API}/consents"), 401)
    assert_problem(client.get(f"{API}/consents", headers={"authorization": "Bearer x.y.z"}), 401)
    auditor = auth(issuer, "auditor-1", roles=("auditor",))
    assert_problem(client.get(f"{API}/consents", headers=auditor), 403)


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"{not json", 400),
        (b"[]", 400),
        (json.dumps({"subject": ALICE}).encode(), 400),
        (b"x" * 70_000, 413),
    ],
)
def test_bad_consent_requests_are_client_errors(
    client: TestClient, body: bytes, status: int
) -> None:
    response = client.post(
        f"{API}/consent-requests",
        content=body,
        headers={"x-api-key": "gas-key", "content-type": "application/json"},
    )
    assert_problem(response, status)


@pytest.mark.parametrize(
    ("over", "status", "words"),
    [
        ({"client": "JP/COM/0100002/power-billing"}, 403, "given to itself"),
        ({"extra": "field"}, 400, "extra"),
        ({"client": "not/a/client"}, 400, "client"),
        ({"fields": ["a b"]}, 400, "field"),
        ({"mode": "forever"}, 400, "mode"),
        ({"valid_from": "2026-11-23T09:00:00"}, 400, "valid_from"),
        ({"mode": "one-time", "max_uses": 3}, 400, "standing"),
    ],
)
def test_consent_request_input_is_validated(
    client: TestClient, over: dict[str, Any], status: int, words: str
) -> None:
    body = request_input().model_dump(mode="json")
    body.update(over)
    response = client.post(f"{API}/consent-requests", json=body, headers={"x-api-key": "gas-key"})
    problem = assert_problem(response, status)
    assert words in problem["detail"]


def test_an_unauthenticated_consumer_cannot_ask(client: TestClient) -> None:
    body = request_input().model_dump(mode="json")
    assert_problem(client.post(f"{API}/consent-requests", json=body), 401)


@pytest.mark.parametrize(
    "bad_id", ["nope", "00000000-0000-4000-8000-000000000000", "%00", "x" * 300]
)
def test_unknown_or_malformed_ids_are_not_found(
    client: TestClient, issuer: DevIssuer, bad_id: str
) -> None:
    alice = auth(issuer, ALICE)
    assert_problem(client.get(f"{API}/consents/{bad_id}", headers=alice), 404)
    assert_problem(client.post(f"{API}/consent-requests/{bad_id}/approve", headers=alice), 404)
    assert_problem(client.get(f"{API}/consents/{bad_id}/receipts/{bad_id}", headers=alice), 404)


# --- node gate ---------------------------------------------------------------------------------


def remote(
    client: TestClient, service: ConsentService, node: ClientId = PROVIDER_NODE
) -> RemoteConsentGate:
    return RemoteConsentGate(
        str(client.base_url), signer_for(node), service.verifier, http_client=client
    )


def test_the_remote_gate_checks_and_uses_through_the_consent_service(
    client: TestClient, service: ConsentService, grant: GrantFn
) -> None:
    consent = grant()
    gate = remote(client, service)
    q = query(consent, now=T0)
    assert gate.check(q)
    decision = gate.use(q)
    assert decision
    assert decision.fields == frozenset(consent.fields)
    again = gate.use(query(consent, now=T0))
    assert again.reasons == (f"consent {consent.id} is spent",)
    (use,) = service.uses(ALICE, consent.id, now=T0)
    assert use.message_id == q.message_id


def test_the_remote_gate_carries_the_idempotency_key_so_a_retry_is_the_same_use(
    client: TestClient, service: ConsentService, grant: GrantFn
) -> None:
    consent = grant()
    gate = remote(client, service)
    first = query(consent, now=T0, idempotency_key="oo-procedure-7-3")
    assert gate.use(first)
    retry = query(consent, now=T0, idempotency_key="oo-procedure-7-3")
    assert gate.check(retry)
    assert gate.use(retry)
    other = gate.use(query(consent, now=T0, idempotency_key="oo-procedure-7-4"))
    assert other.reasons == (f"consent {consent.id} is spent",)
    (use,) = service.uses(ALICE, consent.id, now=T0)
    assert use.message_id == first.message_id


def test_the_remote_gate_refuses_a_consent_revoked_a_moment_ago(
    client: TestClient, service: ConsentService, grant: GrantFn
) -> None:
    consent: Consent = grant(mode="standing")
    gate = remote(client, service)
    assert gate.check(query(consent, now=T0))
    service.revoke(ALICE, consent.id, now=T0)
    assert gate.use(query(consent, now=T0)).reasons == (f"consent {consent.id} is revoked",)


def test_values_the_gate_protocol_cannot_carry_are_refused_not_raised(
    client: TestClient, service: ConsentService, grant: GrantFn
) -> None:
    """A provider node passes what a (possibly hostile) consumer signed; the gate must answer
    with a refusal, never an exception (which would become a 500)."""
    consent = grant()
    gate = remote(client, service)
    for bad in (query(consent, idempotency_key=""), query(consent, idempotency_key="k" * 300)):
        decision = gate.use(bad)
        assert not decision
        assert decision.reasons == ("the request cannot be put to the consent service",)


def test_the_remote_gate_refuses_forged_artefacts_without_asking(
    client: TestClient, service: ConsentService, grant: GrantFn
) -> None:
    consent = grant()
    asked: list[str] = []

    def sign(method: str, path: str, body: bytes) -> Mapping[str, str]:
        asked.append(path)
        return signer_for(PROVIDER_NODE)(method, path, body)

    gate = RemoteConsentGate(str(client.base_url), sign, service.verifier, http_client=client)
    h, p, s = consent.artefact.split(".")
    forged = f"{h}.{p}.{s[:-4]}AAAA"
    assert gate.use(query(consent, artefact=forged)).reasons == (
        "consent artefact verification failed",
    )
    assert gate.use(query(consent, artefact=None)).reasons == ("no consent artefact was presented",)
    assert "does not cover the fields" in gate.check(query(consent, fields=("income",))).reasons[0]
    assert asked == []


def test_a_node_cannot_ask_about_another_members_services(
    client: TestClient, service: ConsentService, grant: GrantFn
) -> None:
    consent = grant()
    gate = remote(client, service, node=OTHER_NODE)
    assert gate.use(query(consent, now=T0)).reasons == ("the consent service answered HTTP 403",)
    assert service.uses(ALICE, consent.id, now=T0) == []


def test_gate_routes_refuse_unauthenticated_and_malformed_calls(client: TestClient) -> None:
    assert_problem(client.post(f"{API}/gate/check", json={}), 401)
    body = b'{"consent_id": 1}'
    headers = {"x-node": str(PROVIDER_NODE)}
    headers["x-node-mac"] = _mac(NODE_SECRETS[str(PROVIDER_NODE)], "POST", f"{API}/gate/use", body)
    assert_problem(client.post(f"{API}/gate/use", content=body, headers=headers), 400)


def test_the_remote_gate_fails_closed_and_retryable_when_the_service_is_unreachable(
    service: ConsentService, grant: GrantFn, audit: ListAudit
) -> None:
    consent = grant()
    gate = RemoteConsentGate(
        "http://127.0.0.1:9", signer_for(PROVIDER_NODE), service.verifier, timeout_s=0.5
    )
    try:
        with pytest.raises(UnavailableError) as info:
            gate.use(query(consent, now=T0 + timedelta(seconds=1)))
    finally:
        gate.close()
    assert info.value.status == 503
    assert info.value.code == CONSENT_UNAVAILABLE
    assert info.value.detail == "the consent service could not be reached"
    assert service.uses(ALICE, consent.id, now=T0 + timedelta(seconds=2)) == []


def test_the_remote_gate_takes_a_5xx_for_unavailable_never_for_an_answer(
    service: ConsentService, grant: GrantFn
) -> None:
    """A gateway in front of the service that fails answers 502 (with a body that would allow)."""
    consent = grant()
    gateway = FastAPI()

    @gateway.post(f"{API}/gate/use")
    async def broken() -> JSONResponse:
        return JSONResponse({"allow": True, "consent_id": consent.id, "fields": []}, 502)

    with TestClient(gateway) as http:
        gate = RemoteConsentGate(
            str(http.base_url), signer_for(PROVIDER_NODE), service.verifier, http_client=http
        )
        with pytest.raises(UnavailableError, match="HTTP 502"):
            gate.use(query(consent, now=T0 + timedelta(seconds=1)))


def _counts(metrics: ConsentMetrics) -> dict[tuple[str, ...], float]:
    return {
        (sample.name, *sample.labels.values()): sample.value
        for family in metrics.collect()
        for sample in family.samples
        if sample.name.endswith("_total")
    }


def test_gate_answers_and_citizen_actions_are_counted(
    client: TestClient,
    service: ConsentService,
    issuer: DevIssuer,
    grant: GrantFn,
    metrics: ConsentMetrics,
) -> None:
    consent = grant()
    gate = remote(client, service)
    assert gate.check(query(consent, now=T0))
    assert gate.use(query(consent, now=T0))
    assert not gate.use(query(consent, now=T0))  # one-time consent: spent
    created = ask(client)
    alice = auth(issuer, ALICE)
    approved = client.post(f"{API}/consent-requests/{created.json()['id']}/approve", headers=alice)
    client.post(f"{API}/consents/{approved.json()['id']}/revoke", headers=alice)
    counts = _counts(metrics)
    assert counts[("onceonly_consent_gate_total", "check", "allow")] == 1
    assert counts[("onceonly_consent_gate_total", "use", "allow")] == 1
    assert counts[("onceonly_consent_gate_total", "use", "deny")] == 1
    for action in ("request", "approve", "revoke"):
        assert counts[("onceonly_consent_actions_total", action)] == 1


def test_a_consumers_own_pseudonym_is_refused_without_a_translator_to_resolve_it(
    client: TestClient,
) -> None:
    problem = assert_problem(ask(client, subject="gas-code-1", subject_agency="client"), 400)
    assert problem["code"] == "Client.SubjectAgencyUnsupported"


def test_a_consumers_own_pseudonym_is_resolved_and_the_answer_keeps_its_code(
    service: ConsentService, issuer: DevIssuer
) -> None:
    codes = {(str(GAS), "gas-code-1"): ALICE}

    def resolve(client: ClientId, code: str, _now: datetime) -> str:
        found = codes.get((str(client), code))
        if found is None:
            raise NotFoundError("unknown pseudonym")
        return found

    app = FastAPI()
    install_problem_handlers(app)
    app.include_router(
        build_citizen_router(
            service,
            issuer.verifier(),
            authenticate_consumer=authenticate_consumer,
            resolve_subject=resolve,
        )
    )
    with TestClient(app) as tc:
        made = ask(tc, subject="gas-code-1", subject_agency="client")
        assert made.status_code == 201, made.text
        assert made.json()["subject"] == "gas-code-1"
        mine = tc.get(f"{API}/consent-requests", headers=auth(issuer, ALICE)).json()
        assert [r["id"] for r in mine] == [made.json()["id"]]
        assert mine[0]["subject"] == ALICE
        assert_problem(ask(tc, subject="gas-code-2", subject_agency="client"), 404)


def test_the_service_never_stores_a_request_naming_a_consumers_unresolved_code(
    service: ConsentService,
) -> None:
    terms = request_input(subject="gas-code-1", subject_agency="client")
    with pytest.raises(ClientError):
        service.create_request(GAS, terms, now=T0)
    assert service.list_requests("gas-code-1", now=T0) == []


def test_a_request_for_services_or_fields_the_registry_lacks_is_refused(
    service: ConsentService, issuer: DevIssuer
) -> None:
    """A consumer cannot ask a citizen to consent to what does not exist: a service the central
    registry does not list (with or without its version), or a field none of them carries."""
    from exchange.central_config import RegistryDocument, ServiceEntry, VerifiedRegistry

    registry = VerifiedRegistry(
        RegistryDocument(
            instance="JP",
            serial=1,
            issued_at=T0,
            expires_at=T0 + timedelta(days=1),
            ca_certificate="(not used here)",
            services=(
                ServiceEntry(id=f"{ADDRESS}/v1", fields=("address", "postal_code", "moved_in_on")),
            ),
        )
    )
    app = FastAPI()
    install_problem_handlers(app)
    app.include_router(
        build_citizen_router(
            service,
            issuer.verifier(),
            authenticate_consumer=authenticate_consumer,
            unknown_services=lambda terms, _client: registry.lacks(terms.services, terms.fields),
        )
    )
    with TestClient(app) as tc:
        assert ask(tc).status_code == 201  # an id without its version stands for any version
        assert ask(tc, services=[f"{ADDRESS}/v1"]).status_code == 201
        for over, words in (
            ({"services": [f"{ADDRESS}/v2"]}, "no service"),
            ({"services": ["JP/GOV/132098/nowhere/address"]}, "no service"),
            ({"fields": ["address", "income"]}, "no field income"),
        ):
            problem = assert_problem(ask(tc, **over), 400)
            assert problem["code"] == "Client.UnknownService"
            assert words in problem["detail"]
