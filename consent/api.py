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
sends can produce a 500. Paths (under ``prefix``, default ``/consent/v1``)::

    GET  /consents                        GET  /consents/{id}
    GET  /consents/{id}/history           GET  /consents/{id}/uses
    GET  /consents/{id}/receipts          GET  /consents/{id}/receipts/{rid}[?format=html]
    POST /consents/{id}/pause|resume|revoke
    GET  /consent-requests                GET  /consent-requests/{id}
    POST /consent-requests/{id}/approve|decline
    POST /consent-requests                (consumer)
    POST /gate/check                      POST /gate/use   (provider node)
"""

# No ``from __future__ import annotations``: FastAPI must evaluate the route annotations, which
# use dependencies built inside the router factories.

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from consent.lifecycle import ConsentService
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
from exchange.errors import ClientError, RefusalError
from exchange.identifiers import ClientId, ServiceId
from exchange.ports import ConsentQuery
from exchange.tokens import Principal, TokenVerifier
from exchange.web.auth import bearer_principal
from exchange.web.body import read_body

__all__ = ["MAX_BODY_BYTES", "Authenticator", "build_citizen_router", "build_gate_router"]

MAX_BODY_BYTES = 64 * 1024
Authenticator = Callable[[Request, bytes], Awaitable[ClientId]]
"""Proves who sent a request from the request and its raw body (e.g. a signed request)."""
_HTML_CSP = "default-src 'none'; style-src 'unsafe-inline'"


async def _body(request: Request) -> bytes:
    return await read_body(request, limit=MAX_BODY_BYTES)


def build_citizen_router(
    service: ConsentService,
    verifier: TokenVerifier,
    *,
    authenticate_consumer: Authenticator | None = None,
    clock: Callable[[], datetime] | None = None,
    prefix: str = "/consent/v1",
    metrics: ConsentMetrics | None = None,
) -> APIRouter:
    """The citizen API, plus ``POST /consent-requests`` for consumers when an authenticator is
    given. ``metrics`` counts the actions that change a consent."""
    now = clock or service.clock
    counted = metrics or ConsentMetrics()
    router = APIRouter(prefix=prefix, tags=["consent"])
    Citizen = Annotated[Principal, Depends(bearer_principal(verifier, role="citizen"))]

    @router.get("/consents")
    def list_consents(principal: Citizen) -> list[Consent]:
        return service.list_consents(principal.subject, now=now())

    @router.get("/consents/{consent_id}")
    def get_consent(consent_id: str, principal: Citizen) -> Consent:
        return service.get_consent(principal.subject, consent_id, now=now())

    @router.get("/consents/{consent_id}/history")
    def history(consent_id: str, principal: Citizen) -> list[ConsentHistoryEvent]:
        return service.history(principal.subject, consent_id, now=now())

    @router.get("/consents/{consent_id}/uses")
    def uses(consent_id: str, principal: Citizen) -> list[ConsentUse]:
        return service.uses(principal.subject, consent_id, now=now())

    @router.get("/consents/{consent_id}/receipts")
    def receipts(consent_id: str, principal: Citizen) -> list[Receipt]:
        return service.receipts(principal.subject, consent_id, now=now())

    @router.get("/consents/{consent_id}/receipts/{receipt_id}", response_model=None)
    def receipt(
        consent_id: str,
        receipt_id: str,
        principal: Citizen,
        format: Annotated[Literal["json", "html"], Query()] = "json",
    ) -> Response:
        found = service.receipt(principal.subject, consent_id, receipt_id, now=now())
        if format == "html":
            return HTMLResponse(
                render_receipt_html(found),
                headers={
                    "Content-Security-Policy": _HTML_CSP,
                    "Content-Disposition": f'inline; filename="consent-receipt-{found.id}.html"',
                },
            )
        return JSONResponse(found.model_dump(mode="json"))

    @router.post("/consents/{consent_id}/pause")
    def pause(consent_id: str, principal: Citizen) -> Consent:
        done = service.pause(principal.subject, consent_id, now=now())
        counted.action("pause")
        return done

    @router.post("/consents/{consent_id}/resume")
    def resume(consent_id: str, principal: Citizen) -> Consent:
        done = service.resume(principal.subject, consent_id, now=now())
        counted.action("resume")
        return done

    @router.post("/consents/{consent_id}/revoke")
    def revoke(consent_id: str, principal: Citizen) -> Consent:
        done = service.revoke(principal.subject, consent_id, now=now())
        counted.action("revoke")
        return done

    @router.get("/consent-requests")
    def list_requests(principal: Citizen) -> list[ConsentRequest]:
        return service.list_requests(principal.subject, now=now())

    @router.get("/consent-requests/{request_id}")
    def get_request(request_id: str, principal: Citizen) -> ConsentRequest:
        return service.get_request(principal.subject, request_id, now=now())

    @router.post("/consent-requests/{request_id}/approve")
    def approve(request_id: str, principal: Citizen) -> Consent:
        done = service.approve_request(principal.subject, request_id, now=now())
        counted.action("approve")
        return done

    @router.post("/consent-requests/{request_id}/decline")
    def decline(request_id: str, principal: Citizen) -> ConsentRequest:
        done = service.decline_request(principal.subject, request_id, now=now())
        counted.action("decline")
        return done

    if authenticate_consumer is not None:
        authenticate = authenticate_consumer

        @router.post("/consent-requests", status_code=201)
        async def create_request(request: Request) -> ConsentRequest:
            body = await _body(request)
            client = await authenticate(request, body)
            try:
                terms = ConsentRequestInput.model_validate_json(body)
            except ValidationError as exc:
                raise ClientError(_first_error(exc)) from exc
            made = await run_in_threadpool(service.create_request, client, terms, now=now())
            counted.action("request")
            return made

    return router


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
    router = APIRouter(prefix=prefix, tags=["consent-gate"])

    async def _query(request: Request) -> ConsentQuery:
        body = await _body(request)
        node = await authenticate_node(request, body)
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

    def _answer(
        decision_allow: bool, consent_id: str, fields: frozenset[str], reasons: tuple[str, ...]
    ) -> GateAnswer:
        return GateAnswer(
            allow=decision_allow,
            consent_id=consent_id,
            fields=tuple(sorted(fields)),
            reasons=reasons,
        )

    @router.post("/check")
    async def check(request: Request) -> GateAnswer:
        query = await _query(request)
        d = await run_in_threadpool(service.check, query)
        counted.gate_answer("check", d.allow)
        return _answer(d.allow, d.consent_id, d.fields, d.reasons)

    @router.post("/use")
    async def use(request: Request) -> GateAnswer:
        query = await _query(request)
        d = await run_in_threadpool(service.use, query)
        counted.gate_answer("use", d.allow)
        return _answer(d.allow, d.consent_id, d.fields, d.reasons)

    return router
