"""A consumer node's way to the central pseudonym translator (``exchange.ports.SubjectSealer``).

Asks ``POST <translator>/translator/v1/subject-tokens`` signed as the calling subsystem
(``exchange.node_requests``) and caches each token per (client, own code, service, citizen flag)
until ``REFRESH_MARGIN`` before it expires. The cache weakens nothing: a token is opaque to this
node (sealed to the provider), the provider re-checks the access right on every exchange, and the
token is bound to this client and this service. The translator's URL follows the verified
registry (``on_registry``); with none named, every call is refused (fail closed).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Collection, Mapping
from datetime import UTC, datetime, timedelta

import httpx
from pydantic import ValidationError

from adapters.translator import (
    CITIZEN_CODES_PATH,
    TRANSLATOR_PATH,
    CitizenCodesAnswer,
    CitizenCodesRequest,
    TranslationAnswer,
    TranslationRequest,
)
from exchange.central_config import VerifiedRegistry
from exchange.errors import (
    ClientError,
    ConfigurationError,
    NotFoundError,
    OnceOnlyError,
    RefusalError,
    UnavailableError,
)
from exchange.identifiers import ClientId
from exchange.node_requests import sign_node_request
from exchange.ports import SubjectTokenRequest
from exchange.signing import MemberSigner
from exchange.subject_token import MAX_TOKEN_CHARS, peek_subject_token
from exchange.tokens import Principal

__all__ = [
    "MAX_CACHED_TOKENS",
    "REFRESH_MARGIN",
    "HttpCitizenCodes",
    "HttpSubjectSealer",
    "TranslatorUnavailable",
]

REFRESH_MARGIN = timedelta(seconds=90)
"""A cached token is used until this long before it expires (more than the clock-skew window,
so the provider never sees one that has expired by its clock)."""
MAX_CACHED_TOKENS = 100_000
MAX_ANSWER_BYTES = 2 * MAX_TOKEN_CHARS

_Key = tuple[str, str, str, bool]


class TranslatorUnavailable(UnavailableError):
    """The translator could not be reached or answered something that is not the protocol:
    nothing was decided, the caller may retry (503 with ``Retry-After``)."""

    code = "Server.ServerProxy.TranslatorUnavailable"
    status = 503


class HttpSubjectSealer:
    """``SubjectSealer`` over HTTP to the translator named in the verified registry."""

    def __init__(
        self,
        signers: Mapping[ClientId, MemberSigner],
        *,
        timeout_s: float,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        self._signers = dict(signers)
        self._clock = clock
        self._owns_client = http_client is None
        self._http = http_client or httpx.AsyncClient(timeout=timeout_s, follow_redirects=False)
        self._lock = threading.Lock()
        self._url: str | None = None
        self._cache: dict[_Key, tuple[str, datetime]] = {}
        self.hits = 0
        self.misses = 0

    def on_registry(self, registry: VerifiedRegistry) -> None:
        entry = registry.document.translator
        url = entry.url.rstrip("/") if entry is not None else None
        with self._lock:
            if url != self._url:
                self._url = url
                self._cache.clear()  # another translator: ask it afresh

    async def aclose(self) -> None:
        if self._owns_client:
            await self._http.aclose()

    async def seal_subject(self, request: SubjectTokenRequest) -> str:
        key: _Key = (str(request.client), request.subject, str(request.service), request.citizen)
        now = self._clock()
        with self._lock:
            hit = self._cache.get(key)
            url = self._url
        if hit is not None and now < hit[1]:
            self.hits += 1
            return hit[0]
        self.misses += 1
        if url is None:
            raise ConfigurationError(
                "the central registry names no pseudonym translator",
                code="Server.ServerProxy.NoTranslator",
            )
        token = await self._ask(url, request, now)
        try:
            refresh_at = peek_subject_token(token).expires_at - REFRESH_MARGIN
        except OnceOnlyError as exc:
            raise TranslatorUnavailable("the translator answered an unreadable token") from exc
        with self._lock:
            if len(self._cache) >= MAX_CACHED_TOKENS:
                self._cache.clear()
            self._cache[key] = (token, refresh_at)
        return token

    async def _ask(self, url: str, request: SubjectTokenRequest, now: datetime) -> str:
        body = json.dumps(
            TranslationRequest(
                subject=request.subject,
                service=str(request.service),
                citizen=request.citizen,
                message_id=request.message_id,
            ).model_dump(mode="json"),
            separators=(",", ":"),
        ).encode()
        signer = self._signers.get(request.client)
        if signer is None:
            raise ConfigurationError("this client is not hosted by this node")
        headers = {
            "content-type": "application/json",
            **sign_node_request(signer, request.client, "POST", TRANSLATOR_PATH, body, now=now),
        }
        try:
            response = await self._http.post(url + TRANSLATOR_PATH, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise TranslatorUnavailable("the pseudonym translator could not be reached") from exc
        status = response.status_code
        if status == 200 and len(response.content) <= MAX_ANSWER_BYTES:
            try:
                return TranslationAnswer.model_validate_json(response.content).token
            except ValidationError as exc:
                raise TranslatorUnavailable("the translator answered outside the protocol") from exc
        # The translator's refusals, as this node's own errors (its details are not passed on).
        if status == 403:
            raise RefusalError(
                "the translator refused: no access right to this service",
                reasons=("no access right in the central registry",),
            )
        if status == 404:
            raise NotFoundError("unknown subject or service")
        if status == 400:
            raise ClientError(
                "the translator could not take this subject", code="Client.BadRequest"
            )
        if status == 401:
            raise ConfigurationError("the translator did not accept this node's signature")
        raise TranslatorUnavailable(f"the pseudonym translator answered HTTP {status}")


class HttpCitizenCodes:
    """A node's "who accessed my data" view without a pseudonym table: the citizen's codes at
    this member's agencies, asked of the translator with the citizen's own token (so a node learns
    a citizen's codes only while that citizen is asking). Showing less is the safe failure: when
    the translator cannot answer, the view holds the citizen's platform identity only."""

    def __init__(
        self,
        signer: MemberSigner,
        client: ClientId,
        *,
        timeout_s: float,
        http_client: httpx.Client | None = None,
    ) -> None:
        self._signer = signer
        self._client = client
        self._http = http_client or httpx.Client(timeout=timeout_s, follow_redirects=False)
        self._lock = threading.Lock()
        self._url: str | None = None

    def on_registry(self, registry: VerifiedRegistry) -> None:
        entry = registry.document.translator
        with self._lock:
            self._url = entry.url.rstrip("/") if entry is not None else None

    def close(self) -> None:
        self._http.close()

    def __call__(self, principal: Principal) -> Collection[str]:
        found = {principal.subject}
        with self._lock:
            url = self._url
        if url is None or not principal.token:
            return found
        body = json.dumps(
            CitizenCodesRequest(token=principal.token).model_dump(), separators=(",", ":")
        ).encode()
        headers = {
            "content-type": "application/json",
            **sign_node_request(
                self._signer,
                self._client,
                "POST",
                CITIZEN_CODES_PATH,
                body,
                now=datetime.now(UTC),
            ),
        }
        try:
            response = self._http.post(url + CITIZEN_CODES_PATH, content=body, headers=headers)
            if response.status_code == 200 and len(response.content) <= MAX_ANSWER_BYTES * 16:
                found.update(CitizenCodesAnswer.model_validate_json(response.content).codes)
        except (httpx.HTTPError, ValidationError):
            pass
        return found
