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
import json
import logging
from collections.abc import Callable, Collection, Coroutine, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

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
from alerts.api import build_router as build_alerts_router
from alerts.inbox import AlertInbox
from alerts.mail import EmailDelivery, SmtpMailer, SmtpSettings
from alerts.worker import AlertWorker
from audit.api import build_router as build_audit_router
from audit.checkpoint import NoteSigner
from audit.log import TransparencyLog
from audit.sink import LogSink
from consent.api import (
    build_citizen_router,
    build_consent_log_router,
    build_events_router,
    build_gate_router,
)
from consent.artefact import ConsentIssuerKey
from consent.cache import CachingConsentGate
from consent.events import CONSENT_STATUS_EVENT, ConsentEvents
from consent.lifecycle import ConsentService
from consent.metrics import ConsentMetrics
from consent.model import ConsentRequestInput
from consent.registry_gate import RegistryConsentGate
from exchange.central_config import VerifiedRegistry
from exchange.db import as_unavailable, finishing_thread, make_engine, runs_inline, upgrade
from exchange.errors import ConfigurationError, OnceOnlyError
from exchange.event_inbox import EventPuller, Inbox
from exchange.event_outbox import DeliveryWorker
from exchange.identifiers import ClientId, MemberId
from exchange.keystore import DEV_ISSUER_COMMAND, INIT_COMMAND, KeyStore, member_command
from exchange.node.app import NodeParts, database_url
from exchange.node.central import create_central_app
from exchange.node_requests import node_request_authenticator
from exchange.ports import CITIZEN_AGENCY, AuditEvent, RegistryAdapter, SubjectTranslator
from exchange.settings import Settings
from exchange.signing import MemberSigner, TranslatorSigner, load_private_key
from exchange.subscriptions import CHANGE_EVENT, Subscriptions
from exchange.tokens import DevIssuer, Principal, TokenVerifier
from exchange.web.events import INBOX_PATH, build_inbox_router
from exchange.web.refusals import RefusalRecorder
from onceonly.components import (
    COMPONENT_BRANCHES,
    CONSENT_ISSUER,
    CONSENT_LOG,
    audit_origin,
    provision_audit_key,
    provision_consent_keys,
)
from policies.alerts import AlertRules
from policies.engine import PolicyEngineInfo, engine_from_settings, engine_name
from policies.feed import PolicyFeed
from policies.opa_server import OpaServerEngine

__all__ = [
    "COMPONENT_BRANCHES",
    "CONSENT_ISSUER",
    "CONSENT_LOG",
    "PSEUDONYMS",
    "REGISTRIES_FILE",
    "alert_jobs",
    "audit_log",
    "build_central_routers",
    "build_node_parts",
    "central_app",
    "checkpoint_publisher",
    "consent_issuer_key",
    "consent_log",
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
    "start_up_report",
    "subjects_of",
    "token_verifier",
]

_log = logging.getLogger("onceonly.wiring")

PSEUDONYMS = "pseudonyms"
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
        engine, log_id=log_id, signer=NoteSigner.load(path, audit_origin(log_id))
    )


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
    """Citizens' and auditors' tokens, from exactly one issuer: the OpenID Connect provider
    (``ONCEONLY_OIDC_ISSUER``, keys from its JWKS), one pinned key
    (``ONCEONLY_JWT_PUBLIC_KEY_FILE``), or — only with ``ONCEONLY_ALLOW_DEV_ISSUER`` (the demo
    sets it) — the development issuer's key in the data directory (made by ``onceonly keys
    dev-issuer``, never here). Nothing configured is an error, never a silent fallback."""
    external = settings.external_verifier(
        settings.jwt_public_key_file,
        timeout_s=settings.exchange_timeout_s,
        what="ONCEONLY_JWT_PUBLIC_KEY_FILE",
    )
    if external is not None:
        if settings.allow_dev_issuer:
            raise ConfigurationError(
                "configure one token issuer: ONCEONLY_ALLOW_DEV_ISSUER is set beside a real one"
            )
        return external
    if not settings.allow_dev_issuer:
        raise ConfigurationError(
            "no token issuer: set ONCEONLY_OIDC_ISSUER (your identity provider) or "
            "ONCEONLY_JWT_PUBLIC_KEY_FILE; the development issuer is for trials only and needs "
            "ONCEONLY_ALLOW_DEV_ISSUER=true"
        )
    keys = KeyStore(settings.data_dir)
    path = keys.require(
        keys.dev_issuer_key,
        "token issuer key",
        DEV_ISSUER_COMMAND,
        alternative="set ONCEONLY_OIDC_ISSUER to your identity provider",
    )
    return DevIssuer.load(
        path, issuer=settings.jwt_issuer, audience=settings.jwt_audience
    ).verifier()


def consent_issuer_key(settings: Settings) -> ConsentIssuerKey:
    """The information bank's artefact signing key (made by ``onceonly keys init``)."""
    keys = KeyStore(settings.data_dir)
    path = keys.require(keys.consent_issuer_key, "consent issuer key", INIT_COMMAND)
    return ConsentIssuerKey.load(path, issuer=CONSENT_ISSUER)


def consent_log(settings: Settings) -> LogSink:
    """The consent service's transparency log (grants, changes, uses, refusals) with its own key
    (``audit/consent-service.skey``, made by ``onceonly keys init``, only loaded here), in a
    database of its own: on SQLite the service's writes and the log's never wait on each other."""
    audit_engine = make_engine(database_url(settings, "consent-audit"))
    upgrade(audit_engine, COMPONENT_BRANCHES["consent-audit"])
    return LogSink(audit_log(settings, audit_engine, CONSENT_LOG), audit_engine)


def consent_service(
    settings: Settings, engine: Engine | None = None, *, audit: LogSink | None = None
) -> ConsentService:
    """The consent service; it records each change inside its own transaction (fail closed) into
    ``audit`` (default: ``consent_log(settings)``)."""
    engine = engine or make_engine(database_url(settings, "consent"))
    upgrade(engine, COMPONENT_BRANCHES["consent"])
    key = consent_issuer_key(settings)
    return ConsentService(
        engine,
        issuer_key=key,
        audit=audit or consent_log(settings),
        node=CONSENT_LOG,
        events=ConsentEvents(engine, key),
    )


def checkpoint_publisher(
    sink: LogSink, interval_s: float
) -> Callable[[], Coroutine[Any, Any, None]]:
    """A background job: every ``interval_s``, a signed checkpoint if the log grew. A database
    that cannot be used skips a round (the next one publishes), never ends the job."""

    async def publish() -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await finishing_thread(sink.publish_checkpoint, datetime.now(UTC))
            except OnceOnlyError:
                continue
            except Exception as exc:
                if as_unavailable(exc) is None:
                    raise
                _log.warning(
                    "checkpoint skipped: the database of log %s is unavailable", sink.log.log_id
                )

    return publish


def alert_rules(settings: Settings) -> AlertRules:
    """The alert rules with the operator's data (``ONCEONLY_ALERTS_POLICY_FILE``, JSON)."""
    if settings.alerts_policy_file is None:
        return AlertRules()
    try:
        data = json.loads(settings.alerts_policy_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigurationError(
            f"cannot read the alert rules' data {settings.alerts_policy_file}"
        ) from exc
    if not isinstance(data, dict):
        raise ConfigurationError("the alert rules' data is a JSON object")
    return AlertRules(data)


def smtp_settings(settings: Settings) -> SmtpSettings | None:
    """Where alert e-mails go (``ONCEONLY_SMTP_*``); None: no e-mail, the inbox only."""
    if not settings.smtp_host:
        return None
    return SmtpSettings(
        host=settings.smtp_host,
        port=settings.smtp_port,
        sender=settings.smtp_from,
        starttls=settings.smtp_starttls,
        credentials_file=settings.smtp_credentials_file,
        timeout_s=settings.exchange_timeout_s,
    )


def alert_jobs(
    worker: AlertWorker, delivery: EmailDelivery | None, interval_s: float
) -> Callable[[], Coroutine[Any, Any, None]]:
    """A background job: every ``interval_s``, the alert rules on the log's new entries, then the
    due e-mails. Fail safe: a round that fails (database away, SMTP down, a rule that cannot be
    evaluated) is logged and retried next round; the exchange never waits for it."""

    async def run() -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await finishing_thread(worker.run_round)
                if delivery is not None:
                    await finishing_thread(delivery.run_once)
            except Exception as exc:
                _log.warning(
                    "alerts of log %s: round skipped (%s), retried next round",
                    worker.log_id,
                    type(as_unavailable(exc) or exc).__name__,
                )

    return run


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


@contextlib.contextmanager
def start_up_report() -> Iterator[None]:
    """Around building a component: what its parts chose (the policy engine, logger
    ``onceonly.policies``) is written to stderr, one line each, once the block succeeded; a start
    that fails shows only its error. The command-line processes configure no other logging."""
    logger = logging.getLogger("onceonly.policies")
    records: list[logging.LogRecord] = []
    collect = _Collect(records)
    level = logger.level
    logger.addHandler(collect)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(collect)
        logger.setLevel(level)
    out = logging.StreamHandler()
    out.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    for record in records:
        out.handle(record)


class _Collect(logging.Handler):
    def __init__(self, records: list[logging.LogRecord]) -> None:
        super().__init__(logging.INFO)
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


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
    sink = LogSink(log, engine)
    # Events (issue 17): the consent status push lands in the inbox and drops cached checks.
    consent: CachingConsentGate | RegistryConsentGate = gate
    inbox = Inbox(
        engine,
        hosted=frozenset(hosted),
        audit=sink,
        node=str(member),
        max_skew_s=settings.max_clock_skew_s,
    )
    if settings.consent_cache_ttl_s > 0:
        consent = CachingConsentGate(gate, ttl_s=settings.consent_cache_ttl_s)
        inbox.subscribe(CONSENT_STATUS_EVENT, consent.on_event)
    # Change subscriptions (issue 17 item 3): published through the node's outbox, received into
    # its systems' change feed; a subscription on consent follows the consent's status push.
    subscriptions = Subscriptions(
        engine,
        str(member),
        {c: MemberSigner(load_private_key(keys.subsystem_key(c))) for c in hosted},
        audit=sink,
    )
    inbox.subscribe(CONSENT_STATUS_EVENT, subscriptions.on_consent_event)
    inbox.subscribe(CHANGE_EVENT, subscriptions.on_change_event)
    puller = EventPuller(
        inbox,
        {c: MemberSigner(load_private_key(keys.subsystem_key(c))) for c in hosted},
        interval_s=settings.event_pull_interval_s,
        timeout_s=settings.exchange_timeout_s,
        sources=subscriptions.publishers,
    )

    feed = PolicyFeed(engine_from_settings(settings))  # logs which engine, and why
    tokens = token_verifier(settings)
    citizens = citizen_codes or subjects_of(subjects, [c.id for c in declared.registries])
    smtp = smtp_settings(settings)
    rules = alert_rules(settings)
    alert_worker = AlertWorker(log, engine, rules, node=str(member))
    engines = (engine,) if pseudonym_engine is None else (engine, pseudonym_engine)
    return NodeParts(
        adapters=adapters,
        subjects=subjects,
        sealer=sealer,
        policy=feed.engine,
        consent=consent,
        audit=sink,
        routers=(
            build_audit_router(
                log, tokens, citizens, refused=_api_refusals(sink, str(member), "audit-api")
            ),
            build_alerts_router(
                AlertInbox(engine, log.log_id),
                log.origin,
                tokens,
                citizens,
                refused=_api_refusals(sink, str(member), "alerts-api"),
            ),
            build_inbox_router(inbox, on_gap=puller.kick),
        ),
        on_registry=(
            gate.on_registry,
            inbox.on_registry,
            *((consent.on_registry,) if isinstance(consent, CachingConsentGate) else ()),
            feed.on_registry,
            *((sealer.on_registry,) if sealer else ()),
            *((citizen_codes.on_registry,) if citizen_codes else ()),
        ),
        background=(
            checkpoint_publisher(sink, settings.checkpoint_interval_s),
            alert_jobs(
                alert_worker,
                EmailDelivery(engine, SmtpMailer(smtp)) if smtp else None,
                settings.alerts_interval_s,
            ),
            puller.run,
        ),
        engine=engine,
        subscriptions=subscriptions,
        event_retry_max_s=settings.event_retry_max_s,
        auditor_tokens=token_verifier(settings),
        consent_request_schema=ConsentRequestInput.model_json_schema(),
        collectors=(
            PolicyEngineInfo(feed.engine, settings.policy_engine),
            *((consent,) if isinstance(consent, CachingConsentGate) else ()),
        ),
        about={"policy_engine": engine_name(feed.engine), "alerts_engine": rules.engine},
        # the provider's checks (9)–(12) on the event loop when they are CPU work: an embedded
        # policy engine, and no database behind subject translation that waits on round trips
        # (the node's own database is not read there; a consent check goes to a thread anyway)
        inline=settings.db_work != "threads"
        and runs_inline(*engines[1:], mode=settings.db_work)
        and not isinstance(feed.engine, OpaServerEngine),
        closers=(
            *(a.aclose for a in adapters.values() if isinstance(a, SqlAdapter | HttpAdapter)),
            *((lambda: asyncio.to_thread(pseudonym_engine.dispose),) if pseudonym_engine else ()),
            *((sealer.aclose,) if sealer else ()),
            *((lambda: asyncio.to_thread(citizen_codes.close),) if citizen_codes else ()),
            lambda: asyncio.to_thread(gate.close),
        ),
    )


def build_central_routers(
    settings: Settings,
    registry: Callable[[datetime], VerifiedRegistry],
    metrics: ConsentMetrics | None = None,
    *,
    log: LogSink | None = None,
    jobs: list[Callable[[], Coroutine[Any, Any, None]]] | None = None,
) -> list[APIRouter]:
    """The consent service (citizen API, the nodes' gate, its public keys and its own log for
    auditors and citizens) and the pseudonym translator beside the central server; ``metrics``
    (registered on the central server's ``/metrics``) counts the consent service's work; ``log``
    is the consent log (default: ``consent_log(settings)``); ``jobs`` receives the consent
    status push's delivery worker (issue 17)."""
    log = log or consent_log(settings)
    service = consent_service(settings, audit=log)
    events = service.events

    authenticate_node = node_request_authenticator(registry, max_skew_s=settings.max_clock_skew_s)

    view: VerifiedRegistry | None = None
    with contextlib.suppress(OnceOnlyError):  # no registry yet: nothing names a translator
        view = registry(datetime.now(UTC))
    translator = pseudonym_translator(settings, view)
    tokens = token_verifier(settings)
    routers = [
        build_citizen_router(
            service,
            tokens,
            authenticate_consumer=authenticate_node,
            # Consumers may name the citizen by their own code: the translator beside it resolves.
            resolve_subject=translator.citizen_of if translator is not None else None,
            metrics=metrics,
            mandates=service.mandates(),
            unknown_services=lambda terms, _client: registry(datetime.now(UTC)).lacks(
                terms.services, terms.fields
            ),
        ),
        build_gate_router(service, authenticate_node, metrics=metrics),
        *((build_events_router(service, authenticate_node, audit=log),) if events else ()),
        # The consent log like any node's: auditors verify it, citizens see their history.
        build_consent_log_router(service, build_audit_router(log.log, tokens)),
    ]
    if events is not None and jobs is not None:
        worker = DeliveryWorker(
            events.outbox,
            lambda recipient: event_inbox_url(registry(datetime.now(UTC)), recipient),
            audit=log,
            node=CONSENT_LOG,
            max_backoff_s=settings.event_retry_max_s,
            retention=timedelta(days=settings.event_retention_days),
        )
        jobs.append(worker.run)
    if translator is not None:
        routers.append(
            build_translator_router(
                translator,
                authenticate_node,
                registry,
                lambda: datetime.now(UTC),
                citizen_of=lambda token: tokens.verify(token).subject,
            )
        )
    return routers


def event_inbox_url(registry: VerifiedRegistry, recipient: str) -> str:
    """Where an event to ``recipient`` goes: its member's node address in the verified registry."""
    return registry.node_address(ClientId.parse(recipient).member) + INBOX_PATH


def central_app(settings: Settings) -> FastAPI:
    """The central server with the consent service beside it, its metrics on ``/metrics``, and
    the consent log's checkpoints published every ``checkpoint_interval_s``."""
    metrics = ConsentMetrics()
    jobs: list[Callable[[], Coroutine[Any, Any, None]]] = []

    def routers(view: Callable[[datetime], VerifiedRegistry]) -> list[APIRouter]:
        # Built once the kernel's own keys are checked (a missing instance is named first); the
        # publisher joins ``jobs`` before the app starts, which is when they are read.
        log = consent_log(settings)
        jobs.append(checkpoint_publisher(log, settings.checkpoint_interval_s))
        return build_central_routers(settings, view, metrics, log=log, jobs=jobs)

    return create_central_app(settings, routers=routers, collectors=[metrics], background=jobs)


def _api_refusals(sink: LogSink, node: str, stage: str) -> RefusalRecorder:
    """Records a refusal of a node's own API routes (``exchange.web.refusals``) in its log: who
    is not proven, so no client or subject; the route template, the code and why."""

    def record(exc: OnceOnlyError, route: str, _request: Request) -> None:
        sink.record(
            AuditEvent(
                time=datetime.now(UTC),
                node=node,
                kind="refusal",
                decision="deny",
                status=exc.status,
                reason=f"{exc.code}: {exc.detail}"[:500],
                extra={"stage": stage, "route": route[:255]},
            )
        )

    return record
