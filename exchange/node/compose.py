"""The composition root: which implementation sits behind each port (DESIGN "The parts").

The only place besides the CLI that imports ``adapters``, ``policies``, ``consent`` and ``audit``.
A node gets the registry adapters of the reference registries it hosts (each over its own
database), the pseudonym service, the policy engine fed from the verified registry, the consent
gate and the audit log; the central server gets the registry routes.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Collection, Sequence
from datetime import UTC, datetime
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from sqlalchemy import Engine

from adapters.pseudonyms import PseudonymService
from adapters.reference.registries import REFERENCE_REGISTRIES
from adapters.sql import SqlAdapter
from audit.api import build_router as build_audit_router
from audit.checkpoint import NoteSigner
from audit.log import TransparencyLog
from consent.api import build_citizen_router, build_gate_router
from consent.artefact import ConsentArtefactVerifier, ConsentIssuerKey
from consent.lifecycle import ConsentService
from consent.metrics import ConsentMetrics
from consent.remote import RemoteConsentGate
from exchange.central_config import ConsentServiceEntry, VerifiedRegistry
from exchange.db import make_engine, runs_inline, sqlite_writer_turn, upgrade
from exchange.errors import OnceOnlyError
from exchange.identifiers import ClientId, MemberId, ServiceId
from exchange.keystore import KeyStore
from exchange.node.app import NodeParts, database_url
from exchange.node.central import create_central_app
from exchange.node_requests import sign_node_request, verify_node_request
from exchange.ports import (
    CITIZEN_AGENCY,
    AuditEvent,
    ConsentDecision,
    ConsentQuery,
    RegistryAdapter,
    SubjectTranslator,
)
from exchange.settings import Settings
from exchange.signing import MemberSigner, load_private_key
from exchange.tokens import DevIssuer, Principal, TokenVerifier
from policies.data import (
    AccessRight,
    PolicyRegistry,
    ServicePolicy,
    Statute,
    build_policy_data,
)
from policies.embedded import EmbeddedRegoEngine
from policies.engine import PolicyEngine, engine_from_settings
from policies.opa_server import OpaServerEngine

__all__ = [
    "CONSENT_ISSUER",
    "CONSENT_LOG",
    "PSEUDONYM_AGENCIES",
    "AgencyAliases",
    "LogSink",
    "PolicyFeed",
    "RegistryConsentGate",
    "audit_log",
    "build_central_routers",
    "build_node_parts",
    "central_app",
    "consent_issuer_key",
    "consent_service",
    "policy_registry",
    "pseudonym_service",
    "registry_database_url",
    "subjects_of",
    "token_verifier",
]

PSEUDONYMS = "pseudonyms"
CONSENT_ISSUER = "onceonly-information-bank"
CONSENT_LOG = "consent-service"
MAX_CACHED_TRANSLATIONS = 100_000
ONE_STOP_CLIENT = "JP/GOV/132098/one-stop"
"""Machida's one-stop desk acts for the citizen and knows them by their own platform identity."""
PSEUDONYM_AGENCIES: tuple[str, ...] = (
    CITIZEN_AGENCY,
    *(r.client_id for r in REFERENCE_REGISTRIES),
)


def registry_database_url(settings: Settings, name: str) -> str:
    """A reference registry's own database (or the pseudonym store): one SQLite file each, or
    the configured PostgreSQL database (their table names are distinct)."""
    if settings.database_url:
        return settings.database_url
    path: Path = (settings.data_dir / "registries" / f"{name}.sqlite").resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def pseudonym_service(settings: Settings, engine: Engine | None = None) -> PseudonymService:
    engine = engine or make_engine(registry_database_url(settings, PSEUDONYMS))
    upgrade(engine)
    return PseudonymService(engine, PSEUDONYM_AGENCIES)


class AgencyAliases:
    """Subsystems that act for the citizen use the citizen's own identity (``CITIZEN_AGENCY``)."""

    def __init__(self, inner: SubjectTranslator, aliases: dict[str, str]) -> None:
        self._inner = inner
        self._aliases = aliases
        self._cache: dict[tuple[str, str, str], str] = {}

    def translate(self, subject: str, *, from_agency: str, to_agency: str) -> str:
        src = self._aliases.get(from_agency, from_agency)
        dst = self._aliases.get(to_agency, to_agency)
        if src == dst:
            return subject
        # Pseudonyms are issued once and never reassigned, so a translation found stays true;
        # an unknown one is not remembered (a citizen enrolled a moment ago is found next time).
        key = (subject, src, dst)
        found = self._cache.get(key)
        if found is None:
            found = self._inner.translate(subject, from_agency=src, to_agency=dst)
            if len(self._cache) >= MAX_CACHED_TRANSLATIONS:
                self._cache.clear()
            self._cache[key] = found
        return found


class LogSink:
    """The transparency log as the node's audit sink (batched appends, one writer at a time)."""

    def __init__(self, log: TransparencyLog, engine: Engine) -> None:
        self.log = log
        self._engine = engine

    def record(self, event: AuditEvent) -> None:
        self.record_many([event])

    def record_many(self, events: Sequence[AuditEvent]) -> None:
        with sqlite_writer_turn(self._engine):
            self.log.append_many(events)


def audit_log(settings: Settings, engine: Engine, log_id: str) -> TransparencyLog:
    """A log with its own note key in the data directory; its origin names the instance and log."""
    origin = f"onceonly.example/{log_id}/audit"
    slug = log_id.replace("/", "_")
    signer = NoteSigner.load_or_create(settings.data_dir / "audit" / f"{slug}.skey", origin)
    return TransparencyLog(engine, log_id=log_id, signer=signer)


def subjects_of(pseudonyms: SubjectTranslator) -> Callable[[Principal], Collection[str]]:
    """Every pseudonym a citizen is known by, so their "who accessed my data" view is complete."""

    def lookup(principal: Principal) -> Collection[str]:
        found = {principal.subject}
        for agency in PSEUDONYM_AGENCIES:
            if agency == CITIZEN_AGENCY:
                continue
            with contextlib.suppress(OnceOnlyError):
                found.add(
                    pseudonyms.translate(
                        principal.subject, from_agency=CITIZEN_AGENCY, to_agency=agency
                    )
                )
        return found

    return lookup


def token_verifier(settings: Settings) -> TokenVerifier:
    """Citizens' and auditors' tokens: the configured issuer's key, or the development issuer's."""
    if settings.jwt_public_key_file is not None:
        return TokenVerifier(
            settings.jwt_public_key_file.read_bytes(),
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
        )
    return DevIssuer.load_or_create(
        settings.data_dir, issuer=settings.jwt_issuer, audience=settings.jwt_audience
    ).verifier()


def consent_issuer_key(settings: Settings) -> ConsentIssuerKey:
    """The information bank's artefact signing key (made at first use, in the data directory)."""
    return ConsentIssuerKey.load_or_create(
        settings.data_dir / "consent" / "issuer.key", issuer=CONSENT_ISSUER
    )


def consent_service(settings: Settings, engine: Engine | None = None) -> ConsentService:
    engine = engine or make_engine(database_url(settings, "consent"))
    upgrade(engine)
    key = consent_issuer_key(settings)
    # The service records each change inside its own transaction (fail closed); the log lives in
    # a database of its own so that, on SQLite, the two writers never wait on each other.
    audit_engine = make_engine(database_url(settings, "consent-audit"))
    upgrade(audit_engine)
    log = audit_log(settings, audit_engine, CONSENT_LOG)
    return ConsentService(
        engine, issuer_key=key, audit=LogSink(log, audit_engine), node=CONSENT_LOG
    )


class RegistryConsentGate:
    """A provider node's consent gate: the consent service named in the verified registry.

    Rebuilt whenever the registry names another consent service or key; with none named, every
    consent-based request is refused (fail closed)."""

    def __init__(self, signer: MemberSigner, client: ClientId, *, timeout_s: float) -> None:
        self._signer = signer
        self._client = client
        self._timeout_s = timeout_s
        self._lock = threading.Lock()
        self._entry: ConsentServiceEntry | None = None
        self._gate: RemoteConsentGate | None = None

    def on_registry(self, registry: VerifiedRegistry) -> None:
        entry = registry.document.consent_service
        with self._lock:
            if entry == self._entry:
                return
            old, self._entry = self._gate, entry
            self._gate = None
            if entry is not None:
                self._gate = RemoteConsentGate(
                    entry.url,
                    self._sign,
                    ConsentArtefactVerifier.from_pem(entry.issuer_public_key),
                    timeout_s=self._timeout_s,
                )
        if old is not None:
            old.close()

    def _sign(self, method: str, path: str, body: bytes) -> dict[str, str]:
        return sign_node_request(
            self._signer, self._client, method, path, body, now=datetime.now(UTC)
        )

    def _current(self, query: ConsentQuery) -> RemoteConsentGate | ConsentDecision:
        with self._lock:
            gate = self._gate
        if gate is None:
            return ConsentDecision(
                False, query.consent_id, frozenset(), ("no consent service in the registry",)
            )
        return gate

    def check(self, query: ConsentQuery) -> ConsentDecision:
        gate = self._current(query)
        return gate if isinstance(gate, ConsentDecision) else gate.check(query)

    def use(self, query: ConsentQuery) -> ConsentDecision:
        gate = self._current(query)
        return gate if isinstance(gate, ConsentDecision) else gate.use(query)

    def close(self) -> None:
        with self._lock:
            if self._gate is not None:
                self._gate.close()


def policy_registry(registry: VerifiedRegistry) -> PolicyRegistry:
    """What the policies need from the verified registry: services, access rights, statutes."""
    doc = registry.document
    return PolicyRegistry(
        services=tuple(
            ServicePolicy(ServiceId.parse(s.id), s.fields, s.purposes, s.changes)
            for s in doc.services
        ),
        access_rights=tuple(
            AccessRight(
                ServiceId.parse(r.service), ClientId.parse(r.client), r.not_before, r.not_after
            )
            for r in doc.access_rights
        ),
        statutes=tuple(
            Statute(
                ordinance=t.ordinance,
                title=t.title_ja or t.title_en or t.ordinance,
                service=ServiceId.parse(t.service),
                purposes=t.purposes,
                fields=t.fields,
                clients=(ClientId.parse(t.client),),
                operations=("read", "change"),
            )
            for t in doc.statutes
        ),
    )


class PolicyFeed:
    """Pushes each newly verified registry into the policy engine (no restart needed)."""

    def __init__(self, engine: PolicyEngine) -> None:
        self.engine = engine
        self._uploaded = False

    def on_registry(self, registry: VerifiedRegistry) -> None:
        if isinstance(self.engine, OpaServerEngine) and not self._uploaded:
            self.engine.upload_policies()
            self._uploaded = True
        self.engine.load_data(build_policy_data(policy_registry(registry)))


def build_node_parts(settings: Settings, member: MemberId) -> NodeParts:
    keys = KeyStore(settings.data_dir)
    hosted = keys.hosted_subsystems(member)
    adapters: dict[ClientId, RegistryAdapter] = {}
    for reg in REFERENCE_REGISTRIES:
        client = ClientId.parse(reg.client_id)
        if client in hosted:
            adapters[client] = reg.adapter(
                registry_database_url(settings, reg.subsystem), db_work=settings.db_work
            )
    pseudonym_engine = make_engine(registry_database_url(settings, PSEUDONYMS))
    subjects = AgencyAliases(
        pseudonym_service(settings, pseudonym_engine), {ONE_STOP_CLIENT: CITIZEN_AGENCY}
    )
    gate = RegistryConsentGate(
        MemberSigner(load_private_key(keys.subsystem_key(hosted[0]))),
        hosted[0],
        timeout_s=settings.exchange_timeout_s,
    )
    engine = make_engine(database_url(settings, f"node-{str(member).replace('/', '_')}"))
    upgrade(engine)
    log = audit_log(settings, engine, str(member))

    async def publish_checkpoints() -> None:
        while True:
            await asyncio.sleep(settings.checkpoint_interval_s)
            with contextlib.suppress(OnceOnlyError):
                await asyncio.to_thread(_publish, log, engine)

    feed = PolicyFeed(engine_from_settings(settings))
    return NodeParts(
        adapters=adapters,
        subjects=subjects,
        policy=feed.engine,
        consent=gate,
        audit=LogSink(log, engine),
        routers=(build_audit_router(log, token_verifier(settings), subjects_of(subjects)),),
        on_registry=(gate.on_registry, feed.on_registry),
        background=(publish_checkpoints,),
        engine=engine,
        inline=runs_inline(engine, pseudonym_engine, mode=settings.db_work)
        and isinstance(feed.engine, EmbeddedRegoEngine),
        closers=(
            *(a.aclose for a in adapters.values() if isinstance(a, SqlAdapter)),
            lambda: asyncio.to_thread(pseudonym_engine.dispose),
            lambda: asyncio.to_thread(gate.close),
        ),
    )


def _publish(log: TransparencyLog, engine: Engine) -> None:
    with sqlite_writer_turn(engine):
        log.publish_checkpoint(datetime.now(UTC))


def build_central_routers(
    settings: Settings,
    registry: Callable[[datetime], VerifiedRegistry],
    metrics: ConsentMetrics | None = None,
) -> list[APIRouter]:
    """The consent service (citizen API and the nodes' gate) beside the central server;
    ``metrics`` (registered on the central server's ``/metrics``) counts its work."""
    service = consent_service(settings)

    async def authenticate_node(request: Request, body: bytes) -> ClientId:
        root = request.scope.get("root_path", "")
        path = request.url.path
        path = path[len(root) :] if root and path.startswith(root) else path
        now = datetime.now(UTC)
        return verify_node_request(
            registry(now),
            dict(request.headers),
            request.method,
            path,
            body,
            now=now,
            max_skew_s=settings.max_clock_skew_s,
        )

    return [
        build_citizen_router(
            service,
            token_verifier(settings),
            authenticate_consumer=authenticate_node,
            metrics=metrics,
        ),
        build_gate_router(service, authenticate_node, metrics=metrics),
    ]


def central_app(settings: Settings) -> FastAPI:
    """The central server with the consent service beside it, its metrics on ``/metrics``."""
    metrics = ConsentMetrics()
    return create_central_app(
        settings,
        routers=lambda view: build_central_routers(settings, view, metrics),
        collectors=[metrics],
    )
