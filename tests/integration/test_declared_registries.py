"""Registries that are not the reference ones, declared only in a TOML file, served end to end.

A library-card table in the library's own database (SQL, its DSN from an environment variable)
and a parking-permit system behind a real upstream HTTP process on loopback are declared in one
registries file. The provider node is composed the way ``onceonly node`` composes it
(``build_node_parts`` reading ``Settings.registries_file``: embedded policies, pseudonyms, audit
log); the services enter the central registry with ``register_services``; a departmental system
calls through its own node, which signs the request for the provider's node. Only the hop between
the two nodes is in memory (``AsgiTransport``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from openapi_spec_validator import validate
from sqlalchemy import Column, Date, Engine, Integer, MetaData, String, Table, insert, select

from adapters.config import load_registries
from adapters.factory import register_services
from adapters.pseudonyms import PseudonymService
from exchange.db import make_engine, upgrade
from exchange.errors import ConfigurationError
from exchange.identifiers import ClientId, ServiceId
from exchange.keystore import KeyStore
from exchange.node.app import NodeParts, create_node_app
from exchange.provisioning import init_instance, issue_api_key, provision_subsystem
from exchange.registry_admin import RegistryAdmin
from exchange.settings import Settings
from exchange.signing import CentralSigner, load_private_key
from exchange.tokens import DevIssuer
from onceonly.wiring import build_node_parts, provision_audit_key, pseudonym_service
from tests.adapters import upstream_server
from tests.exchange._federation import AsgiTransport

pytestmark = pytest.mark.integration

LIBRARY = ClientId.parse("JP/GOV/132098/library")
PERMITS = ClientId.parse("JP/GOV/132098/parking-permits")
DESK = ClientId.parse("JP/GOV/132110/citizen-desk")
CARD = ServiceId(LIBRARY, "card", "v1")
BRANCH_CHANGE = ServiceId(LIBRARY, "home-branch-change", "v1")
PERSON = ServiceId(PERMITS, "person", "v1")
ADDRESS_CHANGE = ServiceId(PERMITS, "address-change", "v1")
PURPOSE = "resident-services"
DESK_SUBJECT, LIBRARY_SUBJECT, PERMIT_SUBJECT = "D0001", "L0001", "P0001"

REGISTRIES = """
[[registries]]
id = "JP/GOV/132098/library"
kind = "sql"
dsn_env = "LIBRARY_DSN"
table = "library_cards"
key_column = "holder_id"

[[registries.services]]
code = "card"
version = "v1"
description = "The holder's library card"
purposes = ["resident-services"]

[registries.services.fields]
card_number = "string"
expires_on = "date"
books_on_loan = "integer"
home_branch = { type = "string", column = "branch" }

[[registries.services]]
code = "home-branch-change"
version = "v1"
description = "Move the card to another branch"
purposes = ["resident-services"]
change = { fields = ["home_branch"] }

[registries.services.fields]
home_branch = { type = "string", column = "branch" }

[[registries]]
id = "JP/GOV/132098/parking-permits"
kind = "http"
base_url = "{upstream}"
timeout_s = 3.0

[[registries.services]]
code = "person"
version = "v1"
description = "The permit holder"
purposes = ["resident-services"]
path = "/persons/{subject}"

[registries.services.fields]
name = "string"
address = "string"
birth_date = "date"

[[registries.services]]
code = "address-change"
version = "v1"
description = "Change the permit holder's address"
purposes = ["resident-services"]
method = "POST"
path = "/persons/{subject}/address"
change = { fields = ["address"] }

[registries.services.fields]
name = "string"
address = "string"
birth_date = "date"
"""


@dataclass
class World:
    desk_node: FastAPI
    provider_node: FastAPI
    parts: NodeParts
    api_key: str
    library_url: str
    upstream: str
    library_key: str
    """An API key of the library's own system at the provider's node."""
    settings: Settings


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    with upstream_server.running() as url:
        yield url


def _library_database(url: str) -> None:
    engine = make_engine(url)
    cards = Table(
        "library_cards",
        MetaData(),
        Column("holder_id", String(32), primary_key=True),
        Column("card_number", String(16), nullable=False),
        Column("expires_on", Date, nullable=False),
        Column("books_on_loan", Integer, nullable=False),
        Column("branch", String(32), nullable=False),
    )
    cards.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(
            insert(cards).values(
                holder_id=LIBRARY_SUBJECT,
                card_number="LC-000123",
                expires_on=date(2028, 3, 31),
                books_on_loan=2,
                branch="中央図書館",
            )
        )
    engine.dispose()


def _central(engine: Engine, settings: Settings, registries: Path, now: datetime) -> RegistryAdmin:
    keys = KeyStore(settings.data_dir)
    init_instance(keys, "JP", now=now)
    for member in {LIBRARY.member, DESK.member}:  # keys are made by provisioning, never at start
        provision_audit_key(settings, str(member))
    DevIssuer.load_or_create(
        settings.data_dir, issuer=settings.jwt_issuer, audience=settings.jwt_audience
    )
    upgrade(engine)
    admin = RegistryAdmin(engine)
    admin.add_member(LIBRARY.member, "町田市", address="http://machida")
    admin.add_member(DESK.member, "隣の市", address="http://desk")
    for client in (LIBRARY, PERMITS, DESK):
        admin.add_subsystem(client)
        admin.add_certificate(client, provision_subsystem(keys, client, now=now))
    assert register_services(admin, load_registries(registries)) == [
        CARD,
        BRANCH_CHANGE,
        PERSON,
        ADDRESS_CHANGE,
    ]
    # As `onceonly registry add-service` registers a service: no OpenAPI document.
    admin.add_service(
        PERSON,
        description="The permit holder",
        fields=("name", "address", "birth_date"),
        purposes=(PURPOSE,),
    )
    doc = admin.document(instance="JP", ca_pem="", central_url="", now=now)
    for i, sid in enumerate((CARD, BRANCH_CHANGE, PERSON, ADDRESS_CHANGE)):
        admin.grant(DESK, sid)
        fields = next(s.fields for s in doc.services if s.id == str(sid))
        admin.add_statute(
            f"statute-{i}",
            service=sid,
            client=DESK,
            purposes=(PURPOSE,),
            fields=fields,
            ordinance="machida-ordinance/test",
        )
    return admin


def _enrol(settings: Settings) -> None:
    """One citizen known to the desk, the library and the permit system by their own pseudonyms."""
    store = make_engine(str(settings.database_url))
    pseudonym_service(settings, store)  # migrates the store
    tokens = iter([DESK_SUBJECT, LIBRARY_SUBJECT, PERMIT_SUBJECT])
    PseudonymService(
        store, [str(DESK), str(LIBRARY), str(PERMITS)], token=lambda: next(tokens)
    ).enrol("citizen-1")
    store.dispose()


@pytest.fixture
def world(
    tmp_path: Path, make_db_url: Any, upstream: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[World]:
    now = datetime.now(UTC)
    library_url = make_db_url()
    _library_database(library_url)
    monkeypatch.setenv("LIBRARY_DSN", library_url)
    registries = tmp_path / "machida-registries.toml"
    registries.write_text(REGISTRIES.replace("{upstream}", upstream), encoding="utf-8")
    settings = Settings(
        data_dir=tmp_path / "data",
        central_url="http://central",
        database_url=make_db_url(),
        registries_file=registries,
        # The shared pseudonym table (comparison mode): this test is about declared registries;
        # the translator's own end-to-end tests are tests/integration/test_translator_processes.py.
        pseudonyms="local",
        allow_dev_issuer=True,  # the tests' citizens sign in with the development issuer
    )
    engine = make_engine(str(settings.database_url))
    admin = _central(engine, settings, registries, now)
    _enrol(settings)
    transport = AsgiTransport()
    parts = build_node_parts(settings, LIBRARY.member)
    provider = create_node_app(
        settings, LIBRARY.member, parts, transport=transport, registry_wait_s=None
    )
    desk = create_node_app(
        settings, DESK.member, NodeParts(), transport=transport, registry_wait_s=None
    )
    transport.apps["http://machida"] = provider
    api_key = issue_api_key(engine, node=str(DESK.member), client=DESK, now=now)
    library_key = issue_api_key(engine, node=str(LIBRARY.member), client=LIBRARY, now=now)
    keys = KeyStore(settings.data_dir)
    signed = admin.publish(
        CentralSigner(load_private_key(keys.central_key)),
        instance="JP",
        ca_pem=keys.ca_cert.read_text(),
        central_url="http://central",
        now=now,
    ).to_bytes()
    for app in (provider, desk):
        app.state.registry.accept(signed, now=now)
    yield World(desk, provider, parts, api_key, library_url, upstream, library_key, settings)
    engine.dispose()


@contextlib.asynccontextmanager
async def _running(world: World) -> AsyncIterator[httpx.AsyncClient]:
    """Both nodes' lifespans (adapters closed at the end), and a client of the desk's node."""
    async with contextlib.AsyncExitStack() as stack:
        for app in (world.provider_node, world.desk_node):
            await stack.enter_async_context(app.router.lifespan_context(app))
        yield await stack.enter_async_context(
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=world.desk_node), base_url="http://desk-node"
            )
        )


def _headers(world: World, **extra: str) -> dict[str, str]:
    return {
        "X-Road-Client": str(DESK),
        "X-OnceOnly-Api-Key": world.api_key,
        "X-OnceOnly-Purpose": PURPOSE,
        "X-OnceOnly-Subject": DESK_SUBJECT,
        **extra,
    }


def test_a_declared_sql_registry_is_read_and_changed_through_a_signed_exchange(
    world: World,
) -> None:
    async def go() -> list[httpx.Response]:
        async with _running(world) as c:
            read = await c.get(f"/r1/{CARD}", headers=_headers(world))
            change = [
                await c.post(
                    f"/r1/{BRANCH_CHANGE}",
                    json={"home_branch": "鶴川図書館"},
                    headers=_headers(world, **{"Idempotency-Key": "move-1"}),
                )
                for _ in range(2)
            ]
            keyless = await c.post(
                f"/r1/{BRANCH_CHANGE}", json={"home_branch": "x"}, headers=_headers(world)
            )
            undeclared = await c.get(f"/r1/{LIBRARY}/loans/v1", headers=_headers(world))
            return [read, *change, keyless, undeclared]

    read, first, repeat, keyless, undeclared = asyncio.run(go())
    assert read.status_code == 200, read.text
    assert read.json() == {
        "card_number": "LC-000123",
        "expires_on": "2028-03-31",
        "books_on_loan": 2,
        "home_branch": "中央図書館",
    }
    assert first.status_code == 200, first.text
    assert first.json() == {"home_branch": "鶴川図書館"}
    assert repeat.json() == first.json()
    assert keyless.status_code == 400
    assert keyless.json()["code"] == "Client.MissingIdempotencyKey"
    assert (undeclared.status_code, undeclared.json()["code"]) == (
        404,
        "Server.ServerProxy.UnknownService",
    )
    engine = make_engine(world.library_url)
    with engine.connect() as conn:
        rows = conn.execute(
            select(Table("library_cards", MetaData(), autoload_with=conn).c.branch)
        ).all()
    engine.dispose()
    assert rows == [("鶴川図書館",)]


def test_a_declared_http_registry_is_served_through_a_signed_exchange(world: World) -> None:
    async def go() -> list[httpx.Response]:
        async with _running(world) as c:
            person = await c.get(f"/r1/{PERSON}", headers=_headers(world))
            moved = await c.post(
                f"/r1/{ADDRESS_CHANGE}",
                json={"address": "東京都町田市鶴川一丁目2番3号"},
                headers=_headers(world, **{"Idempotency-Key": "permit-move-1"}),
            )
            return [person, moved]

    person, moved = asyncio.run(go())
    assert person.status_code == 200, person.text
    assert person.json()["birth_date"] == "1980-04-01"
    assert moved.status_code == 200, moved.text
    assert moved.json()["address"] == "東京都町田市鶴川一丁目2番3号"
    assert httpx.get(f"{world.upstream}/changes/{PERMIT_SUBJECT}").json() == {"changes": 1}


def test_get_openapi_is_generated_from_the_declaration(world: World) -> None:
    async def go() -> dict[str, Any]:
        async with _running(world) as c:
            r = await c.get(
                f"/r1/{LIBRARY}/getOpenAPI?serviceCode=home-branch-change",
                headers=_headers(world),
            )
            assert r.status_code == 200, r.text
            return dict(r.json())

    doc = asyncio.run(go())
    validate(doc)
    op = doc["paths"][f"/r1/{BRANCH_CHANGE}"]["post"]
    schema = op["requestBody"]["content"]["application/json"]["schema"]
    assert schema["properties"]["home_branch"]["type"] == "string"
    assert any(p["name"] == "Idempotency-Key" and p["required"] for p in op["parameters"])


def test_a_node_serves_only_the_declared_registries(world: World) -> None:
    async def go() -> None:
        async with _running(world):  # (closes what the node opened)
            assert set(world.parts.adapters) == {LIBRARY, PERMITS}

    asyncio.run(go())


def test_the_cli_registers_the_declared_services_with_their_openapi(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from onceonly.cli import app

    data = tmp_path / "data"
    monkeypatch.setenv("ONCEONLY_DATA_DIR", str(data))
    monkeypatch.delenv("DATABASE_URL", raising=False)
    registries = tmp_path / "registries.toml"
    registries.write_text(REGISTRIES.replace("{upstream}", "http://127.0.0.1:9"), encoding="utf-8")
    engine = make_engine(f"sqlite:///{(data / 'central.sqlite').resolve()}")
    upgrade(engine)
    admin = RegistryAdmin(engine)
    admin.add_member(LIBRARY.member, "町田市")
    runner = CliRunner()
    refused = runner.invoke(app, ["registry", "add-services", "--from", str(registries)])
    assert refused.exit_code == 2  # the subsystems are not registered yet
    assert f"unknown subsystem {LIBRARY}" in refused.output
    for client in (LIBRARY, PERMITS):
        admin.add_subsystem(client)
    added = runner.invoke(app, ["registry", "add-services", "--from", str(registries)])
    assert added.exit_code == 0, added.output
    assert added.output.split() == [str(s) for s in (CARD, BRANCH_CHANGE, PERSON, ADDRESS_CHANGE)]
    doc = admin.document(instance="JP", ca_pem="", central_url="", now=datetime.now(UTC))
    entry = next(s for s in doc.services if s.id == str(BRANCH_CHANGE))
    assert entry.changes
    assert entry.openapi is not None
    validate(entry.openapi)
    registries.write_text(REGISTRIES.replace('kind = "http"', 'kind = "soap"'), encoding="utf-8")
    bad = runner.invoke(app, ["registry", "add-services", "--from", str(registries)])
    assert bad.exit_code == 2
    assert "registries[1]: Input tag 'soap'" in bad.output
    engine.dispose()


def test_without_a_listed_openapi_the_serving_node_generates_it_from_its_adapter(
    world: World,
) -> None:
    async def go() -> tuple[dict[str, Any], dict[str, Any]]:
        path = f"/r1/{PERMITS}/getOpenAPI?serviceCode=person"
        async with (
            _running(world) as desk,
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=world.provider_node), base_url="http://machida"
            ) as own,
        ):
            served = await own.get(
                path,
                headers={"X-Road-Client": str(LIBRARY), "X-OnceOnly-Api-Key": world.library_key},
            )
            elsewhere = await desk.get(path, headers=_headers(world))
        assert served.status_code == elsewhere.status_code == 200, (served.text, elsewhere.text)
        return served.json(), elsewhere.json()

    served, elsewhere = asyncio.run(go())
    for doc in (served, elsewhere):
        validate(doc)

    def answer(doc: dict[str, Any]) -> dict[str, Any]:
        op = doc["paths"][f"/r1/{PERSON}"]["get"]
        return dict(op["responses"]["200"]["content"]["application/json"]["schema"]["properties"])

    birth_date = [b for b in answer(served)["birth_date"]["anyOf"] if b["type"] != "null"]
    assert birth_date == [{"type": "string", "format": "date"}]  # the declared type
    assert answer(elsewhere) == {"name": {}, "address": {}, "birth_date": {}}  # names only


def test_a_node_refuses_to_start_with_a_declared_registry_it_has_no_key_for(
    world: World, tmp_path: Path
) -> None:
    museum = tmp_path / "museum.toml"
    museum.write_text(
        REGISTRIES.replace("{upstream}", world.upstream).replace(
            "JP/GOV/132098/parking-permits", "JP/GOV/132098/museum"
        ),
        encoding="utf-8",
    )
    settings = world.settings.model_copy(update={"registries_file": museum})
    with pytest.raises(
        ConfigurationError, match=r"without a subsystem key: \['JP/GOV/132098/museum'\]"
    ):
        build_node_parts(settings, LIBRARY.member)
    asyncio.run(_close(world))


async def _close(world: World) -> None:
    async with _running(world):  # (closes what the fixture's node opened)
        pass
