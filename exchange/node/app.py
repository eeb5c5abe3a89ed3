"""The node ("security server") HTTP app and its composition (DESIGN "One exchange").

``create_node_app`` is the composition root of a node: it loads the member's keys from the data
directory, opens the database (migrations applied on start), wires the ports — policy decider,
consent gate, audit sink, registry adapters, transport — into the consumer and provider sides,
and serves:

* ``/r1/{INSTANCE}/{CLASS}/{MEMBER}/{SUBSYSTEM}/{SERVICE}[/{VERSION}]/{path}`` for departmental
  systems (X-Road message protocol for REST, plus ``X-OnceOnly-*`` headers);
* ``POST /x1/messages`` for other nodes (signed envelopes);
* ``POST /platform/v1/consent-requests`` for departmental systems: a consent request signed by
  the node to the consent service (``exchange.node.platform``, docs/protocol.md §5);
* metaservices ``/listClients`` and ``/r1/{subsystem}/listMethods|allowedMethods|getOpenAPI``;
* ``/healthz`` (liveness), ``/readyz`` (readiness: the database answers, the registry is valid)
  and ``/metrics``.

A database that cannot be used is answered 503 with ``Retry-After`` wherever it shows up — the
exchange fast path, a route, the group commit writer — by the one mapping in
``exchange.web.problems`` (``exchange.db.as_unavailable``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client.registry import Collector
from sqlalchemy import Engine
from starlette.types import ASGIApp, Receive, Scope, Send

from exchange.central_config import ServiceEntry
from exchange.db import (
    as_unavailable,
    database_url,
    finishing_thread,
    make_engine,
    runs_inline,
    upgrade,
)
from exchange.errors import (
    ConfigurationError,
    MethodNotAllowedError,
    NotFoundError,
    OnceOnlyError,
)
from exchange.event_outbox import DeliveryWorker
from exchange.group_commit import GroupCommitSink
from exchange.identifiers import ClientId, MemberId, ServiceId
from exchange.keystore import INIT_COMMAND, KeyStore, member_command
from exchange.message_log import SqlMessageLog
from exchange.node.changes_api import build_changes_router
from exchange.node.consumer import Consumer, ConsumerCall
from exchange.node.metrics import NodeMetrics
from exchange.node.obligations_api import (
    SWEEP_INTERVAL_S as OBLIGATIONS_SWEEP_S,
)
from exchange.node.obligations_api import (
    OverdueObligations,
    build_obligations_router,
    sweep_overdue,
)
from exchange.node.openapi import exchange_paths
from exchange.node.platform import CONSENT_REQUESTS_ROUTE, ConsentRequestForwarder
from exchange.node.provider import Provider
from exchange.node.registry_cache import RegistryCache
from exchange.node.transport import AiohttpTransport
from exchange.node_requests import node_request_authenticator
from exchange.obligations import ObligationsLedger
from exchange.openapi import openapi_document
from exchange.ports import (
    AuditEvent,
    AuditSink,
    ConsentGate,
    PolicyDecider,
    RegistryAdapter,
    ServiceDescription,
    SubjectSealer,
    SubjectTranslator,
    Transport,
)
from exchange.replay import ReplayGuard
from exchange.sealing import SealingKey
from exchange.settings import Settings
from exchange.signing import (
    CentralVerifier,
    MemberSigner,
    load_private_key,
    public_key_from_pem,
)
from exchange.subscriptions import Subscriptions
from exchange.tokens import TokenVerifier
from exchange.web.body import read_body
from exchange.web.events import INBOX_PATH, build_node_pull_router
from exchange.web.health import LIVENESS, METRICS, READINESS, database_check, readiness
from exchange.web.metrics import CONTENT_TYPE
from exchange.web.openapi import PUBLIC, documented, install_openapi, json_content
from exchange.web.problems import install_problem_handlers, problem_for, problem_response
from exchange.web.redirects import route_path
from exchange.web.refusals import refusal_auditing_route

__all__ = ["NodeParts", "create_node_app", "database_url", "utc_now"]

METASERVICES = frozenset({"listMethods", "allowedMethods", "getOpenAPI"})
MAX_REQUEST_BYTES = 10 * 1024 * 1024
REPLAY_PRUNE_INTERVAL_S = 300.0
STARTUP_REGISTRY_WAIT_S = 30.0


_log = logging.getLogger("onceonly.node")


LIST_CLIENTS = documented(
    "listClients",
    security=PUBLIC,
    problems=(503,),  # no valid registry
    responses={
        200: {
            "description": "the client subsystems of the instance",
            "content": json_content(
                {
                    "type": "object",
                    "required": ["clients"],
                    "properties": {
                        "clients": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["id", "name"],
                                "properties": {
                                    "id": {"type": "string"},
                                    "name": {"type": "string"},
                                },
                            },
                        }
                    },
                }
            ),
        }
    },
)
_NODE_LIVENESS = documented(
    "getHealth",
    security=PUBLIC,
    problems=(503,),  # no valid registry: the node can do nothing useful
    responses=LIVENESS["responses"],
)


_LIVENESS_FIELDS = frozenset(
    {"status", "member", "registry_serial", "registry_expires_at", "subsystems"}
)
"""The node's own ``/healthz`` fields, which a part's ``about`` cannot replace."""


class _ExchangeFastPath:
    """Serves ``POST /x1/messages`` and ``/r1/…`` before FastAPI's middleware stack.

    Measured, the stack between the server and a route (error, telemetry, body-limit, exception
    and exit-stack middlewares, then routing) took about a sixth of a node's time per exchange.
    The handlers are the same as the app's routes; errors get the same problem+json responses
    (``problem_for``); anything else passes through to the app untouched.

    It is also the one place where a refusal of these routes is audited whatever raised it — a
    body over the limit, a bad API key on a metaservice, an unknown subsystem: ``refused`` records
    every ``OnceOnlyError`` not yet recorded (docs/protocol.md §6, refusal classes)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        messages: Callable[[Request], Awaitable[Response]],
        r1: Callable[[Request], Awaitable[Response]],
        refused: Callable[[Request, OnceOnlyError], Awaitable[None]],
    ) -> None:
        self._app = app
        self._messages = messages
        self._r1 = r1
        self._refused = refused

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path, method = route_path(scope), scope["method"]
            handler = None
            if path == "/x1/messages" and method == "POST":
                handler = self._messages
            elif path.startswith("/r1/"):  # every method: the handler answers 405 itself
                handler = self._r1
            if handler is not None:
                request = Request(scope, receive)
                try:
                    response = await handler(request)
                except Exception as exc:  # the same answers as the app's exception handlers
                    response = await self._refusal(request, exc)
                await response(scope, receive, send)
                return
        await self._app(scope, receive, send)

    async def _refusal(self, request: Request, exc: Exception) -> Response:
        if isinstance(exc, OnceOnlyError) and not exc.audited:
            try:
                await self._refused(request, exc)
            except Exception as audit_exc:  # no audit, no answer but a failure (fail closed)
                return problem_for(request, audit_exc)
        return problem_for(request, exc)


def _counted_as(exc: Exception) -> tuple[int, str]:
    """The status and code an error is answered with (``exchange.web.problems``), for metrics."""
    if isinstance(exc, OnceOnlyError):
        return exc.status, exc.code
    unavailable = as_unavailable(exc)
    if unavailable is not None:
        return unavailable.status, unavailable.code
    return 500, "Server.Internal"


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class NodeParts:
    """What the composition root may plug into a node (all optional but the adapters)."""

    adapters: Mapping[ClientId, RegistryAdapter] = field(default_factory=dict)
    policy: PolicyDecider | None = None
    consent: ConsentGate | None = None
    audit: AuditSink | None = None
    subjects: SubjectTranslator | None = None
    """Translates plain subjects through a shared table (comparison only; docs/pseudonyms.md)."""
    sealer: SubjectSealer | None = None
    """The pseudonym translator: subjects leave sealed to the provider and arrive sealed, opened
    with the hosted subsystems' own sealing keys (``KeyStore.subsystem_seal_key``)."""
    routers: Sequence[APIRouter] = ()
    on_registry: Sequence[Callable[[Any], None]] = ()
    background: Sequence[Callable[[], Any]] = ()
    engine: Engine | None = None
    """The node's database, when the composition root already opened it for its parts."""
    closers: Sequence[Callable[[], Awaitable[None]]] = ()
    """Run at shutdown: close adapters, dispose of the engines the parts opened."""
    collectors: Sequence[Collector] = ()
    """The parts' own metrics, exported on the node's ``/metrics``."""
    about: Mapping[str, str] = field(default_factory=dict)
    """What the parts are, shown on ``/healthz`` beside the node's own fields (e.g. the policy
    engine chosen at start-up: ``{"policy_engine": "opa-inprocess"}``)."""
    auditor_tokens: TokenVerifier | None = None
    """Verifies auditors' bearer tokens for the node's ``GET /audit/obligations``; without it,
    that route is not served (the deletion confirmation is)."""
    inline: bool = False
    """The parts' blocking work is local CPU work (SQLite, embedded policy): the provider runs
    its checks on the event loop rather than in a worker thread (``exchange.db.runs_inline``)."""
    subscriptions: Subscriptions | None = None
    """Change subscriptions (docs/protocol.md §9): the node serves its registries' change events,
    publishes their changes through its outbox, and keeps its systems' change feed; the wiring
    subscribes its inbox handlers (``Subscriptions.on_change_event`` / ``on_consent_event``)."""
    event_retry_max_s: float = 300.0
    consent_request_schema: Mapping[str, Any] = field(
        default_factory=lambda: {
            "type": "object",
            "required": ["client"],
            "properties": {"client": {"type": "string"}},
        }
    )
    """The JSON schema of the consent service's request (``ConsentRequestInput``), for the body of
    ``POST /platform/v1/consent-requests`` in the node's OpenAPI document."""


def _load_anchor(keys: KeyStore) -> CentralVerifier:
    path = keys.require(keys.anchor, "trust anchor", INIT_COMMAND)
    try:
        return CentralVerifier(public_key_from_pem(path.read_text()))
    except OSError as exc:
        raise ConfigurationError(f"cannot read the trust anchor {path}") from exc


def _load_signers(keys: KeyStore, member: MemberId) -> dict[ClientId, MemberSigner]:
    return {
        c: MemberSigner(load_private_key(keys.subsystem_key(c)))
        for c in keys.require_hosted_subsystems(member)
    }


def _load_seal_keys(
    keys: KeyStore, signers: Mapping[ClientId, MemberSigner]
) -> dict[ClientId, SealingKey]:
    """The hosted subsystems' sealing keys (made by ``onceonly keys member`` or ``keys request``;
    never made here): a hosted subsystem without one is a ``MissingKeyError`` at start."""
    return {
        c: SealingKey.load(
            keys.require(
                keys.subsystem_seal_key(c), f"sealing key of {c}", member_command(c.member)
            )
        )
        for c in signers
    }


def _service_json(s: ServiceEntry) -> dict[str, Any]:
    sid = ServiceId.parse(s.id)
    return {
        "id": s.id,
        "serviceCode": sid.code,
        "serviceVersion": sid.version,
        "description": s.description,
        "fields": list(s.fields),
        "purposes": list(s.purposes),
        "changes": s.changes,
        **({"eventOf": s.event_of} if s.event_of else {}),
    }


def _openapi(s: ServiceEntry, adapter: RegistryAdapter | None) -> dict[str, Any]:
    """The service's OpenAPI: as the central registry lists it; else generated from the
    description of the adapter serving it here (real schemas); else from the registry entry
    (field names, no types)."""
    if s.openapi:
        return dict(s.openapi)
    sid = ServiceId.parse(s.id)
    described = next(
        (
            d
            for d in (adapter.services() if adapter is not None else ())
            if d.code == sid.code and d.version == sid.version
        ),
        None,
    )
    if described is None:
        described = ServiceDescription(
            code=sid.code,
            version=sid.version,
            description=s.description,
            fields=s.fields,
            purposes=s.purposes,
            changes=s.changes,
            event_of=s.event_of,
        )
    return openapi_document(s.id, [(s.id, described)])


def create_node_app(
    settings: Settings,
    member: MemberId,
    parts: NodeParts,
    *,
    engine: Engine | None = None,
    transport: Transport | None = None,
    clock: Callable[[], datetime] = utc_now,
    registry_wait_s: float | None = STARTUP_REGISTRY_WAIT_S,
) -> FastAPI:
    keys = KeyStore(settings.data_dir)
    anchor = _load_anchor(keys)
    signers = _load_signers(keys, member)
    engine = (
        engine
        or parts.engine
        or make_engine(database_url(settings, f"node-{str(member).replace('/', '_')}"))
    )
    upgrade(engine, ("exchange",))  # the kernel migrates its own tables; the wiring adds others
    transport = transport or AiohttpTransport()
    registry = RegistryCache(
        anchor=anchor,
        central_url=settings.central_url,
        transport=transport,
        cache_file=keys.registry_cache(member),
    )
    obligations = ObligationsLedger(engine, inline=runs_inline(engine, mode=settings.db_work))
    metrics = NodeMetrics((*parts.collectors, OverdueObligations(obligations, clock)))
    registry.on_change(lambda _reg: metrics.registry_serial.inc())
    for listener in parts.on_registry:
        registry.on_change(listener)
    if parts.subscriptions is not None:
        registry.on_change(parts.subscriptions.on_registry)
    inline = runs_inline(engine, mode=settings.db_work)
    audit = GroupCommitSink(parts.audit or SqlMessageLog(engine), inline=inline)
    node_id = str(member)
    replay = ReplayGuard(engine, node_id, max_skew_s=settings.max_clock_skew_s, inline=inline)
    provider = Provider(
        node=node_id,
        signers=signers,
        registry=registry,
        replay=replay,
        adapters=parts.adapters,
        audit=audit,
        policy=parts.policy,
        consent=parts.consent,
        subjects=parts.subjects,
        seal_keys=_load_seal_keys(keys, signers) if parts.sealer is not None else None,
        max_skew_s=settings.max_clock_skew_s,
        clock=clock,
        inline=parts.inline,
        ledger_inline=inline,
        obligations=obligations,
        subscriptions=parts.subscriptions,
    )
    consumer = Consumer(
        node=node_id,
        signers=signers,
        registry=registry,
        transport=transport,
        audit=audit,
        keys_engine=engine,
        max_skew_s=settings.max_clock_skew_s,
        timeout_s=settings.exchange_timeout_s,
        clock=clock,
        sealer=parts.sealer,
        obligations=obligations,
        subscriptions=parts.subscriptions,
    )

    # One worker delivers every hosted registry's streams (one table); each outbox wakes it.
    outboxes = list(parts.subscriptions.outboxes.values()) if parts.subscriptions else []
    deliveries = (
        [
            DeliveryWorker(
                outboxes[0],
                lambda recipient: (
                    registry.current(clock()).node_address(ClientId.parse(recipient).member)
                    + INBOX_PATH
                ),
                audit=audit,
                node=node_id,
                max_backoff_s=parts.event_retry_max_s,
                retention=timedelta(days=settings.event_retention_days),
                woken_by=outboxes[1:],
            )
        ]
        if outboxes
        else []
    )

    async def _refresh_loop() -> None:
        if registry_wait_s is None:  # the host fetches the first copy itself, once serving
            await asyncio.sleep(settings.registry_refresh_s)
        await registry.run(settings.registry_refresh_s, clock)

    async def _prune_loop() -> None:
        while True:
            await asyncio.sleep(REPLAY_PRUNE_INTERVAL_S)
            try:
                await finishing_thread(replay.prune, now=clock())
            except Exception as exc:  # the database is away: prune next time, never stop
                if as_unavailable(exc) is None:
                    raise
                metrics.database_unavailable_at("background")
                _log.warning("replay pruning skipped: the database is unavailable")

    async def _obligations_loop() -> None:
        """Records newly overdue obligations in the log (docs/operator.md)."""
        while True:
            await asyncio.sleep(OBLIGATIONS_SWEEP_S)
            try:
                await sweep_overdue(obligations, audit.record_async, node_id, clock())
            except Exception as exc:  # the database is away: sweep next time, never stop
                if as_unavailable(exc) is None:
                    raise
                metrics.database_unavailable_at("background")

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        registry.load_cached(now=clock())
        deadline = time.monotonic() + (registry_wait_s or 0.0)
        while registry_wait_s is not None:
            try:
                await registry.refresh(now=clock())
                break
            except OnceOnlyError:
                if time.monotonic() >= deadline:
                    break  # serve with the cached copy, or fail closed per request
                await asyncio.sleep(0.2)
        tasks = [asyncio.create_task(_refresh_loop()), asyncio.create_task(_prune_loop())]
        tasks.append(asyncio.create_task(_obligations_loop()))
        tasks += [asyncio.create_task(w.run()) for w in deliveries]
        tasks += [asyncio.create_task(job()) for job in parts.background]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await transport.aclose()
            for close in parts.closers:
                await close()
            engine.dispose()

    app = FastAPI(title=f"onceonly node {member}", lifespan=lifespan, docs_url=None, redoc_url=None)
    install_openapi(
        app,
        paths=lambda: exchange_paths([str(c) for c in signers], parts.consent_request_schema),
    )
    install_problem_handlers(
        app, on_database_unavailable=lambda: metrics.database_unavailable_at("request")
    )
    app.state.registry = registry
    app.state.engine = engine
    app.state.member = member

    # The two exchange routes take the raw request and need none of FastAPI's machinery:
    # ``_ExchangeFastPath`` serves them ahead of the middleware stack (``/r1/…`` for every method:
    # it answers 405 itself). ``/x1/messages`` stays in the route table too, so that another
    # method on it is answered 405, not 404.
    async def messages(request: Request) -> Response:
        started = time.perf_counter()
        try:
            answer = await provider.handle(await read_body(request, limit=MAX_REQUEST_BYTES))
        except Exception as exc:  # counted here, answered by the one mapping (problem_for)
            metrics.exchange("provider", *_counted_as(exc))
            raise
        # A signed refusal is HTTP 200 too: count what it stands for, not the HTTP status.
        metrics.exchange("provider", answer.outcome, answer.error_code)
        metrics.latency.labels("provider").observe(time.perf_counter() - started)
        return Response(answer.body, status_code=answer.status, headers=dict(answer.headers))

    @app.get("/listClients", **LIST_CLIENTS)
    async def list_clients() -> JSONResponse:
        reg = registry.current(clock())
        return JSONResponse({"clients": [{"id": s.id, "name": s.name} for s in reg.clients()]})

    def consumer_call(request: Request, body: bytes = b"") -> ConsumerCall:
        path = route_path(request.scope)[len("/r1/") :]
        headers = {k.lower(): v for k, v in request.headers.items()}
        return ConsumerCall(request.method, path, request.url.query, headers, body)

    async def refused(request: Request, exc: OnceOnlyError) -> None:
        """Audits a refusal the exchange routes raised before their own audit step."""
        if route_path(request.scope) == "/x1/messages":
            await provider.record_unverified(exc, clock())
        else:
            await consumer.record_refusal(consumer_call(request), exc)

    async def r1(request: Request) -> Response:
        started = time.perf_counter()
        path = route_path(request.scope)[len("/r1/") :]
        parts_ = path.split("/")
        if len(parts_) == 5 and parts_[4] in METASERVICES:
            if request.method != "GET":  # X-Road's metaservices are GETs
                raise MethodNotAllowedError("a metaservice is a GET", allow=("GET",))
            return await _metaservice(parts_, request)
        try:
            result = await consumer.call(
                consumer_call(request, await read_body(request, limit=MAX_REQUEST_BYTES))
            )
        except Exception as exc:  # counted here, answered by the one mapping (problem_for)
            metrics.exchange("consumer", *_counted_as(exc))
            raise
        metrics.exchange("consumer", result.status, result.headers.get("x-road-error"))
        metrics.latency.labels("consumer").observe(time.perf_counter() - started)
        return Response(result.body, status_code=result.status, headers=result.headers)

    app.add_route("/x1/messages", messages, methods=["POST"])
    app.add_middleware(_ExchangeFastPath, messages=messages, r1=r1, refused=refused)
    consent_requests = ConsentRequestForwarder(
        node=node_id,
        signers=signers,
        registry=registry,
        transport=transport,
        authenticate=consumer.authenticate_async,
        record=audit.record_async,
        clock=clock,
        timeout_s=settings.exchange_timeout_s,
    )
    app.add_route(CONSENT_REQUESTS_ROUTE, consent_requests.handle, methods=["POST"])

    async def _metaservice(parts_: list[str], request: Request) -> Response:
        reg = registry.current(clock())
        provider_id = ClientId.parse("/".join(parts_[:4]))
        if not reg.has_subsystem(provider_id):
            raise NotFoundError("unknown subsystem", code="Server.ServerProxy.UnknownService")
        services = reg.services_of(provider_id)
        name = parts_[4]
        if name == "listMethods":
            return JSONResponse({"service": [_service_json(s) for s in services]})
        client = await asyncio.to_thread(consumer.authenticate, dict(request.headers))
        if name == "allowedMethods":
            now = clock()
            allowed = [
                s
                for s in services
                if reg.access_right(client, ServiceId.parse(s.id), now=now) is not None
            ]
            return JSONResponse({"service": [_service_json(s) for s in allowed]})
        code = request.query_params.get("serviceCode", "")
        for s in services:
            sid = ServiceId.parse(s.id)
            if sid.code == code and (
                request.query_params.get("serviceVersion") in (None, sid.version)
            ):
                return JSONResponse(_openapi(s, parts.adapters.get(provider_id)))
        raise NotFoundError("unknown serviceCode", code="Server.ServerProxy.UnknownService")

    @app.get("/healthz", **_NODE_LIVENESS)
    async def healthz() -> JSONResponse:
        now = clock()
        try:
            reg = registry.current(now)
        except ConfigurationError as exc:  # no valid registry: this node can do nothing useful
            return problem_response(exc.status, exc.code, exc.detail, instance="/healthz")
        return JSONResponse(
            {
                "status": "ok",
                "member": node_id,
                "registry_serial": reg.serial,
                "registry_expires_at": reg.document.expires_at.isoformat(),
                "subsystems": [str(c) for c in signers],
                **{k: v for k, v in parts.about.items() if k not in _LIVENESS_FIELDS},
            }
        )

    def registry_check() -> None:
        registry.current(clock())  # raises ConfigurationError when there is no valid copy

    @app.get("/readyz", **READINESS)
    async def readyz() -> JSONResponse:
        """Readiness: the database answers a query and a valid registry is held."""
        return await readiness(
            {"database": database_check(engine), "registry": registry_check},
            on_database_unavailable=lambda: metrics.database_unavailable_at("readiness"),
        )

    @app.get("/metrics", response_class=PlainTextResponse, **METRICS)
    async def metrics_endpoint() -> Response:
        return Response(await asyncio.to_thread(metrics.render), media_type=CONTENT_TYPE)

    app.include_router(
        build_obligations_router(
            obligations,
            node=node_id,
            authenticate=consumer.authenticate_async,
            record=audit.record_async,
            clock=clock,
            auditors=parts.auditor_tokens,
            refused=_api_refusals(audit, node_id, "obligations-api", clock),
            clients=[str(c) for c in signers],
        )
    )
    if parts.subscriptions is not None:
        _serve_subscriptions(app, parts.subscriptions, consumer, audit, settings, clock)
    for router in parts.routers:
        app.include_router(router)
    return app


def _api_refusals(
    audit: GroupCommitSink, node: str, stage: str, clock: Callable[[], datetime]
) -> Callable[[OnceOnlyError, str, Request], None]:
    """Records a refusal of one of the node's APIs in its log (``stage`` names the API)."""

    def refused(exc: OnceOnlyError, route: str, _request: Request) -> None:
        audit.record(
            AuditEvent(
                time=clock(),
                node=node,
                kind="refusal",
                decision="deny",
                status=exc.status,
                reason=f"{exc.code}: {exc.detail}"[:500],
                extra={"stage": stage, "route": route[:255]},
            )
        )

    return refused


def _serve_subscriptions(
    app: FastAPI,
    subscriptions: Subscriptions,
    consumer: Consumer,
    audit: GroupCommitSink,
    settings: Settings,
    clock: Callable[[], datetime],
) -> None:
    """The change feed of the hosted systems, and the catch-up pull of the registries' streams
    (docs/protocol.md §8–§9)."""
    registry: RegistryCache = app.state.registry
    node = str(app.state.member)
    hosted = [str(c) for c in subscriptions.outboxes]

    authenticate_node = node_request_authenticator(
        registry.current, max_skew_s=settings.max_clock_skew_s, clock=clock
    )

    app.include_router(
        build_changes_router(
            subscriptions,
            authenticate=consumer.authenticate_async,
            refused=_api_refusals(audit, node, "changes-api", clock),
            clients=hosted,
        )
    )
    app.include_router(
        build_node_pull_router(
            {str(c): o for c, o in subscriptions.outboxes.items()},
            authenticate_node,
            audit=audit,
            node=node,
            route_class=refusal_auditing_route(_api_refusals(audit, node, "events-pull", clock)),
        )
    )
