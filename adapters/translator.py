"""The central pseudonym translator (情報提供ネットワークシステム's code conversion; docs/pseudonyms.md).

Only the translator holds the correspondence between agencies' codes; every node holds its own
agency's codes only. A consumer node asks, signed as one of its subsystems
(``exchange.node_requests``), for the code of a citizen at the provider of a service; the
translator answers with a subject token (``exchange.subject_token``): the provider's code sealed
to the provider's key from the verified registry, signed by the translator, bound to the client,
the service and a short expiry. The consumer never learns the provider's code.

The translator, for each request (numbers as in docs/protocol.md §5):
  (P1) authenticates the node's signature (by the route) ........ stops anyone else asking
  (P2) refuses unless the verified registry gives the client an access right to the service
       .......................................................... stops a node mapping codes
       of agencies it may not ask
  (P3) translates through its own store (one answer for unknown codes: no existence oracle)
  (P4) seals to the provider's registry key, signs, and audits — every translation and every
       refusal goes into the translator's own transparency log before the answer leaves.

Trust assumption: the translator runs beside the central server and is the only holder of the
pseudonym store; its audit entries carry the consumer's code, never the provider's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from exchange.central_config import VerifiedRegistry
from exchange.errors import ClientError, NotFoundError, OnceOnlyError, RefusalError
from exchange.identifiers import PART_PATTERN, SERVICE_ID_PATTERN, ClientId, ServiceId, parse_part
from exchange.node_requests import VerifiedNodeRequest
from exchange.ports import CITIZEN_AGENCY, AuditEvent, AuditSink, SubjectTranslator
from exchange.signing import TranslatorSigner
from exchange.subject_token import SealedSubject, issue_subject_token
from exchange.web.body import read_body
from exchange.web.openapi import NODE_REQUEST, documented, json_body

__all__ = [
    "CITIZEN_CODES_PATH",
    "TOKEN_TTL",
    "TRANSLATOR_LOG",
    "TRANSLATOR_PATH",
    "CitizenCodesAnswer",
    "CitizenCodesRequest",
    "PseudonymTranslator",
    "TranslationAnswer",
    "TranslationRequest",
    "build_translator_router",
]

TOKEN_TTL = timedelta(seconds=300)
"""How long a subject token is good for: a consumer reuses it for the same citizen and service
until shortly before then; the provider still checks the access right on every exchange."""
TRANSLATOR_LOG = "pseudonym-translator"
TRANSLATOR_PATH = "/translator/v1/subject-tokens"
CITIZEN_CODES_PATH = "/translator/v1/citizen-codes"
"""A node, showing a citizen's own token, asks for that citizen's codes at its member's agencies
(for the citizen's "who accessed my data" view at that node; docs/pseudonyms.md)."""
MAX_REQUEST_BYTES = 4096
MAX_CODES_REQUEST_BYTES = 16 * 1024

NodeAuthenticator = Callable[[Request, bytes], Awaitable[VerifiedNodeRequest]]


class _Wire(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TranslationRequest(_Wire):
    # The patterns are what ``_translate`` checks (``parse_part``, ``ServiceId.parse``), stated
    # in the schema so that the OpenAPI document says what is accepted.
    subject: str = Field(min_length=1, max_length=128, pattern=PART_PATTERN)
    service: str = Field(max_length=255, pattern=SERVICE_ID_PATTERN)
    citizen: bool = False
    message_id: str = Field(min_length=1, max_length=128, pattern=PART_PATTERN)


class TranslationAnswer(_Wire):
    token: str


class CitizenCodesRequest(_Wire):
    token: str = Field(min_length=1, max_length=8192)
    """The citizen's own bearer token, as the node verified it."""


class CitizenCodesAnswer(_Wire):
    codes: tuple[str, ...]


class PseudonymTranslator:
    """Translates a consumer's code into a provider's, sealed to the provider (steps P2–P4)."""

    def __init__(
        self,
        subjects: SubjectTranslator,
        signer: TranslatorSigner,
        audit: AuditSink,
        *,
        ttl: timedelta = TOKEN_TTL,
        node: str = TRANSLATOR_LOG,
    ) -> None:
        self._subjects = subjects
        self._signer = signer
        self._audit = audit
        self._ttl = ttl
        self._node = node

    def translate(
        self,
        client: ClientId,
        asked: TranslationRequest,
        *,
        registry: VerifiedRegistry,
        now: datetime,
    ) -> str:
        try:
            token = self._translate(client, asked, registry=registry, now=now)
        except OnceOnlyError as exc:
            self.record_refusal(now, exc, client=str(client), asked=asked)
            raise
        self._allowed(
            now,
            client,
            subject=asked.subject,
            extra={"citizen": "yes" if asked.citizen else "no"},
            service=asked.service,
            message_id=asked.message_id,
        )
        return token

    def _translate(
        self,
        client: ClientId,
        asked: TranslationRequest,
        *,
        registry: VerifiedRegistry,
        now: datetime,
    ) -> str:
        parse_part(asked.subject, "subject")
        parse_part(asked.message_id, "message id")
        service = ServiceId.parse(asked.service)
        registry.service(service)  # unknown service: NotFoundError
        # (P2) deny by default: only a client with an access right may learn anything.
        if registry.access_right(client, service, now=now) is None:
            raise RefusalError(
                "the client has no access right to this service",
                reasons=("no access right in the central registry",),
            )
        # (P3) through the translator's own store; the provider's code never leaves unsealed.
        provider = str(service.provider)
        own = self._subjects.translate(asked.subject, from_agency=str(client), to_agency=provider)
        citizen = (
            self._subjects.translate(
                asked.subject, from_agency=str(client), to_agency=CITIZEN_AGENCY
            )
            if asked.citizen
            else None
        )
        # (P4) sealed to the provider's key from the verified registry, signed, bound, short-lived.
        return issue_subject_token(
            signer=self._signer,
            recipient=registry.seal_key(service.provider),
            client=str(client),
            service=str(service),
            provider=provider,
            subject=SealedSubject(subject=own, citizen=citizen),
            now=now,
            ttl=self._ttl,
        )

    def citizen_codes(
        self, client: ClientId, citizen: str, *, registry: VerifiedRegistry, now: datetime
    ) -> tuple[str, ...]:
        """The citizen's codes at the agencies of ``client``'s member (the node asking), shown
        only to a node that presents the citizen's own token; audited."""
        codes: list[str] = []
        for entry in registry.clients():
            agency = ClientId.parse(entry.id)
            if agency.member != client.member:
                continue
            try:
                code = self._subjects.translate(
                    citizen, from_agency=CITIZEN_AGENCY, to_agency=str(agency)
                )
            except NotFoundError:
                continue
            codes.append(code)
        self._allowed(now, client, subject=citizen, extra={"stage": "citizen-view"})
        return tuple(sorted(set(codes)))

    def citizen_of(self, client: ClientId, subject: str, now: datetime) -> str:
        """The citizen's own id for ``client``'s pseudonym ``subject`` — for the consent service
        beside it, when a consumer asks for a consent naming the citizen by its own code
        (docs/consent.md "Requests through the node"). Audited like a translation; an unknown
        code is one ``NotFoundError`` (no existence oracle), audited as a refusal."""
        try:
            parse_part(subject, "subject")
            citizen = self._subjects.translate(
                subject, from_agency=str(client), to_agency=CITIZEN_AGENCY
            )
        except OnceOnlyError as exc:
            self.record_refusal(
                now, exc, client=str(client), subject=subject[:128], stage="consent-request"
            )
            raise
        self._allowed(
            now, client, subject=subject, extra={"citizen": "yes", "stage": "consent-request"}
        )
        return citizen

    def _allowed(
        self,
        now: datetime,
        client: ClientId,
        *,
        subject: str,
        extra: dict[str, str],
        service: str | None = None,
        message_id: str | None = None,
    ) -> None:
        """One answered question, in the translator's log (the one shape of its allow records)."""
        self._audit.record(
            AuditEvent(
                time=now,
                node=self._node,
                kind="translation",
                decision="allow",
                client=str(client),
                service=service,
                subject=subject,
                message_id=message_id,
                extra=extra,
            )
        )

    def record_refusal(
        self,
        now: datetime,
        exc: OnceOnlyError,
        *,
        client: str | None = None,
        asked: TranslationRequest | None = None,
        subject: str | None = None,
        stage: str = "translation",
    ) -> None:
        self._audit.record(
            AuditEvent(
                time=now,
                node=self._node,
                kind="refusal",
                decision="deny",
                client=client,
                service=asked.service if asked else None,
                subject=asked.subject if asked else subject,
                message_id=asked.message_id if asked else None,
                status=exc.status,
                reason=f"{exc.code}: {exc.detail}"[:500],
                extra={"stage": stage},
            )
        )


def build_translator_router(
    translator: PseudonymTranslator,
    authenticate_node: NodeAuthenticator,
    registry: Callable[[datetime], VerifiedRegistry],
    clock: Callable[[], datetime],
    citizen_of: Callable[[str], str] | None = None,
) -> APIRouter:
    """``POST /translator/v1/subject-tokens`` for consumer nodes (``adapters.translator_client``).

    ``citizen_of`` verifies a citizen's token and returns their platform identity; without it the
    citizen-codes route is not served."""
    router = APIRouter(tags=["pseudonym-translator"])

    @router.post(
        TRANSLATOR_PATH,
        response_model=TranslationAnswer,
        **documented(
            "issueSubjectToken",
            security=NODE_REQUEST,
            body=json_body(TranslationRequest),
            # (P2) 403 no access right; (P3) 404 an unknown service or code
            problems=(400, 401, 403, 404, 413, 503),
        ),
    )
    async def subject_token(request: Request) -> JSONResponse:
        now = clock()
        client: ClientId | None = None
        try:
            body = await read_body(request, limit=MAX_REQUEST_BYTES)
            # (P1) A replay inside the skew window (N4 is not kept here) only re-issues a token
            # for the same client and code, sealed to the same provider, and is audited again.
            client = (await authenticate_node(request, body)).client
            try:
                asked = TranslationRequest.model_validate_json(body)
            except ValidationError as exc:
                raise ClientError("the translation request is not valid") from exc
        except OnceOnlyError as exc:
            # Refused before there was a question: audited too (who tried, and why).
            who = str(client) if client else None
            await asyncio.to_thread(translator.record_refusal, now, exc, client=who)
            raise
        token = await asyncio.to_thread(
            translator.translate, client, asked, registry=registry(now), now=now
        )
        return JSONResponse(TranslationAnswer(token=token).model_dump())

    if citizen_of is not None:

        @router.post(
            CITIZEN_CODES_PATH,
            response_model=CitizenCodesAnswer,
            **documented(
                "listCitizenCodes",
                security=NODE_REQUEST,
                body=json_body(CitizenCodesRequest),
                problems=(400, 401, 413, 503),  # 401 too for a citizen's token that fails
            ),
        )
        async def citizen_codes(request: Request) -> JSONResponse:
            now = clock()
            client: ClientId | None = None
            try:
                body = await read_body(request, limit=MAX_CODES_REQUEST_BYTES)
                client = (await authenticate_node(request, body)).client  # (P1)
                try:
                    asked = CitizenCodesRequest.model_validate_json(body)
                except ValidationError as exc:
                    raise ClientError("the request is not valid") from exc
                citizen = citizen_of(asked.token)  # AuthenticationError: refused, audited
            except OnceOnlyError as exc:
                who = str(client) if client else None
                await asyncio.to_thread(translator.record_refusal, now, exc, client=who)
                raise
            codes = await asyncio.to_thread(
                translator.citizen_codes, client, citizen, registry=registry(now), now=now
            )
            return JSONResponse(CitizenCodesAnswer(codes=codes).model_dump(mode="json"))

    return router
