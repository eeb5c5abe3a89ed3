"""A small federation built from real parts for in-process tests: real keys, a real signed
registry, real node apps; only the HTTP hop between them is an in-memory ASGI peer behind the
``Transport`` port (style rule 19)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import httpx
from fastapi import FastAPI
from sqlalchemy import Engine

from exchange.db import make_engine, upgrade
from exchange.errors import TransportError
from exchange.identifiers import ClientId, MemberId, ServiceId
from exchange.keystore import KeyStore
from exchange.node.app import NodeParts, create_node_app
from exchange.node.central import create_central_app
from exchange.ports import (
    AdapterRequest,
    AdapterResponse,
    AuditSink,
    ConsentGate,
    PolicyDecider,
    ServiceDescription,
    TransportResponse,
)
from exchange.provisioning import init_instance, issue_api_key, provision_subsystem
from exchange.registry_admin import RegistryAdmin
from exchange.settings import Settings
from exchange.signing import CentralSigner, MemberSigner, load_private_key
from exchange.subscriptions import Subscriptions

RESIDENTS = ClientId.parse("JP/GOV/132098/resident-registry")
TAX = ClientId.parse("JP/GOV/132098/tax")
GAS = ClientId.parse("JP/COM/9000000000002/gas")
ADDRESS = ServiceId(RESIDENTS, "address", "v1")
ADDRESS_CHANGED = ServiceId(RESIDENTS, "address-changed", "v1")


class AsgiTransport:
    """Routes node-to-node requests to in-process apps by base URL."""

    def __init__(self) -> None:
        self.apps: dict[str, FastAPI] = {}
        self.down: set[str] = set()
        self.tamper: Callable[[bytes], bytes] | None = None
        """Rewrites every answer to a POST on its way back (a man in the middle)."""

    def _client(self, url: str) -> tuple[httpx.AsyncClient, str]:
        for base, app in self.apps.items():
            if url.startswith(base):
                if base in self.down:
                    raise TransportError("peer unreachable")
                return httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=app), base_url=base
                ), url[len(base) :]
        raise TransportError("peer unreachable")

    async def post(
        self, url: str, body: bytes, headers: Mapping[str, str], *, timeout_s: float
    ) -> TransportResponse:
        client, path = self._client(url)
        async with client:
            r = await client.post(path, content=body, headers=dict(headers))
        content = self.tamper(r.content) if self.tamper is not None else r.content
        return TransportResponse(r.status_code, dict(r.headers), content)

    async def get(
        self, url: str, headers: Mapping[str, str], *, timeout_s: float
    ) -> TransportResponse:
        client, path = self._client(url)
        async with client:
            r = await client.get(path, headers=dict(headers))
        return TransportResponse(r.status_code, dict(r.headers), r.content)

    async def aclose(self) -> None:
        return None


class ResidentsAdapter:
    """A tiny registry for tests: one record per subject."""

    def __init__(self, records: Mapping[str, dict[str, object]]) -> None:
        self.records = dict(records)
        self.calls: list[AdapterRequest] = []

    def services(self) -> Sequence[ServiceDescription]:
        return [
            ServiceDescription(
                "address", "v1", "current address", ("name", "address", "birth_date")
            )
        ]

    async def call(self, request: AdapterRequest) -> AdapterResponse:
        self.calls.append(request)
        record = self.records.get(request.subject or "")
        if record is None:
            return AdapterResponse(404, {"detail": "no such resident"})
        # Deliberately returns every field: the node must filter (it does not trust adapters).
        return AdapterResponse(200, dict(record))


class ReServingAdapter(ResidentsAdapter):
    """The residents' adapter, plus a ``digest`` service that passes on address data (its
    ``re_serves``: the provider refuses it for data received under "no onward transfer")."""

    def services(self) -> Sequence[ServiceDescription]:
        return [
            *super().services(),
            ServiceDescription(
                "digest", "v1", "address digest", ("address",), re_serves=str(ADDRESS.unversioned)
            ),
        ]


class PolicyFeedLike(Protocol):
    """``policies.feed.PolicyFeed``: an engine and the hook that feeds it each registry."""

    @property
    def engine(self) -> PolicyDecider: ...

    def on_registry(self, registry: Any) -> None: ...


@dataclass
class Federation:
    data_dir: Path
    settings: Settings
    central_engine: Engine
    admin: RegistryAdmin
    transport: AsgiTransport
    central: FastAPI
    nodes: dict[str, FastAPI] = field(default_factory=dict)
    api_keys: dict[ClientId, str] = field(default_factory=dict)
    adapter: ResidentsAdapter | None = None

    def refresh(self) -> None:
        """Push the current signed registry into every node (what the refresh loop does)."""
        for app in self.nodes.values():
            app.state.registry.accept(self.signed_registry(), now=datetime.now(UTC))

    def signed_registry(self) -> bytes:
        keys = KeyStore(self.data_dir)
        signer = CentralSigner(load_private_key(keys.central_key))
        return self.admin.publish(
            signer,
            instance="JP",
            ca_pem=keys.ca_cert.read_text(),
            central_url="http://central",
            now=datetime.now(UTC),
        ).to_bytes()


def build_federation(
    tmp_path: Path,
    db_url: str,
    *,
    db_work: str = "auto",
    consent: ConsentGate | None = None,
    audits: Mapping[MemberId, AuditSink] | None = None,
    policy: PolicyFeedLike | None = None,
) -> Federation:
    """``audits``: each member's node records into this sink (default: its message log);
    ``policy``: the residents' node decides with this policy engine, fed each registry."""
    now = datetime.now(UTC)
    keys = KeyStore(tmp_path / "data")
    init_instance(keys, "JP", now=now)
    settings = Settings(
        data_dir=keys.root, central_url="http://central", database_url=db_url, db_work=db_work
    )
    engine = make_engine(db_url)
    upgrade(engine)
    admin = RegistryAdmin(engine)
    members = {
        RESIDENTS.member: ("町田市", "Machida City", "http://machida"),
        GAS.member: ("多摩ガス", "Tama Gas", "http://gas"),
    }
    for m, (name, en, addr) in members.items():
        admin.add_member(m, name, name_en=en, address=addr)
    for c in (RESIDENTS, TAX, GAS):
        admin.add_subsystem(c)
        admin.add_certificate(c, provision_subsystem(keys, c, now=now))
    admin.add_service(
        ADDRESS,
        description="address",
        fields=("name", "address", "birth_date"),
        purposes=("tax-assessment", "address-change"),
    )
    admin.grant(TAX, ADDRESS)
    # A change event of the residents' registry (docs/protocol.md §9): served by the node itself.
    admin.add_service(
        ADDRESS_CHANGED,
        description="a resident moved",
        fields=("address",),
        purposes=("tax-assessment",),
        event_of=ServiceId(RESIDENTS, "address-change", "v1"),
    )
    admin.grant(TAX, ADDRESS_CHANGED)
    transport = AsgiTransport()
    central = create_central_app(settings, engine=engine)
    transport.apps["http://central"] = central
    adapter = ResidentsAdapter(
        {"sub-1": {"name": "町田 太郎", "address": "原町田1-1-1", "birth_date": "1980-01-01"}}
    )
    fed = Federation(keys.root, settings, engine, admin, transport, central, adapter=adapter)
    for m, (_, _, addr) in members.items():
        hosted = [c for c in (RESIDENTS, TAX, GAS) if c.member == m]
        parts = NodeParts(
            subscriptions=Subscriptions(
                engine,
                str(m),
                {c: MemberSigner(load_private_key(keys.subsystem_key(c))) for c in hosted},
            ),
            adapters={RESIDENTS: adapter} if m == RESIDENTS.member else {},
            consent=consent if m == RESIDENTS.member else None,
            audit=(audits or {}).get(m),
            policy=policy.engine if policy and m == RESIDENTS.member else None,
            on_registry=(policy.on_registry,) if policy and m == RESIDENTS.member else (),
            inline=True,
        )
        app = create_node_app(settings, m, parts, engine=engine, transport=transport)
        transport.apps[addr] = app
        fed.nodes[str(m)] = app
    for c in (RESIDENTS, TAX, GAS):
        fed.api_keys[c] = issue_api_key(engine, node=str(c.member), client=c, now=now)
    fed.refresh()
    return fed


def node_client(fed: Federation, member: MemberId | str) -> httpx.AsyncClient:
    app = fed.nodes[str(member)]
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://node")
