"""Exchanges through the central pseudonym translator, in process (docs/pseudonyms.md).

Real keys, a real signed registry, the real translator over a real pseudonym store and
transparency log, real node apps; only the HTTP hops are in-memory ASGI peers."""

from __future__ import annotations

import asyncio
import base64
import json
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from fastapi import Request
from sqlalchemy import select

from adapters.pseudonyms import PseudonymService
from adapters.translator import TRANSLATOR_PATH, PseudonymTranslator, build_translator_router
from adapters.translator_client import HttpCitizenCodes, HttpSubjectSealer
from audit.checkpoint import NoteSigner
from audit.log import TransparencyLog
from audit.sink import LogSink
from exchange.canonical import sha256_b64
from exchange.db import make_engine, upgrade
from exchange.envelope import RequestEnvelope, parse_unverified_response, seal_request
from exchange.errors import VerificationError
from exchange.identifiers import ClientId
from exchange.keystore import KeyStore
from exchange.node.app import NodeParts, create_node_app
from exchange.node.central import create_central_app
from exchange.node_requests import VerifiedNodeRequest, sign_node_request, verify_node_request
from exchange.ports import CITIZEN_AGENCY, SubjectTokenRequest
from exchange.provisioning import (
    init_instance,
    issue_api_key,
    provision_sealing_key,
    provision_subsystem,
    provision_translator_key,
)
from exchange.registry_admin import RegistryAdmin
from exchange.sealing import SealingKey
from exchange.settings import Settings
from exchange.signing import CentralSigner, MemberSigner, TranslatorSigner, load_private_key
from exchange.store import MessageLogRow
from exchange.subject_token import SealedSubject, issue_subject_token, open_subject_token
from exchange.tokens import DevIssuer, Principal
from tests.exchange._federation import (
    ADDRESS,
    GAS,
    RESIDENTS,
    TAX,
    AsgiTransport,
    ResidentsAdapter,
    node_client,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)  # TestClient prefers httpx2 (not a dependency)
    from fastapi.testclient import TestClient

CODES = {CITIZEN_AGENCY: "C-1", str(RESIDENTS): "sub-1", str(TAX): "tax-1", str(GAS): "gas-1"}


@dataclass
class World:
    keys: KeyStore
    admin: RegistryAdmin
    adapter: ResidentsAdapter
    nodes: dict[str, object]
    sealers: dict[str, HttpSubjectSealer]
    api_keys: dict[ClientId, str]
    translator_log: TransparencyLog
    transport: AsgiTransport
    engine: object
    central: object


@pytest.fixture
def world(tmp_path: Path, db_url: str) -> Iterator[World]:
    now = datetime.now(UTC)
    keys = KeyStore(tmp_path / "data")
    init_instance(keys, "JP", now=now)
    settings = Settings(
        data_dir=keys.root,
        central_url="http://central",
        database_url=db_url,
        allow_dev_issuer=True,  # the tests' citizens sign in with the development issuer
    )
    engine = make_engine(db_url)
    upgrade(engine)
    admin = RegistryAdmin(engine)
    for member, addr in ((RESIDENTS.member, "http://machida"), (GAS.member, "http://gas")):
        admin.add_member(member, str(member), address=addr)
    for c in (RESIDENTS, TAX, GAS):
        admin.add_subsystem(c)
        admin.add_certificate(c, provision_subsystem(keys, c, now=now))
        admin.set_seal_key(c, provision_sealing_key(keys, c))
    admin.add_service(
        ADDRESS, fields=("name", "address"), purposes=("tax-assessment", "address-change")
    )
    admin.grant(TAX, ADDRESS)
    admin.set_translator("http://central", provision_translator_key(keys))
    tokens = iter(CODES.values())
    PseudonymService(engine, tuple(CODES), token=lambda: next(tokens)).enrol("master-1")
    log = TransparencyLog(engine, log_id="pseudonym-translator", signer=NoteSigner.generate("t"))
    translator = PseudonymTranslator(
        PseudonymService(engine, tuple(CODES)),
        TranslatorSigner(load_private_key(keys.translator_key)),
        LogSink(log, engine),
    )

    citizens = DevIssuer.load_or_create(keys.root, issuer="t", audience="t").verifier()

    def routers(view):  # type: ignore[no-untyped-def]
        async def authenticate(request: Request, body: bytes) -> VerifiedNodeRequest:
            now = datetime.now(UTC)
            return verify_node_request(
                view(now),
                dict(request.headers),
                "POST",
                request.url.path,
                body,
                now=now,
                max_skew_s=60,
            )

        return [
            build_translator_router(
                translator,
                authenticate,
                view,
                lambda: datetime.now(UTC),
                citizen_of=lambda token: citizens.verify(token).subject,
            )
        ]

    central = create_central_app(settings, engine=engine, routers=routers)
    transport = AsgiTransport()
    transport.apps["http://central"] = central
    adapter = ResidentsAdapter({"sub-1": {"name": "町田 太郎", "address": "原町田1-1-1"}})
    nodes: dict[str, object] = {}
    sealers: dict[str, HttpSubjectSealer] = {}
    for member, addr in ((RESIDENTS.member, "http://machida"), (GAS.member, "http://gas")):
        hosted = keys.hosted_subsystems(member)
        sealer = HttpSubjectSealer(
            {c: MemberSigner(load_private_key(keys.subsystem_key(c))) for c in hosted},
            timeout_s=5,
            http_client=httpx.AsyncClient(transport=httpx.ASGITransport(app=central)),
        )
        parts = NodeParts(
            adapters={RESIDENTS: adapter} if member == RESIDENTS.member else {},
            sealer=sealer,
            on_registry=(sealer.on_registry,),
            inline=True,
        )
        app = create_node_app(settings, member, parts, engine=engine, transport=transport)
        transport.apps[addr] = app
        nodes[str(member)] = app
        sealers[str(member)] = sealer
    api_keys = {c: issue_api_key(engine, node=str(c.member), client=c, now=now) for c in (TAX, GAS)}
    w = World(keys, admin, adapter, nodes, sealers, api_keys, log, transport, engine, central)
    _refresh(w)
    yield w
    engine.dispose()


def _refresh(w: World) -> None:
    signed = w.admin.publish(
        CentralSigner(load_private_key(w.keys.central_key)),
        instance="JP",
        ca_pem=w.keys.ca_cert.read_text(),
        central_url="http://central",
        now=datetime.now(UTC),
    ).to_bytes()
    for app in w.nodes.values():
        app.state.registry.accept(signed, now=datetime.now(UTC))  # type: ignore[attr-defined]


def _call(
    w: World, client: ClientId, subject: str, purpose: str = "tax-assessment"
) -> httpx.Response:
    async def go() -> httpx.Response:
        async with node_client(w, client.member) as c:  # type: ignore[arg-type]
            return await c.get(
                f"/r1/{ADDRESS}",
                headers={
                    "X-Road-Client": str(client),
                    "X-OnceOnly-Api-Key": w.api_keys[client],
                    "X-OnceOnly-Purpose": purpose,
                    "X-OnceOnly-Subject": subject,
                },
            )

    return asyncio.run(go())


def _translator_entries(w: World) -> list[dict[str, object]]:
    log = w.translator_log
    return [log.entry(i).record for i in range(log.size())]


def test_provider_receives_its_own_code_and_the_consumer_reuses_the_token(world: World) -> None:
    w = world
    first = _call(w, TAX, "tax-1")
    assert first.status_code == 200, first.text
    assert first.json() == {"name": "町田 太郎", "address": "原町田1-1-1"}
    assert w.adapter.calls[-1].subject == "sub-1"
    assert _call(w, TAX, "tax-1").status_code == 200
    sealer = w.sealers[str(TAX.member)]
    assert (sealer.misses, sealer.hits) == (1, 1)
    [entry] = _translator_entries(w)
    assert entry["kind"] == "translation"
    assert entry["subject"] == "tax-1"
    assert "sub-1" not in json.dumps(entry)


def test_translator_refuses_and_audits_a_client_without_an_access_right(world: World) -> None:
    w = world
    refused = _call(w, GAS, "gas-1", "address-change")
    assert refused.status_code == 403
    assert w.adapter.calls == []
    [entry] = _translator_entries(w)
    assert entry["kind"] == "refusal"
    assert entry["client"] == str(GAS)


def test_an_unknown_code_is_refused_and_audited_with_one_answer(world: World) -> None:
    w = world
    assert _call(w, TAX, "no-such-code").status_code == 404
    [entry] = _translator_entries(w)
    assert entry["kind"] == "refusal"
    assert "Client.NotFound" in str(entry["reason"])


def _token_for_tax(w: World) -> str:
    return asyncio.run(
        w.sealers[str(TAX.member)].seal_subject(
            SubjectTokenRequest(TAX, "tax-1", ADDRESS, citizen=False, message_id="m-0")
        )
    )


def _send_raw(w: World, client: ClientId, *, subject: str | None, token: str | None) -> str | None:
    """A hand-built envelope signed by ``client``: the provider's signed answer's error code."""
    envelope = RequestEnvelope(
        message_id=f"raw-{datetime.now(UTC).timestamp()}",
        created_at=datetime.now(UTC),
        client=str(client),
        service=str(ADDRESS),
        method="GET",
        path="/",
        purpose="tax-assessment",
        subject=subject,
        subject_token=token,
        body_hash=sha256_b64(b""),
    )
    signer = MemberSigner(load_private_key(w.keys.subsystem_key(client)))
    wire, _ = seal_request(envelope, b"", signer)
    answer = asyncio.run(
        w.transport.post(
            "http://machida/x1/messages", wire, {"content-type": "application/json"}, timeout_s=5
        )
    )
    assert answer.status == 200
    return parse_unverified_response(answer.body).envelope.error_code


def _provider_refusals(w: World) -> list[str]:
    with w.engine.connect() as conn:  # type: ignore[attr-defined]
        rows = conn.execute(select(MessageLogRow.reason).where(MessageLogRow.kind == "refusal"))
        return [str(r) for (r,) in rows]


def test_a_token_moved_to_another_client_is_refused_and_audited(world: World) -> None:
    w = world
    w.admin.grant(GAS, ADDRESS)
    _refresh(w)
    token = _token_for_tax(w)
    assert _send_raw(w, GAS, subject=None, token=token) == "Server.ServerProxy.InvalidSubjectToken"
    assert any("InvalidSubjectToken" in r for r in _provider_refusals(w))
    assert w.adapter.calls == []


def test_a_tampered_token_is_refused(world: World) -> None:
    w = world
    raw = json.loads(base64.urlsafe_b64decode(_token_for_tax(w)))
    raw["claims"]["service"] = "JP/GOV/132098/resident-registry/person/v1"
    tampered = base64.urlsafe_b64encode(json.dumps(raw).encode()).decode()
    assert (
        _send_raw(w, TAX, subject=None, token=tampered) == "Server.ServerProxy.InvalidSubjectToken"
    )


def test_an_expired_token_is_refused(world: World) -> None:
    w = world
    token = issue_subject_token(
        signer=TranslatorSigner(load_private_key(w.keys.translator_key)),
        recipient=SealingKey.load(w.keys.subsystem_seal_key(RESIDENTS)).public_key,
        client=str(TAX),
        service=str(ADDRESS),
        provider=str(RESIDENTS),
        subject=SealedSubject(subject="sub-1"),
        now=datetime.now(UTC) - timedelta(minutes=10),
        ttl=timedelta(minutes=5),
    )
    assert _send_raw(w, TAX, subject=None, token=token) == "Server.ServerProxy.InvalidSubjectToken"


def test_a_plain_subject_is_refused_by_a_provider_taking_sealed_ones(world: World) -> None:
    w = world
    assert _send_raw(w, TAX, subject="sub-1", token=None) == "Client.PlainSubjectRefused"
    assert w.adapter.calls == []


def test_the_consumer_cannot_open_the_token(world: World) -> None:
    w = world
    token = _token_for_tax(w)
    for own in (TAX, GAS):
        with pytest.raises(VerificationError):
            open_subject_token(
                token,
                verifier=w.nodes[str(RESIDENTS.member)]
                .state.registry.current(  # type: ignore[attr-defined]
                    datetime.now(UTC)
                )
                .translator_verifier,
                key=SealingKey.load(w.keys.subsystem_seal_key(own)),
                client=str(TAX),
                service=str(ADDRESS),
                provider=str(RESIDENTS),
                now=datetime.now(UTC),
                max_skew_s=60,
            )


def test_the_translator_refuses_and_audits_unsigned_and_malformed_questions(world: World) -> None:
    w = world
    url = "http://central" + TRANSLATOR_PATH
    body = json.dumps({"subject": "tax-1", "service": str(ADDRESS), "message_id": "m"}).encode()
    unsigned = asyncio.run(w.transport.post(url, body, {}, timeout_s=5))
    assert unsigned.status == 401
    assert json.loads(unsigned.body)["code"] == "Client.Unauthenticated"
    signer = MemberSigner(load_private_key(w.keys.subsystem_key(TAX)))
    junk = b'{"subject": "tax-1"}'
    headers = sign_node_request(signer, TAX, "POST", TRANSLATOR_PATH, junk, now=datetime.now(UTC))
    malformed = asyncio.run(w.transport.post(url, junk, headers, timeout_s=5))
    assert malformed.status == 400
    first, second = _translator_entries(w)
    assert (first["kind"], first.get("client")) == ("refusal", None)
    assert "Client.Unauthenticated" in str(first["reason"])
    assert (second["kind"], second["client"]) == ("refusal", str(TAX))


def test_a_node_learns_a_citizens_codes_at_its_own_member_only_with_their_token(
    world: World,
) -> None:
    w = world
    issuer = DevIssuer.load_or_create(w.keys.root, issuer="t", audience="t")
    codes = HttpCitizenCodes(
        MemberSigner(load_private_key(w.keys.subsystem_key(TAX))),
        TAX,
        timeout_s=5,
        http_client=TestClient(w.central),  # type: ignore[arg-type]
    )
    registry = w.nodes[str(TAX.member)].state.registry.current(datetime.now(UTC))  # type: ignore[attr-defined]
    codes.on_registry(registry)
    citizen = issuer.verifier().verify(issuer.issue("C-1"))
    assert set(codes(citizen)) == {"C-1", "sub-1", "tax-1"}  # Machida's agencies, not gas's
    forged = Principal("C-1", frozenset({"citizen"}), token="not-a-token")
    assert set(codes(forged)) == {"C-1"}  # showing less is the safe failure
    allowed, refused = _translator_entries(w)
    assert (allowed["kind"], allowed["subject"], allowed["client"]) == (
        "translation",
        "C-1",
        str(TAX),
    )
    assert refused["kind"] == "refusal"
    assert "Client.Unauthenticated" in str(refused["reason"])
    codes.close()
