"""A real federation for the procedures tests: the central server (with the consent service) and
one node per member, each a uvicorn server on its own loopback port of one background event loop
(real HTTP between nodes), composed exactly as deployed (``onceonly.wiring``): provisioned
keys and registry, seeded registries, pseudonyms, policies, the consent gate, the audit log.

Each member's node can be stopped and started again (a provider that is down). The multi-process
variant is ``test_procedure_processes.py``.
"""

from __future__ import annotations

import asyncio
import gc
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI
from sqlalchemy import Engine, text

from adapters.reference.registries import (
    ELECTRICITY_MEMBER,
    GAS_MEMBER,
    LAND_REGISTRY_MEMBER,
    MACHIDA_MEMBER,
)
from adapters.reference.rights import ONE_STOP
from consent.lifecycle import ConsentService
from exchange.db import make_engine, upgrade
from exchange.identifiers import MemberId
from exchange.keystore import KeyStore
from exchange.node.app import create_node_app
from exchange.ports import CITIZEN_AGENCY
from exchange.settings import Settings
from exchange.signing import MemberSigner, load_private_key
from onceonly.federation import provision
from onceonly.wiring import (
    build_node_parts,
    central_app,
    consent_service,
    registry_database_url,
)
from procedures.address_change import AddressChangeService
from procedures.consent_desk import LocalConsentDesk
from procedures.one_stop import OneStopClient
from procedures.runner import ProcedureRunner

MEMBERS = tuple(
    MemberId.parse(m)
    for m in (MACHIDA_MEMBER, LAND_REGISTRY_MEMBER, ELECTRICITY_MEMBER, GAS_MEMBER)
)
START_TIMEOUT_S = 30.0
SEED = 20261123


def _bind(port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)
    return sock


@dataclass
class _Served:
    port: int
    sock: socket.socket | None = None
    server: uvicorn.Server | None = None
    task: Future[None] | None = None


class RegistryLook:
    """Looks into the registries and the pseudonym store directly, as their departments would."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def registry_rows(self, registry: str, sql: str, **params: Any) -> list[dict[str, Any]]:
        engine = make_engine(registry_database_url(self.settings, registry))
        try:
            with engine.connect() as conn:
                return [dict(r) for r in conn.execute(text(sql), params).mappings()]
        finally:
            engine.dispose()

    def local_pseudonym(self, citizen: str, registry: str) -> str:
        rows = self.registry_rows(
            "pseudonyms",
            "SELECT d.pseudonym AS p FROM adapters_pseudonyms s JOIN adapters_pseudonyms d "
            "ON d.subject_id = s.subject_id WHERE s.agency = :c AND s.pseudonym = :citizen "
            "AND d.agency = :a",
            c=CITIZEN_AGENCY,
            citizen=citizen,
            a=f"{_member_of(registry)}/{registry}",
        )
        return str(rows[0]["p"])

    def citizens_in(self, registries: Sequence[str]) -> list[str]:
        """Citizens (platform ids) with a record in every one of ``registries``, sorted."""
        keys = {
            "resident-registry": ("residents", "resident_id"),
            "municipal-tax": ("taxpayers", "taxpayer_id"),
            "national-health-insurance": ("nhi_enrolments", "insured_id"),
            "child-allowance": ("child_allowance_recipients", "recipient_id"),
            "water": ("water_contracts", "customer_id"),
            "electricity": ("electricity_contracts", "customer_id"),
            "gas": ("gas_contracts", "customer_id"),
            "land-registry": ("land_properties", "owner_id"),
        }
        pseudo = self.registry_rows(
            "pseudonyms", "SELECT subject_id, agency, pseudonym FROM adapters_pseudonyms"
        )
        by_agency: dict[tuple[str, str], str] = {
            (r["agency"], r["pseudonym"]): r["subject_id"] for r in pseudo
        }
        citizen_of = {
            r["subject_id"]: r["pseudonym"] for r in pseudo if r["agency"] == CITIZEN_AGENCY
        }
        found: set[str] | None = None
        for reg in registries:
            table, col = keys[reg]
            agency = f"{_member_of(reg)}/{reg}"
            ids = {
                by_agency[(agency, r["k"])]
                for r in self.registry_rows(reg, f"SELECT {col} AS k FROM {table}")  # noqa: S608
            }
            found = ids if found is None else found & ids
        return sorted(citizen_of[s] for s in (found or set()))

    def recent_purchases(self) -> list[tuple[str, str, str]]:
        """``(citizen, property_number, location)`` of homes bought recently at a new address."""
        rows = self.registry_rows(
            "land-registry",
            "SELECT owner_id, property_number, location, transfer_date FROM land_properties "
            "WHERE cause = '売買' ORDER BY transfer_date DESC",
        )
        pseudo = self.registry_rows(
            "pseudonyms", "SELECT subject_id, agency, pseudonym FROM adapters_pseudonyms"
        )
        subject_of = {
            r["pseudonym"]: r["subject_id"]
            for r in pseudo
            if r["agency"] == f"{LAND_REGISTRY_MEMBER}/land-registry"
        }
        citizen_of = {
            r["subject_id"]: r["pseudonym"] for r in pseudo if r["agency"] == CITIZEN_AGENCY
        }
        out = []
        for r in rows:
            on = r["transfer_date"]
            on = on if isinstance(on, date) else date.fromisoformat(str(on))
            if on.year == 2026:  # the seed's recent purchases (relative to its as-of date)
                out.append(
                    (citizen_of[subject_of[r["owner_id"]]], r["property_number"], r["location"])
                )
        return out


@dataclass
class Federation(RegistryLook):
    """Everything a procedures test needs, running in one background event loop thread."""

    settings: Settings
    api_keys: dict[str, str]
    consents: ConsentService
    procedures_engine: Engine
    signer: MemberSigner
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread
    served: dict[str, _Served] = field(default_factory=dict)

    @property
    def one_stop_url(self) -> str:
        return f"http://127.0.0.1:{self.served[MACHIDA_MEMBER].port}"

    def _app(self, name: str) -> FastAPI:
        if name == "central":
            return central_app(self.settings)
        member = MemberId.parse(name)
        return create_node_app(self.settings, member, build_node_parts(self.settings, member))

    def start(self, name: str) -> None:
        served = self.served[name]
        app = self._app(name)
        sock = served.sock if served.sock is not None else _bind(served.port)
        server = uvicorn.Server(
            uvicorn.Config(app, log_level="error", access_log=False, lifespan="on")
        )
        served.server, served.sock = server, sock
        served.task = asyncio.run_coroutine_threadsafe(server.serve(sockets=[sock]), self.loop)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not server.started:
            if served.task.done():
                served.task.result()
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start")
            time.sleep(0.02)

    def stop(self, name: str) -> None:
        served = self.served[name]
        if served.server is None or served.task is None:
            return
        served.server.should_exit = True
        served.task.result(timeout=START_TIMEOUT_S)
        if served.sock is not None:
            served.sock.close()
        served.server, served.sock = None, None
        served.task = None

    def close(self) -> None:
        for name in reversed(list(self.served)):
            self.stop(name)
            leftover = self.served[name].sock  # bound for a server that never started
            if leftover is not None:
                leftover.close()
                self.served[name].sock = None
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()
        self.procedures_engine.dispose()
        _dispose_engines_of(
            self.procedures_engine.url.database, str(self.settings.data_dir.resolve())
        )

    # --- parts of the procedure layer ----------------------------------------------------------

    def client(self) -> OneStopClient:
        return OneStopClient(self.one_stop_url, self.api_keys[str(ONE_STOP)])

    def service(self, client: OneStopClient) -> AddressChangeService:
        return AddressChangeService(self.procedures_engine, client, LocalConsentDesk(self.consents))

    def runner(self, client: OneStopClient, **kwargs: Any) -> ProcedureRunner:
        kwargs.setdefault("base_backoff_s", 0.05)
        kwargs.setdefault("max_backoff_s", 0.2)
        return ProcedureRunner(self.procedures_engine, client, self.signer, **kwargs)


def _dispose_engines_of(database: str | None, data_dir: str) -> None:
    """Close the pools the composition root opened for this test's database.

    In a deployment every node is a process and its engines live as long as it does; here the
    apps of a whole federation share the test process, which must close their connections itself
    (an open psycopg connection collected later is a ResourceWarning, an error under pytest)."""
    gc.collect()
    for obj in gc.get_objects():
        if isinstance(obj, Engine):
            name = obj.url.database or ""
            if name == database or name.startswith(data_dir):
                obj.dispose()


def _member_of(registry: str) -> str:
    return {
        "land-registry": LAND_REGISTRY_MEMBER,
        "electricity": ELECTRICITY_MEMBER,
        "gas": GAS_MEMBER,
    }.get(registry, MACHIDA_MEMBER)


def start_federation(tmp_path: Path, db_url: str, *, citizens: int = 60) -> Federation:
    # Bound now and kept: a port closed and re-bound later can be taken meanwhile as the source
    # port of an outgoing connection ("Address already in use").
    socks = {str(m): _bind() for m in ("central", *MEMBERS)}
    ports = {name: int(sock.getsockname()[1]) for name, sock in socks.items()}
    postgres = db_url.startswith("postgresql")
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=db_url if postgres else None,
        central_url=f"http://127.0.0.1:{ports['central']}",
        registry_refresh_s=3600,
        allow_dev_issuer=True,  # the tests' citizens sign in with the development issuer
    )
    fed = provision(
        settings,
        "http://unused",
        citizens=citizens,
        seed_value=SEED,
        addresses={m: f"http://127.0.0.1:{ports[str(m)]}" for m in MEMBERS},
        central_url=settings.central_url,
    )
    # The desk shares the consent store with the central consent service (the nodes' gate).
    consents = consent_service(settings)
    procedures_engine = make_engine(db_url)
    upgrade(procedures_engine)
    signer = MemberSigner(load_private_key(KeyStore(settings.data_dir).subsystem_key(ONE_STOP)))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="federation", daemon=True)
    thread.start()
    federation = Federation(
        settings=settings,
        api_keys=fed.api_keys,
        consents=consents,
        procedures_engine=procedures_engine,
        signer=signer,
        loop=loop,
        thread=thread,
        served={name: _Served(ports[name], socks[name]) for name in ports},
    )
    try:
        for name in ports:
            federation.start(name)
    except BaseException:
        federation.close()
        raise
    return federation


def running_federation(tmp_path: Path, db_url: str) -> Iterator[Federation]:
    fed = start_federation(tmp_path, db_url)
    try:
        yield fed
    finally:
        fed.close()


def utc_now() -> datetime:
    return datetime.now(UTC)
