"""HTTP routes of the consent service: the citizen API, the consumer's request, the node gate.

Issue 5 "API". Three audiences, three authentications, all injected (no import-time singletons):

* citizens — a bearer JWT (``exchange.tokens.TokenVerifier``, role ``citizen``); the token's
  ``sub`` is the only subject a citizen can ever see or change (``NotFoundError`` otherwise);
* consumers — ``authenticate_consumer(request, body) -> ClientId`` (the composition root supplies
  it; a consumer may only ask for consents given to itself);
* provider nodes — ``authenticate_node(request, body) -> ClientId`` (signed requests); a node may
  only ask about exchanges with its own member's services.

Routes only raise ``exchange.errors`` (problem+json is mapped centrally by
``exchange.web.problems``); bodies are bounded and parsed into wire models, so nothing a caller
sends can produce a 500. Every route is an ``_AuditedRoute``: whatever refuses a request — the
authentication, the body limit, the validation, the lifecycle — the refusal is recorded in the
consent service's log (``ConsentService.record_refusal``) before the problem goes out. A signed
request that changes state (``POST /consent-requests``, ``POST /gate/use``) is remembered until its
signature expires, so the same request again is refused as a replay (409
``Server.ServerProxy.Replay``). Paths (under ``prefix``, default ``/consent/v1``)::

    GET  /consents                        GET  /consents/{id}
    GET  /consents/{id}/history           GET  /consents/{id}/uses
    GET  /consents/{id}/receipts          GET  /consents/{id}/receipts/{rid}[?format=html|jws]
    GET  /keys                            (public: the JWK Set receipts are verified with)
    POST /consents/{id}/pause|resume|revoke
    GET  /mandates                        POST /mandates       POST /mandates/{id}/revoke
    POST /mandates/{id}/authorise         (may the caller act under it for this procedure?)
    (``X-OnceOnly-Acting-For: <mandate id>`` on the consent routes: acting for someone)
    GET  /consent-requests                GET  /consent-requests/{id}
    POST /consent-requests/{id}/approve|decline
    POST /consent-requests                (consumer)
    POST /gate/check                      POST /gate/use   (provider node)
    /log/audit/…, /log/me/accesses…       (the consent log: ``build_consent_log_router``)
"""

# No ``from __future__ import annotations``: FastAPI must evaluate the route annotations, which
# use dependencies built inside the router factories.

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from consent.lifecycle import ConsentService, OnBehalf
from consent.mandates import Mandate, MandateGrant, MandateService, MandateUse, acting_actor
from consent.metrics import ConsentMetrics
from consent.model import (
    Consent,
    ConsentHistoryEvent,
    ConsentRequest,
    ConsentRequestInput,
    ConsentUse,
    GateAnswer,
    GateRequest,
    Receipt,
)
from consent.receipt import render_receipt_html
from exchange.errors import ClientError, NotFoundError, OnceOnlyError, RefusalError
from exchange.event_inbox import CONSENT_EVENTS_PATH
from exchange.identifiers import ClientId, ServiceId
from exchange.node_requests import VerifiedNodeRequest
from exchange.ports import AuditSink, ConsentDecision, ConsentQuery
from exchange.tokens import Principal, TokenVerifier
from exchange.web.auth import bearer_principal
from exchange.web.body import read_body
from exchange.web.events import build_pull_router
from exchange.web.openapi import (
    NODE_REQUEST,
    PUBLIC,
    documented,
    json_body,
    json_content,
    media_content,
)
from exchange.web.refusals import refusal_auditing_route

__all__ = [
    "JWS_MEDIA_TYPE",
    "MAX_BODY_BYTES",
    "Authenticator",
    "ResolveSubject",
    "build_citizen_router",
    "build_consent_log_router",
    "build_events_router",
    "build_gate_router",
]

MAX_BODY_BYTES = 64 * 1024
JWS_MEDIA_TYPE = "application/jose"
"""RFC 7515 §9.2.1: the compact serialisation of a JWS."""
Authenticator = Callable[[Request, bytes], Awaitable[VerifiedNodeRequest]]
ResolveSubject = Callable[[ClientId, str, datetime], str]
"""``resolve(client, code, now) -> citizen id``: a consumer's own pseudonym of a citizen, resolved
centrally (the pseudonym translator; ``NotFoundError`` for a code it does not know)."""
"""Proves who sent a request from the request and its raw body (a signed node request): the
caller, the id of what it signed and until when that signature is valid."""
_HTML_CSP = "default-src 'none'; style-src 'unsafe-inline'"
_CALLER = "onceonly.consent.caller"
"""Where a route leaves the verified caller for the refusal record (request-scoped state)."""
_READ = (401, 403, 404, 503)
"""What a citizen's read of one consent or request can answer besides 200."""
_CHANGE = (401, 403, 404, 409, 503)
"""… and a change of one: 409 for an illegal transition (resuming a revoked consent)."""


async def _body(request: Request) -> bytes:
    return await read_body(request, limit=MAX_BODY_BYTES)


def _audited_route(service: ConsentService) -> type[APIRoute]:
    """A route class whose handler records every refusal it answers (docs/consent.md), with the
    caller when one was verified before the refusal."""

    def record(exc: OnceOnlyError, route: str, request: Request) -> None:
        client = request.scope.get(_CALLER)
        service.record_refusal(
            exc,
            route=route,
            client=str(client) if client is not None else None,
            now=service.clock(),
        )

    return refusal_auditing_route(record)


async def _caller(
    request: Request,
    body: bytes,
    authenticate: Authenticator,
    service: ConsentService,
    *,
    changes_state: bool,
    now: datetime,
) -> ClientId:
    """(N1)–(N3) by ``authenticate``; (N4) for a request that changes state: its id remembered
    until its signature expires, a second one refused as a replay."""
    verified = await authenticate(request, body)
    request.scope[_CALLER] = verified.client
    if changes_state:
        await run_in_threadpool(
            service.remember_request, verified.request_id, verified.valid_until, now=now
        )
    return verified.client


def build_citizen_router(
    service: ConsentService,
    verifier: TokenVerifier,
    *,
    authenticate_consumer: Authenticator | None = None,
    resolve_subject: ResolveSubject | None = None,
    clock: Callable[[], datetime] | None = None,
    prefix: str = "/consent/v1",
    metrics: ConsentMetrics | None = None,
    mandates: MandateService | None = None,
    unknown_services: Callable[[ConsentRequestInput, ClientId], list[str]] | None = None,
) -> APIRouter:
    """``unknown_services(terms, client)`` names what a consumer's request asks for that the
    registry does not have (services, or fields of theirs): such a request is refused (400).

    The citizen API (``mandates``: with the mandate routes and ``X-OnceOnly-Acting-For``), plus ``POST /consent-requests`` for consumers when an authenticator is
    given; ``resolve_subject`` lets consumers name the citizen by their own pseudonym
    (``subject_agency = "client"``). ``metrics`` counts the actions that change a consent."""
    now = clock or service.clock
    counted = metrics or ConsentMetrics()
    router = APIRouter(prefix=prefix, tags=["consent"], route_class=_audited_route(service))
    Citizen = Annotated[Principal, bearer_principal(verifier, role="citizen")]
    ActingFor = Annotated[
        str | None,
        Header(
            alias="X-OnceOnly-Acting-For",
            description="a mandate id: the caller acts for the person it represents",
        ),
    ]

    def _mandate(principal: Principal, mandate_id: str, action: str, **scope: str) -> Mandate:
        if mandates is None:
            raise NotFoundError("this consent service holds no mandates")
        return mandates.authorise(principal.subject, mandate_id, now=now(), action=action, **scope)

    def _whose(principal: Principal, acting_for: str | None, action: str) -> str:
        """The subject a read is about: the caller's own, or the one its mandate represents."""
        if acting_for is None:
            return principal.subject
        return _mandate(principal, acting_for, action).represented

    def _on_behalf(
        principal: Principal,
        acting_for: str | None,
        action: str,
        purpose_of: Callable[[str], str],
    ) -> tuple[str, OnBehalf | None]:
        """For a change: the subject and, when acting for someone, the checked mandate — in
        force and covering the purpose of the consent (or request) it changes."""
        if acting_for is None:
            return principal.subject, None
        represented = _mandate(principal, acting_for, action).represented
        mandate = _mandate(principal, acting_for, action, purpose=purpose_of(represented))
        return represented, OnBehalf(acting_actor(mandate), mandate.id, mandate.represented_party)

    def _consent_purpose(consent_id: str) -> Callable[[str], str]:
        return lambda subject: service.get_consent(subject, consent_id, now=now()).purpose.code

    def _request_purpose(request_id: str) -> Callable[[str], str]:
        return lambda subject: service.get_request(subject, request_id, now=now()).purpose.code

    @router.get("/consents", **documented("listConsents", problems=(401, 403, 503)))
    def list_consents(principal: Citizen, acting_for: ActingFor = None) -> list[Consent]:
        return service.list_consents(_whose(principal, acting_for, "list consents"), now=now())

    @router.get("/consents/{consent_id}", **documented("getConsent", problems=_READ))
    def get_consent(consent_id: str, principal: Citizen, acting_for: ActingFor = None) -> Consent:
        subject = _whose(principal, acting_for, "read a consent")
        return service.get_consent(subject, consent_id, now=now())

    @router.get("/consents/{consent_id}/history", **documented("getConsentHistory", problems=_READ))
    def history(
        consent_id: str, principal: Citizen, acting_for: ActingFor = None
    ) -> list[ConsentHistoryEvent]:
        return service.history(
            _whose(principal, acting_for, "read a consent's history"), consent_id, now=now()
        )

    @router.get("/consents/{consent_id}/uses", **documented("listConsentUses", problems=_READ))
    def uses(consent_id: str, principal: Citizen, acting_for: ActingFor = None) -> list[ConsentUse]:
        subject = _whose(principal, acting_for, "read a consent's uses")
        return service.uses(subject, consent_id, now=now())

    @router.get(
        "/consents/{consent_id}/receipts", **documented("listConsentReceipts", problems=_READ)
    )
    def receipts(
        consent_id: str, principal: Citizen, acting_for: ActingFor = None
    ) -> list[Receipt]:
        subject = _whose(principal, acting_for, "read a consent's receipts")
        return service.receipts(subject, consent_id, now=now())

    @router.get(
        "/consents/{consent_id}/receipts/{receipt_id}",
        response_model=None,
        **documented(
            "getConsentReceipt",
            problems=(400, *_READ),
            responses={
                200: {
                    "description": "the receipt: JSON, or a printable page with `format=html`",
                    "content": json_content(Receipt)
                    | media_content("text/html", {"type": "string"}),
                }
            },
        ),
    )
    def receipt(
        consent_id: str,
        receipt_id: str,
        principal: Citizen,
        format: Annotated[Literal["json", "html", "jws"], Query()] = "json",
        acting_for: ActingFor = None,
    ) -> Response:
        subject = _whose(principal, acting_for, "read a consent receipt")
        found = service.receipt(subject, consent_id, receipt_id, now=now())
        if format == "jws":
            if found.jws is None:
                raise NotFoundError("this receipt was issued before receipts were signed")
            return Response(
                found.jws,
                media_type=JWS_MEDIA_TYPE,
                headers={
                    "Content-Disposition": f'attachment; filename="consent-receipt-{found.id}.jws"'
                },
            )
        if format == "html":
            return HTMLResponse(
                render_receipt_html(found),
                headers={
                    "Content-Security-Policy": _HTML_CSP,
                    "Content-Disposition": f'inline; filename="consent-receipt-{found.id}.html"',
                },
            )
        return JSONResponse(found.model_dump(mode="json"))

    @router.get(
        "/keys",
        **documented(
            "getConsentServiceKeys",
            security=PUBLIC,
            responses={
                200: {
                    "description": "the consent service's public keys (JWK Set)",
                    "content": {"application/jwk-set+json": {"schema": {"type": "object"}}},
                }
            },
        ),
    )
    def keys() -> JSONResponse:
        """The consent service's public keys (JWK Set): anyone verifies receipts offline."""
        return JSONResponse(
            service.receipt_verifier.jwks(),
            media_type="application/jwk-set+json",
            headers={"Cache-Control": "public, max-age=300"},
        )

    @router.post("/consents/{consent_id}/pause", **documented("pauseConsent", problems=_CHANGE))
    def pause(consent_id: str, principal: Citizen, acting_for: ActingFor = None) -> Consent:
        subject, on_behalf = _on_behalf(
            principal, acting_for, "pause a consent", _consent_purpose(consent_id)
        )
        done = service.pause(subject, consent_id, now=now(), on_behalf=on_behalf)
        counted.action("pause")
        return done

    @router.post("/consents/{consent_id}/resume", **documented("resumeConsent", problems=_CHANGE))
    def resume(consent_id: str, principal: Citizen, acting_for: ActingFor = None) -> Consent:
        subject, on_behalf = _on_behalf(
            principal, acting_for, "resume a consent", _consent_purpose(consent_id)
        )
        done = service.resume(subject, consent_id, now=now(), on_behalf=on_behalf)
        counted.action("resume")
        return done

    @router.post("/consents/{consent_id}/revoke", **documented("revokeConsent", problems=_CHANGE))
    def revoke(consent_id: str, principal: Citizen, acting_for: ActingFor = None) -> Consent:
        subject, on_behalf = _on_behalf(
            principal, acting_for, "revoke a consent", _consent_purpose(consent_id)
        )
        done = service.revoke(subject, consent_id, now=now(), on_behalf=on_behalf)
        counted.action("revoke")
        return done

    @router.get("/consent-requests", **documented("listConsentRequests", problems=(401, 403, 503)))
    def list_requests(principal: Citizen, acting_for: ActingFor = None) -> list[ConsentRequest]:
        return service.list_requests(
            _whose(principal, acting_for, "list consent requests"), now=now()
        )

    @router.get("/consent-requests/{request_id}", **documented("getConsentRequest", problems=_READ))
    def get_request(
        request_id: str, principal: Citizen, acting_for: ActingFor = None
    ) -> ConsentRequest:
        subject = _whose(principal, acting_for, "read a consent request")
        return service.get_request(subject, request_id, now=now())

    @router.post(
        "/consent-requests/{request_id}/approve",
        **documented("approveConsentRequest", problems=_CHANGE),
    )
    def approve(request_id: str, principal: Citizen, acting_for: ActingFor = None) -> Consent:
        subject, on_behalf = _on_behalf(
            principal, acting_for, "approve a consent request", _request_purpose(request_id)
        )
        done = service.approve_request(subject, request_id, now=now(), on_behalf=on_behalf)
        counted.action("approve")
        return done

    @router.post(
        "/consent-requests/{request_id}/decline",
        **documented("declineConsentRequest", problems=_CHANGE),
    )
    def decline(
        request_id: str, principal: Citizen, acting_for: ActingFor = None
    ) -> ConsentRequest:
        subject, _ = _on_behalf(
            principal, acting_for, "decline a consent request", _request_purpose(request_id)
        )
        done = service.decline_request(subject, request_id, now=now())
        counted.action("decline")
        return done

    if mandates is not None:
        _mandate_routes(router, mandates, Citizen, now)

    if authenticate_consumer is not None:
        authenticate = authenticate_consumer

        @router.post(
            "/consent-requests",
            status_code=201,
            **documented(
                "createConsentRequest",
                security=NODE_REQUEST,
                body=json_body(ConsentRequestInput),
                # 404: a consumer's code the translator does not know; 409: a replay (N4)
                problems=(400, 401, 403, 404, 409, 413, 503),
            ),
        )
        async def create_request(request: Request) -> ConsentRequest:
            body = await _body(request)
            client = await _caller(
                request, body, authenticate, service, changes_state=True, now=now()
            )
            try:
                terms = ConsentRequestInput.model_validate_json(body)
            except ValidationError as exc:
                raise ClientError(_first_error(exc)) from exc
            missing = unknown_services(terms, client) if unknown_services else []
            if missing:
                raise ClientError(
                    "the registry has no " + "; no ".join(missing), code="Client.UnknownService"
                )
            own_code = terms.subject
            if terms.subject_agency == "client":
                terms = await _resolved(terms, client, resolve_subject, now())
            made = await run_in_threadpool(service.create_request, client, terms, now=now())
            counted.action("request")
            # The consumer gets its own code back, never the citizen's platform id.
            return made.model_copy(update={"subject": own_code})

    return router


async def _resolved(
    terms: ConsentRequestInput,
    client: ClientId,
    resolve: ResolveSubject | None,
    now: datetime,
) -> ConsentRequestInput:
    """The request with the consumer's code replaced by the citizen's id (refused when this
    consent service has no translator to ask, or the translator does not know the code)."""
    if resolve is None:
        raise ClientError(
            "this consent service cannot resolve consumers' pseudonyms: name the citizen",
            code="Client.SubjectAgencyUnsupported",
        )
    citizen = await run_in_threadpool(resolve, client, terms.subject, now)
    return terms.model_copy(update={"subject": citizen, "subject_agency": "citizen"})


def _first_error(exc: ValidationError) -> str:
    errors = exc.errors(include_url=False, include_input=False)
    if not errors:
        return "the request body is not valid"
    first = errors[0]
    where = ".".join(str(p) for p in first.get("loc", ()))
    return f"invalid request body at {where or 'top level'}: {first.get('msg', '')}"[:300]


def build_gate_router(
    service: ConsentService,
    authenticate_node: Authenticator,
    *,
    clock: Callable[[], datetime] | None = None,
    prefix: str = "/consent/v1/gate",
    metrics: ConsentMetrics | None = None,
) -> APIRouter:
    """``POST /check`` and ``POST /use`` for provider nodes (``consent.remote`` is the client);
    ``metrics`` counts the answers."""
    now = clock or service.clock
    counted = metrics or ConsentMetrics()
    router = APIRouter(prefix=prefix, tags=["consent-gate"], route_class=_audited_route(service))

    async def _query(request: Request, *, changes_state: bool) -> ConsentQuery:
        body = await _body(request)
        node = await _caller(
            request, body, authenticate_node, service, changes_state=changes_state, now=now()
        )
        try:
            asked = GateRequest.model_validate_json(body)
        except ValidationError as exc:
            raise ClientError(_first_error(exc)) from exc
        service_id = ServiceId.parse(asked.service)
        # A node may only ask about (and spend consents for) its own member's services.
        if service_id.provider.member != node.member:
            raise RefusalError(
                "a node can only ask about its own member's services", code="Client.Forbidden"
            )
        return ConsentQuery(
            consent_id=asked.consent_id,
            artefact=asked.artefact,
            subject=asked.subject,
            client=ClientId.parse(asked.client),
            service=service_id,
            purpose=asked.purpose,
            fields=asked.fields,
            now=now(),
            message_id=asked.message_id,
            idempotency_key=asked.idempotency_key,
        )

    def _answer(d: ConsentDecision) -> GateAnswer:
        return GateAnswer(
            allow=d.allow,
            consent_id=d.consent_id,
            fields=tuple(sorted(d.fields)),
            reasons=d.reasons,
            retention_days=d.retention_days if d.allow else None,
        )

    @router.post(
        "/check",
        **documented(
            "checkConsent",
            security=NODE_REQUEST,
            body=json_body(GateRequest),
            problems=(400, 401, 403, 413, 503),
        ),
    )
    async def check(request: Request) -> GateAnswer:
        query = await _query(request, changes_state=False)
        d = await run_in_threadpool(service.check, query)
        counted.gate_answer("check", d.allow)
        return _answer(d)

    @router.post(
        "/use",
        **documented(
            "useConsent",
            security=NODE_REQUEST,
            body=json_body(GateRequest),
            problems=(400, 401, 403, 409, 413, 503),  # 409: a replay (N4)
        ),
    )
    async def use(request: Request) -> GateAnswer:
        query = await _query(request, changes_state=True)
        d = await run_in_threadpool(service.use, query)
        counted.gate_answer("use", d.allow)
        return _answer(d)

    return router


def build_consent_log_router(
    service: ConsentService, log_routes: APIRouter, *, prefix: str = "/consent/v1/log"
) -> APIRouter:
    """The consent service's own transparency log, served like every node's (issue 15 item 4):
    ``log_routes`` is ``audit.api.build_router`` over the log this service records into (the
    composition root builds it: this package does not import ``audit``), re-mounted under
    ``prefix`` with every route an audited one, so its refusals land in the consent log too.

    Auditors: ``{prefix}/audit/checkpoint``, ``/audit/export``, ``/audit/entries[/{index}]``,
    ``/audit/checkpoints``, ``/audit/consistency`` (``onceonly audit verify --node
    https://central.example{prefix}``); citizens: ``{prefix}/me/accesses[/{index}]``, their own
    consent history with inclusion proofs against a signed checkpoint."""
    router = APIRouter(prefix=prefix, tags=["consent-log"], route_class=_audited_route(service))
    for route in log_routes.routes:
        if not isinstance(route, APIRoute):
            raise TypeError(f"only API routes can be re-mounted, not {route!r}")
        router.add_api_route(
            route.path,
            route.endpoint,
            methods=sorted(route.methods or ()),
            name=route.name,
            response_model=route.response_model,
            response_class=route.response_class,
            status_code=route.status_code,
            # what the route documents travels with it (audit.api declares every answer)
            responses=route.responses,
            openapi_extra=route.openapi_extra,
            operation_id=(
                "consentLog" + route.operation_id[:1].upper() + route.operation_id[1:]
                if route.operation_id
                else None
            ),
        )
    return router


def _mandate_routes(
    router: APIRouter, mandates: MandateService, citizen: Any, now: Callable[[], datetime]
) -> None:
    """``GET/POST /mandates``, ``POST /mandates/{id}/revoke`` (docs/consent.md, Mandates)."""

    @router.get("/mandates", **documented("listMandates", problems=(401, 403, 503)))
    def list_mandates(principal: citizen) -> list[Mandate]:
        """The mandates the caller holds and those that represent the caller."""
        return mandates.list_for(principal.subject, now=now())

    @router.post(
        "/mandates",
        status_code=201,
        **documented(
            "grantMandate",
            body=json_body(MandateGrant),
            problems=(400, 401, 403, 409, 413, 503),
        ),
    )
    async def grant_mandate(request: Request, principal: citizen) -> Mandate:
        """The caller (the represented person) authorises someone to act for them."""
        body = await _body(request)
        try:
            grant = MandateGrant.model_validate_json(body)
        except ValidationError as exc:
            raise ClientError("the mandate is not valid") from exc
        return await run_in_threadpool(
            mandates.grant,
            principal.subject,
            grant,
            now=now(),
        )

    @router.post(
        "/mandates/{mandate_id}/authorise",
        **documented(
            "authoriseMandate", body=json_body(MandateUse), problems=(400, 401, 403, 413, 503)
        ),
    )
    async def authorise_mandate(mandate_id: str, request: Request, principal: citizen) -> Mandate:
        """Checks that the caller may act under this mandate for a procedure or a purpose (what a
        one-stop desk asks before it acts for someone); a refusal is 403 and audited."""
        body = await _body(request)
        try:
            use = MandateUse.model_validate_json(body)
        except ValidationError as exc:
            raise ClientError("the mandate use is not valid") from exc
        return await run_in_threadpool(
            lambda: mandates.authorise(
                principal.subject,
                mandate_id,
                now=now(),
                action=use.action,
                purpose=use.purpose,
                procedure=use.procedure,
            )
        )

    @router.post("/mandates/{mandate_id}/revoke", **documented("revokeMandate", problems=_CHANGE))
    def revoke_mandate(mandate_id: str, principal: citizen) -> Mandate:
        """Revoked by the person who granted it, or renounced by the representative."""
        return mandates.revoke(mandate_id, by=principal.subject, now=now())


def build_events_router(
    service: ConsentService, authenticate_node: Authenticator, *, audit: AuditSink
) -> APIRouter:
    """``GET /consent/v1/events?after=N``: the calling node's own stream of status events after
    its cursor (catch-up of the status push, ``exchange.web.events``); refusals are recorded in
    the consent log like the other routes'."""
    if service.events is None:
        raise ValueError("the consent service publishes no events")
    return build_pull_router(
        service.events.outbox,
        authenticate_node,
        path=CONSENT_EVENTS_PATH,
        audit=audit,
        route_class=_audited_route(service),
    )
