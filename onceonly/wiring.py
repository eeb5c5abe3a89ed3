"""The composition root: which implementation sits behind each port (DESIGN "The parts").

Only ``onceonly`` wires packages together. A node gets the registry adapters declared in its
registries file (``registries_file``, ``adapters.config``) for the subsystems it hosts, the
pseudonym translator's client (or, in the comparison-only ``local`` mode, the shared pseudonym
table), the policy engine fed from the
verified registry (``policies.feed``), the consent gate that follows the registry
(``consent.registry_gate``) and the audit log (``audit.sink``); the central server gets the
consent service's routes and the pseudonym translator (docs/pseudonyms.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Collection, Sequence
from datetime import UTC, datetime
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from sqlalchemy import Engine

from adapters.aliases import AgencyAliases
from adapters.config import RegistriesConfig, load_registries
from adapters.factory import build_adapters
from adapters.http import HttpAdapter
from adapters.pseudonyms import PseudonymService
from adapters.sql import SqlAdapter
from adapters.translator import TRANSLATOR_LOG, PseudonymTranslator, build_translator_router
from adapters.translator_client import HttpCitizenCodes, HttpSubjectSealer
from audit.api import build_router as build_audit_router
from audit.checkpoint import NoteSigner
from audit.log import TransparencyLog
from audit.sink import LogSink
from consent.api import build_citizen_router, build_gate_router
from consent.artefact import ConsentIssuerKey
from consent.lifecycle import ConsentService
from consent.metrics import ConsentMetrics
from consent.registry_gate import RegistryConsentGate
from exchange.central_config import VerifiedRegistry
from exchange.db import make_engine, runs_inline, sqlite_writer_turn, upgrade
from exchange.errors import ConfigurationError, OnceOnlyError
from exchange.identifiers import ClientId, MemberId
from exchange.keystore import DEV_ISSUER_COMMAND, INIT_COMMAND, KeyStore, member_command
from exchange.node.app import NodeParts, database_url
from exchange.node.central import create_central_app
from exchange.node_requests import VerifiedNodeRequest, verify_node_request
from exchange.ports import CITIZEN_AGENCY, RegistryAdapter, SubjectTranslator
from exchange.settings import Settings
from exchange.signing import MemberSigner, TranslatorSigner, load_private_key
from exchange.tokens import DevIssuer, Principal, TokenVerifier
from policies.embedded import EmbeddedRegoEngine
from policies.engine import engine_from_settings
from policies.feed import PolicyFeed

__all__ = [
    "COMPONENT_BRANCHES",
    "CONSENT_ISSUER",
    "CONSENT_LOG",
    "PSEUDONYMS",
    "REGISTRIES_FILE",
    "audit_log",
    "build_central_routers",
    "build_node_parts",
    "central_app",
    "consent_issuer_key",
    "consent_service",
    "provision_audit_key",
    "provision_consent_keys",
    "pseudonym_agencies",
    "pseudonym_service",
    "pseudonym_translator",
    "registries_config",
    "registries_file",
    "registry_database_url",
    "require_node_keys",
    "subjects_of",
    "token_verifier",
]

_log = logging.getLogger("onceonly.wiring")

COMPONENT_BRANCHES: dict[str, tuple[str, ...]] = {
    "central": ("exchange",),
    "node": ("exchange", "audit"),
    "consent": ("consent",),
    "consent-audit": ("audit",),
    "procedures": ("procedures",),
    "registries": ("adapters",),
    "translator-audit": ("audit",),
}
"""Which packages' tables each component's database holds (each migrates only its own)."""
PSEUDONYMS = "pseudonyms"
CONSENT_ISSUER = "onceonly-information-bank"
CONSENT_LOG = "consent-service"
ONE_STOP_CLIENT = "JP/GOV/132098/one-stop"
"""Machida's one-stop desk acts for the citizen and knows them by their own platform identity."""
TRANSLATOR_COMMAND = "onceonly registry set-translator <URL>"
"""What makes the pseudonym translator's token key and its audit log key (central operator)."""
REGISTRIES_FILE = "registries.toml"
"""The registries file in the data directory, when ``Settings.registries_file`` is unset."""


def registries_file(settings: Settings) -> Path:
    return settings.registries_file or settings.data_dir / REGISTRIES_FILE


def registries_config(settings: Settings) -> RegistriesConfig:
    """The registries this instance's nodes serve (none when there is no registries file)."""
    path = registries_file(settings)
    if settings.registries_file is None and not path.exists():
        return RegistriesConfig()
    return load_registries(path)


def pseudonym_agencies(settings: Settings) -> tuple[str, ...]:
    """The agencies a citizen has pseudonyms at: their own identity and every declared registry."""
    return (CITIZEN_AGENCY, *(r.id for r in registries_config(settings).registries))


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
    upgrade(engine, COMPONENT_BRANCHES["registries"])
    return PseudonymService(engine, pseudonym_agencies(settings))


def pseudonym_translator(
    settings: Settings, registry: VerifiedRegistry | None = None
) -> PseudonymTranslator | None:
    """The central translator over the pseudonym store, with its own key and transparency log;
    None when the instance has no translator key (``onceonly registry set-translator`` makes it).

    The key is only loaded: when ``registry`` names a translator, a missing key is a
    ``MissingKeyError`` (nodes would be sent to a translator that cannot sign)."""
    keys = KeyStore(settings.data_dir)
    if not keys.translator_key.exists():
        if registry is not None and registry.document.translator is not None:
            keys.require(keys.translator_key, "pseudonym translator key", TRANSLATOR_COMMAND)
        return None
    subjects = AgencyAliases(pseudonym_service(settings), {ONE_STOP_CLIENT: CITIZEN_AGENCY})
    audit_engine = make_engine(database_url(settings, "translator-audit"))
    upgrade(audit_engine, COMPONENT_BRANCHES["translator-audit"])
    log = audit_log(settings, audit_engine, TRANSLATOR_LOG)
    return PseudonymTranslator(
        subjects,
        TranslatorSigner(load_private_key(keys.translator_key)),
        LogSink(log, audit_engine),
    )


def _audit_origin(log_id: str) -> str:
    return f"onceonly.example/{log_id}/audit"


def _audit_key_command(log_id: str) -> str:
    if log_id == CONSENT_LOG:
        return INIT_COMMAND
    if log_id == TRANSLATOR_LOG:
        return TRANSLATOR_COMMAND
    return member_command(log_id)


def audit_log(settings: Settings, engine: Engine, log_id: str) -> TransparencyLog:
    """A log with its own note key in the data directory; its origin names the instance and log.

    The key is only loaded: one made here would be a key no auditor pinned."""
    keys = KeyStore(settings.data_dir)
    path = keys.require(
        keys.audit_key(log_id), f"audit log key of {log_id}", _audit_key_command(log_id)
    )
    return TransparencyLog(
        engine, log_id=log_id, signer=NoteSigner.load(path, _audit_origin(log_id))
    )


def provision_audit_key(settings: Settings, log_id: str) -> Path | None:
    """Provisioning: make a log's note key if it is missing; returns its path if it was made.

    An existing key is kept (and checked to be this log's)."""
    path = KeyStore(settings.data_dir).audit_key(log_id)
    if path.exists():
        NoteSigner.load(path, _audit_origin(log_id))
        return None
    NoteSigner.create(path, _audit_origin(log_id))
    return path


def provision_consent_keys(settings: Settings) -> list[Path]:
    """Provisioning for the central operator (``keys init``): the consent service's artefact
    key and its audit log key, each made only if missing; returns the paths made."""
    keys = KeyStore(settings.data_dir)
    made: list[Path] = []
    if not keys.consent_issuer_key.exists():
        ConsentIssuerKey.create(keys.consent_issuer_key, issuer=CONSENT_ISSUER)
        made.append(keys.consent_issuer_key)
    log_key = provision_audit_key(settings, CONSENT_LOG)
    if log_key is not None:
        made.append(log_key)
    return made


def subjects_of(
    pseudonyms: SubjectTranslator | None, agencies: Sequence[str]
) -> Callable[[Principal], Collection[str]]:
    """Every pseudonym a citizen is known by, so their "who accessed my data" view is complete.

    Without a shared table (translator mode) a node knows the citizen by their platform id only
    (docs/pseudonyms.md, "What is left")."""

    def lookup(principal: Principal) -> Collection[str]:
        found = {principal.subject}
        if pseudonyms is None:
            return found
        for agency in agencies:
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
    """Citizens' and auditors' tokens: the configured issuer's key, or the development issuer's
    (made by ``onceonly keys dev-issuer``, never here)."""
    if settings.jwt_public_key_file is not None:
        try:
            pem = settings.jwt_public_key_file.read_bytes()
        except OSError as exc:
            raise ConfigurationError(
                f"cannot read ONCEONLY_JWT_PUBLIC_KEY_FILE {settings.jwt_public_key_file}"
            ) from exc
        return TokenVerifier(pem, issuer=settings.jwt_issuer, audience=settings.jwt_audience)
    keys = KeyStore(settings.data_dir)
    path = keys.require(
        keys.dev_issuer_key,
        "token issuer key",
        DEV_ISSUER_COMMAND,
        alternative="set ONCEONLY_JWT_PUBLIC_KEY_FILE to your identity provider's key",
    )
    return DevIssuer.load(
        path, issuer=settings.jwt_issuer, audience=settings.jwt_audience
    ).verifier()


def consent_issuer_key(settings: Settings) -> ConsentIssuerKey:
    """The information bank's artefact signing key (made by ``onceonly keys init``)."""
    keys = KeyStore(settings.data_dir)
    path = keys.require(keys.consent_issuer_key, "consent issuer key", INIT_COMMAND)
    return ConsentIssuerKey.load(path, issuer=CONSENT_ISSUER)


def consent_service(settings: Settings, engine: Engine | None = None) -> ConsentService:
    engine = engine or make_engine(database_url(settings, "consent"))
    upgrade(engine, COMPONENT_BRANCHES["consent"])
    key = consent_issuer_key(settings)
    # The service records each change inside its own transaction (fail closed); the log lives in
    # a database of its own so that, on SQLite, the two writers never wait on each other.
    audit_engine = make_engine(database_url(settings, "consent-audit"))
    upgrade(audit_engine, COMPONENT_BRANCHES["consent-audit"])
    log = audit_log(settings, audit_engine, CONSENT_LOG)
    return ConsentService(
        engine, issuer_key=key, audit=LogSink(log, audit_engine), node=CONSENT_LOG
    )


def require_node_keys(settings: Settings, member: MemberId) -> None:
    """What ``build_node_parts`` and ``create_node_app`` load, checked without opening a
    database: a missing key (or a bad registries file) is one error before any worker process
    starts (a worker that cannot build its app would be restarted over and over)."""
    keys = KeyStore(settings.data_dir)
    keys.require(keys.anchor, "trust anchor", INIT_COMMAND)
    hosted = _served_registries(settings, member, keys)[0]
    if settings.pseudonyms == "translator":
        for client in hosted:
            keys.require(
                keys.subsystem_seal_key(client), f"sealing key of {client}", member_command(member)
            )
    keys.require(keys.audit_key(str(member)), f"audit log key of {member}", member_command(member))
    token_verifier(settings)


def _served_registries(
    settings: Settings, member: MemberId, keys: KeyStore
) -> tuple[list[ClientId], RegistriesConfig, list[ClientId]]:
    """The member's hosted subsystems, the registries file, and the registries this node serves
    (each must have its subsystem key here)."""
    hosted = keys.require_hosted_subsystems(member)
    declared = registries_config(settings)
    served = [r.client for r in declared.hosted_by(member)]
    unkeyed = [str(c) for c in served if c not in hosted]
    if unkeyed:
        raise ConfigurationError(
            f"registries declared without a subsystem key: {unkeyed}: run `{member_command(member)}`"
        )
    return hosted, declared, served


def build_node_parts(settings: Settings, member: MemberId) -> NodeParts:
    keys = KeyStore(settings.data_dir)
    hosted, declared, served = _served_registries(settings, member, keys)
    adapters: dict[ClientId, RegistryAdapter] = build_adapters(
        declared,
        served,
        default_dsn=lambda name: registry_database_url(settings, name),
        db_work=settings.db_work,
    )
    sealer: HttpSubjectSealer | None = None
    citizen_codes: HttpCitizenCodes | None = None
    subjects: AgencyAliases | None = None
    pseudonym_engine: Engine | None = None
    if settings.pseudonyms == "translator":
        # No pseudonym store at this node: codes of other agencies never reach it.
        sealer = HttpSubjectSealer(
            {c: MemberSigner(load_private_key(keys.subsystem_key(c))) for c in hosted},
            timeout_s=settings.exchange_timeout_s,
        )
        citizen_codes = HttpCitizenCodes(
            MemberSigner(load_private_key(keys.subsystem_key(hosted[0]))),
            hosted[0],
            timeout_s=settings.exchange_timeout_s,
        )
    else:
        _log.warning(
            "ONCEONLY_PSEUDONYMS=local: this node reads the shared pseudonym table of every "
            "agency; for comparison only, not for production (docs/pseudonyms.md)"
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
    upgrade(engine, COMPONENT_BRANCHES["node"])
    log = audit_log(settings, engine, str(member))

    async def publish_checkpoints() -> None:
        while True:
            await asyncio.sleep(settings.checkpoint_interval_s)
            with contextlib.suppress(OnceOnlyError):
                await asyncio.to_thread(_publish, log, engine)

    feed = PolicyFeed(engine_from_settings(settings))
    engines = (engine,) if pseudonym_engine is None else (engine, pseudonym_engine)
    return NodeParts(
        adapters=adapters,
        subjects=subjects,
        sealer=sealer,
        policy=feed.engine,
        consent=gate,
        audit=LogSink(log, engine),
        routers=(
            build_audit_router(
                log,
                token_verifier(settings),
                citizen_codes or subjects_of(subjects, [c.id for c in declared.registries]),
            ),
        ),
        on_registry=(
            gate.on_registry,
            feed.on_registry,
            *((sealer.on_registry,) if sealer else ()),
            *((citizen_codes.on_registry,) if citizen_codes else ()),
        ),
        background=(publish_checkpoints,),
        engine=engine,
        inline=runs_inline(*engines, mode=settings.db_work)
        and isinstance(feed.engine, EmbeddedRegoEngine),
        closers=(
            *(a.aclose for a in adapters.values() if isinstance(a, SqlAdapter | HttpAdapter)),
            *((lambda: asyncio.to_thread(pseudonym_engine.dispose),) if pseudonym_engine else ()),
            *((sealer.aclose,) if sealer else ()),
            *((lambda: asyncio.to_thread(citizen_codes.close),) if citizen_codes else ()),
            lambda: asyncio.to_thread(gate.close),
        ),
    )


def _publish(log: TransparencyLog, engine: Engine) -> None:
    """The checkpoint interval's work: release the restricted entries whose time has come, then
    sign a checkpoint if the log grew."""
    now = datetime.now(UTC)
    with sqlite_writer_turn(engine):
        log.release_due(now)
        log.publish_checkpoint(now)


def build_central_routers(
    settings: Settings,
    registry: Callable[[datetime], VerifiedRegistry],
    metrics: ConsentMetrics | None = None,
) -> list[APIRouter]:
    """The consent service (citizen API and the nodes' gate) and the pseudonym translator beside
    the central server; ``metrics`` (registered on the central server's ``/metrics``) counts the
    consent service's work."""
    service = consent_service(settings)

    async def authenticate_node(request: Request, body: bytes) -> VerifiedNodeRequest:
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

    view: VerifiedRegistry | None = None
    with contextlib.suppress(OnceOnlyError):  # no registry yet: nothing names a translator
        view = registry(datetime.now(UTC))
    translator = pseudonym_translator(settings, view)
    routers = [
        build_citizen_router(
            service,
            token_verifier(settings),
            authenticate_consumer=authenticate_node,
            # Consumers may name the citizen by their own code: the translator beside it resolves.
            resolve_subject=translator.citizen_of if translator is not None else None,
            metrics=metrics,
        ),
        build_gate_router(service, authenticate_node, metrics=metrics),
    ]
    if translator is not None:
        citizens = token_verifier(settings)
        routers.append(
            build_translator_router(
                translator,
                authenticate_node,
                registry,
                lambda: datetime.now(UTC),
                citizen_of=lambda token: citizens.verify(token).subject,
            )
        )
    return routers


def central_app(settings: Settings) -> FastAPI:
    """The central server with the consent service beside it, its metrics on ``/metrics``."""
    metrics = ConsentMetrics()
    return create_central_app(
        settings,
        routers=lambda view: build_central_routers(settings, view, metrics),
        collectors=[metrics],
    )
