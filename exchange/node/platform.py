"""A departmental system's consent request, made through its own node (docs/protocol.md §5).

Departmental systems hold an API key, never a subsystem's private key. To ask a citizen for a
consent they call their own node, which signs the request to the consent service named in the
verified central registry as the calling subsystem (``exchange.node_requests``)::

    POST /platform/v1/consent-requests       X-Road-Client + X-OnceOnly-Api-Key (as for /r1)
         body: the consent service's ConsentRequestInput (JSON), e.g. with
               "subject_agency": "client" and the system's own pseudonym of the citizen

The node, for each request:
  (Q1) authenticates the caller as for ``/r1`` (API key of a subsystem hosted here) ... stops
       anyone without the department's key asking in its name
  (Q2) reads a bounded body that must be a JSON object naming the caller as ``client`` .........
       stops a department asking in another subsystem's name (the consent service checks the
       signed client again)
  (Q3) signs the request as the caller and posts it to the consent service of the verified
       registry (none named: 503, nothing is asked) ..... the consent service verifies (N1)–(N4)
  (Q4) passes the consent service's answer on: 2xx and 4xx as they are (the 4xx is the consent
       service's problem+json), anything else or no answer → 503 with ``Retry-After``.

Every outcome is audited in the node's log (``request``/allow with the answer's status, or
``refusal``/deny with the reason), refusals before the body is read included. The node never
sees which citizen a consumer's code stands for: the consent service resolves it centrally.

Trust assumption: the consent service's URL comes from the verified registry.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime

from starlette.requests import Request
from starlette.responses import Response

from exchange.errors import ClientError, OnceOnlyError, RefusalError, UnavailableError
from exchange.identifiers import ClientId
from exchange.node.registry_cache import RegistryCache
from exchange.node_requests import sign_node_request
from exchange.ports import AuditEvent, Transport
from exchange.signing import MemberSigner
from exchange.web.body import read_body

__all__ = ["CONSENT_REQUESTS_ROUTE", "CONSENT_SERVICE_PATH", "ConsentRequestForwarder"]

CONSENT_REQUESTS_ROUTE = "/platform/v1/consent-requests"
CONSENT_SERVICE_PATH = "/consent/v1/consent-requests"
MAX_BODY_BYTES = 64 * 1024
CONSENT_UNAVAILABLE = "Server.ServerProxy.ConsentServiceUnavailable"


class ConsentRequestForwarder:
    """``POST /platform/v1/consent-requests`` of a node (steps Q1–Q4)."""

    def __init__(
        self,
        *,
        node: str,
        signers: Mapping[ClientId, MemberSigner],
        registry: RegistryCache,
        transport: Transport,
        authenticate: Callable[[Mapping[str, str]], Awaitable[ClientId]],
        record: Callable[[AuditEvent], Awaitable[None]],
        clock: Callable[[], datetime],
        timeout_s: float,
    ) -> None:
        self._node = node
        self._signers = signers
        self._registry = registry
        self._transport = transport
        self._authenticate = authenticate
        self._record = record
        self._clock = clock
        self._timeout_s = timeout_s

    async def handle(self, request: Request) -> Response:
        now = self._clock()
        headers = {k.lower(): v for k, v in request.headers.items()}
        client: ClientId | None = None
        try:
            client = await self._authenticate(headers)  # (Q1)
            body = await read_body(request, limit=MAX_BODY_BYTES)  # (Q2)
            _check_body(body, client)
            status, answer, media = await self._forward(client, body, now)  # (Q3)
        except OnceOnlyError as exc:
            await self._audit(now, headers, client, exc.status, exc)
            raise
        await self._audit(now, headers, client, status, None)
        return Response(answer, status_code=status, media_type=media)  # (Q4)

    async def _forward(
        self, client: ClientId, body: bytes, now: datetime
    ) -> tuple[int, bytes, str]:
        entry = self._registry.current(now).document.consent_service
        if entry is None:
            raise UnavailableError(
                "the central registry names no consent service", code=CONSENT_UNAVAILABLE
            )
        signed = sign_node_request(
            self._signers[client], client, "POST", CONSENT_SERVICE_PATH, body, now=now
        )
        try:
            resp = await self._transport.post(
                entry.url.rstrip("/") + CONSENT_SERVICE_PATH,
                body,
                {**signed, "content-type": "application/json"},
                timeout_s=self._timeout_s,
            )
        except OnceOnlyError as exc:
            raise UnavailableError(
                "the consent service cannot be reached", code=CONSENT_UNAVAILABLE
            ) from exc
        if not (200 <= resp.status < 300 or 400 <= resp.status < 500):
            raise UnavailableError(
                f"the consent service answered {resp.status}", code=CONSENT_UNAVAILABLE
            )
        media = {k.lower(): v for k, v in resp.headers.items()}.get(
            "content-type", "application/json"
        )
        return resp.status, resp.body, media

    async def _audit(
        self,
        now: datetime,
        headers: Mapping[str, str],
        client: ClientId | None,
        status: int,
        refusal: OnceOnlyError | None,
    ) -> None:
        """One entry per call: passed on (``request``/``allow``) or refused here."""
        if refusal is not None and refusal.audited:
            return
        claimed = str(client) if client else headers.get("x-road-client", "")[:255] or None
        await self._record(
            AuditEvent(
                time=now,
                node=self._node,
                kind="request" if refusal is None else "refusal",
                decision="allow" if refusal is None else "deny",
                client=claimed,
                service=CONSENT_SERVICE_PATH,
                status=status,
                reason=None if refusal is None else f"{refusal.code}: {refusal.detail}"[:500],
                extra={"stage": "consent-request"},
            )
        )
        if refusal is not None:
            refusal.audited = True


def _check_body(body: bytes, client: ClientId) -> None:
    """(Q2) a JSON object whose ``client`` is the caller (the rest is the consent service's)."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ClientError("the consent request is not JSON") from exc
    if not isinstance(data, dict):
        raise ClientError("the consent request must be a JSON object")
    if data.get("client") != str(client):
        raise RefusalError(
            "a departmental system can only ask for consents given to itself",
            code="Client.Forbidden",
        )
