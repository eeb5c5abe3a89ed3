"""The one-stop desk as a departmental system: its calls to its own node (README "Calling a node").

Every read and change of a procedure is one signed exchange that Machida's one-stop subsystem
(``JP/GOV/132098/one-stop``) asks **its own node** to make: ``POST|GET /r1/{service}`` with
``X-Road-Client``, the API key, the purpose ``address-change``, the citizen as subject (their
platform pseudonym, ``exchange.ports.CITIZEN_AGENCY``; the provider node translates it into its own
agency's pseudonym), and — for changes — the ``Idempotency-Key`` of the step and, where consent is
the basis, the consent id and its signed artefact.

Outcomes are classified once, here (``ExchangeOutcome.kind``):

- ``ok``: 2xx;
- ``not-enrolled``: 404 ``Client.NotFound`` from the registry (the citizen has no record there);
- ``transient``: 5xx (502/503/504 when a provider node is down or slow) or no connection at all —
  retried with backoff;
- ``refused``: any other 4xx (403 refusal, 400 bad request, 409 conflict, other 404) — final.

Trust assumption: the node is ours and verified the provider's signed response before answering
(consumer steps C5/C6); this module trusts the node's answer, not the network beyond it.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import httpx

from adapters.reference.rights import ONE_STOP
from exchange.canonical import canonical_json

REPRESENTED_PARTY: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "onceonly_represented_party", default=None
)
"""While set (``represented``), every exchange this client makes carries it as
``X-Road-Represented-Party``: a procedure run for someone under a mandate (its tasks inherit it)."""


@contextlib.contextmanager
def represented(party: str | None) -> Iterator[None]:
    """Exchanges made inside carry ``party`` as ``X-Road-Represented-Party`` (None: none)."""
    token = REPRESENTED_PARTY.set(party)
    try:
        yield
    finally:
        REPRESENTED_PARTY.reset(token)


__all__ = [
    "ADDRESS_CHANGE_PURPOSE",
    "DEFAULT_TIMEOUT_S",
    "REPRESENTED_PARTY",
    "ExchangeOutcome",
    "OneStopClient",
    "OutcomeKind",
    "represented",
]

ADDRESS_CHANGE_PURPOSE = "address-change"
DEFAULT_TIMEOUT_S = 15.0
TRANSIENT_STATUSES = frozenset({500, 502, 503, 504})
MAX_DETAIL_CHARS = 500

OutcomeKind = Literal["ok", "not-enrolled", "transient", "refused"]


@dataclass(frozen=True, slots=True)
class ExchangeOutcome:
    """What one exchange through the node came to."""

    kind: OutcomeKind
    status: int
    data: Any
    code: str | None
    detail: str
    message_id: str
    elapsed_s: float
    told: tuple[str, ...] = ()
    """The subscribers the registry told of this change by its change event (the signed
    ``X-OnceOnly-Told``, docs/protocol.md §9)."""

    @property
    def reason(self) -> str:
        """One line for the citizen and the counter staff: status, code and detail."""
        code = f" {self.code}" if self.code else ""
        return f"{self.status}{code}: {self.detail}"[:MAX_DETAIL_CHARS]


def classify(status: int, code: str | None) -> OutcomeKind:
    if 200 <= status < 300:
        return "ok"
    if status == 404 and code == "Client.NotFound":
        return "not-enrolled"
    if status in TRANSIENT_STATUSES or status >= 500 or status == 0:
        return "transient"
    return "refused"


class OneStopClient:
    """HTTP client of the one-stop subsystem to its own node (one ``httpx.AsyncClient``)."""

    def __init__(
        self,
        node_url: str,
        api_key: str,
        *,
        client_id: str = str(ONE_STOP),
        timeout_s: float = DEFAULT_TIMEOUT_S,
        transport: httpx.AsyncBaseTransport | None = None,
        purpose: str = ADDRESS_CHANGE_PURPOSE,
    ) -> None:
        self._client_id = client_id
        self._purpose = purpose
        self._api_key = api_key
        self._http = httpx.AsyncClient(
            base_url=node_url.rstrip("/"), timeout=timeout_s, transport=transport
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> OneStopClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()

    def _headers(self, subject: str, message_id: str) -> dict[str, str]:
        party = REPRESENTED_PARTY.get()
        if party is not None:  # acting for someone: every exchange says so, signed
            return {**self._plain_headers(subject, message_id), "X-Road-Represented-Party": party}
        return self._plain_headers(subject, message_id)

    def _plain_headers(self, subject: str, message_id: str) -> dict[str, str]:
        return {
            "X-Road-Client": self._client_id,
            "X-Road-Id": message_id,
            "X-OnceOnly-Api-Key": self._api_key,
            "X-OnceOnly-Purpose": self._purpose,
            "X-OnceOnly-Subject": subject,
        }

    async def read(
        self, service: str, subject: str, *, fields: tuple[str, ...] | None = None
    ) -> ExchangeOutcome:
        """Read ``service`` about ``subject``; ``fields`` asks for only those (minimisation)."""
        headers = self._headers(subject, f"os-{uuid.uuid4()}")
        if fields:
            headers["X-OnceOnly-Fields"] = ",".join(fields)
        return await self._send("GET", service, headers, None)

    async def change(
        self,
        service: str,
        subject: str,
        body: dict[str, Any],
        *,
        idempotency_key: str,
        fields: tuple[str, ...],
        consent_id: str | None = None,
        consent_artefact: str | None = None,
        message_id: str | None = None,
    ) -> ExchangeOutcome:
        """Send a change; the registry applies a given ``idempotency_key`` at most once."""
        mid = message_id or f"os-{uuid.uuid4()}"
        headers = self._headers(subject, mid)
        headers["Idempotency-Key"] = idempotency_key
        headers["X-OnceOnly-Fields"] = ",".join(fields)
        headers["Content-Type"] = "application/json"
        if consent_id is not None:
            headers["X-OnceOnly-Consent-Id"] = consent_id
            if consent_artefact is not None:
                headers["X-OnceOnly-Consent"] = consent_artefact
        return await self._send("POST", service, headers, canonical_json(body))

    async def _send(
        self, method: str, service: str, headers: dict[str, str], body: bytes | None
    ) -> ExchangeOutcome:
        mid = headers["X-Road-Id"]
        started = time.perf_counter()
        try:
            resp = await self._http.request(method, f"/r1/{service}", headers=headers, content=body)
        except httpx.HTTPError as exc:
            return ExchangeOutcome(
                "transient",
                0,
                None,
                "Server.ClientProxy.NetworkError",
                f"the one-stop node could not be reached ({type(exc).__name__})",
                mid,
                time.perf_counter() - started,
            )
        elapsed = time.perf_counter() - started
        data: Any = None
        try:
            data = resp.json() if resp.content else None
        except (ValueError, json.JSONDecodeError):
            data = None
        code: str | None = None
        detail = resp.reason_phrase or ""
        if resp.status_code >= 400:
            if isinstance(data, dict):
                raw_code, raw_detail = data.get("code"), data.get("detail")
                code = raw_code if isinstance(raw_code, str) else None
                detail = raw_detail if isinstance(raw_detail, str) else detail
            code = code or resp.headers.get("x-road-error")
        kind = classify(resp.status_code, code)
        told = tuple(c for c in resp.headers.get("x-onceonly-told", "").split(",") if c)
        return ExchangeOutcome(kind, resp.status_code, data, code, detail, mid, elapsed, told)
