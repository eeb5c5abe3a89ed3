"""The one-stop desk's consent port (``address_change.ConsentDesk``), in-process or over HTTP.

* ``LocalConsentDesk`` — the consent service in this process (``onceonly serve``, the demo).
* ``HttpConsentDesk`` — the desk run on its own (``onceonly desk``), which opens no consent
  database:

  - a consent **request** goes through the desk's own node, ``POST /platform/v1/consent-requests``
    with the one-stop subsystem's API key (the node signs it to the consent service; the desk
    holds no private key — docs/protocol.md §5);
  - the citizen's **approval or refusal** goes to the consent service's citizen API
    (``POST /consent/v1/consent-requests/{id}/approve|decline``) with the signed-in citizen's own
    bearer token, forwarded from the desk request: the consent service authorises the citizen
    itself, and the desk can decide nothing a citizen did not ask for.

Errors are mapped by who is at fault: the service's 4xx become the same ``exchange.errors``
(their ``code`` kept), anything else — unreachable, 5xx, an answer that is not the protocol — is
``UnavailableError`` (503 with ``Retry-After``: nothing was decided, asking again may work).

Trust assumption: the node and consent service URLs come from the desk's settings (operator).
Calls are synchronous (``httpx.Client``): the service calls the port from worker threads.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from consent.lifecycle import ConsentService, OnBehalf
from consent.mandates import REFUSED as MANDATE_REFUSED
from consent.mandates import Mandate, acting_actor
from consent.model import Consent, ConsentRequest, ConsentRequestInput
from exchange.errors import (
    AuthenticationError,
    ClientError,
    ConflictError,
    NotFoundError,
    OnceOnlyError,
    RefusalError,
    UnavailableError,
)
from exchange.identifiers import ClientId
from procedures.address_change import Acting

__all__ = ["CONSENT_REQUESTS_ROUTE", "HttpConsentDesk", "LocalConsentDesk"]

CONSENT_REQUESTS_ROUTE = "/platform/v1/consent-requests"
"""The node's route (``exchange.node.platform``)."""
CITIZEN_REQUESTS_PATH = "/consent/v1/consent-requests"
MANDATES_PATH = "/consent/v1/mandates"
DEFAULT_TIMEOUT_S = 10.0
_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._~-]{0,127}")
_M = TypeVar("_M", bound=BaseModel)
_BY_STATUS: dict[int, type[OnceOnlyError]] = {
    400: ClientError,
    401: AuthenticationError,
    403: RefusalError,
    404: NotFoundError,
    409: ConflictError,
    413: ClientError,
    422: ClientError,
}


class LocalConsentDesk:
    """The consent service in this process; the citizen's token is not needed."""

    def __init__(self, service: ConsentService) -> None:
        self.service = service

    def create_request(
        self, client: ClientId, terms: ConsentRequestInput, *, now: datetime
    ) -> ConsentRequest:
        return self.service.create_request(client, terms, now=now)

    def approve_request(
        self,
        subject: str,
        request_id: str,
        *,
        now: datetime,
        token: str | None = None,
        acting: Acting | None = None,
    ) -> Consent:
        on_behalf = None
        if acting is not None:  # checked again, for this purpose, at the moment it is used
            purpose = self.service.get_request(subject, request_id, now=now).purpose.code
            mandate = self.service.mandates().authorise(
                acting.representative,
                acting.mandate_id,
                now=now,
                action="approve a consent request",
                purpose=purpose,
            )
            if mandate.represented != subject:
                raise RefusalError("the mandate represents someone else", code=MANDATE_REFUSED)
            on_behalf = OnBehalf(acting_actor(mandate), mandate.id, mandate.represented_party)
        return self.service.approve_request(subject, request_id, now=now, on_behalf=on_behalf)

    def authorise_mandate(
        self,
        representative: str,
        mandate_id: str,
        *,
        procedure: str,
        now: datetime,
        token: str | None = None,
    ) -> Mandate:
        return self.service.mandates().authorise(
            representative, mandate_id, now=now, action="start a procedure", procedure=procedure
        )

    def decline_request(
        self, subject: str, request_id: str, *, now: datetime, token: str | None = None
    ) -> ConsentRequest:
        return self.service.decline_request(subject, request_id, now=now)


class HttpConsentDesk:
    """Requests through the desk's node, decisions to the consent service with the citizen's
    token (see the module docstring)."""

    def __init__(
        self,
        node_url: str,
        api_key: str,
        consent_url: str,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._node = node_url.rstrip("/")
        self._consent = consent_url.rstrip("/")
        self._api_key = api_key
        self._http = httpx.Client(timeout=timeout_s, transport=transport, follow_redirects=False)

    def close(self) -> None:
        self._http.close()

    def create_request(
        self, client: ClientId, terms: ConsentRequestInput, *, now: datetime
    ) -> ConsentRequest:
        headers = {"X-Road-Client": str(client), "X-OnceOnly-Api-Key": self._api_key}
        body = terms.model_dump(mode="json")
        return self._call(
            ConsentRequest, "the one-stop node", self._node + CONSENT_REQUESTS_ROUTE, headers, body
        )

    def approve_request(
        self,
        subject: str,
        request_id: str,
        *,
        now: datetime,
        token: str | None,
        acting: Acting | None = None,
    ) -> Consent:
        consent = self._decide(
            Consent, request_id, "approve", token, acting.mandate_id if acting else None
        )
        if consent.subject != subject:  # the token named someone else: never act on it
            raise UnavailableError("the consent service answered for another citizen")
        return consent

    def decline_request(
        self, subject: str, request_id: str, *, now: datetime, token: str | None
    ) -> ConsentRequest:
        declined = self._decide(ConsentRequest, request_id, "decline", token)
        if declined.subject != subject:
            raise UnavailableError("the consent service answered for another citizen")
        return declined

    def authorise_mandate(
        self,
        representative: str,
        mandate_id: str,
        *,
        procedure: str,
        now: datetime,
        token: str | None,
    ) -> Mandate:
        """Asked of the consent service with the representative's own token: it decides (and
        audits a refusal); the answer must name this representative."""
        if not token:
            raise AuthenticationError("the representative's bearer token is required")
        if not _ID.fullmatch(mandate_id):
            raise RefusalError("no such mandate", code=MANDATE_REFUSED)
        url = f"{self._consent}{MANDATES_PATH}/{mandate_id}/authorise"
        body = {"action": "start a procedure", "procedure": procedure}
        mandate = self._call(
            Mandate, "the consent service", url, {"Authorization": f"Bearer {token}"}, body
        )
        if mandate.representative != representative:
            raise UnavailableError("the consent service answered for another citizen")
        return mandate

    def _decide(
        self,
        kind: type[_M],
        request_id: str,
        verb: str,
        token: str | None,
        acting_for: str | None = None,
    ) -> _M:
        if not token:
            raise AuthenticationError("the citizen's bearer token is required to decide")
        if not _ID.fullmatch(request_id):
            raise NotFoundError("no such consent request")
        url = f"{self._consent}{CITIZEN_REQUESTS_PATH}/{request_id}/{verb}"
        headers = {"Authorization": f"Bearer {token}"}
        if acting_for is not None:
            headers["X-OnceOnly-Acting-For"] = acting_for
        return self._call(kind, "the consent service", url, headers, None)

    def _call(self, kind: type[_M], name: str, url: str, headers: dict[str, str], body: Any) -> _M:
        try:
            response = self._http.post(url, headers=headers, json=body)
        except httpx.HTTPError as exc:
            raise UnavailableError(f"{name} cannot be reached") from exc
        if response.status_code >= 400:
            raise _error(name, response)
        try:
            return kind.model_validate(response.json())
        except (ValueError, ValidationError) as exc:
            raise UnavailableError(f"{name} answered something unexpected") from exc


def _error(name: str, response: httpx.Response) -> OnceOnlyError:
    kind = _BY_STATUS.get(response.status_code)
    if kind is None:
        return UnavailableError(f"{name} answered {response.status_code}")
    detail, code = f"{name} refused", None
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        if isinstance(body.get("detail"), str):
            detail = body["detail"][:300]
        if isinstance(body.get("code"), str):
            code = body["code"][:64]
    return kind(detail, code=code) if code else kind(detail)
