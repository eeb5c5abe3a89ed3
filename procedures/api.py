"""HTTP routes of the procedures: the citizen's one-stop address change and its follow-up.

Issue 7 "Follow". Citizens authenticate with a bearer JWT (``exchange.tokens.TokenVerifier``); the
token's ``sub`` is the citizen id and the only subject whose procedures they can start, see or
confirm — another citizen's procedure id is answered exactly like an unknown one (404). Counter
staff (role ``staff``) may read any procedure and its certificate, never start or confirm one.
Routes only raise ``exchange.errors`` (mapped once to problem+json by ``exchange.web.problems``);
bodies are bounded wire models, so nothing a caller sends produces a 500. Paths::

    POST /procedures/address-change          start → the preview (201; 200 for a duplicate)
    GET  /procedures                         the citizen's own procedures
    GET  /procedures/properties              recent land-registry purchases to pick from
    GET  /procedures/{id}                    status of every step
    POST /procedures/{id}/confirm            consent decisions → the run starts
    GET  /procedures/{id}/certificate        the signed summary (409 until finished)
"""

# No ``from __future__ import annotations``: FastAPI evaluates the route annotations, which use
# dependencies built inside the router factory.

from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from exchange.errors import RefusalError
from exchange.tokens import Principal, TokenVerifier
from exchange.web.auth import bearer_principal
from exchange.web.openapi import documented
from procedures.address_change import Acting, AddressChangeService
from procedures.model import AddressChangeInput, ConfirmInput, ProcedureView

__all__ = ["STAFF_ROLE", "build_router"]

STAFF_ROLE = "staff"
MAX_ID_CHARS = 36


def _citizen_of(principal: Principal) -> str:
    if STAFF_ROLE in principal.roles and "citizen" not in principal.roles:
        raise RefusalError(
            "counter staff follow procedures; only the citizen starts or confirms one",
            code="Client.Forbidden",
        )
    return principal.subject


def build_router(
    service: AddressChangeService,
    verifier: TokenVerifier,
    *,
    clock: Callable[[], datetime],
    prefix: str = "/procedures",
) -> APIRouter:
    """The procedures routes over ``service`` (dependencies injected, no import-time state)."""
    router = APIRouter(prefix=prefix, tags=["procedures"])
    Caller = Annotated[Principal, bearer_principal(verifier)]
    ActingFor = Annotated[
        str | None,
        Header(
            alias="X-OnceOnly-Acting-For",
            description="a mandate id: the caller acts for the citizen it represents",
        ),
    ]

    def _token(request: Request) -> str | None:
        return request.headers.get("authorization", "").partition(" ")[2].strip() or None

    async def _whom(
        principal: Principal, acting_for: str | None, request: Request
    ) -> tuple[str, Acting | None]:
        """The citizen the call is for: the caller, or the one its mandate represents."""
        caller = _citizen_of(principal)
        if acting_for is None:
            return caller, None
        return await run_in_threadpool(
            lambda: service.act_for(caller, acting_for, token=_token(request), now=clock())
        )

    def reader(principal: Principal) -> str | None:
        """``None`` means any procedure (counter staff); else only the citizen's own."""
        return None if STAFF_ROLE in principal.roles else principal.subject

    @router.post(
        "/address-change",
        response_model=ProcedureView,
        status_code=201,
        **documented(
            "startAddressChange",
            problems=(400, 401, 403, 502, 503),
            responses={200: {"description": "a repeat (same Idempotency-Key): the first result"}},
        ),
    )
    async def start(
        data: AddressChangeInput,
        principal: Caller,
        request: Request,
        idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
        acting_for: ActingFor = None,
    ) -> Any:
        subject, acting = await _whom(principal, acting_for, request)
        view = await service.start(
            subject, data, now=clock(), submission_key=idempotency_key, acting=acting
        )
        if view.duplicate:
            return JSONResponse(view.model_dump(mode="json"), status_code=200)
        return view

    @router.get(
        "",
        response_model=list[ProcedureView],
        **documented("listProcedures", problems=(401, 403, 503)),
    )
    async def mine(principal: Caller, request: Request, acting_for: ActingFor = None) -> Any:
        subject, _ = await _whom(principal, acting_for, request)
        return await run_in_threadpool(service.list_for, subject)

    @router.get("/properties", **documented("listRecentProperties", problems=(401, 403, 502, 503)))
    async def properties(principal: Caller) -> Any:
        return await service.recent_properties(_citizen_of(principal), now=clock())

    @router.get(
        "/{procedure_id}",
        response_model=ProcedureView,
        **documented("getProcedure", problems=(401, 403, 404, 503)),
    )
    async def status(
        procedure_id: str, principal: Caller, request: Request, acting_for: ActingFor = None
    ) -> Any:
        subject = reader(principal)
        if acting_for is not None:
            subject, _ = await _whom(principal, acting_for, request)
        return await run_in_threadpool(
            service.get, procedure_id[: MAX_ID_CHARS + 1], subject=subject
        )

    @router.post(
        "/{procedure_id}/confirm",
        response_model=ProcedureView,
        **documented("confirmProcedure", problems=(400, 401, 403, 404, 409, 502, 503)),
    )
    async def confirm(
        procedure_id: str,
        decisions: ConfirmInput,
        principal: Caller,
        request: Request,
        acting_for: ActingFor = None,
    ) -> Any:
        # The citizen's own token goes on with their consent decisions (a consent service over
        # HTTP authorises them itself); it was verified above. A representative's token goes on
        # with the mandate id: the consent service checks the mandate covers each consent.
        subject, acting = await _whom(principal, acting_for, request)
        return await run_in_threadpool(
            lambda: service.confirm(
                subject,
                procedure_id[: MAX_ID_CHARS + 1],
                decisions,
                now=clock(),
                token=_token(request),
                acting=acting,
            )
        )

    @router.get(
        "/{procedure_id}/certificate",
        **documented("getProcedureCertificate", problems=(401, 403, 404, 409, 503)),
    )
    async def certificate(procedure_id: str, principal: Caller) -> Any:
        return await run_in_threadpool(
            service.certificate, procedure_id[: MAX_ID_CHARS + 1], subject=reader(principal)
        )

    return router
