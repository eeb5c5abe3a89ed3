"""A full signed exchange between two real node apps (in-memory HTTP hop)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from exchange.identifiers import ServiceId
from exchange.ports import ConsentDecision, ConsentQuery
from tests.exchange._federation import (
    ADDRESS,
    ADDRESS_CHANGED,
    GAS,
    RESIDENTS,
    TAX,
    Federation,
    build_federation,
    node_client,
)


@pytest.fixture
def fed(tmp_path: Path, db_url: str) -> Iterator[Federation]:
    federation = build_federation(tmp_path, db_url)
    yield federation
    # The apps' lifespans never ran (in-memory transport): close their pools here.
    federation.central_engine.dispose()


def _headers(fed: Federation, client: object, **extra: str) -> dict[str, str]:
    h = {
        "X-Road-Client": str(client),
        "X-OnceOnly-Api-Key": fed.api_keys[client],  # type: ignore[index]
        "X-OnceOnly-Purpose": "tax-assessment",
        "X-OnceOnly-Subject": "sub-1",
    }
    h.update(extra)
    return h


def _call(fed: Federation, client: object, path: str = f"/r1/{ADDRESS}", **extra: str):  # type: ignore[no-untyped-def]
    async def go():  # type: ignore[no-untyped-def]
        async with node_client(fed, client.member) as c:  # type: ignore[attr-defined]
            return await c.get(path, headers=_headers(fed, client, **extra))

    return asyncio.run(go())


@pytest.mark.parametrize("db_work", ["inline", "threads"])
def test_exchange_and_replay_refusal_whether_database_work_runs_inline_or_in_threads(
    tmp_path: Path, db_url: str, db_work: str
) -> None:
    """``ONCEONLY_DB_WORK`` changes where the work runs, never what is decided."""
    federation = build_federation(tmp_path, db_url, db_work=db_work)
    try:
        assert _call(federation, TAX).status_code == 200
        assert _call(federation, TAX, **{"X-Road-Id": "fixed-id-1"}).status_code == 200
        replay = _call(federation, TAX, **{"X-Road-Id": "fixed-id-1"})
        assert replay.status_code == 409
        assert replay.json()["code"] == "Server.ServerProxy.Replay"
    finally:
        federation.central_engine.dispose()


class RecordingGate:
    """A consent gate that allows everything and remembers what the provider asked."""

    def __init__(self) -> None:
        self.asked: list[ConsentQuery] = []

    def check(self, query: ConsentQuery) -> ConsentDecision:
        self.asked.append(query)
        return ConsentDecision(True, query.consent_id, frozenset(query.fields))

    def use(self, query: ConsentQuery) -> ConsentDecision:
        return self.check(query)


def test_a_read_never_passes_its_idempotency_key_to_the_consent_gate(
    tmp_path: Path, db_url: str
) -> None:
    """A key makes a retry the same consent use only for changes: a read under a key must not
    re-read on a spent one-time consent."""
    gate = RecordingGate()
    federation = build_federation(tmp_path, db_url, consent=gate)
    try:
        r = _call(
            federation,
            TAX,
            **{"X-OnceOnly-Consent-Id": "c-1", "Idempotency-Key": "same-key-every-time"},
        )
        assert r.status_code == 200, r.text
        assert gate.asked
        assert {q.idempotency_key for q in gate.asked} == {None}
    finally:
        federation.central_engine.dispose()


def test_allowed_exchange_returns_verified_data_with_xroad_headers(fed: Federation) -> None:
    r = _call(fed, TAX)
    assert r.status_code == 200, r.text
    assert r.json() == {"name": "町田 太郎", "address": "原町田1-1-1", "birth_date": "1980-01-01"}
    assert r.headers["x-road-service"] == str(ADDRESS)
    assert r.headers["x-road-client"] == str(TAX)
    assert len(r.headers["x-road-request-hash"]) == 88
    assert r.headers["x-onceonly-basis"] == "access-right"


def test_requested_fields_are_the_only_fields_returned(fed: Federation) -> None:
    r = _call(fed, TAX, **{"X-OnceOnly-Fields": "address"})
    assert r.status_code == 200, r.text
    assert r.json() == {"address": "原町田1-1-1"}
    assert fed.adapter is not None
    assert fed.adapter.calls[-1].fields == frozenset({"address"})


def test_client_without_access_right_is_refused_with_signed_problem(fed: Federation) -> None:
    r = _call(fed, GAS)
    assert r.status_code == 403
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["code"] == "Server.ServerProxy.AccessDenied"
    assert body["type"].endswith("server.serverproxy.accessdenied")
    assert r.headers["x-road-error"] == "Server.ServerProxy.AccessDenied"
    assert fed.adapter is not None
    assert fed.adapter.calls == []


def test_undeclared_purpose_is_refused(fed: Federation) -> None:
    r = _call(fed, TAX, **{"X-OnceOnly-Purpose": "marketing"})
    assert r.status_code == 403


def test_wrong_api_key_is_refused_before_anything_is_sent(fed: Federation) -> None:
    r = _call(fed, TAX, **{"X-OnceOnly-Api-Key": "oo_wrong"})
    assert r.status_code == 401
    assert r.json()["type"].endswith("client.unauthenticated")
    assert fed.adapter is not None
    assert fed.adapter.calls == []


def test_api_key_of_another_client_is_refused(fed: Federation) -> None:
    r = _call(fed, TAX, **{"X-OnceOnly-Api-Key": fed.api_keys[RESIDENTS]})
    assert r.status_code == 401


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/r1/JP/GOV/132098/resident-registry/nosuch", 404),
        ("/r1/JP/GOV", 400),
        ("/r1/JP/GOV/132098/resident%20registry/address", 400),
    ],
)
def test_bad_service_paths_get_problem_json_not_500(
    fed: Federation, path: str, status: int
) -> None:
    r = _call(fed, TAX, path)
    assert r.status_code == status
    assert r.headers["content-type"].startswith("application/problem+json")


def test_missing_purpose_is_a_client_error(fed: Federation) -> None:
    r = _call(fed, TAX, **{"X-OnceOnly-Purpose": ""})
    assert r.status_code == 400
    assert r.json()["code"] == "Client.MissingPurpose"


def test_reused_message_id_is_refused_as_replay(fed: Federation) -> None:
    first = _call(fed, TAX, **{"X-Road-Id": "fixed-id-1"})
    assert first.status_code == 200
    second = _call(fed, TAX, **{"X-Road-Id": "fixed-id-1"})
    assert second.status_code == 409
    assert second.json()["code"] == "Server.ServerProxy.Replay"


def test_provider_down_is_a_transport_problem(fed: Federation) -> None:
    fed.transport.down.add("http://machida")
    r = _call(fed, TAX)
    assert r.status_code == 502
    assert r.json()["code"] == "Server.ServerProxy.NetworkError"


def test_metaservices_list_clients_methods_and_openapi(fed: Federation) -> None:
    async def go():  # type: ignore[no-untyped-def]
        async with node_client(fed, TAX.member) as c:
            clients = await c.get("/listClients")
            methods = await c.get(f"/r1/{RESIDENTS}/listMethods")
            allowed = await c.get(f"/r1/{RESIDENTS}/allowedMethods", headers=_headers(fed, TAX))
            openapi = await c.get(
                f"/r1/{RESIDENTS}/getOpenAPI?serviceCode=address", headers=_headers(fed, TAX)
            )
            health = await c.get("/healthz")
            metrics = await c.get("/metrics")
        async with node_client(fed, GAS.member) as c:
            gas_allowed = await c.get(f"/r1/{RESIDENTS}/allowedMethods", headers=_headers(fed, GAS))
        return clients, methods, allowed, gas_allowed, openapi, health, metrics

    clients, methods, allowed, gas_allowed, openapi, health, metrics = asyncio.run(go())
    assert gas_allowed.json() == {"service": []}
    assert {c["id"] for c in clients.json()["clients"]} == {str(RESIDENTS), str(TAX), str(GAS)}
    # the residents' registry serves the address, and its change event (served by the node)
    assert {s["id"] for s in methods.json()["service"]} == {str(ADDRESS), str(ADDRESS_CHANGED)}
    assert {s["id"] for s in allowed.json()["service"]} == {str(ADDRESS), str(ADDRESS_CHANGED)}
    assert openapi.json()["openapi"].startswith("3.")
    assert health.json()["status"] == "ok"
    assert b"onceonly_exchanges_total" in metrics.content


def test_revoked_access_right_takes_effect_with_the_next_registry(fed: Federation) -> None:
    assert _call(fed, TAX).status_code == 200
    fed.admin.revoke_right(TAX, ServiceId.parse(str(ADDRESS)))
    fed.refresh()
    assert _call(fed, TAX).status_code == 403


def test_revoked_certificate_stops_the_signer(fed: Federation) -> None:
    from exchange.certificates import certificate_info, load_certificate
    from exchange.keystore import KeyStore

    pem = KeyStore(fed.data_dir).subsystem_cert(TAX).read_text()
    fed.admin.revoke_certificate(certificate_info(load_certificate(pem)).fingerprint)
    fed.refresh()
    r = _call(fed, TAX)
    assert r.status_code == 502  # the provider refuses the message unsigned: it cannot trust it
    assert r.json()["code"] == "Server.ServerProxy.ProviderError"


def test_refusals_at_the_consumer_are_audited(fed: Federation) -> None:
    from sqlalchemy import select

    from exchange.store import MessageLogRow

    _call(fed, TAX, **{"X-OnceOnly-Api-Key": "oo_wrong"})
    with fed.central_engine.connect() as conn:
        rows = conn.execute(
            select(MessageLogRow.kind, MessageLogRow.decision, MessageLogRow.reason).where(
                MessageLogRow.node == str(TAX.member)
            )
        ).all()
    assert ("refusal", "deny") in {(r.kind, r.decision) for r in rows}
    assert any("Client.Unauthenticated" in (r.reason or "") for r in rows)
