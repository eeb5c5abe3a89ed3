"""Every refusal is audited (docs/protocol.md §7): each refusal class the table lists is provoked
against real apps — two nodes and the consent service, with real keys and a real signed registry —
and its entry is found in the log of the party that refused.

The table is read from docs/protocol.md, so a class added there without a way to provoke it here
fails, and so does one provoked here that the table does not list.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from sqlalchemy import func, select

from consent.api import build_citizen_router, build_gate_router
from consent.artefact import ConsentIssuerKey
from consent.lifecycle import ConsentService
from exchange.certificates import certificate_info, load_certificate
from exchange.db import make_engine, upgrade
from exchange.identifiers import ClientId, ServiceId
from exchange.keystore import KeyStore
from exchange.node_requests import VerifiedNodeRequest, sign_node_request, verify_node_request
from exchange.ports import AuditEvent
from exchange.signing import MemberSigner, load_private_key
from exchange.store import MessageLogRow
from exchange.tokens import DevIssuer
from exchange.web.problems import install_problem_handlers, problem_response
from tests.exchange._federation import (
    ADDRESS,
    ADDRESS_CHANGED,
    GAS,
    RESIDENTS,
    TAX,
    Federation,
    ReServingAdapter,
    build_federation,
    node_client,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)  # TestClient prefers httpx2 (not a dependency)
    from fastapi.testclient import TestClient

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
CONSENT = "/consent/v1"
CONSENT_LOG = "consent-service"
MAX_SKEW_S = 60
HUGE = 11 * 1024 * 1024
"""Over the nodes' 10 MiB limit on a request body."""


def documented_classes() -> set[tuple[str, int, str]]:
    """``(where, status, code)`` of every row of the table in docs/protocol.md §7."""
    section = DOC.read_text(encoding="utf-8").split("## 7. Refusal classes", 1)[1]
    rows = re.findall(
        r"^\| (consumer|metaservice|provider|node API|consent service) \| (\d{3}) \| `([\w.]+)` \|",
        section,
        re.M,
    )
    return {(where, int(status), code) for where, status, code in rows}


class ListAudit:
    """The consent service's audit sink, kept in memory for the assertions."""

    def __init__(self) -> None:
        self.events: list[AuditEvent] = []

    def record(self, event: AuditEvent) -> None:
        self.events.append(event)


@dataclass
class World:
    fed: Federation
    consent: ConsentService
    consent_audit: ListAudit
    consent_app: TestClient
    citizens: DevIssuer

    # -- the nodes ------------------------------------------------------------------------------

    def node(
        self,
        member: object,
        method: str,
        path: str,
        *,
        headers: dict[str, str] | None = None,
        content: Any = None,
    ) -> httpx.Response:
        async def go() -> httpx.Response:
            async with node_client(self.fed, member) as c:
                return await c.request(method, path, headers=headers, content=content)

        return asyncio.run(go())

    def r1(
        self, client: ClientId = TAX, path: str = f"/r1/{ADDRESS}", **over: str
    ) -> httpx.Response:
        headers = {
            "X-Road-Client": str(client),
            "X-OnceOnly-Api-Key": self.fed.api_keys[client],
            "X-OnceOnly-Purpose": "tax-assessment",
            "X-OnceOnly-Subject": "sub-1",
        }
        headers.update(over)
        return self.node(client.member, "GET", path, headers={k: v for k, v in headers.items()})

    def node_entries(self, member: object, status: int, code: str) -> int:
        with self.fed.central_engine.connect() as conn:
            found = conn.execute(
                select(func.count())
                .select_from(MessageLogRow)
                .where(
                    MessageLogRow.node == str(member),
                    MessageLogRow.kind == "refusal",
                    MessageLogRow.status == status,
                    MessageLogRow.reason.like(f"{code}:%"),
                )
            ).scalar_one()
        return int(found)

    # -- the consent service --------------------------------------------------------------------

    def signed(self, client: ClientId, path: str, body: bytes) -> dict[str, str]:
        signer = MemberSigner(load_private_key(KeyStore(self.fed.data_dir).subsystem_key(client)))
        return {
            "content-type": "application/json",
            **sign_node_request(signer, client, "POST", path, body, now=datetime.now(UTC)),
        }

    def citizen(
        self, subject: str = "sub-1", roles: tuple[str, ...] = ("citizen",)
    ) -> dict[str, str]:
        return {"authorization": f"Bearer {self.citizens.issue(subject, roles=roles)}"}

    def consent_entries(self, status: int, code: str) -> int:
        return sum(
            1
            for e in self.consent_audit.events
            if e.kind == "refusal"
            and e.status == status
            and (e.reason or "").startswith(f"{code}:")
        )


def request_terms(subject: str = "sub-1") -> bytes:
    now = datetime.now(UTC)
    return json.dumps(
        {
            "subject": subject,
            "client": str(GAS),
            "services": [str(ADDRESS)],
            "purpose": {"code": "address-change", "text_ja": "住所変更", "text_en": "Address"},
            "fields": ["address"],
            "valid_from": now.isoformat(),
            "valid_until": (now + timedelta(days=30)).isoformat(),
            "mode": "one-time",
            "data_retention_days": 30,
            "legal_text_version": "2026-10",
        }
    ).encode()


def gate_query(consent_id: str = "c-unknown") -> bytes:
    return json.dumps(
        {
            "consent_id": consent_id,
            "client": str(TAX),
            "service": str(ADDRESS),
            "purpose": "tax-assessment",
            "fields": ["address"],
            "message_id": "m-1",
        }
    ).encode()


@pytest.fixture
def world(tmp_path: Path, make_db_url: Callable[[], str]) -> Iterator[World]:
    consent_engine = make_engine(make_db_url())
    upgrade(consent_engine)
    audit = ListAudit()
    service = ConsentService(
        consent_engine,
        issuer_key=ConsentIssuerKey.generate(issuer="JP/GOV/consent-bank"),
        audit=audit,
        node=CONSENT_LOG,
    )
    # The consent service is the provider's consent gate, in process (the ConsentGate port).
    fed = build_federation(tmp_path, make_db_url(), consent=service)
    registry = fed.nodes[str(RESIDENTS.member)].state.registry

    async def authenticate(request: Request, body: bytes) -> VerifiedNodeRequest:
        now = datetime.now(UTC)
        return verify_node_request(
            registry.current(now),
            dict(request.headers),
            request.method,
            request.url.path,
            body,
            now=now,
            max_skew_s=MAX_SKEW_S,
        )

    citizens = DevIssuer.load_or_create(tmp_path / "citizens", issuer="dev", audience="onceonly")
    app = FastAPI()
    install_problem_handlers(app)
    app.include_router(
        build_citizen_router(service, citizens.verifier(), authenticate_consumer=authenticate)
    )
    app.include_router(build_gate_router(service, authenticate))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield World(fed, service, audit, client, citizens)
    fed.central_engine.dispose()
    consent_engine.dispose()


# -- how each class is provoked: a response and the count of matching entries in the right log --


Provoked = tuple[httpx.Response, Callable[[], int]]


def _at_consumer(w: World, r: httpx.Response, status: int, code: str) -> Provoked:
    return r, lambda: w.node_entries(TAX.member, status, code)


def _at_provider(w: World, r: httpx.Response, status: int, code: str) -> Provoked:
    return r, lambda: w.node_entries(RESIDENTS.member, status, code)


def _at_consent(w: World, r: httpx.Response, status: int, code: str) -> Provoked:
    return r, lambda: w.consent_entries(status, code)


def _passed_on(w: World) -> httpx.Response:
    """The address received under "no onward transfer", then asked of a service re-serving it."""
    assert w.fed.adapter is not None
    w.fed.adapter.__class__ = ReServingAdapter  # the same records, one more service
    digest = ServiceId(RESIDENTS, "digest", "v1")
    w.fed.admin.add_service(
        digest, description="digest", fields=("address",), purposes=("tax-assessment",)
    )
    w.fed.admin.grant(TAX, digest)
    w.fed.refresh()
    received = w.r1()
    assert json.loads(received.headers["x-onceonly-usage-terms"])["onward"] is False
    return w.r1(path=f"/r1/{digest}")


def _revoked_signer(w: World) -> httpx.Response:
    pem = KeyStore(w.fed.data_dir).subsystem_cert(TAX).read_text()
    w.fed.admin.revoke_certificate(certificate_info(load_certificate(pem)).fingerprint)
    w.fed.refresh()
    return w.r1()


def _swapped_body(wire: bytes) -> bytes:
    message = json.loads(wire)
    message["body"] = base64.b64encode(b'{"name": "someone else"}').decode()
    return json.dumps(message).encode()


def _tampered(w: World) -> httpx.Response:
    w.fed.transport.tamper = _swapped_body
    return w.r1()


def _down(w: World) -> httpx.Response:
    w.fed.transport.down.add("http://machida")
    return w.r1()


def _provider_unavailable(w: World) -> httpx.Response:
    """The provider node is there but its database is down: it answers 503, unsigned."""
    unavailable = FastAPI()

    @unavailable.post("/x1/messages")
    async def messages() -> Any:
        return problem_response(503, "Server.ServerProxy.DatabaseError", "down", retry_after_s=7)

    w.fed.transport.apps["http://machida"] = unavailable
    return w.r1()


def _replayed_exchange(w: World) -> httpx.Response:
    assert w.r1(**{"X-Road-Id": "same-id"}).status_code == 200
    return w.r1(**{"X-Road-Id": "same-id"})


def _replayed_consent_request(w: World) -> httpx.Response:
    body = request_terms()
    headers = w.signed(GAS, f"{CONSENT}/consent-requests", body)
    assert (
        w.consent_app.post(f"{CONSENT}/consent-requests", content=body, headers=headers).status_code
        == 201
    )
    return w.consent_app.post(f"{CONSENT}/consent-requests", content=body, headers=headers)


def _consent_request_via_node(w: World, *, client: ClientId) -> httpx.Response:
    """Q1–Q3 at TAX's node (``/platform/v1/consent-requests``); this federation's registry names
    no consent service, so a request that passes Q2 is answered 503."""
    body = json.loads(request_terms())
    body["client"] = str(client)
    return w.node(
        TAX.member,
        "POST",
        "/platform/v1/consent-requests",
        headers={"X-Road-Client": str(TAX), "X-OnceOnly-Api-Key": w.fed.api_keys[TAX]},
        content=json.dumps(body).encode(),
    )


def _illegal_transition(w: World) -> httpx.Response:
    body = request_terms()
    created = w.consent_app.post(
        f"{CONSENT}/consent-requests",
        content=body,
        headers=w.signed(GAS, f"{CONSENT}/consent-requests", body),
    )
    assert created.status_code == 201, created.text
    approved = w.consent_app.post(
        f"{CONSENT}/consent-requests/{created.json()['id']}/approve", headers=w.citizen()
    )
    assert approved.status_code == 200, approved.text
    consent = approved.json()["id"]
    assert (
        w.consent_app.post(f"{CONSENT}/consents/{consent}/revoke", headers=w.citizen()).status_code
        == 200
    )
    return w.consent_app.post(f"{CONSENT}/consents/{consent}/resume", headers=w.citizen())


PROVOKE: dict[tuple[str, int, str], Callable[[World], Provoked]] = {
    ("consumer", 413, "Client.PayloadTooLarge"): lambda w: _at_consumer(
        w,
        w.node(
            TAX.member,
            "POST",
            f"/r1/{ADDRESS}",
            headers={"X-Road-Client": str(TAX), "X-OnceOnly-Api-Key": w.fed.api_keys[TAX]},
            content=b"x" * HUGE,
        ),
        413,
        "Client.PayloadTooLarge",
    ),
    ("consumer", 400, "Client.MissingClient"): lambda w: _at_consumer(
        w, w.r1(**{"X-Road-Client": ""}), 400, "Client.MissingClient"
    ),
    ("consumer", 401, "Client.Unauthenticated"): lambda w: _at_consumer(
        w, w.r1(**{"X-OnceOnly-Api-Key": "oo_wrong"}), 401, "Client.Unauthenticated"
    ),
    ("consumer", 400, "Client.InvalidServiceId"): lambda w: _at_consumer(
        w, w.r1(path="/r1/JP/GOV"), 400, "Client.InvalidServiceId"
    ),
    ("consumer", 404, "Server.ServerProxy.UnknownService"): lambda w: _at_consumer(
        w,
        w.r1(path=f"/r1/{RESIDENTS}/nosuch"),
        404,
        "Server.ServerProxy.UnknownService",
    ),
    ("consumer", 400, "Client.MissingPurpose"): lambda w: _at_consumer(
        w, w.r1(**{"X-OnceOnly-Purpose": ""}), 400, "Client.MissingPurpose"
    ),
    ("consumer", 400, "Client.InvalidIdentifier"): lambda w: _at_consumer(
        w, w.r1(**{"X-OnceOnly-Subject": "not an id"}), 400, "Client.InvalidIdentifier"
    ),
    ("consumer", 502, "Server.ServerProxy.NetworkError"): lambda w: _at_consumer(
        w, _down(w), 502, "Server.ServerProxy.NetworkError"
    ),
    ("consumer", 502, "Server.ServerProxy.ProviderError"): lambda w: _at_consumer(
        w, _revoked_signer(w), 502, "Server.ServerProxy.ProviderError"
    ),
    ("consumer", 503, "Server.ServerProxy.ProviderUnavailable"): lambda w: _at_consumer(
        w, _provider_unavailable(w), 503, "Server.ServerProxy.ProviderUnavailable"
    ),
    ("consumer", 502, "Server.ServerProxy.InvalidResponse"): lambda w: _at_consumer(
        w, _tampered(w), 502, "Server.ServerProxy.InvalidResponse"
    ),
    ("consumer", 403, "Client.Forbidden"): lambda w: _at_consumer(
        w, _consent_request_via_node(w, client=GAS), 403, "Client.Forbidden"
    ),
    ("consumer", 503, "Server.ServerProxy.ConsentServiceUnavailable"): lambda w: _at_consumer(
        w,
        _consent_request_via_node(w, client=TAX),
        503,
        "Server.ServerProxy.ConsentServiceUnavailable",
    ),
    ("metaservice", 401, "Client.Unauthenticated"): lambda w: _at_consumer(
        w,
        w.r1(path=f"/r1/{RESIDENTS}/allowedMethods", **{"X-OnceOnly-Api-Key": "oo_wrong"}),
        401,
        "Client.Unauthenticated",
    ),
    ("metaservice", 404, "Server.ServerProxy.UnknownService"): lambda w: _at_consumer(
        w,
        w.r1(path="/r1/JP/GOV/132098/nosuch/listMethods"),
        404,
        "Server.ServerProxy.UnknownService",
    ),
    ("consumer", 405, "Client.MethodNotAllowed"): lambda w: _at_consumer(
        w,
        w.node(
            TAX.member,
            "OPTIONS",
            f"/r1/{ADDRESS}",
            headers={"X-Road-Client": str(TAX), "X-OnceOnly-Api-Key": w.fed.api_keys[TAX]},
        ),
        405,
        "Client.MethodNotAllowed",
    ),
    ("metaservice", 405, "Client.MethodNotAllowed"): lambda w: _at_consumer(
        w,
        w.node(TAX.member, "POST", f"/r1/{RESIDENTS}/listMethods"),
        405,
        "Client.MethodNotAllowed",
    ),
    ("provider", 413, "Client.PayloadTooLarge"): lambda w: _at_provider(
        w,
        w.node(RESIDENTS.member, "POST", "/x1/messages", content=b"x" * HUGE),
        413,
        "Client.PayloadTooLarge",
    ),
    ("provider", 400, "Server.ServerProxy.InvalidSignature"): lambda w: _at_provider(
        w,
        w.node(RESIDENTS.member, "POST", "/x1/messages", content=b"{not a message"),
        400,
        "Server.ServerProxy.InvalidSignature",
    ),
    ("provider", 403, "Server.ServerProxy.OnwardTransferRefused"): lambda w: _at_provider(
        w, _passed_on(w), 403, "Server.ServerProxy.OnwardTransferRefused"
    ),
    ("provider", 409, "Server.ServerProxy.Replay"): lambda w: _at_provider(
        w, _replayed_exchange(w), 409, "Server.ServerProxy.Replay"
    ),
    ("provider", 403, "Server.ServerProxy.AccessDenied"): lambda w: _at_provider(
        w, w.r1(GAS), 403, "Server.ServerProxy.AccessDenied"
    ),
    ("provider", 403, "Server.ServerProxy.ConsentRefused"): lambda w: _at_provider(
        w,
        w.r1(**{"X-OnceOnly-Consent-Id": "c-unknown"}),
        403,
        "Server.ServerProxy.ConsentRefused",
    ),
    ("provider", 400, "Client.SubjectRequired"): lambda w: _at_provider(
        w,
        w.node(
            TAX.member,
            "POST",
            f"/r1/{ADDRESS_CHANGED}",
            headers={
                "X-Road-Client": str(TAX),
                "X-OnceOnly-Api-Key": w.fed.api_keys[TAX],
                "X-OnceOnly-Purpose": "tax-assessment",
            },
        ),
        400,
        "Client.SubjectRequired",
    ),
    ("node API", 401, "Client.Unauthenticated"): lambda w: _at_consumer(
        w,
        w.node(TAX.member, "GET", "/changes/v1", headers={"X-Road-Client": str(TAX)}),
        401,
        "Client.Unauthenticated",
    ),
    ("node API", 400, "Client.BadRequest"): lambda w: _at_consumer(
        w,
        w.node(
            TAX.member,
            "GET",
            "/changes/v1?after=-1",
            headers={"X-Road-Client": str(TAX), "X-OnceOnly-Api-Key": w.fed.api_keys[TAX]},
        ),
        400,
        "Client.BadRequest",
    ),
    ("node API", 404, "Client.UnknownObligation"): lambda w: _at_consumer(
        w,
        w.node(
            TAX.member,
            "POST",
            "/obligations/no-such-message/deleted",
            headers={"X-Road-Client": str(TAX), "X-OnceOnly-Api-Key": w.fed.api_keys[TAX]},
        ),
        404,
        "Client.UnknownObligation",
    ),
    ("consent service", 413, "Client.PayloadTooLarge"): lambda w: _at_consent(
        w,
        w.consent_app.post(f"{CONSENT}/consent-requests", content=b"x" * 70_000),
        413,
        "Client.PayloadTooLarge",
    ),
    ("consent service", 401, "Client.Unauthenticated"): lambda w: _at_consent(
        w,
        w.consent_app.post(f"{CONSENT}/gate/use", content=gate_query()),
        401,
        "Client.Unauthenticated",
    ),
    ("consent service", 409, "Server.ServerProxy.Replay"): lambda w: _at_consent(
        w, _replayed_consent_request(w), 409, "Server.ServerProxy.Replay"
    ),
    ("consent service", 403, "Client.Forbidden"): lambda w: _at_consent(
        w,
        w.consent_app.get(f"{CONSENT}/consents", headers=w.citizen("auditor-1", ("auditor",))),
        403,
        "Client.Forbidden",
    ),
    ("consent service", 400, "Client.BadRequest"): lambda w: _at_consent(
        w,
        w.consent_app.get(
            f"{CONSENT}/consents/c-1/receipts/r-1", params={"format": "pdf"}, headers=w.citizen()
        ),
        400,
        "Client.BadRequest",
    ),
    ("consent service", 404, "Client.NotFound"): lambda w: _at_consent(
        w,
        w.consent_app.get(f"{CONSENT}/consents/c-not-mine", headers=w.citizen()),
        404,
        "Client.NotFound",
    ),
    ("consent service", 409, "Client.Conflict"): lambda w: _at_consent(
        w, _illegal_transition(w), 409, "Client.Conflict"
    ),
}


def test_every_documented_refusal_class_is_provoked_here_and_no_other() -> None:
    documented = documented_classes()
    assert len(documented) >= 20  # the table was found and read
    assert set(PROVOKE) == documented


@pytest.mark.parametrize("refusal", sorted(PROVOKE), ids=lambda r: f"{r[0]}-{r[1]}-{r[2]}")
def test_each_refusal_class_answers_its_problem_and_leaves_an_audit_entry(
    world: World, refusal: tuple[str, int, str]
) -> None:
    _, status, code = refusal
    response, entries = PROVOKE[refusal](world)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == code
    assert entries() >= 1, f"no audit entry for {refusal}"


# -- the findings of issue #14, one by one -------------------------------------------------------


@pytest.mark.parametrize("with_key", [True, False])
def test_an_oversized_body_to_r1_is_413_and_audited_with_or_without_a_valid_key(
    world: World, with_key: bool
) -> None:
    headers = {"X-Road-Client": str(TAX)}
    if with_key:
        headers["X-OnceOnly-Api-Key"] = world.fed.api_keys[TAX]
    r = world.node(TAX.member, "POST", f"/r1/{ADDRESS}", headers=headers, content=b"x" * HUGE)
    assert r.status_code == 413
    assert r.json()["type"].endswith("/client.payloadtoolarge")
    assert world.node_entries(TAX.member, 413, "Client.PayloadTooLarge") == 1


def test_an_oversized_body_streamed_without_a_length_is_413_and_audited(world: World) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(HUGE // (1024 * 1024)):
            yield b"x" * (1024 * 1024)

    async def go() -> httpx.Response:
        async def stream() -> Any:
            for chunk in chunks():
                yield chunk

        async with node_client(world.fed, RESIDENTS.member) as c:
            return await c.post("/x1/messages", content=stream())

    r = asyncio.run(go())
    assert r.status_code == 413
    assert world.node_entries(RESIDENTS.member, 413, "Client.PayloadTooLarge") == 1


@pytest.mark.parametrize("name", ["allowedMethods", "getOpenAPI"])
def test_a_metaservice_asked_with_a_bad_api_key_is_audited(world: World, name: str) -> None:
    r = world.r1(path=f"/r1/{RESIDENTS}/{name}", **{"X-OnceOnly-Api-Key": "oo_wrong"})
    assert r.status_code == 401
    assert world.node_entries(TAX.member, 401, "Client.Unauthenticated") == 1


def test_an_unsigned_gate_use_and_a_forged_bearer_on_revoke_are_audited(world: World) -> None:
    unsigned = world.consent_app.post(f"{CONSENT}/gate/use", content=gate_query())
    forged = world.consent_app.post(
        f"{CONSENT}/consents/c-1/revoke", headers={"authorization": "Bearer x.y.z"}
    )
    assert (unsigned.status_code, forged.status_code) == (401, 401)
    routes = [e.extra.get("route") for e in world.consent_audit.events if e.kind == "refusal"]
    assert routes == [
        f"POST {CONSENT}/gate/use",
        f"POST {CONSENT}/consents/{{consent_id}}/revoke",
    ]
    assert all(e.subject is None for e in world.consent_audit.events)


def test_a_replayed_signed_consent_request_is_refused_and_creates_nothing(world: World) -> None:
    r = _replayed_consent_request(world)
    assert r.status_code == 409
    assert r.json()["code"] == "Server.ServerProxy.Replay"
    pending = world.consent_app.get(f"{CONSENT}/consent-requests", headers=world.citizen())
    assert len(pending.json()) == 1
    assert world.consent_entries(409, "Server.ServerProxy.Replay") == 1
    replay = next(e for e in world.consent_audit.events if e.kind == "refusal")
    assert replay.client == str(GAS)


def test_a_replayed_signed_gate_use_is_refused_and_audited(world: World) -> None:
    body = gate_query()
    path = f"{CONSENT}/gate/use"
    headers = world.signed(RESIDENTS, path, body)
    first = world.consent_app.post(path, content=body, headers=headers)
    assert first.status_code == 200, first.text
    assert first.json()["allow"] is False  # no such consent: refused by the gate, audited there
    again = world.consent_app.post(path, content=body, headers=headers)
    assert again.status_code == 409
    assert again.json()["code"] == "Server.ServerProxy.Replay"
    assert world.consent_entries(409, "Server.ServerProxy.Replay") == 1


def test_a_gate_check_signed_anew_is_not_a_replay(world: World) -> None:
    """Only what changes state is remembered; each request the node signs is a new one."""
    body = gate_query()
    path = f"{CONSENT}/gate/check"
    for _ in range(2):
        r = world.consent_app.post(path, content=body, headers=world.signed(RESIDENTS, path, body))
        assert r.status_code == 200, r.text
